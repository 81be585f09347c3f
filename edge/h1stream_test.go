package edge_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"

	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// rawUpstream serves each TCP connection with answer, which reads requests
// from br and writes responses to c.
func rawUpstream(t *testing.T, answer func(br *bufio.Reader, c net.Conn)) string {
	t.Helper()
	return tcpServer(t, func(c net.Conn) { answer(bufio.NewReader(c), c) })
}

// readHead reads one request head.
func readHead(br *bufio.Reader) error {
	tp := textproto.NewReader(br)
	if _, err := tp.ReadLine(); err != nil {
		return err
	}
	_, err := tp.ReadMIMEHeader()
	return err
}

// An upstream that closes every connection after one response, without
// saying so, leaves dead keep-alive streams in the edge's pool: no GET may
// fail for it. (A POST may, like with http.Transport, when the stream's
// end arrives after the request left: it may have reached the upstream.)
func TestStreamPathUpstreamClosesIdleConnections(t *testing.T) {
	up := rawUpstream(t, func(br *bufio.Reader, c net.Conn) {
		if readHead(br) != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	n := edgetest.NewNode(t)
	serve(t, n, "flaky", quicutil.KindHTTP, up)
	c := edgetest.Client(t)
	for i := range 100 {
		resp, body := do(t, c, n.Request(t, "GET", "flaky", "/", nil))
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
}

// A response head larger than 64 KiB is refused with a 502 that says so.
func TestStreamPathResponseHeadTooLarge(t *testing.T) {
	up := rawUpstream(t, func(br *bufio.Reader, c net.Conn) {
		if readHead(br) != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: "+strings.Repeat("a", 70<<10)+"\r\nContent-Length: 0\r\n\r\n")
		io.Copy(io.Discard, br) // until the edge gives up the stream
	})
	n := edgetest.NewNode(t)
	serve(t, n, "big", quicutil.KindHTTP, up)
	resp, body := do(t, edgetest.Client(t), n.Request(t, "GET", "big", "/", nil))
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "response head is larger than 64 KiB") {
		t.Fatalf("got %d %q; want 502 naming the head size", resp.StatusCode, body)
	}
}

// Informational responses (103 Early Hints) reach the client before the
// final one.
func TestStreamPathForwards1xx(t *testing.T) {
	up := edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		io.WriteString(w, "done")
	}))
	n := edgetest.NewNode(t)
	serve(t, n, "hints", quicutil.KindHTTP, up)
	var got []int
	var link string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got = append(got, code)
		link = h.Get("Link")
		return nil
	}}
	req := n.Request(t, "GET", "hints", "/", nil)
	req = req.WithContext(httptrace.WithClientTrace(context.Background(), trace))
	resp, body := do(t, edgetest.Client(t), req)
	if resp.StatusCode != 200 || body != "done" || len(got) != 1 || got[0] != 103 || !strings.Contains(link, "style.css") {
		t.Fatalf("got %d %q, 1xx %v (Link %q); want 103 with its Link, then 200", resp.StatusCode, body, got, link)
	}
}

// A client that goes away in the middle of a response body ends the
// stream; the next requests are served as before.
func TestStreamPathClientGoneMidBody(t *testing.T) {
	chunk := strings.Repeat("x", 64<<10)
	up := edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			io.WriteString(w, "small")
			return
		}
		for range 1024 { // 64 MiB: more than any window holds
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
	}))
	n := edgetest.NewNode(t)
	serve(t, n, "big", quicutil.KindHTTP, up)
	c := edgetest.Client(t)
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		req := n.Request(t, "GET", "big", "/", nil).WithContext(ctx)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		cancel()
		resp.Body.Close()
		if resp, body := do(t, c, n.Request(t, "GET", "big", "/small", nil)); resp.StatusCode != 200 || body != "small" {
			t.Fatalf("after a client left: %d %q", resp.StatusCode, body)
		}
	}
}

// A keep-alive stream reaches the endpoint it was opened to, never another
// one of the same target: two endpoints of one agent, and through a relay,
// where the target is the other node with all its endpoints.
func TestStreamPathKeepsEndpointsApart(t *testing.T) {
	named := func(name string) string {
		return edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) }))
	}
	cl := edgetest.NewCluster(t, 2)
	n0, n1 := cl.Nodes[0], cl.Nodes[1]
	a := n0.NewAgent(t, singleLink)
	for _, ep := range []string{"one", "two", "three"} {
		if err := a.ServeUpstream(t.Context(), ep, quicutil.KindHTTP, named(ep)); err != nil {
			t.Fatal(err)
		}
		n1.WaitRemote(t, ep, 1)
	}
	c := edgetest.Client(t)
	for k, n := range []*edgetest.Node{n0, n1} {
		for i := range 60 {
			ep := []string{"one", "two", "three"}[i%3]
			resp, body := do(t, c, n.Request(t, "GET", ep, "/", nil))
			if resp.StatusCode != 200 || body != ep {
				t.Fatalf("node %d: GET %s (request %d): %d %q", k, ep, i, resp.StatusCode, body)
			}
		}
	}
}
