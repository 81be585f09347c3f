package edge

import (
	"sort"

	"github.com/pico-edge/pico/edge/admin"
	"github.com/pico-edge/pico/routing"
)

// memberStatus is /status/members.
func (s *Server) memberStatus() admin.Members {
	out := admin.Members{NodeID: s.cfg.NodeID, Members: []admin.Member{}}
	self := admin.Member{NodeID: s.cfg.NodeID, Self: true, State: "alive", Draining: s.draining.Load(),
		Epoch: s.epoch, Version: s.local.Version(), Endpoints: len(s.local.Announced()), Links: uint32(s.sessionCount()),
		Routed: true}
	c := s.cluster
	if c == nil || c.ml == nil {
		out.Members = append(out.Members, self)
		return out
	}
	out.Clustered = true
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
