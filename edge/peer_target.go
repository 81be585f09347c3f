package edge

import (
	"time"

	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// A peer is a target: streams to it are relayed to its agents.

func (p *peer) addLoad(d int64) { p.inflight.Add(d) }

// leavingNow reports a node draining, or one whose relay is silent or
// whose membership is doubted.
func (p *peer) leavingNow() bool {
	return p.isDraining() || p.suspect.Load() || p.doubted.Load()
}

func (p *peer) upstreams() *upstreams { return &p.ups }
func (p *peer) name() string          { return "node:" + p.node }

// rtt is the relay connection's smoothed round-trip time plus that of the
// agent behind the node, which this node does not know: relayedAgentRTT
// stands for it.
func (p *peer) rtt() time.Duration {
	p.mu.Lock()
	conn := p.conn
	p.mu.Unlock()
	if conn == nil {
		return relayedAgentRTT
	}
	return conn.ConnectionStats().SmoothedRTT + relayedAgentRTT
}

// relayedAgentRTT is the round-trip time assumed for an agent's link to
// another node; unsent waits for twice the rtt, which covers an agent up
// to about 300 ms from its node.
const relayedAgentRTT = 150 * time.Millisecond

// streamKind is the kind the peer's agents speak for id: HTTP/1.1 when any
// of them does, else HTTP/2, as the peer announced.
func (p *peer) streamKind(id routing.EndpointID) quicutil.Kind {
	a, _ := p.c.remote.Announcement(p.node, id)
	switch {
	case a.Proto == protoTCP:
		return quicutil.KindTCP
	case a.Kinds&kindBit(quicutil.KindHTTP) != 0 || a.Kinds == 0:
		return quicutil.KindHTTP
	}
	return quicutil.KindHTTP2
}

// kindBit is a stream kind's bit in routing.Announcement.Kinds.
func kindBit(k quicutil.Kind) uint8 { return 1 << (k & 7) }
