package quicutil_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/quicutil"
)

// startJoinUpstream is startJoin with JoinUpstream: far plays the edge,
// client the upstream server.
func startJoinUpstream(t *testing.T) *joined {
	t.Helper()
	return startJoinWith(t, func(server *net.TCPConn, c *quicutil.Conn) quicutil.JoinResult {
		return quicutil.JoinUpstream(c, server, 0)
	})
}

// stopCode waits until the peer of s stops s's sending side, and returns
// its code.
func stopCode(t *testing.T, s *quic.Stream) quic.StreamErrorCode {
	t.Helper()
	select {
	case <-s.Context().Done():
	case <-time.After(safety):
		t.Fatal("the peer never stopped the stream's sending side")
	}
	var se *quic.StreamError
	if err := context.Cause(s.Context()); !errors.As(err, &se) || !se.Remote {
		t.Fatalf("the stream's sending side ended with %v, want a remote *quic.StreamError", err)
	}
	return se.ErrorCode
}

// exchange sends a request from far to client and an answer back.
func (j *joined) exchange(t *testing.T, req, resp string) {
	t.Helper()
	if _, err := j.far.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, j.client, len(req)); got != req {
		t.Fatalf("upstream read %q, want %q", got, req)
	}
	if _, err := j.client.Write([]byte(resp)); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, j.far, len(resp)); got != resp {
		t.Fatalf("far read %q, want %q", got, resp)
	}
}

