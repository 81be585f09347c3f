package edge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// logBuffer collects JSON log lines; safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func TestAccessLogFields(t *testing.T) {
	var logs logBuffer
	n := edgetest.NewNode(t, func(c *edge.Config) {
		c.AccessLog = slog.New(slog.NewJSONHandler(&logs, nil))
		c.AccessLogOff = map[string]bool{"quiet": true}
	})
	a := n.NewAgent(t)
	up := edgetest.Upstream(t, echoHeaders())
	for _, id := range []string{"foo", "quiet"} {
		if err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, up); err != nil {
			t.Fatal(err)
		}
	}
	c := edgetest.Client(t)
	req := n.Request(t, "POST", "foo", "/path?token=secret", strings.NewReader("twelve bytes"))
	req.Header.Set("Authorization", "Bearer secret")
	do(t, c, req)
	do(t, c, n.Request(t, "GET", "quiet", "/", nil))
	do(t, c, n.Request(t, "GET", "nobody", "/", nil))

	lines := logs.lines(t, "request")
	if len(lines) != 2 {
		t.Fatalf("%d request lines, want 2 (foo and the unknown endpoint; quiet is off): %v", len(lines), lines)
	}
	l := lines[0]
	for k, want := range map[string]any{"endpoint_id": "foo", "method": "POST", "path": "/path", "status": 200.0,
		"bytes_in": 12.0, "served_by": n.Server.NodeID(), "node_id": n.Server.NodeID(), "agent_id": a.ID()} {
		if l[k] != want {
			t.Errorf("%s = %v, want %v (line %v)", k, l[k], want, l)
		}
	}
	if _, ok := l["upstream_ttfb"]; !ok {
		t.Errorf("no upstream_ttfb in %v", l)
	}
	all, _ := json.Marshal(lines)
	if strings.Contains(string(all), "secret") {
		t.Fatalf("a secret was logged: %s", all)
	}
	if lines[1]["status"] != 502.0 || lines[1]["err"] == nil {
		t.Fatalf("unknown endpoint line: %v", lines[1])
	}
}

func TestAccessLogSampling(t *testing.T) {
	var logs logBuffer
	n := edgetest.NewNode(t, func(c *edge.Config) {
		c.AccessLog = slog.New(slog.NewJSONHandler(&logs, nil))
		c.AccessLogSample = 0.1
	})
	serve(t, n, "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	c := edgetest.Client(t)
	for range 400 {
		do(t, c, n.Request(t, "GET", "foo", "/", nil))
	}
	for range 5 { // errors are always logged
		do(t, c, n.Request(t, "GET", "nobody", "/", nil))
	}
	ok, errs := 0, 0
	for _, l := range logs.lines(t, "request") {
		if l["status"] == 200.0 {
			ok++
		} else {
			errs++
		}
	}
	// 10 % of 400: the chance of fewer than 10 or more than 80 is below 1e-6.
	if ok < 10 || ok > 80 || errs != 5 {
		t.Fatalf("logged %d of 400 successes and %d of 5 errors at a 10%% sample", ok, errs)
	}
}

func TestEndpointMetricsAreCapped(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.MaxEndpointsPerAgent = 1000; c.RegistrationsPerSecond = 10000 })
	a := n.NewAgent(t)
	up := edgetest.Upstream(t, echoHeaders())
	c := edgetest.Client(t)
	const eps = 510 // more than the cap of 500 series
	ids := make([]string, eps)
	for i := range ids {
		ids[i] = fmt.Sprintf("m%d", i)
	}
	registerEachOn(t, a, ids, up)
	for _, id := range ids {
		do(t, c, n.Request(t, "GET", id, "/", nil))
	}
	resp, err := http.Get(n.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	series := grepLines(string(b), `pico_endpoint_requests_total{endpoint="`)
	named := strings.Count(series+"\n", `code="2xx"} 1`+"\n")
	if !strings.Contains(series, `pico_endpoint_requests_total{endpoint="_other",code="2xx"} 10`) || named != 500 {
		t.Fatalf("%d endpoints with their own series (want 500) and _other:\n%s", named, grepLines(series, "_other"))
	}
	for _, want := range []string{"pico_upstream_ttfb_seconds_bucket", `pico_active_requests{proto="http1"}`,
		"pico_client_connections", "pico_gossip_state_bytes", "pico_agent_link_rtt_seconds_max"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// registerEachOn serves every id through a, in batches of one call each.
func registerEachOn(t *testing.T, a interface {
	ServeUpstream(ctx context.Context, id string, kind quicutil.Kind, upstream string) error
}, ids []string, up string) {
	t.Helper()
	for _, id := range ids {
		if err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, up); err != nil {
			t.Fatalf("serve %s: %v", id, err)
		}
	}
}

func (l *logBuffer) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.b.String(), s)
}

