package cluster

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// Labels of the two proofs of a peer connection, so that one side's proof
// cannot be reflected as the other's.
const (
	proofDialer   = "pico-peer/1 dialer"
	proofAcceptor = "pico-peer/1 acceptor"
	exporterLabel = "EXPORTER-pico-peer/1"
)

// relayOpenTimeout bounds opening a stream on the connection to a peer;
// then another owner is tried (docs/limits.md: relay-open timeout 1 s).
const relayOpenTimeout = time.Second

// peerDialTimeout bounds dialling a peer: the QUIC handshake and both
// proofs (docs/limits.md: QUIC handshake timeout 5 s). A node dials each peer as
// soon as membership reports it, so requests seldom wait for a dial; one
// that does waits for it rather than fail on a loaded host, where a
// handshake can take more than the relay-open timeout.
const peerDialTimeout = quicutil.HandshakeTimeout

// peerProof binds the cluster secret to one TLS connection: a MAC, under
// the secret, of the connection's exporter value. A man in the middle has
// another TLS connection on each side, so a relayed proof does not verify.
func peerProof(secret []byte, label string, st tls.ConnectionState) ([]byte, error) {
	ekm, err := st.ExportKeyingMaterial(exporterLabel, nil, 32)
	if err != nil {
		return nil, err
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(label))
	mac.Write(ekm)
	return mac.Sum(nil), nil
}

// Peer is another node seen by membership: the target of relayed streams,
// over one QUIC connection dialled on first use and kept.
type Peer struct {
	c     *Cluster
	node  string
	epoch uint64
	// ctx ends when the peer is closed or the node leaves: it cancels a
	// dial in progress.
	ctx    context.Context
	cancel context.CancelFunc

	inflight atomic.Int64
	streams  atomic.Uint64
	suspect  atomic.Bool // its connection is silent, closed or failed to dial: others first
	// doubted: membership declared the node gone while its relay
	// connection still answered; its routes stay until the connection
	// stops answering too, or membership sees it alive again (cluster.go).
	doubted atomic.Bool

	watching sync.WaitGroup // watch of the current connection; close waits for it
	mu       sync.Mutex     // guards the fields below
	addr     string
	draining bool
	conn     *quic.Conn
	dialing  chan struct{} // closed when the dial in progress ends
	lastErr  error
	closed   bool
	target   routing.Target // what the routing table holds for it (Host.Target)
}

func newPeer(c *Cluster, name string, epoch uint64) *Peer {
	p := &Peer{c: c, node: name, epoch: epoch}
	p.ctx, p.cancel = context.WithCancel(c.ctx)
	p.target = c.h.Target(p)
	return p
}

// Load implements routing.Target.
func (p *Peer) Load() int64 { return p.inflight.Load() }

// update records the peer's relay address and drain state, and reports
// whether it started to drain.
func (p *Peer) update(addr string, draining bool) (started bool) {
	p.mu.Lock()
	started = draining && !p.draining
	p.addr, p.draining = addr, draining
	p.mu.Unlock()
	return started
}

func (p *Peer) state() (addr string, draining bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr, p.draining
}

func (p *Peer) isDraining() bool {
	_, d := p.state()
	return d
}

// connection returns the connection to the peer, dialling it if needed.
// Concurrent callers share one dial.
func (p *Peer) connection(ctx context.Context) (*quic.Conn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errors.New("node left the cluster")
		}
		if p.conn != nil && p.conn.Context().Err() == nil {
			conn := p.conn
			p.mu.Unlock()
			return conn, nil
		}
		if p.dialing != nil {
			ch := p.dialing
			p.mu.Unlock()
			select {
			case <-ch:
				p.mu.Lock()
				conn, err := p.conn, p.lastErr
				p.mu.Unlock()
				if conn != nil && conn.Context().Err() == nil {
					return conn, nil
				}
				if err != nil {
					return nil, err
				}
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		p.dialing, p.conn = ch, nil
		addr := p.addr
		p.mu.Unlock()

		conn, err := p.dial(addr)
		p.mu.Lock()
		p.dialing = nil
		p.conn, p.lastErr = conn, err
		if conn != nil && p.closed {
			conn.CloseWithError(quicutil.ConnCodeGoingAway, "node left the cluster")
			p.conn, p.lastErr = nil, errors.New("node left the cluster")
			conn, err = nil, p.lastErr
		}
		if conn != nil {
			p.watching.Go(func() { p.watch(conn) }) // under p.mu, before close can wait; ends when conn closes
		}
		p.mu.Unlock()
		close(ch)
		if conn != nil {
			p.suspect.Store(false) // a new connection starts afresh
			p.c.h.Metrics.PeerDials.Inc()
		} else {
			p.suspect.Store(true) // unreachable for now: others first
		}
		return conn, err
	}
}

