package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pico-edge/pico/quicutil"
)

// bin holds the paths of the binaries TestMain built.
var bin struct{ edge, agent string }

// TestMain builds pico-edge and pico-agent once into a temporary directory
// (not under -short, where every test skips) and checks for leaked
// goroutines at the end. The binaries are built without -race even when the
// tests run with it: the race detector multiplies the edge's memory, which
// TestLargeBodies bounds, and slows the tunnel several times.
func TestMain(m *testing.M) {
	flag.Parse()
	var dir string
	if !testing.Short() {
		var err error
		dir, err = os.MkdirTemp("", "pico-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
			os.Exit(1)
		}
		cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
			"github.com/pico-edge/pico/cmd/pico-edge", "github.com/pico-edge/pico/cmd/pico-agent")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: go build:", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
		bin.edge = filepath.Join(dir, "pico-edge")
		bin.agent = filepath.Join(dir, "pico-agent")
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) {
		if dir != "" {
			os.RemoveAll(dir)
		}
	}))
}

// e2e skips t under -short.
func e2e(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped under -short")
	}
}

// knownBug skips t, describing a production bug the test found, unless
// PICO_E2E_KNOWN_BUGS=1 is set: then the test runs, and fails until the bug
// is fixed (remove the knownBug call with the fix).
func knownBug(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("PICO_E2E_KNOWN_BUGS") != "1" {
		t.Skip("BUG: " + what + " (run with PICO_E2E_KNOWN_BUGS=1 to see it fail)")
	}
}

// Ceilings for waits. They only bound failures: a passing run never waits
// for them, so they are generous for a loaded 2-core machine.
const (
	startTimeout = 30 * time.Second // a process to log that it is ready
	waitTimeout  = 30 * time.Second // any other condition
)

// ---------------------------------------------------------------------------
// Processes

// proc is a running binary whose combined stdout and stderr is read line by
// line, so tests can wait for what it logs.
type proc struct {
	name string
	cmd  *exec.Cmd

	mu     sync.Mutex // guards the fields below
	lines  []string
	grew   chan struct{} // closed and replaced when a line comes or the process ends
	ended  bool
	state  *os.ProcessState
	waitEr error

	exited chan struct{} // closed when the process has been waited for
}

// startProc starts path with args. Cleanup kills it (by PID) and waits for
// it; when the test failed, its output goes to the test log.
func startProc(t testing.TB, name, path string, args ...string) *proc {
	t.Helper()
	return startProcEnv(t, name, nil, path, args...)
}

// startProcEnv is startProc with env (KEY=value) added to cleanEnv.
func startProcEnv(t testing.TB, name string, env []string, path string, args ...string) *proc {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatalf("pipe: %v", err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.Env = append(cleanEnv(), env...)
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	pw.Close()
	p := &proc{name: name, cmd: cmd, grew: make(chan struct{}), exited: make(chan struct{})}
	go p.read(pr) // ends at EOF, when the process has exited
	t.Cleanup(func() {
		p.kill()
		select {
		case <-p.exited:
		case <-time.After(waitTimeout):
			t.Errorf("%s (pid %d) still running %s after SIGKILL", name, cmd.Process.Pid, waitTimeout)
		}
		if t.Failed() {
			t.Logf("output of %s (pid %d, %s):\n%s", name, cmd.Process.Pid, p.exitStatus(), strings.Join(p.output(), "\n"))
		}
	})
	return p
}

// cleanEnv is the test's environment without PICO_* variables (which both
// commands read) and proxies.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "PICO_"), strings.EqualFold(k, "http_proxy"), strings.EqualFold(k, "https_proxy"), strings.EqualFold(k, "all_proxy"):
			continue
		}
		env = append(env, kv)
	}
	return env
}

func (p *proc) read(r *os.File) {
	defer close(p.exited)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		p.mu.Lock()
		p.lines = append(p.lines, sc.Text())
		close(p.grew)
		p.grew = make(chan struct{})
		p.mu.Unlock()
	}
	io.Copy(io.Discard, r) // after a line too long for the scanner
	r.Close()
	err := p.cmd.Wait()
	p.mu.Lock()
	p.ended, p.state, p.waitEr = true, p.cmd.ProcessState, err
	close(p.grew)
	p.grew = make(chan struct{})
	p.mu.Unlock()
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// kill sends SIGKILL to the process (by PID); it is a no-op once it exited.
func (p *proc) kill() {
	if !p.hasExited() {
		p.cmd.Process.Kill()
	}
}

