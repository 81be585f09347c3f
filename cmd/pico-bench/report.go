package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Targets the report checks figures against (issue 7's; not enforced
// anywhere): 1 MiB responses at least as fast as the quic-go one-link
// copy, an idle agent link at most 64 KiB on the edge.
const (
	targetPicoVsQUICPct = 100.0
	targetKiBPerLink    = 64.0
)

func printReport(w io.Writer, r *Results) {
	h := r.Host
	commit := h.GitCommit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if h.GitDirty {
		commit += " (dirty tree)"
	}
	fmt.Fprintf(w, "\npico-bench  %s  commit %s  %s  nproc %d  %s\n", r.StartedAt.Format("2006-01-02 15:04:05Z"),
		orDash(commit), h.GoVersion, h.NProc, h.CPUModel)
	rep := ""
	if r.Options.Repeat > 1 {
		rep = fmt.Sprintf(", %d interleaved repeats (the pair with the median ratio is shown)", r.Options.Repeat)
	}
	fmt.Fprintf(w, "runs of %gs after a %gs warm-up%s; loadavg %s at start, %s at end\nevery ratio is pico / its baseline measured in the same run; \"other\" = cores used by processes outside the benchmark (noise)\n",
		r.Options.DurationS, r.Options.WarmupS, rep, orDash(h.LoadAvgStart), orDash(h.LoadAvgEnd))

	if len(r.Small) > 0 {
		fmt.Fprintf(w, "\nA. small requests (12-byte response body; post: a %d-byte POST), wrk -t2 (-t1 at 1 conn) --latency; CPU = seconds per 1000 requests; peak RSS = VmHWM during the pico run\n", postBytes)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "scenario\tconns\tdirect req/s\tpico req/s\tratio\tdirect p50/p99/p99.9\tpico p50/p99/p99.9\tedge cpu\tagent cpu\tpeak RSS e/a\tupstr cpu d/p\twrk cpu d/p\tcores d/p\tother d/p\t")
		for _, row := range r.Small {
			name := "small"
			if row.Path == "/post" {
				name = "post"
			}
			fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%s\t%s / %s / %s\t%s / %s / %s\t%.3f\t%.3f\t%s\t%.3f / %.3f\t%.3f / %.3f\t%.2f / %.2f\t%.2f / %.2f\t%s\n",
				name, row.Conns, row.Direct.Result.RequestsPerSec, row.Pico.Result.RequestsPerSec, fmtRatio(row.ReqRatioPct, row.Pairs),
				fmtUs(row.Direct.Result.P50Us), fmtUs(row.Direct.Result.P99Us), fmtUs(row.Direct.Result.P999Us),
				fmtUs(row.Pico.Result.P50Us), fmtUs(row.Pico.Result.P99Us), fmtUs(row.Pico.Result.P999Us),
				row.Pico.CPUPer1kReq["edge"], row.Pico.CPUPer1kReq["agent"], fmtPeak(row.Pico.PeakRSSKiB, "edge", "agent"),
				row.Direct.CPUPer1kReq["upstream"], row.Pico.CPUPer1kReq["upstream"],
				row.Direct.CPUPer1kReq["wrk"], row.Pico.CPUPer1kReq["wrk"],
				row.Direct.CoresBusy, row.Pico.CoresBusy, row.Direct.OtherCores, row.Pico.OtherCores, errNote(row.Direct, row.Pico))
		}
		tw.Flush()
	}
	if len(r.Relay) > 0 {
		fmt.Fprintf(w, "\nF. cross-node relay: small requests through the agent's node (baseline) and through another node that relays them; CPU = seconds per 1000 requests\n")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "conns\tdirect req/s\tnode req/s\trelay req/s\trelay/node\tdirect p50\tnode p50/p99\trelay p50/p99\tp50 relay/node\tnode-1 cpu\tnode-2 cpu\tagent cpu\tother n/r\t")
		for _, row := range r.Relay {
			fmt.Fprintf(tw, "%d\t%.0f\t%.0f\t%.0f\t%s\t%s\t%s / %s\t%s / %s\t%.2fx\t%.3f\t%.3f\t%.3f\t%.2f / %.2f\t%s\n",
				row.Conns, row.Direct.Result.RequestsPerSec, row.Node.Result.RequestsPerSec, row.Relay.Result.RequestsPerSec,
				fmtRatio(row.ReqRatioPct, row.Pairs), fmtUs(row.Direct.Result.P50Us),
				fmtUs(row.Node.Result.P50Us), fmtUs(row.Node.Result.P99Us), fmtUs(row.Relay.Result.P50Us), fmtUs(row.Relay.Result.P99Us),
				row.P50RatioTimes, row.Relay.CPUPer1kReq["edge"], row.Relay.CPUPer1kReq["relay"], row.Relay.CPUPer1kReq["agent"],
				row.Node.OtherCores, row.Relay.OtherCores, errNote(row.Node, row.Relay))
		}
		tw.Flush()
	}
	if b := r.Bulk; b != nil {
		fmt.Fprintf(w, "\nB. 1 MiB responses, wrk -t2 -c%d (MiB/s = wrk Transfer/sec, binary units); CPU = seconds per GiB through pico\n", b.Conns)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "scenario\tconns\tdirect MiB/s\tpico MiB/s\tratio\tdirect p50/p99\tpico p50/p99\tedge cpu\tagent cpu\tupstr cpu\twrk cpu\tcores d/p\tother d/p\t")
		fmt.Fprintf(tw, "1mib\t%d\t%.1f\t%.1f\t%s\t%s / %s\t%s / %s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f / %.2f\t%.2f / %.2f\t%s\n",
			b.Conns, b.DirectMiBps, b.PicoMiBps, fmtRatio(b.RatioPct, b.Pairs),
			fmtUs(b.Direct.Result.P50Us), fmtUs(b.Direct.Result.P99Us),
			fmtUs(b.Pico.Result.P50Us), fmtUs(b.Pico.Result.P99Us),
			b.CPUPerGiB["edge"], b.CPUPerGiB["agent"], b.CPUPerGiB["upstream"], b.CPUPerGiB["wrk"],
			b.Direct.CoresBusy, b.Pico.CoresBusy, b.Direct.OtherCores, b.Pico.OtherCores, errNote(b.Direct, b.Pico))
		tw.Flush()
	}
	if c := r.QUICCopy; c != nil {
		all := ""
		if len(c.AllMiBps) > 1 {
			parts := make([]string, len(c.AllMiBps))
			for i, v := range c.AllMiBps {
				parts[i] = fmt.Sprintf("%.1f", v)
			}
			all = "median of " + strings.Join(parts, ", ") + "; "
		}
		fmt.Fprintf(w, "\nC. quic-go one-stream copy, two processes, quicutil.LinkConfig(1000) both sides: %.1f MiB/s (%s%.2f GiB in %.2fs;\n"+
			"   CPU per GiB: source %.2fs, sink %.2fs; sender srtt %.2fms, cwnd %d KiB, %d of %d packets lost; other %.2f cores)\n",
			c.MiBps, all, float64(c.Bytes)/(1<<30), c.Seconds, c.SourceCPUPerGiB, c.SinkCPUPerGiB, c.SRTTMs, c.CwndBytes>>10,
			c.PacketsLost, c.PacketsSent, c.OtherCores)
	}
	if r.Bulk != nil && r.QUICCopy != nil {
		fmt.Fprintf(w, "   pico 1 MiB responses at %d conns / quic-go one-stream copy: %.1f%% (target >= %.0f%%: %s)\n",
			r.Bulk.Conns, r.PicoVsQUICPct, targetPicoVsQUICPct, verdict(r.PicoVsQUICPct >= targetPicoVsQUICPct))
	}
	if d := r.Idle; d != nil {
		fmt.Fprintf(w, "\nD. idle agent links on a fresh edge (VmRSS, last of the settle samples)\n")
		fmt.Fprintf(w, "   %d links: %s -> %s (samples %s): %.1f KiB per idle link (target <= %.0f KiB: %s)\n",
			d.Links, fmtKiB(d.RSSBeforeKiB), fmtKiB(d.RSSAfterKiB), fmtSamples(d.RSSSamplesKiB), d.PerLinkKiB,
			targetKiBPerLink, verdict(d.PerLinkKiB <= targetKiBPerLink))
		if d.RSSHalfKiB > 0 {
			fmt.Fprintf(w, "   slope over the second half (%s at %d links -> %s at %d): %.1f KiB per link, without one-time costs\n",
				fmtKiB(d.RSSHalfKiB), d.Links/2, fmtKiB(d.RSSAfterKiB), d.Links, d.SlopeKiB)
		}
		fmt.Fprintf(w, "   connecting took %.2fs; edge CPU with the links idle (keep-alives): %.1f%% of a core\n", d.ConnectSeconds, d.IdleCPUPct)
		if d.EPLinks > 0 {
			fmt.Fprintf(w, "   %d links x %d endpoints: %s -> %s: %.1f KiB per endpoint (links included); %.1f KiB per extra endpoint beyond the first of each link\n",
				d.EPLinks, d.EPPerLink, fmtKiB(d.EPRSSBeforeKiB), fmtKiB(d.EPRSSAfterKiB), d.PerEndpointKiB, d.MarginalEPKiB)
		}
	}
	if len(r.TLS) > 0 || len(r.TLSNotes) > 0 {
		fmt.Fprintf(w, "\nE. small requests (12-byte body) over TLS, conns x streams (%d, fewer where more would pass the edge's %d in-flight requests per endpoint):\n"+
			"   direct = the client against the upstream's own TLS listener\n"+
			"   in the same protocol; pico = client -> edge HTTPS door (h2 over TCP, h3 over UDP) -> agent -> upstream HTTP/1.1.\n"+
			"   clients: h2load -t2 for h2, pico-bench h3load (quic-go http3, a process of its own) for h3; p50/p99 from every request's latency;\n"+
			"   CPU = seconds per 1000 requests; p50x/p99x = pico latency / direct latency; peak RSS = VmHWM during the pico run\n", eStreams, eMaxInFlight)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "proto\tconns x streams\tclient\tdirect req/s\tpico req/s\tratio\tdirect p50/p99/p99.9\tpico p50/p99/p99.9\tp50x / p99x\tedge cpu\tagent cpu\tpeak RSS e/a\tupstr cpu d/p\tclient cpu d/p\tcores d/p\tother d/p\t")
		for _, row := range r.TLS {
			d, p := row.Direct, row.Pico
			note := ""
			if n := d.Result.Errors + p.Result.Errors; n > 0 {
				note = fmt.Sprintf("SUSPECT (errors: direct %d, pico %d)", d.Result.Errors, p.Result.Errors)
			}
			fmt.Fprintf(tw, "%s\t%d x %d\t%s\t%.0f\t%.0f\t%s\t%s / %s / %s\t%s / %s / %s\t%.2fx / %.2fx\t%.3f\t%.3f\t%s\t%.3f / %.3f\t%.3f / %.3f\t%.2f / %.2f\t%.2f / %.2f\t%s\n",
				row.Proto, row.Conns, row.Streams, row.Client, d.Result.RequestsPerSec, p.Result.RequestsPerSec, fmtRatio(row.ReqRatioPct, row.Pairs),
				fmtUs(d.Result.P50Us), fmtUs(d.Result.P99Us), fmtUs(d.Result.P999Us), fmtUs(p.Result.P50Us), fmtUs(p.Result.P99Us), fmtUs(p.Result.P999Us),
				row.P50RatioTimes, row.P99RatioTimes,
				p.CPUPer1kReq["edge"], p.CPUPer1kReq["agent"], fmtPeak(p.PeakRSSKiB, "edge", "agent"), d.CPUPer1kReq["upstream"], p.CPUPer1kReq["upstream"],
				d.CPUPer1kReq["client"], p.CPUPer1kReq["client"], d.CoresBusy, p.CoresBusy, d.OtherCores, p.OtherCores, note)
		}
		tw.Flush()
		for _, n := range r.TLSNotes {
			fmt.Fprintf(w, "   note: %s\n", n)
		}
	}
	printMoreReport(w, r)
	printFloorReport(w, r)
	printTransportReport(w, r)
	if len(r.PeakRSSKiB) > 0 {
		fmt.Fprintf(w, "\npeak RSS (VmHWM) during A/B: edge %s, agent %s\n", fmtKiB(r.PeakRSSKiB["edge"]), fmtKiB(r.PeakRSSKiB["agent"]))
	}
	printScale(w, r)
	for _, s := range r.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", s)
	}
	for _, s := range r.Errors {
		fmt.Fprintf(w, "ERROR: %s\n", s)
	}
	fmt.Fprintln(w)
}

