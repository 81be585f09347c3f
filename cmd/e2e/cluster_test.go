package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/quicutil"
)

// ---------------------------------------------------------------------------
// A cluster of pico-edge processes on 127.0.0.1

// testCluster is pico-edge nodes on 127.0.0.1 that share one cluster
// secret and one development CA, so that agents verify every node with one
// --ca file.
type testCluster struct {
	tr     transport // of the agents the harness starts; "": pico-agent's default
	secret string    // the cluster secret file
	ca     string    // the shared development CA certificate
	nodes  []*clusterNode
}

// clusterNode is one node of a testCluster.
type clusterNode struct {
	*edgeProc
	id     string   // node-1, node-2, ...
	dir    string   // its data directory, kept across restarts
	gossip string   // its memberlist address
	flags  []string // its pico-edge flags besides --data-dir, for a restart
}

// clusterOpts configures newCluster.
type clusterOpts struct {
	// fixedPorts picks every listener's port before the start, so that a
	// restarted node keeps its addresses, and makes every node join every
	// other one (a seed that restarts finds the cluster again). Otherwise
	// ports are ephemeral and nodes 2..n join node 1.
	fixedPorts bool
	// extra returns more flags for node i (0-based).
	extra func(i int) []string
}

// newCluster starts n nodes one after the other and waits until each sees
// all the others as live members.
func newCluster(t testing.TB, n int, opts clusterOpts) *testCluster {
	t.Helper()
	c := &testCluster{secret: filepath.Join(t.TempDir(), "cluster.key")}
	if _, _, err := certs.LoadOrCreateSecret(c.secret); err != nil {
		t.Fatalf("cluster secret: %v", err)
	}
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	// One CA in every data directory: each node issues its own server
	// certificate from it.
	dev, err := certs.LoadOrCreateDev(dirs[0], dirs[0], nil)
	if err != nil {
		t.Fatalf("development CA: %v", err)
	}
	c.ca = dev.CAFile
	for _, d := range dirs[1:] {
		copyFile(t, dev.CAFile, filepath.Join(d, "ca.pem"), 0o644)
		copyFile(t, dev.CAKeyFile, filepath.Join(d, "ca-key.pem"), 0o600)
	}
	var gossip []string
	if opts.fixedPorts {
		for range n {
			gossip = append(gossip, "127.0.0.1:"+freeTCPUDPPort(t))
		}
	}
	for i := range n {
		nd := &clusterNode{id: fmt.Sprintf("node-%d", i+1), dir: dirs[i]}
		nd.flags = []string{"--node-id", nd.id, "--cluster-secret-file", c.secret}
		if opts.fixedPorts {
			nd.flags = append(nd.flags,
				"--proxy-addr", "127.0.0.1:"+freePort(t),
				"--admin-addr", "127.0.0.1:"+freePort(t),
				"--agent-addr", "127.0.0.1:"+freeUDPPort(t),
				"--proxy-tls-addr=",
				"--gossip-addr", gossip[i],
				"--join", strings.Join(slices.Delete(slices.Clone(gossip), i, i+1), ","))
		} else if i > 0 {
			nd.flags = append(nd.flags, "--join", c.nodes[0].gossip)
		}
		if opts.extra != nil {
			nd.flags = append(nd.flags, opts.extra(i)...)
		}
		nd.start(t)
		c.nodes = append(c.nodes, nd)
	}
	c.waitMembers(t, waitTimeout)
	return c
}

// start runs the node's pico-edge and reads its gossip address.
func (nd *clusterNode) start(t testing.TB) {
	t.Helper()
	var tr transport
	if nd.edgeProc != nil {
		tr = nd.tr // a restart keeps it
	}
	nd.edgeProc = startEdgeAt(t, nd.dir, nd.flags...).over(t, tr)
	nd.edgeProc.name = "pico-edge " + nd.id
	line := nd.waitLine(t, 0, `"cluster member started"`, isMsg("cluster member started"))
	l, _ := parseLog(line)
	if nd.gossip = l.str("gossip_addr"); nd.gossip == "" {
		t.Fatalf("%s: no gossip_addr in %s", nd.id, line)
	}
}

func copyFile(t testing.TB, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// freeUDPPort returns a UDP port on 127.0.0.1 that nothing uses now.
func freeUDPPort(t testing.TB) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer c.Close()
	return portOf(c.LocalAddr().String())
}

// freeTCPUDPPort returns a port on 127.0.0.1 free for both TCP and UDP now
// (memberlist binds both).
func freeTCPUDPPort(t testing.TB) string {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		port := portOf(ln.Addr().String())
		pc, err := net.ListenPacket("udp", "127.0.0.1:"+port)
		ln.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP in 20 attempts")
	return ""
}

// over makes the agents the harness starts against c (startAgent, serve,
// forward) link over tr, and returns c.
func (c *testCluster) over(t testing.TB, tr transport) *testCluster {
	t.Helper()
	c.tr = tr
	for _, nd := range c.nodes {
		nd.over(t, tr)
	}
	return c
}

// edges returns the agent addresses of the nodes with the given indexes,
// for --edge.
func (c *testCluster) edges(idx ...int) string {
	var out []string
	for _, i := range idx {
		out = append(out, c.nodes[i].agentEdge(c.tr))
	}
	return strings.Join(out, ",")
}

// allEdges is edges of every node.
func (c *testCluster) allEdges() string {
	var out []string
	for _, nd := range c.nodes {
		out = append(out, nd.agentEdge(c.tr))
	}
	return strings.Join(out, ",")
}

// checkLinks checks, on every node still running, that every agent link
// is over c's transport (a no-op when over set none).
func (c *testCluster) checkLinks(t testing.TB) {
	t.Helper()
	for _, nd := range c.nodes {
		if !nd.hasExited() {
			nd.checkLinks(t, 0)
		}
	}
}

// startAgent runs pico-agent with --edge edges and, when conns > 0,
// --connections conns.
func (c *testCluster) startAgent(t testing.TB, edges string, conns int, args ...string) *proc {
	t.Helper()
	global := append([]string{"--edge", edges, "--ca", c.ca, "--log-format", "json"}, transportFlag(c.tr)...)
	if conns > 0 {
		global = append(global, "--connections", strconv.Itoa(conns))
	}
	return startProc(t, "pico-agent "+strings.Join(args, " "), bin.agent, append(global, args...)...)
}

