// Package edge is a Pico edge node: the front door that takes client
// requests, the agent listener that takes agent connections over QUIC, and
// the admin API. Create one with New and run it with Run.
package edge

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// Listeners are the sockets a Server serves. The caller opens them (so tests
// can use 127.0.0.1:0); Run closes them.
type Listeners struct {
	Proxy net.Listener   // plain HTTP/1.1 front door
	Agent net.PacketConn // UDP for QUIC: agents and forwarders
	Admin net.Listener   // admin API; may be nil
	TLS   net.Listener   // HTTPS front door (HTTP/1.1 and HTTP/2); may be nil
	H3    net.PacketConn // HTTP/3 front door (UDP, usually TLS's port number); may be nil
	// AgentTCP takes agent links over the TCP transport (usually on the
	// agent port's number); may be nil. The front doors take them too.
	AgentTCP net.Listener
}

// Server is one edge node.
type Server struct {
	cfg     Config
	log     *slog.Logger
	table   *routing.Table
	local   *routing.Local // what this node announces to the cluster
	epoch   uint64         // this start of the node, for the cluster
	cluster *cluster       // nil unless Config.Cluster
	auth    *authenticator // nil unless Config.Auth
	m       *serverMetrics

	gate       *endpointGate // requests in flight per endpoint
	connLimits *connLimits   // client connections of the TCP front doors

	proxy    http.Handler
	httpSrv  *http.Server
	adminSrv *http.Server
	tlsDoor  *tlsDoor
	agentTCP *agentTCP // agent links over TCP (agenttcp.go)

	mu         sync.Mutex // guards the fields below
	sessions   map[uint64]*session
	tokenConns map[[sha256.Size]byte]int // agent connections by token (its hash), when tokens are checked
	peerIn     map[*quic.Conn]struct{}   // relay connections other nodes opened; nil once closed
	// ending holds what ends a long-lived stream cleanly when the grace
	// period is over: a FIN on both ends of TCP forwards and relayed
	// streams, a close of the agent side of upgraded connections.
	ending  map[any]func()
	nextID  uint64
	tr      *quic.Transport
	ln      *quic.Listener
	running bool
	// connsClosed: shutdown is closing every connection; acceptAgents
	// adds none to conns from then on.
	connsClosed bool

	membersMu      sync.Mutex
	membersChanged chan struct{} // closed and replaced when membership changes

	activeStreams atomic.Int64
	draining      atomic.Bool
	ready         atomic.Bool
	conns         sync.WaitGroup // session goroutines

	drainOnce sync.Once
	drainReq  chan struct{} // closed by Drain
	closeOnce sync.Once
	started   chan struct{} // closed when Run serves
	closed    chan struct{} // closed by Close
	runDone   chan struct{} // closed when Run returns
}

// New validates cfg and allocates a Server; Run starts it.
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	epoch := uint64(time.Now().UnixNano())
	s := &Server{
		cfg:            cfg,
		log:            cfg.Logger,
		table:          routing.NewTable(),
		local:          routing.NewLocal(cfg.NodeID, epoch),
		epoch:          epoch,
		sessions:       make(map[uint64]*session),
		peerIn:         make(map[*quic.Conn]struct{}),
		tokenConns:     make(map[[sha256.Size]byte]int),
		ending:         make(map[any]func()),
		started:        make(chan struct{}),
		drainReq:       make(chan struct{}),
		membersChanged: make(chan struct{}),
		closed:         make(chan struct{}),
		runDone:        make(chan struct{}),
	}
	s.m = newServerMetrics(cfg.Metrics, s)
	if cfg.Auth != nil {
		s.auth = newAuthenticator(*cfg.Auth, cfg.Metrics, cfg.Logger)
	}
	s.gate = &endpointGate{max: int64(cfg.MaxInflightPerEndpoint)}
	s.connLimits = &connLimits{perListener: int64(cfg.MaxConnsPerListener), global: int64(cfg.MaxConns),
		perIP: rate.Limit(cfg.NewConnsPerIPPerSecond), refused: func(reason string) { s.m.connRefused[reason].Inc() },
		exempt: func(ip netip.Addr) bool { return s.trusted(ip.String()) }}
	s.agentTCP = newAgentTCP(s)
	s.proxy = s.agentTCP.withAgentUpgrade(s.newFrontDoor())
	return s, nil
}

