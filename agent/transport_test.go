package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// blackHole is an edge address whose UDP port swallows every packet while
// its TCP port leads to the edge's TCP transport: UDP is blocked on the way.
func blackHole(t *testing.T, n *edgetest.Node) string {
	t.Helper()
	u, err := url.Parse(n.AgentTCPURL)
	if err != nil || n.AgentTCPURL == "" {
		t.Skip("the agent port's TCP twin was taken")
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", udp.LocalAddr().String())
	if err != nil {
		udp.Close()
		t.Skipf("TCP twin of the black hole's UDP port: %v", err)
	}
	done := make(chan struct{}, 2)
	go func() { // swallow
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 2048)
		for {
			if _, _, err := udp.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	conns := make(chan net.Conn, 16)
	go func() { // forward TCP to the edge
		defer func() { done <- struct{}{} }()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", u.Host)
			if err != nil {
				c.Close()
				continue
			}
			conns <- c
			conns <- up
			go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
			go func() { io.Copy(c, up); c.(*net.TCPConn).CloseWrite() }()
		}
	}()
	t.Cleanup(func() {
		udp.Close()
		ln.Close()
		<-done
		<-done
		for {
			select {
			case c := <-conns:
				c.Close()
			default:
				return
			}
		}
	})
	return udp.LocalAddr().String()
}

// With Transport auto and UDP blocked, the agent serves over TCP after one
// QUIC attempt of AutoQUICTimeout.
func TestAutoFallsBackToTCP(t *testing.T) {
	n := edgetest.NewNode(t)
	addr := blackHole(t, n)
	start := time.Now()
	a := n.NewAgent(t, func(c *agent.Config) {
		c.Edges, c.Transport, c.QUICProbe = []string{addr}, agent.TransportAuto, time.Hour
	})
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(hello))); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if status, body := get(t, n, "foo"); status != 200 || body != "hello" {
		t.Fatalf("GET = %d %q", status, body)
	}
	st := a.Status()
	if len(st.Links) != 1 || st.Links[0].Transport != "tcp" {
		t.Fatalf("links = %+v, want one over tcp", st.Links)
	}
	t.Logf("served over TCP %s after the start", took.Round(time.Millisecond))
	if took < agent.AutoQUICTimeout {
		t.Errorf("served after %s: auto should give QUIC %s first", took, agent.AutoQUICTimeout)
	}
}

// authProxy is an HTTP proxy on 127.0.0.1 (with TLS when tlsConf is not
// nil) that answers every CONNECT 407: it wants other credentials.
func authProxy(t *testing.T, tlsConf *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Proxy-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusProxyAuthRequired)
	})}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-served })
	return ln.Addr().String()
}

// checkEdge makes one link attempt with cfg and returns its error.
func checkEdge(t *testing.T, cfg agent.Config) error {
	t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	return a.CheckEdge(ctx)
}

func want407(t *testing.T, err error, proxy string) {
	t.Helper()
	var pe *agent.ProxyError
	if !errors.As(err, &pe) || pe.StatusCode != http.StatusProxyAuthRequired ||
		!strings.Contains(err.Error(), "proxy "+proxy+" refused the credentials (407 Proxy Authentication Required)") {
		t.Fatalf("err = %v, want a ProxyError 407 naming %s", err, proxy)
	}
}