// serve runs `pico-agent KIND ID UPSTREAM` and waits until the endpoint is
// registered.
func (c *testCluster) serve(t testing.TB, edges string, conns int, kind, id, upstream string) *proc {
	t.Helper()
	a := c.startAgent(t, edges, conns, kind, id, upstream)
	want := fmt.Sprintf("endpoint %s (%s) is registered", id, kind)
	line := a.waitLineFor(t, 0, strconv.Quote(want), startTimeout, contains(want))
	checkStatusLine(t, c.tr, line)
	c.checkLinks(t)
	return a
}

// forward runs `pico-agent forward 127.0.0.1:0 ID` and returns it with the
// address it listens on.
func (c *testCluster) forward(t testing.TB, edges string, conns int, id string) (*proc, string) {
	t.Helper()
	a := c.startAgent(t, edges, conns, "forward", "127.0.0.1:0", id)
	suffix := " to endpoint " + id
	line := a.waitLineFor(t, 0, "forwarding line", startTimeout, func(l string) bool {
		return strings.HasPrefix(l, "forwarding ") && strings.HasSuffix(l, suffix)
	})
	addr := strings.TrimSuffix(strings.TrimPrefix(line, "forwarding "), suffix)
	if _, _, err := net.SplitHostPort(addr); err != nil {
		t.Fatalf("forward line %q: %v", line, err)
	}
	return a, addr
}

// membersStatus is /status/members.
type membersStatus struct {
	NodeID    string `json:"node_id"`
	Clustered bool   `json:"clustered"`
	Members   []struct {
		NodeID    string `json:"node_id"`
		Self      bool   `json:"self"`
		State     string `json:"state"`
		Draining  bool   `json:"draining"`
		Endpoints int    `json:"endpoints"`
		Links     int    `json:"agent_links"`
		Routed    bool   `json:"routed"`
		Relay     string `json:"relay"`
	} `json:"members"`
}

// clusterEndpoints is /status/endpoints with the remote owners.
type clusterEndpoints struct {
	NodeID    string `json:"node_id"`
	Endpoints []struct {
		ID     string   `json:"id"`
		Agents []string `json:"agents"`
		Nodes  []string `json:"nodes"`
	} `json:"endpoints"`
}

