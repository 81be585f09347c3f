package edge_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/qlog"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/auth/authtest"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

func TestInflightPerEndpoint(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.MaxInflightPerEndpoint = 2 })
	hold := make(chan struct{})
	entered := make(chan struct{}, 8)
	slow := edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-hold
	}))
	a := n.NewAgent(t)
	if err := a.ServeUpstream(t.Context(), "slow", quicutil.KindHTTP, slow); err != nil {
		t.Fatal(err)
	}
	if err := a.ServeUpstream(t.Context(), "other", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	c := edgetest.Client(t)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			resp, err := c.Do(n.Request(t, "GET", "slow", "/", nil))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("held request: %d", resp.StatusCode)
			}
		})
	}
	<-entered
	<-entered
	resp, body := do(t, c, n.Request(t, "GET", "slow", "/", nil))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(body, `endpoint "slow" has 2 requests in flight`) {
		t.Fatalf("third request: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	// Another endpoint is not affected.
	if resp, body := do(t, c, n.Request(t, "GET", "other", "/", nil)); resp.StatusCode != 200 {
		t.Fatalf("other endpoint: %d %s", resp.StatusCode, body)
	}
	close(hold)
	wg.Wait()
	if resp, body := do(t, c, n.Request(t, "GET", "slow", "/", nil)); resp.StatusCode != 200 {
		t.Fatalf("after the held requests ended: %d %s", resp.StatusCode, body)
	}
}

// TestConnsPerEndpoint: upgraded connections count against
// MaxConnsPerEndpoint, not against the requests in flight, and beyond it
// an upgrade gets 503 saying so.
func TestConnsPerEndpoint(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.MaxInflightPerEndpoint = 1; c.MaxConnsPerEndpoint = 2 })
	serve(t, n, "ws", quicutil.KindHTTP, edgetest.Upstream(t, upgradeEcho()))
	for range 2 {
		conn, br := dialUpgrade(t, n, "ws")
		io.WriteString(conn, "hi\n")
		if got, err := br.ReadString('\n'); got != "hi\n" {
			t.Fatalf("echo = %q, %v", got, err)
		}
	}
	// Two upgrades open; a request still has the one in-flight slot.
	c := edgetest.Client(t)
	req := n.Request(t, "GET", "ws", "/", nil)
	req.Header.Set("Upgrade", "echo") // without Connection: upgrade, a plain request
	if resp, body := do(t, c, req); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "want upgrade") {
		t.Fatalf("a request beside two upgrades: %d %s, want the upstream's 400", resp.StatusCode, body)
	}
	conn, err := net.Dial("tcp", strings.TrimPrefix(n.ProxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: ws.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(string(b), `endpoint "ws" has 2 upgraded connections and TCP connections open`) {
		t.Fatalf("third upgrade: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
}

func TestConnsPerTCPEndpoint(t *testing.T) {
	// The requests' limit does not apply to TCP connections.
	n := edgetest.NewNode(t, func(c *edge.Config) { c.MaxInflightPerEndpoint = 1; c.MaxConnsPerEndpoint = 2 })
	a := n.NewAgent(t)
	if err := a.ServeUpstream(t.Context(), "db", quicutil.KindTCP, echoServer(t)); err != nil {
		t.Fatal(err)
	}
	fwd := n.NewAgent(t)
	for range 2 {
		c, err := fwd.Dial(t.Context(), "db")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	_, err := fwd.Dial(t.Context(), "db")
	var de *agent.DialError
	if !errors.As(err, &de) || de.Code != quicutil.StatusOverloaded || !strings.Contains(err.Error(), "2 upgraded connections and TCP connections open") {
		t.Fatalf("third connection: %v, want overloaded", err)
	}
}

func TestNewConnectionsPerSource(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.NewConnsPerIPPerSecond = 1 }) // burst 3
	addr := strings.TrimPrefix(n.ProxyURL, "http://")
	refused := 0
	for range 10 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x.localhost\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("read answer: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		c.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			refused++
			if !strings.Contains(string(b), "too many new connections") {
				t.Fatalf("429 body %q", b)
			}
		}
	}
	if refused == 0 || refused > 8 {
		t.Fatalf("%d of 10 quick connections refused, want most but not the first ones", refused)
	}
	// Another source address has its own budget.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Skipf("cannot bind 127.0.0.2: %v", err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x.localhost\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode == http.StatusTooManyRequests {
		t.Fatalf("another source: %v %v", resp, err)
	}
}

