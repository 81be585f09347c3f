package quicutil_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/quicutil"
)

// safety bounds a wait that should end at once; reaching it fails the test,
// it never paces one.
const safety = 20 * time.Second

var testCerts = sync.OnceValues(func() (*certs.Bundle, error) { return certs.Generate() })

// newLink connects two QUIC connections over loopback with ALPNAgent:
// client dials with clientConf, server accepts with serverConf. Everything
// is closed when the test ends.
func newLink(t testing.TB, clientConf, serverConf *quic.Config) (client, server *quic.Conn) {
	t.Helper()
	b, err := testCerts()
	if err != nil {
		t.Fatalf("certs.Generate: %v", err)
	}
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &b.Cert, nil }
	ln, err := quic.ListenAddr("127.0.0.1:0", certs.ServerTLSConfig(getCert, quicutil.ALPNAgent), serverConf)
	if err != nil {
		t.Fatalf("quic.ListenAddr: %v", err)
	}
	t.Cleanup(func() { ln.Close() })

	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() {
		tr.Close()
		udp.Close()
	})

	ctx, cancel := context.WithTimeout(t.Context(), safety)
	defer cancel()
	type accepted struct {
		conn *quic.Conn
		err  error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept(ctx)
		acc <- accepted{c, err}
	}()
	client, err = tr.Dial(ctx, ln.Addr(), certs.ClientTLSConfig(b.CAPool, "localhost", quicutil.ALPNAgent), clientConf)
	if err != nil {
		cancel()
		<-acc
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { client.CloseWithError(0, "") })
	a := <-acc
	if a.err != nil {
		t.Fatalf("accept: %v", a.err)
	}
	t.Cleanup(func() { a.conn.CloseWithError(0, "") })
	return client, a.conn
}

// defaultLink is newLink with LinkConfig on both ends.
func defaultLink(t testing.TB) (client, server *quic.Conn) {
	t.Helper()
	return newLink(t, quicutil.LinkConfig(100), quicutil.LinkConfig(100))
}

// openStream opens a stream on c, bounded by the safety timeout.
func openStream(t testing.TB, c *quic.Conn) *quic.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), safety)
	defer cancel()
	str, err := c.OpenStreamSync(ctx)
	if err != nil {
		t.Fatalf("OpenStreamSync: %v", err)
	}
	return str
}

// acceptStream accepts a stream on c, bounded by the safety timeout. The
// peer must have written to it (QUIC.md pitfall 4).
func acceptStream(t testing.TB, c *quic.Conn) *quic.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), safety)
	defer cancel()
	str, err := c.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("AcceptStream: %v", err)
	}
	str.SetDeadline(time.Now().Add(safety)) // a hung read or write fails the test
	return str
}

// streamPair returns both ends of one new stream: opened on client,
// accepted on server. Its first byte is consumed.
func streamPair(t testing.TB, client, server *quic.Conn) (opened, accepted *quic.Stream) {
	t.Helper()
	opened = openStream(t, client)
	opened.SetDeadline(time.Now().Add(safety))
	if _, err := opened.Write([]byte{0}); err != nil {
		t.Fatalf("write first byte: %v", err)
	}
	accepted = acceptStream(t, server)
	var b [1]byte
	if _, err := accepted.Read(b[:]); err != nil {
		t.Fatalf("read first byte: %v", err)
	}
	return opened, accepted
}

// tcpPair returns both ends of a loopback TCP connection, closed when the
// test ends.
func tcpPair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln.SetDeadline(time.Now().Add(safety))
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	client.SetDeadline(time.Now().Add(safety))
	return client, server
}

// wantStreamError checks that err is a *quic.StreamError from the peer
// with one of codes.
func wantStreamError(t testing.TB, what string, err error, codes ...quic.StreamErrorCode) {
	t.Helper()
	var se *quic.StreamError
	if !errors.As(err, &se) || !slices.Contains(codes, se.ErrorCode) || !se.Remote {
		t.Fatalf("%s: got %v, want a remote *quic.StreamError with code %v", what, err, codes)
	}
}

// wantReset checks that err is a TCP reset, not a clean EOF.
func wantReset(t testing.TB, what string, err error) {
	t.Helper()
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("%s: got %v, want ECONNRESET", what, err)
	}
}

// recv waits for a value on ch, failing the test after the safety timeout.
func recv[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(safety):
		t.Fatalf("%s: nothing after %v", what, safety)
		var zero T
		return zero
	}
}
