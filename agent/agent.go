// Package agent is the client side of Pico as a Go library: it keeps QUIC
// connections (links) to one or more edge nodes, serves endpoints (each
// stream an edge opens is a connection from a client), and dials endpoints
// for TCP forwarding. The pico-agent command is a thin layer over it.
//
// With several links (Config.Connections), each goes to a distinct edge
// node, every link registers every endpoint and serves streams, and a
// node's loss, drain (goaway) or silence moves its link to another node
// while the others keep serving.
//
// A Go program serves an endpoint with net/http like this:
//
//	a, err := agent.New(agent.Config{Edges: []string{"edge.example.com:8001"}, Token: token})
//	if err != nil { ... }
//	go a.Run(ctx) // keeps the links up, reconnecting with backoff, until ctx ends
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
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pico-edge/pico/agent/inspect"
	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/quicutil"
)

// Config configures an Agent. Zero values select the documented defaults.
type Config struct {
	// Edges are the edge nodes' agent addresses ("host:port"), tried in
	// turn; if empty, 127.0.0.1:8001. Addresses of other nodes that an
	// edge lists in its Welcome are tried after them. An http:// or
	// https:// URL names the TCP transport behind a balancer
	// (https://lb.example.com/_pico/agent), reached over TCP.
	Edges []string
	// Connections is the number of links to keep, each to a distinct edge
	// node. Every link registers every endpoint and serves streams. If
	// zero, 2 when more than one node is known (more than one address in
	// Edges, or an edge listed other nodes of its cluster), else 1. At
	// most MaxConnections.
	Connections int
	// RootCAs verify the edge's certificate. If nil, the system roots and,
	// when every address in Edges is on this machine (localhost or a
	// loopback IP), the development CA that pico-edge keeps in its
	// default data directory ($XDG_DATA_HOME/pico/ca.pem, else
	// ~/.local/share/pico/ca.pem), read again at each connection attempt:
	// it may appear (pico-edge's first start) or change while the agent
	// runs.
	RootCAs *x509.CertPool
	// WaitOnCertErrors keeps Listen, ListenTCP and the Serve methods
	// waiting (until their context ends) while the edge's certificate
	// cannot be verified. By default they return a *ConnectError at once
	// when no link is up and the last attempts failed so. Run retries
	// with backoff either way. pico-agent sets it, and logs each error.
	WaitOnCertErrors bool
	// ServerName overrides the name verified in the edge's certificate;
	// if empty, the host of the address dialled.
	ServerName string
	// Token is presented to the edge at connection, and in the header of
	// each Dial stream (an edge with client auth checks it there). SetToken
	// replaces it.
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

	// Transport selects QUIC on UDP, the TCP transport, or auto (QUIC,
	// falling back to TCP when UDP is blocked); if empty, TransportQUIC
	// (pico-agent's default is auto). See transport.go.
	Transport Transport
	// ProxyURL is the HTTP proxy (http:// or https://, credentials in its
	// userinfo) links over TCP go through; if nil, HTTPS_PROXY and
	// NO_PROXY from the environment, read by New.
	ProxyURL *url.URL
	// ProxyRootCAs verify an https:// proxy; if nil, the system roots.
	ProxyRootCAs *x509.CertPool
	// QUICProbe is the first wait before a link that auto moved to TCP
	// tries QUIC again; it doubles up to MaxQUICProbe. If zero,
	// DefaultQUICProbe.
	QUICProbe time.Duration
	// Inspector, if not nil, captures the exchanges of HTTP endpoints
	// served by ServeUpstream and ServeHTTPUpstream (see package
	// agent/inspect). The caller closes it after the agent.
	Inspector *inspect.Inspector
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
	if c.Transport == "" {
		c.Transport = TransportQUIC
	}
	if c.QUICProbe == 0 {
		c.QUICProbe = DefaultQUICProbe
	}
	if c.Name == "" {
		c.Name = "pico-agent"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// MaxConnections bounds Config.Connections.
const MaxConnections = 8

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if c.Connections < 0 || c.Connections > MaxConnections {
		return fmt.Errorf("agent: config: %d connections; want 0 (default) to %d", c.Connections, MaxConnections)
	}
	if err := validTransport(c.Transport, c.Edges); err != nil {
		return err
	}
	for _, e := range c.Edges {
		if _, _, err := net.SplitHostPort(e); err != nil && !isURL(e) {
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

// Agent keeps links to edge nodes and serves endpoints over them.
type Agent struct {
	cfg Config
	log *slog.Logger
	id  string

	mu        sync.Mutex // guards the fields below and link.leaving
	token     string     // presented to edges: Config.Token, then SetToken's
	endpoints map[string]*registration
	links     []*link              // open links: live ones take new work, leaving ones finish theirs
	changed   chan struct{}        // closed when the set of live links changes, then replaced
	statusCh  chan struct{}        // closed when what Status reports changes, then replaced
	rr        int                  // Dial's round-robin cursor
	hints     map[string]hint      // other nodes the edges listed, by node ID
	addrNode  map[string]string    // the node last met at each address dialled
	down      map[string]time.Time // addresses just lost or unreachable: dialled last until then
	want      int                  // links Run keeps
	closed    bool
	running   bool
	stopping  bool // Run is closing its links: changes are not logged

	dev      *devCA        // the development CA trusted beside the system roots, or nil
	certErr  error         // no link is up and the last attempts failed to verify the edge's certificate
	failed   chan struct{} // closed when certErr is set, then replaced
	runErr   error         // why Run returned, once it did
	draining bool          // Shutdown runs: no endpoint is registered any more

	reconnects    atomic.Uint64 // links replaced
	connectErrors atomic.Uint64 // failed attempts to connect

	grow     chan struct{}  // an edge listed peers: Run may keep one more link
	quit     chan struct{}  // closed by Close
	runDone  chan struct{}  // closed when Run returns
	bg       sync.WaitGroup // registrations sent outside Run; each ends with its link
	retiring sync.WaitGroup // links handed off and closing; Run waits for them
	quitOnce sync.Once

	fb       fallback                         // TransportAuto's state (transport.go)
	envProxy func(*url.URL) (*url.URL, error) // HTTPS_PROXY and NO_PROXY, or nil
}

// handler serves the streams of one endpoint.
type handler interface {
	serve(c *quicutil.Conn, h quicutil.StreamHeader, st *endpointStats)
}

// registration is an endpoint the agent serves, and the answers of the
// links asked to register it.
type registration struct {
	id      string
	kind    quicutil.Kind
	handler handler
	done    chan struct{} // closed when the answers decide; err is set then
	stats   endpointStats
	urls    []string // where clients reach it, as the edges said; guarded by Agent.mu

	mu      sync.Mutex // guards the fields below
	err     error      // the decision: nil (some link accepted) or a refusal
	asked   int        // links asked that have not answered
	refusal error      // the first final refusal
	decided bool
}

// ask counts one more link asked to register r.
func (r *registration) ask() {
	r.mu.Lock()
	r.asked++
	r.mu.Unlock()
}

// answered records one link's answer: nil when the edge accepted r, else
// why not. A final refusal (invalid ID, conflict, limit, ...) decides once
// no other link asked can still accept; a link that died or a draining
// edge (final false) decides nothing, and the next link asks again.
func (r *registration) answered(err error, final bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked--
	if r.decided {
		return
	}
	switch {
	case err == nil:
		r.decideLocked(nil)
	case final && r.refusal == nil:
		r.refusal = err
	}
	if !r.decided && r.asked <= 0 && r.refusal != nil {
		r.decideLocked(r.refusal)
	}
}

func (r *registration) decideLocked(err error) {
	r.err, r.decided = err, true
	close(r.done)
}

// New validates cfg and allocates an Agent; Run connects it.
func New(cfg Config) (*Agent, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 6)
	rand.Read(b)
	a := &Agent{
		cfg:       cfg,
		log:       cfg.Logger,
		id:        hex.EncodeToString(b),
		token:     cfg.Token,
		endpoints: make(map[string]*registration),
		changed:   make(chan struct{}),
		statusCh:  make(chan struct{}),
		failed:    make(chan struct{}),
		hints:     make(map[string]hint),
		addrNode:  make(map[string]string),
		down:      make(map[string]time.Time),
		grow:      make(chan struct{}, 1),
		quit:      make(chan struct{}),
		runDone:   make(chan struct{}),
	}
	a.fb.started = time.Now()
	if cfg.RootCAs == nil {
		if file := localDevCA(cfg.Edges, certs.DefaultDir()); file != "" {
			a.dev = &devCA{file: file}
		}
	}
	if cfg.ProxyURL == nil {
		a.envProxy = envProxyFunc()
	}
	return a, nil
}

// ID returns the agent's instance ID, as the edge sees it.
func (a *Agent) ID() string { return a.id }

// Nodes returns the IDs of the edge nodes the agent has live links to,
// sorted. A link the edge asked to move, or that went silent, is no longer
// live: it only finishes its streams.
func (a *Agent) Nodes() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []string
	for _, l := range a.links {
		if !l.leaving {
			ids = append(ids, l.nodeID)
		}
	}
	slices.Sort(ids)
	return ids
}

// Close stops Run, closes the links and every Listener. It is safe to call
// more than once.
func (a *Agent) Close() error {
	a.quitOnce.Do(func() { close(a.quit) })
	a.mu.Lock()
	a.closed = true
	running := a.running
	regs := a.endpoints
	a.endpoints = map[string]*registration{}
	a.statusChangedLocked()
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

// serve registers endpoint id with kind and serves its streams with h. It
// asks every live link (and every link that comes up later) to register
// the endpoint, waits until one accepted it or all refused it (or ctx
// ends), and returns the refusal, if any.
func (a *Agent) serve(ctx context.Context, id string, kind quicutil.Kind, h handler) (*registration, error) {
	if err := quicutil.ValidateEndpointID(id); err != nil {
		return nil, err
	}
	r := &registration{id: id, kind: kind, handler: h, done: make(chan struct{})}
	a.mu.Lock()
	if a.closed || a.draining {
		a.mu.Unlock()
		return nil, ErrClosed
	}
	if _, dup := a.endpoints[id]; dup {
		a.mu.Unlock()
		return nil, fmt.Errorf("agent: endpoint %q is served already", id)
	}
	a.endpoints[id] = r
	a.statusChangedLocked()
	live := a.liveLocked()
	for range live {
		r.ask() // every link is counted before any answers
	}
	for _, l := range live {
		a.bg.Go(func() { l.register([]*registration{r}) })
	}
	a.mu.Unlock()
	if err := a.await(ctx, r); err != nil {
		a.remove(r)
		return nil, fmt.Errorf("register endpoint %q: %w", id, err)
	}
	if r.err != nil {
		a.remove(r)
		return nil, r.err
	}
	return r, nil
}

// await waits until the links' answers decide r, and returns nil then. It
// returns an error when ctx ends or the agent closes first, when Run
// returned, or when no link is up and the last attempts to connect failed
// on the edge's certificate (unless Config.WaitOnCertErrors).
func (a *Agent) await(ctx context.Context, r *registration) error {
	for {
		a.mu.Lock()
		failed, certErr, runDone := a.failed, a.certErr, a.runDone
		stuck := certErr != nil && !a.cfg.WaitOnCertErrors && len(a.liveLocked()) == 0
		a.mu.Unlock()
		if stuck {
			select {
			case <-r.done: // decided meanwhile after all
				return nil
			default:
			}
			return &ConnectError{Err: certErr, Hint: certHint(certErr)}
		}
		select {
		case <-r.done:
			return nil
		case <-failed:
		case <-ctx.Done():
			return ctx.Err()
		case <-a.quit:
			return ErrClosed
		case <-runDone:
			a.mu.Lock()
			err := a.runErr
			a.mu.Unlock()
			if err == nil {
				err = errors.New("agent: Run has returned")
			}
			return err
		}
	}
}

// ConnectError is returned when no link is up and the agent's last
// attempts to connect failed for a reason that retrying alone does not
// fix: the edge's certificate cannot be verified. Run retries meanwhile
// (see Config.WaitOnCertErrors).
type ConnectError struct {
	Err  error  // the last attempt's error
	Hint string // what to do about it
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("cannot connect to the edge: %v (%s)", e.Err, e.Hint)
}

func (e *ConnectError) Unwrap() error { return e.Err }

// roundFailed records that a round of attempts to connect reached no
// edge, and why: await reports a certificate error at once.
func (a *Agent) roundFailed(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if certHint(err) == "" {
		a.certErr = nil // the edge unreachable, say: the agent waits for it
		return
	}
	a.certErr = err
	close(a.failed)
	a.failed = make(chan struct{})
}

// remove stops serving r and withdraws it from every link.
func (a *Agent) remove(r *registration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.endpoints[r.id] != r {
		return
	}
	delete(a.endpoints, r.id)
	for _, l := range a.links {
		delete(l.answers, r.id)
	}
	a.statusChangedLocked()
	if a.closed {
		return
	}
	for _, l := range a.links {
		a.bg.Go(func() { l.deregister(r.id) })
	}
}

func (a *Agent) lookup(id string) *registration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.endpoints[id]
}

// askAll returns every registration, each counted as asked once more: the
// caller registers them on one link.
func (a *Agent) askAll() []*registration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining {
		return nil // Shutdown withdrew them: a new link registers nothing
	}
	out := make([]*registration, 0, len(a.endpoints))
	for _, r := range a.endpoints {
		r.ask()
		out = append(out, r)
	}
	return out
}

// liveLocked returns the live links; the caller holds a.mu.
func (a *Agent) liveLocked() []*link {
	var out []*link
	for _, l := range a.links {
		if !l.leaving {
			out = append(out, l)
		}
	}
	return out
}

// pickLink returns the live link with the fewest streams in flight (in
// round-robin order among equals), other than those in tried. It waits
// for one until ctx ends.
func (a *Agent) pickLink(ctx context.Context, tried []*link) (*link, error) {
	for {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return nil, ErrClosed
		}
		var best *link
		var bestLoad int64
		n := len(a.links)
		a.rr++
		for i := range n {
			l := a.links[(a.rr+i)%n]
			if l.leaving || slices.Contains(tried, l) {
				continue
			}
			if load := l.active.Load(); best == nil || load < bestLoad {
				best, bestLoad = l, load
			}
		}
		changed := a.changed
		a.mu.Unlock()
		if best != nil {
			return best, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("no link to the edge: %w", ctx.Err())
		case <-a.quit:
			return nil, ErrClosed
		}
	}
}

