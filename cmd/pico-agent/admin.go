package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/pico-edge/pico/agent"
)

// serveAdmin serves the admin API on --admin-addr, if set, until the
// returned stop is called, and says where on out.
func (g *Globals) serveAdmin(a *agent.Agent, out io.Writer) (stop func(), err error) {
	if g.AdminAddr == "" {
		return func() {}, nil
	}
	ln, err := g.listenAdmin()
	if err != nil {
		return nil, fmt.Errorf("listen on --admin-addr: %w", err)
	}
	fmt.Fprintf(out, "admin API on http://%s: /metrics, /status, /healthz, /readyz\n", ln.Addr())
	srv := &http.Server{Handler: g.withInspector(adminHandler(a), ln.Addr(), out), ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	return func() { srv.Close(); wg.Wait() }, nil
}

// adminHandler serves the agent's admin API:
//
//	/healthz  200 while the process runs
//	/readyz   200 when every endpoint is registered on an edge node, else 503 saying which is not
//	/status   JSON of agent.Status
//	/metrics  Prometheus text, pico_agent_*, and the process's go_* and process_*
func adminHandler(a *agent.Agent) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		st := a.Status()
		var missing []string
		for _, e := range st.Endpoints {
			if len(e.Nodes) == 0 {
				missing = append(missing, e.ID)
			}
		}
		switch {
		case len(st.Links) == 0:
			http.Error(w, "not ready: no link to an edge node", http.StatusServiceUnavailable)
		case len(missing) > 0:
			http.Error(w, "not ready: not registered on any edge node: "+strings.Join(missing, ", "), http.StatusServiceUnavailable)
		default:
			io.WriteString(w, "ready\n")
		}
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(a.Status())
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		writeMetrics(w, a.Status())
		metrics.WriteProcessMetrics(w)
	})
	return mux
}

// writeMetrics writes st in the Prometheus text format. Labels are the
// agent's own endpoints and the nodes of its links (at most
// agent.MaxConnections), so their number stays small.
func writeMetrics(w io.Writer, st agent.Status) {
	metrics.WriteGaugeUint64(w, "pico_agent_links", uint64(len(st.Links)))
	for _, l := range st.Links {
		metrics.WriteGaugeFloat64(w, fmt.Sprintf(`pico_agent_link_rtt_seconds{node=%s}`, quoteLabel(l.NodeID)), l.RTT.Seconds())
	}
	for _, l := range st.Links {
		metrics.WriteGaugeUint64(w, fmt.Sprintf(`pico_agent_link_info{node=%s,transport=%s}`, quoteLabel(l.NodeID), quoteLabel(l.Transport)), 1)
	}
	metrics.WriteCounterUint64(w, "pico_agent_reconnects_total", st.Reconnects)
	metrics.WriteCounterUint64(w, "pico_agent_connect_errors_total", st.ConnectErrors)
	metrics.WriteGaugeUint64(w, "pico_agent_endpoints", uint64(len(st.Endpoints)))
	for _, e := range st.Endpoints {
		ep := quoteLabel(e.ID)
		metrics.WriteGaugeUint64(w, fmt.Sprintf(`pico_agent_endpoint_nodes{endpoint=%s}`, ep), uint64(len(e.Nodes)))
		metrics.WriteCounterUint64(w, fmt.Sprintf(`pico_agent_streams_total{endpoint=%s}`, ep), e.Streams)
		metrics.WriteGaugeUint64(w, fmt.Sprintf(`pico_agent_streams_in_flight{endpoint=%s}`, ep), uint64(max(e.InFlight, 0)))
		metrics.WriteCounterUint64(w, fmt.Sprintf(`pico_agent_upstream_dial_errors_total{endpoint=%s}`, ep), e.UpstreamErrors)
	}
}

// quoteLabel quotes a label value as the Prometheus text format wants.
func quoteLabel(v string) string {
	return `"` + labelEscaper.Replace(v) + `"`
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
