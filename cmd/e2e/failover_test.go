package e2e

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// nameServer answers every request with name.
func nameServer(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name)
	})
}

// result is the outcome of one request.
type result struct {
	start, end time.Time
	status     int
	body       string
	err        error
}

// requestLoop sends GETs to endpoint one after the other until stop is
// called (or maxLoopRequests were sent), and records each outcome.
type requestLoop struct {
	mu   sync.Mutex
	res  []result
	quit chan struct{}
	wg   sync.WaitGroup
}

func startRequestLoop(t testing.TB, e *edgeProc, c *http.Client, endpoint string) *requestLoop {
	l := &requestLoop{quit: make(chan struct{})}
	l.wg.Go(func() {
		for range maxLoopRequests {
			select {
			case <-l.quit:
				return
			default:
			}
			r := result{start: time.Now()}
			req, _ := http.NewRequest("GET", "http://"+e.proxy+"/", nil)
			req.Header.Set("X-Pico-Endpoint", endpoint)
			resp, err := c.Do(req)
			if err == nil {
				var b []byte
				b, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				r.status, r.body = resp.StatusCode, string(b)
			}
			r.err, r.end = err, time.Now()
			l.mu.Lock()
			l.res = append(l.res, r)
			l.mu.Unlock()
		}
	})
	t.Cleanup(l.stop)
	return l
}

// maxLoopRequests bounds a request loop that nobody stops.
const maxLoopRequests = 50000

func (l *requestLoop) stop() {
	select {
	case <-l.quit:
	default:
		close(l.quit)
	}
	l.wg.Wait()
}

// countSince returns the number of requests that started after t.
func (l *requestLoop) countSince(t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.res {
		if r.start.After(t) {
			n++
		}
	}
	return n
}

func (l *requestLoop) results() []result {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]result(nil), l.res...)
}

// TestFailover runs two agents on endpoint lb: requests spread over both;
// when one is SIGKILLed during a loop of GETs, every GET still succeeds on
// the other and, once the edge dropped the dead agent, all go to the
// survivor; when the last one dies, clients get a prompt 502 naming the
// endpoint.
func TestFailover(t *testing.T) {
	e2e(t)
	forEachTransport(t, testFailover)
}

func testFailover(t *testing.T, tr transport) {
	e := startEdge(t).over(t, tr)
	agentA := e.serve(t, "http", "lb", "127.0.0.1:"+serveHTTP(t, nameServer("a")))
	agentB := e.serve(t, "http", "lb", "127.0.0.1:"+serveHTTP(t, nameServer("b")))
	e.waitEndpointAgents(t, "lb", 2, waitTimeout)
	c := newClient(t, 20*time.Second)

	seen := map[string]int{}
	for range 200 {
		resp, body := e.request(t, c, "GET", "lb", "/", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200: %s", resp.StatusCode, body)
		}
		seen[body]++
	}
	if seen["a"] == 0 || seen["b"] == 0 || len(seen) != 2 {
		t.Fatalf("200 requests went to %v, want both a and b", seen)
	}

	// Kill a while GETs run; the edge notices when the link times out.
	edgeMark := e.mark()
	t0 := time.Now()
	loop := startRequestLoop(t, e, c, "lb")
	poll(t, waitTimeout, "10 requests in the loop", func() bool { return loop.countSince(t0) >= 10 })
	killed := time.Now()
	agentA.killAndWait(t)
	poll(t, 20*time.Second, "the edge to drop the killed agent", func() bool { return len(e.agents(t).Agents) == 1 })
	noticed := time.Now()
	poll(t, waitTimeout, "50 requests after the edge dropped the agent", func() bool { return loop.countSince(noticed) >= 50 })
	loop.stop()
	res := loop.results()
	var failed []string
	during := 0
	for i, r := range res {
		if r.end.After(killed) && r.start.Before(noticed) {
			during++
		}
		switch {
		case r.err != nil:
			failed = append(failed, r.err.Error())
		case r.status != http.StatusOK:
			failed = append(failed, r.body)
		case r.start.After(noticed) && r.body != "b":
			t.Errorf("request %d after the edge dropped agent a was served by %q, want b", i, r.body)
		}
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d GETs failed while agent a died, want all retried on b; first: %s", len(failed), len(res), failed[0])
	}
	t.Logf("%d requests, %d of them between the kill and the edge noticing (%s)", len(res), during, noticed.Sub(killed).Round(time.Millisecond))
	// A GET sent to the dead agent was retried on b: the access log says so.
	e.waitLine(t, edgeMark, "a retried request", isMsg("request", "endpoint_id", "lb", "status", "200", "retried", "true"))
	if a := e.agents(t).Agents; len(a) != 1 || len(a[0].Endpoints) != 1 || a[0].Endpoints[0] != "lb/http" {
		t.Errorf("/status/agents = %+v, want one agent serving lb/http", a)
	}

	// The last agent dies: a prompt 502 (the client allows 20s), naming lb.
	agentB.killAndWait(t)
	resp, body := e.request(t, c, "GET", "lb", "/", nil)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, `"lb"`) {
		t.Fatalf("after the last agent died: %d %q, want 502 naming \"lb\"", resp.StatusCode, body)
	}
	e.waitEndpointAgents(t, "lb", 0, 20*time.Second)
	resp, body = e.request(t, c, "GET", "lb", "/", nil)
	if want := "no upstream for endpoint \"lb\"\n"; resp.StatusCode != http.StatusBadGateway || body != want {
		t.Fatalf("after the edge dropped the last agent: %d %q, want 502 %q", resp.StatusCode, body, want)
	}
}

