package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Scenario H: raw TCP through Pico. A client connects to
// `pico-agent forward`, which tunnels each connection through the edge to
// a `tcp` endpoint served by another agent, in front of the tcp-upstream
// subcommand; direct is the same client against tcp-upstream itself.
//
// tcp-upstream protocol: the client's first byte picks the mode.
//
//	'S' sink: the server reads to EOF, then answers the byte count as 8
//	    bytes big-endian and closes (the client half-closes, and the
//	    half-close travels through Pico).
//	'E' echo: the server writes back everything it reads, until EOF.

// runTCPUpstream serves the sink and echo modes on --addr.
func runTCPUpstream(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tcp-upstream", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, maxLife)
	defer cancel()
	printJSON(upstreamReady{Addr: ln.Addr().String()})
	return serveEach(ctx, ln, serveTCPUpstream)
}

// serveEach serves each connection ln accepts with serve, in its own
// goroutine, and closes it after; it returns when ctx ends (nil) or
// Accept fails, once every connection's serve has returned.
func serveEach(ctx context.Context, ln net.Listener, serve func(net.Conn)) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() {
			defer c.Close()
			serve(c)
		})
	}
}

func serveTCPUpstream(c net.Conn) {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	buf := make([]byte, 256<<10)
	switch mode[0] {
	case 'S':
		n, err := io.CopyBuffer(io.Discard, c, buf)
		if err != nil {
			return
		}
		var ans [8]byte
		binary.BigEndian.PutUint64(ans[:], uint64(n))
		c.Write(ans[:])
	case 'E':
		io.CopyBuffer(c, c, buf[:64<<10])
	}
}

