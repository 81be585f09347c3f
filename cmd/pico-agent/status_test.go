package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/auth"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main() // the test binary as the command: see runMain
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait on a condition.
const waitTimeout = 20 * time.Second

// The status lines say where each endpoint is registered, once per change,
// and name the upstream on the first line that says it is registered.
func TestStatusLines(t *testing.T) {
	ep := func(nodes []string, refusals map[string]string, streams uint64) agent.EndpointStatus {
		return agent.EndpointStatus{ID: "web", Kind: "http", Nodes: nodes, Refusals: refusals, Streams: streams}
	}
	links := func(n int) []agent.LinkStatus { return make([]agent.LinkStatus, n) }
	type step struct {
		st   agent.Status
		want string // the lines printed, "" for none
		err  string // the error update returns, if any
	}
	tests := map[string][]step{
		"registered, moved, lost, back": {
			{agent.Status{Links: links(2), Endpoints: []agent.EndpointStatus{ep([]string{"node-1"}, nil, 0)}},
				"endpoint web (http) is registered on node-1: forwarding to localhost:3000 (http)\n", ""},
			{agent.Status{Links: links(2), Endpoints: []agent.EndpointStatus{ep([]string{"node-1"}, nil, 5)}}, "", ""},
			{agent.Status{Links: links(2), Endpoints: []agent.EndpointStatus{ep([]string{"node-1", "node-2"}, nil, 5)}},
				"endpoint web (http) is registered on node-1, node-2 (5 streams served)\n", ""},
			{agent.Status{Links: links(0), Endpoints: []agent.EndpointStatus{ep([]string{}, nil, 7)}},
				"endpoint web (http) is not registered on any edge node: no link to the edge; reconnecting (7 streams served)\n", ""},
			{agent.Status{Links: links(1), Endpoints: []agent.EndpointStatus{ep([]string{}, nil, 7)}}, "", ""}, // registering
			{agent.Status{Links: links(1), Endpoints: []agent.EndpointStatus{ep([]string{"node-3"}, nil, 7)}},
				"endpoint web (http) is registered on node-3 (7 streams served)\n", ""},
		},
		"refused by one node": {
			{agent.Status{Links: links(2), Endpoints: []agent.EndpointStatus{ep([]string{"node-1"}, map[string]string{"node-2": "conflict"}, 0)}},
				"endpoint web (http) is registered on node-1: forwarding to localhost:3000 (http); node-2 refused it: conflict\n", ""},
		},
		"refused everywhere": {
			{agent.Status{Links: links(1), Endpoints: []agent.EndpointStatus{ep([]string{"node-1"}, nil, 0)}},
				"endpoint web (http) is registered on node-1: forwarding to localhost:3000 (http)\n", ""},
			{agent.Status{Links: links(2), Endpoints: []agent.EndpointStatus{ep([]string{}, map[string]string{"node-2": "forbidden: no", "node-1": "withdrawn"}, 0)}},
				"", "endpoint web (http) is refused by every edge node the agent is linked to (node-1, node-2): withdrawn"},
		},
		"other endpoints are not ours": {
			{agent.Status{Links: links(1), Endpoints: []agent.EndpointStatus{{ID: "api", Nodes: []string{"node-1"}}}}, "", ""},
		},
	}
	for name, steps := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			p := newStatusLines(&out, "http")
			p.add("web", "localhost:3000 (http)")
			for i, s := range steps {
				out.Reset()
				err := p.update(s.st)
				if got := out.String(); got != s.want {
					t.Errorf("step %d: printed %q, want %q", i, got, s.want)
				}
				if (err == nil) != (s.err == "") || err != nil && err.Error() != s.err {
					t.Errorf("step %d: err = %v, want %q", i, err, s.err)
				}
			}
		})
	}
}

// syncBuffer collects the lines a command prints, for tests to wait on.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{changed: make(chan struct{})} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.changed)
	b.changed = make(chan struct{})
	return b.buf.Write(p)
}

