package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pico-edge/pico/certs"
)

// nginxSource is the address nginx connects to the nodes from
// (proxy_bind): the nodes tell a link that came through nginx from one
// that did not by it. Linux routes all of 127.0.0.0/8 to lo.
const nginxSource = "127.0.0.2"

// TestNginx puts Debian's nginx in front of a 2-node cluster on loopback;
// agents (`pico-agent --edge https://localhost:PORT/_pico/agent
// --connections 2`) and clients (HTTPS with X-Pico-Endpoint) both go
// through it. TLS is terminated at nginx (an http server proxying the
// WebSocket upgrade, as nginx's documentation says, to the plain front
// doors) or passed through (a stream server with ssl_preread routing by
// server name to the TLS front doors). Under a load of GETs and POSTs the
// nodes are restarted one after the other (SIGTERM, exit 0, start again
// with the same flags and data directory), then one is SIGKILLed and
// started again. The edges must see every agent link over TCP from
// nginx's address (the agent must not dial the nodes' own addresses that
// the edges list), and the agent must be linked to a restarted node again
// within 10 s. No request may fail in the rolling restart; when a node is
// killed at most 1% of all requests may fail, and no GET when TLS ends at
// nginx (which sends a GET to the other node). The clients speak
// HTTP/1.1 with keep-alive: like any net/http client they send a GET again
// when a reused connection closes before the answer, never a POST.
func TestNginx(t *testing.T) {
	e2e(t)
	path := nginxPath(t)
	for _, tc := range []struct {
		name        string
		passthrough bool
	}{
		{"TLS terminated at nginx", false},
		{"TLS passed through", true},
	} {
		t.Run(tc.name, func(t *testing.T) { testNginx(t, path, tc.passthrough) })
	}
}

