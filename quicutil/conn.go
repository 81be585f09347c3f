package quicutil

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Stream error codes, sent with RESET_STREAM and STOP_SENDING.
const (
	StreamCodeCanceled    quic.StreamErrorCode = 0 // the reader no longer wants the data
	StreamCodeAborted     quic.StreamErrorCode = 1 // the other side of the splice failed
	StreamCodeIdleTimeout quic.StreamErrorCode = 2 // no byte either way for the idle timeout
	StreamCodeBadHeader   quic.StreamErrorCode = 3 // the stream header was malformed
	// StreamCodeUnsent (STOP_SENDING, agent to edge) says that bytes came
	// after the agent's upstream connection had closed, with nothing sent
	// to it since its last byte: none of the new request reached the
	// upstream, so the edge may send it again on another stream. A relaying
	// node passes it on (Join).
	StreamCodeUnsent quic.StreamErrorCode = 4
)

// Connection error codes, sent with CONNECTION_CLOSE.
const (
	ConnCodeNormal        quic.ApplicationErrorCode = 0 // closed on purpose
	ConnCodeGoingAway     quic.ApplicationErrorCode = 1 // node shutting down: reconnect elsewhere
	ConnCodeUnauthorized  quic.ApplicationErrorCode = 2 // token refused: do not retry with the same token
	ConnCodeProtocolError quic.ApplicationErrorCode = 3 // the peer broke the protocol
	ConnCodeTimeout       quic.ApplicationErrorCode = 4 // the peer did not complete a step in time
	ConnCodeLimit         quic.ApplicationErrorCode = 5 // a limit on connections was reached
	ConnCodeEvicted       quic.ApplicationErrorCode = 6 // an operator evicted the agent: reconnect like after a loss
)

// Conn is a bidirectional QUIC stream as a net.Conn. Read and Write may be
// called concurrently with each other (one goroutine each); Close and Abort
// may be called from any goroutine, any number of times.
//
// A Conn made with OpenConn sends its header together with the first Write,
// and reads the peer's answer before the first byte Read returns.
type Conn struct {
	str    *quic.Stream
	local  net.Addr
	remote net.Addr

	idle      time.Duration              // 0: no idle timeout
	idleTimer atomic.Pointer[time.Timer] // fires idle after the last byte; re-armed lazily
	idled     atomic.Bool                // aborted by the idle timer
	lastIO    atomic.Int64               // unix nanos of the last byte read or written
	aborted   atomic.Bool                // RESET_STREAM sent: never send FIN after it
	closed    atomic.Bool                // Close or Abort was called
	ending    atomic.Bool                // EndWrite: writes are discarded

	wmu     sync.Mutex // serializes Write, CloseWrite and the FIN of Close
	pending []byte     // header to send before the first write (under wmu)
	wdone   bool       // FIN or RESET sent (under wmu)

	answerWanted bool         // read an answer before the first byte (reader only)
	answer       atomic.Value // error: nil, *StatusError or ErrNoAnswer (set once)

	closeOnce sync.Once
	onClose   func() // run once by the first Close or Abort
}

// NewConn wraps an accepted stream.
func NewConn(str *quic.Stream, local, remote net.Addr) *Conn {
	c := &Conn{str: str, local: local, remote: remote}
	c.touch()
	return c
}

// OpenConn wraps a stream this side opened: header is sent with the first
// Write (or by Flush), and when wantAnswer is set the first Read consumes the
// peer's answer and fails with it unless it is StatusOK.
func OpenConn(str *quic.Stream, local, remote net.Addr, header []byte, wantAnswer bool) *Conn {
	c := NewConn(str, local, remote)
	c.pending = header
	c.answerWanted = wantAnswer
	return c
}

// SetIdleTimeout aborts the stream (StreamCodeIdleTimeout) once no byte
// was read or written for d; Read and Write then fail with ErrIdle. It costs
// one timer per stream, not one per Read. Call it once, before use.
func (c *Conn) SetIdleTimeout(d time.Duration) {
	if d <= 0 || c.idleTimer.Load() != nil {
		return
	}
	c.idle = d
	t := time.AfterFunc(time.Hour, c.checkIdle) // armed below, once stored for checkIdle
	c.idleTimer.Store(t)
	t.Reset(d)
}