// TCPLoadResult is what the tcpload subcommand prints. Bulk runs fill
// Bytes, Seconds and MiBps; request/response runs the rest.
type TCPLoadResult struct {
	Mode    string  `json:"mode"` // "bulk" or "rr"
	Conns   int     `json:"conns"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	MiBps   float64 `json:"mib_per_sec,omitempty"`
	// Request/response: one --size message out, the same back, per request.
	Requests       int64   `json:"requests,omitempty"`
	RequestsPerSec float64 `json:"requests_per_sec,omitempty"`
	P50Us          float64 `json:"p50_us,omitempty"`
	P99Us          float64 `json:"p99_us,omitempty"`
	P999Us         float64 `json:"p999_us,omitempty"`
}

// runTCPLoad is scenario H's client. bulk: --conns connections each send
// --bytes/--conns bytes to the sink, half-close and check the count it
// answers; the rate is all bytes over the time from the first dial to the
// last answer. rr: --conns connections each send a --size message and
// wait for its echo, over and over, for --duration.
func runTCPLoad(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tcpload", flag.ContinueOnError)
	addr := fs.String("addr", "", "address to connect to")
	mode := fs.String("mode", "bulk", "bulk or rr")
	conns := fs.Int("conns", 1, "connections")
	total := fs.Int64("bytes", 1<<30, "bulk: bytes in all, split over the connections")
	size := fs.Int("size", 64, "rr: message size")
	duration := fs.Duration("duration", 10*time.Second, "rr: run time")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *conns < 1 || *total < int64(*conns) || *size < 1 || *size > 1<<20 || *duration <= 0 {
		return errors.New("want --addr, and positive --conns, --bytes (at least one per connection), --size (at most 1 MiB) and --duration")
	}
	ctx, cancel := context.WithTimeout(ctx, *duration+10*time.Minute)
	defer cancel()
	res := TCPLoadResult{Mode: *mode, Conns: *conns}
	var mu sync.Mutex
	var firstErr error
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	start := time.Now()
	switch *mode {
	case "bulk":
		per := *total / int64(*conns)
		res.Bytes = per * int64(*conns)
		for i := range *conns {
			wg.Go(func() {
				if err := bulkConn(ctx, *addr, per); err != nil {
					fail(fmt.Errorf("connection %d: %w", i, err))
				}
			})
		}
		wg.Wait()
		res.Seconds = time.Since(start).Seconds()
		res.MiBps = float64(res.Bytes) / res.Seconds / (1 << 20)
	case "rr":
		lats := make([][]float64, *conns)
		ready := sync.WaitGroup{}
		ready.Add(*conns)
		begin := make(chan struct{})
		var deadline time.Time
		for i := range *conns {
			wg.Go(func() {
				l, err := rrConn(ctx, *addr, *size, &ready, begin, &deadline)
				lats[i] = l
				if err != nil {
					fail(fmt.Errorf("connection %d: %w", i, err))
				}
			})
		}
		ready.Wait() // every connection is up and has echoed one message
		deadline = time.Now().Add(*duration)
		close(begin)
		wg.Wait()
		var all []float64
		for _, l := range lats {
			all = append(all, l...)
		}
		var lr LoadResult
		lr.setLatencies(all)
		res.Seconds = duration.Seconds()
		res.Requests = int64(len(all))
		res.RequestsPerSec = float64(res.Requests) / res.Seconds
		res.Bytes = res.Requests * int64(*size) * 2
		res.P50Us, res.P99Us, res.P999Us = lr.P50Us, lr.P99Us, lr.P999Us
	default:
		return fmt.Errorf("--mode %q: want bulk or rr", *mode)
	}
	if firstErr != nil {
		return firstErr
	}
	printJSON(res)
	return nil
}

func dialTCP(ctx context.Context, addr string) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: 15 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return c.(*net.TCPConn), nil
}

func bulkConn(ctx context.Context, addr string, n int64) error {
	c, err := dialTCP(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	for i := range buf {
		buf[i] = byte(i)
	}
	if _, err := c.Write([]byte{'S'}); err != nil {
		return err
	}
	for left := n; left > 0; {
		k, err := c.Write(buf[:min(left, int64(len(buf)))])
		left -= int64(k)
		if err != nil {
			return fmt.Errorf("write with %d bytes left: %w", left, err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	var ans [8]byte
	if _, err := io.ReadFull(c, ans[:]); err != nil {
		return fmt.Errorf("read the sink's count: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(ans[:])); got != n {
		return fmt.Errorf("the sink counted %d bytes, %d were sent", got, n)
	}
	return nil
}

// rrConn connects, echoes one message, signals ready, waits for begin and
// then does request/response round trips until *deadline, returning each
// one's latency in microseconds (those that ended after the deadline are
// left out).
func rrConn(ctx context.Context, addr string, size int, ready *sync.WaitGroup, begin <-chan struct{}, deadline *time.Time) ([]float64, error) {
	readyDone := false
	defer func() {
		if !readyDone {
			ready.Done()
		}
	}()
	c, err := dialTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetNoDelay(true)
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte('a' + i%26)
	}
	back := make([]byte, size)
	round := func() error {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return err
		}
		if string(back) != string(msg) {
			return errors.New("the echo differs from the message")
		}
		return nil
	}
	if _, err := c.Write([]byte{'E'}); err != nil {
		return nil, err
	}
	if err := round(); err != nil {
		return nil, fmt.Errorf("first round trip: %w", err)
	}
	readyDone = true
	ready.Done()
	select {
	case <-begin:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	end := *deadline
	lat := make([]float64, 0, 1<<14)
	for {
		t0 := time.Now()
		if !t0.Before(end) {
			return lat, nil
		}
		if err := round(); err != nil {
			return lat, err
		}
		t1 := time.Now()
		if t1.After(end) {
			return lat, nil
		}
		lat = append(lat, float64(t1.Sub(t0).Nanoseconds())/1e3)
	}
}

// TCPRun is one tcpload run and the CPU the processes spent meanwhile.
type TCPRun struct {
	Target string `json:"target"`                // "direct" or "pico"
	Links  int    `json:"agent_links,omitempty"` // --connections of both agents
	// LinksSeen is the serving agent's links the edge listed.
	LinksSeen int           `json:"agent_links_seen,omitempty"`
	Result    TCPLoadResult `json:"result"`
	// CPUSeconds per role: edge, agent (serving the endpoint), fwd-agent
	// (pico-agent forward), upstream, client.
	CPUSeconds map[string]float64 `json:"cpu_seconds"`
	// CPUPerGiB (bulk) or CPUPer1kReq (rr) divides CPUSeconds.
	CPUPerGiB   map[string]float64 `json:"cpu_seconds_per_gib,omitempty"`
	CPUPer1kReq map[string]float64 `json:"cpu_seconds_per_1k_requests,omitempty"`
	PeakRSSKiB  map[string]int64   `json:"peak_rss_kib,omitempty"`
	OtherCores  float64            `json:"other_cores"`
}

// TCPRow is one direct/pico pair of scenario H.
type TCPRow struct {
	Mode     string      `json:"mode"`
	Conns    int         `json:"conns"`
	Direct   TCPRun      `json:"direct"`
	Pico     TCPRun      `json:"pico"`
	RatioPct float64     `json:"ratio_pct"` // MiB/s (bulk) or requests/s (rr)
	Pairs    []PairRatio `json:"pairs"`
}

// TCPResult is scenario H.
type TCPResult struct {
	Bulk []TCPRow `json:"bulk"`
	RR   []TCPRow `json:"request_response"`
	// Links is bulk again with both agents started with
	// --connections N (links to the one edge node), pico side only.
	Links        []TCPRow `json:"bulk_agent_links,omitempty"`
	MessageBytes int      `json:"rr_message_bytes"`
	// BulkVsQUICPct is the one-connection bulk MiB/s through Pico over
	// scenario C's quic-go one-stream copy of the same run.
	BulkVsQUICPct float64 `json:"bulk_c1_vs_quic_copy_pct,omitempty"`
}

// rrSize is the message size of H's request/response runs.
const rrSize = 64

// tcpPico is the agents of one scenario H setup.
type tcpPico struct {
	serve, fwd *proc
	fwdAddr    string
	links      int
	seen       int // links of the serving agent the edge listed
}

func (t *tcpPico) kill() {
	t.fwd.kill()
	t.serve.kill()
}

// startTCPPico starts an agent serving endpoint tcpbench from up, and a
// pico-agent forward to it, each with links links to e and the extra
// flags.
func (h *harness) startTCPPico(ctx context.Context, e *edgeProc, up string, links int, extra ...string) (*tcpPico, error) {
	suffix := ""
	if links > 1 {
		suffix = "-" + strconv.Itoa(links)
	}
	serve, seen, err := h.startAgentLinks(ctx, e, "agent-tcp"+suffix, "tcp", "tcpbench", up, links, extra...)
	if err != nil {
		return nil, err
	}
	fwd, err := h.procs.start("fwd-agent"+suffix, false, h.binary("pico-agent"), append([]string{"forward", "127.0.0.1:0", "tcpbench",
		"--edge", e.agentAddr, "--ca", e.caFile(), "--connections", strconv.Itoa(links), "--log-format", "json"}, extra...)...)
	if err != nil {
		serve.kill()
		return nil, err
	}
	line, err := fwd.waitLine(ctx, 20*time.Second, func(l string) bool { return strings.HasPrefix(l, "forwarding ") })
	if err != nil {
		serve.kill()
		fwd.kill()
		return nil, err
	}
	addr, _, _ := strings.Cut(strings.TrimPrefix(line, "forwarding "), " ")
	t := &tcpPico{serve: serve, fwd: fwd, fwdAddr: addr, links: links, seen: seen}
	// The forward agent's links come up after its listener: the first
	// request/response proves the path.
	if err := poll(ctx, 30*time.Second, "a round trip through pico-agent forward", func() (bool, error) {
		_, err := h.tcpload(ctx, "check", addr, "rr", 1, 0, time.Second/2, nil)
		return err == nil, err
	}); err != nil {
		t.kill()
		return nil, err
	}
	return t, nil
}

// startTCPUpstream starts the TCP sink/echo upstream of scenarios H and X.
// The caller kills it.
func (h *harness) startTCPUpstream(ctx context.Context) (*proc, string, error) {
	up, err := h.procs.start("tcp-upstream", false, h.binary("pico-bench"), "tcp-upstream", "--addr", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	var ready upstreamReady
	if _, err := up.waitLine(ctx, 20*time.Second, jsonLine(&ready, func() bool { return ready.Addr != "" })); err != nil {
		up.kill()
		return nil, "", err
	}
	return up, ready.Addr, nil
}

// runH measures TCP forwarding: bulk at 1 and 4 connections, and
// request/response at 1, 16 and 64, direct and through Pico; then bulk
// with --agent-connections links.
func (h *harness) runH(ctx context.Context) error {
	up, upAddr, err := h.startTCPUpstream(ctx)
	if err != nil {
		return err
	}
	defer up.kill()
	ready := upstreamReady{Addr: upAddr}
	e, err := h.startEdge(ctx, "edge-tcp", false)
	if err != nil {
		return err
	}
	defer e.kill()
	t, err := h.startTCPPico(ctx, e, ready.Addr, 1)
	if err != nil {
		return err
	}
	defer t.kill()
	res := &TCPResult{MessageBytes: rrSize}
	h.res.TCP = res
	watchOf := func(t *tcpPico) []cpuWatch {
		return []cpuWatch{{"edge", e.proc}, {"agent", t.serve}, {"fwd-agent", t.fwd}, {"upstream", up}}
	}
	watch := watchOf(t)
	bulk := h.opts.TCPBulkBytes
	h.logf("H: warm-up, %.1f MiB bulk each direct and through pico", float64(bulk/16)/(1<<20))
	for _, a := range []string{ready.Addr, t.fwdAddr} {
		if _, err := h.tcpload(ctx, "warm-up", a, "bulk", 1, bulk/16, 0, watch); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	pairOf := func(mode string, conns int) (TCPRow, error) {
		row := TCPRow{Mode: mode, Conns: conns}
		var all [][2]TCPRun
		metric := func(r TCPRun) float64 {
			if mode == "bulk" {
				return r.Result.MiBps
			}
			return r.Result.RequestsPerSec
		}
		for i := 0; i < h.opts.Repeat; i++ {
			what := fmt.Sprintf("TCP %s at %d conns", mode, conns)
			h.waitQuiet(ctx, what)
			h.logf("H: %s, direct then through pico (%d/%d)", what, i+1, h.opts.Repeat)
			dr, err := h.tcpload(ctx, "direct", ready.Addr, mode, conns, bulk, h.opts.Duration, watch)
			if err != nil {
				return row, err
			}
			pr, err := h.tcpload(ctx, "pico", t.fwdAddr, mode, conns, bulk, h.opts.Duration, watch)
			if err != nil {
				return row, err
			}
			pr.Links = 1
			all = append(all, [2]TCPRun{dr, pr})
			row.Pairs = append(row.Pairs, PairRatio{Direct: metric(dr), Pico: metric(pr), RatioPct: pct(metric(pr), metric(dr))})
		}
		m := medianIndex(row.Pairs)
		row.Direct, row.Pico, row.RatioPct = all[m][0], all[m][1], row.Pairs[m].RatioPct
		return row, nil
	}
	for _, conns := range []int{1, 4} {
		row, err := pairOf("bulk", conns)
		if err != nil {
			return err
		}
		res.Bulk = append(res.Bulk, row)
	}
	for _, conns := range h.opts.RRConns {
		row, err := pairOf("rr", conns)
		if err != nil {
			return err
		}
		res.RR = append(res.RR, row)
	}
	if h.opts.AgentConns > 1 && ctx.Err() == nil {
		if err := h.stopAgent(ctx, e, t.fwd, ""); err != nil {
			return err
		}
		if err := h.stopAgent(ctx, e, t.serve, "tcpbench"); err != nil {
			return err
		}
		n := h.opts.AgentConns
		tn, err := h.startTCPPico(ctx, e, ready.Addr, n)
		if err != nil {
			return fmt.Errorf("agents with %d links: %w", n, err)
		}
		defer tn.kill()
		h.linkNote("H", n, tn.seen)
		wn := watchOf(tn)
		for _, one := range res.Bulk {
			var runs []TCPRun
			var rates []float64
			for i := 0; i < h.opts.Repeat; i++ {
				h.waitQuiet(ctx, fmt.Sprintf("TCP bulk at %d conns, %d links", one.Conns, n))
				h.logf("H: bulk at %d conns through pico, agents of %d links (%d/%d)", one.Conns, n, i+1, h.opts.Repeat)
				r, err := h.tcpload(ctx, "pico", tn.fwdAddr, "bulk", one.Conns, bulk, 0, wn)
				if err != nil {
					return err
				}
				r.Links, r.LinksSeen = n, tn.seen
				runs = append(runs, r)
				rates = append(rates, r.Result.MiBps)
			}
			i := indexOf(rates, median(rates))
			res.Links = append(res.Links, TCPRow{Mode: "bulk", Conns: one.Conns, Direct: one.Direct, Pico: runs[i],
				RatioPct: pct(rates[i], one.Direct.Result.MiBps)})
		}
	}
	return nil
}

func indexOf(v []float64, x float64) int {
	for i, y := range v {
		if y == x {
			return i
		}
	}
	return 0
}

// tcpload runs the tcpload subcommand once, with the CPU accounting
// around it. For bulk, total is the bytes of the run; for rr, d its time.
func (h *harness) tcpload(ctx context.Context, target, addr, mode string, conns int, total int64, d time.Duration, watch []cpuWatch) (TCPRun, error) {
	run := TCPRun{Target: target}
	args := []string{"tcpload", "--addr", addr, "--mode", mode, "--conns", strconv.Itoa(conns),
		"--bytes", strconv.FormatInt(max(total, int64(conns)), 10), "--size", strconv.Itoa(rrSize)}
	if d > 0 {
		args = append(args, "--duration", d.String())
	}
	m := h.startMeasure(watch)
	p, err := h.procs.start("tcpload", true, h.binary("pico-bench"), args...)
	if err != nil {
		return run, err
	}
	if err := p.wait(ctx, d+10*time.Minute); err != nil {
		return run, err
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(p.output())), &run.Result); err != nil {
		return run, fmt.Errorf("tcpload output %q: %w", p.output(), err)
	}
	run.CPUSeconds, run.PeakRSSKiB, run.OtherCores, err = m.end(p)
	if err != nil {
		return run, err
	}
	switch mode {
	case "bulk":
		run.CPUPerGiB = map[string]float64{}
		for role, s := range run.CPUSeconds {
			run.CPUPerGiB[role] = s / (float64(run.Result.Bytes) / (1 << 30))
		}
	case "rr":
		if run.Result.Requests <= 0 {
			return run, fmt.Errorf("tcpload rr %s %s: no round trips", target, addr)
		}
		run.CPUPer1kReq = map[string]float64{}
		for role, s := range run.CPUSeconds {
			run.CPUPer1kReq[role] = s / float64(run.Result.Requests) * 1000
		}
	}
	if target == "direct" || target == "pico" {
		h.noisy("tcpload %s %s at %d conns", run.OtherCores, mode, target, conns)
	}
	return run, nil
}
