package e2e

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterRehome runs three nodes and an agent given node 1 as its only
// --edge (two links, the default: it learns nodes 2 and 3 from node 1's
// Welcome) serving an endpoint that clients reach through node 3. The
// agent links to nodes 1 and 2. SIGKILL of node 1: the agent replaces
// that link with one to node 3, the node it has not lost, without waiting
// on the dead address. SIGKILL of node 2 two seconds later: node 3 serves
// the endpoint from its own link at once. Both times are logged; the
// ceilings only bound failures on a loaded machine (the aim: the second
// link back within 1 s, the endpoint answering within 3 s of the second
// kill).
func TestClusterRehome(t *testing.T) {
	e2e(t)
	c := newCluster(t, 3, clusterOpts{})
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	a := c.serve(t, c.edges(0), 0, "http", "web", "127.0.0.1:"+serveHTTP(t, nameServer("up")))
	n3.waitOwners(t, "web", waitTimeout, "node-1", "node-2")

	hc := newClient(t, 15*time.Second)
	l := startLoad(t, 4, hc, "web", func() string { return n3.proxy })
	poll(t, waitTimeout, "40 GETs through node 3", func() bool { return l.okSince(time.Time{}, "up") >= 40 })

	onNode3 := func() bool {
		o, err := n3.owners()
		return err == nil && slices.Contains(o["web"], "node-3")
	}
	mark := a.mark()
	kill1 := time.Now()
	n1.killAndWait(t)
	relinked := make(chan time.Duration, 1)
	go func() {
		deadline := time.Now().Add(waitTimeout)
		for !onNode3() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		relinked <- time.Since(kill1)
	}()

	time.Sleep(2*time.Second - time.Since(kill1))
	kill2 := time.Now()
	n2.killAndWait(t)
	poll(t, waitTimeout, "GETs through node 3 after node 2 was killed", func() bool {
		return l.okSince(kill2, "up") >= 20
	})
	l.stop()
	relink := <-relinked
	res := l.results()
	back, gap, slowest := recovery(res, "up", kill2)
	failed := failures(res, "up")
	// When the agent found its link to node 1 silent, and how often it
	// dialled node 1's address in vain.
	var noticed time.Duration
	redials := 0
	for _, line := range a.output()[mark:] {
		ll, ok := parseLog(line)
		if !ok {
			continue
		}
		ts, _ := time.Parse(time.RFC3339Nano, ll.str("time"))
		switch msg := ll.str("msg"); {
		case msg == "no packets from edge; linking to another node" && ll.str("node_id") == "node-1":
			noticed = ts.Sub(kill1)
		case strings.Contains(ll.str("edge"), n1.agent) && (strings.Contains(msg, "unreachable") || strings.Contains(msg, "cannot connect")):
			redials++
		}
	}
	t.Logf("the agent found its link to node 1 silent %d ms after the kill; its second link was back, on node 3, %d ms after the kill (%d ms after it found the loss); "+
		"endpoint answering through node 3 %d ms after node 2 was killed (longest time without a 200 %d ms, slowest GET %d ms); %d of %d GETs failed; %d failed dials of node 1's address logged",
		noticed.Milliseconds(), relink.Milliseconds(), (relink - noticed).Milliseconds(), back.Milliseconds(), gap.Milliseconds(), slowest.Milliseconds(),
		len(failed), len(res), redials)
	if len(failed) > 0 {
		t.Logf("first failures: %s", firstFew(failed, 5))
	}
	const relinkCeiling = 5 * time.Second
	if relink > relinkCeiling {
		t.Errorf("second link back on node 3 %s after the first kill, want within %s", relink, relinkCeiling)
	}
	const backCeiling = 5 * time.Second
	if back == 0 || back > backCeiling {
		t.Errorf("endpoint answered through node 3 %s after the second kill, want within %s", back, backCeiling)
	}
}

