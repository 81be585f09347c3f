// Package edge is a Pico edge node: the front door that takes client
// requests, the agent listener that takes agent connections over QUIC, and
// the admin API. Create one with New and run it with Run.
package edge

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"

	"github.com/pico-edge/pico/edge/auth"
	"github.com/pico-edge/pico/edge/cluster"
	"github.com/pico-edge/pico/edge/frontdoor"
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
	// Passthrough takes TLS connections that it routes, unterminated, by
	// their SNI to tls endpoints (passthrough.go); may be nil.
	Passthrough net.Listener
}

// Server is one edge node.
type Server struct {
	cfg     Config
	log     *slog.Logger
	table   *routing.Table
	local   *routing.Local   // what this node announces to the cluster
	epoch   uint64           // this start of the node, for the cluster
	cluster *cluster.Cluster // nil unless Config.Cluster
	auth    *auth.Verifier   // nil unless Config.Auth
	m       *serverMetrics

	gate     *endpointGate // requests in flight per endpoint
	connGate *endpointGate // upgraded and TCP connections open per endpoint

	proxy    http.Handler
	door     *frontdoor.Door // serves proxy to clients
	adminSrv *http.Server
	agentTCP *agentTCP // agent links over TCP (agenttcp.go)

	links   *links     // agent links, and the connections of the agent listener
	tokens  tokenConns // agent connections by token, when tokens are checked
	peerIn  peerConns  // relay connections other nodes opened
	live    liveStreams
	members broadcast // membership changed

	mu      sync.Mutex // guards the fields below: the agent listener's
	tr      *quic.Transport
	ln      *quic.Listener
	running bool

	draining atomic.Bool
	ready    atomic.Bool

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
		cfg:      cfg,
		log:      cfg.Logger,
		table:    routing.NewTable(),
		local:    routing.NewLocal(cfg.NodeID, epoch),
		epoch:    epoch,
		links:    newLinks(),
		started:  make(chan struct{}),
		drainReq: make(chan struct{}),
		closed:   make(chan struct{}),
		runDone:  make(chan struct{}),
	}
	if cfg.Auth != nil {
		var err error
		if s.auth, err = auth.New(*cfg.Auth, cfg.Metrics, cfg.Logger); err != nil {
			return nil, fmt.Errorf("edge: config: %w", err)
		}
	}
	s.gate = &endpointGate{max: int64(cfg.MaxInflightPerEndpoint)}
	s.connGate = &endpointGate{max: int64(cfg.MaxConnsPerEndpoint)}
	s.agentTCP = newAgentTCP(s)
	s.proxy = s.agentTCP.withAgentUpgrade(withACMEChallenges(cfg.ACMEChallenges, s.newProxy()))
	s.door = frontdoor.New(frontdoor.Config{
		Handler:           s.proxy,
		GetCertificate:    cfg.GetCertificate,
		ACME:              cfg.ACMEChallenges != nil,
		StatelessResetKey: cfg.StatelessResetKey,
		// HTTP/3 handshakes get a limiter of their own: a flood of
		// clients does not make agents pass a Retry, nor the reverse.
		VerifySourceAddress: handshakeLimiter(cfg.HandshakesPerSecond),
		ReadHeaderTimeout:   cfg.ReadHeaderTimeout,
		IdleTimeout:         cfg.IdleTimeout,
		MaxHeaderBytes:      cfg.MaxHeaderBytes,
		Limits: frontdoor.Limits{
			PerListener: cfg.MaxConnsPerListener,
			Global:      cfg.MaxConns,
			PerIP:       float64(cfg.NewConnsPerIPPerSecond),
			Exempt:      func(ip netip.Addr) bool { return s.trusted(ip.String()) },
			Refused:     func(reason string) { s.m.connRefused[reason].Inc() },
		},
		Log:                cfg.Logger,
		Passthrough:        s.servePassthrough,
		PassthroughRefused: s.passthroughRefused,
	})
	s.m = newServerMetrics(cfg.Metrics, s)
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
	return s.cluster.Gossip()
}

