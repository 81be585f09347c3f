package edge_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// keepAliveUpstream is an HTTP/1.1 upstream that keeps connections open
// after each answer, counts the requests it reads, and closes every open
// connection when told: an upstream whose idle timeout strikes.
type keepAliveUpstream struct {
	addr     string
	requests atomic.Int64
	mu       sync.Mutex
	conns    map[net.Conn]bool
}

func newKeepAliveUpstream(t *testing.T) *keepAliveUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &keepAliveUpstream{addr: ln.Addr().String(), conns: make(map[net.Conn]bool)}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		u.closeIdle()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns[c] = true
			u.mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					body, _ := io.ReadAll(req.Body)
					u.requests.Add(1)
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
				}
			})
		}
	})
	return u
}

// closeIdle closes every connection, between requests.
func (u *keepAliveUpstream) closeIdle() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for c := range u.conns {
		c.Close()
		delete(u.conns, c)
	}
}

// An upstream that closes its idle keep-alive connection just before the
// next request comes costs no request, POSTs included: the agent has not
// sent the request on (its upstream had closed) and says so
// (StreamCodeUnsent), and the edge sends it again on a new stream. Each
// request reaches the upstream exactly once. Through a relaying node too.
func TestUpstreamClosingIdleConnectionCostsNoRequest(t *testing.T) {
	const rounds = 100
	cl := edgetest.NewCluster(t, 2)
	n0, n1 := cl.Nodes[0], cl.Nodes[1]
	up := newKeepAliveUpstream(t)
	a := n0.NewAgent(t, singleLink)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up.addr); err != nil {
		t.Fatal(err)
	}
	n0.WaitRoute(t, "foo", 1)
	n1.WaitRemote(t, "foo", 1)
	for name, via := range map[string]*edgetest.Node{"agent's node": n0, "relaying node": n1} {
		t.Run(name, func(t *testing.T) {
			c := edgetest.Client(t)
			before, retriesBefore := up.requests.Load(), metric(t, via, "pico_stream_retries_total")
			for i := range rounds {
				// A request leaves its stream idle, the upstream closes it,
				// the next request comes on that stream.
				for _, body := range []string{fmt.Sprint("first ", i), fmt.Sprint("second ", i)} {
					resp, got := do(t, c, via.Request(t, "POST", "foo", "/", bytes.NewReader([]byte(body))))
					if resp.StatusCode != 200 || got != body {
						t.Fatalf("round %d: %d %q, want 200 %q", i, resp.StatusCode, got, body)
					}
				}
				up.closeIdle()
			}
			if got := up.requests.Load() - before; got != 2*rounds {
				t.Errorf("the upstream read %d requests, want %d (each once)", got, 2*rounds)
			}
			// The edge's pool often saw the agent's end of the stream
			// first; the other times it sent the request again.
			retries := metric(t, via, "pico_stream_retries_total") - retriesBefore
			t.Logf("%d of %d requests after a close were sent again", retries, rounds)
			if retries == 0 {
				t.Errorf("no request was sent again: the test did not reach the case it is for")
			}
		})
	}
}