// signal sends sig to the process.
func (p *proc) signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s to %s: %v", sig, p.name, err)
	}
}

// killAndWait SIGKILLs the process and waits until it is gone.
func (p *proc) killAndWait(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill %s: %v", p.name, err)
	}
	p.waitExit(t, waitTimeout)
}

func (p *proc) hasExited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ended
}

// waitExit waits until the process exited, at most d, and returns its state.
func (p *proc) waitExit(t testing.TB, d time.Duration) *os.ProcessState {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(d):
		t.Fatalf("%s (pid %d) did not exit within %s", p.name, p.pid(), d)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

func (p *proc) exitStatus() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ended {
		return "running"
	}
	return p.state.String()
}

func (p *proc) output() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// mark returns the number of lines logged so far, for waitLine's from.
func (p *proc) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// waitLine waits for a line, from line number from on, that match accepts,
// and returns it. It fails when the process exits first or after
// waitTimeout.
func (p *proc) waitLine(t testing.TB, from int, what string, match func(string) bool) string {
	t.Helper()
	return p.waitLineFor(t, from, what, waitTimeout, match)
}

func (p *proc) waitLineFor(t testing.TB, from int, what string, d time.Duration, match func(string) bool) string {
	t.Helper()
	line, ok := p.tryWaitLine(t, from, what, d, match)
	if !ok {
		t.Fatalf("%s exited (%s) before logging %s", p.name, p.exitStatus(), what)
	}
	return line
}

// tryWaitLine is waitLineFor that reports, instead of failing, that the
// process exited before logging a matching line.
func (p *proc) tryWaitLine(t testing.TB, from int, what string, d time.Duration, match func(string) bool) (string, bool) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	next := from
	for {
		p.mu.Lock()
		lines := p.lines[min(next, len(p.lines)):]
		grew, ended := p.grew, p.ended
		p.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l, true
			}
		}
		next += len(lines)
		if ended {
			return "", false
		}
		select {
		case <-grew:
		case <-timer.C:
			t.Fatalf("%s logged no %s within %s", p.name, what, d)
		}
	}
}

// logLine is one JSON log line.
type logLine map[string]any

func parseLog(line string) (logLine, bool) {
	if !strings.HasPrefix(line, "{") {
		return nil, false
	}
	var l logLine
	if json.Unmarshal([]byte(line), &l) != nil {
		return nil, false
	}
	return l, true
}

func (l logLine) str(key string) string {
	s, _ := l[key].(string)
	return s
}

// isMsg matches JSON log lines with message msg whose attributes contain
// the given key/value substrings.
func isMsg(msg string, kv ...string) func(string) bool {
	return func(line string) bool {
		l, ok := parseLog(line)
		if !ok || l.str("msg") != msg {
			return false
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if !strings.Contains(fmt.Sprint(l[kv[i]]), kv[i+1]) {
				return false
			}
		}
		return true
	}
}

func contains(sub string) func(string) bool {
	return func(line string) bool { return strings.Contains(line, sub) }
}

// ---------------------------------------------------------------------------
// Edge and agents

// transport is how the harness's agents link to the edge: pico-agent's
// --transport.
type transport string

const (
	overQUIC transport = "quic" // QUIC over UDP
	overTCP  transport = "tcp"  // the same QUIC link inside an upgraded TCP connection
)

// forEachTransport runs f once per transport, as the subtests "quic" and
// "tcp": the cases a transport can change share one body. f starts its
// edges and agents with the transport it is given (edgeProc.over,
// testCluster.over), and the harness checks that their links use it.
func forEachTransport(t *testing.T, f func(t *testing.T, tr transport)) {
	t.Helper()
	for _, tr := range []transport{overQUIC, overTCP} {
		t.Run(string(tr), func(t *testing.T) { f(t, tr) })
	}
}

