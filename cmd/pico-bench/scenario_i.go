package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Scenario I: WebSocket echo over HTTP/1.1, directly against the
// upstream's /ws and through the edge: each connection sends a message and
// waits for its echo, over and over.

// wsEchoHandler is the upstream's /ws: it echoes every message.
func wsEchoHandler(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept answered the client
	}
	defer c.CloseNow()
	ctx := r.Context()
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return
		}
	}
}

// wsSize is the message size of scenario I.
const wsSize = 64

// runWSLoad is scenario I's client: --conns WebSocket connections to
// --url, each echoing --size-byte binary messages for --duration. It
// prints a LoadResult.
func runWSLoad(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsload", flag.ContinueOnError)
	target := fs.String("url", "", "ws URL")
	conns := fs.Int("conns", 1, "connections")
	size := fs.Int("size", wsSize, "message size")
	duration := fs.Duration("duration", 10*time.Second, "run time, after every connection is up")
	header := fs.String("header", "", `extra request header, "Name: value"`)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !strings.HasPrefix(*target, "ws://") || *conns < 1 || *size < 1 || *size > 1<<20 || *duration <= 0 {
		return errors.New("want a ws:// --url and positive --conns, --size (at most 1 MiB) and --duration")
	}
	ctx, cancel := context.WithTimeout(ctx, *duration+2*time.Minute)
	defer cancel()
	hdr := http.Header{}
	if k, v, ok := strings.Cut(*header, ":"); ok {
		hdr.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	msg := make([]byte, *size)
	for i := range msg {
		msg[i] = byte('a' + i%26)
	}
	// Connect every client first and echo one message: the handshakes are
	// not measured.
	cs := make([]*websocket.Conn, *conns)
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.CloseNow()
			}
		}
	}()
	round := func(c *websocket.Conn) error {
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			return err
		}
		_, back, err := c.Read(ctx)
		if err != nil {
			return err
		}
		if !bytes.Equal(back, msg) {
			return errors.New("the echo differs from the message")
		}
		return nil
	}
	for i := range cs {
		c, _, err := websocket.Dial(ctx, *target, &websocket.DialOptions{HTTPHeader: hdr})
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		cs[i] = c
		if err := round(c); err != nil {
			return fmt.Errorf("connection %d: first echo: %w", i, err)
		}
	}
	deadline := time.Now().Add(*duration)
	lats := make([][]float64, len(cs))
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			l := make([]float64, 0, 1<<14)
			for {
				t0 := time.Now()
				if !t0.Before(deadline) {
					break
				}
				if err := round(c); err != nil {
					errs[i] = err
					break
				}
				t1 := time.Now()
				if t1.After(deadline) {
					break
				}
				l = append(l, float64(t1.Sub(t0).Nanoseconds())/1e3)
			}
			lats[i] = l
		})
	}
	wg.Wait()
	res := LoadResult{Client: "pico-bench wsload", Proto: "ws", Conns: *conns, Streams: 1, Seconds: duration.Seconds()}
	var all []float64
	for i := range cs {
		all = append(all, lats[i]...)
		if errs[i] != nil {
			res.Errors++
			if res.FirstError == "" {
				res.FirstError = errs[i].Error()
			}
		}
	}
	res.Requests = int64(len(all))
	res.RequestsPerSec = float64(res.Requests) / res.Seconds
	res.setLatencies(all)
	for _, c := range cs {
		c.Close(websocket.StatusNormalClosure, "")
	}
	printJSON(res)
	return nil
}

// WSRow is scenario I at one connection count: messages echoed per second.
type WSRow struct {
	Conns         int         `json:"conns"`
	MessageBytes  int         `json:"message_bytes"`
	Direct        LoadRun     `json:"direct"`
	Pico          LoadRun     `json:"pico"`
	RatioPct      float64     `json:"msgs_per_sec_ratio_pct"`
	P50RatioTimes float64     `json:"p50_ratio_times"`
	P99RatioTimes float64     `json:"p99_ratio_times"`
	Pairs         []PairRatio `json:"pairs"`
}

