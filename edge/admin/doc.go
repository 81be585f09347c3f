// Package admin is an edge node's admin port: health and readiness
// probes, Prometheus metrics, the status API (/status/...: what the node
// serves, its agents, the cluster as it sees it, its traffic counters),
// the dashboard, and, with an admin token, the operations that change
// state (drain, move or evict an agent, pprof).
//
// The status types here are the API's schema: the edge fills them in (it
// implements Node) and `pico-edge status` decodes them. The package knows
// nothing of how a node works; it imports no other package of ours.
package admin