// edgeProc is a running pico-edge.
type edgeProc struct {
	*proc
	tr      transport // of the agents the harness starts against it; "": pico-agent's default
	tcpOff  bool      // it logged that the agent port takes no TCP links (its TCP twin was taken)
	dataDir string
	proxy   string // host:port of the HTTP front door
	agent   string // host:port of the QUIC agent listener
	admin   string // host:port of the admin API
	tls     string // host:port of the HTTPS front door (HTTP/3 on the same UDP port)
	pass    string // host:port of the TLS passthrough door, "" without --passthrough-addr
	ca      string // the development CA agents verify it with
	admc    *http.Client
}

// startEdge runs pico-edge on 127.0.0.1 with ephemeral ports and a fresh
// data directory, and waits until it is ready.
func startEdge(t testing.TB, extra ...string) *edgeProc {
	t.Helper()
	return startEdgeAt(t, t.TempDir(), extra...)
}

// edgeAddrFlags are the listener flags startEdgeAt sets to 127.0.0.1:0
// unless extra sets them.
var edgeAddrFlags = []string{"--proxy-addr", "--agent-addr", "--admin-addr", "--proxy-tls-addr", "--gossip-addr"}

// startEdgeAt is startEdge with data directory dir (a node restarted with
// the same dir and flags keeps its CA, keys and, with fixed ports in extra,
// its addresses). Listener flags that extra lacks get 127.0.0.1:0.
func startEdgeAt(t testing.TB, dir string, extra ...string) *edgeProc {
	t.Helper()
	args := []string{"--data-dir", dir}
	for _, f := range edgeAddrFlags {
		if !slices.ContainsFunc(extra, func(a string) bool { return a == f || strings.HasPrefix(a, f+"=") }) {
			args = append(args, f, "127.0.0.1:0")
		}
	}
	args = append(append(args, "--log-format", "json"), extra...)
	p := startProc(t, "pico-edge", bin.edge, args...)
	line := p.waitLineFor(t, 0, `"edge node ready"`, startTimeout, isMsg("edge node ready"))
	l, _ := parseLog(line)
	e := &edgeProc{proc: p, dataDir: dir, proxy: l.str("proxy_addr"), agent: l.str("agent_addr"),
		admin: l.str("admin_addr"), tls: l.str("proxy_tls_addr"), pass: l.str("passthrough_addr"), ca: filepath.Join(dir, "ca.pem"), admc: newClient(t, 10*time.Second)}
	if e.proxy == "" || e.agent == "" || e.admin == "" {
		t.Fatalf("edge ready line lacks an address: %s", line)
	}
	e.tcpOff = slices.ContainsFunc(p.output(), contains("agent links over TCP are off"))
	if _, err := os.Stat(e.ca); err != nil && !slices.Contains(extra, "--tls-cert") {
		t.Fatalf("development CA: %v", err)
	}
	return e
}

// over makes the agents the harness starts against e (startAgent, serve,
// forward, agentFlags) link over tr, and returns e.
func (e *edgeProc) over(t testing.TB, tr transport) *edgeProc {
	t.Helper()
	e.tr = tr
	if tr == overTCP && e.tcpOff {
		t.Logf("the agent port's TCP twin was taken: agents link over TCP through the front door's %s", quicutil.AgentPath)
	}
	return e
}

// agentFlags are the global flags of a pico-agent against e: its --edge
// and --ca, and --transport when over set one. Over TCP, --edge is the
// agent port (TCP on the UDP port's number), or the plain front door's
// URL when that port's TCP twin was taken.
func (e *edgeProc) agentFlags(ca string) []string {
	return append([]string{"--edge", e.agentEdge(e.tr), "--ca", ca}, transportFlag(e.tr)...)
}

// agentEdge is e's address for pico-agent's --edge over tr.
func (e *edgeProc) agentEdge(tr transport) string {
	if tr == overTCP && e.tcpOff {
		return "http://" + e.proxy + quicutil.AgentPath
	}
	return e.agent
}

// transportFlag is pico-agent's --transport tr, or nothing for "".
func transportFlag(tr transport) []string {
	if tr == "" {
		return nil
	}
	return []string{"--transport", string(tr)}
}

// startAgent runs pico-agent against e with args after the global flags.
func (e *edgeProc) startAgent(t testing.TB, args ...string) *proc {
	t.Helper()
	return e.startAgentCA(t, e.ca, args...)
}

