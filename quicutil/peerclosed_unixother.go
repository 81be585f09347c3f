//go:build unix && !linux

package quicutil

import "syscall"

// recvPeek peeks at one byte without blocking.
func recvPeek(fd uintptr, b []byte) (int, error) {
	n, _, err := syscall.Recvfrom(int(fd), b, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return n, err
}
