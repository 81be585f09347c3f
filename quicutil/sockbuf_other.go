//go:build !unix && !windows

package quicutil

import (
	"errors"
	"syscall"
)

// sockBuffers cannot read socket buffer sizes here: they are unknown, and
// UDPBufferAdvice gives no advice.
func sockBuffers(syscall.RawConn) (rcv, snd int, err error) {
	return 0, 0, errors.ErrUnsupported
}