// TestAgentKilledMidRequest SIGKILLs the agent while its upstream holds a
// request: the client gets a 502, or a body cut short, well before its own
// 20s timeout; it never hangs.
func TestAgentKilledMidRequest(t *testing.T) {
	e2e(t)
	forEachTransport(t, testAgentKilledMidRequest)
}

func testAgentKilledMidRequest(t *testing.T, tr transport) {
	for name, tc := range map[string]struct {
		inBody bool // the upstream sent the header and part of the body
	}{
		"before the response": {},
		"in the body":         {inBody: true},
	} {
		t.Run(name, func(t *testing.T) {
			e := startEdge(t).over(t, tr)
			arrived := make(chan struct{}, 1)
			port := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.inBody {
					// No Content-Length: the edge flushes as it goes.
					io.WriteString(w, strings.Repeat("x", 1024))
					http.NewResponseController(w).Flush()
				}
				arrived <- struct{}{}
				<-r.Context().Done() // the agent's connection breaks when it dies
			}))
			agent := e.serve(t, "http", "held", "127.0.0.1:"+port)
			c := newClient(t, 20*time.Second)
			done := make(chan result, 1)
			gotFirst := make(chan struct{}, 1) // the client read the header and the first 1024 bytes
			go func() {
				req, _ := http.NewRequest("GET", "http://"+e.proxy+"/", nil)
				req.Header.Set("X-Pico-Endpoint", "held")
				resp, err := c.Do(req)
				if err != nil {
					done <- result{err: err}
					return
				}
				defer resp.Body.Close()
				var first []byte
				if tc.inBody {
					first = make([]byte, 1024)
					n, err := io.ReadFull(resp.Body, first)
					if err != nil {
						done <- result{status: resp.StatusCode, body: string(first[:n]), err: err}
						return
					}
					gotFirst <- struct{}{}
				}
				b, err := io.ReadAll(resp.Body)
				done <- result{status: resp.StatusCode, body: string(first) + string(b), err: err}
			}()
			// Kill the agent once the request is surely in its hands: the
			// upstream has it and, in the body case, the client has the
			// first bytes (else they could die with the agent, unsent).
			reached := (<-chan struct{})(arrived)
			if tc.inBody {
				reached = gotFirst
			}
			select {
			case <-reached:
			case r := <-done:
				t.Fatalf("request ended before the agent was killed: %d %q %v", r.status, r.body, r.err)
			case <-time.After(waitTimeout):
				t.Fatal("request did not reach the upstream")
			}
			agent.killAndWait(t)
			var r result
			select {
			case r = <-done:
			case <-time.After(2 * waitTimeout):
				t.Fatal("request still running long after the client's timeout")
			}
			var ne net.Error
			if errors.As(r.err, &ne) && ne.Timeout() {
				t.Fatalf("request hung until the client's timeout: %v", r.err)
			}
			if !tc.inBody {
				if r.err != nil || r.status != http.StatusBadGateway || !strings.Contains(r.body, `"held"`) {
					t.Fatalf("got %d %q, %v; want 502 naming the endpoint", r.status, r.body, r.err)
				}
				return
			}
			if r.status != http.StatusOK || r.err == nil || len(r.body) != 1024 {
				t.Fatalf("got %d with %d body bytes, err %v; want 200 with the 1024 bytes sent, then an error", r.status, len(r.body), r.err)
			}
		})
	}
}