func (e *edgeProc) startAgentCA(t testing.TB, ca string, args ...string) *proc {
	t.Helper()
	global := append(e.agentFlags(ca), "--log-format", "json")
	return startProc(t, "pico-agent "+strings.Join(args, " "), bin.agent, append(global, args...)...)
}

// serve runs `pico-agent KIND ID UPSTREAM` and waits until the endpoint is
// registered, over e's transport when over set one.
func (e *edgeProc) serve(t testing.TB, kind, id, upstream string) *proc {
	t.Helper()
	a := e.startAgent(t, kind, id, upstream)
	want := fmt.Sprintf("endpoint %s (%s) is registered", id, kind)
	line := a.waitLineFor(t, 0, strconv.Quote(want), startTimeout, contains(want))
	checkStatusLine(t, e.tr, line)
	e.checkLinks(t, 1)
	return a
}

// checkStatusLine checks that an agent's "is registered" line says "(over
// TCP)" exactly when its link is over TCP; tr "" checks nothing.
func checkStatusLine(t testing.TB, tr transport, line string) {
	t.Helper()
	if tr != "" && strings.Contains(line, "(over TCP)") != (tr == overTCP) {
		t.Errorf("the agent's status line %q: want the link over %s", line, tr)
	}
}

// checkLinks waits until e lists at least n agent links, and checks that
// every one of them is over e's transport (a no-op when over set none).
func (e *edgeProc) checkLinks(t testing.TB, n int) {
	t.Helper()
	if e.tr == "" {
		return
	}
	var s agentsStatus
	poll(t, waitTimeout, fmt.Sprintf("%d agent links on %s", n, e.admin), func() bool {
		s = e.agents(t)
		return len(s.Agents) >= n
	})
	for _, a := range s.Agents {
		if a.Transport != string(e.tr) {
			t.Errorf("/status/agents: agent %s (%v) is linked over %q, want %s", a.AgentID, a.Endpoints, a.Transport, e.tr)
		}
	}
}

// forward runs `pico-agent forward 127.0.0.1:0 ID` and returns it with the
// address it listens on; with a transport set by over, once its link is up.
func (e *edgeProc) forward(t testing.TB, id string) (*proc, string) {
	t.Helper()
	links := 0
	if e.tr != "" {
		links = len(e.agents(t).Agents)
	}
	a := e.startAgent(t, "forward", "127.0.0.1:0", id)
	suffix := " to endpoint " + id
	line := a.waitLineFor(t, 0, "forwarding line", startTimeout, func(l string) bool {
		return strings.HasPrefix(l, "forwarding ") && strings.HasSuffix(l, suffix)
	})
	addr := strings.TrimSuffix(strings.TrimPrefix(line, "forwarding "), suffix)
	if _, _, err := net.SplitHostPort(addr); err != nil {
		t.Fatalf("forward line %q: %v", line, err)
	}
	e.checkLinks(t, links+1)
	return a, addr
}

// agentsStatus is /status/agents.
type agentsStatus struct {
	NodeID string `json:"node_id"`
	Agents []struct {
		AgentID   string   `json:"agent_id"`
		Endpoints []string `json:"endpoints"`
		Transport string   `json:"transport"` // quic or tcp
	} `json:"agents"`
}

// endpointsStatus is /status/endpoints.
type endpointsStatus struct {
	Endpoints []struct {
		ID       string   `json:"id"`
		Protocol string   `json:"protocol"`
		Agents   []string `json:"agents"`
	} `json:"endpoints"`
}

