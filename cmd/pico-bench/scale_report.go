package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
)

// runScale runs scenarios S, R and W, those selected.
func (h *harness) runScale(ctx context.Context) {
	if h.opts.Scenarios["s"] && ctx.Err() == nil {
		h.record("S", h.runS(ctx))
	}
	if h.opts.Scenarios["r"] && ctx.Err() == nil {
		h.record("R", h.runR(ctx))
	}
	if h.opts.Scenarios["w"] && ctx.Err() == nil {
		h.record("W", h.runW(ctx))
	}
}

func (o *Options) validateScale() error {
	if o.Scenarios["s"] {
		if o.ScaleAgents < 1 || o.ScaleAgents > 5000 {
			return fmt.Errorf("--scale-agents %d: want 1 to 5000", o.ScaleAgents)
		}
		if o.ScalePerAgent < 1 || o.ScalePerAgent > 100 {
			return fmt.Errorf("--scale-endpoints-per-agent %d: want 1 to 100 (the edge's default per-link limit)", o.ScalePerAgent)
		}
	}
	if o.Scenarios["r"] && (o.RegEndpoints < 10 || o.RegEndpoints > 100000) {
		return fmt.Errorf("--reg-endpoints %d: want 10 to 100000", o.RegEndpoints)
	}
	if o.Scenarios["w"] && (o.WSConns < 1 || o.WSConns > 50000) {
		return fmt.Errorf("--ws-conns %d: want 1 to 50000", o.WSConns)
	}
	return nil
}

// printScale prints scenarios S, R and W.
func printScale(w io.Writer, r *Results) {
	kib := func(b float64) string { return fmt.Sprintf("%.2f KiB", b/1024) }
	if s := r.Scale; s != nil {
		fmt.Fprintf(w, "\nS. scale: %d idle agent links × %d endpoints = %d; heap = live Go heap after a forced GC, RSS after settling\n",
			s.Agents, s.PerAgent, s.Endpoints)
		fmt.Fprintf(w, "   one edge: RSS %s → %s (%.1f KiB per link, endpoints included), heap %s → %s, %.0f goroutines\n",
			fmtKiB(s.Single.RSSBeforeKiB), fmtKiB(s.Single.RSSAfterKiB), s.RSSPerAgKB,
			kib(s.Single.HeapBefore), kib(s.Single.HeapAfter), s.Single.Goroutines)
		fmt.Fprintf(w, "   heap per endpoint %.0f B (%d links × %d endpoints), per link %.0f B beside its endpoints, stacks per link %.0f B\n",
			s.HeapPerEP, s.EPLinks, s.EPPerLink, s.HeapPerAg, (s.Single.StackAfter-s.Single.StackBefore)/float64(s.Agents))
		fmt.Fprintf(w, "   gossip state %.0f bytes (%.1f per endpoint)\n", s.GossipB, s.GossipPerE)
		if len(s.Cluster) > 0 {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "   node\tRSS before\tRSS after\tKiB/endpoint\theap B/endpoint\troutes all after\t")
			for _, n := range s.Cluster {
				fmt.Fprintf(tw, "   %s\t%s\t%s\t%.2f\t%.0f\t%.2fs\t\n", n.Name, fmtKiB(n.RSSBeforeKiB), fmtKiB(n.RSSAfterKiB),
					n.RSSPerEPKiB, n.HeapPerEP, n.RoutedSeconds)
			}
			tw.Flush()
			fmt.Fprintf(w, "   cluster: the owner routed all %.2fs after the agents started; the others %.2fs later; gossip state %.0f bytes\n",
				s.RegisterSeconds, s.PropagationSeconds, s.ClusterGossipB)
			fmt.Fprintf(w, "   %d reconnects during it; a burst of %d more endpoints over %d links: routed by node-1 after %.2fs, by every node after %.2fs\n",
				s.Reconnects, s.BurstEndpoints, s.BurstLinks, s.BurstOwnerSeconds, s.BurstAllSeconds)
		}
	}
	if g := r.Regs; g != nil {
		fmt.Fprintf(w, "\nR. registrations: endpoints registered at once (one Register message each) after each link's first\n")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "   --registrations-per-second\tlinks\tendpoints\tseconds\tper second\tedge cpu s\t")
		for _, row := range g.Rows {
			fmt.Fprintf(tw, "   %s\t%d\t%d\t%.2f\t%.0f\t%.2f\t\n", row.Limit, row.Links, row.Endpoints, row.Seconds, row.PerSecond, row.EdgeCPU)
		}
		tw.Flush()
	}
	if x := r.WS; x != nil {
		fmt.Fprintf(w, "\nW. %d concurrent idle WebSockets (one echoed message each), %d agent processes\n", x.Conns, x.Agents)
		fmt.Fprintf(w, "   direct: upstream %.1f KiB per WebSocket (RSS %s → %s), opened in %.1fs\n",
			x.DirectUpPerConnKB, fmtKiB(x.DirectUpBeforeKiB), fmtKiB(x.DirectUpAfterKiB), x.DirectOpenSeconds)
		fmt.Fprintf(w, "   pico:   edge %.1f KiB per WebSocket (%.1fx the upstream's; heap %.0f B, stacks %.0f B, %.1f goroutines), agents %.1f KiB, upstream %.1f KiB, opened in %.1fs\n",
			x.EdgePerConnKB, x.EdgeVsUpstreamX, x.EdgeHeapPerConn, x.EdgeStackPerConn, x.EdgeGoroutinesPer, x.AgentsPerConnKB, x.UpPerConnKB, x.PicoOpenSeconds)
	}
}
