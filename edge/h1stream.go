package edge

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// The HTTP/1.1 stream path: a request without a body to an agent that
// speaks HTTP/1.1 is written and its response read by the handler's own
// goroutine, over a keep-alive stream pooled per target and endpoint. It does
// what http.Transport does for such a request (pooling, response header
// limits and timeout, 1xx, cancellation, retry of a stale reused stream)
// without the Transport's two goroutines per connection and the handoffs
// between them, which cost more CPU than the rest of the request. Requests
// with a body (written while the response is read) and upgrades still go
// through http.Transport.

// maxIdleStreams is how many idle keep-alive streams a target keeps for one
// endpoint (http.Transport's MaxIdleConnsPerHost before).
const maxIdleStreams = 256

// maxResponseHeaderBytes bounds an upstream's response head.
const maxResponseHeaderBytes = 64 << 10

// max1xx is how many informational responses may precede the final one.
const max1xx = 5

// streamPools keeps a target's idle keep-alive streams, one pool per
// endpoint: a stream's header names the endpoint it reaches (a peer relays
// to every endpoint of its node, an agent may serve several), so a stream
// is only ever reused for the endpoint it was opened to.
type streamPools struct {
	mu     sync.Mutex
	m      map[routing.EndpointID]*streamPool
	closed bool
}

// get returns the pool of endpoint ep.
func (ps *streamPools) get(ep routing.EndpointID) *streamPool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p := ps.m[ep]
	if p == nil {
		if ps.m == nil {
			ps.m = make(map[routing.EndpointID]*streamPool)
		}
		p = &streamPool{parent: ps, ep: ep, closed: ps.closed}
		ps.m[ep] = p
	}
	return p
}

// closeIdle closes the idle streams of every pool, and any stream a request
// puts back into one of those pools later; with final, the pools made
// later keep no streams either.
func (ps *streamPools) closeIdle(final bool) {
	ps.mu.Lock()
	pools := make([]*streamPool, 0, len(ps.m))
	for _, p := range ps.m {
		pools = append(pools, p)
	}
	ps.m = nil // a request holding one of them may still put a stream back: put closes it
	if final {
		ps.closed = true
	}
	ps.mu.Unlock()
	for _, p := range pools {
		p.close()
	}
}

// forget drops p from its parent once it is empty, so that endpoints that
// come and go leave no pools behind. A request holding p may still put a
// stream back into it: put closes that one.
func (ps *streamPools) forget(p *streamPool) {
	ps.mu.Lock()
	if ps.m[p.ep] == p {
		p.mu.Lock()
		if len(p.idle) == 0 {
			delete(ps.m, p.ep)
			p.closed = true
		}
		p.mu.Unlock()
	}
	ps.mu.Unlock()
}

// streamPool keeps the idle keep-alive streams to one endpoint of a
// target, newest last.
type streamPool struct {
	parent *streamPools
	ep     routing.EndpointID
	mu     sync.Mutex
	idle   []*h1Conn
	sweep  *time.Timer // closes streams idle for longer than the timeout
	// closed: the pool keeps no more streams. Once a pool is out of its
	// parent's map (forgotten, or emptied by closeIdle) it is closed, so that
	// no stream can idle where the next closeIdle would not find it (a
	// leaving agent's link would then wait out its grace for that stream).
	closed bool
}

// h1Conn is a keep-alive HTTP/1.1 stream.
type h1Conn struct {
	c      *quicutil.Conn
	lr     limitedReader
	br     *bufio.Reader
	idleAt time.Time
	reused bool

	// headTimer aborts the stream when a response head takes longer than
	// the timeout; made once per stream, rearmed for each request (a read
	// deadline on the stream would cost quic-go a timer per Read).
	headTimer *time.Timer
	timedOut  atomic.Bool
}

