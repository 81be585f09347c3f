package e2e

import (
	"bufio"
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

	"github.com/coder/websocket"
)

// seenRequest is what echoUpstream saw of a request.
type seenRequest struct {
	Host   string      `json:"host"`
	Header http.Header `json:"header"`
}

// echoUpstream answers "/headers" with the request's Host and header as
// JSON, and "/trailer" with a body and a trailer.
func echoUpstream() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "body with a trailer\n")
		w.Header().Set("X-Checksum", "c0ffee")
	})
	mux.HandleFunc("GET /headers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(seenRequest{Host: r.Host, Header: r.Header})
	})
	return mux
}

// curl runs the real curl against the edge and returns the body and the
// HTTP status.
func curl(t testing.TB, args ...string) (string, int) {
	t.Helper()
	path := needCommand(t, "curl", "the quickstart uses it")
	args = append([]string{"-sS", "--noproxy", "*", "--max-time", "30", "-w", "\n%{http_code}"}, args...)
	out, code := runCmd(t, nil, path, args...)
	if code != 0 {
		t.Fatalf("curl %s: exit %d:\n%s", strings.Join(args, " "), code, out)
	}
	i := strings.LastIndexByte(out, '\n')
	var status int
	fmt.Sscan(out[i+1:], &status)
	return out[:i], status
}