// fmtRatio is the ratio, with the range over the repeats if there are several.
func fmtRatio(r float64, pairs []PairRatio) string {
	if len(pairs) < 2 {
		return fmt.Sprintf("%.1f%%", r)
	}
	lo, hi := pairs[0].RatioPct, pairs[0].RatioPct
	for _, p := range pairs[1:] {
		lo, hi = min(lo, p.RatioPct), max(hi, p.RatioPct)
	}
	return fmt.Sprintf("%.1f%% [%.1f-%.1f]", r, lo, hi)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

func errNote(runs ...WrkRun) string {
	var parts []string
	for _, r := range runs {
		if n := r.Result.Errors(); n > 0 {
			parts = append(parts, fmt.Sprintf("%s: %d errors", r.Target, n))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "SUSPECT (" + strings.Join(parts, ", ") + ")"
}

func fmtUs(us float64) string {
	switch {
	case us >= 1e6:
		return fmt.Sprintf("%.2fs", us/1e6)
	case us >= 1e3:
		return fmt.Sprintf("%.2fms", us/1e3)
	default:
		return fmt.Sprintf("%.0fus", us)
	}
}

// fmtPeak is the peak RSS of two roles of a run, in MiB.
func fmtPeak(m map[string]int64, a, b string) string {
	if m[a] == 0 && m[b] == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f/%.0f MiB", float64(m[a])/1024, float64(m[b])/1024)
}

func fmtKiB(k int64) string { return fmt.Sprintf("%.1f MiB", float64(k)/1024) }

func fmtSamples(s []int64) string {
	parts := make([]string, len(s))
	for i, v := range s {
		parts[i] = fmt.Sprintf("%.1f", float64(v)/1024)
	}
	return strings.Join(parts, ", ") + " MiB"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
