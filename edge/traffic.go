package edge

import "time"

// requestProtos and requestClasses name the indexes of
// serverMetrics.requests, in the order newServerMetrics registers them.
var (
	requestProtos  = [3]string{"http1", "http2", "http3"}
	requestClasses = statusClasses
)

// trafficStatus is /status/traffic: this node's request counters since it
// started, the same numbers as /metrics in JSON. A reader derives rates by
// differencing two samples over TimeMS.
type trafficStatus struct {
	NodeID string `json:"node_id"`
	TimeMS int64  `json:"time_ms"` // when the counters were read, Unix milliseconds
	// Requests counts requests by client protocol (http1, http2, http3) and
	// status class (1xx ... 5xx, "error" when no response was sent).
	Requests        map[string]map[string]uint64 `json:"requests"`
	ActiveStreams   int64                        `json:"active_streams"`
	TCPConnections  uint64                       `json:"tcp_connections"`
	RelayStreamsIn  uint64                       `json:"relay_streams_in"`
	RelayStreamsOut uint64                       `json:"relay_streams_out"`
	Retries         uint64                       `json:"retries"`
	// Endpoints counts requests this node received by endpoint and status
	// class, as pico_endpoint_requests_total: the first 500 endpoints
	// seen, the others under "_other".
	Endpoints map[string]map[string]uint64 `json:"endpoints"`
}

func (s *Server) trafficStatus() trafficStatus {
	out := trafficStatus{
		NodeID:          s.cfg.NodeID,
		TimeMS:          time.Now().UnixMilli(),
		Requests:        make(map[string]map[string]uint64, len(requestProtos)),
		ActiveStreams:   s.live.count(),
		TCPConnections:  s.m.tcpConns.Get(),
		RelayStreamsIn:  s.m.relayIn.Get(),
		RelayStreamsOut: s.m.relayOut.Get(),
		Retries:         s.m.retries.Get(),
	}
	for p, proto := range requestProtos {
		byClass := make(map[string]uint64, len(requestClasses))
		for c, class := range requestClasses {
			byClass[class] = s.m.requests[p][c].Get()
		}
		out.Requests[proto] = byClass
	}
	out.Endpoints = s.m.endpoints.snapshot()
	return out
}

// snapshot returns the request counts of each endpoint by status class.
func (e *endpointSeries) snapshot() map[string]map[string]uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]map[string]uint64, len(e.eps))
	for id, cs := range e.eps {
		byClass := make(map[string]uint64, len(cs))
		for i, c := range cs {
			byClass[statusClasses[i]] = c.Get()
		}
		out[string(id)] = byClass
	}
	return out
}