// Go's HTTP client sees the per-source 429 every time, over 200 new
// connections: the edge answers it after reading the request head. Written
// before the request, it reached the client on what it took for an idle
// connection ("Unsolicited response received on idle HTTP channel"), and
// the request failed instead.
func TestNewConnectionsPerSourceGoClient(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.NewConnsPerIPPerSecond = 1 })
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	refused := 0
	for i := range 200 {
		resp, err := c.Get(n.ProxyURL + "/")
		if err != nil {
			t.Fatalf("request %d (%d told 429 before): %v; want an answer, 429 once over the limit", i, refused, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			refused++
			if !strings.Contains(string(b), "too many new connections") || resp.Header.Get("Retry-After") != "1" {
				t.Fatalf("429 %q with Retry-After %q", b, resp.Header.Get("Retry-After"))
			}
		}
	}
	if refused < 150 {
		t.Fatalf("%d of 200 quick connections told 429, want most", refused)
	}
}

// The per-source 429 comes only once the request head is in: a refused
// connection that has sent nothing, or half a head, reads nothing yet.
func TestNewConnectionsPerSourceAnswerAfterTheHead(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.NewConnsPerIPPerSecond = 1 }) // burst 3
	addr := strings.TrimPrefix(n.ProxyURL, "http://")
	for range 6 { // spend the burst
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	refused := 0
	for i := range 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, part := range []string{"", "GET / HTTP/1.1\r\nHost: x.localhost\r\n"} {
			io.WriteString(c, part)
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if n, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection %d, after sending %q: read %d bytes, %v; want nothing before the head's end", i, part, n, err)
			}
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "Connection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("connection %d: read the answer: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			refused++
		}
	}
	// 10 connections in under 2 s against a burst of 3 and 1 a second:
	// some of the last 4 are refused.
	if refused == 0 {
		t.Fatal("no connection told 429")
	}
	// A refused connection that never sends is closed by the node's
	// shutdown at the end of the test (goleak checks its goroutine ended).
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
}

func TestConnectionsPerListener(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.MaxConnsPerListener = 2 })
	addr := strings.TrimPrefix(n.ProxyURL, "http://")
	var open []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A request proves the edge took it.
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x.localhost\r\n\r\n")
		if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
			t.Fatalf("connection within the limit: %v", err)
		}
		open = append(open, c)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("third connection: read %d bytes, want it closed", n)
	}
	open[0].Close()
	// The place is given back: a new connection is served again.
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x.localhost\r\nConnection: close\r\n\r\n")
		_, err = http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHandshakeRetryAboveRate(t *testing.T) {
	// With one handshake a second allowed, the others must first pass a
	// Retry: agents still connect, one round trip later.
	n := edgetest.NewNode(t, func(c *edge.Config) { c.HandshakesPerSecond = 1 })
	up := edgetest.Upstream(t, echoHeaders())
	for i := range 5 {
		a := n.NewAgent(t, func(c *agent.Config) { c.Connections = 1 })
		if err := a.ServeUpstream(t.Context(), fmt.Sprintf("e%d", i), quicutil.KindHTTP, up); err != nil {
			t.Fatalf("agent %d: %v", i, err)
		}
	}
}

func TestRegistrationsAreThrottled(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.RegistrationsPerSecond = 2 }) // burst 4
	ids := make([]string, 8)
	for i := range ids {
		ids[i] = fmt.Sprintf("r%d", i)
	}
	start := time.Now()
	registerEach(t, n, ids) // 8 Register messages: the last ones wait
	t.Logf("8 registrations at 2/s (burst 4) took %v", time.Since(start).Round(time.Millisecond))
	resp, err := http.Get(n.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(b), "pico_registrations_throttled_total 0") || !strings.Contains(string(b), "pico_registrations_throttled_total") {
		t.Fatalf("no throttled registration counted:\n%s", grepLines(string(b), "pico_registrations"))
	}
}