// maxDialLinks bounds the links one Dial tries when links die under it.
const maxDialLinks = 3

// Dial opens a TCP connection to endpoint id through the edge: the edge
// routes it to an agent serving id, which connects it to its upstream.
// Dial uses the least loaded live link, waits for one (until ctx ends),
// and waits for the edge's answer, so a refusal (no such endpoint,
// upstream down) is its error. When the link dies before the edge
// answered, Dial tries another.
func (a *Agent) Dial(ctx context.Context, id string) (net.Conn, error) {
	if err := quicutil.ValidateEndpointID(id); err != nil {
		return nil, err
	}
	var tried []*link
	for {
		l, err := a.pickLink(ctx, tried)
		if err != nil {
			return nil, fmt.Errorf("dial endpoint %q: %w", id, err)
		}
		c, err := l.dial(ctx, id)
		if err == nil {
			return c, nil
		}
		tried = append(tried, l)
		var de *DialError
		if errors.As(err, &de) || ctx.Err() != nil || len(tried) == maxDialLinks || !l.died(err) {
			return nil, err
		}
		l.log.Debug("link died before the edge answered a dial; trying another", "endpoint_id", id, "err", err)
	}
}

// admit makes l a live link unless another live link goes to the same
// node, or l goes to avoid (unless allowAvoid).
func (a *Agent) admit(l *link, avoid string, allowAvoid bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ErrClosed
	}
	for _, o := range a.links {
		if !o.leaving && o.nodeID == l.nodeID {
			return &duplicateError{node: l.nodeID}
		}
	}
	if l.nodeID == avoid && !allowAvoid {
		return &duplicateError{node: l.nodeID, leaving: true}
	}
	a.links = append(a.links, l)
	a.certErr = nil
	a.linksChangedLocked()
	return nil
}

