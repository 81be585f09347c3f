package edge_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// TestDashboard fetches the admin port's web page: HTML with the elements
// the script fills, a Content-Security-Policy that allows exactly its own
// inline script and style, and a script that never parses data as HTML.
func TestDashboard(t *testing.T) {
	n := edgetest.NewNode(t)
	c := edgetest.Client(t)
	req, _ := http.NewRequest("GET", n.AdminURL+"/", nil)
	resp, page := do(t, c, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: status %d, want 200", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type = %q, want text/html; charset=utf-8", ct)
	}
	for _, id := range []string{"node-id", "ready", "updated", "error", "nodes", "endpoints", "traffic",
		"rate", "error-rate", "active-streams", "requests-total", "sparkline", "agents", "version"} {
		if !strings.Contains(page, `id="`+id+`"`) {
			t.Errorf("page lacks the element id=%q", id)
		}
	}
	for _, path := range []string{"/status/members", "/status/endpoints", "/status/traffic", "/status/agents", "/status/node", "/readyz"} {
		if !strings.Contains(page, `"`+path+`"`) {
			t.Errorf("page does not fetch %s", path)
		}
	}
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if strings.Contains(page, sink) {
			t.Errorf("page uses %s: render data with textContent", sink)
		}
	}

	csp := resp.Header.Get("Content-Security-Policy")
	for _, tag := range []string{"script", "style"} {
		_, rest, _ := strings.Cut(page, "<"+tag+">")
		body, _, ok := strings.Cut(rest, "</"+tag+">")
		if !ok {
			t.Fatalf("page has no <%s> element", tag)
		}
		if strings.Count(page, "<"+tag) != 1 {
			t.Errorf("page has %d <%s> elements, want 1 (the CSP allows one by its hash)", strings.Count(page, "<"+tag), tag)
		}
		sum := sha256.Sum256([]byte(body))
		want := tag + "-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("X-Content-Type-Options = %q, want nosniff", got)
	}

	// Only / is the page; other paths stay 404.
	req, _ = http.NewRequest("GET", n.AdminURL+"/index.html", nil)
	if resp, _ := do(t, c, req); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /index.html: status %d, want 404", resp.StatusCode)
	}
}

// TestTrafficStatus checks /status/traffic, the counters the dashboard
// differences into rates, against requests of known outcome.
func TestTrafficStatus(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	c := edgetest.Client(t)
	for range 3 {
		if resp, _ := do(t, c, n.Request(t, "GET", "foo", "/", nil)); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET via foo: status %d", resp.StatusCode)
		}
	}
	if resp, _ := do(t, c, n.Request(t, "GET", "nobody-serves-this", "/", nil)); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("GET via an unknown endpoint: status %d, want 502", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", n.AdminURL+"/status/traffic", nil)
	resp, body := do(t, c, req)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /status/traffic: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var got struct {
		NodeID    string                       `json:"node_id"`
		TimeMS    int64                        `json:"time_ms"`
		Requests  map[string]map[string]uint64 `json:"requests"`
		Endpoints map[string]map[string]uint64 `json:"endpoints"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	if got.NodeID != n.Server.NodeID() || got.TimeMS == 0 {
		t.Errorf("node_id %q time_ms %d, want %q and a time", got.NodeID, got.TimeMS, n.Server.NodeID())
	}
	want := map[string]map[string]uint64{
		"http1": {"error": 0, "1xx": 0, "2xx": 3, "3xx": 0, "4xx": 0, "5xx": 1},
		"http2": {"error": 0, "1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0},
		"http3": {"error": 0, "1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0},
	}
	if g := got.Endpoints["foo"]; g["2xx"] != 3 || g["5xx"] != 0 || len(got.Endpoints) != 1 {
		t.Errorf("endpoints = %v, want foo with 3 2xx (an unknown endpoint gets no series)", got.Endpoints)
	}
	for proto, classes := range want {
		for class, n := range classes {
			if g := got.Requests[proto][class]; g != n {
				t.Errorf("requests[%s][%s] = %d, want %d", proto, class, g, n)
			}
		}
	}
}
