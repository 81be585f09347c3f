package cluster

import (
	"log/slog"
	"net"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/routing"
)

// Host is what a Cluster needs of the node it runs on. Every field is
// required; the functions are called concurrently, and must not call back
// into the Cluster while it holds its locks (they are called without).
type Host struct {
	NodeID string
	Epoch  uint64 // this start of the node
	Log    *slog.Logger
	// Table is the node's routing table: the cluster adds the other
	// nodes' endpoints to it, each owned by the Target of its peer.
	Table *routing.Table
	// Local is what this node announces to the others.
	Local   *routing.Local
	Metrics Metrics
	// AgentAddr is the address of the node's QUIC listener: the relay
	// address's port, unless Config.RelayAddr says otherwise.
	AgentAddr net.Addr
	// Transport is the QUIC transport of the agent listener, which relay
	// connections to other nodes are dialled from (one UDP socket).
	Transport func() *quic.Transport
	// Links lists the node's agent links, for rebalancing.
	Links func() []Link
	// Draining reports that the node drains: it asks no link to move.
	Draining func() bool
	// MembersChanged is told each change of membership.
	MembersChanged func()
	// Target returns what the routing table holds for the endpoints of p:
	// the node's own wrapper of a peer (its proxy's state toward it).
	// It is called once per peer, when membership first reports it.
	Target func(p *Peer) routing.Target
	// PeerDraining is told that p started to drain: what this node keeps
	// toward it between requests (idle keep-alive streams, which keep the
	// agents' old links there busy) may go, as it routes elsewhere now.
	PeerDraining func(p *Peer)
	// PeerClosed is told that p is gone (the node left the cluster,
	// restarted, or the cluster left): what Target made for it may go.
	PeerClosed func(p *Peer)
}

// Metrics are the counters the cluster adds to. The node registers them,
// so that a node alone exports them too (at zero).
type Metrics struct {
	Set              *metrics.Set // for the series made on use (by peer, by reason)
	GossipStates     *metrics.Counter
	GossipSent       *metrics.Counter
	GossipErrors     *metrics.Counter
	PeerDials        *metrics.Counter
	RelayOut         *metrics.Counter
	Rebalanced       *metrics.Counter
	RebalanceFutile  *metrics.Counter
	RebalanceSkipped *metrics.Counter
}

// Link is one of the node's agent links, as rebalancing sees it.
type Link interface {
	routing.Target                          // Load: its streams in flight
	LinkID() uint64                         // the node's number of it
	AgentID() string                        // the agent's (Hello.AgentID), shared by its links
	Started() time.Time                     // when it connected
	AskedToMove() bool                      // rebalancing asked it to move already
	AskToMove(reason string, now time.Time) // sends the agent a goaway
}
