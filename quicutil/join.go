package quicutil

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// CopyBufferSize is the size of each direction's buffer in Join (the
// per-connection proxy buffer of LIMITS.md).
const CopyBufferSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, CopyBufferSize); return &b }}

// JoinResult reports what Join moved.
type JoinResult struct {
	AToB, BToA int64
	Err        error // nil when both directions ended with EOF
}

// Join copies a to b and b to a until both directions end, then closes
// both. EOF on one side becomes CloseWrite on the other (half-close
// travels). A read or write error on either side aborts both connections:
// Abort on a *Conn, a reset on a TCP connection, Close on anything else.
// With idle > 0, no byte in either direction for idle also aborts both
// (ErrIdle); the idle clock is that of the *Conn side, so at least one of
// a and b must be a *Conn for it to apply. Join returns when both copies
// have stopped.
func Join(a, b net.Conn, idle time.Duration) JoinResult {
	for _, c := range []net.Conn{a, b} {
		if qc, ok := c.(*Conn); ok {
			qc.SetIdleTimeout(idle)
		}
	}
	var j joiner
	var res JoinResult
	var errBA error
	done := make(chan struct{})
	go func() {
		defer close(done)
		res.BToA, errBA = j.copy(a, b)
		if errBA != nil {
			j.abort(a, b)
		}
	}()
	var errAB error
	res.AToB, errAB = j.copy(b, a)
	if errAB != nil {
		j.abort(a, b)
	}
	<-done
	res.Err = errors.Join(errAB, errBA)
	if errors.Is(errAB, ErrIdle) || errors.Is(errBA, ErrIdle) {
		res.Err = ErrIdle
	}
	if res.Err == nil {
		a.Close()
		b.Close()
	}
	return res
}

type joiner struct {
	aborted sync.Once
}

func (j *joiner) abort(a, b net.Conn) {
	j.aborted.Do(func() {
		abortConn(a)
		abortConn(b)
	})
}

func abortConn(c net.Conn) {
	switch c := c.(type) {
	case *Conn:
		c.Abort(StreamCodeAborted)
	case *net.TCPConn:
		c.SetLinger(0) // RST: the peer must not take an aborted stream for a complete one
		c.Close()
	default:
		c.Close()
	}
}

// copy moves src to dst until EOF (then half-closes dst) or an error.
func (j *joiner) copy(dst, src net.Conn) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
		}
		if err == nil {
			continue
		}
		if err == io.EOF {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				if err := cw.CloseWrite(); err != nil {
					return total, err
				}
			}
			return total, nil
		}
		return total, err
	}
}
