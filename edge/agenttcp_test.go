package edge_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// An agent links over the TCP transport at each place the edge takes it:
// TCP at the agent port (--edge host:port), the plain front door and the
// TLS front door (--edge URL). Its HTTP endpoint and a Dial to a TCP
// endpoint work as over UDP, and the edge lists the link as tcp.
func TestAgentOverTCP(t *testing.T) {
	n := edgetest.NewNode(t)
	if n.AgentTCPURL == "" {
		t.Skip("the agent port's TCP twin was taken")
	}
	up := edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello over "+r.Header.Get("X-Via"))
	}))
	echo := tcpEchoServer(t)
	edges := map[string]string{
		"agent port":       n.AgentAddr,
		"plain front door": n.ProxyURL + quicutil.AgentPath,
		"TLS front door":   n.TLSURL + quicutil.AgentPath,
	}
	for name, e := range edges {
		t.Run(name, func(t *testing.T) {
			a := n.NewAgent(t, func(c *agent.Config) { c.Edges, c.Transport = []string{e}, agent.TransportTCP })
			if err := a.ServeUpstream(t.Context(), "web", quicutil.KindHTTP, up); err != nil {
				t.Fatalf("serve web: %v", err)
			}
			if err := a.ServeUpstream(t.Context(), "echo", quicutil.KindTCP, echo); err != nil {
				t.Fatalf("serve echo: %v", err)
			}
			req := n.Request(t, "GET", "web", "/", nil)
			req.Header.Set("X-Via", "tcp")
			resp, body := do(t, edgetest.Client(t), req)
			if status := resp.StatusCode; status != http.StatusOK || body != "hello over tcp" {
				t.Fatalf("GET = %d %q, want 200 %q", resp.StatusCode, body, "hello over tcp")
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			c, err := a.Dial(ctx, "echo")
			if err != nil {
				t.Fatalf("Dial echo: %v", err)
			}
			io.WriteString(c, "ping over tcp")
			c.(interface{ CloseWrite() error }).CloseWrite()
			got, err := io.ReadAll(c)
			c.Close()
			if err != nil || string(got) != "ping over tcp" {
				t.Fatalf("echo = %q, %v", got, err)
			}
			if st := a.Status(); len(st.Links) != 1 || st.Links[0].Transport != "tcp" {
				t.Errorf("agent status links = %+v, want one over tcp", st.Links)
			}
			var agents struct {
				Agents []struct {
					AgentID   string `json:"agent_id"`
					Transport string `json:"transport"`
				} `json:"agents"`
			}
			getJSON(t, n.AdminURL+"/status/agents", &agents)
			found := false
			for _, ag := range agents.Agents {
				if ag.AgentID == a.ID() {
					found = true
					if ag.Transport != "tcp" {
						t.Errorf("edge lists the agent with transport %q, want tcp", ag.Transport)
					}
				}
			}
			if !found {
				t.Errorf("edge /status/agents does not list agent %s", a.ID())
			}
		})
	}
	metrics := getText(t, n.AdminURL+"/metrics")
	if !strings.Contains(metrics, `pico_agent_links{transport="tcp"}`) {
		t.Errorf("metrics have no pico_agent_links with transport tcp")
	}
}

// Requests to /_pico/agent that are not the agent's upgrade get a status
// that says what is wrong, on every door; other paths on the agent port's
// TCP listener get 404.
func TestAgentPathRefusals(t *testing.T) {
	n := edgetest.NewNode(t)
	if n.AgentTCPURL == "" {
		t.Skip("the agent port's TCP twin was taken")
	}
	agentPort := strings.TrimSuffix(n.AgentTCPURL, quicutil.AgentPath)
	tests := map[string]struct {
		method, url string
		want        int
	}{
		"plain door GET":       {"GET", n.ProxyURL + quicutil.AgentPath, http.StatusUpgradeRequired},
		"plain door POST":      {"POST", n.ProxyURL + quicutil.AgentPath, http.StatusMethodNotAllowed},
		"agent port GET":       {"GET", n.AgentTCPURL, http.StatusUpgradeRequired},
		"agent port other":     {"GET", agentPort + "/", http.StatusNotFound},
		"TLS door GET (HTTP2)": {"GET", n.TLSURL + quicutil.AgentPath, http.StatusHTTPVersionNotSupported},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, tc.url, nil)
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: n.CAPool, ServerName: "localhost"}, ForceAttemptHTTP2: true}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want || len(body) == 0 {
				t.Fatalf("status = %d %q, want %d with a reason", resp.StatusCode, body, tc.want)
			}
		})
	}
}

