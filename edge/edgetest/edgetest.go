// Package edgetest starts edge nodes and agents in process, on 127.0.0.1
// with ephemeral ports, for tests (in the style of net/http/httptest). It is
// the only package that imports both edge and agent; only _test.go files
// import it.
package edgetest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/routing"
)

// Node is an edge node running in process.
type Node struct {
	Server    *edge.Server
	ProxyURL  string // http://127.0.0.1:PORT
	AgentAddr string // 127.0.0.1:PORT (UDP)
	AdminURL  string // http://127.0.0.1:PORT
	TLSURL    string // https://127.0.0.1:PORT: HTTPS on TCP and HTTP/3 on UDP, same port
	CAPool    *x509.CertPool
	Bundle    *certs.Bundle

	// AgentTCPURL is the TCP transport on the agent port's number
	// (http://127.0.0.1:PORT/_pico/agent), "" when that TCP port was taken.
	AgentTCPURL string
	// PassthroughAddr is the TLS passthrough door (127.0.0.1:PORT), ""
	// with proxy auth, which excludes it.
	PassthroughAddr string

	cancel  context.CancelFunc
	done    chan error
	stopped bool
}

// WaitStopped waits until Run returned by itself (a drain requested on the
// admin port), and fails the test if it returned an error or took longer
// than d.
func (n *Node) WaitStopped(tb testing.TB, d time.Duration) {
	tb.Helper()
	select {
	case err := <-n.done:
		n.stopped = true
		close(n.done)
		if err != nil {
			tb.Errorf("edge Run: %v", err)
		}
	case <-time.After(d):
		tb.Fatalf("node still running after %s", d)
	}
}

// Stopped reports whether Stop or Kill was called.
func (n *Node) Stopped() bool { return n.stopped }

// Kill stops the node at once, without grace or goodbyes, like a crash:
// it does not leave the cluster, its agents and peers find out by
// themselves.
func (n *Node) Kill(tb testing.TB) {
	tb.Helper()
	n.stopped = true
	n.Server.Close()
	if err, ok := <-n.done; ok {
		close(n.done)
		if err != nil {
			tb.Errorf("edge Run: %v", err)
		}
	}
}

// Logger returns a logger for tests: discarded unless PICO_TEST_LOG=1.
func Logger(tb testing.TB) *slog.Logger {
	if os.Getenv("PICO_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", tb.Name())
}

// NewNode starts an edge node; opts adjust its config. The node stops (with
// a short grace) in tb.Cleanup.
func NewNode(tb testing.TB, opts ...func(*edge.Config)) *Node {
	tb.Helper()
	b, err := certs.Generate()
	if err != nil {
		tb.Fatalf("generate certificates: %v", err)
	}
	return NewNodeOn(tb, "127.0.0.1:0", b, opts...)
}

