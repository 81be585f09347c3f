package admin

import "time"

// Endpoints is /status/endpoints: what the node routes.
type Endpoints struct {
	NodeID    string     `json:"node_id"`
	Endpoints []Endpoint `json:"endpoints"`
}

// Endpoint is one endpoint in Endpoints.
type Endpoint struct {
	ID       string   `json:"id"`
	Protocol string   `json:"protocol"`
	Agents   []string `json:"agents"` // agents linked to this node
	InFlight int64    `json:"in_flight"`
	Nodes    []string `json:"nodes"` // other nodes whose agents serve it
}

// Agents is /status/agents: the agents linked to this node.
type Agents struct {
	NodeID string  `json:"node_id"`
	Auth   string  `json:"auth"` // "none" or what is checked
	Agents []Agent `json:"agents"`
}

// Agent is one agent link in Agents.
type Agent struct {
	Session    uint64    `json:"session"` // the link's number on this node (the admin operations take it)
	AgentID    string    `json:"agent_id"`
	Agent      string    `json:"agent"` // its software and version
	RemoteAddr string    `json:"remote_addr"`
	Connected  time.Time `json:"connected"`
	Endpoints  []string  `json:"endpoints"` // "id/kind"
	InFlight   int64     `json:"in_flight"`
	Streams    uint64    `json:"streams_total"`
	RTTMillis  float64   `json:"rtt_ms"`
	Transport  string    `json:"transport"` // quic (UDP) or tcp (QUIC over the TCP transport)
}

// NodeStatus is /status/node.
type NodeStatus struct {
	NodeID   string `json:"node_id"`
	Version  string `json:"version"`
	Draining bool   `json:"draining"`
	Auth     any    `json:"auth"` // what the node checks (edge/auth.Status)
}

// Members is /status/members: the cluster as this node sees it, itself
// first.
type Members struct {
	NodeID    string   `json:"node_id"`
	Clustered bool     `json:"clustered"`
	Members   []Member `json:"members"`
}

// Member describes one cluster member as this node sees it.
type Member struct {
	NodeID     string  `json:"node_id"`
	Self       bool    `json:"self,omitempty"`
	GossipAddr string  `json:"gossip_addr"`
	RelayAddr  string  `json:"relay_addr"`
	State      string  `json:"state"` // alive, suspect, dead, left
	Draining   bool    `json:"draining"`
	Epoch      uint64  `json:"epoch"`
	Version    uint64  `json:"version"`   // of its ownership state known here
	Endpoints  int     `json:"endpoints"` // it serves, as known here
	Links      uint32  `json:"agent_links"`
	Routed     bool    `json:"routed"` // its endpoints are in this node's table
	Relay      string  `json:"relay"`  // this node's connection to it: none, connected
	RelayRTT   float64 `json:"relay_rtt_ms,omitempty"`
	InFlight   int64   `json:"relay_in_flight"`
	Conflicts  int     `json:"conflicts,omitempty"`
}

// Traffic is /status/traffic: the node's request counters since it
// started, the same numbers as /metrics in JSON. A reader derives rates by
// differencing two samples over TimeMS.
type Traffic struct {
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

// Certs is GET /status/certs: where the node's certificates come from and
// those it obtained from an ACME CA.
type Certs struct {
	NodeID string `json:"node_id"`
	// Source is "acme" (with --acme-domain; the files or development
	// certificate serve the other names), "files" (--tls-cert) or
	// "development".
	Source       string `json:"source"`
	ACMEDomain   string `json:"acme_domain,omitempty"`
	Certificates []Cert `json:"certificates"`
}

// Cert is one certificate obtained from the ACME CA (or read from its
// cache) that the node holds.
type Cert struct {
	Name     string    `json:"name"`
	Issuer   string    `json:"issuer"`
	NotAfter time.Time `json:"not_after"`
}
