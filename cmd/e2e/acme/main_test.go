package acmetest

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

// bin holds the binaries TestMain builds: pico-edge, pico-agent, pebble.
var bin struct{ edge, agent, pebble string }

// waitTimeout bounds every wait for a log line or a state.
const waitTimeout = 30 * time.Second

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips
	}
	dir, err := os.MkdirTemp("", "pico-acme-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// pico-edge and pico-agent are built in the root module (their own
	// requirements), Pebble in this one (go.mod's tool line).
	for _, b := range []struct{ dir, pkg string }{
		{"../../..", "./cmd/pico-edge"}, {"../../..", "./cmd/pico-agent"},
		{".", "github.com/letsencrypt/pebble/v2/cmd/pebble"},
	} {
		cmd := exec.Command("go", "build", "-o", dir, b.pkg)
		cmd.Dir, cmd.Stdout, cmd.Stderr = b.dir, os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", b.pkg+":", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	bin.edge, bin.agent, bin.pebble = filepath.Join(dir, "pico-edge"), filepath.Join(dir, "pico-agent"), filepath.Join(dir, "pebble")
	code := 0
	func() {
		defer os.RemoveAll(dir)
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		code = m.Run()
		if code == 0 {
			if err := goleak.Find(); err != nil {
				fmt.Fprintln(os.Stderr, "goleak:", err)
				code = 1
			}
		}
	}()
	os.Exit(code)
}

// e2e skips t under -short.
func e2e(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped under -short")
	}
}

// proc is a process the test started, with its output kept line by line.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  []string
	grew chan struct{} // closed and replaced at each line
	done chan struct{} // closed once the process has been waited for
}

// start runs path with args (and env added). Cleanup kills it by PID and
// waits; a failed test gets its output.
func start(t *testing.T, name string, env []string, path string, args ...string) *proc {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = pw, pw
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PICO_") && !strings.HasPrefix(strings.ToLower(kv), "https_proxy") && !strings.HasPrefix(strings.ToLower(kv), "http_proxy") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	pw.Close()
	p := &proc{name: name, cmd: cmd, grew: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			close(p.grew)
			p.grew = make(chan struct{})
			p.mu.Unlock()
		}
		io.Copy(io.Discard, pr)
		pr.Close()
		cmd.Wait()
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, strings.Join(p.lines(), "\n"))
		}
	})
	return p
}

// stop kills the process and waits for it.
func (p *proc) stop() {
	p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.out...)
}

// count is the number of output lines containing sub.
func (p *proc) count(sub string) int {
	n := 0
	for _, l := range p.lines() {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// wait returns the first line from line number from on that contains
// sub, failing the test after waitTimeout.
func (p *proc) wait(t *testing.T, from int, sub string) string {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		p.mu.Lock()
		for _, l := range p.out[min(from, len(p.out)):] {
			if strings.Contains(l, sub) {
				p.mu.Unlock()
				return l
			}
		}
		grew := p.grew
		p.mu.Unlock()
		select {
		case <-grew:
		case <-p.done:
			select {
			case <-p.grew:
				continue
			default:
			}
			t.Fatalf("%s exited before saying %q", p.name, sub)
		case <-deadline:
			t.Fatalf("%s did not say %q within %s", p.name, sub, waitTimeout)
		}
	}
}

// mark is the number of lines so far, for wait's from.
func (p *proc) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.out)
}

// field is a string attribute of a JSON log line.
func field(t *testing.T, line, key string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("not a JSON log line: %s", line)
	}
	s, _ := m[key].(string)
	if s == "" {
		t.Fatalf("no %s in %s", key, line)
	}
	return s
}

// dnsServer answers every A question with 127.0.0.1 and every other with
// no answer, over UDP and TCP (Pebble asks over TCP) on one loopback port,
// and keeps the names it was asked.
type dnsServer struct {
	mu    sync.Mutex
	names map[string]int
}

func startDNS(t *testing.T) (*dnsServer, string) {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for try := 0; ln == nil; try++ { // the same port for UDP and TCP
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close()
			if try == 20 {
				t.Fatal(err)
			}
		}
	}
	d := &dnsServer{names: make(map[string]int)}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: dns.HandlerFunc(d.answer)}, {Listener: ln, Handler: dns.HandlerFunc(d.answer)}} {
		done := make(chan struct{})
		go func() { defer close(done); srv.ActivateAndServe() }()
		t.Cleanup(func() { srv.Shutdown(); <-done })
	}
	return d, pc.LocalAddr().String()
}

func (d *dnsServer) answer(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	for _, qq := range q.Question {
		d.mu.Lock()
		d.names[strings.TrimSuffix(strings.ToLower(qq.Name), ".")]++
		d.mu.Unlock()
		if qq.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
				A:   net.IPv4(127, 0, 0, 1),
			})
		}
	}
	w.WriteMsg(m)
}

// asked is how many questions named name.
func (d *dnsServer) asked(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.names[name]
}
