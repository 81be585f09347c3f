package edge

import (
	"encoding/json"
	"net/http"
	"sort"

	"github.com/VictoriaMetrics/metrics"
)

// adminHandler serves the read-only admin API.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() || s.draining.Load() {
			http.Error(w, "not ready: node is starting or draining", http.StatusServiceUnavailable)
			return
		}
		if c := s.cluster; c != nil && !c.ready() {
			http.Error(w, "not ready: joining the cluster and learning who serves what", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		s.cfg.Metrics.WritePrometheus(w)
		metrics.WriteProcessMetrics(w) // go_* and process_*: memory, GC, goroutines, CPU
	})
	mux.HandleFunc("GET /status/endpoints", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.endpointStatus())
	})
	mux.HandleFunc("GET /status/agents", func(w http.ResponseWriter, r *http.Request) {
		list := s.sessionList()
		out := make([]agentInfo, 0, len(list))
		for _, sess := range list {
			out = append(out, sess.info())
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Session < out[j].Session })
		writeJSON(w, struct {
			NodeID string      `json:"node_id"`
			Auth   string      `json:"auth"`
			Agents []agentInfo `json:"agents"`
		}{s.cfg.NodeID, s.authMode(), out})
	})
	mux.HandleFunc("GET /status/node", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, struct {
			NodeID   string     `json:"node_id"`
			Version  string     `json:"version"`
			Draining bool       `json:"draining"`
			Auth     authStatus `json:"auth"`
		}{s.cfg.NodeID, s.cfg.Version, s.draining.Load(), s.authStatus()})
	})
	mux.HandleFunc("GET /status/members", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.memberStatus())
	})
	mux.HandleFunc("GET /status/traffic", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, s.trafficStatus()) })
	mux.HandleFunc("GET /{$}", serveDashboard) // the dashboard: dashboard.html
	s.adminOps(mux)
	return mux
}

type endpointStatus struct {
	ID       string   `json:"id"`
	Protocol string   `json:"protocol"`
	Agents   []string `json:"agents"` // local agents
	InFlight int64    `json:"in_flight"`
	Nodes    []string `json:"nodes"` // other nodes whose agents serve it
}

func (s *Server) endpointStatus() any {
	eps := s.table.Endpoints()
	out := make([]endpointStatus, 0, len(eps))
	for _, e := range eps {
		st := endpointStatus{ID: string(e.ID), Protocol: e.Protocol, Agents: make([]string, 0, len(e.Targets))}
		for _, tg := range e.Targets {
			sess := tg.(*session)
			st.Agents = append(st.Agents, sess.hello.AgentID)
			st.InFlight += sess.inflight.Load()
		}
		st.Nodes = make([]string, 0, len(e.Remote))
		for _, tg := range e.Remote {
			p := tg.(*peer)
			st.Nodes = append(st.Nodes, p.node)
			st.InFlight += p.inflight.Load()
		}
		sort.Strings(st.Nodes)
		out = append(out, st)
	}
	return struct {
		NodeID    string           `json:"node_id"`
		Endpoints []endpointStatus `json:"endpoints"`
	}{s.cfg.NodeID, out}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
