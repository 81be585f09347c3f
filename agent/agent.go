// Package agent is the client side of Pico as a Go library: it keeps a QUIC
// connection to an edge node, serves endpoints (each stream the edge opens
// is a connection from a client), and dials endpoints for TCP forwarding.
// The pico-agent command is a thin layer over it.
//
// A Go program serves an endpoint with net/http like this:
//
//	a, err := agent.New(agent.Config{Edges: []string{"edge.example.com:8001"}, Token: token})
//	if err != nil { ... }
//	go a.Run(ctx) // keeps the link up, reconnecting with backoff, until ctx ends
//	ln, err := a.Listen(ctx, "foo")
//	if err != nil { ... } // e.g. the edge refused the endpoint, and says why
//	http.Serve(ln, handler)
package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/pico-edge/pico/quicutil"
)

// Config configures an Agent. Zero values select the documented defaults.
type Config struct {
	// Edges are the edge nodes' agent addresses ("host:port"), tried in
	// turn; if empty, 127.0.0.1:8001.
	Edges []string
	// RootCAs verify the edge's certificate; if nil, the system roots.
	RootCAs *x509.CertPool
	// ServerName overrides the name verified in the edge's certificate;
	// if empty, the host of the address dialled.
	ServerName string
	// Token is presented to the edge at connection.
	Token string
	// UpstreamDialTimeout bounds connecting to an upstream; if zero, 5s.
	UpstreamDialTimeout time.Duration
	// StreamIdleTimeout ends an HTTP stream with no byte either way; if zero, 5m.
	StreamIdleTimeout time.Duration
	// TCPIdleTimeout ends a TCP stream with no byte either way; if zero, 1h.
	TCPIdleTimeout time.Duration
	// Backoff paces reconnection; zero fields take its defaults.
	Backoff Backoff
	// Name is reported to the edge (software and version); if empty, "pico-agent".
	Name string
	// Logger receives logs; if nil, logs are discarded.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if len(c.Edges) == 0 {
		c.Edges = []string{"127.0.0.1:8001"}
	}
	if c.UpstreamDialTimeout == 0 {
		c.UpstreamDialTimeout = 5 * time.Second
	}
	if c.StreamIdleTimeout == 0 {
		c.StreamIdleTimeout = 5 * time.Minute
	}
	if c.TCPIdleTimeout == 0 {
		c.TCPIdleTimeout = time.Hour
	}
	c.Backoff = c.Backoff.withDefaults()
	if c.Name == "" {
		c.Name = "pico-agent"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	for _, e := range c.Edges {
		if _, _, err := net.SplitHostPort(e); err != nil {
			return fmt.Errorf("agent: config: edge address %q: want host:port", e)
		}
	}
	if c.UpstreamDialTimeout < 0 || c.StreamIdleTimeout < 0 || c.TCPIdleTimeout < 0 {
		return errors.New("agent: config: negative timeout")
	}
	return nil
}

var (
	// ErrClosed is returned by an Agent's methods after Close.
	ErrClosed = errors.New("agent: closed")
	// ErrUnauthorized is returned by Run when the edge refused the token;
	// retrying with the same token cannot help.
	ErrUnauthorized = errors.New("agent: edge refused the token")
)

// Agent keeps a link to an edge and serves endpoints over it.
type Agent struct {
	cfg Config
	log *slog.Logger
	id  string

	mu        sync.Mutex // guards the fields below
	endpoints map[string]*registration
	link      *link         // the link new work goes to; nil while down
	linkUp    chan struct{} // closed when a link comes up, then replaced
	closed    bool
	running   bool

	quit     chan struct{}  // closed by Close
	runDone  chan struct{}  // closed when Run returns
	bg       sync.WaitGroup // registrations sent outside Run; each ends with its link
	quitOnce sync.Once
}

// handler serves the streams of one endpoint.
type handler interface {
	serve(c *quicutil.Conn, h quicutil.StreamHeader)
}

// registration is an endpoint the agent serves, and its state on the link.
type registration struct {
	id      string
	kind    quicutil.Kind
	handler handler
	err     error         // last refusal by the edge
	done    chan struct{} // closed at the first answer from the edge
	once    sync.Once
}

func (r *registration) answered(err error) {
	r.err = err
	r.once.Do(func() { close(r.done) })
}