// startPython serves dir with `python3 -m http.server` on an ephemeral
// port of 127.0.0.1 and returns the port. It skips t without python3.
func startPython(t testing.TB, dir string) string {
	t.Helper()
	path := needCommand(t, "python3", "the README's quickstart serves a directory with it")
	p := startProc(t, "python3 http.server", path, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", dir)
	line := p.waitLineFor(t, 0, "its port", startTimeout, contains("Serving HTTP on 127.0.0.1 port "))
	var port int
	if _, err := fmt.Sscanf(line[strings.Index(line, " port ")+1:], "port %d", &port); err != nil || port == 0 {
		t.Fatalf("python3 http.server: no port in %q: %v", line, err)
	}
	return fmt.Sprint(port)
}

// TestQuickstart follows the README: an edge in its default data directory
// (here $XDG_DATA_HOME/pico), `python3 -m http.server`, `pico-agent http foo
// PORT` with no --ca (it finds the edge's development CA there), then curl
// and net/http by header and by Host. A Go upstream then shows the headers
// it gets: the edge's X-Forwarded-*, none of the client's forwarding,
// hop-by-hop or x-pico-* headers; and trailers pass.
func TestQuickstart(t *testing.T) {
	e2e(t)
	forEachTransport(t, testQuickstart)
}

func testQuickstart(t *testing.T, tr transport) {
	xdg := t.TempDir()
	e := startEdgeAt(t, filepath.Join(xdg, "pico")).over(t, tr)
	site := t.TempDir()
	const hello = "hello from python\n"
	if err := os.WriteFile(filepath.Join(site, "index.html"), []byte(hello), 0o644); err != nil {
		t.Fatal(err)
	}
	pyPort := startPython(t, site)
	a := startProcEnv(t, "pico-agent http foo", []string{"XDG_DATA_HOME=" + xdg}, bin.agent,
		append([]string{"http", "foo", pyPort, "--edge", e.agentEdge(tr)}, transportFlag(tr)...)...)
	checkStatusLine(t, tr, a.waitLineFor(t, 0, "registration", startTimeout, contains("endpoint foo (http) is registered")))
	e.checkLinks(t, 1)
	if !slices.ContainsFunc(a.output(), func(l string) bool { return strings.Contains(l, "trusting the system roots and the development CA") }) {
		t.Errorf("the agent did not say that it trusts the development CA:\n%s", strings.Join(a.output(), "\n"))
	}
	t.Run("an agent without the CA says what to do", func(t *testing.T) {
		b := startProcEnv(t, "pico-agent http bar", []string{"XDG_DATA_HOME=" + t.TempDir()}, bin.agent,
			append([]string{"http", "bar", pyPort, "--edge", e.agentEdge(tr), "--log-format", "json"}, transportFlag(tr)...)...)
		b.waitLineFor(t, 0, "a hint to give --ca", startTimeout, func(line string) bool {
			l, ok := parseLog(line)
			return ok && strings.Contains(l.str("err"), "certificate signed by unknown authority") &&
				strings.Contains(l.str("hint"), "--ca FILE")
		})
	})
	if n := e.endpointAgents(t, "foo"); n != 1 {
		t.Fatalf("/status/endpoints: foo has %d agents, want 1", n)
	}
	proxyPort := portOf(e.proxy)
	hostName := "foo.localhost:" + proxyPort

	t.Run("curl by header", func(t *testing.T) {
		body, status := curl(t, "-H", "x-pico-endpoint: foo", "http://"+e.proxy+"/")
		if status != http.StatusOK || body != hello {
			t.Fatalf("got %d %q, want 200 %q", status, body, hello)
		}
	})
	t.Run("curl by host", func(t *testing.T) {
		body, status := curl(t, "--resolve", hostName+":127.0.0.1", "http://"+hostName+"/")
		if status != http.StatusOK || body != hello {
			t.Fatalf("got %d %q, want 200 %q", status, body, hello)
		}
	})
	t.Run("curl over HTTPS and HTTP/2", func(t *testing.T) {
		tlsHost := "foo.pico.localhost:" + portOf(e.tls) // the dev certificate covers *.pico.localhost
		for _, v := range []struct{ flag, statusLine string }{{"--http1.1", "HTTP/1.1 200"}, {"--http2", "HTTP/2 200"}} {
			out, status := curl(t, v.flag, "--cacert", e.ca, "--resolve", tlsHost+":127.0.0.1",
				"-D", "-", "-o", "/dev/null", "https://"+tlsHost+"/")
			if status != http.StatusOK || !strings.HasPrefix(out, v.statusLine) {
				t.Fatalf("%s: status %d, headers %q; want %s", v.flag, status, out, v.statusLine)
			}
			if want := `h3=":` + portOf(e.tls) + `"`; !strings.Contains(strings.ToLower(out), "alt-svc: "+want) {
				t.Errorf("%s: no Alt-Svc %s in the response headers:\n%s", v.flag, want, out)
			}
		}
	})
	t.Run("net/http by header and by host", func(t *testing.T) {
		c := newClient(t, 30*time.Second)
		resp, body := e.request(t, c, "GET", "foo", "/", nil)
		if resp.StatusCode != http.StatusOK || body != hello {
			t.Fatalf("by header: got %d %q, want 200 %q", resp.StatusCode, body, hello)
		}
		req, _ := http.NewRequest("GET", "http://"+e.proxy+"/", nil)
		req.Host = hostName
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != hello {
			t.Fatalf("by host: got %d %q, want 200 %q", resp.StatusCode, b, hello)
		}
	})

	e.serve(t, "http", "echo", serveHTTP(t, echoUpstream()))
	hostName = "echo.localhost:" + proxyPort
	t.Run("trailers", func(t *testing.T) {
		resp, body := e.request(t, newClient(t, 30*time.Second), "GET", "echo", "/trailer", nil)
		if resp.StatusCode != http.StatusOK || body != "body with a trailer\n" {
			t.Fatalf("got %d %q, want 200 with the body", resp.StatusCode, body)
		}
		if got := resp.Trailer.Get("X-Checksum"); got != "c0ffee" {
			t.Fatalf("trailer X-Checksum = %q, want c0ffee (trailers %v)", got, resp.Trailer)
		}
	})

	// The client sends forged forwarding headers, a hop-by-hop header named
	// in Connection, and Pico's own headers; none may reach the upstream.
	forged := []string{
		"-H", "X-Forwarded-For: 203.0.113.7",
		"-H", "X-Forwarded-Host: evil.example",
		"-H", "X-Forwarded-Proto: https",
		"-H", "Connection: x-custom",
		"-H", "X-Custom: secret",
		"-H", "Keep-Alive: timeout=5",
		"-H", "X-Pico-Debug: 1",
	}
	for name, tc := range map[string]struct {
		args     []string
		wantHost string
	}{
		"by header": {args: []string{"-H", "x-pico-endpoint: echo", "http://" + e.proxy + "/headers"}, wantHost: e.proxy},
		"by host":   {args: []string{"--resolve", hostName + ":127.0.0.1", "http://" + hostName + "/headers"}, wantHost: hostName},
	} {
		t.Run("headers "+name, func(t *testing.T) {
			body, status := curl(t, append(append([]string{}, forged...), tc.args...)...)
			if status != http.StatusOK {
				t.Fatalf("status %d, want 200: %s", status, body)
			}
			var seen seenRequest
			if err := json.Unmarshal([]byte(body), &seen); err != nil {
				t.Fatalf("upstream answer %q: %v", body, err)
			}
			h := seen.Header
			if seen.Host != tc.wantHost {
				t.Errorf("upstream Host = %q, want %q (the client's)", seen.Host, tc.wantHost)
			}
			for k, want := range map[string]string{
				"X-Forwarded-For":   "127.0.0.1",
				"X-Forwarded-Proto": "http",
				"X-Forwarded-Host":  tc.wantHost,
			} {
				if got := h.Values(k); len(got) != 1 || got[0] != want {
					t.Errorf("upstream %s = %q, want [%q] (set by the edge, the client's dropped)", k, got, want)
				}
			}
			for _, k := range []string{"X-Custom", "Keep-Alive", "X-Pico-Debug", "X-Pico-Endpoint"} {
				if v, ok := h[k]; ok {
					t.Errorf("upstream got %s: %q; want it stripped", k, v)
				}
			}
			if v := h.Get("Connection"); strings.Contains(strings.ToLower(v), "x-custom") {
				t.Errorf("upstream got Connection: %q; want the client's hop-by-hop list stripped", v)
			}
		})
	}
}

// TestErrors checks the answers of DESIGN.md's error table, with status and
// body.
func TestErrors(t *testing.T) {
	e2e(t)
	forEachTransport(t, testErrors)
}

func testErrors(t *testing.T, tr transport) {
	const respTimeout = 2 * time.Second
	e := startEdge(t, "--response-header-timeout", respTimeout.String()).over(t, tr)
	e.serve(t, "http", "down", "127.0.0.1:"+closedPort(t))
	e.serve(t, "tcp", "tcpep", "127.0.0.1:"+closedPort(t))
	stop := make(chan struct{})
	var stopOnce sync.Once
	t.Cleanup(func() { stopOnce.Do(func() { close(stop) }) })
	slowPort := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // never answers in time
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	e.serve(t, "http", "slow", "127.0.0.1:"+slowPort)
	proxyPort := portOf(e.proxy)
	c := newClient(t, 30*time.Second)
	unknown := `no upstream for endpoint "nope"`

	tests := map[string]struct {
		bug        string // a production bug: the case skips, saying so
		endpoint   string // X-Pico-Endpoint
		host       string // Host, if not the edge's address
		path       string // if not /some/path
		header     http.Header
		raw        string // a request to write as is, instead of the fields above
		wantStatus int
		wantBody   string   // exact body, if set
		wantIn     []string // substrings of the body, ignoring case
		wantCase   []string // substrings of the body, case-sensitive
		wantJSON   map[string]any
	}{
		"no endpoint": {
			wantStatus: 400, wantIn: []string{"x-pico-endpoint"},
		},
		"host without an endpoint label": {
			host: "localhost:" + proxyPort, wantStatus: 400, wantIn: []string{"x-pico-endpoint"},
		},
		"invalid endpoint header": {
			endpoint: "Bad_Name", wantStatus: 400, wantIn: []string{"x-pico-endpoint", "bad_name", "a-z"},
		},
		"invalid endpoint header names the value sent": {
			endpoint: "Bad_Name", wantStatus: 400, wantCase: []string{`"Bad_Name"`},
		},
		"invalid endpoint in host": {
			host: "bad_name.localhost:" + proxyPort, wantStatus: 400, wantIn: []string{"bad_name"},
		},
		"unknown endpoint": {
			endpoint: "nope", wantStatus: 502, wantBody: unknown + "\n",
		},
		"unknown endpoint by host": {
			host: "nope.localhost:" + proxyPort, wantStatus: 502, wantBody: unknown + "\n",
		},
		"unknown endpoint as JSON": {
			endpoint: "nope", header: http.Header{"Accept": {"application/json"}}, wantStatus: 502,
			wantJSON: map[string]any{"status": float64(502), "error": unknown, "endpoint": "nope"},
		},
		"upstream down": {
			endpoint: "down", wantStatus: 502, wantIn: []string{`endpoint "down"`, "could not reach upstream", "connection refused"},
		},
		"tcp endpoint over http": {
			endpoint: "tcpep", wantStatus: 502, wantIn: []string{`endpoint "tcpep"`, "tcp", "pico-agent forward"},
		},
		"upstream timeout": {
			endpoint: "slow", wantStatus: 504, wantIn: []string{`endpoint "slow"`},
		},
		"header of 40 KiB": {
			endpoint: "nope", header: http.Header{"X-Big": {strings.Repeat("a", 40<<10)}}, wantStatus: 431,
		},
		"header just over 32 KiB": {
			endpoint: "nope", header: http.Header{"X-Big": {strings.Repeat("a", 33<<10)}}, wantStatus: 431,
		},
		// docs/limits.md defaults for the front door.
		"more than 100 header fields": {
			endpoint: "nope", header: manyHeaders(150), wantStatus: 431,
		},
		"request URI over 8 KiB": {
			endpoint: "nope", path: "/" + strings.Repeat("a", 9<<10), wantStatus: 414,
		},
		"header name with an underscore": {
			endpoint: "nope", header: http.Header{"X_Forwarded_For": {"203.0.113.7"}}, wantStatus: 400,
		},
		"both chunked and Content-Length": {
			raw: "POST / HTTP/1.1\r\nHost: x\r\nX-Pico-Endpoint: nope\r\nContent-Length: 3\r\n" +
				"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
			wantStatus: 400,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if tc.bug != "" {
				knownBug(t, tc.bug)
			}
			path := "/some/path"
			if tc.path != "" {
				path = tc.path
			}
			req, err := http.NewRequest("GET", "http://"+e.proxy+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.header {
				req.Header[k] = v
			}
			if tc.endpoint != "" {
				req.Header.Set("X-Pico-Endpoint", tc.endpoint)
			}
			if tc.host != "" {
				req.Host = tc.host
			}
			var resp *http.Response
			if tc.raw != "" {
				resp = rawRequest(t, e.proxy, tc.raw)
			} else if resp, err = c.Do(req); err != nil {
				t.Fatalf("request: %v", err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("read body: %v", err)
			}
			body := string(b)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d; body %q", resp.StatusCode, tc.wantStatus, body)
			}
			if tc.wantBody != "" && body != tc.wantBody {
				t.Errorf("body = %q, want %q", body, tc.wantBody)
			}
			for _, s := range tc.wantIn {
				if !strings.Contains(strings.ToLower(body), strings.ToLower(s)) {
					t.Errorf("body = %q, want it to mention %q", body, s)
				}
			}
			for _, s := range tc.wantCase {
				if !strings.Contains(body, s) {
					t.Errorf("body = %q, want it to contain %s", body, s)
				}
			}
			if tc.wantJSON != nil {
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type = %q, want application/json", ct)
				}
				var got map[string]any
				if err := json.Unmarshal(b, &got); err != nil {
					t.Fatalf("body %q: %v", body, err)
				}
				for k, want := range tc.wantJSON {
					if got[k] != want {
						t.Errorf("JSON %s = %#v, want %#v (body %s)", k, got[k], want, body)
					}
				}
			}
		})
	}
}

