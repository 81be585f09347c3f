package quicutil

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// CopyBufferSize is the size of each direction's buffer in Join (the
// per-connection proxy buffer of docs/limits.md).
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
//
// When a and b are both streams (a relay), a StreamCodeUnsent from the
// peer of one travels to the peer of the other, and ends that direction
// cleanly: the edge that sent the request learns that it never reached
// the upstream.
func Join(a, b net.Conn, idle time.Duration) JoinResult {
	return join(a, b, idle, &joiner{})
}

// JoinUpstream is Join for a stream that carries HTTP/1.1 to its upstream
// connection up, at the agent. Once up has ended (EOF), nothing more goes
// to it; bytes that come after, when none went to up since its last byte
// (it closed an idle keep-alive connection), make the stream's peer stop
// sending with StreamCodeUnsent: the edge may send that request again.
func JoinUpstream(str *Conn, up net.Conn, idle time.Duration) JoinResult {
	return join(str, up, idle, &joiner{str: str, up: up})
}

// An Observer sees the bytes JoinUpstreamObserved moves, in order, just
// before they are written. Its methods are called from the copying
// goroutines, one per direction, and must neither block nor keep p.
type Observer interface {
	ToUpstream(p []byte)   // bytes read from the stream, going to up
	FromUpstream(p []byte) // bytes read from up, going to the stream
}

// JoinUpstreamObserved is JoinUpstream, showing obs what flows each way.
// It moves the same bytes as JoinUpstream.
func JoinUpstreamObserved(str *Conn, up net.Conn, idle time.Duration, obs Observer) JoinResult {
	return join(str, up, idle, &joiner{str: str, up: up, obs: obs, obsUp: up})
}

// JoinObserved is Join, showing obs what flows each way: b is the
// upstream side (FromUpstream), a the other.
func JoinObserved(a, b net.Conn, idle time.Duration, obs Observer) JoinResult {
	return join(a, b, idle, &joiner{obs: obs, obsUp: b})
}

func join(a, b net.Conn, idle time.Duration, j *joiner) JoinResult {
	for _, c := range []net.Conn{a, b} {
		if qc, ok := c.(*Conn); ok {
			qc.SetIdleTimeout(idle)
		}
	}
	if qa, ok := a.(*Conn); ok {
		if qb, ok := b.(*Conn); ok {
			defer passUnsent(qa, qb)()
			defer passUnsent(qb, qa)()
		}
	}
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

	// For JoinUpstream: the stream and its upstream connection.
	str     *Conn
	up      net.Conn
	mu      sync.Mutex
	sinceUp int64 // bytes forwarded to up since up's last byte
	upSent  bool  // up has sent bytes: it is a keep-alive connection in use
	peek    *peeker
	upEnded bool     // up sent EOF
	unsent  bool     // str's peer was told StreamCodeUnsent
	obs     Observer // for JoinUpstreamObserved and JoinObserved, else nil
	obsUp   net.Conn // the side obs sees as the upstream
}

// fromUp notes bytes from up.
func (j *joiner) fromUp() {
	j.mu.Lock()
	j.sinceUp, j.upSent = 0, true
	j.mu.Unlock()
}

// toUp reports whether p, read from the stream, may go to up, and counts
// it. Once up has ended, nothing may: it is dropped, and the stream is
// read on to its end as before. If nothing went to up since its last byte
// and p starts a request (not the bytes of an upgraded connection, say a
// WebSocket's, whose end stays as it was), the stream's peer is told that
// the request was not sent. The first bytes after an answer (a new
// request on the kept connection) first look whether up has closed
// meanwhile: its EOF may wait unread while the other direction's
// goroutine is not yet scheduled.
func (j *joiner) toUp(p []byte) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.upEnded && j.sinceUp == 0 && j.upSent {
		if j.peek == nil {
			j.peek = newPeeker(j.up)
		}
		j.upEnded = j.peek.peerClosed()
	}
	if !j.upEnded {
		j.sinceUp += int64(len(p))
		return true
	}
	if j.sinceUp == 0 && !j.unsent && (!j.upSent || startsRequest(p)) {
		j.unsent = true
		j.str.StopReading(StreamCodeUnsent)
	}
	return false
}

// startsRequest reports whether p may start an HTTP/1.1 request line: a
// method is a token, in practice upper-case letters. A WebSocket frame
// starts with 0x0_ or 0x8_.
func startsRequest(p []byte) bool { return len(p) > 0 && 'A' <= p[0] && p[0] <= 'Z' }

func (j *joiner) ended() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.upEnded
}

func (j *joiner) upEOF() {
	j.mu.Lock()
	j.upEnded = true
	j.mu.Unlock()
}

// passUnsent makes a StreamCodeUnsent from from's peer stop to's peer
// with the same code, until the returned function is called.
func passUnsent(from, to *Conn) (stop func() bool) {
	return context.AfterFunc(from.Stream().Context(), func() {
		if code, ok := from.PeerStopped(); ok && code == StreamCodeUnsent {
			to.StopReading(StreamCodeUnsent)
		}
	})
}

// isUnsent reports whether err is the end of a read that this side
// stopped with StreamCodeUnsent, or of a write that the peer stopped so.
func isUnsent(err error) bool {
	var se *quic.StreamError
	return errors.As(err, &se) && se.ErrorCode == StreamCodeUnsent
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
		if n > 0 && j.up != nil && src != j.up && !j.toUp(buf[:n]) {
			n = 0 // up has ended: the rest goes nowhere
		}
		if n > 0 {
			if src == j.up {
				j.fromUp()
			}
			if j.obs != nil {
				if src == j.obsUp {
					j.obs.FromUpstream(buf[:n])
				} else {
					j.obs.ToUpstream(buf[:n])
				}
			}
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				if isUnsent(werr) {
					return total, nil // passUnsent tells src's peer
				}
				return total, werr
			}
		}
		if err == nil {
			continue
		}
		if isUnsent(err) {
			return total, nil
		}
		if err == io.EOF {
			if j.up != nil && src == j.up {
				j.upEOF()
			}
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				if err := cw.CloseWrite(); err != nil && !(dst == j.up && j.ended()) {
					return total, err
				}
			}
			return total, nil
		}
		return total, err
	}
}