func (b *syncBuffer) lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Split(strings.TrimSuffix(b.buf.String(), "\n"), "\n")
}

// waitLine waits for a line that match accepts, and returns it.
func (b *syncBuffer) waitLine(t *testing.T, what string, match func(string) bool) string {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		b.mu.Lock()
		changed := b.changed
		b.mu.Unlock()
		for _, l := range b.lines() {
			if match(l) {
				return l
			}
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no line with %s (waited %s); output:\n%s", what, waitTimeout, strings.Join(b.lines(), "\n"))
		}
	}
}

func hasPrefix(p string) func(string) bool {
	return func(l string) bool { return strings.HasPrefix(l, p) }
}

// running is a command run by start.
type running struct {
	out  *syncBuffer
	done chan struct{} // closed when run returned; err is set then
	err  error
}

// wait waits until the command returns by itself, and returns its error.
func (r *running) wait(t *testing.T, what string) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(waitTimeout):
		t.Fatalf("the command still runs (waited %s for %s); output:\n%s", waitTimeout, what, strings.Join(r.out.lines(), "\n"))
		return nil
	}
}

// start runs a command's run until the test ends.
func start(t *testing.T, run func(ctx context.Context, out io.Writer) error) *running {
	t.Helper()
	r := &running{out: newSyncBuffer(), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(r.done)
		r.err = run(ctx, r.out)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(waitTimeout):
			t.Errorf("the command did not return within %s of its end", waitTimeout)
		}
	})
	return r
}

