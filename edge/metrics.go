package edge

import (
	"log/slog"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"

	"github.com/pico-edge/pico/edge/internal/quiet"
	"github.com/pico-edge/pico/routing"
)

// serverMetrics are the node's metrics, registered in one *metrics.Set per
// node so that several nodes can live in one process.
type serverMetrics struct {
	requests               [3][6]*metrics.Counter // by client protocol (HTTP/1, /2, /3) and status class; class 0 is "error" (no response)
	duration               *metrics.PrometheusHistogram
	tcpConns               *metrics.Counter
	tcpBytesIn             *metrics.Counter
	tcpBytesOut            *metrics.Counter
	registrations          map[string]*metrics.Counter // by result
	retries                *metrics.Counter
	streamRetries          *metrics.Counter
	agentConnected         *metrics.Counter
	gossipStates           *metrics.Counter
	gossipSent             *metrics.Counter
	gossipErrors           *metrics.Counter
	peerDials              *metrics.Counter
	peerRefused            *metrics.Counter
	relayIn                *metrics.Counter
	relayOut               *metrics.Counter
	relayBytes             *metrics.Counter
	rebalanced             *metrics.Counter
	rebalanceFutile        *metrics.Counter
	rebalanceSkipped       *metrics.Counter
	overloaded             *metrics.Counter
	endpoints              *endpointSeries
	ttfb                   *metrics.PrometheusHistogram
	activeRequests         [3]*atomic.Int64 // by client protocol
	registrationsThrottled *metrics.Counter
	badStreams             *metrics.Counter
	connRefused            map[string]*metrics.Counter // by limit: source, listener, global
	// agentRefused counts the agent connections refused at the hello, by
	// reason (hello: no valid hello in time; token; limit), and logs them
	// quietly: anyone who reaches the agent port can cause them.
	agentRefused   map[string]*refusal
	peerRefusedLog *quiet.Log
	// TLS passthrough: connections that reached an agent, their bytes,
	// and those refused, by reason (passthrough.go), logged quietly.
	passthroughConns    *metrics.Counter
	passthroughBytesIn  *metrics.Counter
	passthroughBytesOut *metrics.Counter
	passthroughRefused  map[string]*refusal
	set                 *metrics.Set
}

