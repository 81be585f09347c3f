package e2e

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestAgentDrain: pico-agent stopped with SIGTERM withdraws its endpoint
// first, so the edge sends new requests to the endpoint's other agent;
// the request in flight gets its full answer; and the agent exits as soon
// as that request ended, long before its grace period. With no agent left,
// a request gets the edge's precise 502.
func TestAgentDrain(t *testing.T) {
	e2e(t)
	e := startEdge(t)
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseFn := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseFn)
	slowPort := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/slow" {
			io.WriteString(w, "from a")
			return
		}
		w.Header().Set("Content-Length", "8")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		arrived <- struct{}{}
		select {
		case <-release:
			io.WriteString(w, "finished")
		case <-r.Context().Done():
		}
	}))
	otherPort := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "from b")
	}))
	const grace = 30 * time.Second
	a := e.startAgent(t, "--grace-period", grace.String(), "http", "foo", "127.0.0.1:"+slowPort)
	a.waitLineFor(t, 0, "registration", startTimeout, contains("endpoint foo (http) is registered"))

	c := newClient(t, 2*waitTimeout)
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+e.proxy+"/slow", nil)
		req.Header.Set("X-Pico-Endpoint", "foo")
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
		t.Fatal("the slow request did not reach agent a's upstream")
	}
	b := e.startAgent(t, "http", "foo", "127.0.0.1:"+otherPort)
	b.waitLineFor(t, 0, "registration", startTimeout, contains("endpoint foo (http) is registered"))
	e.waitEndpointAgents(t, "foo", 2, waitTimeout)

	mark := a.mark()
	a.signal(t, syscall.SIGTERM)
	a.waitLine(t, mark, "endpoints withdrawn", isMsg("shutting down: endpoints withdrawn from the edges; waiting for the streams in flight"))
	e.waitEndpointAgents(t, "foo", 1, waitTimeout)
	fresh := newClient(t, waitTimeout)
	for i := range 5 {
		resp, body := e.request(t, fresh, "GET", "foo", "/", nil)
		if resp.StatusCode != http.StatusOK || body != "from b" {
			t.Fatalf("request %d while a drains: %d %q; want 200 from b", i, resp.StatusCode, body)
		}
	}
	if a.hasExited() {
		t.Fatalf("agent a exited with the slow request in flight:\n%s", strings.Join(a.output(), "\n"))
	}

	released := time.Now()
	releaseFn()
	select {
	case r := <-done:
		if r.err != nil || r.status != http.StatusOK || r.body != "finished" {
			t.Fatalf("the request in flight: %d %q %v; want 200 finished", r.status, r.body, r.err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the request in flight did not finish")
	}
	// It exits once the request ended, not at the end of its grace.
	st := a.waitExit(t, grace/2)
	took := time.Since(released)
	if !st.Success() {
		t.Errorf("agent a: %s; want exit 0", st)
	}
	a.waitLine(t, mark, "drained", isMsg("shutting down: the streams in flight ended"))
	t.Logf("agent a exited %s after its last request was released", took.Round(time.Millisecond))

	// The last agent of the endpoint leaves: the edge says nothing serves it.
	b.signal(t, syscall.SIGTERM)
	if st := b.waitExit(t, grace/2); !st.Success() {
		t.Errorf("agent b: %s; want exit 0", st)
	}
	resp, body := e.request(t, fresh, "GET", "foo", "/", nil)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, `no upstream for endpoint "foo"`) {
		t.Errorf("with no agent left: %d %q; want 502 no upstream for endpoint", resp.StatusCode, body)
	}
}