// registerEach registers each id in its own Register message, all sent at
// once, and checks every one is accepted.
func registerEach(t *testing.T, n *edgetest.Node, ids []string) {
	t.Helper()
	conn := dialAgentRaw(t, n)
	str, err := conn.OpenStreamSync(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	msg := (&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil)
	msg, _ = quicutil.AppendMessage(msg, &quicutil.Hello{Agent: "each"})
	for i, id := range ids {
		msg, _ = quicutil.AppendMessage(msg, &quicutil.Register{Seq: uint64(i), Endpoints: []quicutil.Endpoint{{ID: id, Kind: quicutil.KindHTTP}}})
	}
	if _, err := str.Write(msg); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(str)
	if _, err := quicutil.ReadMessage(br); err != nil {
		t.Fatal(err)
	}
	for range ids {
		m, err := quicutil.ReadMessage(br)
		res, ok := m.(*quicutil.Result)
		if err != nil || !ok || len(res.Results) != 1 || res.Results[0].Code != quicutil.StatusOK {
			t.Fatalf("result: %+v %v", m, err)
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// dialAgentRaw opens a bare agent connection to n; it closes in cleanup.
func dialAgentRaw(t *testing.T, n *edgetest.Node) *quic.Conn {
	t.Helper()
	conn, err := quic.DialAddr(t.Context(), n.AgentAddr, &tls.Config{RootCAs: n.CAPool, ServerName: "localhost",
		NextProtos: []string{quicutil.ALPNAgent}}, quicutil.AgentConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return conn
}

// TestMalformedStreamFlood sends 10,000 malformed stream headers, from
// bare agent connections, while a client sends requests to an agent of
// the same node: each malformed stream is refused, a connection is closed
// after repeated ones, the requests all succeed, and the node is left
// with no goroutine more than before.
func TestMalformedStreamFlood(t *testing.T) {
	const total = 10000
	n := edgetest.NewNode(t)
	serve(t, n, "ok", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	c := edgetest.Client(t)
	do(t, c, n.Request(t, "GET", "ok", "/", nil)) // warm
	before := runtime.NumGoroutine()

	stop := make(chan struct{})
	var served, failed atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := c.Do(n.Request(t, "GET", "ok", "/", nil))
			if err != nil || resp.StatusCode != 200 {
				failed.Add(1)
				t.Logf("request during the flood: %v %v", resp, err)
			} else {
				served.Add(1)
			}
			if resp != nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	})

	garbage := [][]byte{{7, 0, 0}, (&rawHeader{kind: 2, id: "Bad!"}).bytes(), (&rawHeader{kind: 0}).bytes(),
		{1, 0xff, 0xff}, (&rawHeader{kind: 9, id: "x"}).bytes()}
	sent, refused, conns := 0, 0, 0
	for sent < total {
		conn := dialAgentRaw(t, n)
		conns++
		ctrl, err := conn.OpenStreamSync(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		hello, _ := quicutil.AppendMessage((&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil), &quicutil.Hello{AgentID: "flood"})
		ctrl.Write(hello)
		if _, err := quicutil.ReadMessage(bufio.NewReader(ctrl)); err != nil {
			t.Fatalf("welcome: %v", err)
		}
		onConn := 0
		for conn.Context().Err() == nil && sent < total {
			str, err := conn.OpenStreamSync(t.Context())
			if err != nil {
				break
			}
			onConn++
			str.Write(garbage[sent%len(garbage)])
			sent++
			// Refused: answered so, or the edge closed the connection of
			// repeated offences before the answer.
			var se *quicutil.StatusError
			var appErr *quic.ApplicationError
			if err := quicutil.ReadAnswer(str); errors.As(err, &se) && se.Code == quicutil.StatusBadHeader ||
				errors.As(err, &appErr) && appErr.ErrorCode == quicutil.ConnCodeProtocolError {
				refused++
			} else {
				t.Errorf("malformed stream %d: answer %v", sent, err)
			}
			str.CancelRead(0)
			str.Close()
		}
		if sent == total {
			conn.CloseWithError(0, "") // the last one may not have reached the limit
			break
		}
		select { // the edge closes it after repeated errors
		case <-conn.Context().Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("connection %d still open after %d malformed streams on it (%d in all)", conns, onConn, sent)
		}
		var appErr *quic.ApplicationError
		if err := context.Cause(conn.Context()); !errors.As(err, &appErr) || appErr.ErrorCode != quicutil.ConnCodeProtocolError ||
			!strings.Contains(appErr.ErrorMessage, "malformed streams") {
			t.Fatalf("connection %d ended with %v, want a protocol error for malformed streams", conns, err)
		}
	}
	close(stop)
	wg.Wait()
	if refused != total || failed.Load() != 0 || served.Load() == 0 {
		t.Fatalf("%d of %d malformed streams refused; %d requests failed, %d served", refused, total, failed.Load(), served.Load())
	}
	t.Logf("%d malformed streams on %d connections, each refused; %d requests served meanwhile, none failed", sent, conns, served.Load())
	// Every goroutine of the flood is gone.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after the flood, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestConnectionsPerToken(t *testing.T) {
	now := time.Now()
	n := edgetest.NewNode(t, authOpt(fixedClock(now)), func(c *edge.Config) { c.MaxConnsPerToken = 2 })
	token := authtest.HS256(t, authtest.Claims(now, "foo"))
	// hello connects with tok and reports whether the edge welcomed it.
	hello := func(tok string) (*quic.Conn, bool) {
		conn := dialAgentRaw(t, n)
		str, err := conn.OpenStreamSync(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := quicutil.AppendMessage((&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil), &quicutil.Hello{Token: tok, AgentID: "same-token"})
		str.Write(msg)
		m, err := quicutil.ReadMessage(bufio.NewReader(str))
		_, welcomed := m.(*quicutil.Welcome)
		return conn, err == nil && welcomed
	}
	first, ok1 := hello(token)
	_, ok2 := hello(token)
	third, ok3 := hello(token)
	if !ok1 || !ok2 || ok3 {
		t.Fatalf("welcomed: %v %v %v, want the first two only", ok1, ok2, ok3)
	}
	<-third.Context().Done()
	var appErr *quic.ApplicationError
	if err := context.Cause(third.Context()); !errors.As(err, &appErr) || appErr.ErrorCode != quicutil.ConnCodeLimit ||
		!strings.Contains(appErr.ErrorMessage, "this token has 2 agent connections") {
		t.Fatalf("third connection: %v, want the per-token limit", err)
	}
	// Another token is not affected.
	if _, ok := hello(authtest.HS256(t, authtest.Claims(now.Add(time.Second), "foo"))); !ok {
		t.Fatal("another token was refused")
	}
	// A place given back is taken again.
	first.CloseWithError(0, "")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := hello(token); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection accepted after one with the token closed")
		}
	}
}

func TestStreamsPerAgent(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.MaxStreamsPerAgent = 2 })
	hold := make(chan struct{})
	entered := make(chan struct{}, 8)
	a := n.NewAgent(t)
	if err := a.ServeUpstream(t.Context(), "slow", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-hold
	}))); err != nil {
		t.Fatal(err)
	}
	c := edgetest.Client(t)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if resp, err := c.Do(n.Request(t, "GET", "slow", "/", nil)); err == nil {
				resp.Body.Close()
			}
		})
	}
	<-entered
	<-entered
	resp, body := do(t, c, n.Request(t, "GET", "slow", "/", nil))
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "has 2 streams open") {
		t.Fatalf("a third stream to the agent: %d %s", resp.StatusCode, body)
	}
	close(hold)
	wg.Wait()
	// The two streams are back in the pool: a request reuses one.
	if resp, body := do(t, c, n.Request(t, "GET", "slow", "/", nil)); resp.StatusCode != 200 {
		t.Fatalf("after the held requests: %d %s", resp.StatusCode, body)
	}
}