func testNginx(t *testing.T, nginx string, passthrough bool) {
	const (
		drainDelay = time.Second
		grace      = 3 * time.Second
		// relinkWait bounds the time from a node's restart to the agent's
		// link to it (a ceiling for failure: the time is logged, 0.2 to
		// 8 s on a loaded 2-core machine); killReadyWait the wait, before
		// the SIGKILL, until the agent is linked to both nodes.
		relinkWait    = waitTimeout
		killReadyWait = 90 * time.Second
	)
	tlsPorts := []string{freeTCPUDPPort(t), freeTCPUDPPort(t)}
	c := newCluster(t, 2, clusterOpts{fixedPorts: true, extra: func(i int) []string {
		return []string{
			// fixedPorts turns the TLS front door off; a later flag wins.
			"--proxy-tls-addr", "127.0.0.1:" + tlsPorts[i],
			"--drain-delay", drainDelay.String(), "--grace-period", grace.String(),
			// nginx is the balancer in front: its connections are not
			// limited per IP (without X-Forwarded-For from it, the nodes
			// still show its address).
			"--trusted-proxies", nginxSource + "/32",
		}
	}})
	for i, nd := range c.nodes {
		if want := "127.0.0.1:" + tlsPorts[i]; nd.tls != want {
			t.Fatalf("%s: TLS front door on %q, want %s", nd.id, nd.tls, want)
		}
	}

	var ngx *nginxProc
	if passthrough {
		ngx = startNginx(t, nginx, func(dir, port string) string {
			return nginxPassthroughConf(dir, port, c.nodes[0].tls, c.nodes[1].tls)
		})
	} else {
		cert := nginxCert(t, c)
		ngx = startNginx(t, nginx, func(dir, port string) string {
			return nginxTerminatedConf(dir, port, cert, c.nodes[0].proxy, c.nodes[1].proxy)
		})
	}
	url := "https://localhost:" + ngx.port + "/_pico/agent"
	t.Logf("nginx (pid %d) on 127.0.0.1:%s; agents use --edge %s", ngx.pid(), ngx.port, url)

	up := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			io.Copy(w, r.Body)
			return
		}
		io.WriteString(w, "up")
	}))
	ag := startProc(t, "pico-agent http web", bin.agent, "--edge", url, "--ca", c.ca, "--connections", "2",
		"--admin-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "debug", "http", "web", "127.0.0.1:"+up)
	ag.waitLineFor(t, 0, "web registered", startTimeout, contains("endpoint web (http) is registered"))
	adminLine := ag.waitLine(t, 0, "its admin address", contains("admin API on http://"))
	agentAdmin := strings.TrimSuffix(strings.Fields(strings.TrimPrefix(adminLine, "admin API on http://"))[0], ":")
	links := agentLinks{admin: agentAdmin, url: url, admc: newClient(t, 5*time.Second)}

	// The agent keeps two links, each through nginx to a distinct node.
	took := links.waitTwo(t, c, waitTimeout)
	t.Logf("agent linked to both nodes %d ms after its start: %s", took.Milliseconds(), links.describe(t, c))
	links.checkThroughNginx(t, c, "after the start")

	cl := nginxClient(t, c.ca, ngx.port)
	for _, nd := range c.nodes {
		nd.waitRoute(t, "web")
	}

	// Rolling restart of both nodes under load. A node is restarted once
	// the previous one is ready again; the agent should then link to it
	// again within relinkWait (its other link is on the other node).
	l := startNginxLoad(t, 4, cl, "https://localhost:"+ngx.port+"/")
	l.waitOK(t, time.Time{}, 40)
	for i, nd := range c.nodes {
		start := time.Now()
		nd.signal(t, syscall.SIGTERM)
		st := nd.waitExit(t, drainDelay+grace+15*time.Second)
		if !st.Exited() || st.ExitCode() != 0 {
			t.Fatalf("%s ended with %s after SIGTERM, want exit code 0", nd.id, st)
		}
		exited := time.Now()
		nd.start(t)
		ready := time.Now()
		c.waitMembers(t, waitTimeout)
		t.Logf("%s (%d of 2): exited 0 %d ms after SIGTERM, ready again %d ms later", nd.id, i+1, exited.Sub(start).Milliseconds(), ready.Sub(exited).Milliseconds())
		links.relinked(t, c, ag, nd.id, ready, relinkWait)
	}
	after := time.Now()
	l.waitOK(t, after, 40)
	l.stop()
	rolling := l.results()
	t.Logf("rolling restart through nginx: %s; agent links: %s", summarize(rolling), links.describe(t, c))
	links.checkThroughNginx(t, c, "after the rolling restart")
	if f := nginxFailures(rolling); len(f) > 0 {
		t.Errorf("rolling restart through nginx: %d of %d requests failed, want 0; first: %s", len(f), len(rolling), firstFewNginx(f, 5))
	}

	// SIGKILL of node 1 under load, and its restart, with the agent linked
	// to both nodes: then no GET may fail.
	took = links.waitTwo(t, c, killReadyWait)
	t.Logf("before the SIGKILL: the agent was linked to both nodes %d ms after the rolling restart's load stopped", took.Milliseconds())
	// The load runs long enough (about 2,000 requests after the restart)
	// for 1% to mean something.
	l = startNginxLoad(t, 4, cl, "https://localhost:"+ngx.port+"/")
	l.waitOK(t, time.Time{}, 200)
	n1 := c.nodes[0]
	killed := time.Now()
	n1.killAndWait(t)
	l.waitOK(t, killed, 40)
	n1.start(t)
	ready := time.Now()
	c.waitMembers(t, waitTimeout)
	l.waitOK(t, ready, 2000)
	l.stop()
	kill := l.results()
	back, gap, slowest := recovery(asLoadResults(kill), "", killed)
	t.Logf("SIGKILL of node-1 through nginx: %s; first success after the last failure %d ms after the kill, longest time without a success %d ms, slowest request %d ms",
		summarize(kill), back.Milliseconds(), gap.Milliseconds(), slowest.Milliseconds())
	failed := nginxFailures(kill)
	var gets []nginxResult
	for _, r := range failed {
		if r.method == http.MethodGet {
			gets = append(gets, r)
		}
	}
	switch {
	case len(gets) > 0 && !passthrough:
		t.Errorf("SIGKILL through nginx: %d idempotent GETs failed, want 0; first: %s", len(gets), firstFewNginx(gets, 5))
	case len(gets) > 0:
		// TLS ends at the node: a GET in flight on it when it dies can be
		// sent again only by the client, and net/http does that only on
		// a reused connection. Nothing else can; the 1% below holds.
		t.Logf("SIGKILL, TLS passed through: %d GETs in flight on the killed node failed (the client replays a GET only on a reused connection): %s", len(gets), firstFewNginx(gets, 5))
	}
	if 100*len(failed) > len(kill) {
		t.Errorf("SIGKILL through nginx: %d of %d requests failed, want at most 1%%; first: %s", len(failed), len(kill), firstFewNginx(failed, 5))
	}
	links.relinked(t, c, ag, n1.id, ready, relinkWait)
	links.checkThroughNginx(t, c, "after the SIGKILL and restart")

	// What the agent dialled, from its log: every link must go to the URL.
	direct := map[string]int{}
	for _, line := range ag.output() {
		if isMsg("connected to edge")(line) || isMsg("edge unreachable, trying the next")(line) || isMsg("reached a node the agent does not want; trying again")(line) {
			lg, _ := parseLog(line)
			if e := lg.str("edge"); e != url {
				direct[lg.str("msg")+" "+e+" over "+lg.str("transport")]++
			}
		}
	}
	if len(direct) > 0 {
		t.Errorf("the agent dialled nodes' own addresses (the cluster's hints), bypassing nginx: %v", direct)
	}
	t.Logf("nginx: %s", ngx.logSummary(t))
}

