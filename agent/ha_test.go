package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// The nodes in these tests form no cluster: each has its own routing
// table, so a request through a node reaches the agent only over the
// agent's link to that node.

// Two edge addresses make two links by default, to distinct nodes; the
// endpoint is registered on both and requests through either node reach
// the upstream.
func TestTwoLinksServeTraffic(t *testing.T) {
	nodes := newNodes(t, 2)
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	rec := newRecorder()
	a := newAgent(t, nodes[0], agentAddrs(nodes...), 0, rec)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, a, "node-1", "node-2")
	for _, n := range nodes {
		n.WaitRoute(t, "foo", 1)
		if status, body := get(t, n, "foo"); status != 200 || body != "hello" {
			t.Fatalf("through %s: %d %q, want 200 hello", n.Server.NodeID(), status, body)
		}
	}
	rec.wait(t, "the status line with both nodes", 1, func(r record) bool {
		return r.msg == "linked to edge nodes" && r.attrs["links"] == "2" &&
			strings.Contains(r.attrs["nodes"], "node-1 "+nodes[0].AgentAddr) &&
			strings.Contains(r.attrs["nodes"], "node-2 "+nodes[1].AgentAddr)
	})
}

// When a linked node is killed, the agent links to the node it was not
// linked to, and requests through it reach the upstream.
func TestKilledNodeRelinks(t *testing.T) {
	nodes := newNodes(t, 3)
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	a := newAgent(t, nodes[0], agentAddrs(nodes...), 2, newRecorder())
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	victim := nodeByID(t, nodes, waitLinks(t, a, 2)[0])
	victim.Server.Close()

	var want []string
	for _, n := range nodes {
		if n != victim {
			want = append(want, n.Server.NodeID())
		}
	}
	waitNodes(t, a, want...)
	for _, id := range want {
		n := nodeByID(t, nodes, id)
		n.WaitRoute(t, "foo", 1)
		if status, body := get(t, n, "foo"); status != 200 || body != "hello" {
			t.Fatalf("through %s: %d %q, want 200 hello", id, status, body)
		}
	}
}

// A draining node's goaway moves its link to the node the agent was not
// linked to, while a request in flight on the old link completes.
func TestGoAwayMovesLink(t *testing.T) {
	nodes := newNodes(t, 3, func(c *edge.Config) { c.ShutdownGrace = waitTimeout })
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseFn := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseFn)
	up := edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/slow" {
			hello(w, r)
			return
		}
		arrived <- struct{}{}
		select {
		case <-release:
			io.WriteString(w, "finished")
		case <-r.Context().Done():
		}
	}))
	a := newAgent(t, nodes[0], agentAddrs(nodes...), 2, newRecorder())
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	drain := nodeByID(t, nodes, waitLinks(t, a, 2)[0])
	drain.WaitRoute(t, "foo", 1)

	type result struct {
		status int
		body   string
		err    error
	}
	slow := make(chan result, 1)
	client := edgetest.Client(t)
	req := drain.Request(t, "GET", "foo", "/slow", nil)
	go func() {
		resp, err := client.Do(req)
		if err != nil {
			slow <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- result{resp.StatusCode, string(b), err}
	}()
	<-arrived

	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		drain.Stop(t)
	}()
	var want []string
	for _, n := range nodes {
		if n != drain {
			want = append(want, n.Server.NodeID())
		}
	}
	waitNodes(t, a, want...)
	for _, id := range want {
		n := nodeByID(t, nodes, id)
		n.WaitRoute(t, "foo", 1)
		if status, body := get(t, n, "foo"); status != 200 || body != "hello" {
			t.Fatalf("through %s during the drain: %d %q, want 200 hello", id, status, body)
		}
	}
	releaseFn()
	if r := <-slow; r.err != nil || r.status != 200 || r.body != "finished" {
		t.Fatalf("request in flight on the drained node: %d %q %v, want 200 finished", r.status, r.body, r.err)
	}
	<-stopped
}

// The same node reached at two addresses gives one link: the second is
// closed as a duplicate.
func TestDuplicateNode(t *testing.T) {
	nodes := newNodes(t, 1)
	_, port, err := net.SplitHostPort(nodes[0].AgentAddr)
	if err != nil {
		t.Fatal(err)
	}
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	rec := newRecorder()
	a := newAgent(t, nodes[0], []string{nodes[0].AgentAddr, net.JoinHostPort("localhost", port)}, 0, rec)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "duplicate links refused", 2, msgIs("reached a node the agent does not want; trying again"))
	if got := a.Nodes(); !slices.Equal(got, []string{"node-1"}) {
		t.Fatalf("Nodes() = %q, want [node-1]", got)
	}
	nodes[0].WaitRoute(t, "foo", 1)
	if n := rec.count(func(r record) bool { return r.msg == "linked to edge nodes" && r.attrs["links"] == "2" }); n != 0 {
		t.Fatalf("the agent had two live links to one node (%d status lines)", n)
	}
}

