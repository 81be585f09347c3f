package admin

import (
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/VictoriaMetrics/metrics"
)

// Node is what the admin port reads and does on an edge node. Its methods
// are called concurrently.
type Node interface {
	// Ready returns nil when the node takes traffic, else why not (the
	// body of /readyz's 503).
	Ready() error
	Endpoints() Endpoints
	Agents() Agents
	Status() NodeStatus
	Members() Members
	Traffic() Traffic
	// Drain starts a graceful shutdown; it returns at once.
	Drain()
	// MoveAgent asks the agent on link id to move to another node;
	// EvictAgent closes that link. Each logs who asked (remoteAddr) and
	// returns the agent's ID, or ok false when this node has no link id.
	MoveAgent(id uint64, remoteAddr string) (agentID string, ok bool)
	EvictAgent(id uint64, remoteAddr string) (agentID string, ok bool)
}

// Config is the admin port's set-up.
type Config struct {
	NodeID  string
	Metrics *metrics.Set // what /metrics serves, with the process metrics
	// Token, if set, enables the operations that change state or cost the
	// node, each only for a request that presents it; if empty, their
	// paths do not exist (404).
	Token string
	Pprof bool // serve /debug/pprof/ (needs Token)
	// Certs answers GET /status/certs (its NodeID filled in here); nil:
	// source "development", no certificates.
	Certs func() Certs
	Log   *slog.Logger
}

// Handler returns the admin API of n.
func Handler(n Node, cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := n.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		cfg.Metrics.WritePrometheus(w)
		metrics.WriteProcessMetrics(w) // go_* and process_*: memory, GC, goroutines, CPU
	})
	mux.HandleFunc("GET /status/endpoints", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.Endpoints()) })
	mux.HandleFunc("GET /status/agents", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.Agents()) })
	mux.HandleFunc("GET /status/node", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.Status()) })
	mux.HandleFunc("GET /status/members", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.Members()) })
	mux.HandleFunc("GET /status/traffic", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.Traffic()) })
	mux.HandleFunc("GET /status/certs", func(w http.ResponseWriter, r *http.Request) {
		c := Certs{Source: "development"}
		if cfg.Certs != nil {
			c = cfg.Certs()
		}
		c.NodeID = cfg.NodeID
		if c.Certificates == nil {
			c.Certificates = []Cert{}
		}
		writeJSON(w, c)
	})
	mux.HandleFunc("GET /{$}", serveDashboard) // the dashboard: dashboard.html
	ops(mux, n, cfg)
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