func newServerMetrics(set *metrics.Set, s *Server) *serverMetrics {
	m := &serverMetrics{registrations: make(map[string]*metrics.Counter), set: set}
	for p, proto := range []string{"http1", "http2", "http3"} {
		for i, class := range []string{"error", "1xx", "2xx", "3xx", "4xx", "5xx"} {
			m.requests[p][i] = set.NewCounter(`pico_requests_total{proto="` + proto + `",code="` + class + `"}`)
		}
	}
	m.duration = set.NewPrometheusHistogram("pico_request_duration_seconds")
	m.ttfb = set.NewPrometheusHistogram("pico_upstream_ttfb_seconds")
	m.endpoints = &endpointSeries{set: set, eps: make(map[routing.EndpointID]*[6]*metrics.Counter)}
	for i, proto := range []string{"http1", "http2", "http3"} {
		n := new(atomic.Int64)
		m.activeRequests[i] = n
		set.NewGauge(`pico_active_requests{proto="`+proto+`"}`, func() float64 { return float64(n.Load()) })
	}
	set.NewGauge("pico_client_connections", func() float64 { return float64(s.door.OpenConns()) })
	set.NewGauge("pico_remote_endpoints", func() float64 {
		n := 0
		for _, e := range s.table.Endpoints() {
			if len(e.Targets) == 0 {
				n++
			}
		}
		return float64(n)
	})
	set.NewGauge("pico_gossip_state_bytes", func() float64 {
		return float64(len(routing.AppendState(nil, s.local.Full())))
	})
	set.NewGauge("pico_agent_link_rtt_seconds_avg", func() float64 { a, _, _, _ := s.linkStats(); return a })
	set.NewGauge("pico_agent_link_rtt_seconds_max", func() float64 { _, m, _, _ := s.linkStats(); return m })
	set.NewGauge("pico_agent_link_packets_lost", func() float64 { _, _, l, _ := s.linkStats(); return float64(l) })
	set.NewGauge("pico_agent_link_packets_sent", func() float64 { _, _, _, n := s.linkStats(); return float64(n) })
	set.NewGauge("pico_active_streams", func() float64 { return float64(s.live.count()) })
	set.NewGauge("pico_agents", func() float64 { return float64(s.linkCount()) })
	set.NewGauge("pico_endpoints", func() float64 { return float64(s.table.Len()) })
	m.tcpConns = set.NewCounter("pico_tcp_connections_total")
	m.tcpBytesIn = set.NewCounter(`pico_tcp_bytes_total{direction="to_upstream"}`)
	m.tcpBytesOut = set.NewCounter(`pico_tcp_bytes_total{direction="from_upstream"}`)
	for _, r := range []string{"ok", "invalid_endpoint", "conflict", "limit", "forbidden", "protocol_error"} {
		m.registrations[r] = set.NewCounter(`pico_registrations_total{result="` + r + `"}`)
	}
	m.retries = set.NewCounter("pico_retries_total")
	m.streamRetries = set.NewCounter("pico_stream_retries_total")
	m.agentConnected = set.NewCounter("pico_agent_connections_total")
	m.gossipStates = set.NewCounter("pico_gossip_states_received_total")
	m.gossipSent = set.NewCounter("pico_gossip_states_sent_total")
	m.gossipErrors = set.NewCounter("pico_gossip_errors_total")
	m.peerDials = set.NewCounter("pico_relay_connections_total")
	m.peerRefused = set.NewCounter("pico_relay_refused_total")
	m.relayOut = set.NewCounter(`pico_relay_streams_total{direction="out"}`)
	m.relayIn = set.NewCounter(`pico_relay_streams_total{direction="in"}`)
	m.relayBytes = set.NewCounter("pico_relay_bytes_total")
	m.rebalanced = set.NewCounter("pico_rebalance_goaways_total")
	m.rebalanceFutile = set.NewCounter("pico_rebalance_futile_total")
	m.rebalanceSkipped = set.NewCounter("pico_rebalance_skipped_total")
	m.overloaded = set.NewCounter("pico_endpoint_overloaded_total")
	m.registrationsThrottled = set.NewCounter("pico_registrations_throttled_total")
	m.badStreams = set.NewCounter("pico_malformed_streams_total")
	m.connRefused = make(map[string]*metrics.Counter)
	for _, r := range []string{"source", "listener", "global"} {
		m.connRefused[r] = set.NewCounter(`pico_connections_refused_total{limit="` + r + `"}`)
	}
	m.agentRefused = make(map[string]*refusal)
	for r, msg := range map[string]string{"hello": "agent connection refused", "token": "agent connection refused: token",
		"limit": "agent connection refused: limit"} {
		m.agentRefused[r] = &refusal{count: set.NewCounter(`pico_agent_refused_total{reason="` + r + `"}`),
			log: quiet.New(s.log, slog.LevelWarn, msg)}
	}
	m.peerRefusedLog = quiet.New(s.log, slog.LevelWarn, "peer connection refused")
	m.passthroughConns = set.NewCounter("pico_passthrough_connections_total")
	m.passthroughBytesIn = set.NewCounter(`pico_passthrough_bytes_total{direction="to_upstream"}`)
	m.passthroughBytesOut = set.NewCounter(`pico_passthrough_bytes_total{direction="from_upstream"}`)
	m.passthroughRefused = make(map[string]*refusal)
	for _, r := range []string{"no_sni", "malformed", "incomplete", "unknown_endpoint", "overloaded", "unreachable"} {
		m.passthroughRefused[r] = &refusal{count: set.NewCounter(`pico_passthrough_refused_total{reason="` + r + `"}`),
			log: quiet.New(s.log, slog.LevelInfo, "tls passthrough connection refused: "+r)}
	}
	set.NewGauge("pico_cluster_members", func() float64 { return float64(s.memberCount()) })
	set.NewGauge("pico_draining", func() float64 {
		if s.draining.Load() {
			return 1
		}
		return 0
	})
	return m
}

func (m *serverMetrics) request(protoMajor, status int) *metrics.Counter {
	c := status / 100
	if c < 1 || c > 5 {
		c = 0
	}
	p := min(max(protoMajor, 1), 3) - 1
	return m.requests[p][c]
}

// refusal counts one kind of refusal and logs it quietly.
type refusal struct {
	count *metrics.Counter
	log   *quiet.Log
}

func (r *refusal) add(args ...any) {
	r.count.Inc()
	r.log.Log(args...)
}
