package edge

import "time"

// requestProtos and requestClasses name the indexes of
// serverMetrics.requests, in the order newServerMetrics registers them.
var (
	requestProtos  = [3]string{"http1", "http2", "http3"}
	requestClasses = [6]string{"error", "1xx", "2xx", "3xx", "4xx", "5xx"}
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
}

func (s *Server) trafficStatus() trafficStatus {
	out := trafficStatus{
		NodeID:          s.cfg.NodeID,
		TimeMS:          time.Now().UnixMilli(),
		Requests:        make(map[string]map[string]uint64, len(requestProtos)),
		ActiveStreams:   s.activeStreams.Load(),
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
	return out
}