// TestHTTP3HandshakeRetryAboveRate: the HTTP/3 door has the handshake
// limiter too. With one handshake a second allowed, new HTTP/3 clients
// must first pass a Retry (their qlog shows one) and still get answers.
func TestHTTP3HandshakeRetryAboveRate(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.HandshakesPerSecond = 1 })
	serve(t, n, "web", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	dir := t.TempDir()
	t.Setenv("QLOGDIR", dir)
	for i := range 4 {
		tr := &http3.Transport{
			TLSClientConfig: &tls.Config{RootCAs: n.CAPool, ServerName: "localhost"},
			QUICConfig:      &quic.Config{Tracer: qlog.DefaultConnectionTracer},
		}
		req, _ := http.NewRequest("GET", n.TLSURL+"/", nil)
		req.Host = "web.localhost"
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			tr.Close()
			t.Fatalf("HTTP/3 client %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		tr.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("HTTP/3 client %d: %s", i, resp.Status)
		}
	}
	retried := 0
	files, _ := filepath.Glob(filepath.Join(dir, "*.sqlog"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(`"packet_type":"retry"`)) {
			retried++
		}
	}
	if len(files) != 4 || retried < 2 {
		t.Fatalf("%d qlog files, %d with a Retry; want 4 clients and at least 2 of them retried (1 handshake a second)", len(files), retried)
	}
}