// ---------------------------------------------------------------------------
// nginx

// nginxPath returns Debian's nginx, or skips t.
func nginxPath(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	t.Skip("nginx not installed (Debian packages nginx and libnginx-mod-stream; .ci/run installs them)")
	return ""
}

// nginxProc is nginx running in the foreground as one process.
type nginxProc struct {
	*proc
	dir  string // its prefix: configuration, logs, temporary files
	port string // it listens on 127.0.0.1:port
}

// startNginx writes the configuration conf returns for a prefix
// directory and a port, runs nginx on it in the foreground and waits until
// it accepts connections. master_process off keeps nginx in one process,
// which cleanup kills by PID (a worker would outlive a killed master).
func startNginx(t testing.TB, path string, conf func(dir, port string) string) *nginxProc {
	t.Helper()
	for try := 0; ; try++ {
		dir := t.TempDir()
		port := freePort(t)
		file := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(file, []byte(conf(dir, port)), 0o644); err != nil {
			t.Fatal(err)
		}
		p := startProc(t, "nginx", path, "-p", dir, "-c", file, "-e", filepath.Join(dir, "error.log"))
		n := &nginxProc{proc: p, dir: dir, port: port}
		t.Cleanup(func() {
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
				t.Logf("nginx error.log:\n%s", b)
			}
		})
		addr := "127.0.0.1:" + port
		deadline := time.Now().Add(startTimeout)
		for time.Now().Before(deadline) && !p.hasExited() {
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
				return n
			}
			time.Sleep(20 * time.Millisecond)
		}
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		if try == 3 || !strings.Contains(string(b), "Address already in use") {
			t.Fatalf("nginx did not listen on %s (%s):\n%s\n%s", addr, p.exitStatus(), strings.Join(p.output(), "\n"), b)
		}
	}
}

// nginxCommon is the start of every configuration: one process in the
// foreground, its pid file, logs and temporary files in dir.
func nginxCommon(dir string) string {
	return fmt.Sprintf(`daemon off;
master_process off;
user root;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 1024; }
`, dir)
}

// nginxTerminatedConf terminates TLS on 127.0.0.1:port with cert and
// proxies every path, /_pico/agent's WebSocket upgrade included, to the
// plain front doors a and b (nginx's "WebSocket proxying" page: HTTP/1.1
// and the Upgrade and Connection headers). A node that refuses or drops
// the connection is skipped (proxy_next_upstream error timeout); nginx
// then leaves it alone for fail_timeout.
func nginxTerminatedConf(dir, port string, cert *certs.Dev, a, b string) string {
	return nginxCommon(dir) + fmt.Sprintf(`http {
	log_format pico '$remote_addr "$request" $status upstream=$upstream_addr upstream_status=$upstream_status $request_time';
	access_log %[1]s/access.log pico;
	client_body_temp_path %[1]s/client_body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;

	map $http_upgrade $connection_upgrade {
		default upgrade;
		''      close;
	}
	upstream pico {
		server %[4]s max_fails=1 fail_timeout=2s;
		server %[5]s max_fails=1 fail_timeout=2s;
	}
	server {
		listen 127.0.0.1:%[2]s ssl;
		server_name localhost;
		ssl_certificate %[3]s;
		ssl_certificate_key %[6]s;
		location / {
			proxy_pass http://pico;
			proxy_http_version 1.1;
			proxy_set_header Upgrade $http_upgrade;
			proxy_set_header Connection $connection_upgrade;
			proxy_set_header Host $host;
			proxy_read_timeout 1h;
			proxy_send_timeout 1h;
			proxy_next_upstream error timeout;
			proxy_connect_timeout 5s;
			proxy_bind %[7]s;
		}
	}
}
`, dir, port, cert.CertFile, a, b, cert.KeyFile, nginxSource)
}

