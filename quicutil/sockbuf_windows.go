package quicutil

import "syscall"

// sockBuffers reads the receive and send buffer sizes of the socket rc.
func sockBuffers(rc syscall.RawConn) (rcv, snd int, err error) {
	var rerr, serr error
	if err := rc.Control(func(fd uintptr) {
		rcv, rerr = syscall.GetsockoptInt(syscall.Handle(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		snd, serr = syscall.GetsockoptInt(syscall.Handle(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
	}); err != nil {
		return 0, 0, err
	}
	if rerr != nil {
		return 0, 0, rerr
	}
	return rcv, snd, serr
}
