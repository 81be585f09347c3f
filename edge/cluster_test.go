package edge_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// singleLink keeps an agent on the node it was started on.
func singleLink(c *agent.Config) { c.Connections = 1 }

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("decode %s: %v", url, err)
	}
}

func TestClusterRelaysHTTP(t *testing.T) {
	cl := edgetest.NewCluster(t, 3)
	n0, n2 := cl.Nodes[0], cl.Nodes[2]
	a := n0.NewAgent(t, singleLink)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	n2.WaitRemote(t, "foo", 1)
	cl.Nodes[1].WaitRemote(t, "foo", 1)

	c := edgetest.Client(t)
	for i := range 20 { // keep-alive streams through the relay, and new ones
		req := n2.Request(t, "POST", "foo", fmt.Sprintf("/p/%d", i), strings.NewReader("hello"))
		req.Header.Set("X-Forwarded-For", "6.6.6.6")
		resp, body := do(t, c, req)
		if resp.StatusCode != 200 {
			t.Fatalf("relayed request: %d %s", resp.StatusCode, body)
		}
		var e echoed
		json.Unmarshal([]byte(body), &e)
		if e.Path != fmt.Sprintf("/p/%d", i) || e.Body != "hello" || e.Header["X-Forwarded-For"][0] != "127.0.0.1" {
			t.Fatalf("upstream saw %+v", e)
		}
	}

	var members struct {
		Clustered bool `json:"clustered"`
		Members   []struct {
			NodeID    string `json:"node_id"`
			State     string `json:"state"`
			Endpoints int    `json:"endpoints"`
			Relay     string `json:"relay"`
			Routed    bool   `json:"routed"`
		} `json:"members"`
	}
	getJSON(t, n2.AdminURL+"/status/members", &members)
	if !members.Clustered || len(members.Members) != 3 {
		t.Fatalf("members: %+v", members)
	}
	for _, m := range members.Members {
		if m.NodeID == "node-0" && (m.Endpoints != 1 || m.Relay != "connected" || !m.Routed || m.State != "alive") {
			t.Fatalf("node-0 as node-2 sees it: %+v", m)
		}
	}
	var eps struct {
		Endpoints []struct {
			ID    string   `json:"id"`
			Nodes []string `json:"nodes"`
		} `json:"endpoints"`
	}
	getJSON(t, n2.AdminURL+"/status/endpoints", &eps)
	if len(eps.Endpoints) != 1 || eps.Endpoints[0].ID != "foo" || len(eps.Endpoints[0].Nodes) != 1 || eps.Endpoints[0].Nodes[0] != "node-0" {
		t.Fatalf("endpoint status on node-2: %+v", eps)
	}

	// The agent goes: every node forgets the endpoint, and says so.
	a.Close()
	n2.WaitRemote(t, "foo", 0)
	resp, body := do(t, c, n2.Request(t, "GET", "foo", "/", nil))
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, `no upstream for endpoint "foo"`) {
		t.Fatalf("after the agent left: %d %s", resp.StatusCode, body)
	}
}

func TestClusterRelaysTCPAndUpgrades(t *testing.T) {
	cl := edgetest.NewCluster(t, 2)
	n0, n1 := cl.Nodes[0], cl.Nodes[1]
	serving := n0.NewAgent(t, singleLink)
	echo := echoServer(t)
	if err := serving.ServeUpstream(t.Context(), "db", quicutil.KindTCP, echo); err != nil {
		t.Fatal(err)
	}
	if err := serving.ServeUpstream(t.Context(), "ws", quicutil.KindHTTP, edgetest.Upstream(t, upgradeEcho())); err != nil {
		t.Fatal(err)
	}
	n1.WaitRemote(t, "db", 1)
	n1.WaitRemote(t, "ws", 1)

	// A forwarder on node 1 reaches the TCP endpoint served on node 0;
	// half-close crosses both hops.
	fwd := n1.NewAgent(t, singleLink)
	conn, err := fwd.Dial(t.Context(), "db")
	if err != nil {
		t.Fatalf("dial through the relay: %v", err)
	}
	defer conn.Close()
	conn.Write([]byte("ping"))
	conn.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "ping" {
		t.Fatalf("echo through the relay: %q %v", got, err)
	}

	// An upgraded connection crosses the relay too.
	uc, br := dialUpgrade(t, n1, "ws")
	defer uc.Close()
	fmt.Fprintf(uc, "marco\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "marco\n" {
		t.Fatalf("upgraded echo: %q %v", line, err)
	}
}

