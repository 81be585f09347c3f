package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

type harness struct {
	opts   Options
	procs  procs
	tmp    string
	bin    string // directory of the built binaries
	root   string // module root
	goTool string
	res    *Results
	http   *http.Client

	upstream *proc
	upAddr   string
	upTLS    string // the upstream's HTTPS (TCP) and HTTP/3 (UDP) addresses, with scenario E
	upH3     string
	upCA     string // CA file of the upstream's certificate
	wrkLua   string // wrk script that prints p99.9 (peak.go)
	wrkPost  string // the same, sending postBytes-byte POSTs
}

// Run runs the selected scenarios and returns their results, after
// printing them to opts.Out and writing them to opts.JSON. A scenario that
// fails is recorded in Results.Errors and the others still run; Run then
// returns an error too.
func Run(ctx context.Context, opts Options) (*Results, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	h := &harness{
		opts: opts,
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
		res: &Results{
			Schema:    1,
			StartedAt: time.Now().UTC(),
			Options: OptsInfo{
				DurationS:  opts.Duration.Seconds(),
				WarmupS:    opts.Warmup.Seconds(),
				IdleAgents: opts.IdleAgents,
				Repeat:     opts.Repeat,
				QuietWaitS: opts.QuietWait.Seconds(),
			},
		},
	}
	for _, s := range allScenarios {
		if opts.Scenarios[s] {
			h.res.Options.Scenarios = append(h.res.Options.Scenarios, s)
		}
	}
	defer h.procs.killAll()
	if err := h.setup(ctx); err != nil {
		return nil, err
	}
	defer os.RemoveAll(h.tmp)

	start := time.Now()
	if opts.Scenarios["a"] || opts.Scenarios["b"] {
		h.record("A/B", h.runAB(ctx))
	}
	if opts.Scenarios["c"] && ctx.Err() == nil {
		h.record("C", h.runC(ctx))
	}
	if opts.Scenarios["d"] && ctx.Err() == nil {
		h.record("D", h.runD(ctx))
	}
	if opts.Scenarios["e"] && ctx.Err() == nil {
		h.record("E", h.runE(ctx))
	}
	if opts.Scenarios["f"] && ctx.Err() == nil {
		h.record("F", h.runF(ctx))
	}
	if opts.Scenarios["g"] && ctx.Err() == nil {
		h.record("G", h.runG(ctx))
	}
	if opts.Scenarios["h"] && ctx.Err() == nil {
		h.record("H", h.runH(ctx))
	}
	if opts.Scenarios["i"] && ctx.Err() == nil {
		h.record("I", h.runI(ctx))
	}
	if opts.Scenarios["t"] && ctx.Err() == nil {
		h.record("T", h.runT(ctx))
	}
	if opts.Scenarios["x"] && ctx.Err() == nil {
		h.record("X", h.runX(ctx))
	}
	h.runScale(ctx)
	if h.res.Bulk != nil && h.res.QUICCopy != nil {
		h.res.PicoVsQUICPct = pct(h.res.Bulk.PicoMiBps, h.res.QUICCopy.MiBps)
	}
	if t := h.res.TCP; t != nil && len(t.Bulk) > 0 && h.res.QUICCopy != nil {
		t.BulkVsQUICPct = pct(t.Bulk[0].Pico.Result.MiBps, h.res.QUICCopy.MiBps)
	}
	h.res.Seconds = time.Since(start).Seconds()
	h.res.Host.LoadAvgEnd = loadAvg()
	h.procs.killAll()

	last := loadResults(opts.JSON)
	if last != nil {
		h.res.VsLast = compare(last, h.res)
		h.res.LastStartedAt = last.StartedAt
	}
	printReport(opts.Out, h.res)
	printComparison(opts.Out, last, h.res.VsLast)
	werr := writeJSON(opts.JSON, opts.History, h.res)
	if werr != nil {
		h.res.Errors = append(h.res.Errors, werr.Error())
	} else {
		fmt.Fprintf(opts.Log, "results written to %s\n", opts.JSON)
	}
	if ctx.Err() != nil {
		return h.res, ctx.Err()
	}
	if len(h.res.Errors) > 0 {
		return h.res, fmt.Errorf("%d scenario(s) failed: %s", len(h.res.Errors), strings.Join(h.res.Errors, "; "))
	}
	return h.res, nil
}

func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(h.opts.Log, "pico-bench: "+format+"\n", args...)
}

func (h *harness) record(name string, err error) {
	if err != nil {
		h.logf("scenario %s failed: %v", name, err)
		h.res.Errors = append(h.res.Errors, fmt.Sprintf("scenario %s: %v", name, err))
	}
}

