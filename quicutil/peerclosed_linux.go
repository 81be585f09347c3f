package quicutil

import (
	"syscall"
	"unsafe"
)

// recvPeek peeks at one byte without blocking, and without the socket
// address syscall.Recvfrom allocates.
func recvPeek(fd uintptr, b []byte) (int, error) {
	n, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