func (c *Conn) checkIdle() {
	if c.closed.Load() {
		return // Close may have stopped the timer just before this re-arms it
	}
	if since := time.Since(c.LastActivity()); since < c.idle {
		c.idleTimer.Load().Reset(c.idle - since)
		return
	}
	c.idled.Store(true)
	c.Abort(StreamCodeIdleTimeout)
}

func (c *Conn) touch() { c.lastIO.Store(time.Now().UnixNano()) }

// LastActivity reports when a byte was last read or written.
func (c *Conn) LastActivity() time.Time { return time.Unix(0, c.lastIO.Load()) }

// Stream returns the underlying stream.
func (c *Conn) Stream() *quic.Stream { return c.str }

// Answer reports whether the peer's answer was read, and what it was: nil
// for StatusOK, a *StatusError for a refusal, or ErrNoAnswer (wrapping the
// cause) for a stream that ended first.
func (c *Conn) Answer() (answered bool, err error) {
	v := c.answer.Load()
	if v == nil {
		return false, nil
	}
	return true, v.(answerBox).err
}

type answerBox struct{ err error }

func (c *Conn) Read(p []byte) (int, error) {
	if ok, ans := c.Answer(); ok && ans != nil {
		return 0, ans // a refused stream stays refused
	}
	if c.answerWanted {
		c.answerWanted = false
		err := ReadAnswer(c.str)
		c.answer.Store(answerBox{err})
		if err != nil {
			return 0, c.mapErr(err)
		}
	}
	n, err := c.str.Read(p)
	if n > 0 {
		c.touch()
	}
	if err != nil {
		err = c.mapErr(err)
	}
	return n, err
}

// mapErr reports the idle timeout as ErrIdle rather than as the reset it
// caused.
func (c *Conn) mapErr(err error) error {
	if c.idled.Load() {
		return ErrIdle
	}
	return err
}

func (c *Conn) Write(p []byte) (int, error) {
	if c.ending.Load() {
		return len(p), nil // EndWrite: the peer was told EOF; the rest goes nowhere
	}
	n, err := c.write(p)
	if err != nil {
		// Once the peer refused the stream, that is the reason writes fail.
		if ok, ans := c.Answer(); ok && ans != nil {
			err = ans
		}
		err = c.mapErr(err)
	}
	return n, err
}

func (c *Conn) write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wdone {
		if c.ending.Load() {
			return len(p), nil // see EndWrite
		}
		return 0, net.ErrClosed
	}
	if c.pending != nil {
		// One write carries the header and the first payload bytes.
		buf := append(c.pending, p...)
		c.pending = nil
		n, err := c.str.Write(buf)
		c.touch()
		n -= len(buf) - len(p)
		if n < 0 {
			n = 0
		}
		return n, err
	}
	n, err := c.str.Write(p)
	if n > 0 {
		c.touch()
	}
	return n, err
}

// Prepend queues b to go out with the next Write (or Flush, or CloseWrite):
// an accepting side uses it to send its answer in the same packet as the
// first response bytes.
func (c *Conn) Prepend(b []byte) {
	c.wmu.Lock()
	c.pending = append(c.pending, b...)
	c.wmu.Unlock()
}

// Flush sends the pending header, if any, without payload.
func (c *Conn) Flush() error {
	_, err := c.Write(nil)
	return err
}

// CloseWrite sends FIN: the peer reads EOF after the bytes written so far.
// EndWrite ends the stream gracefully from this side while another
// goroutine may still copy into it: it sends FIN, and later writes succeed
// without sending anything. A proxy that must stop a spliced connection
// uses it on both ends, so that each peer reads a clean EOF, and bytes
// still in flight towards it are dropped rather than turned into a reset.
func (c *Conn) EndWrite() error {
	c.ending.Store(true)
	return c.CloseWrite()
}

func (c *Conn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.finLocked()
}