// getJSON GETs path on the admin port into v; unlike adminJSON it reports
// errors, for nodes that may be down.
func (e *edgeProc) getJSON(path string, v any) error {
	resp, err := e.admc.Get("http://" + e.admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// ready reports whether /readyz answers 200.
func (e *edgeProc) ready() bool {
	resp, err := e.admc.Get("http://" + e.admin + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// liveMembers returns the IDs of the members e sees alive, not draining,
// and whose endpoints it routes (itself included).
func (e *edgeProc) liveMembers() ([]string, error) {
	var s membersStatus
	if err := e.getJSON("/status/members", &s); err != nil {
		return nil, err
	}
	var out []string
	for _, m := range s.Members {
		if m.State == "alive" && !m.Draining && m.Routed {
			out = append(out, m.NodeID)
		}
	}
	sort.Strings(out)
	return out, nil
}

// owners returns, for each endpoint e routes, the nodes that serve it as e
// sees them: the remote owners, plus e itself when a local agent serves it.
func (e *edgeProc) owners() (map[string][]string, error) {
	var s clusterEndpoints
	if err := e.getJSON("/status/endpoints", &s); err != nil {
		return nil, err
	}
	out := make(map[string][]string, len(s.Endpoints))
	for _, ep := range s.Endpoints {
		nodes := slices.Clone(ep.Nodes)
		if len(ep.Agents) > 0 {
			nodes = append(nodes, s.NodeID)
		}
		sort.Strings(nodes)
		out[ep.ID] = nodes
	}
	return out, nil
}

// waitMembers waits until every node sees every node as a live member.
func (c *testCluster) waitMembers(t testing.TB, d time.Duration) {
	t.Helper()
	var want []string
	for _, nd := range c.nodes {
		want = append(want, nd.id)
	}
	sort.Strings(want)
	pollState(t, d, fmt.Sprintf("every node to see %v alive", want), func() (bool, string) {
		for _, nd := range c.nodes {
			got, err := nd.liveMembers()
			if err != nil || !slices.Equal(got, want) {
				return false, fmt.Sprintf("%s sees %v (%v)", nd.id, got, err)
			}
		}
		return true, ""
	})
}

// waitOwners waits until node nd sees endpoint id served by exactly the
// nodes in want.
func (nd *clusterNode) waitOwners(t testing.TB, id string, d time.Duration, want ...string) {
	t.Helper()
	sort.Strings(want)
	pollState(t, d, fmt.Sprintf("%s to route %q to %v", nd.id, id, want), func() (bool, string) {
		o, err := nd.owners()
		return err == nil && slices.Equal(o[id], want), fmt.Sprintf("owners %v (%v)", o[id], err)
	})
}

// pollState is poll whose condition also describes what it saw, for the
// failure message.
func pollState(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	var last string
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last: %s", d, what, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Load

// loadResult is the outcome of one request of a load.
type loadResult struct {
	start, end time.Time
	node       string // the front door it was sent to
	method     string
	status     int
	body       string
	err        error
}

func (r loadResult) ok(want string) bool {
	return r.err == nil && r.status == http.StatusOK && r.body == want
}

func (r loadResult) String() string {
	if r.err != nil {
		return fmt.Sprintf("%s to %s: %v", r.start.Format("15:04:05.000"), r.node, r.err)
	}
	return fmt.Sprintf("%s to %s: %d %q", r.start.Format("15:04:05.000"), r.node, r.status, strings.TrimSpace(r.body))
}

// load runs workers that send GETs for an endpoint, each to the front
// door target returns ("" when there is none: the worker waits), until
// stop.
type load struct {
	mu   sync.Mutex
	res  []loadResult
	quit chan struct{}
	wg   sync.WaitGroup
}

func startLoad(t testing.TB, workers int, c *http.Client, endpoint string, target func() string) *load {
	return startLoadOf(t, workers, c, target, func(_, _ int, node string) *http.Request {
		req, _ := http.NewRequest("GET", "http://"+node+"/", nil)
		req.Header.Set("X-Pico-Endpoint", endpoint)
		return req
	})
}

// startLoadOf is startLoad with the requests newReq makes: the i-th of
// worker w, to front door node.
func startLoadOf(t testing.TB, workers int, c *http.Client, target func() string, newReq func(w, i int, node string) *http.Request) *load {
	l := &load{quit: make(chan struct{})}
	for w := range workers {
		l.wg.Go(func() {
			for i := range maxLoopRequests {
				select {
				case <-l.quit:
					return
				default:
				}
				node := target()
				if node == "" {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				req := newReq(w, i, node)
				r := loadResult{start: time.Now(), node: node, method: req.Method}
				resp, err := c.Do(req)
				if err == nil {
					var b []byte
					b, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					r.status, r.body = resp.StatusCode, string(b)
				}
				r.err, r.end = err, time.Now()
				l.mu.Lock()
				l.res = append(l.res, r)
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(l.stop)
	return l
}

func (l *load) stop() {
	select {
	case <-l.quit:
	default:
		close(l.quit)
	}
	l.wg.Wait()
}

func (l *load) results() []loadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.res)
}

// okSince counts the successful requests that started after t and after
// the last failed request that ended after t.
func (l *load) okSince(t time.Time, want string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	lastFail := t
	for _, r := range l.res {
		if !r.ok(want) && r.end.After(lastFail) {
			lastFail = r.end
		}
	}
	n := 0
	for _, r := range l.res {
		if r.ok(want) && r.start.After(lastFail) {
			n++
		}
	}
	return n
}

// failures returns the requests that failed.
func failures(res []loadResult, want string) []loadResult {
	var out []loadResult
	for _, r := range res {
		if !r.ok(want) {
			out = append(out, r)
		}
	}
	return out
}

func firstFew(res []loadResult, n int) string {
	var b strings.Builder
	for i, r := range res[:min(n, len(res))] {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(r.String())
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Tests

// TestClusterRelay runs three nodes, an HTTP agent (python3 http.server)
// and a TCP agent (redis-server) linked to node 1 only, and reaches both
// through node 3: curl and net/http for HTTP, redis-cli through a
// `pico-agent forward` linked to node 3 only. Node 3 lists node-1 as the
// owner of both endpoints and relays every byte to it.
func TestClusterRelay(t *testing.T) {
	e2e(t)
	c := newCluster(t, 3, clusterOpts{})
	n1, n3 := c.nodes[0], c.nodes[2]

	dir := t.TempDir()
	const page = "served by python3 through node 1\n"
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	c.serve(t, c.edges(0), 1, "http", "web", "127.0.0.1:"+startPython(t, dir))
	c.serve(t, c.edges(0), 1, "tcp", "cache", "127.0.0.1:"+startRedis(t))
	for _, id := range []string{"web", "cache"} {
		n1.waitOwners(t, id, waitTimeout, "node-1")
		n3.waitOwners(t, id, waitTimeout, "node-1")
	}
	var eps clusterEndpoints
	n3.adminJSON(t, "/status/endpoints", &eps)
	for _, ep := range eps.Endpoints {
		if len(ep.Agents) != 0 || !slices.Equal(ep.Nodes, []string{"node-1"}) {
			t.Errorf("node 3 /status/endpoints: %s has agents %v, nodes %v; want no local agent, nodes [node-1]", ep.ID, ep.Agents, ep.Nodes)
		}
	}

	// HTTP through node 3: curl, and net/http.
	mark := n3.mark()
	body, status := curl(t, "-H", "X-Pico-Endpoint: web", "http://"+n3.proxy+"/hello.txt")
	if status != http.StatusOK || body != page {
		t.Fatalf("curl via node 3: %d %q, want 200 %q", status, body, page)
	}
	hc := newClient(t, waitTimeout)
	for range 20 {
		resp, body := n3.request(t, hc, "GET", "web", "/hello.txt", nil)
		if resp.StatusCode != http.StatusOK || body != page {
			t.Fatalf("net/http via node 3: %d %q, want 200 %q", resp.StatusCode, body, page)
		}
	}
	if resp, body := n3.request(t, hc, "GET", "web", "/missing", nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /missing via node 3: %d %q, want python's 404", resp.StatusCode, body)
	}
	n3.waitLine(t, mark, "an access-log line for a relayed request", isMsg("request", "endpoint_id", "web", "status", "200"))

	// TCP through a forwarder linked to node 3 only.
	_, local := c.forward(t, c.edges(2), 1, "cache")
	if got := redisCLI(t, local, nil, "PING"); got != "PONG" {
		t.Fatalf("redis-cli PING via node 3: %q", got)
	}
	if got := redisCLI(t, local, nil, "SET", "k", "through node 3"); got != "OK" {
		t.Fatalf("redis-cli SET via node 3: %q", got)
	}
	if got := redisCLI(t, local, nil, "GET", "k"); got != "through node 3" {
		t.Fatalf("redis-cli GET via node 3: %q", got)
	}
	big := strings.Repeat("x", 1<<20)
	var in strings.Builder
	in.WriteString(resp("SET", "big", big))
	const incrs = 1000
	for range incrs {
		in.WriteString(resp("INCR", "n"))
	}
	if out := redisCLI(t, local, strings.NewReader(in.String()), "--pipe"); !strings.Contains(out, fmt.Sprintf("replies: %d", incrs+1)) {
		t.Fatalf("redis-cli --pipe via node 3:\n%s", out)
	}
	if got := redisCLI(t, local, nil, "STRLEN", "big"); got != fmt.Sprint(len(big)) {
		t.Fatalf("STRLEN big via node 3: %q, want %d", got, len(big))
	}
	if got := redisCLI(t, local, nil, "GET", "n"); got != fmt.Sprint(incrs) {
		t.Fatalf("GET n via node 3: %q, want %d", got, incrs)
	}
}

// TestClusterKill9 SIGKILLs node 1 while four clients loop GETs through
// node 3 to an agent that was given all three nodes. With one link the
// endpoint is unreachable until the agent relinks elsewhere: the test
// logs how long and how many GETs failed, and asserts only that traffic
// comes back. With two links (HA) node 3 still has another owner: no GET
// may fail.
func TestClusterKill9(t *testing.T) {
	e2e(t)
	for _, tc := range []struct {
		name  string
		conns int
	}{
		{"one link", 1},
		{"two links", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 3, clusterOpts{})
			n3 := c.nodes[2]
			c.serve(t, c.allEdges(), tc.conns, "http", "web", "127.0.0.1:"+serveHTTP(t, nameServer("up")))
			var owners []string
			poll(t, waitTimeout, fmt.Sprintf("node 3 to see %d owners of web, node-1 among them", tc.conns), func() bool {
				o, err := n3.owners()
				owners = o["web"]
				return err == nil && len(owners) == tc.conns && slices.Contains(owners, "node-1")
			})
			t.Logf("owners of web as node 3 sees them: %v", owners)

			hc := newClient(t, 15*time.Second)
			l := startLoad(t, 4, hc, "web", func() string { return n3.proxy })
			poll(t, waitTimeout, "40 GETs through node 3", func() bool { return l.okSince(time.Time{}, "up") >= 40 })

			killed := time.Now()
			c.nodes[0].killAndWait(t)
			poll(t, 20*time.Second, "GETs through node 3 to succeed again after node 1 was killed", func() bool {
				return l.okSince(killed, "up") >= 40
			})
			poll(t, waitTimeout, "node 3 to drop node-1", func() bool {
				m, err := n3.liveMembers()
				return err == nil && !slices.Contains(m, "node-1")
			})
			dropped := time.Now()
			// Keep the load on until node 3 routes without node 1.
			poll(t, waitTimeout, "node 3 to route web without node-1", func() bool {
				o, err := n3.owners()
				return err == nil && len(o["web"]) > 0 && !slices.Contains(o["web"], "node-1")
			})
			routed := time.Now()
			poll(t, waitTimeout, "40 more GETs", func() bool { return l.okSince(routed, "up") >= 40 })
			l.stop()

			res := l.results()
			failed := failures(res, "up")
			back, gap, slowest := recovery(res, "up", killed)
			t.Logf("%s: reachable again after %d ms (the first success of a GET sent after the kill and after the last failure); %d of %d GETs failed; longest time without a successful response %d ms; slowest GET %d ms; node 3 dropped node-1 %d ms and routed without it %d ms after the kill",
				tc.name, back.Milliseconds(), len(failed), len(res), gap.Milliseconds(), slowest.Milliseconds(),
				dropped.Sub(killed).Milliseconds(), routed.Sub(killed).Milliseconds())
			if len(failed) > 0 {
				t.Logf("first failures: %s", firstFew(failed, 5))
			}
			if tc.conns > 1 && len(failed) > 0 {
				t.Errorf("%d of %d idempotent GETs failed with an agent linked to two nodes, want 0; first: %s",
					len(failed), len(res), firstFew(failed, 5))
			}
		})
	}
}

// recovery measures a load around an incident at t0: back is the time from
// t0 to the first successful response to a request sent after t0 and
// after the last failure; gap is the longest time after t0 without a
// successful response; slowest is the longest request that ended after t0.
func recovery(res []loadResult, want string, t0 time.Time) (back, gap, slowest time.Duration) {
	lastFail := t0
	var oks []time.Time
	for _, r := range res {
		if !r.end.After(t0) {
			continue
		}
		slowest = max(slowest, r.end.Sub(r.start))
		if r.ok(want) {
			oks = append(oks, r.end)
		} else if r.end.After(lastFail) {
			lastFail = r.end
		}
	}
	var first time.Time
	for _, r := range res {
		if r.ok(want) && r.start.After(lastFail) && (first.IsZero() || r.end.Before(first)) {
			first = r.end
		}
	}
	if !first.IsZero() {
		back = first.Sub(t0)
	}
	slices.SortFunc(oks, time.Time.Compare)
	prev := t0
	for _, o := range oks {
		gap = max(gap, o.Sub(prev))
		prev = o
	}
	return back, gap, slowest
}

// readyLB is the test's load balancer: it polls /readyz of every node and
// hands out the front doors of ready nodes in turn.
type readyLB struct {
	c     *testCluster
	mu    sync.Mutex // guards nodes
	nodes []*edgeProc
	ready []atomic.Bool
	next  atomic.Uint64
	quit  chan struct{}
	wg    sync.WaitGroup
}

func startReadyLB(t testing.TB, c *testCluster) *readyLB {
	lb := &readyLB{c: c, ready: make([]atomic.Bool, len(c.nodes)), quit: make(chan struct{})}
	for _, nd := range c.nodes {
		lb.nodes = append(lb.nodes, nd.edgeProc)
	}
	lb.wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			for i := range lb.ready {
				lb.mu.Lock()
				e := lb.nodes[i]
				lb.mu.Unlock()
				lb.ready[i].Store(!e.hasExited() && e.ready())
			}
			select {
			case <-lb.quit:
				return
			case <-tick.C:
			}
		}
	})
	t.Cleanup(lb.stop)
	return lb
}

// set replaces node i's process (after a restart); it is not ready until
// polled.
func (lb *readyLB) set(i int, e *edgeProc) {
	lb.mu.Lock()
	lb.nodes[i] = e
	lb.mu.Unlock()
}

// pick returns the front door of a ready node, or "".
func (lb *readyLB) pick() string {
	n := uint64(len(lb.ready))
	start := lb.next.Add(1)
	for k := range n {
		i := (start + k) % n
		if lb.ready[i].Load() {
			lb.mu.Lock()
			addr := lb.nodes[i].proxy
			lb.mu.Unlock()
			return addr
		}
	}
	return ""
}

func (lb *readyLB) stop() {
	select {
	case <-lb.quit:
	default:
		close(lb.quit)
	}
	lb.wg.Wait()
}

// streamLog records what a long-lived client (WebSocket, TCP) saw.
type streamLog struct {
	mu       sync.Mutex
	msgs     int         // messages echoed
	conns    int         // connections opened
	clean    []string    // connections closed cleanly (close frame, EOF between messages)
	resets   []string    // connections reset between messages (no partial message received)
	lost     int         // messages sent just before a close or reset and not echoed
	failures []string    // dial failures, cut messages, wrong echoes, timeouts
	ends     []time.Time // when connections ended
	echoes   []time.Time // when echoes came
}

func (s *streamLog) echoed() {
	s.mu.Lock()
	s.msgs++
	s.echoes = append(s.echoes, time.Now())
	s.mu.Unlock()
}

// gapAfter returns the time from t to the first echo after it.
func (s *streamLog) gapAfter(t time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.echoes {
		if e.After(t) {
			return e.Sub(t)
		}
	}
	return -1
}

func (s *streamLog) opened() {
	s.mu.Lock()
	s.conns++
	s.mu.Unlock()
}

func (s *streamLog) messages() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.msgs
}

// ended records how a connection ended: cleanly, with a reset between
// messages, or with a failure.
func (s *streamLog) ended(clean, reset bool, what string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.ends = append(s.ends, now)
	what = now.Format("15:04:05.000 ") + what
	switch {
	case clean:
		s.clean = append(s.clean, what)
		s.lost++
	case reset:
		s.resets = append(s.resets, what)
		s.lost++
	default:
		s.failures = append(s.failures, what)
	}
}

func (s *streamLog) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("%d messages on %d connections, %d clean closes, %d resets between messages (%d messages unanswered at a close or reset), %d failures",
		s.msgs, s.conns, len(s.clean), len(s.resets), s.lost, len(s.failures))
}

// wsEchoServer echoes WebSocket messages on /ws and answers "up" elsewhere.
func wsEchoServer() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if c.Write(r.Context(), typ, msg) != nil {
				return
			}
		}
	})
	mux.Handle("/", nameServer("up"))
	return mux
}

