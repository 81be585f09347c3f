package edge

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/edge/frontdoor"
	"github.com/pico-edge/pico/quicutil"
)

// agentTCP is the edge's TCP transport for agent links (quicutil's
// TCP transport): upgrades on quicutil.AgentPath, on both front doors and
// on TCP at the agent port, feed one Mux, on which a second
// quic.Transport listens with the agent listener's TLS config. Its
// connections go to acceptAgents like those over UDP: a link over TCP is
// the same QUIC connection, only its packets travel differently.
type agentTCP struct {
	s   *Server
	mux *quicutil.Mux

	mu  sync.Mutex // guards the fields below
	tr  *quic.Transport
	ln  *quic.Listener
	srv *http.Server // on Listeners.AgentTCP; nil without one
}

// newAgentTCP allocates the transport, and registers the agent links by
// transport in s's metrics; start serves it.
func newAgentTCP(s *Server) *agentTCP {
	for _, tr := range []string{"quic", "tcp"} {
		s.cfg.Metrics.NewGauge(`pico_agent_links{transport="`+tr+`"}`, func() float64 { return float64(s.linksOver(tr)) })
	}
	return &agentTCP{s: s, mux: quicutil.NewMux(tcpMuxAddr{})}
}

// linksOver counts the agent links over transport tr ("quic" or "tcp").
func (s *Server) linksOver(tr string) int {
	n := 0
	for _, l := range s.linkList() {
		if linkTransport(l.conn) == tr {
			n++
		}
	}
	return n
}

// tcpMuxAddr is the Mux's local address (informational).
type tcpMuxAddr struct{}

func (tcpMuxAddr) Network() string { return "tcp" }
func (tcpMuxAddr) String() string  { return "agent-tcp" }

// withAgentUpgrade serves quicutil.AgentPath on a front door, and the rest
// with next. The path is the transport's whatever the Host: no endpoint
// sees it.
func (t *agentTCP) withAgentUpgrade(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == quicutil.AgentPath {
			t.serveUpgrade(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// serveUpgrade takes an agent's upgrade request. The link's address is the
// TCP peer's, or the client's from X-Forwarded-For (port 0) when the peer
// is a trusted proxy.
func (t *agentTCP) serveUpgrade(w http.ResponseWriter, r *http.Request) {
	t.mu.Lock()
	started := t.ln != nil
	t.mu.Unlock()
	// A draining node takes no new agent, as over UDP (links.admit): the
	// 503 makes a balancer or the agent try another node at once, instead
	// of a link that the QUIC handshake inside would refuse.
	switch {
	case t.s.draining.Load():
		w.Header().Set("Retry-After", "1")
		http.Error(w, "edge node "+t.s.cfg.NodeID+" is draining: it takes no new agent links; connect to another node", http.StatusServiceUnavailable)
		return
	case !started:
		w.Header().Set("Retry-After", "1")
		http.Error(w, "edge node "+t.s.cfg.NodeID+" is starting: it takes agent links over TCP in a moment", http.StatusServiceUnavailable)
		return
	}
	t.mux.ServeUpgrade(w, r, t.clientAddr(r))
}

func (t *agentTCP) clientAddr(r *http.Request) netip.AddrPort {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.AddrPort{}
	}
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	if !t.s.trusted(peer.Addr().String()) {
		return peer
	}
	// The rightmost address in X-Forwarded-For that is not a trusted proxy.
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		ip, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		if !t.s.trusted(ip.Unmap().String()) {
			return netip.AddrPortFrom(ip.Unmap(), 0)
		}
	}
	return peer
}

// start listens for QUIC on the Mux and serves upgrades on agentLn (when
// not nil), in goroutines of goFn. tlsConf is the agent listener's; links
// over TCP take agents only (no node-to-node relay).
func (t *agentTCP) start(goFn func(func() error), tlsConf *tls.Config, agentLn net.Listener) {
	s := t.s
	conf := tlsConf.Clone()
	conf.NextProtos = []string{quicutil.ALPNAgent}
	tr := &quic.Transport{Conn: t.mux, StatelessResetKey: s.cfg.StatelessResetKey,
		VerifySourceAddress: handshakeLimiter(s.cfg.HandshakesPerSecond)}
	ln, err := tr.Listen(conf, quicutil.TCPConfig(quicutil.EdgeConfig()))
	if err != nil { // only if listening already; UDP still serves
		tr.Close()
		if agentLn != nil {
			agentLn.Close()
		}
		s.log.Error("agent links over TCP are off", "err", err)
		return
	}
	var srv *http.Server
	if agentLn != nil {
		srv = &http.Server{
			Handler:           t.withAgentUpgrade(http.HandlerFunc(notAgentPath)),
			ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
			MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
			ErrorLog:          frontdoor.ErrorLog(s.log),
		}
	}
	t.mu.Lock()
	t.tr, t.ln, t.srv = tr, ln, srv
	t.mu.Unlock()
	if agentLn != nil {
		s.log.Info("agent links over TCP", "agent_tcp_addr", agentLn.Addr().String(), "path", quicutil.AgentPath)
	}
	goFn(func() error { return s.acceptAgents(ln) })
	if srv != nil {
		goFn(func() error {
			if err := srv.Serve(agentLn); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve agent links over TCP on %s: %w", agentLn.Addr(), err)
			}
			return nil
		})
	}
}

// notAgentPath answers requests to the agent port's TCP listener other than
// the upgrade.
func notAgentPath(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusNotFound)
	io.WriteString(w, "this is the agent port of a pico edge node: agents connect here with pico-agent "+
		"(QUIC on UDP, or the TCP transport at "+quicutil.AgentPath+"); HTTP clients use the proxy port\n")
}

// stopAccepting stops taking new links over TCP (shutdown, next to
// closing the UDP listener).
func (t *agentTCP) stopAccepting() {
	t.mu.Lock()
	ln, srv := t.ln, t.srv
	t.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	if srv != nil {
		srv.Close()
	}
}

// close closes the transport and every upgraded connection, once the
// sessions ended (their CONNECTION_CLOSE went out first). It is safe to
// call more than once.
func (t *agentTCP) close() {
	t.stopAccepting()
	t.mu.Lock()
	tr := t.tr
	t.mu.Unlock()
	if tr != nil {
		tr.Close()
	}
	t.mux.Close()
}

// linkTransport names the transport of an agent connection: "tcp" or
// "quic" (UDP).
func linkTransport(conn *quic.Conn) string {
	if _, ok := conn.RemoteAddr().(*quicutil.StreamAddr); ok {
		return "tcp"
	}
	return "quic"
}