// Remove withdraws the endpoint from every node; the other endpoint stays.
func TestRemoveEverywhere(t *testing.T) {
	nodes := newNodes(t, 2)
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	a := newAgent(t, nodes[0], agentAddrs(nodes...), 2, newRecorder())
	for _, id := range []string{"one", "two"} {
		if err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, up); err != nil {
			t.Fatal(err)
		}
	}
	waitLinks(t, a, 2)
	for _, n := range nodes {
		n.WaitRoute(t, "one", 1)
		n.WaitRoute(t, "two", 1)
	}
	a.Remove("one")
	for _, n := range nodes {
		n.WaitRoute(t, "one", 0)
		if status, _ := get(t, n, "one"); status != http.StatusBadGateway {
			t.Fatalf("removed endpoint through %s: status = %d, want 502", n.Server.NodeID(), status)
		}
		if status, _ := get(t, n, "two"); status != 200 {
			t.Fatalf("other endpoint through %s: status = %d, want 200", n.Server.NodeID(), status)
		}
	}
}

// Dial works over either link, and keeps working when one link's node dies.
func TestDialAcrossLinks(t *testing.T) {
	nodes := newNodes(t, 2)
	echo := tcpEcho(t)
	a := newAgent(t, nodes[0], agentAddrs(nodes...), 2, newRecorder())
	if err := a.ServeUpstream(t.Context(), "echo", quicutil.KindTCP, echo); err != nil {
		t.Fatal(err)
	}
	linked := waitLinks(t, a, 2)
	for _, n := range nodes {
		n.WaitRoute(t, "echo", 1)
	}
	for i := range 4 {
		dialEcho(t, a, "echo", fmt.Sprintf("hello %d", i))
	}
	victim := nodeByID(t, nodes, linked[0])
	victim.Server.Close()
	waitNodes(t, a, linked[1])
	for i := range 4 {
		dialEcho(t, a, "echo", fmt.Sprintf("after the loss %d", i))
	}
}

// dialEcho sends msg through a Dial to the echo endpoint id and checks it
// comes back.
func dialEcho(t *testing.T, a *agent.Agent, id, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	c, err := a.Dial(ctx, id)
	if err != nil {
		t.Fatalf("Dial %s: %v", id, err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("close write: %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != msg {
		t.Fatalf("echo: %q, %v; want %q", got, err, msg)
	}
}

// An edge that goes silent (its packets stop, with no close and no reset)
// is replaced by a link to another node, and the agent closes the silent
// link itself once the new one is registered, before QUIC's idle timeout
// would have ended it.
func TestSilentEdgeReplaced(t *testing.T) {
	nodes := newNodes(t, 2)
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	path := newUDPProxy(t, nodes[0].AgentAddr)
	rec := newRecorder()
	a := newAgent(t, nodes[0], []string{path.Addr(), nodes[1].AgentAddr}, 1, rec)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, a, "node-1")
	path.blackhole()
	waitNodes(t, a, "node-2")
	nodes[1].WaitRoute(t, "foo", 1)
	if status, body := get(t, nodes[1], "foo"); status != 200 || body != "hello" {
		t.Fatalf("through node-2: %d %q, want 200 hello", status, body)
	}
	rec.wait(t, "the silent link closed by the agent", 1, msgIs("closing the silent link: its replacement is registered"))
	if n := rec.count(msgIs("no packets from edge; linking to another node")); n != 1 {
		t.Fatalf("%d silent links reported, want 1", n)
	}
}

// A Dial whose link goes silent before the edge answers is tried again on
// the link that replaces it.
func TestDialRetriesOnAnotherLink(t *testing.T) {
	nodes := newNodes(t, 2)
	echo := tcpEcho(t)
	path := newUDPProxy(t, nodes[0].AgentAddr)
	rec := newRecorder()
	a := newAgent(t, nodes[0], []string{path.Addr(), nodes[1].AgentAddr}, 1, rec)
	if err := a.ServeUpstream(t.Context(), "echo", quicutil.KindTCP, echo); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, a, "node-1")
	path.blackhole()
	dialEcho(t, a, "echo", "through the next link")
	if n := rec.count(msgIs("link died before the edge answered a dial; trying another")); n != 1 {
		t.Fatalf("%d dials retried, want 1", n)
	}
	waitNodes(t, a, "node-2")
}

// Behind one load-balanced address, the agent dials again (from a new UDP
// socket, so a new flow) until its second link reaches another node.
func TestSingleBalancerAddress(t *testing.T) {
	nodes := newNodes(t, 2)
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	// The first two flows go to node-1: one of the two links is a duplicate.
	lb := newUDPProxy(t, nodes[0].AgentAddr, nodes[0].AgentAddr, nodes[1].AgentAddr)
	rec := newRecorder()
	a := newAgent(t, nodes[0], []string{lb.Addr()}, 2, rec)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, a, "node-1", "node-2")
	if n := rec.count(msgIs("reached a node the agent does not want; trying again")); n == 0 {
		t.Fatal("no duplicate link refused; want one")
	}
	for _, n := range nodes {
		n.WaitRoute(t, "foo", 1)
		if status, _ := get(t, n, "foo"); status != 200 {
			t.Fatalf("through %s: status = %d, want 200", n.Server.NodeID(), status)
		}
	}
}