// adminJSON GETs path on the admin port into v.
func (e *edgeProc) adminJSON(t testing.TB, path string, v any) {
	t.Helper()
	resp, err := e.admc.Get("http://" + e.admin + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", path, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

func (e *edgeProc) agents(t testing.TB) agentsStatus {
	t.Helper()
	var s agentsStatus
	e.adminJSON(t, "/status/agents", &s)
	return s
}

// endpointAgents returns how many agents serve id.
func (e *edgeProc) endpointAgents(t testing.TB, id string) int {
	t.Helper()
	var s endpointsStatus
	e.adminJSON(t, "/status/endpoints", &s)
	for _, ep := range s.Endpoints {
		if ep.ID == id {
			return len(ep.Agents)
		}
	}
	return 0
}

// waitEndpointAgents polls /status/endpoints until n agents serve id.
func (e *edgeProc) waitEndpointAgents(t testing.TB, id string, n int, d time.Duration) {
	t.Helper()
	poll(t, d, fmt.Sprintf("%d agents on endpoint %q", n, id), func() bool { return e.endpointAgents(t, id) == n })
}

// waitRoute polls /status/endpoints until an agent serves id. Tests call
// it before using an endpoint some time after registering it: on a starved
// machine an agent link can time out (5s without a packet) and come back,
// and the endpoint is unroutable in between.
func (e *edgeProc) waitRoute(t testing.TB, id string) {
	t.Helper()
	poll(t, waitTimeout, fmt.Sprintf("a route to endpoint %q", id), func() bool { return e.endpointAgents(t, id) > 0 })
}

// poll calls cond every 20ms until it returns true, at most for d. The
// condition is the synchronisation; the tick only paces the polling.
func poll(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if cond() {
		return
	}
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if cond() {
				return
			}
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

// ---------------------------------------------------------------------------
// Clients and upstreams

// newClient returns an HTTP/1.1 client with its own transport, closed in
// cleanup.
func newClient(t testing.TB, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: timeout}
}

// request sends one request to the edge's front door and reads the answer.
func (e *edgeProc) request(t testing.TB, c *http.Client, method, endpoint, path string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+e.proxy+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if endpoint != "" {
		req.Header.Set("X-Pico-Endpoint", endpoint)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s (endpoint %q): %v", method, path, endpoint, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s (endpoint %q): read body: %v", method, path, endpoint, err)
	}
	return resp, string(b)
}

// serveHTTP serves h on 127.0.0.1:0 and returns the port. Cleanup closes
// the server and waits for its handlers, which must return once their
// request's context ends.
func serveHTTP(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return serveHTTPOn(t, ln, h)
}

// serveHTTPOn is serveHTTP on listener ln.
func serveHTTPOn(t testing.TB, ln net.Listener, h http.Handler) string {
	t.Helper()
	var (
		handlers sync.WaitGroup
		mu       sync.RWMutex // guards closed, and handlers.Add against the Wait
		closed   bool
	)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.RLock()
			if closed { // a connection the server took just before Close
				mu.RUnlock()
				http.Error(w, "test upstream closed", http.StatusServiceUnavailable)
				return
			}
			handlers.Add(1)
			mu.RUnlock()
			defer handlers.Done()
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: waitTimeout,
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
		mu.Lock()
		closed = true
		mu.Unlock()
		waitGroupFor(t, &handlers, waitTimeout, "upstream handlers")
	})
	return portOf(ln.Addr().String())
}

// waitGroupFor waits for wg at most d.
func waitGroupFor(t testing.TB, wg *sync.WaitGroup, d time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Errorf("%s still running %s after cleanup", what, d)
	}
}

// serveTCP accepts connections on 127.0.0.1:0 and runs handle for each;
// cleanup closes the listener and every connection and waits for handlers.
func serveTCP(t testing.TB, handle func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		waitGroupFor(t, &wg, waitTimeout, "TCP upstream")
	})
	return portOf(ln.Addr().String())
}

// freePort returns a port on 127.0.0.1 that nothing listens on now, for a
// server that needs its port on the command line. Another process may take
// it first: callers retry.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	port := portOf(ln.Addr().String())
	ln.Close()
	return port
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// runCmd runs a short command (curl, redis-cli, a binary with --help) with
// stdin and returns its combined output and exit code. It fails the test
// only when the command cannot run or runs out of time.
func runCmd(t testing.TB, stdin io.Reader, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = cleanEnv()
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: timed out after %s:\n%s", name, strings.Join(args, " "), 2*waitTimeout, out)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(out), 0
}

// needCommand skips t when name is not in PATH.
func needCommand(t testing.TB, name, why string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not in PATH (%s); install it to run this test", name, why)
	}
	return path
}

// vmHWM returns the peak resident set size of process pid in bytes.
func vmHWM(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status of pid %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}
