package quicutil

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// CopyBufferSize is the size of each direction's buffer in Join (the
// per-connection proxy buffer of LIMITS.md).
const CopyBufferSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, CopyBufferSize); return &b }}

// ErrIdle is returned by Join when no byte moved either way for the idle timeout.
var ErrIdle = errors.New("quicutil: idle timeout")

// JoinResult reports what Join moved.
type JoinResult struct {
	AToB, BToA int64
	Err        error // nil when both directions ended with EOF
}

// Join copies a to b and b to a until both directions end, then closes
// both. EOF on one side becomes CloseWrite on the other (half-close
// travels). A read or write error on either side, or no byte in either
// direction for idle (0: none), aborts both connections: Abort on a *Conn,
// Close on anything else. Join returns when both copies have stopped.
func Join(a, b net.Conn, idle time.Duration) JoinResult {
	j := joiner{idle: idle}
	j.touch()
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
	if res.Err == nil {
		a.Close()
		b.Close()
	}
	return res
}

type joiner struct {
	idle    time.Duration
	lastIO  atomic.Int64
	aborted sync.Once
}

func (j *joiner) touch() { j.lastIO.Store(time.Now().UnixNano()) }

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
	var deadline time.Time
	for {
		if j.idle > 0 {
			due := time.Unix(0, j.lastIO.Load()).Add(j.idle)
			if d := due.Sub(deadline); d > j.idle/10 || d < -j.idle/10 {
				deadline = due
				src.SetReadDeadline(due)
			}
		}
		n, err := src.Read(buf)
		if n > 0 {
			j.touch()
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
		if errors.Is(err, os.ErrDeadlineExceeded) && j.idle > 0 {
			if time.Since(time.Unix(0, j.lastIO.Load())) < j.idle {
				continue // the other direction moved: not idle
			}
			return total, ErrIdle
		}
		return total, err
	}
}
