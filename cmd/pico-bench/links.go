package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// BulkLinkRow is scenario B again with an agent started with
// --connections N, against the same edge: what N links to one node add to
// the one-link figure of the same run.
type BulkLinkRow struct {
	Links int `json:"links"`
	// LinksSeen is the agent links the edge listed during the run: with a
	// single edge node, pico-agent --connections N opens N QUIC connections
	// to it.
	LinksSeen    int     `json:"links_seen"`
	Pico         WrkRun  `json:"pico"`
	MiBps        float64 `json:"mib_per_sec"`
	RatioPct     float64 `json:"vs_direct_pct"`   // of B's direct run
	VsOneLinkPct float64 `json:"vs_one_link_pct"` // of B's one-link pico run
	// CPUPerGiB is, as in B, CPU seconds per GiB through pico.
	CPUPerGiB map[string]float64 `json:"pico_cpu_seconds_per_gib"`
}

// startAgentLinks starts pico-agent KIND ENDPOINT UPSTREAM with
// --connections links against e, waits until the edge lists a link
// serving the endpoint, then up to linkWait more for all of them. Any
// agent that served it before must have been stopped (stopAgent). It
// returns the links the edge lists: pico-agent links each node once, so
// against one edge node that is 1 whatever --connections says. Extra
// flags go to pico-agent after the usual ones.
func (h *harness) startAgentLinks(ctx context.Context, e *edgeProc, name, kind, endpoint, upstream string, links int, extra ...string) (*proc, int, error) {
	ag, err := h.procs.start(name, false, h.binary("pico-agent"), append([]string{kind, endpoint, upstream,
		"--edge", e.agentAddr, "--ca", e.caFile(), "--connections", strconv.Itoa(links), "--log-format", "json"}, extra...)...)
	if err != nil {
		return nil, 0, err
	}
	seen := 0
	err = poll(ctx, 30*time.Second, fmt.Sprintf("a link of %s serving %s", name, endpoint), func() (bool, error) {
		if ag.exited() {
			return false, fmt.Errorf("%s exited:\n%s", name, ag.tail(10))
		}
		seen, err = h.sessionsServing(ctx, e, endpoint)
		return err == nil && seen >= 1, err
	})
	if err != nil {
		ag.kill()
		return nil, seen, err
	}
	if links > 1 {
		poll(ctx, linkWait, "", func() (bool, error) {
			n, err := h.sessionsServing(ctx, e, endpoint)
			seen = max(seen, n)
			return err == nil && n >= links, nil
		})
	}
	return ag, seen, nil
}

// linkWait is how long startAgentLinks waits for links beyond the first.
const linkWait = 3 * time.Second

// sessionsServing is the number of agent links e lists with endpoint.
func (h *harness) sessionsServing(ctx context.Context, e *edgeProc, endpoint string) (int, error) {
	var ag struct {
		Agents []struct {
			Endpoints []string `json:"endpoints"`
		} `json:"agents"`
	}
	if err := h.getJSON(ctx, "http://"+e.adminAddr+"/status/agents", &ag); err != nil {
		return 0, err
	}
	n := 0
	for _, a := range ag.Agents {
		if slices.ContainsFunc(a.Endpoints, func(s string) bool { return strings.HasPrefix(s, endpoint+"/") }) {
			n++
		}
	}
	return n, nil
}

// stopAgent stops an agent the way an operator would (SIGTERM: it closes
// its links), so that the edge stops routing to it at once rather than
// after the QUIC idle timeout, and waits until e lists no link serving
// endpoint (if not empty).
func (h *harness) stopAgent(ctx context.Context, e *edgeProc, ag *proc, endpoint string) error {
	if !ag.exited() {
		terminate(ag.pid())
		select {
		case <-ag.done:
		case <-time.After(10 * time.Second):
			ag.kill()
		}
	}
	if endpoint == "" {
		return nil
	}
	return poll(ctx, 30*time.Second, "no link serving "+endpoint, func() (bool, error) {
		n, err := h.sessionsServing(ctx, e, endpoint)
		return err == nil && n == 0, err
	})
}

// runBLinks repeats B's pico run with an agent of --agent-connections
// links in place of the one-link agent (which the caller has stopped).
func (h *harness) runBLinks(ctx context.Context, e *edgeProc, direct, pico string) error {
	b := h.res.Bulk
	n := h.opts.AgentConns
	ag, seen, err := h.startAgentLinks(ctx, e, "agent-links", "http", "bench", h.upAddr, n)
	if err != nil {
		return err
	}
	defer ag.kill()
	watch := []cpuWatch{{"edge", e.proc}, {"agent", ag}, {"upstream", h.upstream}}
	if err := h.verify(ctx, pico, "/1m", true, bigBody); err != nil {
		return err
	}
	if _, err := h.wrk(ctx, "warm-up", pico+"/1m", b.Conns, h.opts.Warmup, watch, false); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	var runs []WrkRun
	var rates []float64
	for i := 0; i < h.opts.Repeat; i++ {
		h.waitQuiet(ctx, fmt.Sprintf("/1m with %d agent links", n))
		h.logf("B: /1m, %d conns, %s through pico with an agent of %d links (%d/%d)", b.Conns, h.opts.Duration, n, i+1, h.opts.Repeat)
		r, err := h.wrk(ctx, "pico", pico+"/1m", b.Conns, h.opts.Duration, watch, true)
		if err != nil {
			return err
		}
		runs = append(runs, r)
		rates = append(rates, r.Result.TransferBPS/(1<<20))
	}
	med := median(rates)
	i := slices.Index(rates, med)
	h.linkNote("B", n, seen)
	row := BulkLinkRow{Links: n, LinksSeen: seen, Pico: runs[i], MiBps: med,
		RatioPct: pct(med, b.DirectMiBps), VsOneLinkPct: pct(med, b.PicoMiBps), CPUPerGiB: map[string]float64{}}
	if gib := runs[i].Result.TransferBPS * runs[i].Result.Seconds / (1 << 30); gib > 0 {
		for role, s := range runs[i].CPUSeconds {
			row.CPUPerGiB[role] = s / gib
		}
	}
	h.res.BulkLinks = append(h.res.BulkLinks, row)
	return nil
}

// linkNote records what --agent-connections n came to: seen links to the
// one edge node.
func (h *harness) linkNote(scenario string, n, seen int) {
	note := fmt.Sprintf("%s: pico-agent --connections %d against one edge node: the edge listed %d link(s) serving the endpoint", scenario, n, seen)
	if seen < n {
		note += " (the agent links each node once; its other slots redial, are told \"linked already\", and retry with backoff)"
	}
	h.res.LinkNotes = append(h.res.LinkNotes, note)
}