// The node drains and stops with agents linked over TCP: every upgraded
// connection closes (goleak checks their goroutines), and the agent moves
// to the node's successor.
func TestAgentOverTCPShutdown(t *testing.T) {
	n := edgetest.NewNode(t)
	if n.AgentTCPURL == "" {
		t.Skip("the agent port's TCP twin was taken")
	}
	a := n.NewAgent(t, func(c *agent.Config) { c.Transport = agent.TransportTCP })
	if err := a.ServeUpstream(t.Context(), "web", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))); err != nil {
		t.Fatal(err)
	}
	n.Stop(t)
	n2 := edgetest.NewNodeOn(t, n.AgentAddr, n.Bundle)
	if n2.AgentTCPURL == "" {
		t.Skip("the agent port's TCP twin was taken on restart")
	}
	n2.WaitRoute(t, "web", 1)
}

// While a node drains, an agent's upgrade to the TCP transport is refused
// with 503 and a body saying the node drains, on every place the edge takes
// it, as a QUIC agent connection is refused then: a balancer or the agent
// goes to another node. Before the drain, the same upgrade gets 101.
func TestAgentOverTCPRefusedWhileDraining(t *testing.T) {
	// The drain delay keeps the doors open during the drain; Kill ends it.
	n := edgetest.NewNode(t, func(c *edge.Config) { c.NodeID, c.DrainDelay = "node-d", time.Minute })
	if n.AgentTCPURL == "" {
		t.Skip("the agent port's TCP twin was taken")
	}
	doors := map[string]func() (net.Conn, string, error){
		"agent port": func() (net.Conn, string, error) {
			c, err := net.Dial("tcp", strings.TrimPrefix(strings.TrimSuffix(n.AgentTCPURL, quicutil.AgentPath), "http://"))
			return c, n.AgentTCPURL, err
		},
		"plain front door": func() (net.Conn, string, error) {
			c, err := net.Dial("tcp", strings.TrimPrefix(n.ProxyURL, "http://"))
			return c, n.ProxyURL + quicutil.AgentPath, err
		},
		"TLS front door": func() (net.Conn, string, error) {
			c, err := tls.Dial("tcp", strings.TrimPrefix(n.TLSURL, "https://"),
				&tls.Config{RootCAs: n.CAPool, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
			return c, n.TLSURL + quicutil.AgentPath, err
		},
	}
	upgrade := func(t *testing.T, door func() (net.Conn, string, error)) error {
		t.Helper()
		c, u, err := door()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		pc, err := quicutil.Upgrade(ctx, c, u, nil)
		if err == nil {
			pc.Close()
		}
		return err
	}
	for name, door := range doors {
		t.Run("before/"+name, func(t *testing.T) {
			if err := upgrade(t, door); err != nil {
				t.Fatalf("upgrade before the drain: %v", err)
			}
		})
	}
	n.Server.Drain()
	waitFor(t, "the node to say it drains", func() bool {
		var st struct {
			Draining bool `json:"draining"`
		}
		getJSON(t, n.AdminURL+"/status/node", &st)
		return st.Draining
	})
	for name, door := range doors {
		t.Run("draining/"+name, func(t *testing.T) {
			err := upgrade(t, door)
			var ue *quicutil.UpgradeError
			if !errors.As(err, &ue) {
				t.Fatalf("upgrade while draining: %v, want a refusal with 503", err)
			}
			if ue.StatusCode != http.StatusServiceUnavailable || !strings.Contains(ue.Body, "node-d is draining") {
				t.Fatalf("upgrade while draining: %v, want 503 saying node-d is draining", err)
			}
		})
	}
	n.Kill(t)
}

func tcpEchoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func getText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
