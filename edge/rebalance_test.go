package edge_test

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// metric returns the value of the series name on n's /metrics.
func metric(t testing.TB, n *edgetest.Node, name string) int {
	t.Helper()
	resp, err := http.Get(n.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, name+" "); ok {
			var v int
			if _, err := fmt.Sscan(rest, &v); err != nil {
				t.Fatalf("%s: %q: %v", name, l, err)
			}
			return v
		}
	}
	t.Fatalf("/metrics of %s has no %s", n.Server.NodeID(), name)
	return 0
}

// waitFor polls cond until it holds, or fails the test after 30 s saying
// what it waited for.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30s for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stuckCluster starts two nodes; node-1 announces an address nobody
// listens on, as a node in a network the agents cannot reach. It starts
// stuck agents given node-0's address alone and mobile agents given both
// nodes' addresses, all on node-0 and serving "foo", and returns the
// nodes and the mobile agents. Node-0 holds agents back for longer than
// a test lasts.
func stuckCluster(t *testing.T, stuck, mobile int, opts ...func(*agent.Config)) (n0, n1 *edgetest.Node, movers []*agent.Agent) {
	t.Helper()
	cl := edgetest.NewCluster(t, 1, func(c *edge.Config) { c.Cluster.RebalanceBackoff = 10 * time.Minute })
	n0 = cl.Nodes[0]
	unreachable := freeUDPAddr(t)
	n1 = cl.Add(t, "node-1", func(c *edge.Config) { c.Cluster.RelayAddr = unreachable })
	cl.WaitMembers(t, 2)
	up := edgetest.Upstream(t, echoHeaders())
	for i := range stuck + mobile {
		edges := []string{n0.AgentAddr}
		if i >= stuck {
			edges = append(edges, n1.AgentAddr)
		}
		a := n0.NewAgent(t, append(opts, func(c *agent.Config) { c.Edges = edges })...)
		if i >= stuck {
			movers = append(movers, a)
		}
		if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
			t.Fatal(err)
		}
	}
	return n0, n1, movers
}

// Agents that can reach only node-0 of a two-node cluster come back to
// node-0 when it asks them to move. Node-0 must notice and stop asking,
// while the agents that can reach node-1 still move there.
func TestClusterHoldsBackAgentsThatComeBack(t *testing.T) {
	const stuck, mobile = 6, 2
	n0, n1, movers := stuckCluster(t, stuck, mobile, singleLink)

	// Eight links over two nodes: node-0 wants to keep four. The two
	// agents that can reach node-1 move there; the six others come back
	// once each and are held back.
	waitFor(t, "the agents that can reach node-1 to move there", func() bool {
		for _, a := range movers {
			if !slices.Equal(a.Nodes(), []string{"node-1"}) {
				return false
			}
		}
		return true
	})
	waitFor(t, "node-0 to hold back every agent that came back", func() bool {
		return metric(t, n0, "pico_rebalance_futile_total") == stuck
	})
	n0.WaitRoute(t, "foo", stuck)
	n1.WaitRoute(t, "foo", mobile)
	asked := metric(t, n0, "pico_rebalance_goaways_total")
	// Each agent was asked once: the movers moved, the others came back.
	// One more ask each is allowed for a move judged as taken when it
	// had not (the agent's new link lost before it was seen).
	if asked < stuck+mobile || asked > 2*(stuck+mobile) {
		t.Fatalf("node-0 asked %d times, want between %d and %d", asked, stuck+mobile, 2*(stuck+mobile))
	}

	// Node-0 still has more than its share, and holds back every agent it
	// could ask: 25 rounds of two asks held back each, and no ask.
	skipped := metric(t, n0, "pico_rebalance_skipped_total")
	waitFor(t, "25 more rebalancing rounds on node-0", func() bool {
		return metric(t, n0, "pico_rebalance_skipped_total") >= skipped+25*2
	})
	if got := metric(t, n0, "pico_rebalance_goaways_total"); got != asked {
		t.Fatalf("node-0 asked agents to move %d more times while they were held back", got-asked)
	}
	if got := metric(t, n0, "pico_rebalance_futile_total"); got != stuck {
		t.Fatalf("pico_rebalance_futile_total = %d, want %d (the movers must not count)", got, stuck)
	}
	if got := metric(t, n1, "pico_rebalance_goaways_total"); got != 0 {
		t.Fatalf("node-1, under its share, asked %d agents to move", got)
	}
	n0.WaitRoute(t, "foo", stuck)
}

// The same with agents that keep two links when they can (the default):
// the movers have one on each node already, so a move of their node-0
// link has nowhere to go either, and every agent ends held back. An agent
// is recognised by its ID across its links.
func TestClusterHoldsBackAgentsWithTwoLinks(t *testing.T) {
	const stuck, mobile = 6, 2
	n0, n1, movers := stuckCluster(t, stuck, mobile)
	waitFor(t, "node-0 to hold back every agent", func() bool {
		return metric(t, n0, "pico_rebalance_futile_total") == stuck+mobile
	})
	asked := metric(t, n0, "pico_rebalance_goaways_total")
	skipped := metric(t, n0, "pico_rebalance_skipped_total")
	waitFor(t, "25 more rebalancing rounds on node-0", func() bool {
		return metric(t, n0, "pico_rebalance_skipped_total") >= skipped+25
	})
	if got := metric(t, n0, "pico_rebalance_goaways_total"); got != asked {
		t.Fatalf("node-0 asked agents to move %d more times while they were held back", got-asked)
	}
	for _, a := range movers {
		if got := a.Nodes(); !slices.Equal(got, []string{"node-0", "node-1"}) {
			t.Fatalf("a mover is linked to %v, want node-0 and node-1", got)
		}
	}
	n0.WaitRoute(t, "foo", stuck+mobile)
	n1.WaitRoute(t, "foo", mobile)
}
