//go:build unix

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeShell returns the lines of README.md's ```sh blocks, block by
// block.
func readmeShell(t *testing.T) [][]string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks [][]string
	rest := string(b)
	for {
		var ok bool
		if _, rest, ok = strings.Cut(rest, "\n```sh\n"); !ok {
			return blocks
		}
		var block string
		block, rest, _ = strings.Cut(rest, "\n```\n")
		blocks = append(blocks, strings.Split(block, "\n"))
	}
}

// readmePorts are the ports the README's commands use; the test gives
// each a free one.
var readmePorts = regexp.MustCompile(`\b(3000|6379|7000|8[0-2]0[0-3]|8443)\b`)

// TestReadmeShell runs every ```sh block of README.md (the quickstart,
// HTTPS, raw TCP, authentication and the local cluster) as written, with
// the real binaries, and checks each comment that states what comes out.
// What it changes, and nothing else: `go run ./cmd/pico-edge` and
// `go run ./cmd/pico-agent` are the built binaries; every port the README
// names is a free one (the edge and the agent get theirs from the PICO_*
// variables of their flags, since their command lines name none); HOME is
// a fresh directory; the commands run in an empty directory (deploy/
// linked in), which must stay empty: no secret lands in the clone. As a
// user would, a command that starts an edge (or the local cluster) first
// stops the edges and agents before it. Only `bash .ci/test`, the whole
// suite, is not run.
func TestReadmeShell(t *testing.T) {
	e2e(t)
	for _, tool := range []string{"bash", "curl", "python3", "redis-server", "redis-cli"} {
		needCommand(t, tool, "the README's commands use it")
	}
	base := freeBasePort(t, 3)
	ports := map[string]int{"8443": base + 43} // as deploy/local-cluster.sh places node-0's
	for i := range 3 {
		for j := range 4 {
			ports[strconv.Itoa(8000+100*i+j)] = base + 100*i + j
		}
	}
	for _, p := range []string{"3000", "6379", "7000"} {
		n, _ := strconv.Atoi(freePort(t))
		ports[p] = n
	}
	port := func(p string) string { return strconv.Itoa(ports[p]) }
	home, cwd := t.TempDir(), t.TempDir()
	root, _ := filepath.Abs("../..")
	if err := os.Symlink(filepath.Join(root, "deploy"), filepath.Join(cwd, "deploy")); err != nil {
		t.Fatal(err)
	}
	cluster := filepath.Join(t.TempDir(), "cluster")
	env := []string{"HOME=" + home}
	for _, kv := range cleanEnv() {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_DATA_HOME=") {
			env = append(env, kv)
		}
	}
	// Each program gets the PICO_* variables of its own flags only (both
	// read PICO_ADMIN_ADDR).
	edgeEnv := []string{"PICO_PROXY_ADDR=127.0.0.1:" + port("8000"), "PICO_AGENT_ADDR=127.0.0.1:" + port("8001"),
		"PICO_ADMIN_ADDR=127.0.0.1:" + port("8002"), "PICO_PROXY_TLS_ADDR=127.0.0.1:" + port("8443")}
	agentEnv := []string{"PICO_EDGE=127.0.0.1:" + port("8001")} // pico-agent's default --edge, on its new port
	scriptEnv := []string{"PICO_BIN=" + filepath.Dir(bin.edge), "PICO_BASE_PORT=" + strconv.Itoa(base), "PICO_CLUSTER_DIR=" + cluster}

	// run runs a short command line with bash and returns its stdout.
	run := func(t *testing.T, line string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", "-c", line)
		cmd.Dir, cmd.Env = cwd, env
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v\n%s%s", line, err, out, stderr.Bytes())
		}
		return string(out)
	}
	service := func(t *testing.T) string { // what the README's local service answers itself
		t.Helper()
		return run(t, "curl -sS http://127.0.0.1:"+port("3000")+"/")
	}
	waitPort := func(t *testing.T, p string) {
		t.Helper()
		poll(t, waitTimeout, "a listener on port "+p, func() bool {
			c, err := net.Dial("tcp", "127.0.0.1:"+p)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}
	var running []*proc // edges and agents, stopped when a new edge starts
	var lastAgent *proc
	for _, block := range readmeShell(t) {
		if strings.Contains(strings.Join(block, "\n"), "bash .ci/test") {
			t.Logf("not run: the Tests block (bash .ci/test is the whole suite): %q", block)
			continue
		}
		for _, text := range block {
			code, comment, _ := strings.Cut(text, " # ")
			code, comment = strings.TrimSpace(code), strings.TrimSpace(comment)
			line := strings.ReplaceAll(code, "go run ./cmd/pico-edge", bin.edge)
			line = strings.ReplaceAll(line, "go run ./cmd/pico-agent", bin.agent)
			line = readmePorts.ReplaceAllStringFunc(line, port)
			var out string
			startsEdge := strings.HasPrefix(line, bin.edge) && !strings.HasPrefix(line, bin.edge+" token") &&
				!strings.HasPrefix(line, bin.edge+" status") || strings.Contains(line, "local-cluster.sh")
			if startsEdge {
				for _, p := range running {
					p.killAndWait(t)
				}
				running = nil
			}
			bg, isBg := strings.CutSuffix(line, "&")
			switch {
			case isBg:
				startProcEnv(t, code, append(env, scriptEnv...), "bash", "-c", "cd "+cwd+" && exec "+strings.TrimSpace(bg))
				switch {
				case strings.HasPrefix(code, "python3 "):
					waitPort(t, port("3000"))
				case strings.HasPrefix(code, "redis-server "):
					waitPort(t, port("6379"))
				case strings.Contains(code, "local-cluster.sh"):
					// Registered after the script's own cleanup, so it runs before
					// it: the nodes hold the script's output open.
					t.Cleanup(func() { // the cluster's nodes are the script's children: never leave one behind
						for i := range 3 {
							if b, err := os.ReadFile(filepath.Join(cluster, fmt.Sprintf("node-%d.pid", i))); err == nil {
								if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
									syscall.Kill(pid, syscall.SIGKILL)
								}
							}
						}
					})
					poll(t, waitTimeout, "the local cluster's three nodes to see each other", func() bool {
						for i := range 3 {
							n := &edgeProc{admin: fmt.Sprintf("127.0.0.1:%d", base+100*i+2), admc: newClient(t, 5*time.Second)}
							if m, err := n.liveMembers(); err != nil || len(m) != 3 {
								return false
							}
						}
						return true
					})
				default:
					t.Fatalf("README line %q: the test does not know when it is ready", code)
				}
			case startsEdge:
				p := startProcEnv(t, code, append(env, edgeEnv...), "bash", "-c", "cd "+cwd+" && exec "+line)
				p.waitLineFor(t, 0, "edge node ready", startTimeout, contains("edge node ready"))
				running = append(running, p)
			case strings.HasPrefix(line, bin.agent):
				p := startProcEnv(t, code, append(env, agentEnv...), "bash", "-c", "cd "+cwd+" && exec "+line)
				ready := contains("is registered")
				if strings.HasPrefix(line, bin.agent+" forward") {
					ready = func(l string) bool { return strings.HasPrefix(l, "forwarding ") }
				}
				p.waitLineFor(t, 0, "ready", startTimeout, ready)
				running = append(running, p)
				lastAgent = p
			default:
				if name, cmd, ok := strings.Cut(line, "=$("); ok && strings.HasSuffix(cmd, ")") && !strings.Contains(name, " ") {
					v := strings.TrimSpace(run(t, strings.TrimSuffix(cmd, ")")))
					env = append(env, name+"="+v)
					break
				}
				out = run(t, line)
			}

			// The comment, when it says what comes out.
			check := func(ok bool, what string) {
				t.Helper()
				if !ok {
					t.Errorf("README line %q: %s", code, what)
				}
			}
			switch {
			case comment == "", comment == "any local service", comment == "or: just cluster":
			case comment == "one node on safe defaults; generates a development CA":
				_, err := os.Stat(filepath.Join(home, ".local/share/pico/ca.pem"))
				check(err == nil, fmt.Sprintf("no development CA in ~/.local/share/pico: %v", err))
			case comment == "the service answers", comment == "the same, by Host":
				check(out == service(t), fmt.Sprintf("got %q, not the service's answer", out))
			case comment == "HTTP/2":
				check(out == service(t), fmt.Sprintf("got %q, not the service's answer", out))
				v := run(t, line+" -sS -o /dev/null -w '%{http_version}'")
				check(v == "2", "answered over HTTP "+v)
			case comment == "PONG, through the tunnel":
				check(strings.TrimSpace(out) == "PONG", fmt.Sprintf("got %q", out))
			case strings.HasPrefix(comment, "creates ~/"):
				_, err := os.Stat(filepath.Join(home, strings.TrimPrefix(comment, "creates ~/")))
				check(err == nil, fmt.Sprintf("%v", err))
			case strings.HasPrefix(comment, `"`) && strings.HasSuffix(comment, `"`):
				want := strings.Trim(comment, `"`)
				lastAgent.waitLineFor(t, 0, strconv.Quote(want), waitTimeout, contains(want))
			case comment == "any node answers; kill one, it still does":
				check(out == service(t), fmt.Sprintf("got %q, not the service's answer", out))
				b, err := os.ReadFile(filepath.Join(cluster, "node-0.pid"))
				if err != nil {
					t.Fatal(err)
				}
				pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
				syscall.Kill(pid, syscall.SIGKILL)
				again := run(t, line)
				check(again == service(t), fmt.Sprintf("with node-0 killed: got %q, not the service's answer", again))
			default:
				t.Errorf("README line %q: the comment %q says nothing TestReadmeShell checks; teach it what to check", code, comment)
			}
		}
	}
	entries, _ := os.ReadDir(cwd)
	for _, e := range entries {
		if e.Name() != "deploy" {
			t.Errorf("the README's commands left %s in the directory they ran in (a clone)", e.Name())
		}
	}
}
