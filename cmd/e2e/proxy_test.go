//go:build linux

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startTinyproxy runs Debian's tinyproxy on 127.0.0.1 with Basic
// credentials user:password, allowing CONNECT to port, and returns its
// host:port.
func startTinyproxy(t testing.TB, user, password, port string) (*proc, string) {
	t.Helper()
	return startTinyproxyIn(t, "", "127.0.0.1", user, password, port)
}

// startTinyproxyIn is startTinyproxy in network namespace ns ("": this
// one), listening on ip, open to loopback and the lab's network.
func startTinyproxyIn(t testing.TB, ns, ip, user, password, port string) (*proc, string) {
	t.Helper()
	path := needCommand(t, "tinyproxy", "Debian package tinyproxy; .ci/run installs it")
	dial := func(addr string) error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	for try := 0; ; try++ {
		listen := "3128" // a namespace of the test's own: free
		if ns == "" {
			listen = freePort(t)
		}
		dir := t.TempDir()
		conf := filepath.Join(dir, "tinyproxy.conf")
		cfg := fmt.Sprintf(`Port %s
Listen %s
Timeout 600
MaxClients 20
Allow 127.0.0.1
Allow %s.0/24
BasicAuth %s %s
ConnectPort %s
LogLevel Info
PidFile "%s"
`, listen, ip, labNet, user, password, port, filepath.Join(dir, "tinyproxy.pid"))
		if os.Geteuid() == 0 {
			cfg += "User nobody\nGroup nogroup\n"
		}
		if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, 0o755)
		var p *proc
		if ns == "" {
			p = startProc(t, "tinyproxy", path, "-d", "-c", conf)
		} else {
			p = startProc(t, "tinyproxy in "+ns, "ip", "netns", "exec", ns, path, "-d", "-c", conf)
		}
		addr := net.JoinHostPort(ip, listen)
		deadline := time.Now().Add(startTimeout)
		for time.Now().Before(deadline) && !p.hasExited() {
			err := dial(addr)
			if ns != "" {
				err = inNetns(ns, func() error { return dial(addr) })
			}
			if err == nil {
				return p, addr
			}
			time.Sleep(20 * time.Millisecond)
		}
		if try == 3 {
			t.Fatalf("tinyproxy did not listen on %s: %s", addr, strings.Join(p.output(), "\n"))
		}
	}
}

// TestTCPTransportThroughProxy links `pico-agent --transport tcp` to the
// edge through tinyproxy (CONNECT with Basic credentials from
// --proxy-url) and serves HTTP over it; with a wrong password the agent
// says that the proxy refused the credentials (407), naming the proxy.
func TestTCPTransportThroughProxy(t *testing.T) {
	e2e(t)
	e := startEdge(t, "--gossip-addr=")
	if strings.Contains(strings.Join(e.output(), "\n"), "agent links over TCP are off") {
		t.Skip("the agent port's TCP twin was taken")
	}
	tp, proxy := startTinyproxy(t, "alice", "s3cret", portOf(e.agent))
	web := serveHTTP(t, nameServer("web via proxy"))
	a := e.startAgent(t, "--transport", "tcp", "--proxy-url", "http://alice:s3cret@"+proxy, "http", "web", web)
	line := a.waitLineFor(t, 0, "web registered", startTimeout, contains("endpoint web (http) is registered"))
	if !strings.Contains(line, "(over TCP)") {
		t.Errorf("status line %q does not say the link is over TCP", line)
	}
	c := newClient(t, 10*time.Second)
	if resp, body := e.request(t, c, "GET", "web", "/", nil); resp.StatusCode != http.StatusOK || body != "web via proxy" {
		t.Fatalf("GET web = %d %q", resp.StatusCode, body)
	}
	if !strings.Contains(strings.Join(tp.output(), "\n"), "CONNECT") {
		t.Errorf("tinyproxy logged no CONNECT: the link did not go through it:\n%s", strings.Join(tp.output(), "\n"))
	}

	bad := e.startAgent(t, "--transport", "tcp", "--proxy-url", "http://alice:wrong@"+proxy, "http", "other", web)
	// tinyproxy answers a wrong password with 401 rather than 407.
	want := "proxy " + proxy + " refused the credentials ("
	bad.waitLineFor(t, 0, "the 407 error", startTimeout, contains(want))
}
