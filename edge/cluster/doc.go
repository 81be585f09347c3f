// Package cluster makes an edge node a member of a cluster of nodes:
// membership (hashicorp/memberlist, encrypted with the cluster secret),
// the ownership gossip that tells every node which endpoints the others'
// agents serve (routing.Local out, routing.Cluster in, by versioned
// deltas), the relay connections to the other members (ALPN pico-peer/1,
// both sides proving the secret; Peer), the rebalancing of agent links
// between nodes, and the drain's part (SetDraining, OthersToMoveTo,
// Leave).
//
// The node gives it what it needs through Host; the cluster adds the other
// nodes' endpoints to the node's routing table, each owned by what
// Host.Target made for its Peer. Serving relayed streams is the node's:
// the cluster only checks a peer's proof (AcceptPeer). It imports routing,
// quicutil and edge/admin (the status schema) of ours, never edge.
package cluster
