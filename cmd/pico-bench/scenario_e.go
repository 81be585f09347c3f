package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/pico-edge/pico/certs"
)

// Scenario E's load shape: requests in flight on each connection, and the
// connections of the warm-up (the measured counts are Options.SmallConns).
const (
	eConns   = 16
	eStreams = 10
	// eMaxInFlight is the edge's limit of in-flight requests per endpoint
	// (docs/limits.md; beyond it the edge answers 503 at once): at high
	// connection counts E opens fewer streams per connection to stay at it.
	eMaxInFlight = 256
)

// eStreamsAt is the streams per connection of E at conns connections.
func eStreamsAt(conns int) int { return max(1, min(eStreams, eMaxInFlight/conns)) }

// eTarget is one side of a scenario E pair.
type eTarget struct {
	name string // "direct" or "pico"
	url  string // https://host:port/small
	ca   string // CA file the h3load client trusts
}

// runE measures small requests over HTTP/2 (h2load) and HTTP/3 (h3load)
// through an edge's HTTPS front door, each against the upstream's own TLS
// listener speaking the same protocol.
func (h *harness) runE(ctx context.Context) error {
	if err := h.startUpstream(ctx); err != nil {
		return err
	}
	if h.upTLS == "" || h.upH3 == "" {
		return fmt.Errorf("the upstream has no TLS listeners")
	}
	h.logf("E: upstream HTTPS on %s, HTTP/3 on %s; starting an edge with its HTTPS door, and an agent", h.upTLS, h.upH3)
	e, ag, err := h.startPico(ctx, "edge-tls", "agent-tls", true)
	if err != nil {
		return err
	}
	defer e.kill()
	defer ag.kill()
	h.logf("E: edge HTTPS door on %s, HTTP/3 on %s", e.tlsAddr, e.h3Addr)

	h2Client := "h2load"
	if _, err := exec.LookPath("h2load"); err != nil {
		h2Client = "h3load"
		note := "h2load not found in PATH (Debian/Ubuntu: apt-get install nghttp2-client): " +
			"the HTTP/2 row is measured with pico-bench h3load --proto h2 (Go net/http client) instead"
		h.logf("E: %s", note)
		h.res.TLSNotes = append(h.res.TLSNotes, note)
	}

	type side struct{ direct, pico eTarget }
	protos := []struct {
		proto, client string
		s             side
	}{
		{"h2", h2Client, side{
			eTarget{"direct", "https://" + h.upTLS + "/small", h.upCA},
			eTarget{"pico", "https://" + e.tlsAddr + "/small", e.caFile()},
		}},
		{"h3", "h3load", side{
			eTarget{"direct", "https://" + h.upH3 + "/small", h.upCA},
			eTarget{"pico", "https://" + e.h3Addr + "/small", e.caFile()},
		}},
	}
	for _, p := range protos {
		for _, t := range []eTarget{p.s.direct, p.s.pico} {
			if err := h.verifyTLS(ctx, p.proto, t); err != nil {
				return err
			}
		}
	}
	watch := []cpuWatch{{"edge", e.proc}, {"agent", ag}, {"upstream", h.upstream}}
	for _, p := range protos {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h.logf("E: warm-up %s (%s), %s each direct and through pico", p.proto, p.client, h.opts.Warmup)
		for _, t := range []eTarget{p.s.direct, p.s.pico} {
			if _, err := h.load(ctx, p.proto, p.client, t, eConns, h.opts.Warmup, watch, false); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
		}
		for _, conns := range h.opts.SmallConns {
			if err := h.runERow(ctx, p.proto, p.client, p.s.direct, p.s.pico, conns, watch); err != nil {
				return err
			}
		}
	}
	return nil
}

// runERow measures one protocol at one connection count, --repeat times
// interleaved, and records the pair with the median ratio.
func (h *harness) runERow(ctx context.Context, proto, client string, direct, pico eTarget, conns int, watch []cpuWatch) error {
	rps := func(r LoadRun) float64 { return r.Result.RequestsPerSec }
	type runs struct{ d, p LoadRun }
	var all []runs
	var ratios []PairRatio
	for i := 0; i < h.opts.Repeat; i++ {
		what := fmt.Sprintf("%s small requests, %d conns x %d streams", proto, conns, eStreamsAt(conns))
		h.waitQuiet(ctx, what)
		h.logf("E: %s (%s), %s direct then through pico (%d/%d)", what, client, h.opts.Duration, i+1, h.opts.Repeat)
		dr, err := h.load(ctx, proto, client, direct, conns, h.opts.Duration, watch, true)
		if err != nil {
			return err
		}
		pr, err := h.load(ctx, proto, client, pico, conns, h.opts.Duration, watch, true)
		if err != nil {
			return err
		}
		all = append(all, runs{dr, pr})
		ratios = append(ratios, PairRatio{Direct: rps(dr), Pico: rps(pr), RatioPct: pct(rps(pr), rps(dr))})
	}
	idx := make([]int, len(all))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmpFloat(ratios[a].RatioPct, ratios[b].RatioPct) })
	m := all[idx[(len(idx)-1)/2]]
	h.res.TLS = append(h.res.TLS, TLSRow{
		Proto: proto, Client: m.d.Result.Client, Conns: conns, Streams: eStreamsAt(conns),
		Direct: m.d, Pico: m.p,
		ReqRatioPct:   pct(rps(m.p), rps(m.d)),
		P50RatioTimes: ratio(m.p.Result.P50Us, m.d.Result.P50Us),
		P99RatioTimes: ratio(m.p.Result.P99Us, m.d.Result.P99Us),
		Pairs:         ratios,
	})
	return nil
}