// armHead starts the wait for a response head.
func (hc *h1Conn) armHead(d time.Duration) {
	if d <= 0 {
		return
	}
	if hc.headTimer == nil {
		hc.headTimer = time.AfterFunc(d, func() {
			hc.timedOut.Store(true)
			hc.c.Abort(quicutil.StreamCodeCanceled)
		})
		return
	}
	hc.headTimer.Reset(d)
}

// disarmHead ends the wait; it reports false when the timer fired first
// (the stream is aborted).
func (hc *h1Conn) disarmHead() bool {
	return hc.headTimer == nil || hc.headTimer.Stop()
}

// errHeadTimeout is a response head that did not come in time.
type errHeadTimeout struct{}

func (errHeadTimeout) Error() string   { return "upstream did not send a response head in time" }
func (errHeadTimeout) Timeout() bool   { return true }
func (errHeadTimeout) Temporary() bool { return false }

// limitedReader reads from a stream, failing once more than n bytes were
// read while n >= 0: it bounds a response head. It counts what it read.
type limitedReader struct {
	c    *quicutil.Conn
	n    int64
	read int64
}

var errHeaderTooLarge = errors.New("upstream's response head is larger than 64 KiB")

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n >= 0 {
		if l.n == 0 {
			return 0, errHeaderTooLarge
		}
		if int64(len(p)) > l.n {
			p = p[:l.n]
		}
	}
	n, err := l.c.Read(p)
	l.read += int64(n)
	if l.n >= 0 {
		l.n -= int64(n)
	}
	return n, err
}

var h1Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 8<<10) }}

var h1Heads = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func newH1Conn(c *quicutil.Conn) *h1Conn {
	hc := &h1Conn{c: c}
	hc.lr.c = c
	hc.lr.n = -1
	hc.br = h1Readers.Get().(*bufio.Reader)
	hc.br.Reset(&hc.lr)
	return hc
}

// close ends the stream and lends its buffer back.
func (hc *h1Conn) close() {
	if hc.headTimer != nil {
		hc.headTimer.Stop()
	}
	hc.c.Close()
	if hc.br != nil {
		hc.br.Reset(nil)
		h1Readers.Put(hc.br)
		hc.br = nil
	}
}

// alive reports whether an idle stream can carry a request: its peer has
// not ended it, and nothing arrived on it unasked.
func (hc *h1Conn) alive() bool {
	hc.c.SetReadDeadline(time.Unix(1, 0))
	_, err := hc.br.Peek(1)
	hc.c.SetReadDeadline(time.Time{})
	_, stopped := hc.c.PeerStopped()
	return errors.Is(err, os.ErrDeadlineExceeded) && !hc.c.Closed() && !stopped
}

// get takes the newest idle stream that is still usable.
func (p *streamPool) get(maxIdle time.Duration) *h1Conn {
	now := time.Now()
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			return nil
		}
		hc := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if now.Sub(hc.idleAt) < maxIdle && hc.alive() {
			hc.reused = true
			return hc
		}
		hc.close()
	}
}

// put keeps hc for the next request; it closes it when the pool is full or
// closed.
func (p *streamPool) put(hc *h1Conn, maxIdle time.Duration) {
	hc.idleAt = time.Now()
	p.mu.Lock()
	if p.closed || len(p.idle) >= maxIdleStreams || hc.br.Buffered() > 0 {
		p.mu.Unlock()
		hc.close()
		return
	}
	p.idle = append(p.idle, hc)
	if p.sweep == nil {
		p.sweep = time.AfterFunc(maxIdle, func() { p.expire(maxIdle) })
	}
	p.mu.Unlock()
}

// expire closes the streams idle for maxIdle or longer, and comes back for
// the others.
func (p *streamPool) expire(maxIdle time.Duration) {
	now := time.Now()
	p.mu.Lock()
	i := 0
	for i < len(p.idle) && now.Sub(p.idle[i].idleAt) >= maxIdle {
		i++
	}
	old := append([]*h1Conn(nil), p.idle[:i]...)
	p.idle = append(p.idle[:0], p.idle[i:]...)
	empty := len(p.idle) == 0
	if !empty && !p.closed {
		p.sweep.Reset(maxIdle - now.Sub(p.idle[0].idleAt))
	} else {
		p.sweep = nil
	}
	p.mu.Unlock()
	for _, hc := range old {
		hc.close()
	}
	if empty && p.parent != nil {
		p.parent.forget(p)
	}
}

