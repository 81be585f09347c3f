//go:build unix

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// errRow is one row of a table of docs/errors.md: what the edge answers
// in that case, as documented.
type errRow struct {
	what    string            // the case column, as written
	status  int               // the status column's number
	body    string            // the first `code` of the body column; "…" stands for any text
	headers map[string]string // `Name: value` after it, in the status or body column
}

var headerCode = regexp.MustCompile("`([A-Za-z-]+): ([^`]*)`")

// errTable parses the first markdown table after the line that starts
// with header in docs/errors.md.
func errTable(t *testing.T, header string) []errRow {
	t.Helper()
	b, err := os.ReadFile("../../docs/errors.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+header)
	if !ok {
		t.Fatalf("docs/errors.md has no table starting %q", header)
	}
	var rows []errRow
	for _, line := range strings.Split(rest, "\n")[2:] { // after the header's rest and |---|
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		if len(cells) != 3 {
			t.Fatalf("docs/errors.md: row %q has %d cells, want 3 (a '|' in a cell?)", line, len(cells))
		}
		r := errRow{what: strings.TrimSpace(cells[0]), headers: map[string]string{}}
		hdrs := cells[1]
		if r.status, err = strconv.Atoi(strings.TrimSpace(hdrs)[:3]); err != nil {
			t.Fatalf("docs/errors.md: row %q: status %q", r.what, cells[1])
		}
		_, body, ok := strings.Cut(cells[2], "`")
		if !ok {
			t.Fatalf("docs/errors.md: row %q: no `body` in %q", r.what, cells[2])
		}
		r.body, body, _ = strings.Cut(body, "`")
		for _, m := range headerCode.FindAllStringSubmatch(hdrs+" "+body, -1) {
			r.headers[m[1]] = m[2]
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		t.Fatalf("docs/errors.md: no rows in the table %q", header)
	}
	return rows
}

// docMatch reports whether got is the documented text want, in which
// each "…" stands for any text.
func docMatch(want, got string) bool {
	parts := strings.Split(want, "…")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return regexp.MustCompile("^(?s:" + strings.Join(parts, ".*") + ")$").MatchString(got)
}

// errAnswer is what the edge answered.
type errAnswer struct {
	status int
	header http.Header
	body   string
}

// errCase provokes one row on a live edge. The row's text, with live's
// replacements (a documented default the case runs with a small value
// of, or a port), must be what the edge answers.
type errCase struct {
	edge    []string                                // flags of the edge this case gets to itself; nil: the shared edge
	live    map[string]string                       // documented text → the text this run must show
	provoke func(t *testing.T, c *errEnv) errAnswer // c.live may add replacements (ports)
}

// errEnv is a case's edge and what it set up.
type errEnv struct {
	e    *edgeProc
	live map[string]string
}

// TestErrorTable provokes every row of docs/errors.md's client error
// table against a live edge (the real binaries) and checks the status, the
// body and the headers the row names, exactly as documented ("…" matches
// any text). A row without a case here, or a case without its row, fails:
// an edit on either side must reach the other.
func TestErrorTable(t *testing.T) {
	e2e(t)
	rows := errTable(t, "| case | status | body (text; JSON")
	cases := errCases(t)
	seen := map[string]bool{}
	shared := startEdge(t) // for the cases that serve no endpoint; the others get their own
	for _, r := range rows {
		c, ok := cases[r.what]
		if !ok {
			t.Errorf("docs/errors.md row %q: no case provokes it in TestErrorTable", r.what)
			continue
		}
		seen[r.what] = true
		t.Run(r.what, func(t *testing.T) {
			t.Parallel()
			env := &errEnv{live: map[string]string{}}
			for k, v := range c.live {
				env.live[k] = v
			}
			if c.edge == nil {
				env.e = shared
			} else {
				env.e = startEdge(t, c.edge...)
			}
			got := c.provoke(t, env)
			live := func(s string) string {
				for k, v := range env.live {
					s = strings.ReplaceAll(s, k, v)
				}
				return s
			}
			if got.status != r.status {
				t.Errorf("status %d, want %d (body %q)", got.status, r.status, got.body)
			}
			if want := live(r.body); !docMatch(want, strings.TrimSuffix(got.body, "\n")) {
				t.Errorf("body\n  %q\nwant (docs/errors.md)\n  %q", got.body, want)
			}
			for k, v := range r.headers {
				if want := live(v); !docMatch(want, got.header.Get(k)) {
					t.Errorf("header %s: %q, want %q", k, got.header.Get(k), want)
				}
			}
		})
	}
	for what := range cases {
		if !seen[what] {
			t.Errorf("TestErrorTable provokes %q, which docs/errors.md's table lacks", what)
		}
	}
}

// get sends a request to the front door, with header lines hdr
// ("Name: value"), on a new connection.
func (c *errEnv) get(t *testing.T, method, path string, hdr ...string) errAnswer {
	t.Helper()
	raw := method + " " + path + " HTTP/1.1\r\nHost: " + c.e.proxy + "\r\n"
	for _, h := range hdr {
		raw += h + "\r\n"
	}
	return c.raw(t, raw+"\r\n")
}

// raw writes a request as it is on a new connection to the front door and
// reads the answer.
func (c *errEnv) raw(t *testing.T, req string) errAnswer {
	t.Helper()
	conn, err := net.Dial("tcp", c.e.proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitTimeout))
	go io.WriteString(conn, req) // the edge may answer before it read it all
	return readAnswer(t, bufio.NewReader(conn))
}

func readAnswer(t *testing.T, br *bufio.Reader) errAnswer {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read the answer's body: %v", err)
	}
	if resp.Close && resp.ProtoAtLeast(1, 1) {
		// net/http takes "Connection: close" out of the header and sets
		// Close instead: put it back for the table's header column.
		resp.Header.Set("Connection", "close")
	}
	return errAnswer{resp.StatusCode, resp.Header, string(b)}
}

