package edge_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

var idleHeapProfile = flag.String("idle-heapprofile", "", "BenchmarkIdleAgentLinks: write heap profiles taken while the links are up to this path, its name prefixed with agents- (the edge) or bare- (bare quic-go); use with -memprofilerate=1")

// BenchmarkIdleAgentLinks measures what one idle agent link costs the edge:
// heap, goroutine stacks and goroutines per link. The agents run in a
// child process (this test binary, TestIdleAgentsHelper), so only the
// edge's memory is counted; the links are real QUIC over loopback, each
// with its control stream and one registered endpoint.
//
//	go test ./edge -run '^$' -bench IdleAgentLinks -benchtime 1x
//	go test ./edge -run '^$' -bench IdleAgentLinks -benchtime 1x -memprofilerate 1 -args -idle-heapprofile idle.pprof
//	go tool pprof -sample_index=inuse_space -top edge/agents-idle.pprof
func BenchmarkIdleAgentLinks(b *testing.B) {
	const links = 500
	b.Run("edge", func(b *testing.B) {
		for range b.N {
			n := edgetest.NewNode(b)
			measureIdleLinks(b, "agents", n.AgentAddr, n.Bundle.CAPEM, links, func() {
				if got := n.Server.Table().Len(); got != links {
					b.Errorf("edge has %d endpoints, want %d", got, links)
				}
			})
			n.Stop(b)
		}
	})
	// The floor: a bare quic-go listener with the edge's quic.Config, each
	// connection holding one stream with a byte in it, no goroutine of ours.
	b.Run("quic-go", func(b *testing.B) {
		for range b.N {
			bundle, err := certs.Generate()
			if err != nil {
				b.Fatal(err)
			}
			udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			tr := &quic.Transport{Conn: udp}
			defer tr.Close()
			ln, err := tr.Listen(&tls.Config{
				Certificates: []tls.Certificate{bundle.Cert}, NextProtos: []string{quicutil.ALPNAgent},
				SessionTicketsDisabled: true,
			}, quicutil.EdgeConfig())
			if err != nil {
				b.Fatal(err)
			}
			var held []*quic.Stream
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					c, err := ln.Accept(context.Background())
					if err != nil {
						return
					}
					ctx, cancel := context.WithTimeout(c.Context(), 5*time.Second)
					str, err := c.AcceptStream(ctx)
					cancel()
					if err == nil {
						held = append(held, str)
					}
				}
			}()
			measureIdleLinks(b, "bare", ln.Addr().String(), bundle.CAPEM, links, nil)
			ln.Close()
			<-done
			runtime.KeepAlive(held)
		}
	})
}

// measureIdleLinks connects links idle links to addr from a child process
// (mode "agents": agent.Agent, one endpoint each; "bare": a quic-go dial
// and one stream) and reports what they cost this process. check runs
// while the links are up.
func measureIdleLinks(b *testing.B, mode, addr string, caPEM []byte, links int, check func()) {
	b.Helper()
	caFile := filepath.Join(b.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		b.Fatal(err)
	}
	before := idleSnapshot()

	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleAgentsHelper$")
	cmd.Env = append(os.Environ(), "PICO_IDLE_AGENTS="+strconv.Itoa(links), "PICO_IDLE_EDGE="+addr,
		"PICO_IDLE_CA="+caFile, "PICO_IDLE_MODE="+mode)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- nil
				io.Copy(io.Discard, stdout)
				return
			}
		}
		ready <- fmt.Errorf("helper ended before it was ready: %v", sc.Err())
	}()
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	select {
	case err = <-ready:
	case <-time.After(2 * time.Minute):
		err = fmt.Errorf("helper not ready after 2m")
	}
	if err != nil {
		cmd.Process.Kill()
		b.Fatal(err)
	}
	if check != nil {
		check()
	}
	// Let handshake leftovers go and a few keep-alives pass.
	time.Sleep(3 * time.Second)
	after := idleSnapshot()
	if *idleHeapProfile != "" {
		if f, err := os.Create(filepath.Join(filepath.Dir(*idleHeapProfile), mode+"-"+filepath.Base(*idleHeapProfile))); err == nil {
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}
	heap := float64(after.heap-before.heap) / float64(links)
	stack := float64(after.stack-before.stack) / float64(links)
	stackGC := float64(after.stackGC-before.stackGC) / float64(links)
	b.ReportMetric(heap, "heap-B/link")
	b.ReportMetric(stack, "stack-B/link")
	b.ReportMetric(stackGC, "stack-gc-B/link")
	b.ReportMetric((heap+stack)/1024, "KiB/link")
	b.ReportMetric(float64(after.goroutines-before.goroutines)/float64(links), "goroutines/link")
	b.Logf("goroutines per link by where they wait:\n%s", goroutinesPerLink(links))
}

