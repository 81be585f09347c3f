package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Scenario G: one large POST (1 GiB by default) through the edge and
// straight to the upstream, which reads the body to the end and answers
// its length.

// uploadHandler is the upstream's /upload: it discards the body and
// answers its length in decimal.
func uploadHandler(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	buf := make([]byte, 256<<10)
	n, err := io.CopyBuffer(io.Discard, r.Body, buf)
	if err != nil {
		http.Error(w, fmt.Sprintf("read body after %d bytes: %v", n, err), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "%d\n", n)
}

// UploadResult is what the upload subcommand prints.
type UploadResult struct {
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"` // from the request's start to the answer's end
	MiBps   float64 `json:"mib_per_sec"`
}

// patternReader yields n bytes of a repeating pattern without allocating.
type patternReader struct {
	buf  []byte
	left int64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(b) && p.left > 0 {
		k := copy(b[n:min(len(b), n+int(min(p.left, int64(len(p.buf)))))], p.buf)
		n += k
		p.left -= int64(k)
	}
	return n, nil
}

// runUpload POSTs --bytes to --url over HTTP/1.1 and checks that the
// answer is the length.
func runUpload(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("upload", flag.ContinueOnError)
	target := fs.String("url", "", "http URL to POST to")
	size := fs.Int64("bytes", 1<<30, "body length")
	header := fs.String("header", "", `extra request header, "Name: value"`)
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !strings.HasPrefix(*target, "http://") || *size <= 0 {
		return errors.New("want an http --url and a positive --bytes")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	pat := make([]byte, 64<<10)
	for i := range pat {
		pat[i] = byte('a' + i%26)
	}
	req, err := http.NewRequestWithContext(ctx, "POST", *target, &patternReader{buf: pat, left: *size})
	if err != nil {
		return err
	}
	req.ContentLength = *size
	req.Header.Set("Content-Type", "application/octet-stream")
	if k, v, ok := strings.Cut(*header, ":"); ok {
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	tr := &http.Transport{WriteBufferSize: 256 << 10, ReadBufferSize: 64 << 10, DisableCompression: true}
	defer tr.CloseIdleConnections()
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", *target, err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	secs := time.Since(start).Seconds()
	if err != nil {
		return fmt.Errorf("POST %s: answer: %w", *target, err)
	}
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != strconv.FormatInt(*size, 10) {
		return fmt.Errorf("POST %s: %s %.200q (want 200 and %d)", *target, resp.Status, body, *size)
	}
	printJSON(UploadResult{Bytes: *size, Seconds: secs, MiBps: float64(*size) / secs / (1 << 20)})
	return nil
}

// UploadRun is one upload of scenario G and the CPU the processes involved
// spent on it.
type UploadRun struct {
	Target string       `json:"target"` // "direct" or "pico"
	Result UploadResult `json:"result"`
	// CPUSeconds per process role (edge, agent, upstream, client).
	CPUSeconds map[string]float64 `json:"cpu_seconds"`
	// CPUPerGiB is CPUSeconds per GiB uploaded.
	CPUPerGiB  map[string]float64 `json:"cpu_seconds_per_gib"`
	PeakRSSKiB map[string]int64   `json:"peak_rss_kib,omitempty"`
	OtherCores float64            `json:"other_cores"`
}

// UploadRow is scenario G.
type UploadRow struct {
	Bytes    int64       `json:"bytes"`
	Direct   UploadRun   `json:"direct"`
	Pico     UploadRun   `json:"pico"`
	RatioPct float64     `json:"mib_per_sec_ratio_pct"`
	Pairs    []PairRatio `json:"pairs"`
}

// runG uploads --upload-mib directly and through an edge, --repeat times
// interleaved, and keeps the pair with the median ratio.
func (h *harness) runG(ctx context.Context) error {
	if err := h.startUpstream(ctx); err != nil {
		return err
	}
	e, ag, err := h.startPico(ctx, "edge-upload", "agent-upload", false)
	if err != nil {
		return err
	}
	defer e.kill()
	defer ag.kill()
	watch := []cpuWatch{{"edge", e.proc}, {"agent", ag}, {"upstream", h.upstream}}
	direct, pico := "http://"+h.upAddr+"/upload", "http://"+e.proxy+"/upload"
	// Warm-up: a small upload each way also checks both paths answer.
	for _, u := range []string{direct, pico} {
		if _, err := h.upload(ctx, "warm-up", u, 16<<20, watch); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	var all [][2]UploadRun
	var ratios []PairRatio
	for i := 0; i < h.opts.Repeat; i++ {
		what := fmt.Sprintf("a %d MiB upload", h.opts.UploadBytes>>20)
		h.waitQuiet(ctx, what)
		h.logf("G: %s, direct then through pico (%d/%d)", what, i+1, h.opts.Repeat)
		dr, err := h.upload(ctx, "direct", direct, h.opts.UploadBytes, watch)
		if err != nil {
			return err
		}
		pr, err := h.upload(ctx, "pico", pico, h.opts.UploadBytes, watch)
		if err != nil {
			return err
		}
		all = append(all, [2]UploadRun{dr, pr})
		ratios = append(ratios, PairRatio{Direct: dr.Result.MiBps, Pico: pr.Result.MiBps, RatioPct: pct(pr.Result.MiBps, dr.Result.MiBps)})
	}
	m := medianIndex(ratios)
	h.res.Upload = &UploadRow{Bytes: h.opts.UploadBytes, Direct: all[m][0], Pico: all[m][1],
		RatioPct: ratios[m].RatioPct, Pairs: ratios}
	return nil
}

// medianIndex is the index of the pair with the (lower) median ratio.
func medianIndex(ratios []PairRatio) int {
	v := make([]float64, len(ratios))
	for i, r := range ratios {
		v[i] = r.RatioPct
	}
	med := median(v)
	for i, r := range ratios {
		if r.RatioPct == med {
			return i
		}
	}
	return 0
}

// upload runs the upload subcommand once, with the CPU accounting around it.
func (h *harness) upload(ctx context.Context, target, url string, size int64, watch []cpuWatch) (UploadRun, error) {
	run := UploadRun{Target: target, CPUSeconds: map[string]float64{}, CPUPerGiB: map[string]float64{}}
	args := []string{"upload", "--url", url, "--bytes", strconv.FormatInt(size, 10)}
	if target != "direct" {
		args = append(args, "--header", "x-pico-endpoint: bench")
	}
	m := h.startMeasure(watch)
	p, err := h.procs.start("upload", true, h.binary("pico-bench"), args...)
	if err != nil {
		return run, err
	}
	if err := p.wait(ctx, 10*time.Minute); err != nil {
		return run, err
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(p.output())), &run.Result); err != nil {
		return run, fmt.Errorf("upload output %q: %w", p.output(), err)
	}
	run.CPUSeconds, run.PeakRSSKiB, run.OtherCores, err = m.end(p)
	if err != nil {
		return run, err
	}
	gib := float64(size) / (1 << 30)
	for role, s := range run.CPUSeconds {
		run.CPUPerGiB[role] = s / gib
	}
	if target != "warm-up" {
		h.noisy("upload %s", run.OtherCores, target)
	}
	return run, nil
}

// measure is the CPU and peak-RSS accounting around one client process:
// startMeasure before starting it, end after it exited.
type measure struct {
	watch  []cpuWatch
	before map[string]float64
	host0  float64
	start  time.Time
}

func (h *harness) startMeasure(watch []cpuWatch) *measure {
	m := &measure{watch: watch, before: map[string]float64{}}
	resetPeaks(watch)
	for _, w := range watch {
		m.before[w.role], _ = procCPU(w.p.pid())
	}
	m.host0, _ = hostBusy()
	m.start = time.Now()
	return m
}

// end returns the CPU seconds of each watched role and of the client
// ("client"), the peak RSS of the Pico processes, and the cores other
// processes used meanwhile.
func (m *measure) end(client *proc) (map[string]float64, map[string]int64, float64, error) {
	wall := time.Since(m.start).Seconds()
	host1, _ := hostBusy()
	cpu := map[string]float64{}
	total := 0.0
	for _, w := range m.watch {
		after, err := procCPU(w.p.pid())
		if err != nil {
			return nil, nil, 0, fmt.Errorf("%s CPU: %w (did it exit?)", w.role, err)
		}
		cpu[w.role] = math.Round((after-m.before[w.role])*1000) / 1000
		total += cpu[w.role]
	}
	if client != nil {
		cpu["client"] = math.Round(client.rusageCPU()*1e6) / 1e6
		total += cpu["client"]
	}
	return cpu, readPeaks(m.watch), max(0, (host1-m.host0-total)/wall), nil
}
