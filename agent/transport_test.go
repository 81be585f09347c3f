package agent_test

import (
	"context"
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

// Over the TCP transport the agent goes through an HTTP proxy: a CONNECT
// proxy in process here (tinyproxy in cmd/e2e); a proxy that wants other
// credentials gets a ProxyError that names it and says 407.
func TestTCPThroughProxyRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Proxy-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusProxyAuthRequired)
	})}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-served })
	proxy, _ := url.Parse("http://alice:wrong@" + ln.Addr().String())
	a, err := agent.New(agent.Config{Edges: []string{"127.0.0.1:1"}, Transport: agent.TransportTCP, ProxyURL: proxy})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err = a.CheckEdge(ctx)
	var pe *agent.ProxyError
	if !errors.As(err, &pe) || pe.StatusCode != http.StatusProxyAuthRequired || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("err = %v, want a ProxyError 407 naming %s", err, ln.Addr())
	}
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
		"refused token":     {agent.ErrUnauthorized, false},
		"edge closed":       {&quic.ApplicationError{Remote: true, ErrorCode: 0x10}, false},
		"certificate":       {errors.New("tls: failed to verify certificate"), false},
	}
	for name, tc := range tests {
		if got := agent.UDPBlocked(tc.err); got != tc.want {
			t.Errorf("%s: udpBlocked(%v) = %v, want %v", name, tc.err, got, tc.want)
		}
	}
}