// hold is an upstream whose requests wait until the test ends; arrived
// gets one value per request that reached it.
func hold(t *testing.T) (port string, arrived chan struct{}) {
	arrived = make(chan struct{}, 16)
	port = serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		// net/http cancels the context of a closed connection only once
		// the body is read (or fails): a POST cut short would hold the
		// handler for good.
		io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}))
	return port, arrived
}

// inFlight sends method / for endpoint foo in the background and waits
// until it reached the upstream; the answer comes on the channel.
func (c *errEnv) inFlight(t *testing.T, method string, arrived chan struct{}) chan errAnswer {
	t.Helper()
	conn, err := net.Dial("tcp", c.e.proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(2 * waitTimeout))
	fmt.Fprintf(conn, "%s / HTTP/1.1\r\nHost: x\r\nX-Pico-Endpoint: foo\r\nContent-Length: 0\r\n\r\n", method)
	ch := make(chan errAnswer, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			ch <- errAnswer{body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- errAnswer{resp.StatusCode, resp.Header, string(b)}
	}()
	select {
	case <-arrived:
	case a := <-ch:
		t.Fatalf("answered before reaching the upstream: %d %q", a.status, a.body)
	case <-time.After(waitTimeout):
		t.Fatal("the request did not reach the upstream")
	}
	return ch
}

func waitAnswer(t *testing.T, ch chan errAnswer) errAnswer {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(2 * waitTimeout):
		t.Fatal("no answer")
		return errAnswer{}
	}
}