func (c *Conn) finLocked() error {
	if c.wdone || c.aborted.Load() {
		return nil
	}
	if c.pending != nil {
		if _, err := c.str.Write(c.pending); err != nil {
			c.pending = nil
			c.wdone = true
			c.str.CancelWrite(StreamCodeAborted)
			return err
		}
		c.pending = nil
	}
	c.wdone = true
	return c.str.Close()
}

// CloseRead tells the peer to stop sending (STOP_SENDING).
func (c *Conn) CloseRead() error {
	c.str.CancelRead(StreamCodeCanceled)
	return nil
}

// StopReading tells the peer to stop sending, with code (STOP_SENDING).
func (c *Conn) StopReading(code quic.StreamErrorCode) { c.str.CancelRead(code) }

// PeerStopped reports whether the peer told this side to stop sending
// (STOP_SENDING), and with which code.
func (c *Conn) PeerStopped() (quic.StreamErrorCode, bool) {
	return peerStopped(c.str.Context())
}

// WaitPeerStopped is PeerStopped, waiting up to d for the peer's word when
// it has not come yet.
func (c *Conn) WaitPeerStopped(d time.Duration) (quic.StreamErrorCode, bool) {
	ctx := c.str.Context()
	if ctx.Err() == nil && d > 0 {
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	return peerStopped(ctx)
}

func peerStopped(ctx context.Context) (quic.StreamErrorCode, bool) {
	var se *quic.StreamError
	if ctx.Err() != nil && errors.As(context.Cause(ctx), &se) && se.Remote {
		return se.ErrorCode, true
	}
	return 0, false
}

// Close ends both directions: data already written is still delivered
// (FIN), unread data is discarded (STOP_SENDING). A Write blocked on flow
// control at that moment is aborted instead (RESET_STREAM), and so is a
// stream that never sent its header.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		if c.onClose != nil {
			defer c.onClose()
		}
		c.stopIdle()
		c.str.CancelRead(StreamCodeCanceled)
		if c.wmu.TryLock() {
			if c.pending != nil {
				// Never used: the peer has nothing to serve, so do not
				// send it a header; reset the stream instead.
				c.pending = nil
				c.wdone = true
				c.aborted.Store(true)
				c.str.CancelWrite(StreamCodeCanceled)
			} else {
				c.finLocked()
			}
			c.wmu.Unlock()
			return
		}
		c.aborted.Store(true)
		c.str.CancelWrite(StreamCodeAborted)
	})
	return nil
}

// Closed reports whether Close or Abort was called, by this side or by the
// idle timeout.
func (c *Conn) Closed() bool { return c.closed.Load() }

// OnClose makes f run once, when Close or Abort is first called. Call it
// before handing the Conn to other goroutines.
func (c *Conn) OnClose(f func()) { c.onClose = f }

// Abort resets both directions with code: nothing more is delivered.
func (c *Conn) Abort(code quic.StreamErrorCode) {
	c.closeOnce.Do(func() {
		if c.onClose != nil {
			defer c.onClose()
		}
		c.stopIdle()
		c.aborted.Store(true)
		c.str.CancelRead(code)
		c.str.CancelWrite(code)
	})
}

func (c *Conn) stopIdle() {
	c.closed.Store(true)
	if t := c.idleTimer.Load(); t != nil {
		t.Stop()
	}
}

func (c *Conn) LocalAddr() net.Addr  { return c.local }
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

func (c *Conn) SetDeadline(t time.Time) error      { return c.str.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.str.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.str.SetWriteDeadline(t) }

// ErrIdle is returned by a Conn's Read and Write, and by Join, once no byte
// moved either way for the idle timeout. It is a timeout: errors.Is(err,
// os.ErrDeadlineExceeded) holds.
var ErrIdle error = idleError{}

type idleError struct{}

func (idleError) Error() string   { return "quicutil: idle timeout" }
func (idleError) Timeout() bool   { return true }
func (idleError) Temporary() bool { return false }
func (idleError) Unwrap() error   { return os.ErrDeadlineExceeded }
