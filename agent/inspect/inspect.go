// Package inspect captures the HTTP exchanges an agent serves, keeps the
// last of them in bounded memory, replays them to the upstream, and serves
// a web UI and a JSON API over them (pico-agent's request inspector).
//
// Capture never changes what is proxied and adds no wait to it: the
// agent's copy hands each read to a Stream (quicutil.Observer), which
// copies it into a bounded buffer per direction and returns; one goroutine
// per stream parses the buffered bytes with net/http. When a buffer is
// full the bytes are dropped, not waited for, and the exchange is marked
// truncated. HTTP/1.1 streams are parsed with net/http, HTTP/2 streams
// (the edge speaks HTTP/2 to h2c and h2 upstreams) with x/net/http2's
// Framer; TCP streams are not captured.
//
//	agent copy ──ToUpstream──▶ pipe (≤ 1 MiB)   ──▶ ReadRequest ─┐
//	agent copy ◀─FromUpstream─ pipe (≤ 1 MiB)   ──▶ ReadResponse ─┴▶ Exchange ▶ ring (M exchanges, B bytes)
//	(HTTP/2: an http2.Framer on each pipe, frames matched by stream ID)
//
// It imports no package of Pico: agent.Config.Inspector plugs it in.
package inspect

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultRedact names the headers whose values are masked by default.
var DefaultRedact = []string{"Authorization", "Cookie", "Set-Cookie", "X-Pico-Authorization"}

// Redacted replaces the value of a redacted header.
const Redacted = "[redacted]"

// Config configures an Inspector. Zero values select the documented defaults.
type Config struct {
	// MaxExchanges is how many exchanges are kept, the oldest dropped
	// first; if zero, 500.
	MaxExchanges int
	// MaxBytes bounds the memory of the capture: the exchanges kept and
	// the bytes waiting to be parsed (at most 1/8 of it); if zero, 64 MiB.
	MaxBytes int64
	// BodyBytes is how much of each request and response body is kept; if
	// zero, 64 KiB; if negative, none.
	BodyBytes int
	// Redact names headers whose values are masked; if nil, DefaultRedact.
	// An empty non-nil slice masks none.
	Redact []string
	// ReplayTimeout bounds a replay; if zero, 30s.
	ReplayTimeout time.Duration
	// Logger receives logs; if nil, logs are discarded.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.MaxExchanges == 0 {
		c.MaxExchanges = 500
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = 64 << 20
	}
	switch {
	case c.BodyBytes == 0:
		c.BodyBytes = 64 << 10
	case c.BodyBytes < 0:
		c.BodyBytes = 0
	}
	if c.Redact == nil {
		c.Redact = DefaultRedact
	}
	if c.ReplayTimeout == 0 {
		c.ReplayTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports a Config that cannot work.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.MaxExchanges < 0:
		return errors.New("inspect: MaxExchanges is negative")
	case c.MaxBytes < 1<<20:
		return errors.New("inspect: MaxBytes is below 1 MiB")
	case int64(c.BodyBytes)*4 > c.MaxBytes:
		return errors.New("inspect: BodyBytes is over a quarter of MaxBytes")
	case c.ReplayTimeout < 0:
		return errors.New("inspect: ReplayTimeout is negative")
	}
	for _, h := range c.Redact {
		if !validHeaderName(h) {
			return errors.New("inspect: redacted header " + quote(h) + " is not a header name")
		}
	}
	return nil
}

// Inspector captures exchanges and keeps the last of them. Its zero value
// is not usable; a nil *Inspector captures nothing.
type Inspector struct {
	cfg    Config
	log    *slog.Logger
	redact map[string]bool // canonical header names
	parse  budget          // bytes waiting in pipes
	client *replayClients

	mu        sync.Mutex // guards the fields below
	ring      []*Exchange
	bytes     int64 // the ring's
	nextID    uint64
	version   uint64
	evicted   uint64
	truncated uint64
	upstreams map[string]Upstream // by endpoint: the last seen
	streams   map[*Stream]struct{}
	closed    bool
	changed   chan struct{} // closed at the next change

	wg sync.WaitGroup // parsers and replays
}

// Upstream says how to reach an endpoint's upstream, for replays.
type Upstream struct {
	Addr  string      // host:port
	TLS   *tls.Config // nil: plaintext
	HTTP2 bool        // HTTP/2: with prior knowledge (h2c) in plaintext, by ALPN over TLS
}

// New returns an Inspector for cfg.
func New(cfg Config) (*Inspector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	in := &Inspector{
		cfg:       cfg,
		log:       cfg.Logger,
		redact:    map[string]bool{},
		upstreams: map[string]Upstream{},
		streams:   map[*Stream]struct{}{},
		changed:   make(chan struct{}),
	}
	in.parse.limit = cfg.MaxBytes / 8
	in.client = newReplayClients()
	for _, h := range cfg.Redact {
		in.redact[http.CanonicalHeaderKey(h)] = true
	}
	return in, nil
}