// predial dials the peer ahead of the first relayed stream; a failure is
// only logged: the first stream dials again.
func (p *Peer) predial() {
	ctx, cancel := context.WithTimeout(p.ctx, peerDialTimeout)
	defer cancel()
	if _, err := p.connection(ctx); err != nil {
		p.c.log.Debug("dial node ahead of relaying", "node", p.node, "err", err)
	}
}

// dial connects to the peer and proves membership, both ways.
func (p *Peer) dial(addr string) (*quic.Conn, error) {
	if addr == "" {
		return nil, fmt.Errorf("node %s has no relay address", p.node)
	}
	ctx, cancel := context.WithTimeout(p.ctx, peerDialTimeout)
	defer cancel()
	udp, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve node %s at %s: %w", p.node, addr, err)
	}
	tr := p.c.h.Transport()
	// The peer's certificate is not checked against a CA: each node may
	// serve its own. Membership is proved by both sides' MAC of this TLS
	// connection under the cluster secret, which no one without the secret
	// can make, and which a man in the middle cannot pass on.
	tlsConf := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{quicutil.ALPNPeer},
		InsecureSkipVerify:     true,
		SessionTicketsDisabled: true,
	}
	conn, err := tr.Dial(ctx, udp, tlsConf, quicutil.PeerConfig())
	if err != nil {
		return nil, fmt.Errorf("dial node %s at %s: %w", p.node, addr, err)
	}
	fail := func(err error) (*quic.Conn, error) {
		conn.CloseWithError(quicutil.ConnCodeProtocolError, err.Error())
		return nil, fmt.Errorf("node %s at %s: %w", p.node, addr, err)
	}
	proof, err := peerProof(p.c.cfg.Secret, proofDialer, conn.ConnectionState().TLS)
	if err != nil {
		return fail(err)
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fail(err)
	}
	msg := (&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil)
	msg, _ = quicutil.AppendMessage(msg, &quicutil.PeerHello{NodeID: p.c.h.NodeID, Proof: proof})
	deadline, _ := ctx.Deadline()
	str.SetDeadline(deadline)
	if _, err := str.Write(msg); err != nil {
		return fail(err)
	}
	m, err := quicutil.ReadMessage(bufio.NewReaderSize(str, 128))
	if err != nil {
		return fail(fmt.Errorf("read peer ready: %w", err))
	}
	ready, ok := m.(*quicutil.PeerReady)
	if !ok {
		return fail(fmt.Errorf("peer answered %T, want PeerReady", m))
	}
	want, err := peerProof(p.c.cfg.Secret, proofAcceptor, conn.ConnectionState().TLS)
	if err != nil {
		return fail(err)
	}
	if !hmac.Equal(ready.Proof, want) {
		return fail(errors.New("peer does not hold the cluster secret"))
	}
	if ready.NodeID != p.node {
		return fail(fmt.Errorf("peer is node %q, want %q", ready.NodeID, p.node))
	}
	str.SetDeadline(time.Time{})
	// The control stream stays open, unused, for the life of the connection.
	return conn, nil
}

// watch closes conn when the peer stopped answering: with keep-alives every
// PeerKeepAlive, a live peer sends a packet well within PeerDeadAfter. The
// streams in flight then fail at once, and idempotent requests move to
// another owner instead of waiting for the QUIC idle timeout.
func (p *Peer) watch(conn *quic.Conn) {
	t := time.NewTicker(quicutil.PeerKeepAlive)
	defer t.Stop()
	last := conn.ConnectionStats().PacketsReceived
	lastAt := time.Now()
	for {
		select {
		case <-conn.Context().Done():
			// Others first until a new connection is up: the next
			// request to the peer would wait for a dial.
			p.mu.Lock()
			if p.conn == conn {
				p.suspect.Store(true)
			}
			p.mu.Unlock()
			return
		case now := <-t.C:
			n := conn.ConnectionStats().PacketsReceived
			if n != last {
				last, lastAt = n, now
				p.suspect.Store(false)
				continue
			}
			// Two keep-alives without an answer: new streams go to other
			// owners while there are any, before the connection is given up.
			p.suspect.Store(now.Sub(lastAt) >= 2*quicutil.PeerKeepAlive)
			if now.Sub(lastAt) >= quicutil.PeerDeadAfter {
				p.c.log.Warn("node stopped answering; closing its relay connection", "node", p.node,
					"silent_for", now.Sub(lastAt).Round(time.Millisecond).String())
				conn.CloseWithError(quicutil.ConnCodeTimeout, "no packet from peer")
				return
			}
		}
	}
}

