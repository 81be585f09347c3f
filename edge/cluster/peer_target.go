package cluster

import (
	"time"

	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// What the node's proxy needs of a peer to send it streams: it wraps each
// Peer in a target of its own (Host.Target).

// Target is what Host.Target made for the peer.
func (p *Peer) Target() routing.Target { return p.target }

// Node is the peer's node ID.
func (p *Peer) Node() string { return p.node }

// AddLoad counts a stream to the peer in flight (d = 1) or ended (d = -1).
func (p *Peer) AddLoad(d int64) { p.inflight.Add(d) }

// Leaving reports a node draining, or one whose relay is silent or whose
// membership is doubted: other owners come first.
func (p *Peer) Leaving() bool {
	return p.isDraining() || p.suspect.Load() || p.doubted.Load()
}

// RTT is the relay connection's smoothed round-trip time plus that of the
// agent behind the node, which this node does not know: relayedAgentRTT
// stands for it.
func (p *Peer) RTT() time.Duration {
	p.mu.Lock()
	conn := p.conn
	p.mu.Unlock()
	if conn == nil {
		return relayedAgentRTT
	}
	return conn.ConnectionStats().SmoothedRTT + relayedAgentRTT
}

// relayedAgentRTT is the round-trip time assumed for an agent's link to
// another node; the proxy waits for twice the RTT for an agent's word,
// which covers an agent up to about 300 ms from its node.
const relayedAgentRTT = 150 * time.Millisecond

// StreamKind is the kind the peer's agents speak for id: HTTP/1.1 when
// any of them does, else HTTP/2, as the peer announced.
func (p *Peer) StreamKind(id routing.EndpointID) quicutil.Kind {
	a, _ := p.c.remote.Announcement(p.node, id)
	switch {
	case a.Proto == "tcp":
		return quicutil.KindTCP
	case a.Proto == "tls":
		return quicutil.KindTLS
	case a.Kinds&KindBit(quicutil.KindHTTP) != 0 || a.Kinds == 0:
		return quicutil.KindHTTP
	}
	return quicutil.KindHTTP2
}

// KindBit is a stream kind's bit in routing.Announcement.Kinds.
func KindBit(k quicutil.Kind) uint8 { return 1 << (k & 7) }
