package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
)

// figure is one number of a run that is compared with the last run.
type figure struct {
	key   string
	value float64
	unit  string
	// higher says whether a higher value is better (throughput, ratios)
	// or worse (latency, CPU, memory).
	higher bool
}

// figures lists the comparable figures of a run: Pico's throughput and its
// ratio to the baseline, latencies, CPU per unit of work and peak RSS.
func figures(r *Results) []figure {
	var out []figure
	add := func(key string, v float64, unit string, higher bool) {
		if v > 0 {
			out = append(out, figure{key, v, unit, higher})
		}
	}
	wrkRow := func(name string, p WrkRun, ratioPct float64) {
		add(name+" pico req/s", p.Result.RequestsPerSec, "req/s", true)
		add(name+" ratio", ratioPct, "%", true)
		add(name+" pico p50", p.Result.P50Us, "us", false)
		add(name+" pico p99", p.Result.P99Us, "us", false)
		add(name+" pico p99.9", p.Result.P999Us, "us", false)
		add(name+" edge cpu/1k req", p.CPUPer1kReq["edge"], "s", false)
		add(name+" agent cpu/1k req", p.CPUPer1kReq["agent"], "s", false)
		add(name+" edge peak RSS", float64(p.PeakRSSKiB["edge"]), "KiB", false)
	}
	for _, row := range r.Small {
		name := fmt.Sprintf("A c=%d", row.Conns)
		if row.Path == "/post" {
			name = fmt.Sprintf("A POST c=%d", row.Conns)
		}
		wrkRow(name, row.Pico, row.ReqRatioPct)
	}
	for _, row := range r.Floor {
		name := fmt.Sprintf("T %s c=%d", row.Path, row.Conns)
		add(name+" floor/direct", row.FloorPct, "%", true)
		add(name+" pico/floor", row.PicoVsFloorPct, "%", true)
		add(name+" pico cpu/req", row.PicoCPUUs, "us", false)
	}
	for _, row := range r.Transport {
		if row.Unit == "us" {
			add("X "+row.Figure+" tcp", row.TCP, "us", false)
			continue
		}
		add("X "+row.Figure+" tcp", row.TCP, row.Unit, true)
		add("X "+row.Figure+" tcp/quic", row.RatioPct, "%", true)
	}
	if b := r.Bulk; b != nil {
		add("B pico MiB/s", b.PicoMiBps, "MiB/s", true)
		add("B ratio", b.RatioPct, "%", true)
		add("B edge cpu/GiB", b.CPUPerGiB["edge"], "s", false)
		add("B agent cpu/GiB", b.CPUPerGiB["agent"], "s", false)
		add("B edge peak RSS", float64(b.Pico.PeakRSSKiB["edge"]), "KiB", false)
	}
	for _, l := range r.BulkLinks {
		add(fmt.Sprintf("B %d links MiB/s", l.Links), l.MiBps, "MiB/s", true)
	}
	if c := r.QUICCopy; c != nil {
		add("C quic-go copy MiB/s", c.MiBps, "MiB/s", true)
	}
	add("B / C", r.PicoVsQUICPct, "%", true)
	if d := r.Idle; d != nil {
		add("D KiB per idle link", d.PerLinkKiB, "KiB", false)
		add("D KiB per endpoint", d.PerEndpointKiB, "KiB", false)
	}
	for _, row := range r.TLS {
		name := fmt.Sprintf("E %s c=%d", row.Proto, row.Conns)
		add(name+" pico req/s", row.Pico.Result.RequestsPerSec, "req/s", true)
		add(name+" ratio", row.ReqRatioPct, "%", true)
		add(name+" pico p50", row.Pico.Result.P50Us, "us", false)
		add(name+" pico p99", row.Pico.Result.P99Us, "us", false)
		add(name+" edge cpu/1k req", row.Pico.CPUPer1kReq["edge"], "s", false)
	}
	for _, row := range r.Relay {
		add(fmt.Sprintf("F c=%d relay/node", row.Conns), row.ReqRatioPct, "%", true)
		add(fmt.Sprintf("F c=%d relay p50", row.Conns), row.Relay.Result.P50Us, "us", false)
	}
	if g := r.Upload; g != nil {
		add("G pico MiB/s", g.Pico.Result.MiBps, "MiB/s", true)
		add("G ratio", g.RatioPct, "%", true)
		add("G edge cpu/GiB", g.Pico.CPUPerGiB["edge"], "s", false)
		add("G agent cpu/GiB", g.Pico.CPUPerGiB["agent"], "s", false)
		add("G edge peak RSS", float64(g.Pico.PeakRSSKiB["edge"]), "KiB", false)
	}
	if t := r.TCP; t != nil {
		for _, row := range t.Bulk {
			name := fmt.Sprintf("H bulk c=%d", row.Conns)
			add(name+" pico MiB/s", row.Pico.Result.MiBps, "MiB/s", true)
			add(name+" ratio", row.RatioPct, "%", true)
			add(name+" edge cpu/GiB", row.Pico.CPUPerGiB["edge"], "s", false)
		}
		for _, row := range t.Links {
			add(fmt.Sprintf("H bulk c=%d %d links MiB/s", row.Conns, row.Pico.Links), row.Pico.Result.MiBps, "MiB/s", true)
		}
		add("H bulk / C", t.BulkVsQUICPct, "%", true)
		for _, row := range t.RR {
			name := fmt.Sprintf("H rr c=%d", row.Conns)
			add(name+" pico req/s", row.Pico.Result.RequestsPerSec, "req/s", true)
			add(name+" ratio", row.RatioPct, "%", true)
			add(name+" pico p50", row.Pico.Result.P50Us, "us", false)
			add(name+" edge cpu/1k req", row.Pico.CPUPer1kReq["edge"], "s", false)
		}
	}
	for _, row := range r.WebSocket {
		name := fmt.Sprintf("I ws c=%d", row.Conns)
		add(name+" pico msg/s", row.Pico.Result.RequestsPerSec, "msg/s", true)
		add(name+" ratio", row.RatioPct, "%", true)
		add(name+" pico p50", row.Pico.Result.P50Us, "us", false)
		add(name+" pico p99", row.Pico.Result.P99Us, "us", false)
	}
	return out
}