// fullBacklog listens on a port whose accept queue is full, so that a
// connect to it gets no answer and times out.
func fullBacklog(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the queue: connections that complete and are never accepted,
	// until one does not complete within a moment.
	for range 8 {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("the kernel completes every connect to a full accept queue here: no way to make a connect time out on loopback")
	return ""
}

// token signs claims with the HMAC secret file path.
func token(t *testing.T, path string, claims jwt.MapClaims) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func errCases(t *testing.T) map[string]errCase {
	secret := filepath.Join(t.TempDir(), "hmac.key")
	if out, code := runCmd(t, nil, bin.edge, "token", "--hmac-secret-file", secret, "--endpoints", "foo"); code != 0 {
		t.Fatalf("pico-edge token: %s", out)
	}
	auth := []string{"--auth-hmac-secret-file", secret, "--proxy-auth"}
	return map[string]errCase{
		"no endpoint in the request": {provoke: func(t *testing.T, c *errEnv) errAnswer {
			return c.get(t, "GET", "/")
		}},
		"invalid endpoint ID in the header": {provoke: func(t *testing.T, c *errEnv) errAnswer {
			return c.get(t, "GET", "/", "X-Pico-Endpoint: Bad_Name")
		}},
		"invalid endpoint ID as the first label of `Host`": {provoke: func(t *testing.T, c *errEnv) errAnswer {
			return c.raw(t, "GET / HTTP/1.1\r\nHost: bad_name.example.com\r\n\r\n")
		}},
		"request URI over 8 KiB": {provoke: func(t *testing.T, c *errEnv) errAnswer {
			return c.get(t, "GET", "/"+strings.Repeat("a", 8999), "X-Pico-Endpoint: foo")
		}},
		"more than 100 header fields": {provoke: func(t *testing.T, c *errEnv) errAnswer {
			var hdr []string
			for i := range 149 {
				hdr = append(hdr, fmt.Sprintf("X-H-%d: v", i))
			}
			return c.get(t, "GET", "/", append(hdr, "X-Pico-Endpoint: foo")...)
		}},
		"a header name with `_` (`X_Api_Key`; the name as the edge canonicalises it)": {provoke: func(t *testing.T, c *errEnv) errAnswer {
			return c.get(t, "GET", "/", "X-Pico-Endpoint: foo", "X_Api_Key: 1")
		}},
		"endpoint unknown": {provoke: func(t *testing.T, c *errEnv) errAnswer {
			return c.get(t, "GET", "/", "X-Pico-Endpoint: foo")
		}},
		"agent could not connect to its upstream": {edge: []string{}, provoke: func(t *testing.T, c *errEnv) errAnswer {
			port := freePort(t)
			c.live["localhost:3000"] = "localhost:" + port
			c.e.serve(t, "http", "foo", port)
			return c.get(t, "GET", "/", "X-Pico-Endpoint: foo")
		}},
		"agent's connect to its upstream timed out (5 s)": {edge: []string{}, provoke: func(t *testing.T, c *errEnv) errAnswer {
			c.e.serve(t, "http", "foo", fullBacklog(t))
			return c.get(t, "GET", "/", "X-Pico-Endpoint: foo")
		}},
		"upstream did not start its answer in `--response-header-timeout`": {
			edge: []string{"--response-header-timeout", "1s"}, live: map[string]string{"30s": "1s"},
			provoke: func(t *testing.T, c *errEnv) errAnswer {
				port, _ := hold(t)
				c.e.serve(t, "http", "foo", port)
				return c.get(t, "GET", "/", "X-Pico-Endpoint: foo")
			}},
		"agent disconnected mid-request": {edge: []string{}, provoke: func(t *testing.T, c *errEnv) errAnswer {
			port, arrived := hold(t)
			a := c.e.startAgent(t, "--grace-period", "0s", "http", "foo", port)
			a.waitLineFor(t, 0, "registration", startTimeout, contains("endpoint foo (http) is registered"))
			ch := c.inFlight(t, "POST", arrived)
			a.signal(t, syscall.SIGTERM)
			return waitAnswer(t, ch)
		}},
		"agent's link went silent mid-request (the edge closed it after 2.5 s without a packet; the relay to its node: 1.5 s)": {edge: []string{}, provoke: func(t *testing.T, c *errEnv) errAnswer {
			port, arrived := hold(t)
			a := c.e.serve(t, "http", "foo", port)
			ch := c.inFlight(t, "POST", arrived)
			a.signal(t, syscall.SIGSTOP) // cleanup's SIGKILL ends it
			return waitAnswer(t, ch)
		}},
		"the upstream closed the connection with a request on it and no answer (it crashed, or closed an idle connection as a non-idempotent request reached it)": {
			edge: []string{}, provoke: func(t *testing.T, c *errEnv) errAnswer {
				port := serveTCP(t, func(conn *net.TCPConn) {
					http.ReadRequest(bufio.NewReader(conn)) // then close, answering nothing
				})
				c.e.serve(t, "http", "foo", port)
				return c.get(t, "POST", "/", "X-Pico-Endpoint: foo", "Content-Length: 0")
			}},
		"endpoint at `--max-inflight-per-endpoint` on this node": {
			edge: []string{"--max-inflight-per-endpoint", "2"}, live: map[string]string{"256": "2"},
			provoke: func(t *testing.T, c *errEnv) errAnswer {
				port, arrived := hold(t)
				c.e.serve(t, "http", "foo", port)
				c.inFlight(t, "GET", arrived)
				c.inFlight(t, "GET", arrived)
				return c.get(t, "GET", "/", "X-Pico-Endpoint: foo")
			}},
		"an upgrade (WebSocket) to an endpoint at `--max-conns-per-endpoint` on this node": {
			edge: []string{"--max-conns-per-endpoint", "2"}, live: map[string]string{"4096": "2"},
			provoke: func(t *testing.T, c *errEnv) errAnswer {
				port := serveTCP(t, func(conn *net.TCPConn) {
					if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
						return
					}
					io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
					io.Copy(io.Discard, conn) // until the test closes it
				})
				c.e.serve(t, "http", "foo", port)
				upgrade := "GET / HTTP/1.1\r\nHost: x\r\nX-Pico-Endpoint: foo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
				for range 2 {
					conn, err := net.Dial("tcp", c.e.proxy)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { conn.Close() })
					conn.SetDeadline(time.Now().Add(waitTimeout))
					io.WriteString(conn, upgrade)
					if a := readAnswer(t, bufio.NewReader(conn)); a.status != http.StatusSwitchingProtocols {
						t.Fatalf("upgrade below the limit: %d %q", a.status, a.body)
					}
				}
				return c.raw(t, upgrade)
			}},
		"agent connection at `--max-streams-per-agent` on this node": {
			edge: []string{"--max-streams-per-agent", "2"}, live: map[string]string{"1000": "2"},
			provoke: func(t *testing.T, c *errEnv) errAnswer {
				port, arrived := hold(t)
				c.e.serve(t, "http", "foo", port)
				c.inFlight(t, "GET", arrived)
				c.inFlight(t, "GET", arrived)
				return c.get(t, "GET", "/", "X-Pico-Endpoint: foo")
			}},
		"agent at its stream limit for `--open-stream-timeout`": {
			// The agent takes quicutil.MaxStreamsToAgent (1000) streams on
			// its link: the node's own limits are raised above it.
			edge: []string{"--max-streams-per-agent", "2000", "--max-inflight-per-endpoint", "2000", "--open-stream-timeout", "1s", "--new-conns-per-ip", "-1"},
			provoke: func(t *testing.T, c *errEnv) errAnswer {
				port, arrived := hold(t)
				c.e.serve(t, "http", "foo", port)
				for range 1000 {
					c.inFlight(t, "GET", arrived)
				}
				return c.get(t, "GET", "/", "X-Pico-Endpoint: foo")
			}},
		"endpoint serves raw TCP": {edge: []string{}, provoke: func(t *testing.T, c *errEnv) errAnswer {
			c.e.serve(t, "tcp", "foo", serveTCP(t, func(*net.TCPConn) {}))
			return c.get(t, "GET", "/", "X-Pico-Endpoint: foo")
		}},
		"HTTP/1.1 request head longer than `--max-header-bytes` + 4 KiB (refused by the guard; the connection closes)": {provoke: func(t *testing.T, c *errEnv) errAnswer {
			return c.get(t, "GET", "/", "X-Pico-Endpoint: foo", "X-Pad: "+strings.Repeat("a", 40000))
		}},
		"request header larger than `--max-header-bytes`": {provoke: func(t *testing.T, c *errEnv) errAnswer {
			// The edge counts the request line, Host and each field as
			// HTTP/1.1 writes them: 34000 bytes in all.
			head := "GET / HTTP/1.1\r\nHost: x\r\nX-Pico-Endpoint: foo\r\n"
			pad := 34000 - (len("GET / HTTP/1.1\r\nHost: x\r\n") + len("X-Pico-Endpoint: foo\r\n") + len("X-Pad: \r\n"))
			return c.raw(t, head+"X-Pad: "+strings.Repeat("a", pad)+"\r\n\r\n")
		}},
		"both `Transfer-Encoding` and `Content-Length` (HTTP/1.1 and HTTP/1.0; the connection closes)": {provoke: func(t *testing.T, c *errEnv) errAnswer {
			return c.raw(t, "POST / HTTP/1.1\r\nHost: x\r\nX-Pico-Endpoint: foo\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n")
		}},
		"a chunked request body with a chunk-size line (extensions included) or a trailer line over 4 KiB": {edge: []string{}, provoke: func(t *testing.T, c *errEnv) errAnswer {
			port, _ := hold(t)
			c.e.serve(t, "http", "foo", port)
			return c.raw(t, "POST / HTTP/1.1\r\nHost: x\r\nX-Pico-Endpoint: foo\r\nTransfer-Encoding: chunked\r\n\r\n1;"+strings.Repeat("x", 5000)+"\r\na\r\n0\r\n\r\n")
		}},
		"obsolete line folding (HTTP/1.1; the connection closes)": {provoke: func(t *testing.T, c *errEnv) errAnswer {
			return c.raw(t, "GET / HTTP/1.1\r\nHost: x\r\nX-Pico-Endpoint: foo\r\nX-A: 1\r\n folded\r\n\r\n")
		}},
		"a request body that ends before its `Content-Length` (64 KiB or less)": {edge: []string{}, provoke: func(t *testing.T, c *errEnv) errAnswer {
			port, _ := hold(t)
			c.e.serve(t, "http", "foo", port)
			conn, err := net.Dial("tcp", c.e.proxy)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(waitTimeout))
			io.WriteString(conn, "POST / HTTP/1.1\r\nHost: x\r\nX-Pico-Endpoint: foo\r\nContent-Length: 10\r\n\r\nabc")
			conn.(*net.TCPConn).CloseWrite()
			return readAnswer(t, bufio.NewReader(conn))
		}},
		"`--proxy-auth`: no token, or a bad one": {edge: auth, provoke: func(t *testing.T, c *errEnv) errAnswer {
			exp := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			tok := token(t, secret, jwt.MapClaims{"sub": "e2e", "iat": exp.Add(-time.Hour).Unix(), "exp": exp.Unix(),
				"pico": map[string]any{"endpoints": []string{"foo"}}})
			return c.get(t, "GET", "/", "X-Pico-Endpoint: foo", "X-Pico-Authorization: Bearer "+tok)
		}},
		"`--proxy-auth`: a valid token that does not list the endpoint": {edge: auth, provoke: func(t *testing.T, c *errEnv) errAnswer {
			tok, code := runCmd(t, nil, bin.edge, "token", "--hmac-secret-file", secret, "--endpoints", "foo")
			if code != 0 {
				t.Fatalf("pico-edge token: %s", tok)
			}
			return c.get(t, "GET", "/", "X-Pico-Endpoint: bar", "X-Pico-Authorization: Bearer "+strings.TrimSpace(tok))
		}},
		"more than `--new-conns-per-ip` new connections a second from one address": {edge: []string{"--new-conns-per-ip", "1"}, provoke: func(t *testing.T, c *errEnv) errAnswer {
			// A burst of two a second: the third or a later one, sent at
			// once, is refused.
			for range 20 {
				a := c.get(t, "GET", "/", "X-Pico-Endpoint: foo")
				if a.status != http.StatusBadGateway {
					return a
				}
			}
			t.Fatal("20 connections in a row, none refused")
			return errAnswer{}
		}},
	}
}
