//go:build linux

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pico-edge/pico/certs"
)

// TestAutoFallsBackWhenUDPBlocked runs pico-edge in a network namespace
// whose nftables drop every UDP packet, and pico-agent --transport auto in
// another: the agent must serve over TCP within 10s of its start. When the
// rule is lifted, the link moves back to QUIC (make before break) while a
// small load of GETs runs: none may fail.
func TestAutoFallsBackWhenUDPBlocked(t *testing.T) {
	e2e(t)
	const fallbackWithin = 10 * time.Second
	l := newLab(t, 1)
	ns, ip := l.nodes[0], l.nodeIP(0)
	dir := t.TempDir()
	dev, err := certs.LoadOrCreateDev(dir, dir, nil)
	if err != nil {
		t.Fatalf("development CA: %v", err)
	}
	l.nft(t, ns, "table inet pico_noudp {\n\tchain in { type filter hook input priority 0; policy accept; meta l4proto udp drop; }\n}\n")
	p := startProc(t, "pico-edge", "ip", "netns", "exec", ns, bin.edge, "--data-dir", dir, "--node-id", "node-1",
		"--proxy-addr", ip+":8000", "--agent-addr", ip+":8001", "--admin-addr", ip+":8002", "--proxy-tls-addr=",
		"--gossip-addr=", "--tls-host", ip, "--log-format", "json")
	p.waitLineFor(t, 0, `"edge node ready"`, startTimeout, isMsg("edge node ready"))
	e := &edgeProc{proc: p, proxy: ip + ":8000", agent: ip + ":8001", admin: ip + ":8002", ca: dev.CAFile,
		admc: nsClient(t, l.client, 5*time.Second)}

	var ln net.Listener
	if err := inNetns(l.client, func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	port := serveHTTPOn(t, ln, nameServer("web"))
	start := time.Now()
	a := startProc(t, "pico-agent --transport auto", "ip", "netns", "exec", l.client, bin.agent,
		"--edge", e.agent, "--ca", filepath.Clean(e.ca), "--connections", "1", "--transport", "auto", "--quic-probe", "2s",
		"--log-format", "json", "http", "web", "127.0.0.1:"+port)
	line := a.waitLineFor(t, 0, "web registered", 2*fallbackWithin, contains("endpoint web (http) is registered"))
	took := time.Since(start)
	t.Logf("UDP blocked: the agent served over TCP %d ms after it started (%s)", took.Milliseconds(), line)
	if took > fallbackWithin {
		t.Errorf("the agent took %s to serve over TCP with UDP blocked, want within %s", took.Round(time.Millisecond), fallbackWithin)
	}
	if !strings.Contains(line, "(over TCP)") {
		t.Errorf("status line %q does not say the link is over TCP", line)
	}
	if _, ok := a.tryWaitLine(t, 0, "the fallback warning", time.Second, isMsg("QUIC over UDP got no handshake from the edge; serving over the TCP transport")); !ok {
		t.Errorf("no WARN line about the fallback")
	}
	hc := nsClient(t, l.client, 10*time.Second)
	if resp, body := e.request(t, hc, "GET", "web", "/", nil); resp.StatusCode != http.StatusOK || body != "web" {
		t.Fatalf("GET web over TCP = %d %q", resp.StatusCode, body)
	}

	// Under load: a probe of QUIC fails while UDP is still blocked (the
	// first comes 2s after the link, and takes 3s), then the rule is lifted
	// and the link moves back to QUIC.
	ld := startLoad(t, 2, hc, "web", func() string { return e.proxy })
	time.Sleep(6 * time.Second)
	if st := e.agentTransports(t); st != "[tcp]" {
		t.Fatalf("links while UDP is blocked: %s, want [tcp]", st)
	}
	l.nft(t, ns, "delete table inet pico_noudp\n")
	lifted := time.Now()
	pollState(t, waitTimeout, "the agent's only link to be over QUIC", func() (bool, string) {
		got := e.agentTransports(t)
		return got == "[quic]", got
	})
	back := time.Since(lifted)
	time.Sleep(500 * time.Millisecond) // requests over QUIC too
	ld.stop()
	res := ld.results()
	f := failures(res, "web")
	t.Logf("UDP unblocked: the link was back on QUIC (and the TCP link retired) %d ms later; %d of %d GETs failed", back.Milliseconds(), len(f), len(res))
	if len(res) == 0 {
		t.Fatal("no GETs ran")
	}
	if len(f) > 0 {
		t.Errorf("%d of %d GETs failed while the link moved from TCP to QUIC, want 0; first: %s", len(f), len(res), firstFew(f, 5))
	}
	a.waitLineFor(t, 0, "the move back to QUIC", time.Second, isMsg("QUIC works again: moving the link back from TCP to QUIC (make before break)"))

	// A passing loss is no reason to leave QUIC: with UDP dropped for 6s
	// (more than the 5s idle timeout) the agent stays on QUIC, and never
	// says it serves over TCP. (A QUIC link that died falls back only
	// after two QUIC attempts in a row got no handshake.)
	mark := a.mark()
	l.nft(t, ns, "table inet pico_noudp {\n\tchain in { type filter hook input priority 0; policy accept; meta l4proto udp drop; }\n}\n")
	t.Logf("UDP dropped again at %s", time.Now().UTC().Format("15:04:05.000"))
	time.Sleep(6 * time.Second)
	l.nft(t, ns, "delete table inet pico_noudp\n")
	t.Logf("UDP back at %s", time.Now().UTC().Format("15:04:05.000"))
	pollState(t, waitTimeout, "the agent's only link to be over QUIC after the outage", func() (bool, string) {
		got := e.agentTransports(t)
		return got == "[quic]", got
	})
	e.waitRoute(t, "web") // the link that replaced a silent one registers first
	if resp, body := e.request(t, hc, "GET", "web", "/", nil); resp.StatusCode != http.StatusOK || body != "web" {
		t.Fatalf("GET web after the outage = %d %q", resp.StatusCode, body)
	}
	for _, line := range a.output()[mark:] {
		if strings.Contains(line, "serving over the TCP transport") {
			t.Errorf("a 6s loss of UDP moved the link to TCP: %s", line)
		}
	}
}

// agentTransports lists the transports of the edge's agent links.
func (e *edgeProc) agentTransports(t testing.TB) string {
	t.Helper()
	var st struct {
		Agents []struct {
			Transport string `json:"transport"`
		} `json:"agents"`
	}
	e.adminJSON(t, "/status/agents", &st)
	var out []string
	for _, a := range st.Agents {
		out = append(out, a.Transport)
	}
	return fmt.Sprint(out)
}

// TestProxyIsTheOnlyWayOut runs pico-agent with default flags in a
// network namespace whose nftables let nothing out but TCP to tinyproxy
// (CONNECT with Basic credentials from HTTPS_PROXY), the edge in another:
// its QUIC gets no answer, and the TCP transport goes through the proxy.
func TestProxyIsTheOnlyWayOut(t *testing.T) {
	e2e(t)
	l := newLab(t, 1)
	ns, ip := l.nodes[0], l.nodeIP(0)
	dir := t.TempDir()
	dev, err := certs.LoadOrCreateDev(dir, dir, nil)
	if err != nil {
		t.Fatalf("development CA: %v", err)
	}
	p := startProc(t, "pico-edge", "ip", "netns", "exec", ns, bin.edge, "--data-dir", dir, "--node-id", "node-1",
		"--proxy-addr", ip+":8000", "--agent-addr", ip+":8001", "--admin-addr", ip+":8002", "--proxy-tls-addr=",
		"--tls-host", ip, "--log-format", "json")
	p.waitLineFor(t, 0, `"edge node ready"`, startTimeout, isMsg("edge node ready"))
	e := &edgeProc{proc: p, proxy: ip + ":8000", agent: ip + ":8001", admin: ip + ":8002", ca: dev.CAFile,
		admc: nsClient(t, l.client, 5*time.Second)}
	tp, proxy := startTinyproxyIn(t, ns, ip, "alice", "s3cret", "8001")
	_, proxyPort, _ := net.SplitHostPort(proxy)
	l.nft(t, l.client, fmt.Sprintf("table inet pico_onlyproxy {\n\tchain out { type filter hook output priority 0; policy drop; "+
		"oif \"lo\" accept; ip daddr %s tcp dport %s accept; }\n}\n", ip, proxyPort))

	var ln net.Listener
	if err := inNetns(l.client, func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	port := serveHTTPOn(t, ln, nameServer("web via proxy"))
	start := time.Now()
	a := startProcEnv(t, "pico-agent behind the proxy", []string{"HTTPS_PROXY=http://alice:s3cret@" + proxy},
		"ip", "netns", "exec", l.client, bin.agent, "--edge", e.agent, "--ca", filepath.Clean(e.ca), "--connections", "1",
		"--log-format", "json", "http", "web", "127.0.0.1:"+port)
	line := a.waitLineFor(t, 0, "web registered", 2*startTimeout, contains("endpoint web (http) is registered"))
	t.Logf("only a proxy out: the agent served over TCP through it %d ms after it started (%s)", time.Since(start).Milliseconds(), line)
	if !strings.Contains(line, "(over TCP)") {
		t.Errorf("status line %q does not say the link is over TCP", line)
	}
	// The namespace is the test's client too: open it for the checks (the
	// link stays where it is).
	l.nft(t, l.client, "delete table inet pico_onlyproxy\n")
	if got := e.agentTransports(t); got != "[tcp]" {
		t.Errorf("the edge lists links %s, want [tcp]", got)
	}
	hc := nsClient(t, l.client, 10*time.Second)
	if resp, body := e.request(t, hc, "GET", "web", "/", nil); resp.StatusCode != http.StatusOK || body != "web via proxy" {
		t.Fatalf("GET web = %d %q", resp.StatusCode, body)
	}
	if !strings.Contains(strings.Join(tp.output(), "\n"), "CONNECT") {
		t.Errorf("tinyproxy logged no CONNECT: the link did not go through it:\n%s", strings.Join(tp.output(), "\n"))
	}
}
