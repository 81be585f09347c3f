package edge_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// echoHeaders answers with the request's method, host and headers as JSON.
func echoHeaders() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"method": r.Method, "host": r.Host, "path": r.URL.Path, "header": r.Header, "body": string(body),
		})
	})
}

type echoed struct {
	Method string              `json:"method"`
	Host   string              `json:"host"`
	Path   string              `json:"path"`
	Header map[string][]string `json:"header"`
	Body   string              `json:"body"`
}

// asyncResult is what a request sent by doAsync got.
type asyncResult struct {
	status int
	body   string
	err    error
}

// doAsync sends req with c in a goroutine of its own; its result comes on
// the channel.
func doAsync(c *http.Client, req *http.Request) <-chan asyncResult {
	res := make(chan asyncResult, 1)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			res <- asyncResult{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- asyncResult{resp.StatusCode, string(b), err}
	}()
	return res
}

// sessionServing returns the link number of n's one agent link that
// serves endpoint id (from /status/agents).
func sessionServing(t *testing.T, n *edgetest.Node, id string) uint64 {
	t.Helper()
	var st struct {
		Agents []struct {
			Session   uint64   `json:"session"`
			Endpoints []string `json:"endpoints"`
		} `json:"agents"`
	}
	getJSON(t, n.AdminURL+"/status/agents", &st)
	var found []uint64
	for _, a := range st.Agents {
		for _, ep := range a.Endpoints {
			if strings.HasPrefix(ep, id+"/") {
				found = append(found, a.Session)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d agent links serve %q, want 1", len(found), id)
	}
	return found[0]
}

func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, string(b)
}

func serve(t *testing.T, n *edgetest.Node, id string, kind quicutil.Kind, upstream string) *agent.Agent {
	t.Helper()
	a := n.NewAgent(t)
	if err := a.ServeUpstream(t.Context(), id, kind, upstream); err != nil {
		t.Fatalf("serve %s: %v", id, err)
	}
	return a
}

func TestProxyByHeaderAndHost(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	c := edgetest.Client(t)

	tests := map[string]func(*http.Request){
		"header":            func(r *http.Request) { r.Header.Set("X-Pico-Endpoint", "foo") },
		"header upper case": func(r *http.Request) { r.Header.Set("X-Pico-Endpoint", "FOO") },
		"host":              func(r *http.Request) { r.Host = "foo.localhost:8000" },
		"host fqdn":         func(r *http.Request) { r.Host = "foo.pico.example.com." },
		"header beats host": func(r *http.Request) { r.Host = "bar.localhost"; r.Header.Set("X-Pico-Endpoint", "foo") },
	}
	for name, set := range tests {
		t.Run(name, func(t *testing.T) {
			req := n.Request(t, "GET", "", "/path?q=1", nil)
			set(req)
			resp, body := do(t, c, req)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status = %d, want 200 (body %q)", resp.StatusCode, body)
			}
			var e echoed
			if err := json.Unmarshal([]byte(body), &e); err != nil {
				t.Fatalf("decode %q: %v", body, err)
			}
			if e.Path != "/path" {
				t.Errorf("path = %q, want /path", e.Path)
			}
		})
	}
}

func TestForwardedAndHopHeaders(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	req := n.Request(t, "GET", "foo", "/", nil)
	req.Host = "foo.example.com"
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	req.Header.Set("X-Forwarded-Host", "evil.example")
	req.Header.Set("X-Pico-Secret", "x")
	req.Header.Set("Connection", "X-Custom-Hop")
	req.Header.Set("X-Custom-Hop", "1")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("X-Kept", "yes")
	resp, body := do(t, edgetest.Client(t), req)
	if resp.StatusCode != 200 {
		t.Fatalf("status = %d, want 200", resp.StatusCode)
	}
	var e echoed
	json.Unmarshal([]byte(body), &e)
	h := http.Header(e.Header)
	checks := map[string]struct{ got, want string }{
		"X-Forwarded-For":   {h.Get("X-Forwarded-For"), "127.0.0.1"},
		"X-Forwarded-Host":  {h.Get("X-Forwarded-Host"), "foo.example.com"},
		"X-Forwarded-Proto": {h.Get("X-Forwarded-Proto"), "http"},
		"X-Pico-Endpoint":   {h.Get("X-Pico-Endpoint"), ""},
		"X-Pico-Secret":     {h.Get("X-Pico-Secret"), ""},
		"X-Custom-Hop":      {h.Get("X-Custom-Hop"), ""},
		"Keep-Alive":        {h.Get("Keep-Alive"), ""},
		"X-Kept":            {h.Get("X-Kept"), "yes"},
		"Host":              {e.Host, "foo.example.com"},
		"Forwarded":         {h.Get("Forwarded"), "for=127.0.0.1;host=foo.example.com;proto=http"},
	}
	for name, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", name, c.got, c.want)
		}
	}
}