// verifyTLS checks with Go's clients that a target answers /small with 200
// and the expected body over the protocol, with a certificate its CA
// vouches for.
func (h *harness) verifyTLS(ctx context.Context, proto string, t eTarget) error {
	pool, err := certs.LoadPool(t.ca)
	if err != nil {
		return err
	}
	var rt http.RoundTripper
	want := "HTTP/2.0"
	switch proto {
	case "h2":
		p := new(http.Protocols)
		p.SetHTTP2(true)
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, Protocols: p}
		defer tr.CloseIdleConnections()
		rt = tr
	case "h3":
		tr := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		defer tr.Close()
		rt, want = tr, "HTTP/3.0"
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", t.url, nil)
	if err != nil {
		return err
	}
	if t.name == "pico" {
		req.Header.Set("x-pico-endpoint", "bench")
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("%s GET %s: %w", proto, t.url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s GET %s: %w", proto, t.url, err)
	}
	if resp.StatusCode != 200 || resp.Proto != want || !bytes.Equal(body, smallBody) {
		return fmt.Errorf("%s GET %s: %s %s, %d-byte body (want %s 200 and %d bytes): %.200q",
			proto, t.url, resp.Proto, resp.Status, len(body), want, len(smallBody), body)
	}
	return nil
}

// load runs one scenario E load client and the CPU accounting around it.
// Warm-up runs (measured false) raise no warnings.
func (h *harness) load(ctx context.Context, proto, client string, t eTarget, conns int, d time.Duration, watch []cpuWatch, measured bool) (LoadRun, error) {
	run := LoadRun{Target: t.name, URL: t.url, CPUSeconds: map[string]float64{}, CPUPer1kReq: map[string]float64{}}
	var name string
	var args []string
	logFile := ""
	if client == "h2load" {
		logFile = filepath.Join(h.tmp, "h2load.log")
		os.Remove(logFile)
		name = "h2load"
		args = []string{"-t" + strconv.Itoa(min(2, conns)), "-c" + strconv.Itoa(conns), "-m" + strconv.Itoa(eStreamsAt(conns)),
			"-D", strconv.Itoa(int(d / time.Second)), "--log-file", logFile}
		if t.name == "pico" {
			args = append(args, "-H", "x-pico-endpoint: bench")
		}
		args = append(args, t.url)
	} else {
		name = h.binary("pico-bench")
		args = []string{"h3load", "--proto", proto, "--url", t.url, "--ca", t.ca,
			"--conns", strconv.Itoa(conns), "--streams", strconv.Itoa(eStreamsAt(conns)),
			"--duration", d.String(), "--expect-bytes", strconv.Itoa(len(smallBody))}
		if t.name == "pico" {
			args = append(args, "--header", "x-pico-endpoint: bench")
		}
	}
	before := map[string]float64{}
	for _, w := range watch {
		before[w.role], _ = procCPU(w.p.pid())
	}
	resetPeaks(watch)
	host0, _ := hostBusy()
	start := time.Now()
	p, err := h.procs.start(filepath.Base(name), true, name, args...)
	if err != nil {
		return run, err
	}
	err = p.wait(ctx, d+60*time.Second)
	if errors.Is(err, errStillRunning) && client == "h2load" {
		// h2load now and then never ends a thread's clients after -D on a
		// busy machine; one more try, measured the same way.
		h.warn("%v; running it once more", err)
		for _, w := range watch {
			before[w.role], _ = procCPU(w.p.pid())
		}
		resetPeaks(watch)
		host0, _ = hostBusy()
		start = time.Now()
		if p, err = h.procs.start(filepath.Base(name), true, name, args...); err != nil {
			return run, err
		}
		err = p.wait(ctx, d+60*time.Second)
	}
	if err != nil {
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
	run.CPUSeconds["client"] = math.Round(p.rusageCPU()*1e6) / 1e6
	run.PeakRSSKiB = readPeaks(watch)
	var res LoadResult
	if client == "h2load" {
		f, err := os.Open(logFile)
		if err != nil {
			return run, fmt.Errorf("h2load log: %w; h2load said:\n%s", err, p.output())
		}
		res, err = parseH2load(p.output(), f)
		f.Close()
		os.Remove(logFile)
		if err != nil {
			return run, fmt.Errorf("%w; h2load said:\n%s", err, p.output())
		}
		res.Conns, res.Streams = conns, eStreamsAt(conns)
	} else if err := json.Unmarshal([]byte(strings.TrimSpace(p.output())), &res); err != nil {
		return run, fmt.Errorf("h3load output %q: %w", p.output(), err)
	}
	if res.Requests <= 0 {
		return run, fmt.Errorf("%s %s %s: no successful requests (%d errors; first: %s)", client, t.name, t.url, res.Errors, res.FirstError)
	}
	run.Result = res
	total := 0.0
	for role, s := range run.CPUSeconds {
		total += s
		run.CPUPer1kReq[role] = s / float64(res.Requests) * 1000
	}
	run.CoresBusy = total / wall
	run.HostCoresBusy = (host1 - host0) / wall
	run.OtherCores = max(0, run.HostCoresBusy-run.CoresBusy)
	if !measured {
		return run, nil
	}
	h.noisy("%s %s %s", run.OtherCores, client, t.name, t.url)
	if res.Errors > 0 {
		h.warn("%s %s %s: %d failed requests of %d (first: %s): figures are suspect",
			client, t.name, t.url, res.Errors, res.Requests+res.Errors, orDash(res.FirstError))
	}
	return run, nil
}