// The upstream closes its keep-alive connection after an answer; the next
// request, coming after, goes nowhere, and the edge is told it was not
// sent.
func TestJoinUpstreamUnsentAfterIdleClose(t *testing.T) {
	j := startJoinUpstream(t)
	j.exchange(t, "POST /one", "answer 1")
	if err := j.client.CloseWrite(); err != nil { // FIN; the test still sees what reaches it
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(j.far); err != nil || len(rest) != 0 {
		t.Fatalf("far after the upstream's FIN: %q, %v; want a clean EOF", rest, err)
	}
	if _, err := j.far.Write([]byte("POST /two")); err != nil {
		t.Fatal(err)
	}
	if code := stopCode(t, j.far); code != quicutil.StreamCodeUnsent {
		t.Fatalf("stop code %d, want StreamCodeUnsent (%d)", code, quicutil.StreamCodeUnsent)
	}
	res := j.wait(t)
	if res.Err != nil || res.AToB != int64(len("POST /one")) || res.BToA != int64(len("answer 1")) {
		t.Fatalf("JoinUpstream = %+v; want AToB 9, BToA 8, Err nil", res)
	}
	if rest, err := io.ReadAll(j.client); err != nil || len(rest) != 0 {
		t.Fatalf("the upstream got %q (%v) after it closed; want nothing", rest, err)
	}
}

// peerClosed sees a FIN or a reset waiting to be read, and nothing else.
func TestPeerClosed(t *testing.T) {
	client, server := tcpPair(t)
	if quicutil.PeerClosed(server) {
		t.Fatal("an open idle connection is called closed")
	}
	client.Write([]byte("x"))
	client.CloseWrite()
	if quicutil.PeerClosed(server) {
		t.Fatal("a connection with a byte waiting is called closed")
	}
	if got := readN(t, server, 1); got != "x" {
		t.Fatalf("read %q", got)
	}
	waitClosed := func(c net.Conn, what string) {
		t.Helper()
		deadline := time.Now().Add(safety)
		for !quicutil.PeerClosed(c) {
			if time.Now().After(deadline) {
				t.Fatalf("a connection whose %s waits is not called closed", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitClosed(server, "FIN")
	c2, s2 := tcpPair(t)
	c2.SetLinger(0)
	c2.Close()
	waitClosed(s2, "reset")
	if quicutil.PeerClosed(nil) {
		t.Fatal("nil is called closed")
	}
}

// A request that reached the upstream before it closed is never called
// unsent: the upstream may have acted on it. Nor are the bytes of an
// upgraded connection (a WebSocket frame) after its upstream closed: the
// stream ends as it did, when the edge closes it.
func TestJoinUpstreamNotUnsent(t *testing.T) {
	for _, tc := range []struct {
		name       string
		before     func(j *joined) // after a first exchange
		after      string          // what far sends once the upstream closed
		wantClient string          // what reaches the upstream after the first exchange
	}{
		{"request read by the upstream", func(j *joined) {
			j.far.Write([]byte("POST /two"))
		}, "POST /three", "POST /two"},
		{"WebSocket frame after the upgrade", nil, "\x88\x80mask", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := startJoinUpstream(t)
			j.exchange(t, "GET /ws", "HTTP/1.1 101 Switching Protocols\r\n\r\n")
			if tc.before != nil {
				tc.before(j)
				if got := readN(t, j.client, len(tc.wantClient)); got != tc.wantClient {
					t.Fatalf("upstream read %q, want %q", got, tc.wantClient)
				}
			}
			j.client.CloseWrite() // no answer
			if rest, err := io.ReadAll(j.far); err != nil || len(rest) != 0 {
				t.Fatalf("far after the upstream's FIN: %q, %v; want a clean EOF", rest, err)
			}
			if _, err := j.far.Write([]byte(tc.after)); err != nil {
				t.Fatal(err)
			}
			j.far.Close() // the edge ends the stream
			if res := j.wait(t); res.Err != nil {
				t.Fatalf("JoinUpstream ended with %v, want a clean end", res.Err)
			}
			var se *quic.StreamError
			if errors.As(context.Cause(j.far.Context()), &se) && se.ErrorCode == quicutil.StreamCodeUnsent {
				t.Fatal("called unsent")
			}
			if rest, err := io.ReadAll(j.client); err != nil || len(rest) != 0 {
				t.Fatalf("the upstream got %q (%v) after it closed; want nothing", rest, err)
			}
		})
	}
}

// A relay (Join of two streams) passes StreamCodeUnsent on to the stream
// the request came from.
func TestJoinPassesUnsentOn(t *testing.T) {
	a, b := defaultLink(t) // the edge that sent the request, the relaying node
	fromA, atB := streamPair(t, a, b)
	b2, c := defaultLink(t) // the relaying node, the agent
	toC, atC := streamPair(t, b2, c)
	done := make(chan quicutil.JoinResult, 1)
	go func() {
		done <- quicutil.Join(quicutil.NewConn(atB, b.LocalAddr(), b.RemoteAddr()), quicutil.NewConn(toC, b2.LocalAddr(), b2.RemoteAddr()), 0)
	}()
	if _, err := fromA.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	atC.SetDeadline(time.Now().Add(safety))
	if got := readN(t, atC, 7); got != "request" {
		t.Fatalf("agent read %q", got)
	}
	atC.CancelRead(quicutil.StreamCodeUnsent)
	atC.Close()
	if code := stopCode(t, fromA); code != quicutil.StreamCodeUnsent {
		t.Fatalf("the edge's stream was stopped with %d, want StreamCodeUnsent", code)
	}
	fromA.Close()
	if res := recv(t, "Join", done); res.Err != nil {
		t.Fatalf("Join ended with %v, want a clean end", res.Err)
	}
}

// recorder is an Observer that keeps what it is shown.
type recorder struct {
	mu       sync.Mutex
	to, from []byte
}

func (r *recorder) ToUpstream(p []byte)   { r.mu.Lock(); r.to = append(r.to, p...); r.mu.Unlock() }
func (r *recorder) FromUpstream(p []byte) { r.mu.Lock(); r.from = append(r.from, p...); r.mu.Unlock() }

// JoinUpstreamObserved and JoinObserved move what JoinUpstream and Join
// move, and show the Observer exactly those bytes, each way.
func TestJoinObserved(t *testing.T) {
	for name, join := range map[string]func(*quicutil.Conn, net.Conn, quicutil.Observer) quicutil.JoinResult{
		"JoinUpstreamObserved": func(c *quicutil.Conn, up net.Conn, o quicutil.Observer) quicutil.JoinResult {
			return quicutil.JoinUpstreamObserved(c, up, 0, o)
		},
		"JoinObserved": func(c *quicutil.Conn, up net.Conn, o quicutil.Observer) quicutil.JoinResult {
			return quicutil.JoinObserved(c, up, 0, o)
		},
	} {
		t.Run(name, func(t *testing.T) {
			rec := &recorder{}
			j := startJoinWith(t, func(server *net.TCPConn, c *quicutil.Conn) quicutil.JoinResult {
				return join(c, server, rec)
			})
			j.exchange(t, "GET /a HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
			j.exchange(t, "GET /b HTTP/1.1\r\n\r\n", "HTTP/1.1 204 No Content\r\n\r\n")
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if got, want := string(rec.to), "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"; got != want {
				t.Errorf("observed to the upstream %q, want %q", got, want)
			}
			if got, want := string(rec.from), "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 204 No Content\r\n\r\n"; got != want {
				t.Errorf("observed from the upstream %q, want %q", got, want)
			}
		})
	}
}
