package e2e

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pico-edge/pico/quicutil"
)

// TestTCPTransport links `pico-agent http` and `pico-agent forward` through
// the plain front door's URL (--edge http://HOST:PORT/_pico/agent, as
// behind an HTTP load balancer), without --transport: a URL is reached
// over TCP whatever the transport. The agent serves HTTP, the forward
// reaches a TCP endpoint, and the edge lists both links as tcp. (The cases
// a transport can change run over both transports at the agent port, with
// forEachTransport.)
func TestTCPTransport(t *testing.T) {
	e2e(t)
	e := startEdge(t, "--gossip-addr=")
	url := "http://" + e.proxy + quicutil.AgentPath
	web := serveHTTP(t, nameServer("web over tcp"))
	a := startProc(t, "pico-agent http over URL", bin.agent, "--edge", url, "--ca", e.ca, "--log-format", "json", "http", "web", web)
	checkStatusLine(t, overTCP, a.waitLineFor(t, 0, "web registered", startTimeout, contains("endpoint web (http) is registered")))
	c := newClient(t, 10*time.Second)
	if resp, body := e.request(t, c, "GET", "web", "/", nil); resp.StatusCode != http.StatusOK || body != "web over tcp" {
		t.Fatalf("GET web = %d %q", resp.StatusCode, body)
	}

	e.serve(t, "tcp", "echo", "127.0.0.1:"+serveTCP(t, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
	}))
	fwd := startProc(t, "pico-agent forward over URL", bin.agent, "--edge", url, "--ca", e.ca,
		"--log-format", "json", "forward", "127.0.0.1:0", "echo")
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

	// The echo agent used the default transport (QUIC here); the two
	// agents at the URL are over TCP.
	byEndpoint := map[string]string{}
	for _, ag := range e.agents(t).Agents {
		byEndpoint[strings.Join(ag.Endpoints, ",")] = ag.Transport
	}
	if byEndpoint["web/http"] != "tcp" || byEndpoint[""] != "tcp" || len(byEndpoint) != 3 {
		t.Errorf("/status/agents: transports by endpoints %v, want web/http and the forward (no endpoints) over tcp", byEndpoint)
	}
}
