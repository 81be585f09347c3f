package e2e

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestEndpointURLs: the agent prints the URLs its endpoint is reachable
// at, as its edge tells them: with the development certificate, those of
// the front doors on this machine, which curl then reaches; with
// --public-url, the names under it. A TCP endpoint has none.
func TestEndpointURLs(t *testing.T) {
	e2e(t)
	up := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	e := startEdge(t)
	a := e.serve(t, "http", "foo", "127.0.0.1:"+up)
	line := a.waitLine(t, 0, "reachable at", contains("endpoint foo reachable at "))
	got := strings.TrimPrefix(line, "endpoint foo reachable at ")
	want := "http://foo.localhost:" + portOf(e.proxy) + "/, https://foo.pico.localhost:" + portOf(e.tls) + "/"
	if got != want {
		t.Fatalf("agent printed %q; want %q", line, "endpoint foo reachable at "+want)
	}
	for _, raw := range strings.Split(got, ", ") {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		body, status := curl(t, "--cacert", e.ca, "--resolve", u.Host+":127.0.0.1", raw)
		if status != http.StatusOK || body != "ok" {
			t.Errorf("curl %s: %d %q; want 200 ok", raw, status, body)
		}
	}

	t.Run("--public-url", func(t *testing.T) {
		e := startEdge(t, "--public-url", "https://example.com,http://tunnel.example.net:8080")
		a := e.serve(t, "http", "web", "127.0.0.1:"+up)
		a.waitLine(t, 0, "reachable at", contains("endpoint web reachable at https://web.example.com/, http://web.tunnel.example.net:8080/"))
		tcp := e.serve(t, "tcp", "db", "127.0.0.1:"+up)
		if strings.Contains(strings.Join(tcp.output(), "\n"), "reachable at") {
			t.Errorf("a TCP endpoint got URLs:\n%s", strings.Join(tcp.output(), "\n"))
		}
	})
}