// runI measures WebSocket echo at 1, 16 and 64 connections.
func (h *harness) runI(ctx context.Context) error {
	if err := h.startUpstream(ctx); err != nil {
		return err
	}
	e, ag, err := h.startPico(ctx, "edge-ws", "agent-ws", false)
	if err != nil {
		return err
	}
	defer e.kill()
	defer ag.kill()
	watch := []cpuWatch{{"edge", e.proc}, {"agent", ag}, {"upstream", h.upstream}}
	direct, pico := "ws://"+h.upAddr+"/ws", "ws://"+e.proxy+"/ws"
	h.logf("I: warm-up, WebSocket echo at 16 conns, %s each direct and through pico", h.opts.Warmup)
	for _, u := range []string{direct, pico} {
		if _, err := h.wsload(ctx, "warm-up", u, 16, h.opts.Warmup, watch); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	rate := func(r LoadRun) float64 { return r.Result.RequestsPerSec }
	for _, conns := range h.opts.RRConns {
		row := WSRow{Conns: conns, MessageBytes: wsSize}
		var all [][2]LoadRun
		for i := 0; i < h.opts.Repeat; i++ {
			what := fmt.Sprintf("WebSocket echo at %d conns", conns)
			h.waitQuiet(ctx, what)
			h.logf("I: %s, %s direct then through pico (%d/%d)", what, h.opts.Duration, i+1, h.opts.Repeat)
			dr, err := h.wsload(ctx, "direct", direct, conns, h.opts.Duration, watch)
			if err != nil {
				return err
			}
			pr, err := h.wsload(ctx, "pico", pico, conns, h.opts.Duration, watch)
			if err != nil {
				return err
			}
			all = append(all, [2]LoadRun{dr, pr})
			row.Pairs = append(row.Pairs, PairRatio{Direct: rate(dr), Pico: rate(pr), RatioPct: pct(rate(pr), rate(dr))})
		}
		m := medianIndex(row.Pairs)
		row.Direct, row.Pico, row.RatioPct = all[m][0], all[m][1], row.Pairs[m].RatioPct
		row.P50RatioTimes = ratio(row.Pico.Result.P50Us, row.Direct.Result.P50Us)
		row.P99RatioTimes = ratio(row.Pico.Result.P99Us, row.Direct.Result.P99Us)
		h.res.WebSocket = append(h.res.WebSocket, row)
	}
	return nil
}

// wsload runs the wsload subcommand once, with the CPU accounting around it.
func (h *harness) wsload(ctx context.Context, target, url string, conns int, d time.Duration, watch []cpuWatch) (LoadRun, error) {
	run := LoadRun{Target: target, URL: url, CPUPer1kReq: map[string]float64{}}
	args := []string{"wsload", "--url", url, "--conns", strconv.Itoa(conns), "--duration", d.String(), "--size", strconv.Itoa(wsSize)}
	if target != "direct" {
		args = append(args, "--header", "x-pico-endpoint: bench")
	}
	m := h.startMeasure(watch)
	p, err := h.procs.start("wsload", true, h.binary("pico-bench"), args...)
	if err != nil {
		return run, err
	}
	if err := p.wait(ctx, d+2*time.Minute); err != nil {
		return run, err
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(p.output())), &run.Result); err != nil {
		return run, fmt.Errorf("wsload output %q: %w", p.output(), err)
	}
	run.CPUSeconds, run.PeakRSSKiB, run.OtherCores, err = m.end(p)
	if err != nil {
		return run, err
	}
	if run.Result.Requests <= 0 {
		return run, fmt.Errorf("wsload %s %s: no echoes (%d errors; first: %s)", target, url, run.Result.Errors, run.Result.FirstError)
	}
	for role, s := range run.CPUSeconds {
		run.CPUPer1kReq[role] = s / float64(run.Result.Requests) * 1000
	}
	if target != "warm-up" {
		h.noisy("wsload %s at %d conns", run.OtherCores, target, conns)
		if run.Result.Errors > 0 {
			h.warn("wsload %s at %d conns: %d connections failed (first: %s): figures are suspect", target, conns, run.Result.Errors, run.Result.FirstError)
		}
	}
	return run, nil
}