// echoServer is a TCP echo server that answers EOF with EOF.
func echoServer(t *testing.T) string {
	return tcpServer(t, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
}

// tcpServer serves each TCP connection to the address it returns with
// serve, and closes it when serve returns; the test's end stops it.
func tcpServer(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveConns(t, ln, serve)
	return ln.Addr().String()
}

// serveConns serves each connection ln accepts with serve, and closes it
// when serve returns; the test's end closes ln and waits for them.
func serveConns(t *testing.T, ln net.Listener, serve func(c net.Conn)) {
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				serve(c)
			})
		}
	})
}

func TestClusterNodeLossRoutesElsewhere(t *testing.T) {
	cl := edgetest.NewCluster(t, 3)
	n0, n1, n2 := cl.Nodes[0], cl.Nodes[1], cl.Nodes[2]
	up := edgetest.Upstream(t, echoHeaders())
	for _, n := range []*edgetest.Node{n0, n1} {
		a := n.NewAgent(t, singleLink)
		if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
			t.Fatal(err)
		}
	}
	n2.WaitRemote(t, "foo", 2)

	// Steady GETs and POSTs through node 2 while node 0 dies without a word.
	c := edgetest.Client(t)
	var ok, failed, posts, postsFailed atomic.Int64
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for i := range 4 {
		post := i%2 == 1
		wg.Go(func() {
			for ctx.Err() == nil {
				req := n2.Request(t, "GET", "foo", "/", nil)
				if post {
					req = n2.Request(t, "POST", "foo", "/", strings.NewReader("x"))
					posts.Add(1)
				}
				resp, err := c.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				switch {
				case err == nil && resp.StatusCode == 200 && !post:
					ok.Add(1)
				case err == nil && resp.StatusCode == 200:
				case post:
					postsFailed.Add(1)
				default:
					failed.Add(1)
					t.Logf("GET: %v %v", resp, err)
				}
			}
		})
	}
	waitCount(t, &ok, 50)
	n0.Kill(t)
	n2.WaitRemote(t, "foo", 1) // membership declared node 0 dead
	before := ok.Load()
	waitCount(t, &ok, before+50)
	stop()
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d of %d GETs failed when a node died", f, f+ok.Load())
	}
	// A POST sent to the dying node and not answered cannot be retried (it
	// may have reached the upstream): those fail, and are counted.
	t.Logf("%d GETs, none failed; %d of %d POSTs failed (%.2f%%)", ok.Load(), postsFailed.Load(), posts.Load(),
		100*float64(postsFailed.Load())/float64(max(posts.Load(), 1)))
}

// load sends requests for endpoint foo through n from 4 workers until
// stopped: POSTs with a small body when post, else GETs. ok counts 200s.
type load struct {
	ok, failed atomic.Int64
	stop       func()
	wg         sync.WaitGroup
}

func startLoad(t *testing.T, n *edgetest.Node, post bool) *load {
	c := edgetest.Client(t)
	l := &load{}
	ctx, cancel := context.WithCancel(t.Context())
	l.stop = func() { cancel(); l.wg.Wait() }
	t.Cleanup(l.stop)
	for range 4 {
		l.wg.Go(func() {
			for ctx.Err() == nil {
				req := n.Request(t, "GET", "foo", "/", nil)
				if post {
					req = n.Request(t, "POST", "foo", "/", strings.NewReader("x"))
				}
				resp, err := c.Do(req)
				if err != nil {
					l.failed.Add(1)
					t.Logf("%s: %v", req.Method, err)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					l.ok.Add(1)
				} else {
					l.failed.Add(1)
					t.Logf("%s: status %d: %s", req.Method, resp.StatusCode, b)
				}
			}
		})
	}
	return l
}