// runWebSocket keeps a WebSocket to endpoint web through the front door
// pick returns ("" when there is none: it waits) and echoes a message
// every 50ms on it until quit; when the connection ends it records how,
// and opens another.
func runWebSocket(pick func() string, quit <-chan struct{}, s *streamLog) {
	hc := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer hc.CloseIdleConnections()
	seq := 0
	for {
		select {
		case <-quit:
			return
		default:
		}
		addr := pick()
		if addr == "" {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		conn, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws", &websocket.DialOptions{
			HTTPClient: hc,
			HTTPHeader: http.Header{"X-Pico-Endpoint": {"web"}},
		})
		cancel()
		if err != nil {
			s.ended(false, false, fmt.Sprintf("dial via %s: %v", addr, err))
			time.Sleep(50 * time.Millisecond)
			continue
		}
		s.opened()
		func() {
			defer conn.CloseNow()
			for {
				select {
				case <-quit:
					conn.Close(websocket.StatusNormalClosure, "test over")
					return
				case <-time.After(50 * time.Millisecond):
				}
				seq++
				msg := fmt.Sprintf("message %d", seq)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := conn.Write(ctx, websocket.MessageText, []byte(msg))
				var got []byte
				if err == nil {
					_, got, err = conn.Read(ctx)
				}
				cancel()
				switch {
				case err == nil && string(got) == msg:
					s.echoed()
					continue
				case err == nil:
					s.ended(false, false, fmt.Sprintf("via %s: echo of %q is %q", addr, msg, got))
				default:
					// coder/websocket reads whole frames: an EOF inside one
					// is io.ErrUnexpectedEOF, a failure.
					clean := websocket.CloseStatus(err) != -1 || errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF)
					s.ended(clean, errors.Is(err, syscall.ECONNRESET), fmt.Sprintf("via %s after %q: %v", addr, msg, err))
				}
				return
			}
		}()
	}
}