// MembersChanged returns a channel closed at the next membership change.
func (s *Server) MembersChanged() <-chan struct{} { return s.members.wait() }

func (s *Server) notifyMembers() { s.members.notify() }

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
	if lns.Passthrough != nil && s.cfg.Auth != nil && s.cfg.Auth.ProxyAuth {
		closeAll(lns)
		return errors.New("edge: TLS passthrough cannot be used with proxy auth: the edge never sees a passthrough connection's bytes, so it cannot check a client's token (leave --passthrough-addr empty, or --proxy-auth off)")
	}
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
	s.mu.Lock()
	s.tr, s.ln = tr, ln
	s.mu.Unlock()
	if s.cfg.Cluster != nil {
		if err := s.startCluster(ctx, lns.Agent.LocalAddr()); err != nil {
			closeAll(lns)
			ln.Close()
			tr.Close()
			return err
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	// The TCP transport before the doors: they hand /_pico/agent to it
	// from their first request on.
	s.agentTCP.start(g.Go, tlsConf, lns.AgentTCP)
	if err := s.door.Start(frontdoor.Listeners{Plain: lns.Proxy, TLS: lns.TLS, H3: lns.H3, Passthrough: lns.Passthrough}, g.Go); err != nil {
		s.agentTCP.close()
		g.Wait() // its goroutines end with it
		if s.cluster != nil {
			s.cluster.Leave(0)
		}
		closeAll(lns)
		tr.Close()
		return err
	}
	g.Go(func() error { return s.acceptAgents(ln) })
	stopWatch := make(chan struct{})
	g.Go(func() error { s.watchLinks(stopWatch); return nil })
	if s.auth != nil {
		g.Go(func() error { s.auth.Run(); return nil }) // until shutdown closes it
	}
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
	if lns.Passthrough != nil {
		attrs = append(attrs, "passthrough_addr", lns.Passthrough.Addr().String())
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
		close(stopWatch)
		return nil
	})
	err = g.Wait()
	if ctx.Err() != nil && err == nil {
		return nil
	}
	return err
}

