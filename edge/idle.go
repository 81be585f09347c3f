package edge

import (
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// clientIdle cuts a client request whose body and response both stand
// still for the stream idle timeout: a client that stalls in the middle of
// its upload (or stops reading a response) would otherwise hold the request,
// its stream to the agent and the agent's upstream connection forever,
// since net/http waits for the request body before it gives up on a
// request. It costs one timer per request with a body, re-armed lazily
// from the last byte either way; when it fires, the request's read and
// write deadlines are set to now, which unblocks whatever waits.
type clientIdle struct {
	idle  time.Duration
	last  atomic.Int64 // unix nanos of the last byte read or written
	timer *time.Timer
	rc    *http.ResponseController
	done  atomic.Bool
}

func (c *clientIdle) touch() { c.last.Store(time.Now().UnixNano()) }

// watchClientIdle starts watching r; stop ends it. It wraps r.Body and
// makes w report its writes.
func watchClientIdle(w *statusWriter, r *http.Request, idle time.Duration) (stop func()) {
	c := &clientIdle{idle: idle, rc: http.NewResponseController(w)}
	c.touch()
	r.Body = &idleBody{ReadCloser: r.Body, c: c}
	w.idle = c
	c.timer = time.AfterFunc(idle, c.check)
	return func() {
		c.done.Store(true)
		c.timer.Stop()
	}
}

func (c *clientIdle) check() {
	if c.done.Load() {
		return
	}
	if since := time.Since(time.Unix(0, c.last.Load())); since < c.idle {
		c.timer.Reset(c.idle - since)
		return
	}
	now := time.Now()
	c.rc.SetReadDeadline(now)
	c.rc.SetWriteDeadline(now)
}

type idleBody struct {
	io.ReadCloser
	c *clientIdle
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.c.touch()
	}
	return n, err
}
