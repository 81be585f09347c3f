package edge_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// Scale: many agent links and endpoints on one node of a cluster. The
// figures are logged or reported as benchmark metrics, never asserted;
// docs/scale.md quotes them beside pico-bench's scenario S.

// openLink dials node as a bare agent, registers ids in one Register
// message per quicutil.MaxEndpointsPerMsg, and waits for every result.
// The caller closes the connection.
func openLink(ctx context.Context, node *edgetest.Node, agentName string, ids []string) (*quic.Conn, error) {
	conn, err := quic.DialAddr(ctx, node.AgentAddr, &tls.Config{RootCAs: node.CAPool, ServerName: "localhost",
		NextProtos: []string{quicutil.ALPNAgent}}, quicutil.AgentConfig())
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*quic.Conn, error) {
		conn.CloseWithError(0, "")
		return nil, err
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fail(err)
	}
	msg := (&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil)
	msg, _ = quicutil.AppendMessage(msg, &quicutil.Hello{Agent: agentName})
	batches := 0
	for i := 0; i < len(ids); i += quicutil.MaxEndpointsPerMsg {
		reg := &quicutil.Register{Seq: uint64(i + 1)}
		for _, id := range ids[i:min(i+quicutil.MaxEndpointsPerMsg, len(ids))] {
			reg.Endpoints = append(reg.Endpoints, quicutil.Endpoint{ID: id, Kind: quicutil.KindHTTP})
		}
		msg, _ = quicutil.AppendMessage(msg, reg)
		batches++
	}
	if _, err := str.Write(msg); err != nil {
		return fail(err)
	}
	br := bufio.NewReader(str)
	for results := 0; results < batches; {
		m, err := quicutil.ReadMessage(br)
		if err != nil {
			return fail(fmt.Errorf("after %d of %d results: %w", results, batches, err))
		}
		res, ok := m.(*quicutil.Result)
		if !ok {
			continue // the Welcome
		}
		results++
		for _, r := range res.Results {
			if r.Code != quicutil.StatusOK {
				return fail(fmt.Errorf("endpoint %s refused: %s", r.ID, r.Message))
			}
		}
	}
	return conn, nil
}

// noRebalance keeps a cluster node from asking agents to move to other
// nodes: the scale tests' links all stay on the first node.
func noRebalance(c *edge.Config) {
	if c.Cluster != nil {
		c.Cluster.RebalanceInterval = time.Hour
	}
}

// openLinks opens n bare agent links to node, each registering per
// endpoints named prefix-LINK-I, 32 handshakes at a time. The links close
// in tb.Cleanup.
func openLinks(tb testing.TB, node *edgetest.Node, prefix string, n, per int) []*quic.Conn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conns := make([]*quic.Conn, n)
	tb.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.CloseWithError(0, "")
			}
		}
	})
	var (
		wg    sync.WaitGroup
		sem   = make(chan struct{}, 32)
		mu    sync.Mutex
		first error
	)
	for i := range n {
		ids := make([]string, per)
		for j := range ids {
			ids[j] = fmt.Sprintf("%s-%d-%d", prefix, i, j)
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := openLink(ctx, node, fmt.Sprintf("%s-%d", prefix, i), ids)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && first == nil {
				first = fmt.Errorf("link %d: %w", i, err)
			}
			conns[i] = c
		})
	}
	wg.Wait()
	if first != nil {
		tb.Fatal(first)
	}
	return conns
}

// TestClusterRoutes10000EndpointsOf1000Links registers 10,000 endpoints
// over 1,000 agent links, 10 each, on one node of three, and checks that
// every node routes all of them, then none once the links close. The time
// is logged, not asserted. Under the race detector, which slows 1,000
// links in one process past their 5 s idle timeout on a small machine, the
// same 10,000 endpoints come over 100 links.
func TestClusterRoutes10000EndpointsOf1000Links(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 QUIC connections")
	}
	links, per := 1000, 10
	if raceEnabled {
		links, per = 100, 100
	}
	cl := edgetest.NewCluster(t, 3, noRebalance)
	start := time.Now()
	conns := openLinks(t, cl.Nodes[0], "scale", links, per)
	acked := time.Now()
	for _, n := range cl.Nodes {
		waitRoutes(t, n, links*per)
	}
	done := time.Now()
	if got := cl.Nodes[0].Server.Table().Len(); got != links*per {
		t.Fatalf("node-0 routes %d endpoints, want %d", got, links*per)
	}
	t.Logf("%d endpoints over %d links: all registered on node-0 after %v; routable from every node %v later",
		links*per, links, acked.Sub(start).Round(time.Millisecond), done.Sub(acked).Round(time.Millisecond))
	for _, c := range conns {
		c.CloseWithError(0, "")
	}
	for _, n := range cl.Nodes {
		waitRoutes(t, n, 0)
	}
	t.Logf("withdrawn everywhere %v after the links closed", time.Since(done).Round(time.Millisecond))
}

// liveHeap is the live heap after a full GC.
func liveHeap() float64 {
	runtime.GC()
	runtime.GC() // the first may leave finalizer-held objects for the second
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc)
}

// endpointHeap measures the heap cost of endpoints on the nodes of cl:
// it opens links links with one endpoint each, then links more with per
// endpoints each, all to cl.Nodes[0], and returns the second step's heap
// growth less the first's (the links' own cost, both ends of them, which
// live in this process), over the extra endpoints.
func endpointHeap(b *testing.B, cl []*edgetest.Node, links, per int, prefix string) float64 {
	h0 := liveHeap()
	openLinks(b, cl[0], prefix+"-a", links, 1)
	for _, n := range cl {
		waitRoutes(b, n, links)
	}
	h1 := liveHeap()
	openLinks(b, cl[0], prefix+"-b", links, per)
	for _, n := range cl {
		waitRoutes(b, n, links+links*per)
	}
	h2 := liveHeap()
	return ((h2 - h1) - (h1 - h0)) / float64(links*(per-1))
}

// BenchmarkEndpointHeap reports the live heap each endpoint costs the node
// its agents link to (owner-B/endpoint) and each other node of the cluster
// (other-B/endpoint). All nodes share this process's heap, so it registers
// 10,000 endpoints over 10 links on the first node of a two-node cluster,
// then of a three-node one: the third node's growth is the second minus
// the first, and the owner's is the first less one other node's. Each
// iteration starts fresh clusters.
//
//	go test -run '^$' -bench EndpointHeap -benchtime 3x ./edge/
func BenchmarkEndpointHeap(b *testing.B) {
	const links, per = 10, 1000
	limit := func(c *edge.Config) { c.MaxEndpointsPerAgent = per }
	var two, three float64
	for i := 0; b.Loop(); i++ {
		for _, n := range []int{2, 3} {
			cl := edgetest.NewCluster(b, n, limit, noRebalance)
			got := endpointHeap(b, cl.Nodes, links, per, fmt.Sprintf("c%d-%d", n, i))
			if n == 2 {
				two += got
			} else {
				three += got
			}
			for _, node := range cl.Nodes {
				node.Stop(b)
			}
		}
	}
	other := (three - two) / float64(b.N)
	b.ReportMetric(two/float64(b.N)-other, "owner-B/endpoint")
	b.ReportMetric(other, "other-B/endpoint")
}
