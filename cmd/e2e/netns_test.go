//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pico-edge/pico/certs"
)

// The lab: network namespaces made by the test, on one bridge that lives
// in a namespace of its own, so that no packet touches the host's
// interfaces.
//
//	namespace   address          runs
//	<p>-hub     (bridge br0)     nothing
//	<p>-n1..n3  10.231.0.1..3    pico-edge node-1..node-3
//	<p>-cl      10.231.0.100     agents, their upstreams, the test's clients
const labNet = "10.231.0"

// lab is a set of network namespaces; cleanup deletes them, and with them
// their veths and nftables tables.
type lab struct {
	prefix string
	hub    string
	client string
	nodes  []string
}

// netnsCmd runs a short command and fails t with its output if it fails.
func netnsCmd(t testing.TB, stdin string, name string, args ...string) string {
	t.Helper()
	var in io.Reader
	if stdin != "" {
		in = strings.NewReader(stdin)
	}
	out, code := runCmd(t, in, name, args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d: %s", name, strings.Join(args, " "), code, out)
	}
	return out
}

// newLab makes the namespaces, the bridge and the veths for n nodes and a
// client. It skips t when it cannot (not root, no ip, no netns support, no
// nft).
func newLab(t testing.TB, n int) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root; run as root to test partitions")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) not in PATH; it makes the network namespaces")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not in PATH (Debian package nftables; .ci/run installs it); it makes the partition")
	}
	l := &lab{prefix: fmt.Sprintf("pico-e2e-%d", os.Getpid())}
	l.hub, l.client = l.prefix+"-hub", l.prefix+"-cl"
	for i := range n {
		l.nodes = append(l.nodes, fmt.Sprintf("%s-n%d", l.prefix, i+1))
	}
	for i, ns := range append([]string{l.hub, l.client}, l.nodes...) {
		exec.Command("ip", "netns", "del", ns).Run() // a leftover of a killed run with this PID
		if out, code := runCmd(t, nil, "ip", "netns", "add", ns); code != 0 {
			if i == 0 {
				t.Skipf("ip netns add: %s; network namespaces are unavailable here", strings.TrimSpace(out))
			}
			t.Fatalf("ip netns add %s: %s", ns, out)
		}
		t.Cleanup(func() {
			if out, code := runCmd(t, nil, "ip", "netns", "del", ns); code != 0 {
				t.Errorf("ip netns del %s: %s", ns, out)
			}
		})
	}
	netnsCmd(t, "", "ip", "-n", l.hub, "link", "add", "br0", "type", "bridge")
	netnsCmd(t, "", "ip", "-n", l.hub, "link", "set", "br0", "up")
	attach := func(ns, veth, addr string) {
		t.Helper()
		netnsCmd(t, "", "ip", "-n", l.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		netnsCmd(t, "", "ip", "-n", l.hub, "link", "set", veth, "master", "br0", "up")
		netnsCmd(t, "", "ip", "-n", ns, "addr", "add", addr+"/24", "dev", "eth0")
		netnsCmd(t, "", "ip", "-n", ns, "link", "set", "eth0", "up")
		netnsCmd(t, "", "ip", "-n", ns, "link", "set", "lo", "up")
	}
	for i, ns := range l.nodes {
		attach(ns, fmt.Sprintf("v%d", i+1), l.nodeIP(i))
	}
	attach(l.client, "vcl", labNet+".100")
	return l
}

func (l *lab) nodeIP(i int) string { return fmt.Sprintf("%s.%d", labNet, i+1) }

// nft runs nft in namespace ns with script on stdin.
func (l *lab) nft(t testing.TB, ns, script string) {
	t.Helper()
	netnsCmd(t, script, "ip", "netns", "exec", ns, "nft", "-f", "-")
}

