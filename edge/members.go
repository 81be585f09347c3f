package edge

import (
	"sort"

	"github.com/pico-edge/pico/routing"
)

// memberInfo describes one cluster member as this node sees it.
type memberInfo struct {
	NodeID     string  `json:"node_id"`
	Self       bool    `json:"self,omitempty"`
	GossipAddr string  `json:"gossip_addr"`
	RelayAddr  string  `json:"relay_addr"`
	State      string  `json:"state"` // alive, suspect, dead, left
	Draining   bool    `json:"draining"`
	Epoch      uint64  `json:"epoch"`
	Version    uint64  `json:"version"`   // of its ownership state known here
	Endpoints  int     `json:"endpoints"` // it serves, as known here
	Links      uint32  `json:"agent_links"`
	Routed     bool    `json:"routed"` // its endpoints are in this node's table
	Relay      string  `json:"relay"`  // this node's connection to it: none, connected
	RelayRTT   float64 `json:"relay_rtt_ms,omitempty"`
	InFlight   int64   `json:"relay_in_flight"`
	Conflicts  int     `json:"conflicts,omitempty"`
}

func (s *Server) memberStatus() any {
	out := struct {
		NodeID    string       `json:"node_id"`
		Clustered bool         `json:"clustered"`
		Members   []memberInfo `json:"members"`
	}{NodeID: s.cfg.NodeID, Members: []memberInfo{}}
	self := memberInfo{NodeID: s.cfg.NodeID, Self: true, State: "alive", Draining: s.draining.Load(),
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
		mi := memberInfo{NodeID: name, GossipAddr: m.gossip, State: stateName(m.state), Relay: "none",
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