// shutdown drains when graceful, then closes everything. It runs once, in
// Run's group, as the steps below in this order; each waits on the work it
// tracks, bounded by the grace period, and none polls.
func (s *Server) shutdown(graceful bool) {
	grace := s.cfg.ShutdownGrace
	if !graceful {
		grace = 0
	}
	s.stopTakingAgents(graceful, grace)
	if graceful {
		s.waitDrainDelay()
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	s.door.Shutdown(ctx) // every door drains its requests in flight until ctx ends
	s.waitStreams(ctx, graceful)
	if graceful {
		s.endStreams()
	}
	s.stopAdmin()
	s.leaveCluster(graceful)
	if graceful {
		s.settle()
	}
	s.closeAgents()
}

// stopTakingAgents turns readiness off, refuses new agents from now on,
// tells the cluster this node drains, and asks every agent to move.
func (s *Server) stopTakingAgents(graceful bool, grace time.Duration) {
	s.ready.Store(false)
	s.draining.Store(true)
	s.links.drain() // after this, acceptAgents takes no new agent
	s.log.Info("edge node shutting down", "node_id", s.cfg.NodeID, "grace", grace.String(),
		"drain_delay", s.cfg.DrainDelay.String())
	if graceful && s.cluster != nil {
		s.cluster.SetDraining() // other nodes route elsewhere when they can
	}
	for _, l := range s.linkList() {
		l.goAway("edge node " + s.cfg.NodeID + " is shutting down")
	}
}

// waitDrainDelay keeps taking new connections until load balancers saw
// /readyz fail, or Close.
func (s *Server) waitDrainDelay() {
	if s.cfg.DrainDelay <= 0 {
		return
	}
	t := time.NewTimer(s.cfg.DrainDelay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.closed:
	}
}

// waitStreams gives the streams still in flight (TCP forwards, upgraded
// connections, relayed streams) the rest of the grace. In a cluster with
// another node to move to, so do the agents' links: other nodes relay to
// them until they learn where each agent moved, and the agent retires its
// old link only once its new one is registered and the old one is quiet
// (make before break). Leaving earlier would close streams that other
// nodes just relayed here, and fail requests that had nowhere else to go
// yet. A node alone has nobody to hand its agents to: it does not wait for
// them.
func (s *Server) waitStreams(ctx context.Context, graceful bool) {
	waitAgents := graceful && s.cluster != nil && s.cluster.OthersToMoveTo()
	for ctx.Err() == nil {
		gone := s.links.gone.wait() // before the count: a link leaving after it wakes us
		if !waitAgents || s.linkCount() == 0 {
			select {
			case <-s.live.idle():
				return
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-gone:
		case <-ctx.Done():
		}
	}
}

// endStreams ends what is still in flight once the grace is over: TCP
// streams with a FIN each way, upgraded connections from the agent's side
// (the proxy then closes the client's), so that both ends see a clean EOF
// rather than a reset; and gives them a second to finish.
func (s *Server) endStreams() {
	if s.live.count() == 0 {
		return
	}
	s.live.endAll()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-s.live.idle():
	case <-t.C:
	}
}

// stopAdmin stops the admin port. /readyz said 503 for the whole drain; it
// lets requests in flight there (a scrape, the drain request itself)
// finish within a second.
func (s *Server) stopAdmin() {
	if s.adminSrv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s.adminSrv.Shutdown(ctx)
	s.adminSrv.Close()
}

// leaveCluster tells the other members this node leaves (waiting up to 2 s
// for that to spread when graceful) and stops gossip and rebalancing.
func (s *Server) leaveCluster(graceful bool) {
	if s.cluster == nil {
		return
	}
	leave := time.Duration(0)
	if graceful {
		leave = 2 * time.Second
	}
	s.cluster.Leave(leave)
}

// settle lets the last bytes and FINs of the streams that just ended reach
// the agents before their connections close: closing a QUIC connection
// drops the stream data it has not had acknowledged, and an agent would
// then reset a TCP forward that ended cleanly. It waits two round trips of
// the slowest link and 20 ms, at most a second, or until Close.
func (s *Server) settle() {
	var rtt time.Duration
	for _, l := range s.linkList() {
		rtt = max(rtt, l.rtt())
	}
	t := time.NewTimer(min(2*rtt+20*time.Millisecond, time.Second))
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.closed:
	}
}

// closeAgents closes the agent listener, every agent's link and every
// relay connection other nodes opened, waits for their goroutines, and
// closes the UDP socket.
func (s *Server) closeAgents() {
	s.mu.Lock()
	ln, tr := s.ln, s.tr
	s.mu.Unlock()
	s.links.close() // after this, acceptAgents admits no connection
	ln.Close()
	s.agentTCP.stopAccepting()
	for _, l := range s.linkList() {
		l.close(quicutil.ConnCodeGoingAway, "edge node shutting down")
	}
	s.peerIn.closeAll(quicutil.ConnCodeGoingAway, "edge node shutting down") // one that completes its hello now closes itself
	if s.auth != nil {
		s.auth.Close() // a Hello waiting on a JWKS fetch gives up
	}
	s.links.serving.Wait()
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
	if lns.Passthrough != nil {
		lns.Passthrough.Close()
	}
}

func (s *Server) linkList() []*link { return s.links.list() }

// splice joins a and b until both directions end, and lets shutdown close
// them cleanly when the grace period is over.
func (s *Server) splice(a, b *quicutil.Conn, idle time.Duration) quicutil.JoinResult {
	s.live.onEnd(a, func() { a.EndWrite() })
	s.live.onEnd(b, func() { b.EndWrite() })
	defer s.live.forget(a, b)
	return quicutil.Join(a, b, idle)
}

func (s *Server) memberCount() int {
	select {
	case <-s.started: // s.cluster is set before
	default:
		return 1
	}
	if c := s.cluster; c != nil {
		return c.NumMembers()
	}
	return 1
}

func (s *Server) linkCount() int { return s.links.count() }

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