// loadResults reads a results file; nil if there is none or it does not
// parse (an older or foreign file is not an error).
func loadResults(path string) *Results {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var r Results
	if json.Unmarshal(b, &r) != nil || r.Schema == 0 {
		return nil
	}
	return &r
}

// Change is one figure of the comparison with the last run, as kept in
// the results JSON.
type Change struct {
	Figure    string  `json:"figure"`
	Unit      string  `json:"unit"`
	Last      float64 `json:"last"`
	Now       float64 `json:"now"`
	ChangePct float64 `json:"change_pct"`
	// Better is whether the change is an improvement (higher throughput or
	// ratio, lower latency, CPU or memory).
	Better bool `json:"better"`
}

// compare lists the figures present in both runs, in the order of now's.
func compare(last, now *Results) []Change {
	prev := map[string]float64{}
	for _, f := range figures(last) {
		prev[f.key] = f.value
	}
	var out []Change
	for _, f := range figures(now) {
		l, ok := prev[f.key]
		if !ok {
			continue
		}
		c := Change{Figure: f.key, Unit: f.unit, Last: l, Now: f.value, ChangePct: (f.value/l - 1) * 100}
		c.Better = (f.value > l) == f.higher
		out = append(out, c)
	}
	return out
}

// printComparison prints the changes against the last run; changes
// smaller than the noise of this shared machine are marked as such.
func printComparison(w io.Writer, last *Results, changes []Change) {
	if last == nil {
		return
	}
	commit := last.Host.GitCommit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	fmt.Fprintf(w, "\nvs last: the results file of %s (commit %s, %gs runs); %d figures in common. Throughput moves by\n"+
		"   +-30%% between runs on a busy machine: read the ratios, CPU and RSS first; |change| < 10%% is marked \"~\"\n",
		last.StartedAt.Format("2006-01-02 15:04:05Z"), orDash(commit), last.Options.DurationS, len(changes))
	if len(changes) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "figure\tlast\tnow\tchange\t\t")
	for _, c := range changes {
		mark := "better"
		switch {
		case c.ChangePct > -10 && c.ChangePct < 10:
			mark = "~"
		case !c.Better:
			mark = "WORSE"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%+.1f%%\t%s\t\n", c.Figure, fmtFigure(c.Last, c.Unit), fmtFigure(c.Now, c.Unit), c.ChangePct, mark)
	}
	tw.Flush()
}

func fmtFigure(v float64, unit string) string {
	switch unit {
	case "us":
		return fmtUs(v)
	case "KiB":
		return fmt.Sprintf("%.1f MiB", v/1024)
	case "s":
		return fmt.Sprintf("%.3fs", v)
	case "%":
		return fmt.Sprintf("%.1f%%", v)
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}