// runTCPEcho keeps a TCP connection through the forwarder at addr to a
// line echo server, and echoes a line every 50ms on it until quit; when the
// connection ends it records how, and opens another.
func runTCPEcho(addr string, quit <-chan struct{}, s *streamLog) {
	seq := 0
	for {
		select {
		case <-quit:
			return
		default:
		}
		conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			s.ended(false, false, fmt.Sprintf("dial %s: %v", addr, err))
			time.Sleep(50 * time.Millisecond)
			continue
		}
		s.opened()
		func() {
			defer conn.Close()
			br := bufio.NewReader(conn)
			for {
				select {
				case <-quit:
					return
				case <-time.After(50 * time.Millisecond):
				}
				seq++
				msg := fmt.Sprintf("line %d\n", seq)
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				_, err := io.WriteString(conn, msg)
				var got string
				if err == nil {
					got, err = br.ReadString('\n')
				}
				switch {
				case err == nil && got == msg:
					s.echoed()
					continue
				case err == nil:
					s.ended(false, false, fmt.Sprintf("echo of %q is %q", msg, got))
				default:
					// A partial line, or a timeout, is a failure.
					s.ended(errors.Is(err, io.EOF) && got == "", errors.Is(err, syscall.ECONNRESET) && got == "",
						fmt.Sprintf("after %q (got %q): %v", msg, got, err))
				}
				return
			}
		}()
	}
}

