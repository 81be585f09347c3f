package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Scenario X measures the agent's TCP transport (QUIC packets carried in
// an upgraded TCP connection, docs/transport.md) beside QUIC on UDP, in
// the same run against the same edge: small requests at 1 and 16
// connections, 1 MiB responses at 4 and a TCP forward's one-connection
// bulk copy. Each repeat starts fresh agents with --transport quic and
// then --transport tcp (the other order on odd repeats), checks that the
// edge lists their links on that transport, and runs the same loads; the
// median TCP/QUIC ratio over the repeats counts.

// TransportRow is one figure of scenario X on both transports.
type TransportRow struct {
	Figure string  `json:"figure"` // e.g. "/small c16 req/s"
	Unit   string  `json:"unit"`   // "req/s", "MiB/s" or "us"
	QUIC   float64 `json:"quic"`   // the repeat of the median ratio
	TCP    float64 `json:"tcp"`
	// RatioPct is TCP over QUIC in percent; for latency rows DeltaUs is
	// TCP minus QUIC instead.
	RatioPct float64 `json:"tcp_vs_quic_pct"`
	DeltaUs  float64 `json:"tcp_minus_quic_us,omitempty"`
	// Target is the pass figure for the row, and Pass whether
	// this run met it.
	Target string  `json:"target"`
	Pass   bool    `json:"pass"`
	Pairs  []XPair `json:"pairs"`
	// CPU is the edge's and agents' CPU seconds per 1k requests or per
	// GiB on each transport, in the median repeat.
	QUICCPU map[string]float64 `json:"quic_cpu,omitempty"`
	TCPCPU  map[string]float64 `json:"tcp_cpu,omitempty"`
	// OtherCores is the CPU of processes outside the benchmark during
	// the QUIC and TCP runs of the median repeat.
	OtherCores [2]float64 `json:"other_cores"`
}

// XPair is one repeat of a scenario X figure.
type XPair struct {
	QUIC     float64 `json:"quic"`
	TCP      float64 `json:"tcp"`
	RatioPct float64 `json:"tcp_vs_quic_pct"`
}

// xFigure is one measurement of one transport.
type xFigure struct {
	value float64
	cpu   map[string]float64
	other float64
}

// xFigures are the figures of one transport in one repeat, by row.
type xFigures map[string]xFigure

// xRows lists the rows of scenario X in order, with their unit and
// target. lower is set for latency rows.
var xRows = []struct {
	figure, unit, target string
	lower                bool
}{
	{"/small c1 p50", "us", "<= QUIC + 100us", true},
	{"/small c1 req/s", "req/s", ">= 70% of QUIC", false},
	{"/small c16 req/s", "req/s", ">= 70% of QUIC", false},
	{"/1m c4 MiB/s", "MiB/s", ">= 70% of QUIC", false},
	{"tcp forward bulk c1 MiB/s", "MiB/s", ">= 70% of QUIC", false},
}

