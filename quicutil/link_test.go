package quicutil_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"

	"github.com/pico-edge/pico/quicutil"
)

// startEcho runs a TCP server that echoes each connection and half-closes
// it at EOF. It stops when the test ends.
func startEcho(t testing.TB) string {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(safety))
				io.Copy(c, c)
				c.CloseWrite()
			})
		}
	})
	return ln.Addr().String()
}

// TestStreamCreditReturned opens three times the streams the acceptor
// allows, one after the other. Each is served the way agents serve them:
// half by reading exactly the request, answering and Close (QUIC.md
// pitfall 1: without CancelRead the stream would keep its credit), half by
// Join with a TCP echo server. No OpenStreamSync may block.
func TestStreamCreditReturned(t *testing.T) {
	const maxStreams = 8
	const n = 3 * maxStreams
	client, server := newLink(t, quicutil.LinkConfig(100), quicutil.LinkConfig(maxStreams))
	echo := startEcho(t)
	req := func(i int) string { return fmt.Sprintf("req-%03d", i) }

	served := make(chan struct{})
	var serveErr error
	go func() {
		defer close(served)
		serveErr = serveStreams(server, echo, n, len(req(0)))
	}()
	t.Cleanup(func() {
		server.CloseWithError(0, "")
		<-served
	})

	for i := range n {
		ctx, cancel := context.WithTimeout(t.Context(), safety)
		str, err := client.OpenStreamSync(ctx)
		cancel()
		if err != nil {
			t.Fatalf("stream %d of %d (the acceptor allows %d at once): OpenStreamSync: %v", i, n, maxStreams, err)
		}
		str.SetDeadline(time.Now().Add(safety))
		h := quicutil.StreamHeader{Kind: quicutil.KindTCP, Endpoint: "echo"}
		c := quicutil.OpenConn(str, client.LocalAddr(), client.RemoteAddr(), h.Append(nil), true)
		if _, err := c.Write([]byte(req(i))); err != nil {
			t.Fatalf("stream %d: Write: %v", i, err)
		}
		want := "resp:" + req(i)
		if i%2 == 1 {
			want = req(i)
			c.CloseWrite() // the echo ends when the request does
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != want {
			t.Fatalf("stream %d: ReadAll = %q, %v; want %q, nil", i, got, err, want)
		}
		c.Close()
	}
	recv(t, "acceptor", served)
	if serveErr != nil {
		t.Fatal(serveErr)
	}
}

// serveStreams accepts n streams one after the other: even ones get their
// request of reqLen bytes read, an answer and Close; odd ones are joined
// with a TCP connection to echo.
func serveStreams(server *quic.Conn, echo string, n, reqLen int) error {
	for i := range n {
		str, err := server.AcceptStream(context.Background())
		if err != nil {
			return fmt.Errorf("stream %d: AcceptStream: %w", i, err)
		}
		str.SetDeadline(time.Now().Add(safety))
		h, err := quicutil.ReadStreamHeader(str)
		if err != nil {
			return fmt.Errorf("stream %d: %w", i, err)
		}
		if h.Endpoint != "echo" {
			return fmt.Errorf("stream %d: header %+v", i, h)
		}
		c := quicutil.NewConn(str, server.LocalAddr(), server.RemoteAddr())
		if i%2 == 0 {
			req := make([]byte, reqLen)
			if _, err := io.ReadFull(c, req); err != nil {
				return fmt.Errorf("stream %d: read request: %w", i, err)
			}
			resp := append(quicutil.AppendAnswer(nil, quicutil.StatusOK, ""), "resp:"...)
			if _, err := c.Write(append(resp, req...)); err != nil {
				return fmt.Errorf("stream %d: write: %w", i, err)
			}
			c.Close() // the request's FIN is never read
			continue
		}
		up, err := net.DialTimeout("tcp", echo, safety)
		if err != nil {
			c.Abort(quicutil.StreamCodeAborted)
			return fmt.Errorf("stream %d: %w", i, err)
		}
		str.SetDeadline(time.Time{})
		c.Prepend(quicutil.AppendAnswer(nil, quicutil.StatusOK, ""))
		if res := quicutil.Join(c, up, 0); res.Err != nil {
			return fmt.Errorf("stream %d: Join: %w", i, res.Err)
		}
	}
	return nil
}

// TestStalledStreamsDoNotBlockLink: five streams whose reader never reads
// fill their receive windows; with LinkConfig's connection window a sixth
// stream still echoes megabytes (QUIC.md pitfall 2; with quic-go's default
// 768 KiB connection window the stalled streams alone would exhaust it).
func TestStalledStreamsDoNotBlockLink(t *testing.T) {
	const stalled = 5
	client, server := defaultLink(t)
	window := int(quicutil.LinkConfig(100).InitialStreamReceiveWindow)

	for i := range stalled {
		str := openStream(t, client)
		str.SetWriteDeadline(time.Now().Add(safety))
		// All of it fits the stream window, so Write returns once it is sent.
		if _, err := str.Write(make([]byte, window)); err != nil {
			t.Fatalf("stalled stream %d: Write: %v", i, err)
		}
		acceptStream(t, server) // and never read
	}

	echoed := make(chan error, 1)
	go func() {
		str, err := server.AcceptStream(t.Context())
		if err != nil {
			echoed <- err
			return
		}
		str.SetDeadline(time.Now().Add(safety))
		_, err = io.Copy(str, str)
		echoed <- errors.Join(err, str.Close())
	}()
	str := openStream(t, client)
	str.SetDeadline(time.Now().Add(safety))
	payload := make([]byte, 4*window)
	rand.Read(payload)
	var g errgroup.Group
	g.Go(func() error {
		if _, err := str.Write(payload); err != nil {
			return err
		}
		return str.Close()
	})
	got, err := io.ReadAll(str)
	if err != nil {
		t.Fatalf("echo stream: %v (after %d of %d bytes)", err, len(got), len(payload))
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("echo stream: Write: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo stream: got %d bytes, want the %d sent", len(got), len(payload))
	}
	if err := recv(t, "echo server", echoed); err != nil {
		t.Fatalf("echo server: %v", err)
	}
}