// TestClusterRollingRestart restarts the three nodes one after the other
// (SIGTERM, exit 0, start again with the same flags, data directory and
// ports, wait until it is a member again) while clients run through the
// test's load balancer, which sends every new request and connection to a
// node whose /readyz answers 200: three workers looping GETs, one
// WebSocket echoing a message every 50ms, and one TCP connection through a
// `pico-agent forward` echoing a line every 50ms. No GET may fail; the
// WebSocket and the TCP connection stay up or are closed cleanly (a close
// frame or an EOF between messages: never a cut message, nor a reset),
// and are then opened again through a ready node.
func TestClusterRollingRestart(t *testing.T) {
	e2e(t)
	const (
		drainDelay = time.Second
		grace      = 3 * time.Second
	)
	c := newCluster(t, 3, clusterOpts{fixedPorts: true, extra: func(int) []string {
		return []string{"--drain-delay", drainDelay.String(), "--grace-period", grace.String()}
	}})
	c.serve(t, c.allEdges(), 0, "http", "web", "127.0.0.1:"+serveHTTP(t, wsEchoServer()))
	c.serve(t, c.allEdges(), 0, "tcp", "echo", "127.0.0.1:"+serveTCP(t, func(conn *net.TCPConn) {
		io.Copy(conn, conn)
		conn.CloseWrite()
	}))
	_, fwd := c.forward(t, c.allEdges(), 0, "echo")
	routesBoth := func(nd *clusterNode) {
		t.Helper()
		for _, id := range []string{"web", "echo"} {
			poll(t, waitTimeout, fmt.Sprintf("%s to route %s", nd.id, id), func() bool {
				o, err := nd.owners()
				return err == nil && len(o[id]) > 0
			})
		}
	}
	for _, nd := range c.nodes {
		routesBoth(nd)
	}

	lb := startReadyLB(t, c)
	poll(t, waitTimeout, "the load balancer to see three ready nodes", func() bool {
		return lb.ready[0].Load() && lb.ready[1].Load() && lb.ready[2].Load()
	})
	hc := newClient(t, 15*time.Second)
	l := startLoad(t, 3, hc, "web", lb.pick)
	quit := make(chan struct{})
	var streams sync.WaitGroup
	var ws, tcp streamLog
	streams.Go(func() { runWebSocket(lb.pick, quit, &ws) })
	streams.Go(func() { runTCPEcho(fwd, quit, &tcp) })
	stopStreams := sync.OnceFunc(func() {
		close(quit)
		streams.Wait()
	})
	t.Cleanup(stopStreams)
	poll(t, waitTimeout, "GETs, WebSocket and TCP messages to flow", func() bool {
		return l.okSince(time.Time{}, "up") >= 50 && ws.messages() >= 5 && tcp.messages() >= 5
	})

	for i, nd := range c.nodes {
		start := time.Now()
		nd.signal(t, syscall.SIGTERM)
		st := nd.waitExit(t, drainDelay+grace+15*time.Second)
		if !st.Exited() || st.ExitCode() != 0 {
			t.Fatalf("%s ended with %s after SIGTERM, want exit code 0", nd.id, st)
		}
		exited := time.Now()
		nd.start(t)
		lb.set(i, nd.edgeProc)
		ready := time.Now() // it logged "edge node ready": /readyz answers 200
		routesBoth(nd)
		routed := time.Now()
		c.waitMembers(t, waitTimeout)
		var early int // GETs the load balancer sent it before it routed both endpoints
		for _, r := range l.results() {
			if r.node == nd.proxy && r.start.Before(routed) && r.start.After(exited) {
				early++
			}
		}
		t.Logf("%s: SIGTERM at %s, exited 0 after %d ms; ready %d ms after its restart, routing both endpoints %d ms after it was ready (%d GETs sent to it meanwhile), every node sees every node %d ms after it was ready",
			nd.id, start.Format("15:04:05.000"), exited.Sub(start).Milliseconds(), ready.Sub(exited).Milliseconds(),
			routed.Sub(ready).Milliseconds(), early, time.Since(ready).Milliseconds())
	}
	// Every client works after the last restart.
	after := time.Now()
	wm, tm := ws.messages(), tcp.messages()
	poll(t, waitTimeout, "GETs, WebSocket and TCP messages after the last restart", func() bool {
		return l.okSince(after, "up") >= 50 && ws.messages() >= wm+5 && tcp.messages() >= tm+5
	})
	l.stop()
	stopStreams()

	res := l.results()
	failed := failures(res, "up")
	t.Logf("rolling restart: %d of %d GETs failed; WebSocket: %s; TCP through a forward: %s", len(failed), len(res), &ws, &tcp)
	for _, s := range ws.clean {
		t.Logf("WebSocket closed cleanly: %s", s)
	}
	for _, s := range tcp.clean {
		t.Logf("TCP connection closed cleanly: %s", s)
	}
	for _, s := range slices.Concat(ws.resets, tcp.resets) {
		t.Logf("reset between messages: %s", s)
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d GETs failed during the rolling restart, want 0; first: %s", len(failed), len(res), firstFew(failed, 5))
	}
	if len(ws.failures) > 0 {
		t.Errorf("WebSocket failures during the rolling restart (want clean closes only): %q", ws.failures)
	}
	if len(tcp.failures) > 0 {
		t.Errorf("TCP stream failures during the rolling restart (want clean closes only): %q", tcp.failures)
	}
	if n := len(ws.resets) + len(tcp.resets); n > 0 && !t.Failed() {
		t.Errorf("%d streams reset, want clean closes: %q", n, slices.Concat(ws.resets, tcp.resets))
	}
}

// TestClusterDrainStreams holds a WebSocket and a TCP connection through
// a `pico-agent forward` across two nodes (client → node 2 → relay →
// node 1 → agent, every agent with one link) and sends SIGTERM to one of
// them: the front door (node 2, the WebSocket's node and the forwarder's
// link) or the owner (node 1, the agents' link, which asks them to move to
// node 2). Both streams keep working through --drain-delay and the grace
// period, then end cleanly (a close frame or an EOF, never a reset or a
// cut message); new connections then work at once, and the node exits 0.
func TestClusterDrainStreams(t *testing.T) {
	e2e(t)
	const (
		drainDelay = time.Second
		grace      = 3 * time.Second
	)
	forEachTransport(t, func(t *testing.T, tr transport) {
		testClusterDrainStreams(t, tr, drainDelay, grace)
	})
}

