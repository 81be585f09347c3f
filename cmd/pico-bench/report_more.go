package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// printMoreReport prints B's agent-links rows and scenarios G, H and I.
func printMoreReport(w io.Writer, r *Results) {
	if len(r.BulkLinks) > 0 && r.Bulk != nil {
		fmt.Fprintf(w, "\nB'. 1 MiB responses at %d conns again, the agent started with pico-agent --connections N (N QUIC links to the one edge node)\n", r.Bulk.Conns)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "links\tlinks seen\tpico MiB/s\tvs direct\tvs 1 link\tp50/p99\tedge cpu/GiB\tagent cpu/GiB\tpeak RSS e/a\tother\t")
		fmt.Fprintf(tw, "1\t1\t%.1f\t%.1f%%\t100%%\t%s / %s\t%.2f\t%.2f\t%s\t%.2f\t\n", r.Bulk.PicoMiBps, r.Bulk.RatioPct,
			fmtUs(r.Bulk.Pico.Result.P50Us), fmtUs(r.Bulk.Pico.Result.P99Us), r.Bulk.CPUPerGiB["edge"], r.Bulk.CPUPerGiB["agent"],
			fmtPeak(r.Bulk.Pico.PeakRSSKiB, "edge", "agent"), r.Bulk.Pico.OtherCores)
		for _, l := range r.BulkLinks {
			fmt.Fprintf(tw, "%d\t%d\t%.1f\t%.1f%%\t%.1f%%\t%s / %s\t%.2f\t%.2f\t%s\t%.2f\t%s\n", l.Links, l.LinksSeen, l.MiBps, l.RatioPct, l.VsOneLinkPct,
				fmtUs(l.Pico.Result.P50Us), fmtUs(l.Pico.Result.P99Us), l.CPUPerGiB["edge"], l.CPUPerGiB["agent"],
				fmtPeak(l.Pico.PeakRSSKiB, "edge", "agent"), l.Pico.OtherCores, errNote(l.Pico))
		}
		tw.Flush()
	}
	for _, n := range r.LinkNotes {
		fmt.Fprintf(w, "   note: %s\n", n)
	}
	if g := r.Upload; g != nil {
		fmt.Fprintf(w, "\nG. one %d MiB POST over HTTP/1.1 (the upstream reads it all and answers its length); CPU = seconds per GiB; peak RSS during the run\n", g.Bytes>>20)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "\tMiB/s\tratio\tseconds\tedge cpu\tagent cpu\tupstr cpu\tclient cpu\tpeak RSS e/a\tother\t")
		for _, u := range []UploadRun{g.Direct, g.Pico} {
			rt := "100%"
			if u.Target == "pico" {
				rt = fmtRatio(g.RatioPct, g.Pairs)
			}
			fmt.Fprintf(tw, "%s\t%.1f\t%s\t%.2f\t%s\t%s\t%.2f\t%.2f\t%s\t%.2f\t\n", u.Target, u.Result.MiBps, rt, u.Result.Seconds,
				cpuOrDash(u.CPUPerGiB, "edge", u.Target), cpuOrDash(u.CPUPerGiB, "agent", u.Target),
				u.CPUPerGiB["upstream"], u.CPUPerGiB["client"], fmtPeak(u.PeakRSSKiB, "edge", "agent"), u.OtherCores)
		}
		tw.Flush()
	}
	if t := r.TCP; t != nil {
		fmt.Fprintf(w, "\nH. TCP forward: client -> pico-agent forward -> edge -> agent (tcp endpoint) -> TCP sink/echo upstream; direct = the client against the upstream\n"+
			"   bulk: the connections send the run's bytes between them, half-close, and check the sink's count; CPU = seconds per GiB\n")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "bulk conns\tlinks (seen)\tdirect MiB/s\tpico MiB/s\tratio\tedge cpu\tagent cpu\tfwd-agent cpu\tpeak RSS e/a/fwd\tother d/p\t")
		rows := append(append([]TCPRow(nil), t.Bulk...), t.Links...)
		for i, row := range rows {
			rt := fmtRatio(row.RatioPct, row.Pairs)
			if i >= len(t.Bulk) {
				rt = fmt.Sprintf("%.1f%%", row.RatioPct)
			}
			p := row.Pico
			fmt.Fprintf(tw, "%d\t%d (%d)\t%.1f\t%.1f\t%s\t%.2f\t%.2f\t%.2f\t%s/%.0f MiB\t%.2f / %.2f\t\n", row.Conns, max(1, p.Links), max(1, p.LinksSeen),
				row.Direct.Result.MiBps, p.Result.MiBps, rt, p.CPUPerGiB["edge"], p.CPUPerGiB["agent"], p.CPUPerGiB["fwd-agent"],
				fmtPeak(p.PeakRSSKiB, "edge", "agent"), float64(p.PeakRSSKiB["fwd-agent"])/1024, row.Direct.OtherCores, p.OtherCores)
		}
		tw.Flush()
		if t.BulkVsQUICPct > 0 {
			fmt.Fprintf(w, "   pico TCP bulk at 1 conn / quic-go one-stream copy (C): %.1f%%\n", t.BulkVsQUICPct)
		}
		fmt.Fprintf(w, "   request/response: a %d-byte message and its echo per request, one in flight per connection; CPU = seconds per 1000 requests\n", t.MessageBytes)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "rr conns\tdirect req/s\tpico req/s\tratio\tdirect p50/p99/p99.9\tpico p50/p99/p99.9\tedge cpu\tagent cpu\tfwd-agent cpu\tpeak RSS e/a/fwd\tother d/p\t")
		for _, row := range t.RR {
			d, p := row.Direct.Result, row.Pico.Result
			fmt.Fprintf(tw, "%d\t%.0f\t%.0f\t%s\t%s / %s / %s\t%s / %s / %s\t%.3f\t%.3f\t%.3f\t%s/%.0f MiB\t%.2f / %.2f\t\n", row.Conns,
				d.RequestsPerSec, p.RequestsPerSec, fmtRatio(row.RatioPct, row.Pairs),
				fmtUs(d.P50Us), fmtUs(d.P99Us), fmtUs(d.P999Us), fmtUs(p.P50Us), fmtUs(p.P99Us), fmtUs(p.P999Us),
				row.Pico.CPUPer1kReq["edge"], row.Pico.CPUPer1kReq["agent"], row.Pico.CPUPer1kReq["fwd-agent"],
				fmtPeak(row.Pico.PeakRSSKiB, "edge", "agent"), float64(row.Pico.PeakRSSKiB["fwd-agent"])/1024,
				row.Direct.OtherCores, row.Pico.OtherCores)
		}
		tw.Flush()
	}
	if len(r.WebSocket) > 0 {
		fmt.Fprintf(w, "\nI. WebSocket echo over HTTP/1.1 (coder/websocket both ends), a %d-byte binary message and its echo at a time per connection; CPU = seconds per 1000 messages\n",
			r.WebSocket[0].MessageBytes)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "conns\tdirect msg/s\tpico msg/s\tratio\tdirect p50/p99/p99.9\tpico p50/p99/p99.9\tp50x / p99x\tedge cpu\tagent cpu\tpeak RSS e/a\tother d/p\t")
		for _, row := range r.WebSocket {
			d, p := row.Direct.Result, row.Pico.Result
			note := ""
			if d.Errors+p.Errors > 0 {
				note = fmt.Sprintf("SUSPECT (failed connections: direct %d, pico %d)", d.Errors, p.Errors)
			}
			fmt.Fprintf(tw, "%d\t%.0f\t%.0f\t%s\t%s / %s / %s\t%s / %s / %s\t%.2fx / %.2fx\t%.3f\t%.3f\t%s\t%.2f / %.2f\t%s\n", row.Conns,
				d.RequestsPerSec, p.RequestsPerSec, fmtRatio(row.RatioPct, row.Pairs),
				fmtUs(d.P50Us), fmtUs(d.P99Us), fmtUs(d.P999Us), fmtUs(p.P50Us), fmtUs(p.P99Us), fmtUs(p.P999Us),
				row.P50RatioTimes, row.P99RatioTimes, row.Pico.CPUPer1kReq["edge"], row.Pico.CPUPer1kReq["agent"],
				fmtPeak(row.Pico.PeakRSSKiB, "edge", "agent"), row.Direct.OtherCores, row.Pico.OtherCores, note)
		}
		tw.Flush()
	}
}

// cpuOrDash is m[role] formatted, or "-" for a direct run, which has no
// Pico process in its path.
func cpuOrDash(m map[string]float64, role, target string) string {
	if target == "direct" {
		return "-"
	}
	return fmt.Sprintf("%.2f", m[role])
}
