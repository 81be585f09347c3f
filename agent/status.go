package agent

import (
	"cmp"
	"encoding/json"
	"slices"
	"sync/atomic"
	"time"
)

// Status is a snapshot of an Agent: its live links and its endpoints.
// Counters count since New.
type Status struct {
	AgentID   string           `json:"agent_id"`
	Links     []LinkStatus     `json:"links"`     // live links, by node ID
	Endpoints []EndpointStatus `json:"endpoints"` // by ID
	// Reconnects counts links replaced: lost, moved away from a draining
	// node (goaway) or found silent.
	Reconnects uint64 `json:"reconnects_total"`
	// ConnectErrors counts failed attempts to connect to an edge (the
	// edge unreachable, a TLS or handshake error, a refused token).
	ConnectErrors uint64 `json:"connect_errors_total"`
}

// LinkStatus describes one live link.
type LinkStatus struct {
	NodeID    string        `json:"node_id"`
	Addr      string        `json:"addr"` // the address dialled
	Connected time.Time     `json:"connected"`
	RTT       time.Duration `json:"-"`         // QUIC's smoothed RTT; rtt_ms in JSON
	InFlight  int64         `json:"in_flight"` // streams being served or dialled
	// Transport is how the link reaches its edge: "quic" (UDP) or "tcp"
	// (the TCP transport).
	Transport string `json:"transport"`
}

// MarshalJSON writes RTT as rtt_ms, in milliseconds.
func (l LinkStatus) MarshalJSON() ([]byte, error) {
	type plain LinkStatus
	return json.Marshal(struct {
		plain
		RTTMillis float64 `json:"rtt_ms"`
	}{plain(l), float64(l.RTT.Microseconds()) / 1000})
}

// EndpointStatus describes one endpoint the agent serves.
type EndpointStatus struct {
	ID   string `json:"id"`
	Kind string `json:"kind"` // http, http2 (HTTP/2 upstream), tcp or tls (passthrough)
	// Nodes are the edge nodes whose live link registered the endpoint,
	// sorted: it is served through them.
	Nodes []string `json:"nodes"`
	// Refusals are the reasons of the live links' edges that refused the
	// endpoint (when it was registered, or withdrawn after SetToken), by
	// node ID. A link that has not answered yet is in neither Nodes nor
	// Refusals.
	Refusals map[string]string `json:"refusals,omitempty"`
	// Streams counts the streams edges opened to the endpoint: a TCP
	// endpoint's connections, and an HTTP endpoint's connections from the
	// edge, each of which carries one request after another (HTTP/1.1
	// keep-alive) or many at once (HTTP/2). The edges count requests.
	Streams  uint64 `json:"streams_total"`
	InFlight int64  `json:"in_flight"` // streams open now (an idle keep-alive stream too)
	// URLs are where clients reach the endpoint, as its edges said when
	// they registered it (pico-edge's --public-url), in the order heard.
	URLs []string `json:"urls,omitempty"`
	// UpstreamErrors counts streams refused because the upstream could
	// not be reached (ServeUpstream and ServeHTTPUpstream only).
	UpstreamErrors uint64 `json:"upstream_errors_total"`
}

// RefusedEverywhere reports whether every live link's edge refused the
// endpoint: it is served nowhere, and the agent does not ask those nodes
// again. The answer is false while the agent has no live link.
func (e *EndpointStatus) RefusedEverywhere(links int) bool {
	return links > 0 && len(e.Nodes) == 0 && len(e.Refusals) == links
}

// endpointStats are the counters of one registration.
type endpointStats struct {
	streams        atomic.Uint64
	inflight       atomic.Int64
	upstreamErrors atomic.Uint64
}

// Status returns a snapshot of the agent's live links and endpoints.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := Status{
		AgentID:       a.id,
		Links:         []LinkStatus{},
		Endpoints:     make([]EndpointStatus, 0, len(a.endpoints)),
		Reconnects:    a.reconnects.Load(),
		ConnectErrors: a.connectErrors.Load(),
	}
	live := a.liveLocked()
	for _, l := range live {
		st.Links = append(st.Links, LinkStatus{
			NodeID:    l.nodeID,
			Addr:      l.addr,
			Connected: l.connected,
			RTT:       l.conn.ConnectionStats().SmoothedRTT,
			InFlight:  l.active.Load(),
			Transport: string(l.transport),
		})
	}
	slices.SortFunc(st.Links, func(x, y LinkStatus) int { return cmp.Compare(x.NodeID, y.NodeID) })
	for id, r := range a.endpoints {
		e := EndpointStatus{
			ID:             id,
			Kind:           r.kind.String(),
			Nodes:          []string{},
			Streams:        r.stats.streams.Load(),
			InFlight:       r.stats.inflight.Load(),
			UpstreamErrors: r.stats.upstreamErrors.Load(),
			URLs:           slices.Clone(r.urls),
		}
		for _, l := range live {
			err, answered := l.answers[id]
			switch {
			case !answered:
			case err == nil:
				e.Nodes = append(e.Nodes, l.nodeID)
			default:
				if e.Refusals == nil {
					e.Refusals = make(map[string]string)
				}
				e.Refusals[l.nodeID] = err.Error()
			}
		}
		slices.Sort(e.Nodes)
		st.Endpoints = append(st.Endpoints, e)
	}
	slices.SortFunc(st.Endpoints, func(x, y EndpointStatus) int { return cmp.Compare(x.ID, y.ID) })
	return st
}

// StatusChanged returns a channel that is closed at the next change of
// what Status reports about links and registrations: a link up, moving or
// lost, an endpoint added, removed, registered or refused by a node. Its
// counters change without notice.
func (a *Agent) StatusChanged() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.statusCh
}

// statusChangedLocked wakes those waiting on StatusChanged; the caller
// holds a.mu.
func (a *Agent) statusChangedLocked() {
	close(a.statusCh)
	a.statusCh = make(chan struct{})
}

// setAnswer records the answer of l's edge for r: nil when it registered
// r, else its refusal; with known false, l has no answer for r (its edge
// was draining). Answers for a registration no longer served are dropped.
func (a *Agent) setAnswer(l *link, r *registration, err error, known bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.endpoints[r.id] != r {
		return
	}
	if known {
		l.answers[r.id] = err
	} else {
		delete(l.answers, r.id)
	}
	a.statusChangedLocked()
}
