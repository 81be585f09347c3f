package admin

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
)

// The admin port is read-only unless Config.Token is set: then it also
// serves what changes state or costs the node (pprof, drain, moving or
// evicting an agent), each only to a request that presents the token as
// "Authorization: Bearer TOKEN". Without the token these paths do not
// exist (404).
func ops(mux *http.ServeMux, n Node, cfg Config) {
	if cfg.Token == "" {
		return
	}
	guard := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(cfg.Token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="pico-admin"`)
				http.Error(w, "this admin operation needs the admin token: Authorization: Bearer TOKEN", http.StatusUnauthorized)
				return
			}
			h(w, r)
		}
	}
	if cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", guard(pprof.Index))
		mux.HandleFunc("GET /debug/pprof/cmdline", guard(pprof.Cmdline))
		mux.HandleFunc("GET /debug/pprof/profile", guard(pprof.Profile))
		mux.HandleFunc("GET /debug/pprof/symbol", guard(pprof.Symbol))
		mux.HandleFunc("GET /debug/pprof/trace", guard(pprof.Trace))
	}
	mux.HandleFunc("POST /admin/drain", guard(func(w http.ResponseWriter, r *http.Request) {
		cfg.Log.Warn("drain requested on the admin port", "remote_addr", r.RemoteAddr)
		n.Drain()
		writeJSON(w, map[string]string{"status": "draining", "node_id": cfg.NodeID})
	}))
	agentOp := func(status string, op func(uint64, string) (string, bool)) http.HandlerFunc {
		return guard(func(w http.ResponseWriter, r *http.Request) {
			id, err := strconv.ParseUint(r.PathValue("session"), 10, 64)
			if err != nil {
				http.Error(w, fmt.Sprintf("session %q: want the number /status/agents shows", r.PathValue("session")), http.StatusBadRequest)
				return
			}
			agentID, ok := op(id, r.RemoteAddr)
			if !ok {
				http.Error(w, fmt.Sprintf("no agent session %d on this node", id), http.StatusNotFound)
				return
			}
			writeJSON(w, map[string]any{"status": status, "session": id, "agent_id": agentID})
		})
	}
	mux.HandleFunc("POST /admin/agents/{session}/goaway", agentOp("asked to move", n.MoveAgent))
	mux.HandleFunc("DELETE /admin/agents/{session}", agentOp("evicted", n.EvictAgent))
}
