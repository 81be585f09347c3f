package edge_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
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
