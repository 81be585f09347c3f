package edge_test

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// Both Transfer-Encoding and Content-Length get a 400 that says why, over
// plain HTTP/1.1 and over HTTP/1.1 in TLS; the connection ends after it.
func TestGuardRefusesTEAndCL(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "web", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	const raw = "POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
	dials := map[string]func() (net.Conn, error){
		"plain": func() (net.Conn, error) { return net.Dial("tcp", strings.TrimPrefix(n.ProxyURL, "http://")) },
		"tls": func() (net.Conn, error) {
			return tls.Dial("tcp", strings.TrimPrefix(n.TLSURL, "https://"),
				&tls.Config{RootCAs: n.CAPool, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
		},
	}
	for name, dial := range dials {
		t.Run(name, func(t *testing.T) {
			c, err := dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second)) // a ceiling for failure only
			io.WriteString(c, raw)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 400 || !strings.Contains(string(body), "both Transfer-Encoding and Content-Length") || !resp.Close {
				t.Fatalf("got %d %q (close %v), want 400 naming both headers and a closed connection", resp.StatusCode, body, resp.Close)
			}
		})
	}
}

// The guard follows the framing of pipelined requests on one connection
// (chunked with a trailer, Content-Length, none) and strips a client's own
// X-Pico-Reject.
func TestGuardFollowsFraming(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "web", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	c, err := net.Dial("tcp", strings.TrimPrefix(n.ProxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second)) // a ceiling for failure only
	io.WriteString(c, "POST /one HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"+
		"POST /two HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 3\r\n\r\nabc"+
		"GET /three HTTP/1.1\r\nHost: web.localhost\r\nX-Pico-Reject: 400 forged\r\nConnection: close\r\n\r\n")
	br := bufio.NewReader(c)
	want := []struct{ path, body string }{{"/one", "hello world"}, {"/two", "abc"}, {"/three", ""}}
	for _, w := range want {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", w.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		var e echoed
		json.Unmarshal(b, &e)
		if resp.StatusCode != 200 || e.Path != w.path || e.Body != w.body {
			t.Fatalf("got %d %s %q, want 200 %s %q (%s)", resp.StatusCode, e.Path, e.Body, w.path, w.body, b)
		}
		if v := http.Header(e.Header).Get("X-Pico-Reject"); v != "" {
			t.Fatalf("%s: the upstream saw X-Pico-Reject %q", w.path, v)
		}
	}
}

// A client still sending a head over the limit when the 431 comes can
// finish sending and read the 431: the refused connection says EOF and
// reads on for a moment before it closes. Closed with the client's bytes
// unread, it would reset, and the client's write fails (Go's HTTP client
// then reports the write error, not the 431).
func TestGuardRefusalIsNotLostToAReset(t *testing.T) {
	n := edgetest.NewNode(t)
	for i := range 5 {
		c, err := net.Dial("tcp", strings.TrimPrefix(n.ProxyURL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		head := "GET / HTTP/1.1\r\nHost: foo.localhost\r\nX-Big: " + strings.Repeat("a", 40<<10)
		if _, err := io.WriteString(c, head); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // the edge refuses and is done with the connection
		if _, err := io.WriteString(c, strings.Repeat("b", 16<<10)+"\r\n\r\n"); err != nil {
			t.Fatalf("try %d: the rest of the head: %v", i, err)
		}
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Fatalf("try %d: read %d bytes, then %v; want the 431 and EOF", i, len(got), err)
		}
		if !strings.HasPrefix(string(got), "HTTP/1.1 431 ") {
			t.Fatalf("try %d: got %q, want a 431", i, got)
		}
	}
}

// A chunk extension of 100 KB (a chunk-size line over 4 KiB) gets a 400
// that says what was too long, not a bare 499 and a log line about the
// request head.
func TestGuardRefusesLongChunkLine(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "web", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "read it all")
	})))
	c, err := net.Dial("tcp", strings.TrimPrefix(n.ProxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second)) // a ceiling for failure only
	go io.WriteString(c, "POST / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"5\r\nhello\r\n5;ext="+strings.Repeat("x", 100<<10)+"\r\nworld\r\n0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "a chunk-size line (with its extensions) of more than 4096 bytes") {
		t.Fatalf("got %s %q; want 400 saying the chunk-size line is too long", resp.Status, body)
	}
}