// close closes the idle streams, and those put back later.
func (p *streamPool) close() {
	p.mu.Lock()
	old := p.idle
	p.idle = nil
	p.closed = true
	if p.sweep != nil {
		p.sweep.Stop()
		p.sweep = nil
	}
	p.mu.Unlock()
	for _, hc := range old {
		hc.close()
	}
}

// onStreamPath reports whether req takes the HTTP/1.1 stream path.
func onStreamPath(req *http.Request) bool {
	return (req.Body == nil || req.Body == http.NoBody) && req.Header.Get("Upgrade") == ""
}

// roundTripStream sends req, which has no body or a body held in d, to tg
// over a keep-alive stream of the pool or a new one. When the stream ends
// before any answer, because the agent's upstream closed the connection,
// req goes again on a new stream (up to maxStreamTries in all) if it may
// be sent twice, or if the agent said that none of it reached the
// upstream (StreamCodeUnsent): an upstream closing an idle keep-alive
// connection as the request comes costs no request, POSTs included.
func (s *Server) roundTripStream(tg target, pool *streamPool, req *http.Request, d *direct) (*http.Response, error) {
	hc := pool.get(s.cfg.IdleTimeout)
	for try := 1; ; try++ {
		if hc == nil {
			c, err := s.dialStream(req.Context(), tg, quicutil.KindHTTP, string(pool.ep))
			if err != nil {
				return nil, err
			}
			hc = newH1Conn(c)
		}
		resp, err := s.exchange(hc, pool, req, d)
		if err == nil {
			return resp, nil
		}
		// Nothing came back, and not for lack of time.
		nothing := hc.lr.read == 0 && !isTimeout(err) && req.Context().Err() == nil
		ended := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) // the agent's FIN
		retry := false
		switch {
		case !nothing:
		case hc.reused && replayable(req):
			retry = true // the agent ended a reused stream: its upstream closed the idle connection
		default:
			retry = hc.unsent(tg, ended)
		}
		hc.close()
		if !retry || try == maxStreamTries {
			if nothing && ended {
				err = errUpstreamClosed{}
			}
			return nil, err
		}
		s.m.streamRetries.Inc()
		hc = nil
	}
}

// maxStreamTries bounds the streams one request tries on one target.
const maxStreamTries = 3

// unsent reports whether the agent said, by stopping the stream's sending
// side with StreamCodeUnsent, that no byte of the request reached the
// upstream. After the stream's end (FIN) that word may come up to a round
// trip later: with wait, it is waited for that long (and 20 ms more).
func (hc *h1Conn) unsent(tg target, wait bool) bool {
	code, ok := hc.c.PeerStopped()
	if !ok && wait {
		code, ok = hc.c.WaitPeerStopped(2*tg.rtt() + 20*time.Millisecond)
	}
	return ok && code == quicutil.StreamCodeUnsent
}

// errUpstreamClosed is a stream that ended before any answer.
type errUpstreamClosed struct{}

func (errUpstreamClosed) Error() string {
	return "the upstream closed the connection without answering"
}

// replayable reports whether a request without a body may reach the
// upstream twice (http.Transport's rule).
func replayable(req *http.Request) bool {
	if idempotent(req) {
		return true
	}
	_, a := req.Header["Idempotency-Key"]
	_, b := req.Header["X-Idempotency-Key"]
	return a || b
}