// nginxPassthroughConf passes TLS on 127.0.0.1:port through to the TLS
// front doors a and b: a stream server reads the server name of the
// ClientHello (ssl_preread) and routes localhost to them; other names get
// nothing.
func nginxPassthroughConf(dir, port, a, b string) string {
	return "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n" + nginxCommon(dir) + fmt.Sprintf(`stream {
	log_format pico '$remote_addr sni=$ssl_preread_server_name upstream=$upstream_addr $status $session_time';
	access_log %[1]s/access.log pico;

	map $ssl_preread_server_name $pico_upstream {
		hostnames;
		localhost pico_tls;
		default   "";
	}
	upstream pico_tls {
		server %[3]s max_fails=1 fail_timeout=2s;
		server %[4]s max_fails=1 fail_timeout=2s;
	}
	server {
		listen 127.0.0.1:%[2]s;
		ssl_preread on;
		proxy_pass $pico_upstream;
		proxy_connect_timeout 5s;
		proxy_timeout 1h;
		proxy_next_upstream on;
		proxy_bind %[5]s;
	}
}
`, dir, port, a, b, nginxSource)
}

// nginxCert issues nginx a certificate for localhost from the cluster's
// development CA, in a directory of its own.
func nginxCert(t testing.TB, c *testCluster) *certs.Dev {
	t.Helper()
	dir := t.TempDir()
	copyFile(t, c.ca, filepath.Join(dir, "ca.pem"), 0o644)
	copyFile(t, filepath.Join(c.nodes[0].dir, "ca-key.pem"), filepath.Join(dir, "ca-key.pem"), 0o600)
	dev, err := certs.LoadOrCreateDev(dir, dir, nil)
	if err != nil {
		t.Fatalf("nginx certificate: %v", err)
	}
	return dev
}