// inNetns runs f on an OS thread moved into namespace ns, then moves the
// thread back. Sockets f creates stay in ns: a listener accepts there, a
// connection talks there, whichever thread uses them later.
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/var/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := setns(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := setns(orig); err != nil {
			// The thread stays locked and ends with this goroutine,
			// rather than run other goroutines in ns.
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func setns(f *os.File) error {
	return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
}

// nsDial dials from namespace ns.
func nsDial(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNetns(ns, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// nsClient is newClient whose connections start in namespace ns.
func nsClient(t testing.TB, ns string, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         nsDial(ns),
		DisableCompression:  true,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: timeout}
}

// startCluster starts pico-edge node i in namespace l.nodes[i] on
// 10.231.0.i+1 with fixed ports, every node joining every other, all with
// one cluster secret and one development CA; the admin API is queried
// from the client namespace.
func (l *lab) startCluster(t testing.TB) *testCluster {
	t.Helper()
	c := &testCluster{secret: filepath.Join(t.TempDir(), "cluster.key")}
	if _, _, err := certs.LoadOrCreateSecret(c.secret); err != nil {
		t.Fatalf("cluster secret: %v", err)
	}
	first := t.TempDir()
	dev, err := certs.LoadOrCreateDev(first, first, nil)
	if err != nil {
		t.Fatalf("development CA: %v", err)
	}
	c.ca = dev.CAFile
	var gossip []string
	for i := range l.nodes {
		gossip = append(gossip, l.nodeIP(i)+":8003")
	}
	for i, ns := range l.nodes {
		dir := first
		if i > 0 {
			dir = t.TempDir()
			copyFile(t, dev.CAFile, filepath.Join(dir, "ca.pem"), 0o644)
			copyFile(t, dev.CAKeyFile, filepath.Join(dir, "ca-key.pem"), 0o600)
		}
		ip := l.nodeIP(i)
		nd := &clusterNode{id: fmt.Sprintf("node-%d", i+1), dir: dir, gossip: gossip[i]}
		nd.flags = []string{
			"--data-dir", dir,
			"--node-id", nd.id,
			"--cluster-secret-file", c.secret,
			"--proxy-addr", ip + ":8000",
			"--agent-addr", ip + ":8001",
			"--admin-addr", ip + ":8002",
			"--proxy-tls-addr=",
			"--gossip-addr", gossip[i],
			"--join", strings.Join(slices.Delete(slices.Clone(gossip), i, i+1), ","),
			"--tls-host", ip,
			"--log-format", "json",
		}
		p := startProc(t, "pico-edge "+nd.id, "ip", append([]string{"netns", "exec", ns, bin.edge}, nd.flags...)...)
		line := p.waitLineFor(t, 0, `"edge node ready"`, startTimeout, isMsg("edge node ready"))
		lg, _ := parseLog(line)
		nd.edgeProc = &edgeProc{proc: p, dataDir: dir, proxy: lg.str("proxy_addr"), agent: lg.str("agent_addr"),
			admin: lg.str("admin_addr"), ca: c.ca, admc: nsClient(t, l.client, 5*time.Second)}
		if nd.proxy != ip+":8000" || nd.agent != ip+":8001" || nd.admin != ip+":8002" {
			t.Fatalf("%s ready line: %s", nd.id, line)
		}
		c.nodes = append(c.nodes, nd)
	}
	c.waitMembers(t, waitTimeout)
	return c
}

// serveIn runs `pico-agent --connections 1 http ID UPSTREAM` in the client
// namespace, linked to node i, with an upstream in that namespace that
// answers id, and waits until the endpoint is registered.
func (l *lab) serveIn(t testing.TB, c *testCluster, i int, id string) {
	t.Helper()
	var ln net.Listener
	if err := inNetns(l.client, func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", l.client, err)
	}
	port := serveHTTPOn(t, ln, nameServer(id))
	a := startProc(t, "pico-agent http "+id, "ip", "netns", "exec", l.client, bin.agent,
		"--edge", c.nodes[i].agent, "--ca", c.ca, "--connections", "1", "--log-format", "json",
		"http", id, "127.0.0.1:"+port)
	want := fmt.Sprintf("endpoint %s (http) is registered", id)
	a.waitLineFor(t, 0, want, startTimeout, contains(want))
}

// ownership returns each node's endpoint → owners map, and whether all
// equal want.
func ownership(c *testCluster, want map[string][]string) (bool, string) {
	var b strings.Builder
	agree := true
	for _, nd := range c.nodes {
		o, err := nd.owners()
		fmt.Fprintf(&b, "%s: %v (%v); ", nd.id, o, err)
		agree = agree && err == nil && maps.EqualFunc(o, want, slices.Equal)
	}
	return agree, b.String()
}

// liveViews returns each node's live members.
func liveViews(c *testCluster) map[string][]string {
	out := make(map[string][]string)
	for _, nd := range c.nodes {
		m, err := nd.liveMembers()
		if err != nil {
			m = []string{"error: " + err.Error()}
		}
		out[nd.id] = m
	}
	return out
}

// TestPartition runs three nodes, each in a network namespace of its own,
// with endpoint alpha served through node 1 and gamma through node 3. An
// nftables rule cuts node 3 off from nodes 1 and 2 for 30s: each side
// drops the other's members and endpoints. After the rule is removed,
// every node must agree again on which node owns which endpoint within
// 10s. Then 10% of the packets into node 3 are dropped at random for 10s
// while GETs cross the relay both ways: none may fail.
func TestPartition(t *testing.T) {
	e2e(t)
	const (
		partitionFor = 30 * time.Second
		healWithin   = 10 * time.Second
	)
	l := newLab(t, 3)
	c := l.startCluster(t)
	l.serveIn(t, c, 0, "alpha")
	l.serveIn(t, c, 2, "gamma")
	want := map[string][]string{"alpha": {"node-1"}, "gamma": {"node-3"}}
	pollState(t, waitTimeout, "every node to route alpha to node-1 and gamma to node-3", func() (bool, string) { return ownership(c, want) })
	hc := nsClient(t, l.client, 10*time.Second)
	for _, tc := range []struct {
		node     int
		endpoint string
	}{{2, "alpha"}, {0, "gamma"}, {1, "gamma"}} {
		e := c.nodes[tc.node]
		if resp, body := e.request(t, hc, "GET", tc.endpoint, "/", nil); resp.StatusCode != http.StatusOK || body != tc.endpoint {
			t.Fatalf("GET %s via %s: %d %q", tc.endpoint, c.nodes[tc.node].id, resp.StatusCode, body)
		}
	}

	// Partition: node 3 neither receives from nor sends to nodes 1 and 2.
	others := fmt.Sprintf("{ %s, %s }", l.nodeIP(0), l.nodeIP(1))
	l.nft(t, l.nodes[2], fmt.Sprintf(`table inet pico_partition {
	chain in { type filter hook input priority 0; policy accept; ip saddr %[1]s drop; }
	chain out { type filter hook output priority 0; policy accept; ip daddr %[1]s drop; }
}
`, others))
	cut := time.Now()
	pollState(t, partitionFor, "both sides of the partition to drop the other", func() (bool, string) {
		v := liveViews(c)
		return slices.Equal(v["node-1"], []string{"node-1", "node-2"}) && slices.Equal(v["node-2"], []string{"node-1", "node-2"}) &&
			slices.Equal(v["node-3"], []string{"node-3"}), fmt.Sprint(v)
	})
	split := time.Since(cut)
	pollState(t, partitionFor, "each side to route only its own endpoint", func() (bool, string) {
		var b strings.Builder
		ok := true
		for i, w := range []map[string][]string{{"alpha": {"node-1"}}, {"alpha": {"node-1"}}, {"gamma": {"node-3"}}} {
			o, err := c.nodes[i].owners()
			fmt.Fprintf(&b, "%s: %v (%v); ", c.nodes[i].id, o, err)
			ok = ok && err == nil && maps.EqualFunc(o, w, slices.Equal)
		}
		return ok, b.String()
	})
	t.Logf("partition: both sides dropped the other after %d ms, and each routes only its own endpoint after %d ms",
		split.Milliseconds(), time.Since(cut).Milliseconds())
	if resp, body := c.nodes[0].request(t, hc, "GET", "gamma", "/", nil); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("GET gamma via node 1 during the partition: %d %q, want 502", resp.StatusCode, body)
	}
	time.Sleep(time.Until(cut.Add(partitionFor))) // the partition lasts partitionFor

	// Heal: every node agrees on ownership again.
	l.nft(t, l.nodes[2], "delete table inet pico_partition\n")
	healed := time.Now()
	var agreedAfter time.Duration
	pollState(t, 3*healWithin, "every node to agree on ownership after the partition healed", func() (bool, string) {
		ok, state := ownership(c, want)
		if ok && agreedAfter == 0 {
			agreedAfter = time.Since(healed)
		}
		return ok, state
	})
	c.waitMembers(t, 3*healWithin)
	t.Logf("partition healed: every node agrees on ownership after %d ms; every node sees all three alive after %d ms",
		agreedAfter.Milliseconds(), time.Since(healed).Milliseconds())
	if agreedAfter > healWithin {
		t.Errorf("nodes agreed on ownership %s after the partition healed, want within %s", agreedAfter.Round(time.Millisecond), healWithin)
	}

	// 10% of the packets into node 3 are lost while GETs cross the relay
	// both ways (node 3 → node 1 for alpha, node 1 → node 3 for gamma).
	const lossFor = 10 * time.Second
	l.nft(t, l.nodes[2], `table inet pico_loss {
	chain in { type filter hook input priority 0; policy accept; numgen random mod 100 < 10 drop; }
}
`)
	lossy := time.Now()
	alpha := startLoad(t, 2, hc, "alpha", func() string { return c.nodes[2].proxy })
	gamma := startLoad(t, 2, hc, "gamma", func() string { return c.nodes[0].proxy })
	time.Sleep(lossFor)
	alpha.stop()
	gamma.stop()
	l.nft(t, l.nodes[2], "delete table inet pico_loss\n")
	ra, rg := alpha.results(), gamma.results()
	fa, fg := failures(ra, "alpha"), failures(rg, "gamma")
	var slowest time.Duration
	for _, r := range slices.Concat(ra, rg) {
		slowest = max(slowest, r.end.Sub(r.start))
	}
	t.Logf("10%% packet loss into node 3 for %s: %d of %d GETs of alpha via node 3 failed, %d of %d GETs of gamma via node 1 failed; slowest GET %d ms",
		time.Since(lossy).Round(time.Second), len(fa), len(ra), len(fg), len(rg), slowest.Milliseconds())
	if len(ra) == 0 || len(rg) == 0 {
		t.Fatalf("no GETs under loss: %d alpha, %d gamma", len(ra), len(rg))
	}
	if f := slices.Concat(fa, fg); len(f) > 0 {
		t.Errorf("%d GETs failed under 10%% packet loss, want 0 (QUIC and TCP retransmit, memberlist refutes suspicion); first: %s", len(f), firstFew(f, 5))
	}
}
