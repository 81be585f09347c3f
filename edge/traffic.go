package edge

import (
	"time"

	"github.com/pico-edge/pico/edge/admin"
)

// requestProtos and requestClasses name the indexes of
// serverMetrics.requests, in the order newServerMetrics registers them.
var (
	requestProtos  = [3]string{"http1", "http2", "http3"}
	requestClasses = statusClasses
)

// trafficStatus is /status/traffic.
func (s *Server) trafficStatus() admin.Traffic {
	out := admin.Traffic{
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
