//go:build linux

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDefaultBinds runs pico-edge with no listener flag at all, in a
// network namespace of its own (so its fixed default ports are free and
// touch no other test), and reads the kernel's socket tables of that
// namespace: the node listens on the proxy, HTTPS/HTTP/3 and agent ports
// of every interface, on the admin port of 127.0.0.1 only, and on no
// gossip port (it joins nobody). It warns once, in one line, which ports
// are open to the network. A pico-agent with no flags then serves an
// endpoint through it: a node alone is a whole node.
func TestDefaultBinds(t *testing.T) {
	e2e(t)
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) not in PATH; it makes the network namespace")
	}
	ns := fmt.Sprintf("pico-e2e-%d-binds", os.Getpid())
	exec.Command("ip", "netns", "del", ns).Run() // a leftover of a killed run with this PID
	if out, code := runCmd(t, nil, "ip", "netns", "add", ns); code != 0 {
		t.Skipf("ip netns add: %s; network namespaces are unavailable here", strings.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, code := runCmd(t, nil, "ip", "netns", "del", ns); code != 0 {
			t.Errorf("ip netns del %s: %s", ns, out)
		}
	})
	netnsCmd(t, "", "ip", "-n", ns, "link", "set", "lo", "up")

	home := t.TempDir() // XDG_DATA_HOME of both: the agent finds the edge's CA
	env := []string{"XDG_DATA_HOME=" + home}
	edge := startProcEnv(t, "pico-edge", env, "ip", "netns", "exec", ns, bin.edge, "--log-format", "json")
	ready := edge.waitLineFor(t, 0, `"edge node ready"`, startTimeout, isMsg("edge node ready"))
	t.Logf("ready: %s", ready)

	// The sockets of the namespace are the edge's: ip netns exec execs it,
	// so its PID is the one started.
	got := listeningSockets(t, edge.pid())
	want := []string{"tcp *:8000", "tcp *:8001", "tcp *:8443", "tcp 127.0.0.1:8002", "udp *:8001", "udp *:8443"}
	if !slices.Equal(got, want) {
		t.Errorf("listening sockets %v, want %v (no gossip port 8003, admin on loopback)", got, want)
	}

	warn := func(l string) bool { return isMsg("development node: ports open to the network")(l) }
	var warned []string
	for _, l := range edge.output() {
		if warn(l) {
			warned = append(warned, l)
		}
	}
	if len(warned) != 1 {
		t.Fatalf("%d warnings of the open ports, want 1: %q", len(warned), warned)
	}
	l, _ := parseLog(warned[0])
	if want := ":8000/tcp (proxy), :8443/tcp+udp (https and HTTP/3), :8001/udp+tcp (agents)"; l.str("ports") != want || l.str("level") != "WARN" {
		t.Errorf("open ports warning: %s %q, want WARN %q", l.str("level"), l.str("ports"), want)
	}

	// The node alone serves: an agent with no flags (the default --edge
	// 127.0.0.1:8001, the development CA found in XDG_DATA_HOME) registers
	// an endpoint, and the proxy port forwards to it.
	var ln net.Listener
	if err := inNetns(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	port := serveHTTPOn(t, ln, nameServer("web"))
	agent := startProcEnv(t, "pico-agent", env, "ip", "netns", "exec", ns, bin.agent, "--admin-addr=", "--log-format", "json", "http", "web", port)
	agent.waitLine(t, 0, "web registered", contains("endpoint web (http) is registered"))
	hc := nsClient(t, ns, 10*time.Second)
	e := &edgeProc{proxy: "127.0.0.1:8000", admin: "127.0.0.1:8002", admc: hc}
	if resp, body := e.request(t, hc, "GET", "web", "/", nil); resp.StatusCode != http.StatusOK || body != "web" {
		t.Fatalf("GET web = %d %q, want 200 web", resp.StatusCode, body)
	}
	var members struct {
		Clustered bool `json:"clustered"`
		Members   []struct {
			Self bool `json:"self"`
		} `json:"members"`
	}
	e.adminJSON(t, "/status/members", &members)
	if members.Clustered || len(members.Members) != 1 || !members.Members[0].Self {
		t.Errorf("/status/members = %+v, want this node alone, not clustered", members)
	}
	resp, err := hc.Get("http://127.0.0.1:8002/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("dashboard: %d, want 200", resp.StatusCode)
	}
}

// listeningSockets lists the TCP sockets that listen and the UDP sockets
// bound in the network namespace of process pid, as "tcp 127.0.0.1:8002"
// or "tcp *:8000" (every interface), sorted, without duplicates.
func listeningSockets(t *testing.T, pid int) []string {
	t.Helper()
	var out []string
	for _, f := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "net", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 4 {
				continue
			}
			local, state := fields[1], fields[3]
			if strings.HasPrefix(f, "tcp") && state != "0A" { // LISTEN
				continue
			}
			hexIP, hexPort, _ := strings.Cut(local, ":")
			p, err := strconv.ParseUint(hexPort, 16, 16)
			if err != nil {
				t.Fatalf("%s: local address %q", f, local)
			}
			host := "*"
			if strings.Trim(hexIP, "0") != "" {
				ip := make(net.IP, len(hexIP)/2)
				for i := range ip {
					v, _ := strconv.ParseUint(hexIP[2*i:2*i+2], 16, 8)
					ip[i] = byte(v)
				}
				// The kernel writes each 32-bit word in host (little-endian) order.
				for w := 0; w+4 <= len(ip); w += 4 {
					slices.Reverse(ip[w : w+4])
				}
				host = ip.String()
			}
			out = append(out, fmt.Sprintf("%s %s:%d", strings.TrimSuffix(f, "6"), host, p))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