// NewNodeOn is NewNode with the agent listener on agentAddr and the
// certificates of b, so a test can restart a node where its agents expect it.
func NewNodeOn(tb testing.TB, agentAddr string, b *certs.Bundle, opts ...func(*edge.Config)) *Node {
	tb.Helper()
	cert := b.Cert
	cfg := edge.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil },
		Logger:         Logger(tb),
		ShutdownGrace:  2 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := edge.New(cfg)
	if err != nil {
		tb.Fatalf("edge.New: %v", err)
	}
	lns := edge.Listeners{}
	if lns.Proxy, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		tb.Fatalf("listen: %v", err)
	}
	udpAddr, err := net.ResolveUDPAddr("udp", agentAddr)
	if err != nil {
		tb.Fatalf("agent address: %v", err)
	}
	if udpAddr.Port == 0 {
		lns.AgentTCP, lns.Agent = listenTCPAndUDP(tb)
	} else {
		if lns.Agent, err = net.ListenUDP("udp", udpAddr); err != nil {
			tb.Fatalf("listen: %v", err)
		}
		lns.AgentTCP, _ = net.Listen("tcp", lns.Agent.LocalAddr().String()) // best effort
	}
	if lns.Admin, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		tb.Fatalf("listen: %v", err)
	}
	lns.TLS, lns.H3 = listenTCPAndUDP(tb)
	if cfg.Auth == nil || !cfg.Auth.ProxyAuth {
		if lns.Passthrough, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			tb.Fatalf("listen: %v", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{
		Server:    srv,
		ProxyURL:  "http://" + lns.Proxy.Addr().String(),
		AgentAddr: lns.Agent.LocalAddr().String(),
		AdminURL:  "http://" + lns.Admin.Addr().String(),
		TLSURL:    "https://" + lns.TLS.Addr().String(),
		CAPool:    b.CAPool,
		Bundle:    b,
		cancel:    cancel,
		done:      make(chan error, 1),
	}
	if lns.Passthrough != nil {
		n.PassthroughAddr = lns.Passthrough.Addr().String()
	}
	if lns.AgentTCP != nil {
		n.AgentTCPURL = "http://" + lns.AgentTCP.Addr().String() + "/_pico/agent"
	}
	go func() { n.done <- srv.Run(ctx, lns) }()
	tb.Cleanup(func() { n.Stop(tb) })
	return n
}

// Stop drains the node (its ShutdownGrace) and waits for Run to return.
// Calling it again is a no-op.
func (n *Node) Stop(tb testing.TB) {
	tb.Helper()
	n.stopped = true
	n.cancel()
	if err, ok := <-n.done; ok {
		close(n.done)
		if err != nil {
			tb.Errorf("edge Run: %v", err)
		}
	}
}

// NewAgent starts an agent connected to the node; opts adjust its config.
// It closes in tb.Cleanup.
func (n *Node) NewAgent(tb testing.TB, opts ...func(*agent.Config)) *agent.Agent {
	tb.Helper()
	cfg := agent.Config{
		Edges:   []string{n.AgentAddr},
		RootCAs: n.CAPool,
		Logger:  Logger(tb),
		Backoff: agent.Backoff{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	}
	for _, o := range opts {
		o(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		tb.Fatalf("agent.New: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(context.Background()); err != nil && !errors.Is(err, agent.ErrUnauthorized) {
			tb.Errorf("agent Run: %v", err)
		}
	}()
	tb.Cleanup(func() {
		a.Close()
		<-done
	})
	return a
}

// WaitRoute waits until endpoint id has want agents on the node (0: gone).
func (n *Node) WaitRoute(tb testing.TB, id string, want int) {
	tb.Helper()
	tab := n.Server.Table()
	deadline := time.After(20 * time.Second)
	for {
		changed := tab.Changed()
		_, targets, err := tab.Lookup(routing.EndpointID(id))
		got := len(targets)
		if err != nil {
			got = 0
		}
		if got == want {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			tb.Fatalf("endpoint %q has %d agents, want %d (waited 20s)", id, got, want)
		}
	}
}

// Request builds a request for endpoint id through the node's front door.
func (n *Node) Request(tb testing.TB, method, id, path string, body io.Reader) *http.Request {
	tb.Helper()
	req, err := http.NewRequest(method, n.ProxyURL+path, body)
	if err != nil {
		tb.Fatalf("new request: %v", err)
	}
	if id != "" {
		req.Header.Set(edge.EndpointHeader, id)
	}
	return req
}

// Client returns an HTTP/1.1 client whose idle connections close in cleanup.
func Client(tb testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// Upstream starts an HTTP server on 127.0.0.1 serving h; it closes in
// cleanup. It returns the server's host:port.
func Upstream(tb testing.TB, h http.Handler) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	tb.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// ClosedPort returns a 127.0.0.1 address where nothing listens.
func ClosedPort(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// listenTCPAndUDP opens a TCP and a UDP socket on one 127.0.0.1 port, as
// the HTTPS and HTTP/3 front doors share a port number.
func listenTCPAndUDP(tb testing.TB) (net.Listener, net.PacketConn) {
	tb.Helper()
	for range 50 {
		tcp, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("listen: %v", err)
		}
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: tcp.Addr().(*net.TCPAddr).Port})
		if err == nil {
			return tcp, udp
		}
		tcp.Close() // the UDP port is taken: try another
	}
	tb.Fatalf("no 127.0.0.1 port free for both TCP and UDP")
	return nil, nil
}
