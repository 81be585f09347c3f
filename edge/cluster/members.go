package cluster

import (
	"sort"

	"github.com/pico-edge/pico/edge/admin"
	"github.com/pico-edge/pico/routing"
)

// Members is /status/members of a node in a cluster: self (what the
// node says of itself) first, with its gossip and relay addresses, then the
// other members as this node sees them.
func (c *Cluster) Members(self admin.Member) admin.Members {
	out := admin.Members{NodeID: self.NodeID, Clustered: true, Members: []admin.Member{}}
	self.GossipAddr = c.gossip
	self.RelayAddr = c.relay
	out.Members = append(out.Members, self)
	known := make(map[string]routing.NodeInfo)
	for _, n := range c.remote.Nodes() {
		known[n.Node] = n
	}
	for name, m := range c.memberList() {
		mi := admin.Member{NodeID: name, GossipAddr: m.gossip, State: stateName(m.state), Relay: "none",
			RelayAddr: m.meta.RelayAddr, Draining: m.meta.Draining, Epoch: m.meta.Epoch}
		if n, ok := known[name]; ok {
			mi.Version, mi.Endpoints, mi.Links, mi.Routed, mi.Conflicts = n.Version, n.Endpoints, n.Links, n.Alive, n.Conflicts
		}
		c.mu.Lock()
		p := c.peers[name]
		c.mu.Unlock()
		if p != nil {
			if p.doubted.Load() {
				mi.State = "dead" // as membership says; routed while its relay answers
			}
			mi.InFlight = p.inflight.Load()
			p.mu.Lock()
			conn := p.conn
			p.mu.Unlock()
			if conn != nil && conn.Context().Err() == nil {
				mi.Relay = "connected"
				mi.RelayRTT = float64(conn.ConnectionStats().SmoothedRTT.Microseconds()) / 1000
			}
		}
		out.Members = append(out.Members, mi)
	}
	sort.Slice(out.Members[1:], func(i, j int) bool { return out.Members[1+i].NodeID < out.Members[1+j].NodeID })
	return out
}