type memSnapshot struct {
	heap, stack, stackGC uint64
	goroutines           int
}

// idleSnapshot reads the stacks as they are, then the heap and the stacks
// after two forced collections. The heap without its garbage is the
// reproducible figure; the stacks are not: a collection shrinks the stacks
// of goroutines that grow them again at their next packet (quic-go's two per
// connection), so a running edge has about 5 KiB per link more than stackGC,
// and about as much as stack, which varies with when the last GC ran.
func idleSnapshot() memSnapshot {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	stack := ms.StackInuse
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return memSnapshot{heap: ms.HeapInuse, stack: stack, stackGC: ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

// goroutinesPerLink lists the goroutine stacks that many
// links (a tenth or more) have, with their count per link and their innermost frames.
func goroutinesPerLink(links int) string {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 1)
	type group struct {
		n     int
		where string
	}
	var groups []group
	for _, rec := range strings.Split(buf.String(), "\n\n") {
		lines := strings.Split(strings.TrimSpace(rec), "\n")
		if len(lines) < 2 {
			continue
		}
		cnt, _, ok := strings.Cut(lines[0], " @")
		if !ok {
			continue
		}
		c, err := strconv.Atoi(cnt)
		if err != nil || c < links/10 {
			continue
		}
		var frames []string
		for _, l := range lines[1:] {
			f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(l), "#"))
			if len(f) >= 3 && !strings.HasPrefix(f[1], "runtime.") && !strings.HasPrefix(f[1], "internal/") {
				frames = append(frames, f[1])
			}
			if len(frames) == 5 {
				break
			}
		}
		groups = append(groups, group{c, strings.Join(frames, " < ")})
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i].n > groups[j].n })
	var out strings.Builder
	for _, g := range groups {
		fmt.Fprintf(&out, "  %.2f  %s\n", float64(g.n)/float64(links), g.where)
	}
	return out.String()
}

// TestIdleAgentsHelper is BenchmarkIdleAgentLinks's child process: it
// connects PICO_IDLE_AGENTS agents to PICO_IDLE_EDGE, each serving one
// endpoint, prints "ready" and keeps them until its stdin closes.
func TestIdleAgentsHelper(t *testing.T) {
	k, _ := strconv.Atoi(os.Getenv("PICO_IDLE_AGENTS"))
	if k <= 0 {
		t.Skip("child process of BenchmarkIdleAgentLinks")
	}
	pool, err := certs.LoadPool(os.Getenv("PICO_IDLE_CA"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, 16) // the edge's accept queue holds 32
	errs := make(chan error, k)
	var agents []*agent.Agent
	defer func() {
		for _, a := range agents {
			a.Close()
		}
	}()
	if os.Getenv("PICO_IDLE_MODE") == "bare" {
		tlsConf := certs.ClientTLSConfig(pool, "localhost", quicutil.ALPNAgent)
		var conns []*quic.Conn
		defer func() {
			for _, c := range conns {
				c.CloseWithError(0, "")
			}
		}()
		for range k {
			c, err := quic.DialAddr(ctx, os.Getenv("PICO_IDLE_EDGE"), tlsConf, quicutil.AgentConfig())
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			str, err := c.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := str.Write([]byte{1}); err != nil {
				t.Fatal(err)
			}
		}
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
		return
	}
	var regs sync.WaitGroup
	for i := range k {
		a, err := agent.New(agent.Config{Edges: []string{os.Getenv("PICO_IDLE_EDGE")}, RootCAs: pool, Logger: edgetest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
		wg.Go(func() { a.Run(ctx) })
		sem <- struct{}{}
		regs.Go(func() {
			defer func() { <-sem }()
			if err := a.ServeUpstream(ctx, fmt.Sprintf("idle-%d", i), quicutil.KindHTTP, "127.0.0.1:9"); err != nil {
				errs <- err
			}
		})
	}
	regs.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}