// Behind a trusted proxy, the forwarding chains it sent are kept and
// extended, and the protocol it saw stands.
func TestTrustedProxies(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} })
	serve(t, n, "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	req := n.Request(t, "GET", "foo", "/", nil)
	req.Host = "foo.example.com"
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	req.Header.Set("X-Forwarded-Proto", "https")
	req.Header.Set("Forwarded", "for=203.0.113.9;proto=https")
	_, body := do(t, edgetest.Client(t), req)
	var e echoed
	json.Unmarshal([]byte(body), &e)
	h := http.Header(e.Header)
	checks := map[string]struct{ got, want string }{
		"X-Forwarded-For":   {h.Get("X-Forwarded-For"), "203.0.113.9, 127.0.0.1"},
		"X-Forwarded-Proto": {h.Get("X-Forwarded-Proto"), "https"},
		"Forwarded":         {h.Get("Forwarded"), "for=203.0.113.9;proto=https, for=127.0.0.1;host=foo.example.com;proto=http"},
	}
	for name, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", name, c.got, c.want)
		}
	}
}

func TestErrors(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "down", quicutil.KindHTTP, edgetest.ClosedPort(t))
	serve(t, n, "raw", quicutil.KindTCP, edgetest.ClosedPort(t))
	c := edgetest.Client(t)
	tests := map[string]struct {
		endpoint, host, accept string
		status                 int
		body                   string
	}{
		"no endpoint":        {host: "127.0.0.1:8000", status: 400, body: "X-Pico-Endpoint"},
		"single-label host":  {host: "localhost:8000", status: 400, body: "no endpoint in the request"},
		"invalid header":     {endpoint: "Bad_Name", status: 400, body: "bad X-Pico-Endpoint header"},
		"invalid host label": {host: "bad_name.example.com", status: 400, body: "names no valid endpoint"},
		"unknown":            {endpoint: "nope", status: 502, body: `no upstream for endpoint "nope"`},
		"unknown json":       {endpoint: "nope", accept: "application/json", status: 502, body: `"error":"no upstream for endpoint \"nope\""`},
		"upstream down":      {endpoint: "down", status: 502, body: "could not reach upstream"},
		"tcp endpoint":       {endpoint: "raw", status: 502, body: "pico-agent forward"},
		"upstream down json": {endpoint: "down", accept: "application/json", status: 502, body: `"endpoint":"down"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			req := n.Request(t, "GET", tc.endpoint, "/", nil)
			if tc.host != "" {
				req.Host = tc.host
			}
			if tc.accept != "" {
				req.Header.Set("Accept", tc.accept)
			}
			resp, body := do(t, c, req)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.body) {
				t.Errorf("got %d %q, want %d containing %q", resp.StatusCode, body, tc.status, tc.body)
			}
		})
	}
}

func TestOversizedHeader(t *testing.T) {
	n := edgetest.NewNode(t)
	req := n.Request(t, "GET", "foo", "/", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 40<<10))
	resp, _ := do(t, edgetest.Client(t), req)
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status = %d, want 431", resp.StatusCode)
	}
}

func TestLoadBalancingAndRemoval(t *testing.T) {
	n := edgetest.NewNode(t)
	named := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
	}
	a1 := serve(t, n, "lb", quicutil.KindHTTP, edgetest.Upstream(t, named("one")))
	serve(t, n, "lb", quicutil.KindHTTP, edgetest.Upstream(t, named("two")))
	n.WaitRoute(t, "lb", 2)
	c := edgetest.Client(t)
	seen := map[string]int{}
	for range 200 {
		resp, body := do(t, c, n.Request(t, "GET", "lb", "/", nil))
		if resp.StatusCode != 200 {
			t.Fatalf("status = %d (%q), want 200", resp.StatusCode, body)
		}
		seen[body]++
	}
	if seen["one"] == 0 || seen["two"] == 0 {
		t.Fatalf("requests by upstream = %v, want both used", seen)
	}

	a1.Close() // leaves the table at once
	n.WaitRoute(t, "lb", 1)
	for range 20 {
		resp, body := do(t, c, n.Request(t, "GET", "lb", "/", nil))
		if resp.StatusCode != 200 || body != "two" {
			t.Fatalf("got %d %q, want 200 two", resp.StatusCode, body)
		}
	}
}

// An agent whose upstream is down answers so; the edge retries on another
// agent, also for a POST (its upstream never saw the request).
func TestRetryWhenUpstreamNeverReached(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "r", quicutil.KindHTTP, edgetest.ClosedPort(t))
	serve(t, n, "r", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	n.WaitRoute(t, "r", 2)
	c := edgetest.Client(t)
	for i := range 30 {
		payload := fmt.Sprintf("payload %d %s", i, strings.Repeat("x", i*1000))
		resp, body := do(t, c, n.Request(t, "POST", "r", "/", strings.NewReader(payload)))
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status = %d (%q), want 200", i, resp.StatusCode, body)
		}
		var e echoed
		json.Unmarshal([]byte(body), &e)
		if e.Body != payload {
			t.Fatalf("request %d: upstream got %d bytes, want %d", i, len(e.Body), len(payload))
		}
	}
}

// The agent's link dies (here: the operator evicts it) after its upstream
// sent part of a response head: a GET goes to another agent, since nothing
// reached the client yet and it may be sent twice; a POST gets its 502.
func TestIdempotentRequestRetriedWhenLinkDiesMidHead(t *testing.T) {
	const token = "admin-token"
	n := edgetest.NewNode(t, func(c *edge.Config) { c.AdminToken = token })
	for _, tc := range []struct {
		method string
		want   int
	}{{"GET", 200}, {"POST", 502}} {
		t.Run(tc.method, func(t *testing.T) {
			id := "mid-" + strings.ToLower(tc.method)
			// The first connection gets part of a head and then nothing;
			// later ones are answered.
			partial := make(chan struct{})
			first := make(chan bool, 1)
			first <- true
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			serveConns(t, ln, func(c net.Conn) {
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					select {
					case <-first:
						io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Partial: ")
						close(partial)
						io.Copy(io.Discard, c) // until the agent closes it
						return
					default:
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					}
				}
			})
			a := n.NewAgent(t, singleLink)
			if err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, ln.Addr().String()); err != nil {
				t.Fatal(err)
			}
			n.WaitRoute(t, id, 1)
			link := sessionServing(t, n, id)
			res := doAsync(edgetest.Client(t), n.Request(t, tc.method, id, "/", strings.NewReader("x")))
			<-partial
			time.Sleep(100 * time.Millisecond) // for the partial head to reach the edge
			serve(t, n, id, quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "ok")
			})))
			if code, body := adminDo(t, "DELETE", fmt.Sprintf("%s/admin/agents/%d", n.AdminURL, link), token); code != 200 {
				t.Fatalf("evict: %d %s", code, body)
			}
			r := <-res
			if r.status != tc.want {
				t.Fatalf("%s: %d %q %v, want %d", tc.method, r.status, r.body, r.err, tc.want)
			}
			if tc.want == 200 && r.body != "ok" {
				t.Fatalf("%s: body %q, want ok", tc.method, r.body)
			}
		})
	}
}

func TestLargeBodiesStream(t *testing.T) {
	n := edgetest.NewNode(t)
	const size = 64 << 20
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			got, err := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "%d %v", got, err)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(size))
		io.CopyN(w, zeros{}, size)
	})
	serve(t, n, "big", quicutil.KindHTTP, edgetest.Upstream(t, up))
	c := edgetest.Client(t)

	resp, err := c.Do(n.Request(t, "GET", "big", "/", nil))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || got != size {
		t.Fatalf("download: %d bytes, %v; want %d", got, err, size)
	}
	// Chunked upload of unknown length.
	req := n.Request(t, "POST", "big", "/", io.LimitReader(zeros{}, size))
	req.ContentLength = -1
	resp, body := do(t, c, req)
	if want := fmt.Sprintf("%d <nil>", size); resp.StatusCode != 200 || body != want {
		t.Fatalf("upload: got %d %q, want 200 %q", resp.StatusCode, body, want)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestServerSentEventsFlushAtOnce(t *testing.T) {
	n := edgetest.NewNode(t)
	release := make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: two\n\n")
	})
	serve(t, n, "sse", quicutil.KindHTTP, edgetest.Upstream(t, up))
	resp, err := edgetest.Client(t).Do(n.Request(t, "GET", "sse", "/", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n') // arrives before "two" is even written
	if err != nil || line != "data: one\n" {
		t.Fatalf("first line = %q, %v", line, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), "data: two") {
		t.Fatalf("rest = %q, want data: two", rest)
	}
}

// upgradeEcho answers an "Upgrade: echo" request with 101 and echoes bytes.
func upgradeEcho() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want upgrade", 400)
			return
		}
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "echo")
		w.WriteHeader(http.StatusSwitchingProtocols)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.Flush()
		io.Copy(conn, brw)
	})
}

func dialUpgrade(t *testing.T, n *edgetest.Node, id string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(n.ProxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", id)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d, want 101", resp.StatusCode)
	}
	return conn, br
}

func TestUpgrade(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "ws", quicutil.KindHTTP, edgetest.Upstream(t, upgradeEcho()))
	conn, br := dialUpgrade(t, n, "ws")
	for i := range 5 {
		msg := fmt.Sprintf("message %d\n", i)
		io.WriteString(conn, msg)
		got, err := br.ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("echo = %q, %v; want %q", got, err, msg)
		}
	}
}

func TestStreamIdleTimeout(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.StreamIdleTimeout = 300 * time.Millisecond })
	a := n.NewAgent(t, func(c *agent.Config) { c.StreamIdleTimeout = 300 * time.Millisecond })
	if err := a.ServeUpstream(t.Context(), "ws", quicutil.KindHTTP, edgetest.Upstream(t, upgradeEcho())); err != nil {
		t.Fatal(err)
	}
	conn, br := dialUpgrade(t, n, "ws")
	io.WriteString(conn, "hi\n")
	if got, _ := br.ReadString('\n'); got != "hi\n" {
		t.Fatalf("echo = %q", got)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second)) // a ceiling for failure, not an expectation
	_, err := br.ReadString('\n')                          // silent: the edge cuts the idle stream
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after 20s; want it cut after the 300ms idle timeout")
	}
}

func TestResponseHeaderTimeout(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.ResponseHeaderTimeout = 200 * time.Millisecond })
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	serve(t, n, "slow", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})))
	resp, body := do(t, edgetest.Client(t), n.Request(t, "GET", "slow", "/", nil))
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(body, "did not start its response within 200ms (--response-header-timeout)") {
		t.Fatalf("got %d %q, want 504", resp.StatusCode, body)
	}
}

func TestRegistrationErrors(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.MaxEndpointsPerAgent = 2 })
	up := edgetest.Upstream(t, echoHeaders())
	serve(t, n, "web", quicutil.KindHTTP, up)

	a := n.NewAgent(t)
	var se *quicutil.StatusError
	err := a.ServeUpstream(t.Context(), "web", quicutil.KindTCP, up)
	if !errors.As(err, &se) || se.Code != quicutil.StatusConflict {
		t.Fatalf("tcp on an http endpoint: err = %v, want StatusConflict", err)
	}
	for _, id := range []string{"a1", "a2"} {
		if err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, up); err != nil {
			t.Fatalf("serve %s: %v", id, err)
		}
	}
	err = a.ServeUpstream(t.Context(), "a3", quicutil.KindHTTP, up)
	if !errors.As(err, &se) || se.Code != quicutil.StatusLimit {
		t.Fatalf("third endpoint: err = %v, want StatusLimit", err)
	}
	if err := a.ServeUpstream(t.Context(), "Bad", quicutil.KindHTTP, up); err == nil {
		t.Fatal("invalid ID accepted")
	}
	// The refusals did not disturb the endpoints that were accepted.
	n.WaitRoute(t, "a1", 1)
	n.WaitRoute(t, "a2", 1)
	n.WaitRoute(t, "a3", 0)
}

func TestSDKListenAndDial(t *testing.T) {
	n := edgetest.NewNode(t)
	a := n.NewAgent(t)

	ln, err := a.Listen(t.Context(), "sdk")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the sdk; client %s", r.RemoteAddr)
	})}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-served })
	resp, body := do(t, edgetest.Client(t), n.Request(t, "GET", "sdk", "/", nil))
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "hello from the sdk; client 127.0.0.1:") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}

	// A raw TCP endpoint served with ListenTCP, reached with Dial.
	tln, err := a.ListenTCP(t.Context(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	serveConns(t, tln, func(c net.Conn) { io.Copy(c, c); c.(interface{ CloseWrite() error }).CloseWrite() })
	fwd := n.NewAgent(t)
	c, err := fwd.Dial(t.Context(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "ping")
	c.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "ping" {
		t.Fatalf("echo = %q, %v; want ping", got, err)
	}

	_, err = fwd.Dial(t.Context(), "missing")
	var de *agent.DialError
	if !errors.As(err, &de) || de.Code != quicutil.StatusNoRoute || !strings.Contains(err.Error(), `"missing"`) {
		t.Fatalf("dial missing: err = %v, want DialError NoRoute naming the endpoint", err)
	}
}

// A peer that speaks garbage on a stream gets a precise answer; the node
// keeps serving everyone else.
func TestMalformedStreams(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "ok", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	tlsConf := &tls.Config{RootCAs: n.CAPool, ServerName: "127.0.0.1", NextProtos: []string{quicutil.ALPNAgent}}

	dial := func(t *testing.T) *quic.Conn {
		conn, err := quic.DialAddr(t.Context(), n.AgentAddr, tlsConf, quicutil.AgentConfig())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.CloseWithError(0, "") })
		return conn
	}
	t.Run("garbage control stream", func(t *testing.T) {
		conn := dial(t)
		str, _ := conn.OpenStreamSync(t.Context())
		str.Write([]byte{9, 0, 3, 1, 2, 3})
		<-conn.Context().Done()
		var appErr *quic.ApplicationError
		err := context.Cause(conn.Context())
		if !errors.As(err, &appErr) || appErr.ErrorCode != quicutil.ConnCodeProtocolError || !strings.Contains(appErr.ErrorMessage, "version 9") {
			t.Fatalf("close = %v, want protocol error naming the version", err)
		}
	})
	t.Run("garbage data stream", func(t *testing.T) {
		conn := dial(t)
		ctrl, _ := conn.OpenStreamSync(t.Context())
		hello, _ := quicutil.AppendMessage((&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil), &quicutil.Hello{AgentID: "raw"})
		ctrl.Write(hello)
		if _, err := quicutil.ReadMessage(bufio.NewReader(ctrl)); err != nil {
			t.Fatalf("welcome: %v", err)
		}
		for name, b := range map[string][]byte{
			"bad version":  {7, 0, 0},
			"bad endpoint": (&rawHeader{kind: 2, id: "Bad!"}).bytes(),
			"control kind": (&rawHeader{kind: 0}).bytes(),
		} {
			str, _ := conn.OpenStreamSync(t.Context())
			str.Write(b)
			err := quicutil.ReadAnswer(str)
			var se *quicutil.StatusError
			if !errors.As(err, &se) || se.Code != quicutil.StatusBadHeader {
				t.Errorf("%s: answer = %v, want StatusBadHeader", name, err)
			}
			str.CancelRead(0)
			str.Close()
		}
	})
	resp, _ := do(t, edgetest.Client(t), n.Request(t, "GET", "ok", "/", nil))
	if resp.StatusCode != 200 {
		t.Fatalf("after garbage: status = %d, want 200", resp.StatusCode)
	}
}

// rawHeader encodes a header without validation, to send bad ones.
type rawHeader struct {
	kind byte
	id   string
}

func (h *rawHeader) bytes() []byte {
	body := append([]byte{h.kind, 0, byte(len(h.id))}, h.id...)
	body = append(body, 0)
	return append([]byte{1, 0, byte(len(body))}, body...)
}

func TestAdmin(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	c := edgetest.Client(t)
	do(t, c, n.Request(t, "GET", "foo", "/", nil))
	get := func(path string) (int, string) {
		req, _ := http.NewRequest("GET", n.AdminURL+path, nil)
		resp, body := do(t, c, req)
		return resp.StatusCode, body
	}
	tests := map[string]struct {
		path   string
		status int
		want   []string
	}{
		"healthz":   {"/healthz", 200, []string{"ok"}},
		"readyz":    {"/readyz", 200, []string{"ready"}},
		"metrics":   {"/metrics", 200, []string{`pico_requests_total{proto="http1",code="2xx"} 1`, "pico_agents 1", "pico_endpoints 1", "pico_request_duration_seconds_bucket"}},
		"endpoints": {"/status/endpoints", 200, []string{`"id": "foo"`, `"protocol": "http"`}},
		"agents":    {"/status/agents", 200, []string{`"endpoints": [`, `"foo/http"`}},
		"not found": {"/debug/pprof/", 404, nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			status, body := get(tc.path)
			if status != tc.status {
				t.Fatalf("status = %d, want %d", status, tc.status)
			}
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("body lacks %q:\n%s", w, body)
				}
			}
		})
	}
}

// On shutdown the node stops being ready, tells agents to go away, and
// lets the request in flight finish.
func TestGracefulShutdown(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.ShutdownGrace = 10 * time.Second })
	arrived, release := make(chan struct{}), make(chan struct{})
	serve(t, n, "slow", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "done")
	})))
	c := edgetest.Client(t)
	res := doAsync(c, n.Request(t, "GET", "slow", "/", nil))
	<-arrived
	stopped := make(chan struct{})
	go func() { n.Stop(t); close(stopped) }()
	for { // readyz turns 503 while the request is still in flight
		resp, err := c.Get(n.AdminURL + "/readyz")
		if err != nil {
			t.Fatalf("readyz: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			break
		}
	}
	close(release)
	r := <-res
	if r.err != nil || r.status != 200 || r.body != "done" {
		t.Fatalf("in-flight request: %d %q %v; want 200 done", r.status, r.body, r.err)
	}
	<-stopped
}

func BenchmarkProxySmall(b *testing.B) {
	up := edgetest.Upstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello world\n") }))
	n := edgetest.NewNode(b)
	a := n.NewAgent(b)
	if err := a.ServeUpstream(context.Background(), "bench", quicutil.KindHTTP, up); err != nil {
		b.Fatal(err)
	}
	for name, url := range map[string]string{"direct": "http://" + up, "pico": n.ProxyURL} {
		b.Run(name, func(b *testing.B) {
			c := edgetest.Client(b)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest("GET", url+"/", nil)
					req.Header.Set("X-Pico-Endpoint", "bench")
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

func BenchmarkProxy1MiB(b *testing.B) {
	payload := bytes.Repeat([]byte("x"), 1<<20)
	up := edgetest.Upstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(payload) }))
	n := edgetest.NewNode(b)
	a := n.NewAgent(b)
	if err := a.ServeUpstream(context.Background(), "bench", quicutil.KindHTTP, up); err != nil {
		b.Fatal(err)
	}
	for name, url := range map[string]string{"direct": "http://" + up, "pico": n.ProxyURL} {
		b.Run(name, func(b *testing.B) {
			c := edgetest.Client(b)
			b.SetBytes(1 << 20)
			for b.Loop() {
				req, _ := http.NewRequest("GET", url+"/", nil)
				req.Header.Set("X-Pico-Endpoint", "bench")
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}
