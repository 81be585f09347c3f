package edgetest

import (
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/cluster"
	"github.com/pico-edge/pico/routing"
)

// FastGossip sets memberlist's timers for loopback tests: failures are
// detected in about a second, push/pull runs every 2 s.
func FastGossip(mc *memberlist.Config) {
	mc.ProbeInterval = 200 * time.Millisecond
	mc.ProbeTimeout = 100 * time.Millisecond
	mc.GossipInterval = 50 * time.Millisecond
	mc.SuspicionMult = 2
	mc.SuspicionMaxTimeoutMult = 2
	mc.PushPullInterval = 2 * time.Second
	mc.TCPTimeout = time.Second
	mc.GossipToTheDeadTime = 2 * time.Second
	mc.DeadNodeReclaimTime = time.Second
}

// Cluster is a set of in-process nodes that form one cluster.
type Cluster struct {
	Nodes  []*Node
	Secret []byte
	Bundle *certs.Bundle
}

// NewSecret returns a random cluster secret.
func NewSecret(tb testing.TB) []byte {
	s := make([]byte, 32)
	rand.Read(s)
	return s
}

// ClusterNode returns an option that makes a node named id a member of the
// cluster of secret, joining the nodes at join (gossip addresses).
func ClusterNode(id string, secret []byte, join ...string) func(*edge.Config) {
	return func(c *edge.Config) {
		c.NodeID = id
		c.Cluster = &cluster.Config{
			Secret:            secret,
			GossipAddr:        "127.0.0.1:0",
			Join:              join,
			RejoinInterval:    time.Second,
			RebalanceInterval: 200 * time.Millisecond,
			Memberlist:        FastGossip,
		}
	}
}

// NewCluster starts n nodes named node-0 … node-(n-1) that share one CA and
// one secret, and waits until every node sees all n members. opts apply to
// every node.
func NewCluster(tb testing.TB, n int, opts ...func(*edge.Config)) *Cluster {
	tb.Helper()
	b, err := certs.Generate()
	if err != nil {
		tb.Fatalf("generate certificates: %v", err)
	}
	c := &Cluster{Secret: NewSecret(tb), Bundle: b}
	for i := range n {
		c.Add(tb, fmt.Sprintf("node-%d", i), opts...)
	}
	c.WaitMembers(tb, n)
	return c
}

// Add starts one more node named id that joins the cluster.
func (c *Cluster) Add(tb testing.TB, id string, opts ...func(*edge.Config)) *Node {
	tb.Helper()
	return c.AddOn(tb, id, "127.0.0.1:0", opts...)
}

// AddOn is Add with the node's agent listener on agentAddr.
func (c *Cluster) AddOn(tb testing.TB, id, agentAddr string, opts ...func(*edge.Config)) *Node {
	tb.Helper()
	var join []string
	for _, n := range c.Nodes {
		if a := n.Server.GossipAddr(); a != "" {
			join = append(join, a)
		}
	}
	all := append([]func(*edge.Config){ClusterNode(id, c.Secret, join...)}, opts...)
	node := NewNodeOn(tb, agentAddr, c.Bundle, all...)
	select {
	case <-node.Server.Started():
	case <-time.After(10 * time.Second):
		tb.Fatalf("node %s did not start", id)
	}
	c.Nodes = append(c.Nodes, node)
	return node
}

// WaitMembers waits until every running node sees want live members.
func (c *Cluster) WaitMembers(tb testing.TB, want int) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range c.Nodes {
		if n.Stopped() {
			continue
		}
		for {
			changed := n.Server.MembersChanged()
			if n.Server.Members() == want {
				break
			}
			select {
			case <-changed:
			case <-time.After(time.Until(deadline)):
				tb.Fatalf("node %s sees %d members, want %d", n.Server.NodeID(), n.Server.Members(), want)
			}
		}
	}
}

// WaitRemote waits until endpoint id is served by want other nodes, as n
// sees it (0: by none).
func (n *Node) WaitRemote(tb testing.TB, id string, want int) {
	tb.Helper()
	tab := n.Server.Table()
	deadline := time.After(20 * time.Second)
	for {
		changed := tab.Changed()
		got := len(tab.Remote(routing.EndpointID(id)))
		if got == want {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			tb.Fatalf("node %s: endpoint %q has %d remote owners, want %d (waited 20s)", n.Server.NodeID(), id, got, want)
		}
	}
}
