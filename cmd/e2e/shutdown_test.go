package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestGracefulShutdown sends SIGTERM to the edge while a slow request is in
// flight: /readyz fails, the agent is told to move, the request completes,
// the edge exits with code 0, and the agent keeps trying to reconnect.
func TestGracefulShutdown(t *testing.T) {
	e2e(t)
	forEachTransport(t, testGracefulShutdown)
}

func testGracefulShutdown(t *testing.T, tr transport) {
	const grace = 30 * time.Second
	e := startEdge(t, "--shutdown-grace", grace.String()).over(t, tr)
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseFn := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseFn)
	port := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
			io.WriteString(w, "finished")
		case <-r.Context().Done():
		}
	}))
	agent := e.startAgent(t, "--log-level", "debug", "http", "slow", "127.0.0.1:"+port)
	checkStatusLine(t, tr, agent.waitLineFor(t, 0, "registration", startTimeout, contains("endpoint slow (http) is registered")))
	e.checkLinks(t, 1)

	c := newClient(t, 2*waitTimeout)
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+e.proxy+"/", nil)
		req.Header.Set("X-Pico-Endpoint", "slow")
		resp, err := c.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{status: resp.StatusCode, body: string(b), err: err}
	}()
	select {
	case <-arrived:
	case <-time.After(waitTimeout):
		t.Fatal("request did not reach the upstream")
	}

	agentMark := agent.mark()
	sigterm := time.Now()
	e.signal(t, syscall.SIGTERM)
	poll(t, waitTimeout, "/readyz to answer 503", func() bool {
		resp, err := e.admc.Get("http://" + e.admin + "/readyz")
		if err != nil {
			t.Fatalf("/readyz while draining: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	agent.waitLine(t, agentMark, "goaway or lost connection", func(l string) bool {
		return isMsg("edge asked the agent to move; reconnecting")(l) || isMsg("lost connection to edge; reconnecting")(l)
	})
	select {
	case r := <-done:
		t.Fatalf("request ended before the upstream was released: %d %q %v", r.status, r.body, r.err)
	default:
	}

	releaseFn()
	select {
	case r := <-done:
		if r.err != nil || r.status != http.StatusOK || r.body != "finished" {
			t.Fatalf("in-flight request: %d %q %v; want 200 finished", r.status, r.body, r.err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("in-flight request did not complete after release")
	}
	st := e.waitExit(t, grace-time.Since(sigterm))
	if !st.Exited() || st.ExitCode() != 0 {
		t.Fatalf("edge ended with %s, want exit code 0", st)
	}

	// The agent stays up and keeps trying to reach the (gone) edge.
	exitMark := agent.mark()
	agent.waitLine(t, exitMark, "a reconnection attempt after the edge exited", func(l string) bool {
		return isMsg("cannot connect to edge; retrying with backoff")(l) || isMsg("still cannot connect to edge")(l)
	})
	if agent.hasExited() {
		t.Fatalf("agent exited (%s) after the edge went away; want it to keep retrying", agent.exitStatus())
	}
}

// TestGracefulShutdownTCP sends SIGTERM to the edge while a TCP forward is
// open: docs/configuration.md promises TCP forwards in flight the grace period, so
// /readyz answers 503, the connection keeps working until the client
// closes it, and then the edge exits 0.
func TestGracefulShutdownTCP(t *testing.T) {
	e2e(t)
	forEachTransport(t, testGracefulShutdownTCP)
}

func testGracefulShutdownTCP(t *testing.T, tr transport) {
	const grace = 30 * time.Second
	e := startEdge(t, "--shutdown-grace", grace.String()).over(t, tr)
	port := serveTCP(t, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
	})
	e.serve(t, "tcp", "echo", "127.0.0.1:"+port)
	fwd, addr := e.forward(t, "echo")
	e.waitRoute(t, "echo")

	conn, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := conn.(*net.TCPConn)
	c.SetDeadline(time.Now().Add(2 * waitTimeout))
	roundTrip := func(msg string) {
		t.Helper()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("echo of %q: %q, %v", msg, got, err)
		}
	}
	roundTrip("before the drain")

	fwdMark := fwd.mark()
	sigterm := time.Now()
	e.signal(t, syscall.SIGTERM)
	poll(t, waitTimeout, "/readyz to answer 503", func() bool {
		resp, err := e.admc.Get("http://" + e.admin + "/readyz")
		if err != nil {
			t.Fatalf("/readyz while a TCP forward drains: %v; want 503", err)
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	// The forwarder is an agent connection too: it is told to move.
	fwd.waitLine(t, fwdMark, "goaway", isMsg("edge asked the agent to move; reconnecting"))
	roundTrip("during the drain")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after CloseWrite: %q, %v; want EOF", rest, err)
	}
	st := e.waitExit(t, grace-time.Since(sigterm))
	if !st.Exited() || st.ExitCode() != 0 {
		t.Fatalf("edge ended with %s, want exit code 0", st)
	}
}

// TestGracefulShutdownWebSocket sends SIGTERM to the edge while a WebSocket
// is open: upgraded connections get the grace period too, so messages keep
// flowing both ways after the agent was told to move, the socket closes
// cleanly, and then the edge exits 0.
func TestGracefulShutdownWebSocket(t *testing.T) {
	e2e(t)
	forEachTransport(t, testGracefulShutdownWebSocket)
}

func testGracefulShutdownWebSocket(t *testing.T, tr transport) {
	const grace = 30 * time.Second
	e := startEdge(t, "--shutdown-grace", grace.String()).over(t, tr)
	port := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
		defer cancel()
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if c.Write(ctx, typ, msg) != nil {
				return
			}
		}
	}))
	agent := e.serve(t, "http", "ws", "127.0.0.1:"+port)

	ctx, cancel := context.WithTimeout(t.Context(), 2*waitTimeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+e.proxy+"/", &websocket.DialOptions{
		HTTPClient: newClient(t, 0),
		HTTPHeader: http.Header{"X-Pico-Endpoint": {"ws"}},
	})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.CloseNow()
	echo := func(msg string) {
		t.Helper()
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		if _, got, err := c.Read(ctx); err != nil || string(got) != msg {
			t.Fatalf("echo of %q: %q, %v", msg, got, err)
		}
	}
	echo("before the drain")

	agentMark := agent.mark()
	sigterm := time.Now()
	e.signal(t, syscall.SIGTERM)
	agent.waitLine(t, agentMark, "goaway", isMsg("edge asked the agent to move; reconnecting"))
	echo("during the drain")
	if err := c.Close(websocket.StatusNormalClosure, "done"); err != nil {
		t.Fatalf("close: %v", err)
	}
	st := e.waitExit(t, grace-time.Since(sigterm))
	if !st.Exited() || st.ExitCode() != 0 {
		t.Fatalf("edge ended with %s, want exit code 0", st)
	}
}
