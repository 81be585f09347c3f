//go:build unix

package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLocalClusterScript runs deploy/local-cluster.sh (what `just cluster`
// and docs/cluster.md run) as a user would: three nodes that share one
// development CA in pico-edge's default data directory, an agent started
// with no --ca that links two of them (its default), GETs through the
// third, and one linked node killed: no GET fails. SIGTERM to the script
// then stops every node.
func TestLocalClusterScript(t *testing.T) {
	e2e(t)
	needCommand(t, "bash", "runs deploy/local-cluster.sh")
	base := freeBasePort(t, 3)
	home := t.TempDir() // XDG_DATA_HOME: pico-edge's default data directory is home/pico
	dir := filepath.Join(t.TempDir(), "cluster")
	script, err := filepath.Abs("../../deploy/local-cluster.sh")
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"XDG_DATA_HOME=" + home, "PICO_BIN=" + filepath.Dir(bin.edge), "PICO_CLUSTER_DIR=" + dir,
		"PICO_BASE_PORT=" + strconv.Itoa(base), "PICO_NODES=3"}
	t.Cleanup(func() { // the nodes are the script's children: never leave one behind
		for i := range 3 {
			if b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("node-%d.pid", i))); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	})
	sh := startProcEnv(t, "local-cluster.sh", env, "bash", script)

	nodes := make([]*edgeProc, 3)
	for i := range nodes {
		p := base + 100*i
		nodes[i] = &edgeProc{proc: sh, proxy: fmt.Sprintf("127.0.0.1:%d", p), agent: fmt.Sprintf("127.0.0.1:%d", p+1),
			admin: fmt.Sprintf("127.0.0.1:%d", p+2), admc: newClient(t, 5*time.Second)}
	}
	poll(t, waitTimeout, "every node to see three live members", func() bool {
		for _, n := range nodes {
			if m, err := n.liveMembers(); err != nil || len(m) != 3 {
				return false
			}
		}
		return true
	})
	ca := filepath.Join(home, "pico", "ca.pem")
	for i := range nodes {
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("node-%d", i), "ca.pem")); err == nil {
			t.Errorf("node-%d made a CA of its own in its data directory", i)
		}
	}
	if _, err := os.Stat(ca); err != nil {
		t.Fatalf("no shared development CA: %v", err)
	}

	// The agent as the script's last line suggests it: no --ca.
	up := "127.0.0.1:" + serveHTTP(t, nameServer("up"))
	ag := startProcEnv(t, "pico-agent", []string{"XDG_DATA_HOME=" + home}, bin.agent,
		"http", "web", up, "--edge", nodes[0].agent, "--log-format", "json")
	ag.waitLineFor(t, 0, "registration", startTimeout, contains(`endpoint web (http) is registered`))
	var owners []string
	poll(t, waitTimeout, "two nodes to serve web (the agent's default HA links)", func() bool {
		o, err := nodes[2].owners()
		owners = o["web"]
		return err == nil && len(owners) == 2
	})
	// Clients use a node; the one killed is a linked node other than it.
	client, victim := 2, -1
	for i := range nodes {
		if i != client && slices.Contains(owners, fmt.Sprintf("node-%d", i)) {
			victim = i
			break
		}
	}
	if victim < 0 {
		t.Fatalf("owners %v: no linked node besides node-%d", owners, client)
	}
	hc := newClient(t, 15*time.Second)
	l := startLoad(t, 4, hc, "web", func() string { return nodes[client].proxy })
	poll(t, waitTimeout, "40 GETs through node-2", func() bool { return l.okSince(time.Time{}, "up") >= 40 })
	pid := readPID(t, filepath.Join(dir, fmt.Sprintf("node-%d.pid", victim)))
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill node-%d (pid %d): %v", victim, pid, err)
	}
	poll(t, waitTimeout, fmt.Sprintf("node-2 to route web without node-%d", victim), func() bool {
		o, err := nodes[client].owners()
		return err == nil && len(o["web"]) > 0 && !slices.Contains(o["web"], fmt.Sprintf("node-%d", victim))
	})
	routed := time.Now()
	poll(t, waitTimeout, "40 more GETs", func() bool { return l.okSince(routed, "up") >= 40 })
	l.stop()
	res := l.results()
	failed := failures(res, "up")
	t.Logf("node-%d SIGKILLed under load: %d of %d GETs through node-%d failed; routed without it %d ms after the kill",
		victim, len(failed), len(res), client, routed.Sub(killed).Milliseconds())
	if len(failed) > 0 {
		t.Errorf("%d of %d GETs failed, want 0: %s", len(failed), len(res), firstFew(failed, 5))
	}

	sh.signal(t, syscall.SIGTERM)
	sh.waitExit(t, waitTimeout)
	for i := range nodes {
		if i == victim {
			continue
		}
		pid := readPID(t, filepath.Join(dir, fmt.Sprintf("node-%d.pid", i)))
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("node-%d (pid %d) still runs after the script was stopped", i, pid)
		}
	}
}

func readPID(t testing.TB, file string) int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return pid
}

// freeBasePort finds BASE such that the ports of n local-cluster.sh nodes
// (BASE+100*i plus 0 to 3 and 43, on TCP and UDP) are free now. It looks
// below Linux's ephemeral range (32768 and up), where the other tests'
// listeners and connections take their ports, so none takes one of these
// between the check and the nodes' start.
func freeBasePort(t testing.TB, n int) int {
	t.Helper()
	const lo, hi = 10000, 32768
	span := hi - lo - 100*n
	start := lo + os.Getpid()*7919%span/100*100
	for i := 0; i < span; i += 1000 {
		base := lo + (start-lo+i)%span
		if portsFree(base, n) {
			return base
		}
	}
	t.Fatal("no free range of ports for the local cluster")
	return 0
}

func portsFree(base, n int) bool {
	var closers []func() error
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for i := range n {
		for _, off := range []int{0, 1, 2, 3, 43} {
			addr := fmt.Sprintf("127.0.0.1:%d", base+100*i+off)
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return false
			}
			closers = append(closers, ln.Close)
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				return false
			}
			closers = append(closers, pc.Close)
		}
	}
	return true
}