// NodeID returns the node's ID.
func (s *Server) NodeID() string { return s.cfg.NodeID }

// Table returns the node's routing table (read it, do not change it).
func (s *Server) Table() *routing.Table { return s.table }

// Started is closed once Run serves.
func (s *Server) Started() <-chan struct{} { return s.started }

// GossipAddr returns the address memberlist listens on ("" when the node is
// not in a cluster, or before Run started it).
func (s *Server) GossipAddr() string {
	select {
	case <-s.started:
	default:
		return ""
	}
	if s.cluster == nil {
		return ""
	}
	return s.cluster.gossip
}

// MembersChanged returns a channel closed at the next membership change.
func (s *Server) MembersChanged() <-chan struct{} {
	s.membersMu.Lock()
	defer s.membersMu.Unlock()
	return s.membersChanged
}

func (s *Server) notifyMembers() {
	s.membersMu.Lock()
	close(s.membersChanged)
	s.membersChanged = make(chan struct{})
	s.membersMu.Unlock()
}

// Members returns the number of live cluster members, this node included.
func (s *Server) Members() int { return s.memberCount() }

// Handler returns the front door as an http.Handler.
func (s *Server) Handler() http.Handler { return s.proxy }

// Run serves lns until ctx is done, then drains (agents are told to go
// away, requests in flight get Config.ShutdownGrace) and returns nil. It
// returns an error if a listener fails. Run closes lns.
func (s *Server) Run(ctx context.Context, lns Listeners) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("edge: Run called twice")
	}
	s.running = true
	s.mu.Unlock()
	defer close(s.runDone)
	tlsConf := &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: s.cfg.GetCertificate,
		NextProtos:     []string{quicutil.ALPNAgent},
		// Peers authenticate with the cluster secret, not a client
		// certificate (see peer.dial).
		// Agents reconnect with full handshakes (no 0-RTT); tickets would
		// only cost memory on every connection.
		SessionTicketsDisabled: true,
	}
	if s.cfg.Cluster != nil {
		tlsConf.NextProtos = append(tlsConf.NextProtos, quicutil.ALPNPeer)
	}
	tr := &quic.Transport{Conn: lns.Agent, StatelessResetKey: s.cfg.StatelessResetKey,
		VerifySourceAddress: handshakeLimiter(s.cfg.HandshakesPerSecond)}
	ln, err := tr.Listen(tlsConf, quicutil.EdgeConfig())
	if err != nil {
		closeAll(lns)
		tr.Close()
		return fmt.Errorf("listen for agents on %s: %w", lns.Agent.LocalAddr(), err)
	}
	if udp, ok := lns.Agent.(*net.UDPConn); ok {
		if advice := quicutil.UDPBufferAdvice(udp); advice != "" {
			s.log.Warn(advice)
		}
	}
	plain := new(http.Protocols)
	plain.SetHTTP1(true)
	plain.SetUnencryptedHTTP2(true) // h2c with prior knowledge, e.g. gRPC behind a TLS-terminating balancer
	s.httpSrv = &http.Server{
		Handler:           s.proxy,
		Protocols:         plain,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxClientStreams},
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          log.New(slogWriter{s.log, slog.LevelDebug}, "", 0),
	}
	s.mu.Lock()
	s.tr, s.ln = tr, ln
	s.mu.Unlock()
	if s.cfg.Cluster != nil {
		if err := s.startCluster(lns.Agent.LocalAddr()); err != nil {
			closeAll(lns)
			ln.Close()
			tr.Close()
			return err
		}
	}

	lns.Proxy = &limitListener{Listener: lns.Proxy, l: s.connLimits, tell429: true}
	if lns.TLS != nil {
		lns.TLS = &limitListener{Listener: lns.TLS, l: s.connLimits}
	}
	g, gctx := errgroup.WithContext(ctx)
	door, err := s.startTLSDoor(lns, g.Go) // fails only before it starts anything
	if err != nil {
		if s.cluster != nil {
			s.cluster.leave(0)
		}
		closeAll(lns)
		tr.Close()
		return err
	}
	s.mu.Lock()
	s.tlsDoor = door
	s.mu.Unlock()
	g.Go(func() error { return s.acceptAgents(ln) })
	s.agentTCP.start(g.Go, tlsConf, lns.AgentTCP)
	if s.auth != nil && s.auth.jwks != nil {
		g.Go(func() error { s.auth.jwks.run(); return nil }) // until shutdown closes it
	}
	g.Go(func() error {
		if err := s.httpSrv.Serve(guardListener{lns.Proxy, s.cfg.MaxHeaderBytes + 4096}); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve proxy on %s: %w", lns.Proxy.Addr(), err)
		}
		return nil
	})
	if lns.Admin != nil {
		s.adminSrv = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			if err := s.adminSrv.Serve(lns.Admin); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve admin on %s: %w", lns.Admin.Addr(), err)
			}
			return nil
		})
	}
	s.ready.Store(true)
	close(s.started)
	attrs := []any{"node_id", s.cfg.NodeID, "proxy_addr", lns.Proxy.Addr().String(),
		"agent_addr", lns.Agent.LocalAddr().String()}
	if lns.Admin != nil {
		attrs = append(attrs, "admin_addr", lns.Admin.Addr().String())
	}
	if lns.TLS != nil {
		attrs = append(attrs, "proxy_tls_addr", lns.TLS.Addr().String())
	}
	if lns.H3 != nil {
		attrs = append(attrs, "proxy_h3_addr", lns.H3.LocalAddr().String())
	}
	s.log.Info("edge node ready", attrs...)
	s.logMode()

	g.Go(func() error {
		graceful := false
		select {
		case <-gctx.Done():
			graceful = ctx.Err() != nil
		case <-s.drainReq:
			graceful = true
		case <-s.closed:
		}
		s.shutdown(graceful)
		return nil
	})
	err = g.Wait()
	if ctx.Err() != nil && err == nil {
		return nil
	}
	return err
}