// logSummary counts nginx's access-log lines, and those where it tried
// more than one node.
func (n *nginxProc) logSummary(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.dir, "access.log"))
	if err != nil {
		return fmt.Sprintf("no access log: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var retried []string
	for _, l := range lines {
		if strings.Contains(l, ", ") { // $upstream_addr lists every node tried
			retried = append(retried, l)
		}
	}
	return fmt.Sprintf("%d access-log lines, %d of them tried a second node: %q", len(lines), len(retried), retried[:min(5, len(retried))])
}

// nginxClient is an HTTPS client (HTTP/1.1) that reaches localhost at
// nginx's port on 127.0.0.1 and verifies it with the cluster's CA.
func nginxClient(t testing.TB, caFile, port string) *http.Client {
	t.Helper()
	pool, err := certs.LoadPool(caFile)
	if err != nil {
		t.Fatal(err)
	}
	var d net.Dialer
	tr := &http.Transport{
		Proxy:               nil,
		TLSClientConfig:     &tls.Config{RootCAs: pool, ServerName: "localhost"},
		DisableCompression:  true,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", "127.0.0.1:"+port)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}
}

// ---------------------------------------------------------------------------
// The agent's links

// agentLinks reads where an agent's links go, from its admin API and the
// nodes' /status/agents.
type agentLinks struct {
	admin string // the agent's admin address
	url   string // its --edge
	admc  *http.Client
}

// agentStatus is the part of the agent's /status the test reads.
type agentStatus struct {
	Links []agentLink `json:"links"`
}

type agentLink struct {
	NodeID    string `json:"node_id"`
	Addr      string `json:"addr"`
	Transport string `json:"transport"`
}

// edgeAgentLinks is the part of a node's /status/agents the test reads.
type edgeAgentLinks struct {
	Agents []struct {
		AgentID    string `json:"agent_id"`
		RemoteAddr string `json:"remote_addr"`
		Transport  string `json:"transport"`
	} `json:"agents"`
}

func (a *agentLinks) status() (agentStatus, error) {
	var s agentStatus
	resp, err := a.admc.Get("http://" + a.admin + "/status")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("agent /status: %s", resp.Status)
	}
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// waitTwo waits until the agent has a link to each node, and both nodes
// list it, and returns how long that took.
func (a *agentLinks) waitTwo(t testing.TB, c *testCluster, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	pollState(t, d, "the agent to be linked to both nodes", func() (bool, string) {
		s, err := a.status()
		if err != nil {
			return false, err.Error()
		}
		nodes := map[string]bool{}
		for _, l := range s.Links {
			nodes[l.NodeID] = true
		}
		if len(nodes) != 2 {
			return false, fmt.Sprintf("agent links %+v", s.Links)
		}
		for _, nd := range c.nodes {
			var e edgeAgentLinks
			if err := nd.getJSON("/status/agents", &e); err != nil || len(e.Agents) == 0 {
				return false, fmt.Sprintf("%s lists %+v (%v)", nd.id, e.Agents, err)
			}
		}
		return true, ""
	})
	return time.Since(start)
}

// relinked checks that the agent is linked to node within d of ready
// (when node was ready again after a restart). When it is not, it fails t
// with what the agent's log says about the attempts that reached node.
func (a *agentLinks) relinked(t testing.TB, c *testCluster, ag *proc, node string, ready time.Time, d time.Duration) {
	t.Helper()
	deadline := ready.Add(d)
	for {
		s, err := a.status()
		if err == nil && slices.ContainsFunc(s.Links, func(l agentLink) bool { return l.NodeID == node }) {
			t.Logf("the agent linked to %s again %d ms after it was ready", node, time.Since(ready).Milliseconds())
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	refused, dups := 0, 0 // attempts that reached a node the agent did not take
	var lastRetry string
	for _, line := range ag.output() {
		l, ok := parseLog(line)
		if !ok {
			continue
		}
		if at, _ := time.Parse(time.RFC3339Nano, l.str("time")); at.Before(ready) {
			continue
		}
		if l.str("msg") == "reached a node the agent does not want; trying again" {
			if l.str("node_id") == node {
				refused++
			} else {
				dups++
			}
		}
		if r := l.str("retry_in"); r != "" {
			lastRetry = r
		}
	}
	t.Errorf("the agent was not linked to %s %s after it was ready again: %s; since then its attempts through nginx reached %s %d times and refused it (the node a link left), and reached the other node, linked already, %d times; its last backoff was %s",
		node, d, a.describe(t, c), node, refused, dups, lastRetry)
}

// describe says where the agent's links are, as the agent and the nodes see
// them.
func (a *agentLinks) describe(t testing.TB, c *testCluster) string {
	t.Helper()
	var parts []string
	if s, err := a.status(); err == nil {
		for _, l := range s.Links {
			parts = append(parts, fmt.Sprintf("agent → %s via %s over %s", l.NodeID, l.Addr, l.Transport))
		}
	}
	for _, nd := range c.nodes {
		var e edgeAgentLinks
		if err := nd.getJSON("/status/agents", &e); err != nil {
			parts = append(parts, fmt.Sprintf("%s: %v", nd.id, err))
			continue
		}
		for _, ag := range e.Agents {
			parts = append(parts, fmt.Sprintf("%s sees a link from %s over %s", nd.id, ag.RemoteAddr, ag.Transport))
		}
	}
	return strings.Join(parts, "; ")
}

// checkThroughNginx fails t unless every link of the agent dialled the URL
// over TCP, and every node sees every agent link over TCP from nginx's
// address.
func (a *agentLinks) checkThroughNginx(t testing.TB, c *testCluster, when string) {
	t.Helper()
	s, err := a.status()
	if err != nil {
		t.Fatalf("agent /status: %v", err)
	}
	for _, l := range s.Links {
		if l.Addr != a.url || l.Transport != "tcp" {
			t.Errorf("%s: the agent's link to %s dialled %s over %s, want %s over tcp (through nginx)", when, l.NodeID, l.Addr, l.Transport, a.url)
		}
	}
	for _, nd := range c.nodes {
		var e edgeAgentLinks
		if err := nd.getJSON("/status/agents", &e); err != nil {
			t.Fatalf("%s /status/agents: %v", nd.id, err)
		}
		for _, ag := range e.Agents {
			ap, err := netip.ParseAddrPort(ag.RemoteAddr)
			if ag.Transport != "tcp" || err != nil || ap.Addr().String() != nginxSource {
				t.Errorf("%s: %s sees agent link from %s over %s, want tcp from nginx (%s)", when, nd.id, ag.RemoteAddr, ag.Transport, nginxSource)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Load through nginx

// nginxResult is one request of an nginxLoad.
type nginxResult struct {
	loadResult
	method string
	want   string
}

func (r nginxResult) ok() bool { return r.loadResult.ok(r.want) }

// cause names why r failed: the error's last part, or the status and the
// first line of the body.
func (r nginxResult) cause() string {
	switch {
	case r.err != nil:
		msg := r.err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		return "error: " + msg
	case r.status != http.StatusOK:
		first, _, _ := strings.Cut(strings.TrimSpace(r.body), "\n")
		if len(first) > 80 {
			first = first[:80]
		}
		return fmt.Sprintf("%d %s", r.status, first)
	default:
		return "200 with a wrong body"
	}
}

// nginxLoad runs workers that alternate GETs and POSTs (a body the
// upstream echoes) to url until stop, each for at most maxLoopRequests.
type nginxLoad struct {
	mu   sync.Mutex
	res  []nginxResult
	quit chan struct{}
	wg   sync.WaitGroup
}

func startNginxLoad(t testing.TB, workers int, c *http.Client, url string) *nginxLoad {
	l := &nginxLoad{quit: make(chan struct{})}
	for w := range workers {
		l.wg.Go(func() {
			for i := range maxLoopRequests {
				select {
				case <-l.quit:
					return
				default:
				}
				r := nginxResult{method: http.MethodGet, want: "up"}
				var body io.Reader
				if (w+i)%2 == 1 {
					r.method, r.want = http.MethodPost, fmt.Sprintf("post %d.%d", w, i)
					body = strings.NewReader(r.want)
				}
				r.start, r.node = time.Now(), "nginx"
				req, _ := http.NewRequest(r.method, url, body)
				req.Header.Set("X-Pico-Endpoint", "web")
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

func (l *nginxLoad) stop() {
	select {
	case <-l.quit:
	default:
		close(l.quit)
	}
	l.wg.Wait()
}

func (l *nginxLoad) results() []nginxResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.res)
}

// waitOK waits until n requests that started after since and after the
// last failure have succeeded.
func (l *nginxLoad) waitOK(t testing.TB, since time.Time, n int) {
	t.Helper()
	poll(t, waitTimeout, fmt.Sprintf("%d successful requests through nginx", n), func() bool {
		res := l.results()
		last := since
		for _, r := range res {
			if !r.ok() && r.end.After(last) {
				last = r.end
			}
		}
		ok := 0
		for _, r := range res {
			if r.ok() && r.start.After(last) {
				ok++
			}
		}
		return ok >= n
	})
}

func nginxFailures(res []nginxResult) []nginxResult {
	var out []nginxResult
	for _, r := range res {
		if !r.ok() {
			out = append(out, r)
		}
	}
	return out
}

func firstFewNginx(res []nginxResult, n int) string {
	var b strings.Builder
	for i, r := range res[:min(n, len(res))] {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s %s", r.method, r.loadResult)
	}
	return b.String()
}

// summarize counts requests and failures by method, and failures by
// cause: "GET 0/812 failed, POST 1/811 failed (1 error: EOF)".
func summarize(res []nginxResult) string {
	total, failed := map[string]int{}, map[string]int{}
	causes := map[string]int{}
	for _, r := range res {
		total[r.method]++
		if !r.ok() {
			failed[r.method]++
			causes[r.method+" "+r.cause()]++
		}
	}
	var parts []string
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		parts = append(parts, fmt.Sprintf("%s %d/%d failed", m, failed[m], total[m]))
	}
	s := strings.Join(parts, ", ")
	if len(causes) > 0 {
		keys := slices.Collect(maps.Keys(causes))
		sort.Strings(keys)
		var cs []string
		for _, k := range keys {
			cs = append(cs, strconv.Itoa(causes[k])+" × "+k)
		}
		s += " (" + strings.Join(cs, "; ") + ")"
	}
	return s
}

// asLoadResults drops the method, for recovery; the results' want is
// already checked, so each becomes ok(""), or not.
func asLoadResults(res []nginxResult) []loadResult {
	out := make([]loadResult, len(res))
	for i, r := range res {
		out[i] = r.loadResult
		if r.ok() {
			out[i].body = ""
		} else if out[i].err == nil && out[i].status == http.StatusOK {
			out[i].status = 0 // a wrong body: not ok("")
		}
	}
	return out
}