func (h *harness) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	h.logf("warning: %s", msg)
	h.res.Warnings = append(h.res.Warnings, msg)
}

// setup finds the module, builds the binaries and gathers host facts.
func (h *harness) setup(ctx context.Context) error {
	if h.opts.Scenarios["a"] || h.opts.Scenarios["b"] || h.opts.Scenarios["f"] {
		if _, err := exec.LookPath("wrk"); err != nil {
			return errors.New("wrk not found in PATH (Debian/Ubuntu: apt-get install wrk)")
		}
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	h.goTool = goTool
	gomod, err := h.output(ctx, "", goTool, "env", "GOMOD")
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod = strings.TrimSpace(gomod)
	if gomod == "" || gomod == os.DevNull {
		return errors.New("run pico-bench inside the pico module (go env GOMOD is empty)")
	}
	if b, err := os.ReadFile(gomod); err != nil || !bytes.Contains(b, []byte("module github.com/pico-edge/pico\n")) {
		return fmt.Errorf("%s is not the github.com/pico-edge/pico module", gomod)
	}
	h.root = filepath.Dir(gomod)

	h.tmp, err = os.MkdirTemp("", "pico-bench-")
	if err != nil {
		return err
	}
	h.bin = filepath.Join(h.tmp, "bin")
	h.wrkLua = filepath.Join(h.tmp, "p999.lua")
	if err := os.WriteFile(h.wrkLua, []byte(wrkLua), 0o644); err != nil {
		return err
	}
	h.wrkPost = filepath.Join(h.tmp, "post.lua")
	if err := os.WriteFile(h.wrkPost, []byte(wrkPostLua+wrkLua), 0o644); err != nil {
		return err
	}
	h.logf("building pico-edge, pico-agent and pico-bench into %s", h.bin)
	bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if _, err := h.output(bctx, h.root, goTool, "build", "-o", h.bin+string(filepath.Separator),
		"./cmd/pico-edge", "./cmd/pico-agent", "./cmd/pico-bench"); err != nil {
		os.RemoveAll(h.tmp)
		return fmt.Errorf("go build: %w", err)
	}

	hi := &h.res.Host
	hi.NProc = runtime.NumCPU()
	if v, err := h.output(ctx, "", goTool, "env", "GOVERSION"); err == nil {
		hi.GoVersion = strings.TrimSpace(v)
	} else {
		hi.GoVersion = runtime.Version()
	}
	if v, err := h.output(ctx, h.root, "git", "rev-parse", "HEAD"); err == nil {
		hi.GitCommit = strings.TrimSpace(v)
		if st, err := h.output(ctx, h.root, "git", "status", "--porcelain", "--untracked-files=no"); err == nil {
			hi.GitDirty = strings.TrimSpace(st) != ""
		}
	}
	if v, err := h.output(ctx, "", "wrk", "--version"); err == nil || v != "" {
		hi.WrkVersion, _, _ = strings.Cut(strings.TrimSpace(v), " Copyright")
	}
	if h.opts.Scenarios["e"] {
		if v, err := h.output(ctx, "", "h2load", "--version"); err == nil {
			hi.H2loadVer = strings.TrimSpace(v)
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		hi.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				hi.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	hi.UDPRmemMax = readInt("/proc/sys/net/core/rmem_max")
	hi.UDPWmemMax = readInt("/proc/sys/net/core/wmem_max")
	if hi.UDPRmemMax > 0 && hi.UDPRmemMax < 7<<20/2 {
		h.warn("net.core.rmem_max is %d: quic-go's UDP buffers are capped below what it wants; QUIC figures suffer", hi.UDPRmemMax)
	}
	// The load average is recorded but not judged: it trails by minutes.
	// Each run's "other cores" figure is the noise measure.
	hi.LoadAvgStart = loadAvg()
	return nil
}

// output runs a short command and returns its stdout.
func (h *harness) output(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	ownGroup(cmd)
	cmd.Cancel = func() error { killGroup(cmd.Process.Pid); return nil }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (h *harness) binary(name string) string { return filepath.Join(h.bin, name) }

// startUpstream starts the upstream server once; A, B and D share it.
func (h *harness) startUpstream(ctx context.Context) error {
	if h.upstream != nil {
		return nil
	}
	args := []string{"upstream", "--addr", "127.0.0.1:0"}
	tls := h.opts.Scenarios["e"]
	if tls { // scenario E's direct baselines
		h.upCA = filepath.Join(h.tmp, "upstream-ca.pem")
		args = append(args, "--tls-addr", "127.0.0.1:0", "--ca-out", h.upCA)
	}
	p, err := h.procs.start("upstream", false, h.binary("pico-bench"), args...)
	if err != nil {
		return err
	}
	var ready upstreamReady
	if _, err := p.waitLine(ctx, 20*time.Second, jsonLine(&ready, func() bool {
		return ready.Addr != "" && (!tls || ready.TLSAddr != "" && ready.H3Addr != "")
	})); err != nil {
		return err
	}
	h.upstream, h.upAddr = p, ready.Addr
	h.upTLS, h.upH3 = ready.TLSAddr, ready.H3Addr
	return nil
}

// jsonLine returns a matcher that decodes a line into v and accepts it if ok().
func jsonLine(v any, ok func() bool) func(string) bool {
	return func(line string) bool {
		if !strings.HasPrefix(line, "{") {
			return false
		}
		return json.Unmarshal([]byte(line), v) == nil && ok()
	}
}

type edgeProc struct {
	*proc
	dataDir                     string
	proxy, agentAddr, adminAddr string
	tlsAddr, h3Addr             string // the HTTPS front door, when enabled
}

func (e *edgeProc) caFile() string { return filepath.Join(e.dataDir, "ca.pem") }

// startEdge starts an edge on ephemeral ports and waits for its ready line.
// With tlsDoor it also serves its HTTPS front door (HTTP/1.1 and HTTP/2 on
// TCP, HTTP/3 on UDP); scenarios A, B and D run without it, as they always
// have.
func (h *harness) startEdge(ctx context.Context, name string, tlsDoor bool, extra ...string) (*edgeProc, error) {
	dir := filepath.Join(h.tmp, name)
	tlsAddr := ""
	if tlsDoor {
		tlsAddr = "127.0.0.1:0"
	}
	p, err := h.procs.start(name, false, h.binary("pico-edge"), append([]string{
		"--data-dir", dir, "--proxy-addr", "127.0.0.1:0", "--agent-addr", "127.0.0.1:0",
		"--admin-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--new-conns-per-ip=-1", "--proxy-tls-addr", tlsAddr,
		"--log-format", "json", "--no-access-log", "--node-id", name}, extra...)...)
	if err != nil {
		return nil, err
	}
	var ready struct {
		Msg      string `json:"msg"`
		Proxy    string `json:"proxy_addr"`
		Agent    string `json:"agent_addr"`
		Admin    string `json:"admin_addr"`
		ProxyTLS string `json:"proxy_tls_addr"`
		ProxyH3  string `json:"proxy_h3_addr"`
	}
	if _, err := p.waitLine(ctx, 30*time.Second, jsonLine(&ready, func() bool {
		return ready.Msg == "edge node ready" && ready.Proxy != "" && ready.Agent != "" && ready.Admin != ""
	})); err != nil {
		return nil, err
	}
	if tlsDoor && (ready.ProxyTLS == "" || ready.ProxyH3 == "") {
		return nil, fmt.Errorf("%s: its ready line lacks proxy_tls_addr or proxy_h3_addr (tls %q, h3 %q)", name, ready.ProxyTLS, ready.ProxyH3)
	}
	e := &edgeProc{proc: p, dataDir: dir, proxy: ready.Proxy, agentAddr: ready.Agent, adminAddr: ready.Admin,
		tlsAddr: ready.ProxyTLS, h3Addr: ready.ProxyH3}
	if _, err := os.Stat(e.caFile()); err != nil {
		return nil, fmt.Errorf("%s: no development CA: %w", name, err)
	}
	return e, nil
}

// getJSON fetches an admin URL into v.
func (h *harness) getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := h.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

type edgeCounts struct {
	agents, endpoints int
	ids               []string
}

func (h *harness) counts(ctx context.Context, e *edgeProc) (edgeCounts, error) {
	var ag struct {
		Agents []json.RawMessage `json:"agents"`
	}
	var ep struct {
		Endpoints []struct {
			ID string `json:"id"`
		} `json:"endpoints"`
	}
	if err := h.getJSON(ctx, "http://"+e.adminAddr+"/status/agents", &ag); err != nil {
		return edgeCounts{}, err
	}
	if err := h.getJSON(ctx, "http://"+e.adminAddr+"/status/endpoints", &ep); err != nil {
		return edgeCounts{}, err
	}
	c := edgeCounts{agents: len(ag.Agents), endpoints: len(ep.Endpoints)}
	for _, x := range ep.Endpoints {
		c.ids = append(c.ids, x.ID)
	}
	return c, nil
}

// poll calls cond every 50ms until it returns true, an error, or timeout.
func poll(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("%s: not after %s: %w", what, timeout, last)
			}
			return fmt.Errorf("%s: not after %s", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// verify checks that a path answers 200 with the expected body, directly
// or through the edge, so that wrk measures real responses.
func (h *harness) verify(ctx context.Context, base, path string, viaPico bool, want []byte) error {
	req, err := http.NewRequestWithContext(ctx, "GET", base+path, nil)
	if err != nil {
		return err
	}
	if viaPico {
		req.Header.Set("x-pico-endpoint", "bench")
	}
	resp, err := h.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 2<<20))
	if err != nil {
		return fmt.Errorf("GET %s: %w", base+path, err)
	}
	if resp.StatusCode != 200 || !bytes.Equal(body, want) {
		return fmt.Errorf("GET %s (pico=%v): %s, %d-byte body (want 200 and %d bytes): %.200q", base+path, viaPico, resp.Status, len(body), len(want), body)
	}
	return nil
}

// cpuWatch is a process whose CPU is sampled around a wrk run.
type cpuWatch struct {
	role string
	p    *proc
}

// wrk runs wrk and the CPU accounting around it. Warm-up runs (measured
// false) raise no warnings.
func (h *harness) wrk(ctx context.Context, target, url string, conns int, d time.Duration, watch []cpuWatch, measured bool) (WrkRun, error) {
	threads := min(2, conns)
	args := []string{"-t" + strconv.Itoa(threads), "-c" + strconv.Itoa(conns),
		"-d" + strconv.Itoa(int(d/time.Second)) + "s", "--latency", "--timeout", "5s", "-s", h.wrkLua}
	if strings.HasSuffix(url, "/post") {
		args[len(args)-1] = h.wrkPost
	}
	if !strings.HasPrefix(url, "http://"+h.upAddr+"/") { // an edge, not the upstream itself
		args = append(args, "-H", "x-pico-endpoint: bench")
	}
	args = append(args, url)
	run := WrkRun{Target: target, URL: url, Threads: threads, Conns: conns,
		CPUSeconds: map[string]float64{}, CPUPer1kReq: map[string]float64{}}
	before := map[string]float64{}
	for _, w := range watch {
		before[w.role], _ = procCPU(w.p.pid())
	}
	resetPeaks(watch)
	host0, _ := hostBusy()
	start := time.Now()
	p, err := h.procs.start("wrk", true, "wrk", args...)
	if err != nil {
		return run, err
	}
	if err := p.wait(ctx, d+30*time.Second); err != nil {
		return run, err
	}
	wall := time.Since(start).Seconds()
	host1, _ := hostBusy()
	for _, w := range watch {
		after, err := procCPU(w.p.pid())
		if err != nil {
			return run, fmt.Errorf("%s CPU: %w (did it exit?)", w.role, err)
		}
		run.CPUSeconds[w.role] = math.Round((after-before[w.role])*1000) / 1000 // ticks are 10ms
	}
	run.CPUSeconds["wrk"] = math.Round(p.rusageCPU()*1e6) / 1e6
	run.PeakRSSKiB = readPeaks(watch)
	res, err := parseWrk(p.output())
	if err != nil {
		return run, fmt.Errorf("%w; wrk said:\n%s", err, p.output())
	}
	run.Result = res
	total := 0.0
	for role, s := range run.CPUSeconds {
		total += s
		if res.Requests > 0 {
			run.CPUPer1kReq[role] = s / float64(res.Requests) * 1000
		}
	}
	run.CoresBusy = total / wall
	run.HostCoresBusy = (host1 - host0) / wall
	run.OtherCores = max(0, run.HostCoresBusy-run.CoresBusy)
	if !measured {
		return run, nil
	}
	h.noisy("wrk %s -c%d %s", run.OtherCores, target, conns, url)
	if n := res.Errors(); n > 0 {
		h.warn("wrk %s -c%d %s: %d failed requests (non-2xx %d, connect %d, read %d, write %d, timeout %d) of %d: figures are suspect",
			target, conns, url, n, res.Non2xx, res.ErrConnect, res.ErrRead, res.ErrWrite, res.ErrTimeout, res.Requests)
	}
	return run, nil
}

// noiseLimit is the CPU other processes may use during a measured run
// before the run is flagged.
const noiseLimit = 0.15

// waitQuiet waits, up to --quiet-wait, until processes outside the
// benchmark use less than noiseLimit cores over half a second.
func (h *harness) waitQuiet(ctx context.Context, what string) {
	if h.opts.QuietWait <= 0 {
		return
	}
	deadline := time.Now().Add(h.opts.QuietWait)
	start := time.Now()
	for {
		other, err := h.otherLoad(ctx, 500*time.Millisecond)
		if err != nil || other <= noiseLimit {
			if waited := time.Since(start); waited > time.Second {
				h.logf("the host is quiet after %s; measuring %s", waited.Round(100*time.Millisecond), what)
			}
			return
		}
		if time.Now().After(deadline) {
			h.warn("%s: other processes kept %.2f cores busy for %s; measuring anyway", what, other, h.opts.QuietWait)
			return
		}
		if time.Since(start) < 600*time.Millisecond {
			h.logf("other processes use %.2f cores; waiting up to %s for quiet before %s", other, h.opts.QuietWait, what)
		}
	}
}

// otherLoad is the CPU, in cores, used over d by processes that are not
// the harness or its children.
func (h *harness) otherLoad(ctx context.Context, d time.Duration) (float64, error) {
	pids := []int{os.Getpid()}
	h.procs.mu.Lock()
	for _, p := range h.procs.list {
		if !p.exited() {
			pids = append(pids, p.pid())
		}
	}
	h.procs.mu.Unlock()
	ours := func() float64 {
		t := 0.0
		for _, pid := range pids {
			c, _ := procCPU(pid)
			t += c
		}
		return t
	}
	h0, err := hostBusy()
	if err != nil {
		return 0, err
	}
	o0 := ours()
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	h1, err := hostBusy()
	if err != nil {
		return 0, err
	}
	return max(0, (h1-h0)-(ours()-o0)) / time.Since(t0).Seconds(), nil
}

func (h *harness) noisy(format string, other float64, args ...any) {
	if other > noiseLimit {
		hint := ""
		if h.opts.Repeat == 1 {
			hint = "; consider --repeat 3"
		}
		h.warn(format+": other processes used %.2f cores meanwhile (noise%s)", append(args, other, hint)...)
	}
}

// pair runs direct and pico measurements of one path at one connection
// count --repeat times, interleaved, and returns the pair with the median
// ratio, and all ratios.
func (h *harness) pair(ctx context.Context, direct, pico, path string, conns int, watch []cpuWatch,
	metric func(WrkRun) float64) (WrkRun, WrkRun, []PairRatio, error) {
	type runs struct{ d, p WrkRun }
	var all []runs
	var ratios []PairRatio
	for i := 0; i < h.opts.Repeat; i++ {
		rep := ""
		if h.opts.Repeat > 1 {
			rep = fmt.Sprintf(" (repeat %d/%d)", i+1, h.opts.Repeat)
		}
		h.waitQuiet(ctx, fmt.Sprintf("%s at %d conns", path, conns))
		h.logf("%s, %d conns, %s direct then %s through pico%s", path, conns, h.opts.Duration, h.opts.Duration, rep)
		dr, err := h.wrk(ctx, "direct", direct+path, conns, h.opts.Duration, watch, true)
		if err != nil {
			return dr, dr, nil, err
		}
		pr, err := h.wrk(ctx, "pico", pico+path, conns, h.opts.Duration, watch, true)
		if err != nil {
			return dr, pr, nil, err
		}
		all = append(all, runs{dr, pr})
		ratios = append(ratios, PairRatio{Direct: metric(dr), Pico: metric(pr), RatioPct: pct(metric(pr), metric(dr))})
	}
	idx := make([]int, len(all))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmpFloat(ratios[a].RatioPct, ratios[b].RatioPct) })
	m := idx[(len(idx)-1)/2] // lower median for even counts
	return all[m].d, all[m].p, ratios, nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// startPico starts an edge and an agent serving endpoint "bench" from the
// upstream (plain HTTP/1.1), and waits until the edge has the endpoint.
func (h *harness) startPico(ctx context.Context, edgeName, agentName string, tlsDoor bool) (*edgeProc, *proc, error) {
	e, err := h.startEdge(ctx, edgeName, tlsDoor)
	if err != nil {
		return nil, nil, err
	}
	ag, err := h.procs.start(agentName, false, h.binary("pico-agent"), "http", "bench", h.upAddr,
		"--edge", e.agentAddr, "--ca", e.caFile(), "--log-format", "json")
	if err != nil {
		e.kill()
		return nil, nil, err
	}
	if err := poll(ctx, 30*time.Second, "endpoint bench on "+edgeName, func() (bool, error) {
		if ag.exited() {
			return false, fmt.Errorf("agent exited:\n%s", ag.tail(10))
		}
		c, err := h.counts(ctx, e)
		return err == nil && slices.Contains(c.ids, "bench"), err
	}); err != nil {
		e.kill()
		ag.kill()
		return nil, nil, err
	}
	return e, ag, nil
}

// runAB runs scenarios A and B against one edge and one agent process.
func (h *harness) runAB(ctx context.Context) error {
	if err := h.startUpstream(ctx); err != nil {
		return err
	}
	h.logf("upstream on %s; starting edge and agent", h.upAddr)
	e, ag, err := h.startPico(ctx, "edge", "agent", false)
	if err != nil {
		return err
	}
	direct := "http://" + h.upAddr
	pico := "http://" + e.proxy
	for _, v := range []struct {
		base string
		pico bool
	}{{direct, false}, {pico, true}} {
		if err := h.verify(ctx, v.base, "/small", v.pico, smallBody); err != nil {
			return err
		}
		if err := h.verify(ctx, v.base, "/1m", v.pico, bigBody); err != nil {
			return err
		}
	}
	watch := []cpuWatch{{"edge", e.proc}, {"agent", ag}, {"upstream", h.upstream}}
	warm := func(path string, conns int) error {
		h.logf("warm-up %s, %d conns, %s each direct and through pico", path, conns, h.opts.Warmup)
		for _, t := range []struct{ name, base string }{{"direct", direct}, {"pico", pico}} {
			if _, err := h.wrk(ctx, t.name, t.base+path, conns, h.opts.Warmup, watch, false); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
		}
		return nil
	}
	rps := func(r WrkRun) float64 { return r.Result.RequestsPerSec }
	mibps := func(r WrkRun) float64 { return r.Result.TransferBPS / (1 << 20) }

	if h.opts.Scenarios["a"] {
		if err := warm("/small", 16); err != nil {
			return err
		}
		for _, conns := range h.opts.SmallConns {
			dr, pr, pairs, err := h.pair(ctx, direct, pico, "/small", conns, watch, rps)
			if err != nil {
				return err
			}
			h.res.Small = append(h.res.Small, SmallRow{
				Path: "/small", Conns: conns, Direct: dr, Pico: pr,
				ReqRatioPct:   pct(rps(pr), rps(dr)),
				P50RatioTimes: ratio(pr.Result.P50Us, dr.Result.P50Us),
				P99RatioTimes: ratio(pr.Result.P99Us, dr.Result.P99Us),
				Pairs:         pairs,
			})
		}
		// Small POSTs, at 16 and 64 connections (or the first count).
		postConns := slices.DeleteFunc(slices.Clone(h.opts.SmallConns), func(c int) bool { return c != 16 && c != 64 })
		if len(postConns) == 0 {
			postConns = h.opts.SmallConns[:1]
		}
		if err := warm("/post", postConns[0]); err != nil {
			return err
		}
		for _, conns := range postConns {
			dr, pr, pairs, err := h.pair(ctx, direct, pico, "/post", conns, watch, rps)
			if err != nil {
				return err
			}
			h.res.Small = append(h.res.Small, SmallRow{
				Path: "/post", Conns: conns, Direct: dr, Pico: pr,
				ReqRatioPct:   pct(rps(pr), rps(dr)),
				P50RatioTimes: ratio(pr.Result.P50Us, dr.Result.P50Us),
				P99RatioTimes: ratio(pr.Result.P99Us, dr.Result.P99Us),
				Pairs:         pairs,
			})
		}
	}
	if h.opts.Scenarios["b"] && ctx.Err() == nil {
		if err := warm("/1m", 4); err != nil {
			return err
		}
		dr, pr, pairs, err := h.pair(ctx, direct, pico, "/1m", 4, watch, mibps)
		if err != nil {
			return err
		}
		b := &BulkRow{Conns: 4, Direct: dr, Pico: pr,
			DirectMiBps: mibps(dr), PicoMiBps: mibps(pr),
			CPUPerGiB: map[string]float64{}, Pairs: pairs,
		}
		b.RatioPct = pct(b.PicoMiBps, b.DirectMiBps)
		if gib := pr.Result.TransferBPS * pr.Result.Seconds / (1 << 30); gib > 0 {
			for role, s := range pr.CPUSeconds {
				b.CPUPerGiB[role] = s / gib
			}
		}
		h.res.Bulk = b
	}
	// Each run resets VmHWM (peak.go): the peak of A and B is the largest
	// of their runs' peaks.
	h.res.PeakRSSKiB = map[string]int64{}
	runs := []WrkRun{}
	for _, row := range h.res.Small {
		runs = append(runs, row.Pico)
	}
	if h.res.Bulk != nil {
		runs = append(runs, h.res.Bulk.Pico)
	}
	for _, r := range runs {
		for role, k := range r.PeakRSSKiB {
			h.res.PeakRSSKiB[role] = max(h.res.PeakRSSKiB[role], k)
		}
	}
	defer e.kill()
	if h.res.Bulk != nil && h.opts.AgentConns > 1 && ctx.Err() == nil {
		if err := h.stopAgent(ctx, e, ag, "bench"); err != nil {
			return err
		}
		return h.runBLinks(ctx, e, direct, pico)
	}
	ag.kill()
	return nil
}

// runC measures a plain quic-go one-stream copy between two processes,
// --repeat times; the median counts.
func (h *harness) runC(ctx context.Context) error {
	var all []*QUICCopy
	var rates []float64
	for i := 0; i < h.opts.Repeat; i++ {
		h.waitQuiet(ctx, "the quic-go copy")
		h.logf("C: quic-go one-stream copy for %s (%d/%d)", h.opts.Duration, i+1, h.opts.Repeat)
		c, err := h.quicCopy(ctx, i)
		if err != nil {
			return err
		}
		h.noisy("quic-go copy", c.OtherCores)
		all = append(all, c)
		rates = append(rates, c.MiBps)
	}
	med := median(rates)
	for _, c := range all {
		if c.MiBps == med {
			c.AllMiBps = rates
			h.res.QUICCopy = c
			break
		}
	}
	return nil
}

func (h *harness) quicCopy(ctx context.Context, i int) (*QUICCopy, error) {
	ca := filepath.Join(h.tmp, fmt.Sprintf("copy-ca-%d.pem", i))
	sink, err := h.procs.start("quic-sink", true, h.binary("pico-bench"), "quic-sink",
		"--addr", "127.0.0.1:0", "--ca-out", ca, "--timeout", (h.opts.Duration + 2*time.Minute).String())
	if err != nil {
		return nil, err
	}
	defer sink.kill()
	var ready sinkReady
	if _, err := sink.waitLine(ctx, 20*time.Second, jsonLine(&ready, func() bool { return ready.Addr != "" })); err != nil {
		return nil, err
	}
	host0, _ := hostBusy()
	start := time.Now()
	src, err := h.procs.start("quic-source", true, h.binary("pico-bench"), "quic-source",
		"--addr", ready.Addr, "--ca", ca, "--duration", h.opts.Duration.String())
	if err != nil {
		return nil, err
	}
	if err := src.wait(ctx, h.opts.Duration+90*time.Second); err != nil {
		return nil, err
	}
	if err := sink.wait(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	wall := time.Since(start).Seconds()
	host1, _ := hostBusy()
	var sr SourceResult
	if err := json.Unmarshal([]byte(strings.TrimSpace(src.output())), &sr); err != nil {
		return nil, fmt.Errorf("quic-source output %q: %w", src.output(), err)
	}
	if sr.Sink.Seconds <= 0 || sr.Sink.Bytes <= 0 {
		return nil, fmt.Errorf("quic copy moved nothing: %+v", sr)
	}
	c := &QUICCopy{
		Bytes: sr.Sink.Bytes, Seconds: sr.Sink.Seconds,
		MiBps:     float64(sr.Sink.Bytes) / sr.Sink.Seconds / (1 << 20),
		SourceCPU: src.rusageCPU(), SinkCPU: sink.rusageCPU(), SendSeconds: sr.SendSeconds,
		PacketsSent: sr.PacketsSent, PacketsLost: sr.PacketsLost, SRTTMs: sr.SRTTMs, CwndBytes: sr.CwndBytes,
	}
	gib := float64(c.Bytes) / (1 << 30)
	c.SourceCPUPerGiB, c.SinkCPUPerGiB = c.SourceCPU/gib, c.SinkCPU/gib
	// The wall time includes the processes' start-up and handshake; the
	// noise estimate is a little generous to other processes.
	c.OtherCores = max(0, (host1-host0-c.SourceCPU-c.SinkCPU)/wall)
	return c, nil
}

// settleRSS samples the RSS of p every interval, n times, and returns the
// samples; the last one is the figure used.
func (h *harness) settleRSS(ctx context.Context, p *proc) ([]int64, error) {
	var out []int64
	for i := 0; i < h.opts.SettleSamples; i++ {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(h.opts.Settle):
		}
		rss, _, err := procMem(p.pid())
		if err != nil {
			return nil, err
		}
		out = append(out, rss)
	}
	return out, nil
}

// idlePhase is the edge's RSS before and after each step of connecting
// idle agents.
type idlePhase struct {
	before      int64
	after       []int64   // last settle sample after each step
	samples     [][]int64 // all settle samples after each step
	connectSecs float64   // all steps, settles excluded
	idleCPUPct  float64   // edge CPU during the last settle
}

// idlePhase starts a fresh edge, measures its RSS, then for each step
// connects steps[i] more agents serving perLink endpoints each, waits until
// the edge reports them all, and measures again.
func (h *harness) idlePhase(ctx context.Context, name string, steps []int, perLink int) (idlePhase, error) {
	var ph idlePhase
	e, err := h.startEdge(ctx, name, false)
	if err != nil {
		return ph, err
	}
	defer e.kill()
	s, err := h.settleRSS(ctx, e.proc)
	if err != nil {
		return ph, err
	}
	ph.before = s[len(s)-1]
	up := "127.0.0.1:9"
	if h.upAddr != "" {
		up = h.upAddr
	}
	links := 0
	for i, n := range steps {
		links += n
		start := time.Now()
		ia, err := h.procs.start("idle-agents", false, h.binary("pico-bench"), "idle-agents",
			"--n", strconv.Itoa(n), "--endpoints", strconv.Itoa(perLink), "--edge", e.agentAddr,
			"--ca", e.caFile(), "--upstream", up, "--prefix", fmt.Sprintf("idle%d", i))
		if err != nil {
			return ph, err
		}
		defer ia.kill()
		var ready IdleReady
		if _, err := ia.waitLine(ctx, 3*time.Minute, jsonLine(&ready, func() bool { return ready.Agents > 0 })); err != nil {
			return ph, err
		}
		if err := poll(ctx, time.Minute, fmt.Sprintf("%d agents and %d endpoints on %s", links, links*perLink, name), func() (bool, error) {
			c, err := h.counts(ctx, e)
			return err == nil && c.agents == links && c.endpoints == links*perLink, err
		}); err != nil {
			return ph, err
		}
		ph.connectSecs += time.Since(start).Seconds()
		cpu0, _ := procCPU(e.pid())
		t0 := time.Now()
		s, err := h.settleRSS(ctx, e.proc)
		if err != nil {
			return ph, err
		}
		cpu1, _ := procCPU(e.pid())
		ph.idleCPUPct = (cpu1 - cpu0) / time.Since(t0).Seconds() * 100
		ph.samples = append(ph.samples, s)
		ph.after = append(ph.after, s[len(s)-1])
		// The links must all still be there: a reconnect storm would inflate RSS.
		if c, err := h.counts(ctx, e); err != nil || c.agents != links {
			return ph, fmt.Errorf("%s: %d of %d agents still connected after the settle (err %v)", name, c.agents, links, err)
		}
	}
	return ph, nil
}

// runD measures the edge's memory per idle agent link and per endpoint.
func (h *harness) runD(ctx context.Context) error {
	k := h.opts.IdleAgents
	steps := []int{k}
	if k >= 2 {
		steps = []int{k / 2, k - k/2}
	}
	h.logf("D: edge RSS with %d idle agent links, connected in steps of %v", k, steps)
	ph, err := h.idlePhase(ctx, "edge-idle-links", steps, 1)
	if err != nil {
		return err
	}
	last := ph.after[len(ph.after)-1]
	r := &IdleResult{
		Links: k, RSSBeforeKiB: ph.before, RSSAfterKiB: last, RSSSamplesKiB: ph.samples[len(ph.samples)-1],
		PerLinkKiB:     float64(last-ph.before) / float64(k),
		ConnectSeconds: ph.connectSecs, IdleCPUPct: ph.idleCPUPct,
	}
	if len(steps) == 2 {
		r.RSSHalfKiB = ph.after[0]
		r.SlopeKiB = float64(last-ph.after[0]) / float64(steps[1])
	}
	h.res.Idle = r
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// Endpoints: as few links as the edge's per-agent limit (100) allows.
	links := (k + 99) / 100
	per := (k + links - 1) / links
	h.logf("D: edge RSS with %d links serving %d endpoints each", links, per)
	ep, err := h.idlePhase(ctx, "edge-idle-endpoints", []int{links}, per)
	if err != nil {
		return err
	}
	n := links * per
	after := ep.after[0]
	r.EPLinks, r.EPPerLink = links, per
	r.EPRSSBeforeKiB, r.EPRSSAfterKiB = ep.before, after
	r.EPConnectSecond = ep.connectSecs
	r.PerEndpointKiB = float64(after-ep.before) / float64(n)
	if n > links {
		r.MarginalEPKiB = (float64(after-ep.before) - float64(links)*r.PerLinkKiB) / float64(n-links)
	}
	return nil
}

func pct(a, b float64) float64 {
	if b <= 0 || math.IsNaN(a) || math.IsInf(a, 0) {
		return 0
	}
	return a / b * 100
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func readInt(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// writeJSON writes the results to path and, with history, a timestamped
// copy beside it.
func writeJSON(path string, history bool, r *Results) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return err
	}
	if history {
		commit := r.Host.GitCommit
		if len(commit) > 12 {
			commit = commit[:12]
		}
		if commit == "" {
			commit = "nogit"
		}
		if r.Host.GitDirty {
			commit += "-dirty"
		}
		name := r.StartedAt.Format("20060102-150405") + "-" + commit + ".json"
		return os.WriteFile(filepath.Join(filepath.Dir(path), name), b, 0o644)
	}
	return nil
}