// shutdown drains when graceful, then closes everything. It runs once.
func (s *Server) shutdown(graceful bool) {
	s.ready.Store(false)
	s.mu.Lock() // after this, acceptAgents takes no new agent
	s.draining.Store(true)
	s.mu.Unlock()
	grace := s.cfg.ShutdownGrace
	if !graceful {
		grace = 0
	}
	s.log.Info("edge node shutting down", "node_id", s.cfg.NodeID, "grace", grace.String(),
		"drain_delay", s.cfg.DrainDelay.String())
	if graceful && s.cluster != nil {
		s.cluster.setDraining() // other nodes route elsewhere when they can
	}
	for _, sess := range s.sessionList() {
		sess.goAway("edge node " + s.cfg.NodeID + " is shutting down")
	}
	if graceful && s.cfg.DrainDelay > 0 {
		// Keep taking new connections until load balancers saw /readyz fail.
		select {
		case <-time.After(s.cfg.DrainDelay):
		case <-s.closed:
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	s.mu.Lock()
	door := s.tlsDoor
	s.mu.Unlock()
	doorDone := make(chan struct{})
	go func() { // HTTPS and HTTP/3 drain alongside HTTP
		defer close(doorDone)
		door.shutdown(ctx)
	}()
	s.httpSrv.Shutdown(ctx) // waits for requests in flight until ctx ends
	s.httpSrv.Close()
	<-doorDone
	// Streams of TCP forwards and upgraded connections get the rest of the
	// grace. In a cluster with another node to move to, so do the agents'
	// links: other nodes relay to them until they learn where each agent
	// moved, and the agent retires its old link only once its new one is
	// registered and the old one is quiet (make before break). Leaving
	// earlier would close streams that other nodes just relayed here, and
	// fail requests that had nowhere else to go yet. A node alone has
	// nobody to hand its agents to: it does not wait for them.
	waitAgents := graceful && s.cluster != nil && s.cluster.othersToMoveTo()
	for (s.activeStreams.Load() > 0 || waitAgents && s.sessionCount() > 0) && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	if graceful && s.activeStreams.Load() > 0 {
		// The grace is over: end TCP streams with a FIN each way, and
		// upgraded connections from the agent's side (the proxy then closes
		// the client's), so both ends see a clean EOF rather than a reset,
		// and give them a moment.
		s.mu.Lock()
		ends := make([]func(), 0, len(s.ending))
		for _, end := range s.ending {
			ends = append(ends, end)
		}
		s.mu.Unlock()
		for _, end := range ends { // they take s.mu themselves
			end()
		}
		end := time.Now().Add(time.Second)
		for s.activeStreams.Load() > 0 && time.Now().Before(end) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if s.adminSrv != nil {
		// /readyz said 503 for the whole drain; let requests in flight on
		// the admin port (a scrape, the drain request itself) finish.
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		s.adminSrv.Shutdown(actx)
		acancel()
		s.adminSrv.Close()
	}
	if s.cluster != nil {
		leave := time.Duration(0)
		if graceful {
			leave = 2 * time.Second
		}
		s.cluster.leave(leave)
	}
	s.mu.Lock()
	ln, tr := s.ln, s.tr
	s.connsClosed = true // after this, acceptAgents adds no connection to s.conns
	s.mu.Unlock()
	ln.Close()
	s.agentTCP.stopAccepting()
	for _, sess := range s.sessionList() {
		sess.close(quicutil.ConnCodeGoingAway, "edge node shutting down")
	}
	s.mu.Lock()
	for conn := range s.peerIn {
		conn.CloseWithError(quicutil.ConnCodeGoingAway, "edge node shutting down")
	}
	s.peerIn = nil // one that completes its hello now closes itself
	s.mu.Unlock()
	if s.auth != nil && s.auth.jwks != nil {
		s.auth.jwks.close() // a Hello waiting on a JWKS fetch gives up
	}
	s.conns.Wait()
	tr.Close()
	tr.Conn.Close()
	s.agentTCP.close()
}

// Close stops a running Server at once, without grace, and waits for Run to
// tidy up. It is safe to call more than once, and before Run.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	s.mu.Lock()
	running := s.running
	s.mu.Unlock()
	if running {
		<-s.runDone
	}
	return nil
}

func closeAll(lns Listeners) {
	lns.Proxy.Close()
	lns.Agent.Close()
	if lns.Admin != nil {
		lns.Admin.Close()
	}
	if lns.TLS != nil {
		lns.TLS.Close()
	}
	if lns.H3 != nil {
		lns.H3.Close()
	}
	if lns.AgentTCP != nil {
		lns.AgentTCP.Close()
	}
}

func (s *Server) sessionList() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		out = append(out, sess)
	}
	return out
}

// splice joins a and b until both directions end, and lets shutdown close
// them cleanly when the grace period is over.
func (s *Server) splice(a, b *quicutil.Conn, idle time.Duration) quicutil.JoinResult {
	s.mu.Lock()
	s.ending[a], s.ending[b] = func() { a.EndWrite() }, func() { b.EndWrite() }
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.ending, a)
		delete(s.ending, b)
		s.mu.Unlock()
	}()
	return quicutil.Join(a, b, idle)
}

func (s *Server) memberCount() int {
	if c := s.cluster; c != nil && c.ml != nil {
		return c.ml.NumMembers()
	}
	return 1
}

func (s *Server) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// slogWriter adapts a *log.Logger's output (http.Server's ErrorLog) to slog.
type slogWriter struct {
	log   *slog.Logger
	level slog.Level
}

func (w slogWriter) Write(p []byte) (int, error) {
	msg := string(p)
	if n := len(msg); n > 0 && msg[n-1] == '\n' {
		msg = msg[:n-1]
	}
	w.log.Log(context.Background(), w.level, msg)
	return len(p), nil
}