// runX runs scenario X.
func (h *harness) runX(ctx context.Context) error {
	if err := h.startUpstream(ctx); err != nil {
		return err
	}
	tup, tupAddr, err := h.startTCPUpstream(ctx)
	if err != nil {
		return err
	}
	defer tup.kill()
	e, err := h.startEdge(ctx, "edge-x", false)
	if err != nil {
		return err
	}
	defer e.kill()
	per := map[string][]xFigures{}
	for i := 0; i < h.opts.Repeat && ctx.Err() == nil; i++ {
		order := []string{"quic", "tcp"}
		if i%2 == 1 {
			order = []string{"tcp", "quic"}
		}
		for _, tr := range order {
			f, err := h.xOnce(ctx, e, tr, tupAddr, i)
			if err != nil {
				return fmt.Errorf("--transport %s: %w", tr, err)
			}
			per[tr] = append(per[tr], f)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for _, r := range xRows {
		row := TransportRow{Figure: r.figure, Unit: r.unit, Target: r.target}
		for i := range per["quic"] {
			q, t := per["quic"][i][r.figure].value, per["tcp"][i][r.figure].value
			row.Pairs = append(row.Pairs, XPair{QUIC: q, TCP: t, RatioPct: pct(t, q)})
		}
		// The median repeat by ratio (for latency the ratio orders the
		// same way as the difference, inverted).
		idx := make([]int, len(row.Pairs))
		for i := range idx {
			idx[i] = i
		}
		slices.SortFunc(idx, func(a, b int) int { return cmpFloat(row.Pairs[a].RatioPct, row.Pairs[b].RatioPct) })
		m := idx[(len(idx)-1)/2]
		q, t := per["quic"][m][r.figure], per["tcp"][m][r.figure]
		row.QUIC, row.TCP, row.RatioPct = q.value, t.value, pct(t.value, q.value)
		row.QUICCPU, row.TCPCPU, row.OtherCores = q.cpu, t.cpu, [2]float64{q.other, t.other}
		if r.lower {
			row.DeltaUs = t.value - q.value
			row.Pass = row.DeltaUs <= 100
		} else {
			row.Pass = row.RatioPct >= 70
		}
		h.res.Transport = append(h.res.Transport, row)
	}
	return nil
}

// xOnce starts agents on transport tr, measures every row of scenario X
// and stops them.
func (h *harness) xOnce(ctx context.Context, e *edgeProc, tr, tcpUp string, rep int) (xFigures, error) {
	out := xFigures{}
	flag := []string{"--transport", tr}
	name := fmt.Sprintf("agent-x-%s-%d", tr, rep)
	ag, _, err := h.startAgentLinks(ctx, e, name, "http", "bench", h.upAddr, 1, flag...)
	if err != nil {
		return nil, err
	}
	defer ag.kill()
	if err := h.checkTransport(ctx, e, "bench", tr); err != nil {
		return nil, err
	}
	pico := "http://" + e.proxy
	if err := h.verify(ctx, pico, "/1m", true, bigBody); err != nil {
		return nil, err
	}
	watch := []cpuWatch{{"edge", e.proc}, {"agent", ag}}
	h.logf("X: warm-up /small at 16 conns over --transport %s, %s", tr, h.opts.Warmup)
	if _, err := h.wrk(ctx, "warm-up", pico+"/small", 16, h.opts.Warmup, watch, false); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	for _, m := range []struct {
		path  string
		conns int
	}{{"/small", 1}, {"/small", 16}, {"/1m", 4}} {
		what := fmt.Sprintf("X: %s at %d conns over --transport %s", m.path, m.conns, tr)
		h.waitQuiet(ctx, what)
		h.logf("%s, %s (%d/%d)", what, h.opts.Duration, rep+1, h.opts.Repeat)
		r, err := h.wrk(ctx, "pico-"+tr, pico+m.path, m.conns, h.opts.Duration, watch, true)
		if err != nil {
			return nil, err
		}
		if m.path == "/1m" {
			out["/1m c4 MiB/s"] = xFigure{r.Result.TransferBPS / (1 << 20), perGiB(r.CPUSeconds, r.Result.TransferBPS*r.Result.Seconds), r.OtherCores}
			continue
		}
		f := xFigure{r.Result.RequestsPerSec, r.CPUPer1kReq, r.OtherCores}
		out[fmt.Sprintf("/small c%d req/s", m.conns)] = f
		if m.conns == 1 {
			f.value = r.Result.P50Us
			out["/small c1 p50"] = f
		}
	}
	if err := h.stopAgent(ctx, e, ag, "bench"); err != nil {
		return nil, err
	}

	t, err := h.startTCPPico(ctx, e, tcpUp, 1, flag...)
	if err != nil {
		return nil, err
	}
	defer t.kill()
	if err := h.checkTransport(ctx, e, "tcpbench", tr); err != nil {
		return nil, err
	}
	what := fmt.Sprintf("X: TCP forward bulk at 1 conn over --transport %s", tr)
	h.waitQuiet(ctx, what)
	h.logf("%s, %d MiB (%d/%d)", what, h.opts.TCPBulkBytes>>20, rep+1, h.opts.Repeat)
	r, err := h.tcpload(ctx, "pico-"+tr, t.fwdAddr, "bulk", 1, h.opts.TCPBulkBytes, 0,
		[]cpuWatch{{"edge", e.proc}, {"agent", t.serve}, {"fwd-agent", t.fwd}})
	if err != nil {
		return nil, err
	}
	out["tcp forward bulk c1 MiB/s"] = xFigure{r.Result.MiBps, r.CPUPerGiB, r.OtherCores}
	if err := h.stopAgent(ctx, e, t.serve, "tcpbench"); err != nil {
		return nil, err
	}
	t.fwd.kill()
	return out, nil
}

// perGiB divides CPU seconds by the GiB moved.
func perGiB(cpu map[string]float64, bytes float64) map[string]float64 {
	out := map[string]float64{}
	if gib := bytes / (1 << 30); gib > 0 {
		for role, s := range cpu {
			out[role] = s / gib
		}
	}
	return out
}

// checkTransport fails unless every link e lists serving endpoint is on
// transport tr, as the edge's /status/agents reports it.
func (h *harness) checkTransport(ctx context.Context, e *edgeProc, endpoint, tr string) error {
	var ag struct {
		Agents []struct {
			Transport string   `json:"transport"`
			Endpoints []string `json:"endpoints"`
		} `json:"agents"`
	}
	if err := h.getJSON(ctx, "http://"+e.adminAddr+"/status/agents", &ag); err != nil {
		return err
	}
	n := 0
	for _, a := range ag.Agents {
		if !slices.ContainsFunc(a.Endpoints, func(s string) bool { return strings.HasPrefix(s, endpoint+"/") }) {
			continue
		}
		n++
		if a.Transport != tr {
			return fmt.Errorf("the edge lists a link serving %s on transport %q, want %q", endpoint, a.Transport, tr)
		}
	}
	if n == 0 {
		return fmt.Errorf("the edge lists no link serving %s", endpoint)
	}
	return nil
}

// printTransportReport prints scenario X.
func printTransportReport(w io.Writer, r *Results) {
	if len(r.Transport) == 0 {
		return
	}
	fmt.Fprintf(w, "\nX. the agent's TCP transport beside QUIC, same edge, same run: pico-agent --transport tcp vs --transport quic\n"+
		"   (QUIC packets in an upgraded TCP connection on the agent port); CPU = edge + agent(s) seconds per 1k requests or per GiB\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "figure\tquic\ttcp\ttcp vs quic\ttarget\tpass\tcpu quic\tcpu tcp\tother q/t\t")
	for _, row := range r.Transport {
		val := func(v float64) string {
			if row.Unit == "us" {
				return fmtUs(v)
			}
			return fmt.Sprintf("%.1f", v)
		}
		vs := fmt.Sprintf("%.1f%%", row.RatioPct)
		if row.Unit == "us" {
			vs = fmt.Sprintf("%+.0fus", row.DeltaUs)
		}
		if len(row.Pairs) > 1 {
			var all []string
			for _, p := range row.Pairs {
				all = append(all, fmt.Sprintf("%.0f", p.RatioPct))
			}
			vs += " [" + strings.Join(all, " ") + "]"
		}
		pass := "yes"
		if !row.Pass {
			pass = "NO"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.3f\t%.3f\t%.2f / %.2f\t\n", row.Figure, val(row.QUIC), val(row.TCP), vs, row.Target, pass,
			tunnelCPU(row.QUICCPU), tunnelCPU(row.TCPCPU), row.OtherCores[0], row.OtherCores[1])
	}
	tw.Flush()
}

// tunnelCPU sums the CPU of Pico's own processes.
func tunnelCPU(cpu map[string]float64) float64 {
	return cpu["edge"] + cpu["agent"] + cpu["fwd-agent"]
}
