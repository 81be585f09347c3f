package edge_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// Trailers of a chunked response reach the client on the direct path,
// announced ones and others, as with ReverseProxy; the upstream's Alt-Svc
// and hop-by-hop headers do not.
func TestDirectPathTrailers(t *testing.T) {
	up := rawUpstream(t, func(br *bufio.Reader, c net.Conn) {
		for readHead(br) == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n"+
				"Alt-Svc: h3=\":9999\"\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\n"+
				"5\r\nhello\r\n0\r\nX-Sum: 42\r\nX-Late: 7\r\n\r\n")
		}
	})
	n := edgetest.NewNode(t)
	serve(t, n, "tr", quicutil.KindHTTP, up)
	c := edgetest.Client(t)
	for i := range 3 { // the stream is reused after a response with trailers
		resp, body := do(t, c, n.Request(t, "GET", "tr", "/", nil))
		if resp.StatusCode != 200 || body != "hello" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		if got := resp.Trailer.Get("X-Sum"); got != "42" {
			t.Errorf("request %d: announced trailer X-Sum = %q, want 42 (trailers %v)", i, got, resp.Trailer)
		}
		if got := resp.Trailer.Get("X-Late"); got != "7" {
			t.Errorf("request %d: unannounced trailer X-Late = %q, want 7 (trailers %v)", i, got, resp.Trailer)
		}
		for _, h := range []string{"Alt-Svc", "X-Hop", "Keep-Alive"} {
			if v := resp.Header.Get(h); v != "" {
				t.Errorf("request %d: %s: %q reached the client", i, h, v)
			}
		}
		if resp.Header.Get("X-Kept") != "yes" {
			t.Errorf("request %d: X-Kept lost: %v", i, resp.Header)
		}
	}
}

// An upstream that switches protocols unasked gets a 502 that says so.
func TestDirectPathUnaskedSwitch(t *testing.T) {
	up := rawUpstream(t, func(br *bufio.Reader, c net.Conn) {
		if readHead(br) == nil {
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			io.Copy(io.Discard, br)
		}
	})
	n := edgetest.NewNode(t)
	serve(t, n, "sw", quicutil.KindHTTP, up)
	resp, body := do(t, edgetest.Client(t), n.Request(t, "GET", "sw", "/", nil))
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "switched protocols") {
		t.Fatalf("got %d %q; want 502 saying the upstream switched protocols", resp.StatusCode, body)
	}
}

// A body the upstream cuts short is not passed off as whole: the client's
// connection is aborted, before the head if it was still buffered, else
// in the body.
func TestDirectPathCutBody(t *testing.T) {
	up := rawUpstream(t, func(br *bufio.Reader, c net.Conn) {
		if readHead(br) == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
		}
	})
	n := edgetest.NewNode(t)
	serve(t, n, "cut", quicutil.KindHTTP, up)
	resp, err := edgetest.Client(t).Do(n.Request(t, "GET", "cut", "/", nil))
	if err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("got %v; want the connection cut", err)
		}
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read %q, %v; want unexpected EOF", b, err)
	}
}

// Requests the direct path leaves to ReverseProxy still arrive: a query
// ReverseProxy re-encodes (';') and a client's invalid Host.
func TestDirectPathLeavesOthersToReverseProxy(t *testing.T) {
	got := make(chan string, 4)
	up := rawUpstream(t, func(br *bufio.Reader, c net.Conn) {
		for {
			line, err := br.ReadString('\n')
			if err != nil || readHeadRest(br) != nil {
				return
			}
			got <- strings.TrimSpace(line)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	n := edgetest.NewNode(t)
	serve(t, n, "rp", quicutil.KindHTTP, up)
	conn, err := net.Dial("tcp", strings.TrimPrefix(n.ProxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	for _, tc := range []struct{ req, want string }{
		{"GET /q?a=1;b=2&c=3 HTTP/1.1\r\nHost: rp.example.com\r\n\r\n", "GET /q?c=3 HTTP/1.1"},
		{"GET /plain?a=1&c=3 HTTP/1.1\r\nHost: rp.example.com\r\n\r\n", "GET /plain?a=1&c=3 HTTP/1.1"},
	} {
		io.WriteString(conn, tc.req)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%q: status %d", tc.req, resp.StatusCode)
		}
		if line := <-got; line != tc.want {
			t.Errorf("upstream saw %q, want %q", line, tc.want)
		}
	}
}

// readHeadRest reads the header lines of a request head whose request
// line was read.
func readHeadRest(br *bufio.Reader) error {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if line == "\r\n" || line == "\n" {
			return nil
		}
	}
}

// Bodies up to 64 KiB of known length are read whole and sent with the
// head; larger ones, and those whose client expects 100-continue, stream
// through ReverseProxy. All arrive whole, with their length.
func TestDirectPathBodies(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "b", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	c := edgetest.Client(t)
	for _, size := range []int{1, 1000, 64 << 10, 64<<10 + 1, 300 << 10} {
		for _, expect := range []bool{false, true} {
			payload := strings.Repeat("p", size-1) + "!"
			req := n.Request(t, "PUT", "b", "/put", strings.NewReader(payload))
			if expect {
				req.Header.Set("Expect", "100-continue")
			}
			resp, body := do(t, c, req)
			var e echoed
			if err := json.Unmarshal([]byte(body), &e); err != nil || resp.StatusCode != 200 {
				t.Fatalf("%d bytes (expect %v): %d %.200q", size, expect, resp.StatusCode, body)
			}
			if e.Body != payload || e.Method != "PUT" || e.Header["Content-Length"] != nil && e.Header["Content-Length"][0] != strconv.Itoa(size) {
				t.Errorf("%d bytes (expect %v): upstream got %s with %d bytes, Content-Length %q", size, expect, e.Method, len(e.Body), e.Header["Content-Length"])
			}
		}
	}
}

// A client whose body ends before its Content-Length gets a 400 that says
// so, and the upstream sees no request.
func TestDirectPathShortBody(t *testing.T) {
	var seen atomic.Int32
	n := edgetest.NewNode(t)
	serve(t, n, "s", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
	})))
	conn, err := net.Dial("tcp", strings.TrimPrefix(n.ProxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "POST / HTTP/1.1\r\nHost: s.example.com\r\nContent-Length: 10\r\n\r\nabc")
	conn.(*net.TCPConn).CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "request body ended after 3 of its 10 bytes") {
		t.Fatalf("got %d %q; want 400 naming the short body", resp.StatusCode, b)
	}
	if seen.Load() != 0 {
		t.Fatal("the upstream saw the request")
	}
}