// registeredOn reports whether a live link to node has registered every
// endpoint of the agent.
func (a *Agent) registeredOn(node string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, l := range a.links {
		if l.leaving || l.nodeID != node {
			continue
		}
		for id := range a.endpoints {
			if err, ok := l.answers[id]; !ok || err != nil {
				return false
			}
		}
		return true
	}
	return false
}

// duplicateError refuses a new link to a node the agent is linked to, or
// is leaving.
type duplicateError struct {
	node    string
	leaving bool
}

func (e *duplicateError) Error() string {
	if e.leaving {
		return fmt.Sprintf("edge node %s is the one the link is leaving", e.node)
	}
	return fmt.Sprintf("edge node %s is linked already", e.node)
}

// setLeaving takes l out of the live links: it finishes its streams but
// takes no new work.
func (a *Agent) setLeaving(l *link) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !l.leaving {
		l.leaving = true
		a.linksChangedLocked()
	}
}

// dropLink forgets l, which is closed or closing.
func (a *Agent) dropLink(l *link) {
	a.mu.Lock()
	defer a.mu.Unlock()
	i := slices.Index(a.links, l)
	if i < 0 {
		return
	}
	a.links = slices.Delete(a.links, i, i+1)
	if !l.leaving {
		a.linksChangedLocked()
	}
}