// The nodes an edge lists in its Welcome make a second link by default;
// an unreachable one is skipped for the next.
func TestPeerHints(t *testing.T) {
	nodes := newNodes(t, 1)
	gone := closedUDPAddr(t)
	fake := fakeEdge(t, nodes[0].Bundle, "fake", []quicutil.NodeAddr{
		{NodeID: "fake", Addr: "127.0.0.1:1"}, // itself: ignored
		{NodeID: "node-0-gone", Addr: gone},   // unreachable
		{NodeID: "node-1", Addr: nodes[0].AgentAddr},
		{NodeID: "node-9", Addr: "0.0.0.0:8001"}, // unusable
	})
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	rec := newRecorder()
	a := newAgent(t, nodes[0], []string{fake}, 0, rec)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, a, "fake", "node-1")
	nodes[0].WaitRoute(t, "foo", 1)
	if status, body := get(t, nodes[0], "foo"); status != 200 || body != "hello" {
		t.Fatalf("through node-1: %d %q, want 200 hello", status, body)
	}
	// The attempts of a round overlap: the one at the unreachable node
	// may be cancelled, unfinished, when node-1 links.
	tried := func(addr string) func(record) bool {
		return func(r record) bool { return r.msg == "dialling edge" && r.attrs["edge"] == addr }
	}
	if rec.count(tried(gone)) == 0 {
		t.Errorf("the unreachable node was not tried")
	}
	if n := rec.count(tried("0.0.0.0:8001")) + rec.count(tried("127.0.0.1:1")); n != 0 {
		t.Errorf("%d attempts at unusable addresses", n)
	}
}

// Listen succeeds when one link's node accepts the endpoint although
// another refuses it, and fails with the refusal when every node refuses.
func TestRegistrationAcrossLinks(t *testing.T) {
	nodes := newNodes(t, 2)
	echo := tcpEcho(t)
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	// Another agent serves "foo" as raw TCP on node-2, and "bar" on both:
	// those nodes refuse them as HTTP.
	other := nodes[0].NewAgent(t, func(c *agent.Config) { c.Edges = agentAddrs(nodes...); c.Connections = 2 })
	if err := other.ServeUpstream(t.Context(), "bar", quicutil.KindTCP, echo); err != nil {
		t.Fatal(err)
	}
	tcpOnly := nodes[1].NewAgent(t)
	if err := tcpOnly.ServeUpstream(t.Context(), "foo", quicutil.KindTCP, echo); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		n.WaitRoute(t, "bar", 1)
	}

	a := newAgent(t, nodes[0], agentAddrs(nodes...), 2, newRecorder())
	waitLinks(t, a, 2)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
		t.Fatalf("foo, accepted by node-1 only: %v", err)
	}
	if status, body := get(t, nodes[0], "foo"); status != 200 || body != "hello" {
		t.Fatalf("through node-1: %d %q, want 200 hello", status, body)
	}
	err := a.ServeUpstream(t.Context(), "bar", quicutil.KindHTTP, up)
	var se *quicutil.StatusError
	if !errors.As(err, &se) || se.Code != quicutil.StatusConflict {
		t.Fatalf("bar, refused by both nodes: err = %v, want a conflict", err)
	}
}

func TestConfigConnections(t *testing.T) {
	for n, ok := range map[int]bool{-1: false, 0: true, 1: true, agent.MaxConnections: true, agent.MaxConnections + 1: false} {
		_, err := agent.New(agent.Config{Connections: n})
		if (err == nil) != ok {
			t.Errorf("Connections %d: err = %v, want ok = %v", n, err, ok)
		}
	}
}

// In a cluster, the peers a node lists in its Welcome make a second link
// by default, to another node, from a single configured address; when a
// linked node dies, the agent links to the third.
func TestClusterPeers(t *testing.T) {
	c := edgetest.NewCluster(t, 3)
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	a := newAgent(t, c.Nodes[0], []string{c.Nodes[0].AgentAddr}, 0, newRecorder())
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	linked := waitLinks(t, a, 2)
	if !slices.Contains(linked, "node-0") {
		t.Fatalf("agent linked to %q, want node-0 (its only address) among them", linked)
	}
	for _, id := range linked {
		nodeByID(t, c.Nodes, id).WaitRoute(t, "foo", 1)
	}

	var victim, third *edgetest.Node
	for _, n := range c.Nodes {
		switch id := n.Server.NodeID(); {
		case !slices.Contains(linked, id):
			third = n
		case id != "node-0":
			victim = n
		}
	}
	victim.Server.Close()
	waitNodes(t, a, "node-0", third.Server.NodeID())
	third.WaitRoute(t, "foo", 1)
	if status, body := get(t, third, "foo"); status != 200 || body != "hello" {
		t.Fatalf("through %s: %d %q, want 200 hello", third.Server.NodeID(), status, body)
	}
}