func testClusterDrainStreams(t *testing.T, tr transport, drainDelay, grace time.Duration) {
	for _, tc := range []struct {
		name  string
		drain int // index of the node that drains
	}{
		{"front door drains", 1},
		{"owner drains", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 2, clusterOpts{extra: func(int) []string {
				return []string{"--drain-delay", drainDelay.String(), "--grace-period", grace.String()}
			}}).over(t, tr)
			n1, n2 := c.nodes[0], c.nodes[1]
			if tc.name == "owner drains" && tr == overTCP && (n1.tcpOff || n2.tcpOff) {
				// Agents then link through a URL, as behind a balancer,
				// and cannot choose the other node (TestClusterRebalance).
				t.Skip("a node's agent port has no TCP twin (its port was taken): agents would link through a URL, which cannot choose a node")
			}
			c.serve(t, c.edges(0), 1, "http", "web", "127.0.0.1:"+serveHTTP(t, wsEchoServer()))
			c.serve(t, c.edges(0), 1, "tcp", "echo", "127.0.0.1:"+serveTCP(t, func(conn *net.TCPConn) {
				io.Copy(conn, conn)
				conn.CloseWrite()
			}))
			_, fwd := c.forward(t, c.edges(1), 1, "echo")
			n2.waitOwners(t, "web", waitTimeout, "node-1")
			n2.waitOwners(t, "echo", waitTimeout, "node-1")

			var front atomic.Pointer[string] // the WebSocket's front door
			front.Store(&n2.proxy)
			quit := make(chan struct{})
			var streams sync.WaitGroup
			var ws, tcp streamLog
			streams.Go(func() { runWebSocket(func() string { return *front.Load() }, quit, &ws) })
			streams.Go(func() { runTCPEcho(fwd, quit, &tcp) })
			stopStreams := sync.OnceFunc(func() {
				close(quit)
				streams.Wait()
			})
			t.Cleanup(stopStreams)
			poll(t, waitTimeout, "WebSocket and TCP messages", func() bool { return ws.messages() >= 5 && tcp.messages() >= 5 })

			nd := c.nodes[tc.drain]
			sigterm := time.Now()
			nd.signal(t, syscall.SIGTERM)
			if nd == n2 {
				front.Store(&n1.proxy) // as a load balancer would, once /readyz fails
			}
			st := nd.waitExit(t, drainDelay+grace+15*time.Second)
			if !st.Exited() || st.ExitCode() != 0 {
				t.Fatalf("%s ended with %s after SIGTERM, want exit code 0", nd.id, st)
			}
			exited := time.Since(sigterm)
			wm, tm := ws.messages(), tcp.messages()
			poll(t, waitTimeout, "WebSocket and TCP messages after the drain", func() bool {
				return ws.messages() >= wm+5 && tcp.messages() >= tm+5
			})
			stopStreams()
			// The moved links, and the ones that stayed, are over tr: the
			// web and echo agents and the forwarder, all on the other node.
			c.nodes[1-tc.drain].checkLinks(t, 3)

			t.Logf("%s exited 0 %d ms after SIGTERM; WebSocket: %s; TCP through a forward: %s", nd.id, exited.Milliseconds(), &ws, &tcp)
			for _, sl := range []struct {
				name string
				log  *streamLog
			}{{"WebSocket", &ws}, {"TCP connection", &tcp}} {
				l := sl.log
				for _, s := range slices.Concat(l.clean, l.resets, l.failures)[:min(10, len(l.ends))] {
					t.Logf("%s ended: %s", sl.name, s)
				}
				if len(l.failures) > 0 || len(l.resets) > 0 {
					t.Errorf("%s: %d failures and %d resets, want clean closes only; first: %q", sl.name, len(l.failures), len(l.resets),
						slices.Concat(l.resets, l.failures)[:min(5, len(l.resets)+len(l.failures))])
				}
				if len(l.ends) != 1 {
					t.Errorf("%s: %d connections ended, want only the one through the draining node", sl.name, len(l.ends))
					continue
				}
				held, gap := l.ends[0].Sub(sigterm), l.gapAfter(l.ends[0])
				t.Logf("%s: the connection through the draining node ended %d ms after SIGTERM; a new one echoed %d ms later", sl.name, held.Milliseconds(), gap.Milliseconds())
				if held < drainDelay+grace-100*time.Millisecond {
					t.Errorf("%s ended %s after SIGTERM, want it kept for --drain-delay and --grace-period (%s)", sl.name, held.Round(time.Millisecond), drainDelay+grace)
				}
				if tc.drain == 0 && gap > 2*time.Second {
					// The agents were told to move to node 2 seconds ago.
					t.Errorf("%s: a new connection echoed %s after the old one ended, want at once", sl.name, gap.Round(time.Millisecond))
				}
			}
		})
	}
}

// TestClusterDrainRefusesAgents dials a draining node's agent port, as an
// agent told to move does when that node comes first in its --edge list:
// the node must refuse the link at once, so that the agent tries the next
// node instead of waiting for a timeout: over QUIC it closes the
// connection with ConnCodeGoingAway, over TCP it answers the upgrade 503.
func TestClusterDrainRefusesAgents(t *testing.T) {
	e2e(t)
	forEachTransport(t, testClusterDrainRefusesAgents)
}

func testClusterDrainRefusesAgents(t *testing.T, tr transport) {
	e := startEdge(t, "--drain-delay", "2s", "--grace-period", "5s").over(t, tr)
	e.serve(t, "http", "x", "127.0.0.1:"+serveHTTP(t, nameServer("x")))
	mark := e.mark()
	e.signal(t, syscall.SIGTERM)
	e.waitLine(t, mark, "the drain", isMsg("edge node shutting down"))

	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err := func() error {
		conn, err := dialAgentPort(ctx, t, e)
		if err != nil {
			return err
		}
		str, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return err
		}
		if _, err := str.Write(helloFrame(t)); err != nil {
			return err
		}
		m, err := quicutil.ReadMessage(bufio.NewReader(str))
		if err != nil {
			return err
		}
		return fmt.Errorf("the draining node answered the Hello with %T", m)
	}()
	took := time.Since(start)
	var refused bool
	switch tr {
	case overQUIC:
		var ae *quic.ApplicationError
		refused = errors.As(err, &ae) && ae.ErrorCode == quicutil.ConnCodeGoingAway
	case overTCP:
		var ue *quicutil.UpgradeError
		refused = errors.As(err, &ue) && ue.StatusCode == http.StatusServiceUnavailable && strings.Contains(ue.Body, "is draining")
	}
	if !refused || took > 2*time.Second {
		t.Fatalf("link to a draining node over %s ended after %s with %v; want it refused at once", tr, took.Round(time.Millisecond), err)
	}
	t.Logf("a draining node refused an agent link over %s after %d ms: %v", tr, took.Milliseconds(), err)
}