// New validates cfg and allocates an Agent; Run connects it.
func New(cfg Config) (*Agent, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 6)
	rand.Read(b)
	return &Agent{
		cfg:       cfg,
		log:       cfg.Logger,
		id:        hex.EncodeToString(b),
		endpoints: make(map[string]*registration),
		linkUp:    make(chan struct{}),
		quit:      make(chan struct{}),
		runDone:   make(chan struct{}),
	}, nil
}

// ID returns the agent's instance ID, as the edge sees it.
func (a *Agent) ID() string { return a.id }

// Close stops Run, closes the link and every Listener. It is safe to call
// more than once.
func (a *Agent) Close() error {
	a.quitOnce.Do(func() { close(a.quit) })
	a.mu.Lock()
	a.closed = true
	running := a.running
	regs := a.endpoints
	a.endpoints = map[string]*registration{}
	a.mu.Unlock()
	for _, r := range regs {
		if ln, ok := r.handler.(*Listener); ok {
			ln.closeLocal()
		}
	}
	if running {
		<-a.runDone // Run closed its links, which ends every request on them
	}
	a.bg.Wait()
	return nil
}

// Serve registers endpoint id with kind and serves its streams with h. It
// waits for the edge's first answer (or ctx) and returns the refusal, if any.
func (a *Agent) serve(ctx context.Context, id string, kind quicutil.Kind, h handler) (*registration, error) {
	if err := quicutil.ValidateEndpointID(id); err != nil {
		return nil, err
	}
	r := &registration{id: id, kind: kind, handler: h, done: make(chan struct{})}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, ErrClosed
	}
	if _, dup := a.endpoints[id]; dup {
		a.mu.Unlock()
		return nil, fmt.Errorf("agent: endpoint %q is served already", id)
	}
	a.endpoints[id] = r
	l := a.link
	a.mu.Unlock()
	if l != nil {
		a.bg.Go(func() { l.register([]*registration{r}) })
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		a.remove(r)
		return nil, fmt.Errorf("register endpoint %q: %w", id, ctx.Err())
	case <-a.quit:
		return nil, ErrClosed
	}
	if r.err != nil {
		a.remove(r)
		return nil, r.err
	}
	return r, nil
}

// remove stops serving r and withdraws it from the edge.
func (a *Agent) remove(r *registration) {
	a.mu.Lock()
	if a.endpoints[r.id] != r {
		a.mu.Unlock()
		return
	}
	delete(a.endpoints, r.id)
	l := a.link
	a.mu.Unlock()
	if l != nil {
		a.bg.Go(func() { l.deregister(r.id) })
	}
}

func (a *Agent) lookup(id string) *registration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.endpoints[id]
}

func (a *Agent) registrations() []*registration {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*registration, 0, len(a.endpoints))
	for _, r := range a.endpoints {
		out = append(out, r)
	}
	return out
}

// currentLink waits for a link, until ctx ends.
func (a *Agent) currentLink(ctx context.Context) (*link, error) {
	for {
		a.mu.Lock()
		l, up, closed := a.link, a.linkUp, a.closed
		a.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		if l != nil {
			return l, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, fmt.Errorf("no link to the edge: %w", ctx.Err())
		case <-a.quit:
			return nil, ErrClosed
		}
	}
}

func (a *Agent) setLink(l *link) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.link = l
	if l != nil {
		close(a.linkUp)
		a.linkUp = make(chan struct{})
	}
}

// Dial opens a TCP connection to endpoint id through the edge: the edge
// routes it to an agent serving id, which connects it to its upstream.
// Dial waits for a link (until ctx ends) and for the edge's answer, so a
// refusal (no such endpoint, upstream down) is its error.
func (a *Agent) Dial(ctx context.Context, id string) (net.Conn, error) {
	if err := quicutil.ValidateEndpointID(id); err != nil {
		return nil, err
	}
	l, err := a.currentLink(ctx)
	if err != nil {
		return nil, fmt.Errorf("dial endpoint %q: %w", id, err)
	}
	return l.dial(ctx, id)
}

// tlsConfig returns the TLS config for dialling addr.
func (a *Agent) tlsConfig(addr string) *tls.Config {
	name := a.cfg.ServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(addr)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    a.cfg.RootCAs,
		ServerName: name,
		NextProtos: []string{quicutil.ALPNAgent},
	}
}