// TestClusterDrainExitsEarly restarts the three nodes of a cluster one
// after the other, under load through a load balancer that follows
// /readyz, with the default 30 s grace: each node holds links of the
// agents, which move at once, and exits as soon as their old links have
// no streams left and its relayed streams are done, well before the grace
// ends, with no GET failed. Each exit time is logged with the node's log
// lines meanwhile.
func TestClusterDrainExitsEarly(t *testing.T) {
	e2e(t)
	const drainDelay = time.Second
	c := newCluster(t, 3, clusterOpts{fixedPorts: true, extra: func(int) []string {
		return []string{"--drain-delay", drainDelay.String()}
	}})
	// Two agents, linked to nodes 1 and 2 and to nodes 3 and 1.
	c.serve(t, c.edges(0, 1, 2), 0, "http", "web", "127.0.0.1:"+serveHTTP(t, nameServer("up")))
	c.serve(t, c.edges(2, 0, 1), 0, "http", "web", "127.0.0.1:"+serveHTTP(t, nameServer("up")))
	for _, nd := range c.nodes {
		nd.waitOwners(t, "web", waitTimeout, "node-1", "node-2", "node-3")
	}
	lb := startReadyLB(t, c)
	poll(t, waitTimeout, "the load balancer to see three ready nodes", func() bool {
		return lb.ready[0].Load() && lb.ready[1].Load() && lb.ready[2].Load()
	})
	hc := newClient(t, 15*time.Second)
	l := startLoad(t, 4, hc, "web", lb.pick)
	poll(t, waitTimeout, "60 GETs", func() bool { return l.okSince(time.Time{}, "up") >= 60 })

	var exits []string
	var slowest time.Duration
	for i, nd := range c.nodes {
		// Every node holds agent links when its turn comes: the agents
		// moved to it from the nodes restarted before.
		poll(t, waitTimeout, nd.id+" to hold an agent link", func() bool {
			o, err := nd.owners()
			return err == nil && slices.Contains(o["web"], nd.id)
		})
		mark := nd.mark()
		start := time.Now()
		nd.signal(t, syscall.SIGTERM)
		st := nd.waitExit(t, 45*time.Second)
		exited := time.Since(start)
		if !st.Exited() || st.ExitCode() != 0 {
			t.Fatalf("%s ended with %s after SIGTERM, want exit code 0", nd.id, st)
		}
		slowest = max(slowest, exited)
		exits = append(exits, fmt.Sprintf("%s %d ms", nd.id, exited.Milliseconds()))
		var steps []string
		for _, line := range nd.output()[mark:] {
			if ll, ok := parseLog(line); ok && ll.str("msg") != "request" {
				ts, _ := time.Parse(time.RFC3339Nano, ll.str("time"))
				steps = append(steps, ts.Sub(start).Round(time.Millisecond).String()+" "+ll.str("msg"))
			}
		}
		t.Logf("%s exited %d ms after SIGTERM; its log meanwhile (requests left out): %s", nd.id, exited.Milliseconds(), strings.Join(steps, "; "))
		nd.start(t)
		lb.set(i, nd.edgeProc)
		c.waitMembers(t, waitTimeout)
	}
	after := time.Now()
	poll(t, waitTimeout, "40 GETs after the last restart", func() bool { return l.okSince(after, "up") >= 40 })
	l.stop()
	res := l.results()
	failed := failures(res, "up")
	t.Logf("exits after SIGTERM (drain delay %s, grace 30s): %s; %d of %d GETs failed", drainDelay, strings.Join(exits, ", "), len(failed), len(res))
	if len(failed) > 0 {
		t.Errorf("%d of %d GETs failed during the restarts, want 0; first: %s", len(failed), len(res), firstFew(failed, 5))
	}
	if ceiling := drainDelay + 9*time.Second; slowest > ceiling {
		t.Errorf("a node exited %s after SIGTERM, want within %s: its agents had moved", slowest, ceiling)
	}
}