// Close stops the capture: streams being captured are dropped, parsers and
// replays end, and Close waits for them. Exchanges stay readable. Safe
// twice; a nil Inspector is closed.
func (in *Inspector) Close() error {
	if in == nil {
		return nil
	}
	in.mu.Lock()
	in.closed = true
	streams := make([]*Stream, 0, len(in.streams))
	for s := range in.streams {
		streams = append(streams, s)
	}
	in.mu.Unlock()
	for _, s := range streams {
		s.req.stop()
		s.resp.stop()
	}
	in.client.close()
	in.wg.Wait()
	return nil
}

// Stats counts what the inspector holds and dropped.
type Stats struct {
	Exchanges int    `json:"exchanges"`
	Bytes     int64  `json:"bytes"`     // memory of the exchanges kept
	Evicted   uint64 `json:"evicted"`   // exchanges dropped to keep within the limits
	Truncated uint64 `json:"truncated"` // exchanges whose capture fell behind
	Dropped   uint64 `json:"dropped"`   // stream directions whose capture fell behind and stopped
	Version   uint64 `json:"version"`   // changes so far
	MaxBytes  int64  `json:"max_bytes"` // Config.MaxBytes
	MaxCount  int    `json:"max_exchanges"`
}

// Stats returns the inspector's counters.
func (in *Inspector) Stats() Stats {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.statsLocked()
}

func (in *Inspector) statsLocked() Stats {
	return Stats{Exchanges: len(in.ring), Bytes: in.bytes, Evicted: in.evicted, Truncated: in.truncated,
		Dropped: in.parse.breaks.Load(),
		Version: in.version, MaxBytes: in.cfg.MaxBytes, MaxCount: in.cfg.MaxExchanges}
}

// Changed returns a channel closed at the next change of the exchanges.
func (in *Inspector) Changed() <-chan struct{} {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.changed
}

// Exchanges returns the exchanges kept, oldest first, that match keep
// (all with a nil keep).
func (in *Inspector) Exchanges(keep func(*Exchange) bool) []*Exchange {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]*Exchange, 0, len(in.ring))
	for _, e := range in.ring {
		if keep == nil || keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// Exchange returns the exchange with id, or nil.
func (in *Inspector) Exchange(id uint64) *Exchange {
	in.mu.Lock()
	defer in.mu.Unlock()
	if i, ok := in.indexLocked(id); ok {
		return in.ring[i]
	}
	return nil
}

// Clear drops every exchange kept.
func (in *Inspector) Clear() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.ring, in.bytes = nil, 0
	in.changedLocked()
}

func (in *Inspector) indexLocked(id uint64) (int, bool) {
	lo, hi := 0, len(in.ring)
	for lo < hi {
		m := (lo + hi) / 2
		if in.ring[m].ID < id {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, lo < len(in.ring) && in.ring[lo].ID == id
}

func (in *Inspector) changedLocked() {
	in.version++
	close(in.changed)
	in.changed = make(chan struct{})
}

// add keeps e (immutable from now on) as a new exchange and returns its
// ID.
func (in *Inspector) add(e *Exchange) uint64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.nextID++
	e.ID = in.nextID
	e.size = e.memSize()
	if e.Truncated {
		in.truncated++
	}
	in.ring = append(in.ring, e)
	in.bytes += e.size
	in.trimLocked()
	in.changedLocked()
	return e.ID
}

// update replaces the exchange with e.ID by e (immutable from now on), if
// it is still kept.
func (in *Inspector) update(e *Exchange) {
	in.mu.Lock()
	defer in.mu.Unlock()
	i, ok := in.indexLocked(e.ID)
	if !ok {
		return
	}
	e.size = e.memSize()
	if e.Truncated && !in.ring[i].Truncated {
		in.truncated++
	}
	in.bytes += e.size - in.ring[i].size
	in.ring[i] = e
	in.trimLocked()
	in.changedLocked()
}

// trimLocked drops the oldest exchanges until the ring is within its
// limits.
func (in *Inspector) trimLocked() {
	limit := in.cfg.MaxBytes - in.parse.limit
	n := 0
	for n < len(in.ring) && (len(in.ring)-n > in.cfg.MaxExchanges || in.bytes > limit) {
		in.bytes -= in.ring[n].size
		in.ring[n] = nil
		n++
	}
	if n > 0 {
		in.evicted += uint64(n)
		in.ring = in.ring[n:]
		if cap(in.ring) > 2*in.cfg.MaxExchanges+16 {
			in.ring = append([]*Exchange(nil), in.ring...)
		}
	}
}

// A budget counts bytes against a limit, without locks.
type budget struct {
	limit  int64
	used   atomic.Int64
	breaks atomic.Uint64 // pipes that dropped bytes
}

func (b *budget) take(n int64) bool {
	if b.used.Add(n) > b.limit {
		b.used.Add(-n)
		return false
	}
	return true
}

func (b *budget) give(n int64) { b.used.Add(-n) }