// linksChangedLocked wakes those waiting for a link or on StatusChanged
// and logs the live links, unless Run is stopping; the caller holds a.mu.
func (a *Agent) linksChangedLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
	a.statusChangedLocked()
	nodes := make([]string, 0, len(a.links))
	for _, l := range a.links {
		if !l.leaving {
			nodes = append(nodes, l.nodeID+" "+l.addr)
		}
	}
	slices.Sort(nodes)
	if !a.stopping {
		a.log.Info("linked to edge nodes", "nodes", nodes, "links", len(nodes), "want", a.want)
	}
}

// tlsConfig returns the TLS config for dialling c.
func (a *Agent) tlsConfig(c candidate) (*tls.Config, error) {
	roots, err := a.rootCAs()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    roots,
		ServerName: a.serverName(c),
		NextProtos: []string{quicutil.ALPNAgent},
	}, nil
}

// serverName is the name verified in the certificate of the edge at c:
// Config.ServerName, else the name verified at the edge that listed c,
// else the host of c's address.
func (a *Agent) serverName(c candidate) string {
	switch {
	case a.cfg.ServerName != "":
		return a.cfg.ServerName
	case c.serverName != "":
		return c.serverName
	}
	if u, err := edgeURL(c.addr); err == nil && isURL(c.addr) {
		return u.Hostname()
	}
	host, _, _ := net.SplitHostPort(c.addr)
	return host
}

