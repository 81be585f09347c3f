package edge

import (
	"context"
	"net"
	"time"

	"github.com/pico-edge/pico/edge/cluster"
	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
	"github.com/quic-go/quic-go"
)

// relayTarget is another node as the proxy's target: streams to it are
// relayed to its agents. The cluster makes one per peer (Host.Target); it
// holds the proxy's idle streams and transports toward the peer.
type relayTarget struct {
	p   *cluster.Peer
	ups upstreams
}

func (t *relayTarget) Load() int64     { return t.p.Load() }
func (t *relayTarget) addLoad(d int64) { t.p.AddLoad(d) }
func (t *relayTarget) name() string    { return "node:" + t.p.Node() }
func (t *relayTarget) leavingNow() bool {
	return t.p.Leaving()
}
func (t *relayTarget) rtt() time.Duration                             { return t.p.RTT() }
func (t *relayTarget) streamKind(id routing.EndpointID) quicutil.Kind { return t.p.StreamKind(id) }
func (t *relayTarget) upstreams() *upstreams                          { return &t.ups }

// drained lets the idle keep-alive streams to the peer go once it
// drains: requests go to other owners now, and those streams, idle here,
// would keep the agents' old links on the peer busy until the end of its
// grace. A stream whose response just ended goes back to the pool a
// moment after its body closed (trackedBody closes those of a leaving
// target too).
func (t *relayTarget) drained() {
	t.ups.closeIdle(false)
	time.AfterFunc(200*time.Millisecond, func() { t.ups.closeIdle(false) })
}

func (t *relayTarget) openStream(ctx context.Context, h *quicutil.StreamHeader, wantAnswer bool) (*quicutil.Conn, error) {
	c, err := t.p.OpenStream(ctx, h, wantAnswer)
	if err != nil {
		return nil, &linkError{via: "relay to node " + t.p.Node(), err: err}
	}
	return c, nil
}

// startCluster joins the cluster of Config.Cluster; agentAddr is the QUIC
// listener's address.
func (s *Server) startCluster(ctx context.Context, agentAddr net.Addr) error {
	m := s.m
	c, err := cluster.Start(ctx, *s.cfg.Cluster, cluster.Host{
		NodeID:    s.cfg.NodeID,
		Epoch:     s.epoch,
		Log:       s.log,
		Table:     s.table,
		Local:     s.local,
		AgentAddr: agentAddr,
		Metrics: cluster.Metrics{Set: m.set, GossipStates: m.gossipStates, GossipSent: m.gossipSent,
			GossipErrors: m.gossipErrors, PeerDials: m.peerDials, RelayOut: m.relayOut, Rebalanced: m.rebalanced,
			RebalanceFutile: m.rebalanceFutile, RebalanceSkipped: m.rebalanceSkipped},
		Transport: func() *quic.Transport {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.tr
		},
		Links: func() []cluster.Link {
			list := s.linkList()
			out := make([]cluster.Link, len(list))
			for i, l := range list {
				out[i] = l
			}
			return out
		},
		Draining:       s.draining.Load,
		MembersChanged: s.notifyMembers,
		Target:         func(p *cluster.Peer) routing.Target { return &relayTarget{p: p} },
		PeerDraining:   func(p *cluster.Peer) { p.Target().(*relayTarget).drained() },
		PeerClosed:     func(p *cluster.Peer) { p.Target().(*relayTarget).ups.closeIdle(true) },
	})
	if err != nil {
		return err
	}
	s.cluster = c
	return nil
}