// TestClusterPropagation registers 10,000 endpoints on node 1 over one raw
// agent connection (ten Register messages of 1,000) and measures how long
// after the last Result nodes 2 and 3 report all of them for node-1.
func TestClusterPropagation(t *testing.T) {
	e2e(t)
	const total = 10000
	c := newCluster(t, 3, clusterOpts{extra: func(i int) []string {
		if i == 0 {
			return []string{"--max-endpoints-per-agent", strconv.Itoa(total)}
		}
		return nil
	}})
	n1 := c.nodes[0]

	conn := dialEdge(t, n1.edgeProc)
	ctrl := writeStream(t, conn, helloFrame(t))
	br := bufio.NewReader(ctrl)
	ctrl.SetReadDeadline(time.Now().Add(waitTimeout))
	if m, err := quicutil.ReadMessage(br); err != nil {
		t.Fatalf("answer to hello: %v", err)
	} else if _, ok := m.(*quicutil.Welcome); !ok {
		t.Fatalf("answer to hello: %#v, want a Welcome", m)
	}

	start := time.Now()
	const batches = total / quicutil.MaxEndpointsPerMsg
	var frames []byte
	var err error
	for b := range batches {
		reg := &quicutil.Register{Seq: uint64(b + 1)}
		for i := range quicutil.MaxEndpointsPerMsg {
			reg.Endpoints = append(reg.Endpoints, quicutil.Endpoint{ID: fmt.Sprintf("ep-%05d", b*quicutil.MaxEndpointsPerMsg+i), Kind: quicutil.KindHTTP})
		}
		frames, err = quicutil.AppendMessage(frames, reg)
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ctrl.Write(frames); err != nil {
		t.Fatalf("write registers: %v", err)
	}
	for range batches {
		m, err := quicutil.ReadMessage(br)
		if err != nil {
			t.Fatalf("read result: %v", err)
		}
		res, ok := m.(*quicutil.Result)
		if !ok || len(res.Results) != quicutil.MaxEndpointsPerMsg {
			t.Fatalf("answer to a register: %T with %d results, want a Result with %d", m, len(res.Results), quicutil.MaxEndpointsPerMsg)
		}
		for _, r := range res.Results {
			if r.Code != quicutil.StatusOK {
				t.Fatalf("endpoint %s refused: %v", r.ID, r.Err())
			}
		}
	}
	acked := time.Now()
	ctrl.SetReadDeadline(time.Time{})

	// Nodes 2 and 3 report node-1's 10,000 endpoints.
	seen := waitNodeEndpoints(t, c.nodes[1:], "node-1", total, acked)
	t.Logf("%d endpoints registered on node 1 in %d ms; node 2 reported all of them %d ms and node 3 %d ms after the last Result",
		total, acked.Sub(start).Milliseconds(), seen[0].Milliseconds(), seen[1].Milliseconds())
	// Their tables route them: a sample endpoint resolves to node-1 on node 3.
	o, err := c.nodes[2].owners()
	if err != nil {
		t.Fatal(err)
	}
	if len(o) != total || !slices.Equal(o["ep-04242"], []string{"node-1"}) {
		t.Fatalf("node 3 /status/endpoints: %d endpoints, ep-04242 owned by %v; want %d, [node-1]", len(o), o["ep-04242"], total)
	}

	// The agent goes away: its endpoints leave the other nodes' tables.
	closed := time.Now()
	conn.CloseWithError(quicutil.ConnCodeNormal, "")
	gone := waitNodeEndpoints(t, c.nodes[1:], "node-1", 0, closed)
	t.Logf("the agent closed its connection: node 2 reported 0 endpoints of node-1 %d ms and node 3 %d ms after",
		gone[0].Milliseconds(), gone[1].Milliseconds())
}

// waitNodeEndpoints polls /status/members of nodes every 2ms until each
// reports n endpoints for member node, and returns how long after t0 each
// did.
func waitNodeEndpoints(t testing.TB, nodes []*clusterNode, node string, n int, t0 time.Time) []time.Duration {
	t.Helper()
	seen := make([]time.Duration, len(nodes))
	deadline := time.Now().Add(waitTimeout)
	for left := len(nodes); left > 0; {
		for i, nd := range nodes {
			if seen[i] > 0 {
				continue
			}
			var s membersStatus
			if nd.getJSON("/status/members", &s) != nil {
				continue
			}
			for _, m := range s.Members {
				if m.NodeID == node && m.Endpoints == n && m.Routed {
					seen[i] = time.Since(t0)
					left--
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %d endpoints of %s on every node (seen after: %v)", waitTimeout, n, node, seen)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return seen
}

// TestClusterRebalance gives six agents only node 1's address, in a
// cluster of two: node 1 holds all six links, more than its share
// (ceil(6/2) plus one), and asks links to move until it holds four; the
// agents move to node 2 (learnt from the Welcome's hints, make before
// break) while GETs run through node 2. None may fail, and on node 2 every
// link that moved is on the transport of the run.
func TestClusterRebalance(t *testing.T) {
	e2e(t)
	forEachTransport(t, testClusterRebalance)
}

func testClusterRebalance(t *testing.T, tr transport) {
	c := newCluster(t, 2, clusterOpts{extra: func(int) []string { return []string{"--rebalance-interval", "1s"} }}).over(t, tr)
	n1, n2 := c.nodes[0], c.nodes[1]
	if tr == overTCP && (n1.tcpOff || n2.tcpOff) {
		// Then agents link through the front door's URL, as behind a
		// balancer, and do not dial the nodes' own addresses: no agent
		// can choose node 2 (docs/transport.md).
		t.Skip("a node's agent port has no TCP twin (its port was taken): agents would link through a URL, which cannot choose a node")
	}
	up := "127.0.0.1:" + serveHTTP(t, nameServer("up"))
	for range 6 {
		c.serve(t, c.edges(0), 1, "http", "web", up)
	}
	hc := newClient(t, 15*time.Second)
	l := startLoad(t, 2, hc, "web", func() string { return n2.proxy })
	start := time.Now()
	var on1, on2 int
	pollState(t, waitTimeout, "node 1 to shed its links beyond its share to node 2", func() (bool, string) {
		on1, on2 = len(n1.agents(t).Agents), len(n2.agents(t).Agents)
		return on1 <= 4 && on2 >= 2 && on1+on2 == 6, fmt.Sprintf("node 1 %d links, node 2 %d", on1, on2)
	})
	moved := time.Since(start)
	n2.checkLinks(t, 2)
	poll(t, waitTimeout, "40 GETs after the moves", func() bool { return l.okSince(start.Add(moved), "up") >= 40 })
	l.stop()
	res := l.results()
	failed := failures(res, "up")
	t.Logf("over %s: node 1 kept %d links and node 2 took %d, %d ms after the agents started; %d of %d GETs through node 2 failed",
		tr, on1, on2, moved.Milliseconds(), len(failed), len(res))
	if len(failed) > 0 {
		t.Errorf("%d of %d GETs failed while links moved, want 0: %s", len(failed), len(res), firstFew(failed, 5))
	}
}