// dialStream opens a stream of kind to endpoint ep of tg for a request.
func (s *Server) dialStream(ctx context.Context, tg streamOpener, kind quicutil.Kind, ep string) (*quicutil.Conn, error) {
	h := &quicutil.StreamHeader{Kind: kind, Endpoint: ep}
	if info, ok := ctx.Value(requestInfoKey).(*requestInfo); ok {
		h.ClientAddr = info.clientAddr
	}
	c, err := tg.openStream(ctx, h, true)
	if err != nil {
		return nil, err
	}
	c.SetIdleTimeout(s.cfg.StreamIdleTimeout)
	return c, nil
}

// streamOpener opens streams: a target.
type streamOpener interface {
	openStream(context.Context, *quicutil.StreamHeader, bool) (*quicutil.Conn, error)
}

// cancel ends the stream of a request whose client went away.
func (hc *h1Conn) cancel() { hc.c.Abort(quicutil.StreamCodeCanceled) }

// readResponse writes req on hc and reads the response head, passing 1xx
// responses to the direct path or to ReverseProxy's trace hook.
func (s *Server) readResponse(hc *h1Conn, req *http.Request, d *direct) (*http.Response, error) {
	head := h1Heads.Get().(*bytes.Buffer)
	head.Reset()
	err := writeHead(head, req, d)
	if err == nil {
		_, err = hc.c.Write(head.Bytes())
	}
	h1Heads.Put(head)
	if err != nil {
		return nil, err
	}
	hc.timedOut.Store(false)
	hc.armHead(s.cfg.ResponseHeaderTimeout)
	for n := 0; ; n++ {
		hc.lr.n = maxResponseHeaderBytes + int64(hc.br.Buffered())
		resp, err := http.ReadResponse(hc.br, req)
		if err != nil {
			hc.disarmHead()
			return nil, err
		}
		code := resp.StatusCode
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			hc.lr.n = -1
			if !hc.disarmHead() {
				return nil, errHeadTimeout{}
			}
			return resp, nil
		}
		if n == max1xx {
			hc.disarmHead()
			return nil, errors.New("upstream sent too many informational (1xx) responses")
		}
		if d != nil {
			d.got1xx(code, textproto.MIMEHeader(resp.Header))
		} else if trace := httptrace.ContextClientTrace(req.Context()); trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				hc.disarmHead()
				return nil, err
			}
		}
	}
}

// exchange writes req on hc and reads the response head. The returned
// response's body gives hc back to the pool once read to its end.
func (s *Server) exchange(hc *h1Conn, pool *streamPool, req *http.Request, d *direct) (*http.Response, error) {
	ctx := req.Context()
	hc.lr.read = 0
	canceled := context.AfterFunc(ctx, hc.cancel)
	resp, err := s.readResponse(hc, req, d)
	if err != nil {
		canceled()
		switch {
		case ctx.Err() != nil:
			err = context.Cause(ctx)
		case hc.timedOut.Load():
			err = errHeadTimeout{}
		}
		return nil, err
	}
	b := &h1Body{
		src:      resp.Body,
		hc:       hc,
		pool:     pool,
		canceled: canceled,
		idle:     s.cfg.IdleTimeout,
		// On the direct path req is the client's: its Connection: close
		// is for its own connection, not the stream.
		reuse: !resp.Close && (d != nil || !req.Close) && resp.StatusCode != http.StatusSwitchingProtocols,
		eof:   resp.Body == http.NoBody,
	}
	resp.Body = b
	return resp, nil
}

// h1Body is a response body on a keep-alive stream: read to its end, the
// stream goes back to the pool; closed before, the stream is closed.
type h1Body struct {
	src      io.ReadCloser
	hc       *h1Conn
	pool     *streamPool
	canceled func() bool
	idle     time.Duration
	reuse    bool
	eof      bool
	done     bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, errors.New("http: read on closed response body")
	}
	n, err := b.src.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	// canceled reports false once the request's context was canceled and
	// the stream aborted.
	if b.canceled() && b.eof && b.reuse {
		b.pool.put(b.hc, b.idle)
	} else {
		b.hc.close()
	}
	return nil
}
