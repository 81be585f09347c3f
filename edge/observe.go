package edge

import (
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/pico-edge/pico/edge/frontdoor"
	"github.com/pico-edge/pico/routing"
)

// maxEndpointSeries caps the endpoints that get their own request series;
// the others share endpoint="_other", so a node with many endpoints cannot
// flood Prometheus.
const maxEndpointSeries = 500

// endpointSeries holds per-endpoint counters, created on first use.
type endpointSeries struct {
	set *metrics.Set
	mu  sync.Mutex
	eps map[routing.EndpointID]*[6]*metrics.Counter
}

var statusClasses = [6]string{"error", "1xx", "2xx", "3xx", "4xx", "5xx"}

func (e *endpointSeries) counter(id routing.EndpointID, status int) *metrics.Counter {
	e.mu.Lock()
	defer e.mu.Unlock()
	cs := e.eps[id]
	if cs == nil {
		label := string(id)
		if len(e.eps) >= maxEndpointSeries {
			label, id = "_other", "_other"
			cs = e.eps[id]
		}
		if cs == nil {
			cs = new([6]*metrics.Counter)
			for i, class := range statusClasses {
				cs[i] = e.set.NewCounter(`pico_endpoint_requests_total{endpoint="` + label + `",code="` + class + `"}`)
			}
			e.eps[id] = cs
		}
	}
	c := status / 100
	if c < 1 || c > 5 {
		c = 0
	}
	return cs[c]
}

// peerCounter returns the counter name{direction, peer}. Peers are
// cluster members: their number is small and bounded.
func (m *serverMetrics) peerCounter(name, direction, peer string) *metrics.Counter {
	return m.set.GetOrCreateCounter(name + `{direction="` + direction + `",peer="` + peer + `"}`)
}

// observe records a finished front-door request: metrics, and the access
// log line unless sampling or the endpoint's switch leaves it out.
// An upgraded connection is a 101 with the bytes it carried each way; a
// response the agent's side cut counts as an error (no whole response was
// sent), though its access-log line says the status the client got.
func (s *Server) observe(r *http.Request, w *statusWriter, info *requestInfo, d time.Duration) {
	if u := info.upgraded; u != nil {
		if w.status == 0 {
			w.status = http.StatusSwitchingProtocols // ReverseProxy wrote it on the hijacked connection
		}
		w.bytes += u.out.Load()
	}
	class := w.status
	if info.cut {
		class = 0
	}
	s.m.request(r.ProtoMajor, class).Inc()
	s.m.duration.Update(d.Seconds())
	if info.endpoint != "" && info.known {
		s.m.endpoints.counter(info.endpoint, class).Inc()
	}
	if s.logRequest(info.endpoint, w.status, info.err) {
		s.accessLog(r, w, info, d)
	}
}

// logRequest decides whether a request gets an access-log line: errors
// (status 5xx or a proxy error) always do; others as sampled, unless their
// endpoint is switched off.
func (s *Server) logRequest(id routing.EndpointID, status int, err error) bool {
	if s.cfg.AccessLogOff[string(id)] {
		return false
	}
	if status >= 500 || status == 0 || err != nil {
		return true
	}
	rate := s.cfg.AccessLogSample
	return rate >= 1 || rate > 0 && rand.Float64() < rate
}

// countingBody counts the bytes of a request body read by the proxy.
type countingBody struct {
	io.ReadCloser
	n       atomic.Int64
	refused atomic.Pointer[frontdoor.BodyError] // why the guard refused the rest of the body, if it did
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	var be *frontdoor.BodyError
	if err != nil && errors.As(err, &be) {
		b.refused.CompareAndSwap(nil, be) // read by the transport's goroutine, asked by the handler's
	}
	return n, err
}

// accessLog writes one line per proxied request. Only the path is logged:
// a query string or a header may carry a secret.
func (s *Server) accessLog(r *http.Request, w *statusWriter, info *requestInfo, d time.Duration) {
	attrs := []slog.Attr{
		slog.String("endpoint_id", string(info.endpoint)),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("proto", r.Proto),
		slog.Int("status", w.status),
		slog.Int64("bytes_in", info.bytesIn()),
		slog.Int64("bytes_out", w.bytes),
		slog.Duration("duration", d),
		slog.String("remote_addr", r.RemoteAddr),
		slog.String("node_id", s.cfg.NodeID),
	}
	if info.servedBy != "" {
		attrs = append(attrs, slog.String("served_by", info.servedBy))
	}
	if info.agent != "" {
		attrs = append(attrs, slog.String("agent_id", info.agent))
	}
	if info.ttfb > 0 {
		attrs = append(attrs, slog.Duration("upstream_ttfb", info.ttfb))
	}
	if info.retried {
		attrs = append(attrs, slog.Bool("retried", true))
	}
	if info.err != nil {
		attrs = append(attrs, slog.String("err", info.err.Error()))
	}
	s.cfg.AccessLog.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
}

func (info *requestInfo) bytesIn() int64 {
	var n int64
	if info.body != nil {
		n = info.body.n.Load()
	}
	if u := info.upgraded; u != nil {
		n += u.in.Load()
	}
	return n
}

// linkStats sums the QUIC statistics of the node's agent links, for the
// gauges read at each scrape.
func (s *Server) linkStats() (rttAvg, rttMax float64, lost, sent uint64) {
	list := s.linkList()
	var sum time.Duration
	for _, l := range list {
		st := l.conn.ConnectionStats()
		sum += st.SmoothedRTT
		rttMax = max(rttMax, st.SmoothedRTT.Seconds())
		lost += st.PacketsLost
		sent += st.PacketsSent
	}
	if len(list) > 0 {
		rttAvg = (sum / time.Duration(len(list))).Seconds()
	}
	return
}
