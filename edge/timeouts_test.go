package edge_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// A slowloris client that never finishes its header is cut off after the
// read-header timeout; other clients are served meanwhile.
func TestSlowlorisCutOff(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.ReadHeaderTimeout = 300 * time.Millisecond })
	serve(t, n, "web", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	conn, err := net.Dial("tcp", strings.TrimPrefix(n.ProxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: web.localhost\r\nX-Slow: ")
	closed := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, conn) // returns when the edge closes
		closed <- err
	}()
	// Meanwhile a normal client is served.
	resp, _ := do(t, edgetest.Client(t), n.Request(t, "GET", "web", "/", nil))
	if resp.StatusCode != 200 {
		t.Fatalf("normal client: status %d", resp.StatusCode)
	}
	select {
	case <-closed:
	case <-time.After(20 * time.Second): // a ceiling for failure only
		t.Fatal("slow client still connected 20s after a 300ms read-header timeout")
	}
}

// A client that goes away cancels its request: the upstream sees its
// request context end, and the stream to the agent is released.
func TestClientGoneCancelsUpstream(t *testing.T) {
	n := edgetest.NewNode(t)
	arrived, cancelled := make(chan struct{}), make(chan struct{})
	serve(t, n, "slow", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		close(arrived)
		<-r.Context().Done()
		close(cancelled)
	})))
	conn, err := net.Dial("tcp", strings.TrimPrefix(n.ProxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: slow.localhost\r\n\r\n")
	br := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("response head: %v, %v", resp, err)
	}
	<-arrived
	start := time.Now()
	conn.Close()
	select {
	case <-cancelled:
		t.Logf("upstream saw the cancellation after %v", time.Since(start))
	case <-time.After(20 * time.Second): // a ceiling for failure only
		t.Fatal("upstream request still running 20s after its client went away")
	}
	// The stream was released: nothing is in flight any more.
	c := edgetest.Client(t)
	deadline := time.Now().Add(20 * time.Second) // a ceiling for failure only
	for {
		_, body := do(t, c, mustReq(t, "GET", n.AdminURL+"/metrics"))
		if activeStreamsZero.MatchString(body) {
			break
		}
		if time.Now().After(deadline) {
			i := strings.Index(body, "pico_active_streams")
			t.Fatalf("streams still in flight 20s after the client left: %.40s", body[i:])
		}
		time.Sleep(20 * time.Millisecond) // polling a metric: there is no event to wait on
	}
}

var activeStreamsZero = regexp.MustCompile(`(?m)^pico_active_streams 0$`)

func mustReq(t *testing.T, method, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// An HTTP/3 client that stalls in the middle of its request body is cut off
// after the stream idle timeout; the node serves others meanwhile and
// releases the stream.
func TestStalledHTTP3Stream(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.StreamIdleTimeout = 300 * time.Millisecond })
	a := n.NewAgent(t, func(c *agent.Config) { c.StreamIdleTimeout = 300 * time.Millisecond })
	if err := a.ServeUpstream(t.Context(), "web", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	c := clients(t, n)["HTTP/3.0"]
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	go pw.Write([]byte("part of a body, then nothing")) // the rest never comes
	req, _ := http.NewRequest("POST", n.TLSURL+"/", pr)
	req.Host = "web.pico.localhost"
	req.ContentLength = 1 << 20
	done := make(chan int, 1)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			done <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	// Another client is served while the first one stalls.
	req2, _ := http.NewRequest("GET", n.TLSURL+"/", nil)
	req2.Host = "web.pico.localhost"
	if resp, _ := do(t, c, req2); resp.StatusCode != 200 {
		t.Fatalf("other request: status %d", resp.StatusCode)
	}
	select {
	case status := <-done:
		if status == 200 {
			t.Fatalf("the stalled request got 200")
		}
	case <-time.After(20 * time.Second): // a ceiling for failure only
		t.Fatal("the stalled HTTP/3 request is still open 20s after a 300ms stream idle timeout")
	}
}