// Over the TCP transport the agent goes through an HTTP proxy (tinyproxy
// in cmd/e2e; here one that refuses the credentials): Config.ProxyURL over
// plain TCP or TLS, else HTTPS_PROXY unless NO_PROXY names the edge.
func TestTCPThroughProxy(t *testing.T) {
	t.Run("ProxyURL", func(t *testing.T) {
		proxy := authProxy(t, nil)
		u, _ := url.Parse("http://alice:wrong@" + proxy)
		want407(t, checkEdge(t, agent.Config{Edges: []string{"127.0.0.1:1"}, Transport: agent.TransportTCP, ProxyURL: u}), proxy)
	})
	t.Run("https ProxyURL", func(t *testing.T) {
		b, err := certs.Generate()
		if err != nil {
			t.Fatal(err)
		}
		proxy := authProxy(t, &tls.Config{Certificates: []tls.Certificate{b.Cert}})
		u, _ := url.Parse("https://alice:wrong@" + strings.Replace(proxy, "127.0.0.1", "localhost", 1))
		err = checkEdge(t, agent.Config{Edges: []string{"127.0.0.1:1"}, Transport: agent.TransportTCP, ProxyURL: u, ProxyRootCAs: b.CAPool})
		want407(t, err, u.Host)
	})
	t.Run("HTTPS_PROXY", func(t *testing.T) {
		proxy := authProxy(t, nil)
		t.Setenv("HTTPS_PROXY", "http://alice:wrong@"+proxy)
		t.Setenv("NO_PROXY", "")
		want407(t, checkEdge(t, agent.Config{Edges: []string{"edge.invalid:8001"}, Transport: agent.TransportTCP}), proxy)
	})
	t.Run("NO_PROXY", func(t *testing.T) {
		proxy := authProxy(t, nil)
		t.Setenv("HTTPS_PROXY", "http://alice:wrong@"+proxy)
		t.Setenv("NO_PROXY", "edge.invalid")
		err := checkEdge(t, agent.Config{Edges: []string{"edge.invalid:8001"}, Transport: agent.TransportTCP})
		var pe *agent.ProxyError
		if err == nil || errors.As(err, &pe) {
			t.Fatalf("err = %v, want a direct dial's error (NO_PROXY names the edge)", err)
		}
	})
}

func TestUDPBlocked(t *testing.T) {
	tests := map[string]struct {
		err  error
		want bool
	}{
		"handshake timeout": {fmt.Errorf("dial edge: %w", &quic.HandshakeTimeoutError{}), true},
		"idle timeout":      {&quic.IdleTimeoutError{}, true},
		"deadline":          {fmt.Errorf("dial edge: %w", context.DeadlineExceeded), true},
		"EPERM":             {fmt.Errorf("sendmsg: %w", syscall.EPERM), true},
		// What quic-go returns when a local firewall refuses the send: the
		// text of the error only (TestProxyIsTheOnlyWayOut).
		"quic-go's EPERM": {fmt.Errorf("dial edge 10.0.0.1:8001: %w", &quic.TransportError{ErrorCode: quic.InternalError,
			ErrorMessage: "write udp [::]:33716->10.0.0.1:8001: sendmsg: operation not permitted"}), true},
		"remote internal error": {&quic.TransportError{Remote: true, ErrorCode: quic.InternalError, ErrorMessage: "operation not permitted"}, false},
		"refused token":         {agent.ErrUnauthorized, false},
		"edge closed":           {&quic.ApplicationError{Remote: true, ErrorCode: 0x10}, false},
		"certificate":           {errors.New("tls: failed to verify certificate"), false},
	}
	for name, tc := range tests {
		if got := agent.UDPBlocked(tc.err); got != tc.want {
			t.Errorf("%s: udpBlocked(%v) = %v, want %v", name, tc.err, got, tc.want)
		}
	}
}

// An edge given as a URL is reached over TCP whatever the transport: auto
// does not try QUIC at a balancer's URL.
func TestAutoURLEdgeIsTCP(t *testing.T) {
	n := edgetest.NewNode(t)
	a := n.NewAgent(t, func(c *agent.Config) {
		c.Edges, c.Transport = []string{n.ProxyURL + quicutil.AgentPath}, agent.TransportAuto
	})
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(hello))); err != nil {
		t.Fatal(err)
	}
	if status, body := get(t, n, "foo"); status != 200 || body != "hello" {
		t.Fatalf("GET = %d %q", status, body)
	}
	if st := a.Status(); len(st.Links) != 1 || st.Links[0].Transport != "tcp" || st.ConnectErrors != 0 {
		t.Fatalf("status = %+v, want one link over tcp and no failed attempt", st)
	}
}
