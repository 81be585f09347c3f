package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// runF measures the cross-node relay: two edges in one cluster, the agent
// linked to the first only, wrk against the first (the baseline) and
// against the second, which relays every request to the first.
func (h *harness) runF(ctx context.Context) error {
	if h.upAddr == "" {
		if err := h.startUpstream(ctx); err != nil {
			return err
		}
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	keyFile := filepath.Join(h.tmp, "cluster.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return err
	}
	e1, err := h.startEdge(ctx, "node-1", false, "--cluster-secret-file", keyFile)
	if err != nil {
		return err
	}
	defer e1.kill()
	var started struct {
		Msg    string `json:"msg"`
		Gossip string `json:"gossip_addr"`
	}
	if _, err := e1.waitLine(ctx, 10*time.Second, jsonLine(&started, func() bool {
		return started.Msg == "cluster member started" && started.Gossip != ""
	})); err != nil {
		return err
	}
	e2, err := h.startEdge(ctx, "node-2", false, "--cluster-secret-file", keyFile, "--join", started.Gossip)
	if err != nil {
		return err
	}
	defer e2.kill()
	ag, err := h.procs.start("agent-f", false, h.binary("pico-agent"), "http", "bench", h.upAddr,
		"--edge", e1.agentAddr, "--ca", e1.caFile(), "--connections", "1", "--log-format", "json")
	if err != nil {
		return err
	}
	defer ag.kill()
	if err := poll(ctx, 30*time.Second, "endpoint bench routable from node-2", func() (bool, error) {
		if ag.exited() {
			return false, fmt.Errorf("agent exited:\n%s", ag.tail(10))
		}
		c, err := h.counts(ctx, e2)
		return err == nil && slices.Contains(c.ids, "bench"), err
	}); err != nil {
		return err
	}
	direct, node, relay := "http://"+h.upAddr, "http://"+e1.proxy, "http://"+e2.proxy
	if err := h.verify(ctx, relay, "/small", true, smallBody); err != nil {
		return err
	}
	watch := []cpuWatch{{"edge", e1.proc}, {"relay", e2.proc}, {"agent", ag}, {"upstream", h.upstream}}
	h.logf("warm-up /small, 16 conns, %s each through node-1 and node-2", h.opts.Warmup)
	for _, url := range []string{node, relay} {
		if _, err := h.wrk(ctx, "warm-up", url+"/small", 16, h.opts.Warmup, watch, false); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	rps := func(r WrkRun) float64 { return r.Result.RequestsPerSec }
	for _, conns := range []int{1, 16, 64} {
		h.waitQuiet(ctx, fmt.Sprintf("relay at %d conns", conns))
		dr, err := h.wrk(ctx, "direct", direct+"/small", conns, h.opts.Duration, watch, true)
		if err != nil {
			return err
		}
		// node-1 is the baseline of the relay: pair() runs them
		// interleaved and keeps the median ratio.
		nr, rr, pairs, err := h.pair(ctx, node, relay, "/small", conns, watch, rps)
		if err != nil {
			return err
		}
		nr.Target, rr.Target = "node", "relay"
		h.res.Relay = append(h.res.Relay, RelayRow{Conns: conns, Direct: dr, Node: nr, Relay: rr,
			ReqRatioPct:   pct(rps(rr), rps(nr)),
			P50RatioTimes: ratio(rr.Result.P50Us, nr.Result.P50Us),
			Pairs:         pairs})
	}
	return nil
}
