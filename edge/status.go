package edge

import (
	"errors"
	"net/http"
	"sort"

	"github.com/pico-edge/pico/edge/admin"
	"github.com/pico-edge/pico/quicutil"
)

// adminNode is the node as the admin port sees it (admin.Node).
type adminNode struct{ s *Server }

var _ admin.Node = adminNode{}

// adminHandler serves the admin port.
func (s *Server) adminHandler() http.Handler {
	return admin.Handler(adminNode{s}, admin.Config{NodeID: s.cfg.NodeID, Metrics: s.cfg.Metrics,
		Token: s.cfg.AdminToken, Pprof: s.cfg.AdminPprof, Certs: s.cfg.Certs, Log: s.log})
}

func (n adminNode) Ready() error {
	s := n.s
	if !s.ready.Load() || s.draining.Load() {
		return errors.New("node is starting or draining")
	}
	if c := s.cluster; c != nil && !c.Ready() {
		return errors.New("joining the cluster and learning who serves what")
	}
	return nil
}

func (n adminNode) Endpoints() admin.Endpoints {
	s := n.s
	eps := s.table.Endpoints()
	out := make([]admin.Endpoint, 0, len(eps))
	for _, e := range eps {
		st := admin.Endpoint{ID: string(e.ID), Protocol: e.Protocol, Agents: make([]string, 0, len(e.Targets))}
		for _, tg := range e.Targets {
			l := tg.(*link)
			st.Agents = append(st.Agents, l.hello.AgentID)
			st.InFlight += l.inflight.Load()
		}
		st.Nodes = make([]string, 0, len(e.Remote))
		for _, tg := range e.Remote {
			t := tg.(*relayTarget)
			st.Nodes = append(st.Nodes, t.p.Node())
			st.InFlight += t.Load()
		}
		sort.Strings(st.Nodes)
		out = append(out, st)
	}
	return admin.Endpoints{NodeID: s.cfg.NodeID, Endpoints: out}
}

func (n adminNode) Agents() admin.Agents {
	s := n.s
	list := s.linkList()
	out := make([]admin.Agent, 0, len(list))
	for _, l := range list {
		out = append(out, l.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Session < out[j].Session })
	return admin.Agents{NodeID: s.cfg.NodeID, Auth: s.auth.Mode(), Agents: out} // a nil Verifier says "none"
}

func (n adminNode) Status() admin.NodeStatus {
	s := n.s
	return admin.NodeStatus{NodeID: s.cfg.NodeID, Version: s.cfg.Version, Draining: s.draining.Load(), Auth: s.auth.Status()}
}

func (n adminNode) Members() admin.Members {
	s := n.s
	self := admin.Member{NodeID: s.cfg.NodeID, Self: true, State: "alive", Draining: s.draining.Load(),
		Epoch: s.epoch, Version: s.local.Version(), Endpoints: len(s.local.Announced()), Links: uint32(s.linkCount()),
		Routed: true}
	if s.cluster == nil {
		return admin.Members{NodeID: s.cfg.NodeID, Members: []admin.Member{self}}
	}
	return s.cluster.Members(self)
}
func (n adminNode) Traffic() admin.Traffic { return n.s.trafficStatus() }
func (n adminNode) Drain()                 { n.s.Drain() }

func (n adminNode) MoveAgent(id uint64, remoteAddr string) (string, bool) {
	l := n.s.linkByID(id)
	if l == nil {
		return "", false
	}
	l.log.Info("agent asked to move on the admin port", "remote_addr", remoteAddr)
	l.goAway("asked by an operator of edge node " + n.s.cfg.NodeID)
	return l.hello.AgentID, true
}

func (n adminNode) EvictAgent(id uint64, remoteAddr string) (string, bool) {
	l := n.s.linkByID(id)
	if l == nil {
		return "", false
	}
	l.log.Warn("agent evicted on the admin port", "remote_addr", remoteAddr)
	l.close(quicutil.ConnCodeEvicted, "evicted by an operator of edge node "+n.s.cfg.NodeID)
	return l.hello.AgentID, true
}

func (s *Server) linkByID(id uint64) *link { return s.links.get(id) }

// Drain starts a graceful shutdown, as when Run's context ends: Run drains
// and returns nil. It is safe to call more than once, and before Run.
func (s *Server) Drain() { s.drainOnce.Do(func() { close(s.drainReq) }) }