// TestWebSocket echoes messages both ways through the tunnel with a real
// WebSocket client and server, then closes cleanly.
func TestWebSocket(t *testing.T) {
	e2e(t)
	forEachTransport(t, testWebSocket)
}

func testWebSocket(t *testing.T, tr transport) {
	e := startEdge(t).over(t, tr)
	serverDone := make(chan error, 1) // the server's close status, as an error when not normal
	port := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			serverDone <- fmt.Errorf("accept: %w", err)
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(4 << 20)
		ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
		defer cancel()
		if err := c.Write(ctx, websocket.MessageText, []byte("welcome")); err != nil {
			serverDone <- fmt.Errorf("write welcome: %w", err)
			return
		}
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				if st := websocket.CloseStatus(err); st != websocket.StatusNormalClosure {
					serverDone <- fmt.Errorf("read: close status %v: %w", st, err)
					return
				}
				serverDone <- nil
				return
			}
			if err := c.Write(ctx, typ, append([]byte("echo:"), msg...)); err != nil {
				serverDone <- fmt.Errorf("write: %w", err)
				return
			}
		}
	}))
	e.serve(t, "http", "ws", "127.0.0.1:"+port)

	ctx, cancel := context.WithTimeout(t.Context(), 2*waitTimeout)
	defer cancel()
	hc := newClient(t, 0) // websocket refuses clients with a Timeout
	c, resp, err := websocket.Dial(ctx, "ws://"+e.proxy+"/chat", &websocket.DialOptions{
		HTTPClient: hc,
		HTTPHeader: http.Header{"X-Pico-Endpoint": {"ws"}},
	})
	if err != nil {
		t.Fatalf("dial: %v (response %v)", err, resp)
	}
	defer c.CloseNow()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d, want 101", resp.StatusCode)
	}
	c.SetReadLimit(4 << 20)
	typ, msg, err := c.Read(ctx)
	if err != nil || typ != websocket.MessageText || string(msg) != "welcome" {
		t.Fatalf("first server message: %v %q %v, want text \"welcome\"", typ, msg, err)
	}
	for i := range 20 {
		typ := websocket.MessageText
		out := []byte(fmt.Sprintf("message %d", i))
		if i%2 == 1 {
			typ = websocket.MessageBinary
			out = bytes.Repeat([]byte{byte(i)}, 1<<(i%21)) // up to 1 MiB
		}
		if err := c.Write(ctx, typ, out); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		gotTyp, got, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if want := append([]byte("echo:"), out...); gotTyp != typ || !bytes.Equal(got, want) {
			t.Fatalf("echo %d: got %v of %d bytes, want %v of %d bytes", i, gotTyp, len(got), typ, len(want))
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("close: %v", err)
	}
	select {
	case err := <-serverDone:
		if err != nil {
			t.Fatalf("server: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("server did not see the close")
	}
}

// TestServerSentEvents proves events are not buffered: the upstream sends
// the second event only after the client has read the first.
func TestServerSentEvents(t *testing.T) {
	e2e(t)
	forEachTransport(t, testServerSentEvents)
}

func testServerSentEvents(t *testing.T, tr transport) {
	e := startEdge(t).over(t, tr)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseFn := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseFn)
	secondSent := make(chan struct{})
	port := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		rc := http.NewResponseController(w)
		io.WriteString(w, "event: tick\ndata: one\n\n")
		if rc.Flush() != nil {
			return
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "event: tick\ndata: two\n\n")
		rc.Flush()
		close(secondSent)
	}))
	e.serve(t, "http", "events", "127.0.0.1:"+port)

	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+e.proxy+"/stream", nil)
	req.Header.Set("X-Pico-Endpoint", "events")
	req.Header.Set("Accept", "text/event-stream")
	resp, err := newClient(t, 0).Do(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("got %d %q, want 200 text/event-stream", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	br := bufio.NewReader(resp.Body)
	readEvent := func() string {
		t.Helper()
		var data string
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("read event: %v (got %q so far)", err, data)
			}
			line = strings.TrimRight(line, "\n")
			if line == "" {
				return data
			}
			if v, ok := strings.CutPrefix(line, "data: "); ok {
				data = v
			}
		}
	}
	// Until release is closed the upstream cannot send "two": if the edge
	// held the first event back, this read would run into ctx's deadline.
	if got := readEvent(); got != "one" {
		t.Fatalf("first event = %q, want one", got)
	}
	select {
	case <-secondSent:
		t.Fatal("second event sent before release")
	default:
	}
	releaseFn()
	if got := readEvent(); got != "two" {
		t.Fatalf("second event = %q, want two", got)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the last event: %d bytes, %v; want EOF", n, err)
	}
}

func manyHeaders(n int) http.Header {
	h := http.Header{}
	for i := range n {
		h.Set(fmt.Sprintf("X-Field-%d", i), "v")
	}
	return h
}

// rawRequest writes req as is on a new connection to addr and reads the
// response.
func rawRequest(t testing.TB, addr, req string) *http.Response {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	return resp
}
