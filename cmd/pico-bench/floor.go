package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/quicutil"
)

// The tunnel floor: the least a tunnel over quic-go can do for a request,
// to measure Pico against. floor-edge accepts TCP connections and gives
// each one QUIC stream to the one floor-agent connected to it; floor-agent
// accepts the streams and gives each one TCP connection to the upstream.
// Both copy bytes both ways with io.Copy and nothing else: no HTTP, no
// stream header, no routing, no limits, no logs. Pico's edge and agent do
// all of that on the same path, so the floor's requests per second and CPU
// per request bound what Pico could reach on the machine that runs it.

const floorALPN = "pico-bench-floor"

type floorReady struct {
	Addr     string `json:"addr"`      // TCP, for clients
	QUICAddr string `json:"quic_addr"` // UDP, for the floor-agent
}

// runFloorEdge listens for the floor-agent on --quic-addr and for clients
// on --addr; it serves until killed or --timeout.
func runFloorEdge(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("floor-edge", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "TCP listen address for clients")
	quicAddr := fs.String("quic-addr", "127.0.0.1:0", "UDP listen address for the floor-agent")
	caOut := fs.String("ca-out", "", "file to write the generated CA certificate (PEM) to")
	timeout := fs.Duration("timeout", maxLife, "exit after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *caOut == "" {
		return errors.New("--ca-out is required")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	b, err := certs.Generate()
	if err != nil {
		return err
	}
	if err := os.WriteFile(*caOut, b.CAPEM, 0o644); err != nil {
		return err
	}
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	tlsConf := &tls.Config{Certificates: []tls.Certificate{b.Cert}, NextProtos: []string{floorALPN}}
	ql, err := quic.ListenAddr(*quicAddr, tlsConf, quicutil.LinkConfig(quicutil.MaxStreamsToEdge))
	if err != nil {
		return err
	}
	defer ql.Close()
	tl, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	defer tl.Close()
	printJSON(floorReady{Addr: tl.Addr().String(), QUICAddr: ql.Addr().String()})
	conn, err := ql.Accept(ctx)
	if err != nil {
		return fmt.Errorf("accept the floor-agent: %w", err)
	}
	defer conn.CloseWithError(0, "done")
	return serveEach(ctx, tl, func(c net.Conn) {
		str, err := conn.OpenStreamSync(ctx)
		if err != nil {
			fmt.Fprintln(os.Stderr, "floor-edge: open stream:", err)
			return
		}
		pipe(c, str)
	})
}

// runFloorAgent dials the floor-edge and connects each of its streams to
// the upstream; it serves until the connection ends, it is killed or
// --timeout.
func runFloorAgent(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("floor-agent", flag.ContinueOnError)
	edge := fs.String("edge", "", "the floor-edge's QUIC address")
	caFile := fs.String("ca", "", "CA certificate (PEM) of the floor-edge")
	upstream := fs.String("upstream", "", "TCP address of the upstream")
	timeout := fs.Duration("timeout", maxLife, "exit after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *edge == "" || *caFile == "" || *upstream == "" {
		return errors.New("--edge, --ca and --upstream are required")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	pool, err := certs.LoadPool(*caFile)
	if err != nil {
		return err
	}
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	conn, err := quic.DialAddr(ctx, *edge, certs.ClientTLSConfig(pool, "127.0.0.1", floorALPN),
		quicutil.LinkConfig(quicutil.MaxStreamsToAgent))
	if err != nil {
		return fmt.Errorf("dial the floor-edge: %w", err)
	}
	defer conn.CloseWithError(0, "done")
	printJSON(struct {
		Connected bool `json:"connected"`
	}{true})
	var wg sync.WaitGroup
	defer wg.Wait()
	d := net.Dialer{Timeout: 5 * time.Second}
	for {
		str, err := conn.AcceptStream(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept stream: %w", err)
		}
		wg.Go(func() {
			up, err := d.DialContext(ctx, "tcp", *upstream)
			if err != nil {
				fmt.Fprintln(os.Stderr, "floor-agent: dial upstream:", err)
				str.CancelRead(1)
				str.CancelWrite(1)
				return
			}
			defer up.Close()
			pipe(up, str)
		})
	}
}

// pipe copies between a TCP connection and a stream both ways until both
// directions end, passing each end on as a half-close.
func pipe(c net.Conn, str *quic.Stream) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(c, str)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	if _, err := io.Copy(str, c); err != nil {
		str.CancelWrite(1)
	} else {
		str.Close()
	}
	<-done
	str.CancelRead(0)
}

// FloorRow is scenario T at one connection count: small requests straight
// to the upstream, through the tunnel floor and through Pico, in that
// order, in the same run.
type FloorRow struct {
	Path   string `json:"path"` // /small or /1m
	Conns  int    `json:"conns"`
	Direct WrkRun `json:"direct"`
	Floor  WrkRun `json:"floor"`
	Pico   WrkRun `json:"pico"`
	// Requests per second (/small) or MiB/s (/1m) in percent: floor and
	// Pico of direct, Pico of the floor.
	FloorPct       float64 `json:"floor_vs_direct_pct"`
	PicoPct        float64 `json:"pico_vs_direct_pct"`
	PicoVsFloorPct float64 `json:"pico_vs_floor_pct"`
	// CPU microseconds per request of the tunnel's two processes together
	// (floor-edge + floor-agent; pico-edge + pico-agent); per MiB for /1m.
	FloorCPUUs float64 `json:"floor_cpu_us_per_request"`
	PicoCPUUs  float64 `json:"pico_cpu_us_per_request"`
	// Pairs are the repeats' Pico-of-floor ratios; the row is the median.
	Pairs []PairRatio `json:"pairs"`
}

// runT measures scenario T: /small at each --conns count, direct, through
// the tunnel floor (floor-edge and floor-agent) and through Pico.
func (h *harness) runT(ctx context.Context) error {
	if err := h.startUpstream(ctx); err != nil {
		return err
	}
	ca := filepath.Join(h.tmp, "floor-ca.pem")
	fe, err := h.procs.start("floor-edge", false, h.binary("pico-bench"), "floor-edge", "--ca-out", ca)
	if err != nil {
		return err
	}
	defer fe.kill()
	var ready floorReady
	if _, err := fe.waitLine(ctx, 20*time.Second, jsonLine(&ready, func() bool { return ready.Addr != "" })); err != nil {
		return fmt.Errorf("floor-edge: %w", err)
	}
	fa, err := h.procs.start("floor-agent", false, h.binary("pico-bench"), "floor-agent",
		"--edge", ready.QUICAddr, "--ca", ca, "--upstream", h.upAddr)
	if err != nil {
		return err
	}
	defer fa.kill()
	var up struct {
		Connected bool `json:"connected"`
	}
	if _, err := fa.waitLine(ctx, 20*time.Second, jsonLine(&up, func() bool { return up.Connected })); err != nil {
		return fmt.Errorf("floor-agent: %w", err)
	}
	e, ag, err := h.startPico(ctx, "edge-t", "agent-t", false)
	if err != nil {
		return err
	}
	defer e.kill()
	defer ag.kill()
	direct, floor, pico := "http://"+h.upAddr, "http://"+ready.Addr, "http://"+e.proxy
	for _, base := range []string{floor, pico} {
		if err := h.verify(ctx, base, "/small", base == pico, smallBody); err != nil {
			return err
		}
	}
	floorWatch := []cpuWatch{{"edge", fe}, {"agent", fa}, {"upstream", h.upstream}}
	picoWatch := []cpuWatch{{"edge", e.proc}, {"agent", ag}, {"upstream", h.upstream}}
	h.logf("T: warm-up /small, 16 conns, %s each direct, through the floor and through pico", h.opts.Warmup)
	for _, w := range []struct {
		name, base string
		watch      []cpuWatch
	}{{"direct", direct, floorWatch}, {"floor", floor, floorWatch}, {"pico", pico, picoWatch}} {
		if _, err := h.wrk(ctx, w.name, w.base+"/small", 16, h.opts.Warmup, w.watch, false); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	tunnelCPU := func(r WrkRun) float64 { return (r.CPUPer1kReq["edge"] + r.CPUPer1kReq["agent"]) * 1000 }
	measure := func(path string, conns int, metric func(WrkRun) float64) (FloorRow, error) {
		var rows []FloorRow
		var pairs []PairRatio
		for i := 0; i < h.opts.Repeat; i++ {
			what := fmt.Sprintf("T: %s at %d conns", path, conns)
			h.waitQuiet(ctx, what)
			h.logf("%s, %s each direct, through the floor and through pico (%d/%d)", what, h.opts.Duration, i+1, h.opts.Repeat)
			row := FloorRow{Path: path, Conns: conns}
			var err error
			if row.Direct, err = h.wrk(ctx, "direct", direct+path, conns, h.opts.Duration, floorWatch, true); err != nil {
				return row, err
			}
			if row.Floor, err = h.wrk(ctx, "floor", floor+path, conns, h.opts.Duration, floorWatch, true); err != nil {
				return row, err
			}
			if row.Pico, err = h.wrk(ctx, "pico", pico+path, conns, h.opts.Duration, picoWatch, true); err != nil {
				return row, err
			}
			d, f, p := metric(row.Direct), metric(row.Floor), metric(row.Pico)
			row.FloorPct, row.PicoPct, row.PicoVsFloorPct = pct(f, d), pct(p, d), pct(p, f)
			row.FloorCPUUs, row.PicoCPUUs = tunnelCPU(row.Floor), tunnelCPU(row.Pico)
			rows = append(rows, row)
			pairs = append(pairs, PairRatio{Direct: f, Pico: p, RatioPct: row.PicoVsFloorPct})
		}
		row := rows[medianIndex(pairs)]
		row.Pairs = pairs
		return row, nil
	}
	for _, conns := range h.opts.SmallConns {
		row, err := measure("/small", conns, func(r WrkRun) float64 { return r.Result.RequestsPerSec })
		if err != nil {
			return err
		}
		h.res.Floor = append(h.res.Floor, row)
	}
	row, err := measure("/1m", 4, func(r WrkRun) float64 { return r.Result.TransferBPS / (1 << 20) })
	if err != nil {
		return err
	}
	h.res.Floor = append(h.res.Floor, row)
	return nil
}

// printFloorReport prints scenario T.
func printFloorReport(w io.Writer, r *Results) {
	if len(r.Floor) == 0 {
		return
	}
	fmt.Fprintf(w, "\nT. the tunnel floor: a TCP->QUIC->TCP byte pipe over quic-go, one stream per client connection and nothing else (pico-bench\n"+
		"   floor-edge / floor-agent): what any tunnel over quic-go can reach here. /small: req/s; /1m: MiB/s; CPU = edge + agent µs per request\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\tconns\tdirect\tfloor\tfloor/direct\tpico\tpico/direct\tpico/floor\tp50 d/f/p\tfloor cpu\tpico cpu\tother d/f/p\t")
	for _, row := range r.Floor {
		val := func(x WrkRun) float64 { return x.Result.RequestsPerSec }
		if row.Path == "/1m" {
			val = func(x WrkRun) float64 { return x.Result.TransferBPS / (1 << 20) }
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%.1f%%\t%.0f\t%.1f%%\t%s\t%s / %s / %s\t%.1f\t%.1f\t%.2f / %.2f / %.2f\t%s\n", row.Path, row.Conns,
			val(row.Direct), val(row.Floor), row.FloorPct, val(row.Pico), row.PicoPct,
			fmtRatio(row.PicoVsFloorPct, row.Pairs), fmtUs(row.Direct.Result.P50Us), fmtUs(row.Floor.Result.P50Us), fmtUs(row.Pico.Result.P50Us),
			row.FloorCPUUs, row.PicoCPUUs, row.Direct.OtherCores, row.Floor.OtherCores, row.Pico.OtherCores, errNote(row.Floor, row.Pico))
	}
	tw.Flush()
}