// currentToken returns the token new links and dials present.
func (a *Agent) currentToken() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.token
}

// SetToken replaces the token the agent presents to edges (a token nearing
// its expiry, or re-read from a file): new links and Dials use it at once,
// and every open link sends it to its edge, which then keeps the link
// past the old token's expiry and withdraws the endpoints the new token
// does not allow. SetToken waits for every link's answer (or ctx) and
// returns what went wrong: an error wrapping ErrUnauthorized when an edge
// refused the token (that link keeps its old one and ends when it
// expires), and a *WithdrawnError for each endpoint an edge withdrew. A
// link that dies meanwhile is no error: its replacement presents the new
// token.
func (a *Agent) SetToken(ctx context.Context, token string) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	a.token = token
	links := slices.Clone(a.links)
	a.mu.Unlock()
	errs := make([]error, len(links))
	var wg sync.WaitGroup
	for i, l := range links {
		wg.Go(func() { errs[i] = l.refresh(ctx, token) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// WithdrawnError is an endpoint an edge withdrew because a new token
// (SetToken) does not allow it.
type WithdrawnError struct {
	Edge     string // the edge's address
	Endpoint string
	Reason   string
}

func (e *WithdrawnError) Error() string {
	return fmt.Sprintf("edge %s withdrew endpoint %q: %s", e.Edge, e.Endpoint, e.Reason)
}
