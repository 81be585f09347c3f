//go:build unix

package quicutil

import (
	"net"
	"syscall"
)

// A peeker looks at a socket without reading from it, while another
// goroutine may wait in its Read.
type peeker struct {
	rc     syscall.RawConn
	peek   func(fd uintptr) // p.look, made once
	closed bool
	buf    [1]byte
}

// newPeeker returns a peeker for c, or nil when c has no socket.
func newPeeker(c net.Conn) *peeker {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &peeker{rc: rc}
	p.peek = p.look
	return p
}

// peerClosed reports whether the peer has closed the connection: a FIN or
// a reset is waiting to be read. It reads nothing and never blocks. With
// data waiting, or on a nil peeker, it reports false.
func (p *peeker) peerClosed() bool {
	if p == nil {
		return false
	}
	p.closed = false
	p.rc.Control(p.peek)
	return p.closed
}

func (p *peeker) look(fd uintptr) {
	n, err := recvPeek(fd, p.buf[:])
	p.closed = n == 0 && err == nil || err == syscall.ECONNRESET
}

// peerClosed is newPeeker(c).peerClosed(), for one look.
func peerClosed(c net.Conn) bool { return newPeeker(c).peerClosed() }