// caFile writes the CA of b to a file for --ca.
func caFile(t *testing.T, b *certs.Bundle) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(file, b.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := edgetest.Client(t)
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// pico-agent http with two links prints where its endpoint is registered
// as that changes, and serves /status, /metrics, /healthz and /readyz on
// --admin-addr.
func TestServeStatusAndAdmin(t *testing.T) {
	b, err := certs.Generate()
	if err != nil {
		t.Fatal(err)
	}
	n1 := edgetest.NewNodeOn(t, "127.0.0.1:0", b, func(c *edge.Config) { c.NodeID = "node-1" })
	n2 := edgetest.NewNodeOn(t, "127.0.0.1:0", b, func(c *edge.Config) { c.NodeID = "node-2" })
	up := edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }))
	g := &Globals{Edge: n1.AgentAddr + "," + n2.AgentAddr, CA: caFile(t, b), AdminAddr: "127.0.0.1:0"}
	cmd := &ServeCmd{Pairs: []string{"web", up}}
	out := start(t, func(ctx context.Context, out io.Writer) error {
		return cmd.run(ctx, g, edgetest.Logger(t), quicutil.KindHTTP, out)
	}).out

	first := out.waitLine(t, "the first status line", hasPrefix("endpoint web (http) is registered on "))
	if !strings.HasSuffix(first, ": forwarding to "+up+" (http)") {
		t.Fatalf("first line %q does not name the upstream %s", first, up)
	}
	out.waitLine(t, "both nodes", hasPrefix("endpoint web (http) is registered on node-1, node-2"))
	admin := strings.TrimPrefix(out.waitLine(t, "the admin address", hasPrefix("admin API on http://")), "admin API on ")
	admin = strings.TrimSuffix(admin, ": /metrics, /status, /healthz, /readyz")

	client := edgetest.Client(t)
	for range 3 {
		resp, err := client.Do(n1.Request(t, "GET", "web", "/", nil))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "hello" {
			t.Fatalf("GET web: %d %q, want 200 hello", resp.StatusCode, body)
		}
	}

	var st agent.Status
	code, body := httpGet(t, admin+"/status")
	if err := json.Unmarshal([]byte(body), &st); err != nil || code != 200 {
		t.Fatalf("/status: %d %q: %v", code, body, err)
	}
	if len(st.Links) != 2 || len(st.Endpoints) != 1 || st.Endpoints[0].ID != "web" ||
		!slices.Equal(st.Endpoints[0].Nodes, []string{"node-1", "node-2"}) || st.Endpoints[0].Streams == 0 {
		t.Fatalf("/status = %s, want web on node-1 and node-2, with streams", body)
	}
	code, body = httpGet(t, admin+"/metrics")
	for _, want := range []string{
		"pico_agent_links 2\n",
		"pico_agent_endpoints 1\n",
		`pico_agent_endpoint_nodes{endpoint="web"} 2` + "\n",
		fmt.Sprintf(`pico_agent_streams_total{endpoint="web"} %d`, st.Endpoints[0].Streams) + "\n",
		`pico_agent_upstream_dial_errors_total{endpoint="web"} 0` + "\n",
		`pico_agent_link_rtt_seconds{node="node-2"} `,
		"pico_agent_reconnects_total 0\n",
		"go_goroutines ",
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %q:\n%s", code, want, body)
		}
	}
	if code, body := httpGet(t, admin+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := httpGet(t, admin+"/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}

	n2.Stop(t)
	out.waitLine(t, "node-1 only", func(l string) bool {
		return strings.HasPrefix(l, "endpoint web (http) is registered on node-1 (") && strings.HasSuffix(l, " streams served)")
	})
}

// An endpoint that the agent's new token no longer allows is withdrawn by
// its only node: pico-agent ends with the edge's reason instead of
// serving nothing.
func TestServeExitsWhenWithdrawn(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) {
		c.NodeID = "solo"
		c.Auth = &auth.Config{HMACSecret: testSecret, Leeway: time.Second}
	})
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(mint(t, time.Now().Add(time.Hour), "web")), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &Globals{Edge: n.AgentAddr, CA: caFile(t, n.Bundle), TokenFile: file}
	cmd := &ServeCmd{Pairs: []string{"web", edgetest.ClosedPort(t)}}
	r := start(t, func(ctx context.Context, out io.Writer) error {
		return cmd.run(ctx, g, edgetest.Logger(t), quicutil.KindHTTP, out)
	})
	r.out.waitLine(t, "registered", hasPrefix("endpoint web (http) is registered on solo"))
	if err := os.WriteFile(file, []byte(mint(t, time.Now().Add(time.Hour), "other")), 0o600); err != nil {
		t.Fatal(err)
	}
	err := r.wait(t, "the endpoint withdrawn")
	want := `endpoint web (http) is refused by every edge node the agent is linked to (solo): edge ` + n.AgentAddr + ` withdrew endpoint "web"`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("run = %v, want an error saying %q", err, want)
	}
}

// A forward that the edge refuses because the token does not allow the
// endpoint ends pico-agent forward with the reason: no other connection
// could fare better.
func TestForwardExitsWhenForbidden(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) {
		c.Auth = &auth.Config{HMACSecret: testSecret, Leeway: time.Second, ProxyAuth: true}
	})
	g := &Globals{Edge: n.AgentAddr, CA: caFile(t, n.Bundle), Token: mint(t, time.Now().Add(time.Hour), "free")}
	cmd := &ForwardCmd{Local: "127.0.0.1:0", Endpoint: "db"}
	r := start(t, func(ctx context.Context, out io.Writer) error {
		return cmd.run(ctx, g, edgetest.Logger(t), out)
	})
	line := r.out.waitLine(t, "the forwarding line", hasPrefix("forwarding "))
	addr := strings.TrimSuffix(strings.TrimPrefix(line, "forwarding "), " to endpoint db")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("read: %d bytes, %v; want the connection closed", n, err)
	}
	err = r.wait(t, "the forbidden forward")
	want := `the edge refused the forward to endpoint db (forbidden): token does not allow endpoint "db"`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("run = %v, want an error saying %q", err, want)
	}
}