func TestAccessLogAcrossNodes(t *testing.T) {
	var owner, front logBuffer
	cl := edgetest.NewCluster(t, 1, func(c *edge.Config) { c.AccessLog = slog.New(slog.NewJSONHandler(&owner, nil)) })
	n1 := cl.Add(t, "node-1", func(c *edge.Config) { c.AccessLog = slog.New(slog.NewJSONHandler(&front, nil)) })
	cl.WaitMembers(t, 2)
	a := cl.Nodes[0].NewAgent(t, singleLink)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	n1.WaitRemote(t, "foo", 1)
	do(t, edgetest.Client(t), n1.Request(t, "GET", "foo", "/x", nil))

	req := front.lines(t, "request")
	if len(req) != 1 || req[0]["served_by"] != "node-0" || req[0]["node_id"] != "node-1" || req[0]["status"] != 200.0 {
		t.Fatalf("front node's line: %v", req)
	}
	// The relayed stream (a keep-alive one) ends when the front node
	// closes; then the owner logs it.
	n1.Server.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(owner.lines(t, "relayed stream")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the owner logged no relayed stream")
		}
		time.Sleep(10 * time.Millisecond)
	}
	rel := owner.lines(t, "relayed stream")[0]
	if rel["from_node"] != "node-1" || rel["agent_id"] != a.ID() || rel["endpoint_id"] != "foo" {
		t.Fatalf("owner's line: %v", rel)
	}
}

// "agent connected" waits for the agent's first registration, or a
// second: a link slot that only looks at which node it reached and leaves
// (its agent is linked to that node already) is logged at debug level,
// and a link that stays without registering (pico-agent forward) is
// logged after the second.
func TestAgentConnectedLogWaitsForRegistration(t *testing.T) {
	var logs logBuffer
	n := edgetest.NewNode(t, func(c *edge.Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	serve(t, n, "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	connected := func() int { return len(logs.lines(t, "agent connected")) }
	if got := connected(); got != 1 {
		t.Fatalf("%d \"agent connected\" lines after a registration, want 1", got)
	}

	probe := helloRaw(t, n, "")
	probe.CloseWithError(quicutil.ConnCodeNormal, "duplicate node")
	waitFor(t, "the probe's debug line", func() bool { return len(logs.lines(t, "agent connected and left before registering")) == 1 })
	if got, left := connected(), len(logs.lines(t, "agent disconnected")); got != 1 || left != 0 {
		t.Fatalf("after a probe: %d \"agent connected\" and %d \"agent disconnected\" lines, want 1 and 0", got, left)
	}

	helloRaw(t, n, "") // stays, registers nothing
	waitFor(t, "\"agent connected\" for a link that registers nothing", func() bool { return connected() == 2 })
}

// TestUpgradeLoggedAs101 checks that an upgraded connection is logged and
// counted with its 101 and the bytes it carried each way, not as status 0
// and counted as an error.
func TestUpgradeLoggedAs101(t *testing.T) {
	var logs logBuffer
	n := edgetest.NewNode(t, func(c *edge.Config) { c.AccessLog = slog.New(slog.NewJSONHandler(&logs, nil)) })
	serve(t, n, "ws", quicutil.KindHTTP, edgetest.Upstream(t, upgradeEcho()))
	conn, br := dialUpgrade(t, n, "ws")
	msg := strings.Repeat("x", 999) + "\n"
	for range 10 {
		io.WriteString(conn, msg)
		if got, err := br.ReadString('\n'); err != nil || got != msg {
			t.Fatalf("echo: %d bytes, %v", len(got), err)
		}
	}
	conn.Close()
	waitFor(t, "the upgrade's access-log line", func() bool { return len(logs.lines(t, "request")) == 1 })
	l := logs.lines(t, "request")[0]
	if l["status"] != 101.0 || l["bytes_in"] != 10000.0 || l["bytes_out"] != 10000.0 || l["err"] != nil {
		t.Fatalf("access log of an upgrade = %v; want status 101, bytes_in and bytes_out 10000, no err", l)
	}
	if got := metric(t, n, `pico_requests_total{proto="http1",code="1xx"}`); got != 1 {
		t.Fatalf(`pico_requests_total{proto="http1",code="1xx"} = %d, want 1`, got)
	}
	if got := metric(t, n, `pico_requests_total{proto="http1",code="error"}`); got != 0 {
		t.Fatalf(`pico_requests_total{proto="http1",code="error"} = %d, want 0`, got)
	}
}

// TestCutResponseLogged: an upstream that ends its response before the
// length it announced (it died mid-download) cuts the client's response:
// the access log says so, with the bytes sent, and the request counts as
// an error, on both the direct path and through ReverseProxy.
func TestCutResponseLogged(t *testing.T) {
	var logs logBuffer
	n := edgetest.NewNode(t, func(c *edge.Config) { c.AccessLog = slog.New(slog.NewJSONHandler(&logs, nil)) })
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000000")
		w.Write(make([]byte, 100000))
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close() // dies 100,000 bytes into 1,000,000
		}
	})
	serve(t, n, "cut", quicutil.KindHTTP, edgetest.Upstream(t, up))
	c := edgetest.Client(t)
	for _, body := range []io.Reader{nil, strings.NewReader(strings.Repeat("b", 100<<10))} { // direct, ReverseProxy
		resp, err := c.Do(n.Request(t, "POST", "cut", "/", body))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil || got >= 1000000 {
			t.Fatalf("client read %d bytes, err %v; want the response cut", got, err)
		}
	}
	waitFor(t, "two access-log lines", func() bool { return len(logs.lines(t, "request")) == 2 })
	for _, l := range logs.lines(t, "request") {
		err, _ := l["err"].(string)
		if l["status"] != 200.0 || !strings.Contains(err, "response cut after") || !strings.Contains(err, "the agent's side ended it") {
			t.Errorf("access log of a cut response = %v; want status 200 and an err saying it was cut by the agent's side", l)
		}
	}
	if got := metric(t, n, `pico_requests_total{proto="http1",code="error"}`); got != 2 {
		t.Fatalf(`pico_requests_total{proto="http1",code="error"} = %d, want 2`, got)
	}
}
