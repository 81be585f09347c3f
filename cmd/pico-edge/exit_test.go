package main

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pico-edge/pico/cmd/internal/cli"
	"github.com/pico-edge/pico/edge"
)

// runMainEnv makes the test binary run main with its arguments (TestMain).
const runMainEnv = "PICO_TEST_RUN_MAIN"

// runMain runs pico-edge's main in a process of its own with args, and
// returns its exit code and stderr.
func runMain(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1", "PICO_DATA_DIR="+t.TempDir())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run %q: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// A bad flag, value or config file is one line on stderr that says what,
// where and where the flags are listed, and exit code 1: no usage dump.
func TestErrorsAreOneLine(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("proxy-addr: :9000\nbogus-key: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "s.key")
	for name, tc := range map[string]struct {
		args []string
		want []string
	}{
		"unknown flag":       {[]string{"--ca", "nope.pem"}, []string{"pico-edge: unknown flag --ca", "see 'pico-edge --help'"}},
		"bad value":          {[]string{"--max-header-bytes", "lots"}, []string{"--max-header-bytes", `"lots"`, "see 'pico-edge --help'"}},
		"config key":         {[]string{"--config", bad}, []string{bad + `:2: unknown key "bogus-key"`}},
		"token missing":      {[]string{"token", "--ttl", "-1h"}, []string{"missing flags: --endpoints", "see 'pico-edge token --help'"}},
		"token negative ttl": {[]string{"token", "--endpoints", "foo", "--hmac-secret-file", secret, "--ttl", "-1h"}, []string{"pico-edge token: --ttl -1h: want a positive duration"}},
		"status bad flag":    {[]string{"status", "members", "--bogus"}, []string{"unknown flag --bogus", "see 'pico-edge status members --help'"}},
	} {
		t.Run(name, func(t *testing.T) {
			code, stderr := runMain(t, tc.args...)
			if code != 1 {
				t.Errorf("exit code %d, want 1; stderr:\n%s", code, stderr)
			}
			if lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n"); len(lines) != 1 {
				t.Errorf("stderr has %d lines, want one:\n%s", len(lines), stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not say %q", stderr, w)
				}
			}
		})
	}
}

// A negative number after a long flag is its value: --new-conns-per-ip -1
// (no limit), as --new-conns-per-ip=-1 is; kong alone takes -1 for a
// short flag.
func TestNegativeValues(t *testing.T) {
	args := []string{"--data-dir", t.TempDir(), "--handshakes-per-second", "-1", "--new-conns-per-ip", "-1"}
	var c CLI
	p, err := newParser(&c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Parse(args); err == nil {
		t.Fatal("kong alone parsed --new-conns-per-ip -1: the test proves nothing")
	}
	c = CLI{}
	p, _ = newParser(&c)
	var stderr strings.Builder
	if _, ok := cli.Parse(p, args, &stderr); !ok {
		t.Fatalf("cli.Parse %q: %s", args, stderr.String())
	}
	if c.NewConnsPerIP != -1 || c.HandshakesPerSecond != -1 {
		t.Fatalf("--new-conns-per-ip %d, --handshakes-per-second %d; want -1 and -1", c.NewConnsPerIP, c.HandshakesPerSecond)
	}
}

// The defaults bind the admin API to loopback and give a node alone no
// gossip port; --join, --cluster-secret-file or --gossip-addr make it a
// cluster member, on :8003 unless --gossip-addr says otherwise.
func TestSafeDefaults(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(secret, []byte("MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		args   []string
		gossip string // "" : no cluster
	}{
		"alone":          {nil, ""},
		"join":           {[]string{"--join", "10.0.0.2:8003"}, ":8003"},
		"secret":         {[]string{"--cluster-secret-file", secret}, ":8003"},
		"gossip address": {[]string{"--gossip-addr", "127.0.0.1:7946"}, "127.0.0.1:7946"},
	} {
		t.Run(name, func(t *testing.T) {
			var c CLI
			p, err := newParser(&c)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Parse(append([]string{"--data-dir", t.TempDir()}, tc.args...)); err != nil {
				t.Fatal(err)
			}
			if c.AdminAddr != "127.0.0.1:8002" {
				t.Errorf("--admin-addr defaults to %q, want 127.0.0.1:8002", c.AdminAddr)
			}
			cc, err := c.cluster(slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.gossip == "" && cc != nil:
				t.Errorf("a node alone has a cluster config, gossip on %q", cc.GossipAddr)
			case tc.gossip != "" && cc == nil:
				t.Errorf("no cluster config, want gossip on %s", tc.gossip)
			case tc.gossip != "" && cc.GossipAddr != tc.gossip:
				t.Errorf("gossip on %q, want %q", cc.GossipAddr, tc.gossip)
			}
		})
	}
}

// openPorts names the listeners open beyond loopback, and only those.
func TestOpenPorts(t *testing.T) {
	listen := func(addr string) net.Listener {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	local := edge.Listeners{Proxy: listen("127.0.0.1:0"), Agent: udp, Admin: listen("[::1]:0")}
	if got := openPorts(local, ""); got != "" {
		t.Errorf("loopback only: %q, want none", got)
	}
	wide := listen(":0")
	_, port, _ := net.SplitHostPort(wide.Addr().String())
	open := edge.Listeners{Proxy: wide, Agent: udp, Admin: listen("127.0.0.1:0")}
	want := ":" + port + "/tcp (proxy), :8003/tcp+udp (gossip)"
	if got := openPorts(open, ":8003"); got != want {
		t.Errorf("openPorts = %q, want %q", got, want)
	}
}
