package e2e

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTCPTransport runs pico-edge and pico-agent with --transport tcp:
// `pico-agent http` linked at the agent port (--edge host:port, TCP on the
// UDP port's number) serves HTTP, and `pico-agent forward` linked through
// the plain front door's URL reaches a TCP endpoint, both over the TCP
// transport; the edge lists both links as tcp.
func TestTCPTransport(t *testing.T) {
	e2e(t)
	e := startEdge(t, "--gossip-addr=")
	if strings.Contains(strings.Join(e.output(), "\n"), "agent links over TCP are off") {
		t.Skip("the agent port's TCP twin was taken")
	}
	web := serveHTTP(t, nameServer("web over tcp"))
	a := e.startAgent(t, "--transport", "tcp", "http", "web", web)
	line := a.waitLineFor(t, 0, "web registered", startTimeout, contains("endpoint web (http) is registered"))
	if !strings.Contains(line, "(over TCP)") {
		t.Errorf("status line %q does not say the link is over TCP", line)
	}
	c := newClient(t, 10*time.Second)
	if resp, body := e.request(t, c, "GET", "web", "/", nil); resp.StatusCode != http.StatusOK || body != "web over tcp" {
		t.Fatalf("GET web = %d %q", resp.StatusCode, body)
	}

	echo := serveTCP(t, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
	})
	e.startAgent(t, "--transport", "tcp", "tcp", "echo", "127.0.0.1:"+echo).
		waitLineFor(t, 0, "echo registered", startTimeout, contains("endpoint echo (tcp) is registered"))
	fwd := startProc(t, "pico-agent forward over URL", bin.agent, "--edge", "http://"+e.proxy+"/_pico/agent", "--ca", e.ca,
		"--transport", "tcp", "--log-format", "json", "forward", "127.0.0.1:0", "echo")
	fline := fwd.waitLineFor(t, 0, "forwarding line", startTimeout, func(l string) bool { return strings.HasPrefix(l, "forwarding ") })
	addr := strings.TrimSuffix(strings.TrimPrefix(fline, "forwarding "), " to endpoint echo")
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial forward %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitTimeout))
	io.WriteString(conn, "through the forward, over TCP")
	conn.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "through the forward, over TCP" {
		t.Fatalf("echo through forward = %q, %v", got, err)
	}

	var st struct {
		Agents []struct {
			AgentID   string `json:"agent_id"`
			Transport string `json:"transport"`
		} `json:"agents"`
	}
	e.adminJSON(t, "/status/agents", &st)
	if len(st.Agents) != 3 {
		t.Fatalf("edge lists %d agent links, want 3: %+v", len(st.Agents), st.Agents)
	}
	for _, ag := range st.Agents {
		if ag.Transport != "tcp" {
			t.Errorf("agent %s has transport %q, want tcp", ag.AgentID, ag.Transport)
		}
	}
}