// waitCount waits until c reaches n.
func waitCount(t *testing.T, c *atomic.Int64, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for c.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("count %d, want %d", c.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestClusterRestartedNodeDoesNotResurrect(t *testing.T) {
	cl := edgetest.NewCluster(t, 2)
	n0, n1 := cl.Nodes[0], cl.Nodes[1]
	a := n1.NewAgent(t, singleLink)
	if err := a.ServeUpstream(t.Context(), "old", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	n0.WaitRemote(t, "old", 1)
	a.Close()
	n1.Kill(t)
	n0.WaitRemote(t, "old", 0)
	cl.Nodes = cl.Nodes[:1]

	// node-1 comes back under the same name, with no agent: the endpoint
	// of its previous life stays gone.
	back := cl.Add(t, "node-1")
	cl.WaitMembers(t, 2)
	b := back.NewAgent(t, singleLink)
	if err := b.ServeUpstream(t.Context(), "new", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	n0.WaitRemote(t, "new", 1)
	if r := n0.Server.Table().Remote("old"); len(r) != 0 {
		t.Fatalf("endpoint of node-1's previous life is routed again: %v", r)
	}
}

func TestClusterDrainMovesAgentsWithoutFailures(t *testing.T) {
	var logs logBuffer
	cl := edgetest.NewCluster(t, 3, func(c *edge.Config) {
		c.ShutdownGrace = 5 * time.Second
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	n0, n1, n2 := cl.Nodes[0], cl.Nodes[1], cl.Nodes[2]
	a := n0.NewAgent(t, singleLink, func(c *agent.Config) { c.Edges = []string{n0.AgentAddr, n1.AgentAddr} })
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	n2.WaitRemote(t, "foo", 1)
	// The agent dials node 0 first, and node 1 250 ms later when node 0
	// has not answered yet (a loaded machine): it may link to either.
	from := n0
	if nodes := a.Nodes(); len(nodes) == 1 && nodes[0] == n1.Server.NodeID() {
		from = n1
	}

	l := startLoad(t, n2, true)
	waitCount(t, &l.ok, 50)
	from.Stop(t) // drain: the agent moves to the other node first
	waitCount(t, &l.ok, l.ok.Load()+50)
	l.stop()
	if f := l.failed.Load(); f != 0 {
		t.Fatalf("%d of %d requests (POST) failed while a node drained", f, f+l.ok.Load())
	}
	if r := n2.Server.Table().Remote("foo"); len(r) != 1 {
		t.Fatalf("after the drain, %d owners of foo", len(r))
	}
	// Make before break: the node stayed in the cluster until the agent had
	// closed its old link itself, once its new one was registered and the
	// old one quiet; it did not close it under the streams other nodes
	// were still relaying to it.
	gone := logs.lines(t, "agent disconnected")
	if len(gone) != 1 || gone[0]["reason"] != "agent closed: agent closing" {
		t.Fatalf("agent links closed during the drain: %v; want one, closed by the agent", gone)
	}
}

func TestClusterPeerMustProveSecret(t *testing.T) {
	cl := edgetest.NewCluster(t, 1)
	n0 := cl.Nodes[0]
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	defer tr.Close()
	defer udp.Close()
	dial := func(t *testing.T) *quic.Conn {
		addr, _ := net.ResolveUDPAddr("udp", n0.AgentAddr)
		conn, err := tr.Dial(t.Context(), addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{quicutil.ALPNPeer}}, quicutil.PeerConfig())
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		return conn
	}
	tests := map[string]func(*quic.Conn) error{
		"wrong proof": func(c *quic.Conn) error {
			str, _ := c.OpenStreamSync(t.Context())
			msg := (&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil)
			msg, _ = quicutil.AppendMessage(msg, &quicutil.PeerHello{NodeID: "intruder", Proof: make([]byte, 32)})
			_, err := str.Write(msg)
			return err
		},
		"relay stream before hello": func(c *quic.Conn) error {
			str, _ := c.OpenStreamSync(t.Context())
			_, err := str.Write((&quicutil.StreamHeader{Kind: quicutil.KindHTTP, Endpoint: "foo"}).Append(nil))
			return err
		},
		"agent hello on the peer protocol": func(c *quic.Conn) error {
			str, _ := c.OpenStreamSync(t.Context())
			msg := (&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil)
			msg, _ = quicutil.AppendMessage(msg, &quicutil.Hello{Agent: "x"})
			_, err := str.Write(msg)
			return err
		},
	}
	for name, send := range tests {
		t.Run(name, func(t *testing.T) {
			conn := dial(t)
			if err := send(conn); err != nil {
				t.Fatalf("send: %v", err)
			}
			select {
			case <-conn.Context().Done():
			case <-time.After(15 * time.Second):
				t.Fatal("the node kept the connection of a peer without the secret")
			}
			var appErr *quic.ApplicationError
			if err := context.Cause(conn.Context()); !errors.As(err, &appErr) || appErr.ErrorCode != quicutil.ConnCodeProtocolError {
				t.Fatalf("closed with %v, want a protocol error", err)
			}
			t.Logf("refused: %s", appErr.ErrorMessage)
		})
	}
}

func TestClusterWrongSecretCannotJoin(t *testing.T) {
	cl := edgetest.NewCluster(t, 1)
	other := edgetest.NewNode(t, edgetest.ClusterNode("outsider", edgetest.NewSecret(t), cl.Nodes[0].Server.GossipAddr()))
	<-other.Server.Started()
	// The outsider keeps trying; give it a few rounds of its join loop.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if n := cl.Nodes[0].Server.Members(); n != 1 {
			t.Fatalf("a node with another secret joined: %d members", n)
		}
		if n := other.Server.Members(); n != 1 {
			t.Fatalf("the outsider sees %d members", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freeUDPAddr returns a loopback UDP address nobody listens on.
func freeUDPAddr(t *testing.T) string {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

func TestClusterRebalancesWhenANodeJoins(t *testing.T) {
	cl := edgetest.NewCluster(t, 1)
	n0 := cl.Nodes[0]
	later := freeUDPAddr(t) // where node-1 will listen
	up := edgetest.Upstream(t, echoHeaders())
	for range 6 {
		a := n0.NewAgent(t, singleLink, func(c *agent.Config) { c.Edges = []string{n0.AgentAddr, later} })
		if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
			t.Fatal(err)
		}
	}
	n0.WaitRoute(t, "foo", 6)

	l := startLoad(t, n0, true)
	waitCount(t, &l.ok, 50)
	n1 := cl.AddOn(t, "node-1", later)
	// Six links over two nodes: each ends with its share, three.
	n1.WaitRoute(t, "foo", 3)
	n0.WaitRoute(t, "foo", 3)
	waitCount(t, &l.ok, l.ok.Load()+50)
	l.stop()
	if f := l.failed.Load(); f != 0 {
		t.Fatalf("%d of %d requests (POST) failed while agents moved", f, f+l.ok.Load())
	}
	// The agents reach node-1: no move came back, none is held back.
	if got := metric(t, n0, "pico_rebalance_futile_total"); got != 0 {
		t.Fatalf("node-0 counted %d moves that came back, want 0", got)
	}
	if got := metric(t, n0, "pico_rebalance_goaways_total"); got < 3 {
		t.Fatalf("node-0 asked %d agents to move, want at least 3", got)
	}
}

// A response in flight when its agent is asked to move ends after the
// edge closed the link's idle keep-alive streams, and its stream goes back
// to the pool then: the edge must close that stream too, or the agent's
// old link waits out its whole retire grace (30 s) for it.
func TestMovedAgentsOldLinkClosesAfterItsLastResponse(t *testing.T) {
	const token = "admin-token"
	cl := edgetest.NewCluster(t, 2, func(c *edge.Config) { c.AdminToken = token })
	n0, n1 := cl.Nodes[0], cl.Nodes[1]
	entered, release := make(chan struct{}, 1), make(chan struct{})
	up := edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	}))
	a := n0.NewAgent(t, singleLink, func(c *agent.Config) { c.Edges = []string{n0.AgentAddr, n1.AgentAddr} })
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	n0.WaitRoute(t, "foo", 1)
	c := edgetest.Client(t)
	// A first request leaves an idle keep-alive stream in the pool.
	if resp, body := do(t, c, n0.Request(t, "GET", "foo", "/fast", nil)); resp.StatusCode != 200 || body != "done /fast" {
		t.Fatalf("first request: %d %q", resp.StatusCode, body)
	}
	res := doAsync(c, n0.Request(t, "GET", "foo", "/slow", nil))
	<-entered
	url := fmt.Sprintf("%s/admin/agents/%d/goaway", n0.AdminURL, sessionServing(t, n0, "foo"))
	if code, body := adminDo(t, "POST", url, token); code != 200 {
		t.Fatalf("goaway: %d %s", code, body)
	}
	n1.WaitRoute(t, "foo", 1) // the agent's new link; the old one serves /slow
	close(release)
	if r := <-res; r.err != nil || r.status != 200 || r.body != "done /slow" {
		t.Fatalf("the request in flight during the move: %d %q %v", r.status, r.body, r.err)
	}
	// The old link retires once its last stream is closed: well within
	// WaitRoute's 20 s, and not after the 30 s grace.
	n0.WaitRoute(t, "foo", 0)
}

// registerRaw connects to n as a bare agent and registers ids in batches
// of quicutil.MaxEndpointsPerMsg; it returns when every batch is answered.
func registerRaw(t *testing.T, n *edgetest.Node, ids []string) *quic.Conn {
	t.Helper()
	conn := dialAgentRaw(t, n)
	str, err := conn.OpenStreamSync(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	msg := (&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil)
	msg, _ = quicutil.AppendMessage(msg, &quicutil.Hello{Agent: "bulk"})
	batches := 0
	for i := 0; i < len(ids); i += quicutil.MaxEndpointsPerMsg {
		reg := &quicutil.Register{Seq: uint64(i)}
		for _, id := range ids[i:min(i+quicutil.MaxEndpointsPerMsg, len(ids))] {
			reg.Endpoints = append(reg.Endpoints, quicutil.Endpoint{ID: id, Kind: quicutil.KindHTTP})
		}
		msg, _ = quicutil.AppendMessage(msg, reg)
		batches++
	}
	if _, err := str.Write(msg); err != nil {
		t.Fatal(err)
	}
	br := bufioReader(str)
	if m, err := quicutil.ReadMessage(br); err != nil {
		t.Fatalf("welcome: %T %v", m, err)
	}
	for range batches {
		m, err := quicutil.ReadMessage(br)
		res, ok := m.(*quicutil.Result)
		if err != nil || !ok {
			t.Fatalf("result: %T %v", m, err)
		}
		for _, r := range res.Results {
			if r.Code != quicutil.StatusOK {
				t.Fatalf("endpoint %s refused: %s", r.ID, r.Message)
			}
		}
	}
	return conn
}

// waitRoutes waits until n routes want endpoints.
func waitRoutes(t testing.TB, n *edgetest.Node, want int) {
	t.Helper()
	tab := n.Server.Table()
	deadline := time.After(20 * time.Second)
	for {
		changed := tab.Changed()
		if tab.Len() == want {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("node %s routes %d endpoints, want %d", n.Server.NodeID(), tab.Len(), want)
		}
	}
}

// TestClusterPropagates10000Endpoints measures how long 10,000 endpoints
// registered on one node take to be routable from the two others. The
// figure is logged, not asserted (timing depends on the machine).
func TestClusterPropagates10000Endpoints(t *testing.T) {
	cl := edgetest.NewCluster(t, 3, func(c *edge.Config) { c.MaxEndpointsPerAgent = 10000 })
	ids := make([]string, 10000)
	for i := range ids {
		ids[i] = fmt.Sprintf("ep-%05d", i)
	}
	start := time.Now()
	conn := registerRaw(t, cl.Nodes[0], ids)
	acked := time.Now()
	waitRoutes(t, cl.Nodes[1], len(ids))
	waitRoutes(t, cl.Nodes[2], len(ids))
	done := time.Now()
	t.Logf("10,000 endpoints: registered on node-0 in %v, routable from node-1 and node-2 %v after the last ack (%v after the first register)",
		acked.Sub(start).Round(time.Millisecond), done.Sub(acked).Round(time.Millisecond), done.Sub(start).Round(time.Millisecond))

	// The agent goes: every node withdraws all 10,000.
	conn.CloseWithError(0, "")
	waitRoutes(t, cl.Nodes[1], 0)
	waitRoutes(t, cl.Nodes[2], 0)
	t.Logf("withdrawn everywhere %v after the agent left", time.Since(done).Round(time.Millisecond))
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

// BenchmarkRelay compares one node (the agent's) with a relay through
// another node, and both with the upstream alone: requests/s with 16
// clients in parallel, and the p50 of one client's sequential requests.
// Quote the ratios of one run: go test -run '^$' -bench Relay ./edge/
func BenchmarkRelay(b *testing.B) {
	cl := edgetest.NewCluster(b, 2)
	up := edgetest.Upstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello world\n") }))
	a := cl.Nodes[0].NewAgent(b, singleLink)
	if err := a.ServeUpstream(context.Background(), "bench", quicutil.KindHTTP, up); err != nil {
		b.Fatal(err)
	}
	cl.Nodes[1].WaitRemote(b, "bench", 1)
	targets := []struct{ name, url string }{
		{"direct", "http://" + up}, {"node", cl.Nodes[0].ProxyURL}, {"relay", cl.Nodes[1].ProxyURL},
	}
	get := func(b *testing.B, c *http.Client, url string) {
		req, _ := http.NewRequest("GET", url+"/", nil)
		req.Header.Set("X-Pico-Endpoint", "bench")
		resp, err := c.Do(req)
		if err != nil {
			b.Error(err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Errorf("status %d", resp.StatusCode)
		}
	}
	for _, tg := range targets {
		b.Run("parallel16/"+tg.name, func(b *testing.B) {
			c := edgetest.Client(b)
			b.SetParallelism(8) // 16 goroutines on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					get(b, c, tg.url)
				}
			})
		})
	}
	for _, tg := range targets {
		b.Run("sequential/"+tg.name, func(b *testing.B) {
			c := edgetest.Client(b)
			get(b, c, tg.url) // a warm keep-alive connection
			d := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				get(b, c, tg.url)
				d = append(d, time.Since(start))
			}
			slices.Sort(d)
			b.ReportMetric(float64(d[len(d)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(d[len(d)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// TestClusterReadyAfterSync: a node that joins says ready only once it
// can route what the cluster serves, so a load balancer never sends it a
// request it would answer "no upstream" for.
func TestClusterReadyAfterSync(t *testing.T) {
	cl := edgetest.NewCluster(t, 1)
	a := cl.Nodes[0].NewAgent(t, singleLink)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	n1 := cl.Add(t, "node-1")
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(n1.AdminURL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the joining node never became ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r := n1.Server.Table().Remote("foo"); len(r) != 1 {
		t.Fatalf("ready before it could route foo (%d owners)", len(r))
	}
}

// TestClusterRejectsForgedAndReplayedOwnership: ownership messages come
// only from holders of the cluster secret, and an old one, even re-sent by
// a holder, changes nothing (versions order them, not clocks).
func TestClusterRejectsForgedAndReplayedOwnership(t *testing.T) {
	var logs logBuffer
	cl := edgetest.NewCluster(t, 1)
	n1 := cl.Add(t, "node-1", func(c *edge.Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	cl.WaitMembers(t, 2)
	a := cl.Nodes[0].NewAgent(t, singleLink)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	n1.WaitRemote(t, "foo", 1)

	// node-0's state as node-1 knows it now, foo included.
	var members struct {
		Members []struct {
			NodeID  string `json:"node_id"`
			Epoch   uint64 `json:"epoch"`
			Version uint64 `json:"version"`
		} `json:"members"`
	}
	getJSON(t, n1.AdminURL+"/status/members", &members)
	var old *routing.State
	for _, m := range members.Members {
		if m.NodeID == "node-0" {
			old = &routing.State{Node: "node-0", Epoch: m.Epoch, Version: m.Version, Full: true,
				Endpoints: []routing.Announcement{{ID: "foo", Proto: "http", Kinds: 2, Agents: 1}}}
		}
	}
	if old == nil {
		t.Fatalf("node-1 does not list node-0: %+v", members)
	}
	a.Remove("foo")
	n1.WaitRemote(t, "foo", 0)

	received := func() int {
		resp, err := http.Get(n1.AdminURL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var v int
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "pico_gossip_states_received_total "); ok {
				fmt.Sscan(rest, &v)
			}
		}
		return v
	}
	rogue := func(secret []byte) *memberlist.Memberlist {
		mc := memberlist.DefaultLANConfig()
		mc.Name, mc.BindAddr, mc.BindPort, mc.AdvertisePort = "rogue", "127.0.0.1", 0, 0
		mc.SecretKey, mc.Label = secret, "pico"
		mc.LogOutput = io.Discard
		ml, err := memberlist.Create(mc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ml.Shutdown() })
		return ml
	}
	host, port, _ := net.SplitHostPort(n1.Server.GossipAddr())
	p, _ := strconv.Atoi(port)
	to := &memberlist.Node{Name: "node-1", Addr: net.ParseIP(host), Port: uint16(p)}

	// Replayed by a holder of the secret: applied, and ignored.
	before := received()
	if err := rogue(cl.Secret).SendReliable(to, routing.AppendState(nil, old)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); received() == before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("node-1 never received the replayed state")
		}
	}
	if r := n1.Server.Table().Remote("foo"); len(r) != 0 {
		t.Fatal("a replayed ownership message brought foo back")
	}

	// Forged without the secret, with a newer version: never decrypted.
	forged := *old
	forged.Version += 100
	forged.Endpoints = []routing.Announcement{{ID: "evil", Proto: "http", Kinds: 2, Agents: 1}}
	rogue(edgetest.NewSecret(t)).SendReliable(to, routing.AppendState(nil, &forged))
	for deadline := time.Now().Add(10 * time.Second); !logs.contains("no installed keys could decrypt"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("node-1 did not report the forged message")
		}
	}
	if r := n1.Server.Table().Remote("evil"); len(r) != 0 {
		t.Fatal("a forged ownership message was routed")
	}
}

// TestClusterJoinByName: --join takes DNS names (a Kubernetes headless
// service), resolved to every address behind them.
func TestClusterJoinByName(t *testing.T) {
	cl := edgetest.NewCluster(t, 1)
	_, port, _ := net.SplitHostPort(cl.Nodes[0].Server.GossipAddr())
	n := edgetest.NewNodeOn(t, "127.0.0.1:0", cl.Bundle, edgetest.ClusterNode("by-name", cl.Secret, "localhost:"+port))
	cl.Nodes = append(cl.Nodes, n)
	cl.WaitMembers(t, 2)
}
