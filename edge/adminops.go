package edge

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"

	"github.com/pico-edge/pico/quicutil"
)

// The admin port is read-only unless Config.AdminToken is set: then it
// also serves what changes state or costs the node (pprof, drain, moving
// or evicting an agent), each only to a request that presents the token
// as "Authorization: Bearer TOKEN". Without the token these paths do not
// exist (404).
func (s *Server) adminOps(mux *http.ServeMux) {
	if s.cfg.AdminToken == "" {
		return
	}
	guard := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.AdminToken)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="pico-admin"`)
				http.Error(w, "this admin operation needs the admin token: Authorization: Bearer TOKEN", http.StatusUnauthorized)
				return
			}
			h(w, r)
		}
	}
	if s.cfg.AdminPprof {
		mux.HandleFunc("GET /debug/pprof/", guard(pprof.Index))
		mux.HandleFunc("GET /debug/pprof/cmdline", guard(pprof.Cmdline))
		mux.HandleFunc("GET /debug/pprof/profile", guard(pprof.Profile))
		mux.HandleFunc("GET /debug/pprof/symbol", guard(pprof.Symbol))
		mux.HandleFunc("GET /debug/pprof/trace", guard(pprof.Trace))
	}
	mux.HandleFunc("POST /admin/drain", guard(func(w http.ResponseWriter, r *http.Request) {
		s.log.Warn("drain requested on the admin port", "remote_addr", r.RemoteAddr)
		s.Drain()
		writeJSON(w, map[string]string{"status": "draining", "node_id": s.cfg.NodeID})
	}))
	mux.HandleFunc("POST /admin/agents/{session}/goaway", guard(func(w http.ResponseWriter, r *http.Request) {
		sess := s.sessionByPath(w, r)
		if sess == nil {
			return
		}
		sess.log.Info("agent asked to move on the admin port", "remote_addr", r.RemoteAddr)
		sess.goAway("asked by an operator of edge node " + s.cfg.NodeID)
		writeJSON(w, map[string]any{"status": "asked to move", "session": sess.id, "agent_id": sess.hello.AgentID})
	}))
	mux.HandleFunc("DELETE /admin/agents/{session}", guard(func(w http.ResponseWriter, r *http.Request) {
		sess := s.sessionByPath(w, r)
		if sess == nil {
			return
		}
		sess.log.Warn("agent evicted on the admin port", "remote_addr", r.RemoteAddr)
		sess.close(quicutil.ConnCodeEvicted, "evicted by an operator of edge node "+s.cfg.NodeID)
		writeJSON(w, map[string]any{"status": "evicted", "session": sess.id, "agent_id": sess.hello.AgentID})
	}))
}

func (s *Server) sessionByPath(w http.ResponseWriter, r *http.Request) *session {
	id, err := strconv.ParseUint(r.PathValue("session"), 10, 64)
	if err != nil {
		http.Error(w, fmt.Sprintf("session %q: want the number /status/agents shows", r.PathValue("session")), http.StatusBadRequest)
		return nil
	}
	s.mu.Lock()
	sess := s.sessions[id]
	s.mu.Unlock()
	if sess == nil {
		http.Error(w, fmt.Sprintf("no agent session %d on this node", id), http.StatusNotFound)
	}
	return sess
}

// Drain starts a graceful shutdown, as when Run's context ends: Run drains
// and returns nil. It is safe to call more than once, and before Run.
func (s *Server) Drain() { s.drainOnce.Do(func() { close(s.drainReq) }) }