// close ends the peer: its dials, its relay connection and the watch of
// it, and its idle streams. It is safe more than once.
func (p *Peer) close() {
	p.cancel()
	p.mu.Lock()
	p.closed = true
	conn := p.conn
	p.mu.Unlock()
	if conn != nil {
		conn.CloseWithError(quicutil.ConnCodeGoingAway, "node left the cluster")
	}
	p.watching.Wait()
	p.c.h.PeerClosed(p)
}

// answering reports whether the peer's relay connection is up: watch
// closes it once the peer has been silent for PeerDeadAfter. A peer silent
// for less (suspect) still counts: under CPU load both its gossip and its
// keep-alives come late, and its streams in flight may still complete.
func (p *Peer) answering() bool {
	p.mu.Lock()
	conn, closed := p.conn, p.closed
	p.mu.Unlock()
	return !closed && conn != nil && conn.Context().Err() == nil
}

// OpenStream opens a relayed stream to the peer: it waits for the
// connection up to peerDialTimeout (a dial in progress), then for the
// stream up to relayOpenTimeout.
func (p *Peer) OpenStream(ctx context.Context, h *quicutil.StreamHeader, wantAnswer bool) (*quicutil.Conn, error) {
	dctx, dcancel := context.WithTimeout(ctx, peerDialTimeout)
	conn, err := p.connection(dctx)
	dcancel()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, relayOpenTimeout)
	defer cancel()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	p.streams.Add(1)
	p.c.h.Metrics.RelayOut.Inc()
	p.c.h.Metrics.Set.GetOrCreateCounter(`pico_relay_peer_streams_total{direction="out",peer="` + p.node + `"}`).Inc()
	rh := *h
	rh.Flags |= quicutil.FlagRelayed
	hdr := rh.Append(make([]byte, 0, 16+len(h.Endpoint)+len(h.ClientAddr)))
	return quicutil.OpenConn(str, conn.LocalAddr(), conn.RemoteAddr(), hdr, wantAnswer), nil
}

// AcceptPeer reads the PeerHello of conn, a connection another node
// opened (ALPN pico-peer/1), checks its proof of the cluster secret and
// answers with this node's; it returns the node's ID, or says why not,
// within timeout.
func (c *Cluster) AcceptPeer(conn *quic.Conn, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(conn.Context(), timeout)
	defer cancel()
	str, err := conn.AcceptStream(ctx)
	if err != nil {
		return "", fmt.Errorf("wait for control stream: %w", err)
	}
	deadline, _ := ctx.Deadline()
	str.SetDeadline(deadline)
	h, err := quicutil.ReadStreamHeader(str)
	if err != nil {
		return "", err
	}
	if h.Kind != quicutil.KindControl {
		return "", fmt.Errorf("first stream is %s, want control", h.Kind)
	}
	m, err := quicutil.ReadMessage(bufio.NewReaderSize(str, 256))
	if err != nil {
		return "", fmt.Errorf("read peer hello: %w", err)
	}
	hello, ok := m.(*quicutil.PeerHello)
	if !ok {
		return "", fmt.Errorf("first control message is %T, want PeerHello", m)
	}
	st := conn.ConnectionState().TLS
	want, err := peerProof(c.cfg.Secret, proofDialer, st)
	if err != nil {
		return "", err
	}
	if !hmac.Equal(hello.Proof, want) {
		return "", fmt.Errorf("node %q does not prove the cluster secret", hello.NodeID)
	}
	proof, err := peerProof(c.cfg.Secret, proofAcceptor, st)
	if err != nil {
		return "", err
	}
	if err := quicutil.WriteMessage(str, &quicutil.PeerReady{NodeID: c.h.NodeID, Proof: proof}); err != nil {
		return "", err
	}
	str.SetDeadline(time.Time{})
	return hello.NodeID, nil
}

func splitHostPort(a string) (net.IP, uint16, error) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return nil, 0, err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, 0, fmt.Errorf("address %q: not an IP", a)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, 0, fmt.Errorf("address %q: bad port", a)
	}
	return ip, uint16(n), nil
}
