package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/quicutil"
)

// Scenarios S (scale) and R (registrations per second).
//
// S connects ScaleAgents idle agent links serving ScalePerAgent endpoints
// each (1,000 × 10 by default) to one edge, then to the first node of a
// three-node cluster, and reads each node's RSS and live Go heap (its
// /metrics after a forced GC: GET /debug/pprof/heap?gc=1 with the admin
// token) before and after, the owner's gossip state size
// (pico_gossip_state_bytes), and the time until every node routes every
// endpoint (pico_endpoints, polled every 50 ms).
//
// R registers endpoints from one agent link (and from ten) as fast as the
// edge admits: with --registrations-per-second raised out of the way, and
// with the default limit.

// ScaleResult is scenario S. Memory in KiB, heap in bytes.
type ScaleResult struct {
	Agents    int `json:"agents"`
	PerAgent  int `json:"endpoints_per_agent"`
	Endpoints int `json:"endpoints"`

	// Single node, Agents links × PerAgent endpoints.
	Single ScaleNode `json:"single_node"`
	// Single node, EPLinks links × EPPerLink endpoints: the endpoint cost
	// with few links.
	EPLinks    int         `json:"ep_links"`
	EPPerLink  int         `json:"ep_per_link"`
	EPOnly     ScaleNode   `json:"single_node_few_links"`
	HeapPerEP  float64     `json:"heap_bytes_per_endpoint"` // EPOnly heap delta / endpoints
	HeapPerAg  float64     `json:"heap_bytes_per_agent"`    // (Single heap delta - endpoints × HeapPerEP) / agents
	RSSPerAgKB float64     `json:"rss_kib_per_agent"`       // Single RSS delta / agents (endpoints included)
	GossipB    float64     `json:"gossip_state_bytes"`      // single node
	GossipPerE float64     `json:"gossip_bytes_per_endpoint"`
	Cluster    []ScaleNode `json:"cluster,omitempty"` // node-1 (owner), node-2, node-3
	// ClusterGossipB is pico_gossip_state_bytes of node-1.
	ClusterGossipB float64 `json:"cluster_gossip_state_bytes,omitempty"`
	// RegisterSeconds: from starting the agents until node-1 routes them
	// all; RoutableSeconds: until every node does; PropagationSeconds is
	// the difference: how long the last endpoints took to reach the others.
	RegisterSeconds    float64 `json:"register_seconds,omitempty"`
	RoutableSeconds    float64 `json:"routable_everywhere_seconds,omitempty"`
	PropagationSeconds float64 `json:"propagation_after_owner_seconds,omitempty"`
	// Reconnects are agent connections node-1 accepted beyond one per
	// link (pico_agent_connections_total - agents): links that dropped
	// and came back, which slow registration down.
	Reconnects int `json:"reconnects"`
	// Burst: BurstEndpoints more endpoints over BurstLinks links,
	// registered at once on node-1 (registration limits raised); the time
	// from starting them until node-1 routes them all, and until every
	// node does.
	BurstLinks        int     `json:"burst_links,omitempty"`
	BurstEndpoints    int     `json:"burst_endpoints,omitempty"`
	BurstOwnerSeconds float64 `json:"burst_owner_seconds,omitempty"`
	BurstAllSeconds   float64 `json:"burst_everywhere_seconds,omitempty"`
}

// ScaleNode is one edge process before and after the agents came.
type ScaleNode struct {
	Name          string  `json:"name"`
	RSSBeforeKiB  int64   `json:"rss_before_kib"`
	RSSAfterKiB   int64   `json:"rss_after_kib"`
	HeapBefore    float64 `json:"heap_before_bytes"` // go_memstats_heap_alloc_bytes after a forced GC
	HeapAfter     float64 `json:"heap_after_bytes"`
	StackBefore   float64 `json:"stack_before_bytes"`
	StackAfter    float64 `json:"stack_after_bytes"`
	Goroutines    float64 `json:"goroutines_after"`
	HeapPerEP     float64 `json:"heap_bytes_per_endpoint"` // heap delta / endpoints
	RSSPerEPKiB   float64 `json:"rss_kib_per_endpoint"`
	Endpoints     int     `json:"endpoints"`
	RoutedSeconds float64 `json:"routed_seconds,omitempty"` // cluster: from agents' start until this node routes all
}

// RegResult is scenario R.
type RegResult struct {
	Rows []RegRow `json:"rows"`
}

// RegRow is one registration run: Endpoints registered over Links links,
// all at once (one Register message each), after each link's first.
type RegRow struct {
	Limit     string  `json:"limit"` // the edge's --registrations-per-second
	Links     int     `json:"links"`
	Endpoints int     `json:"endpoints"` // timed ones
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
	EdgeCPU   float64 `json:"edge_cpu_seconds"`
}

// adminToken returns the token file the S edges share, creating it.
func (h *harness) adminToken() (file, token string, err error) {
	file = filepath.Join(h.tmp, "admin.token")
	if b, err := os.ReadFile(file); err == nil {
		return file, strings.TrimSpace(string(b)), nil
	}
	b := make([]byte, 16)
	rand.Read(b)
	token = hex.EncodeToString(b)
	return file, token, os.WriteFile(file, []byte(token+"\n"), 0o600)
}

// edgeMetrics reads an edge's /metrics into name{labels} → value.
func (h *harness) edgeMetrics(ctx context.Context, e *edgeProc) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+e.adminAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET /metrics of %s: %s", e.name, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			out[l[:i]] = v
		}
	}
	return out, sc.Err()
}

// heapAfterGC forces a GC in the edge (its pprof heap endpoint with gc=1)
// and returns its metrics, whose go_memstats_heap_alloc_bytes is then the
// live heap.
func (h *harness) heapAfterGC(ctx context.Context, e *edgeProc, token string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+e.adminAddr+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := h.http.Do(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET /debug/pprof/heap of %s: %s", e.name, resp.Status)
	}
	return h.edgeMetrics(ctx, e)
}

// snapshot is an edge's RSS (after settling) and live heap.
func (h *harness) snapshot(ctx context.Context, e *edgeProc, token string) (rss int64, m map[string]float64, err error) {
	s, err := h.settleRSS(ctx, e.proc)
	if err != nil {
		return 0, nil, err
	}
	m, err = h.heapAfterGC(ctx, e, token)
	return s[len(s)-1], m, err
}

func (sn *ScaleNode) before(rss int64, m map[string]float64) {
	sn.RSSBeforeKiB, sn.HeapBefore, sn.StackBefore = rss, m["go_memstats_heap_alloc_bytes"], m["go_memstats_stack_inuse_bytes"]
}

func (sn *ScaleNode) after(rss int64, m map[string]float64, eps int) {
	sn.RSSAfterKiB, sn.HeapAfter, sn.StackAfter = rss, m["go_memstats_heap_alloc_bytes"], m["go_memstats_stack_inuse_bytes"]
	sn.Goroutines = m["go_goroutines"]
	sn.Endpoints = eps
	sn.HeapPerEP = (sn.HeapAfter - sn.HeapBefore) / float64(eps)
	sn.RSSPerEPKiB = float64(sn.RSSAfterKiB-sn.RSSBeforeKiB) / float64(eps)
}

// startIdleAgents starts the idle-agents helper against e and waits for
// its ready line.
func (h *harness) startIdleAgents(ctx context.Context, e *edgeProc, n, per int, prefix string) (*proc, error) {
	ia, err := h.procs.start("idle-agents", false, h.binary("pico-bench"), "idle-agents",
		"--n", strconv.Itoa(n), "--endpoints", strconv.Itoa(per), "--edge", e.agentAddr,
		"--ca", e.caFile(), "--upstream", "127.0.0.1:9", "--prefix", prefix, "--connect-timeout", "5m", "--connections", "1")
	if err != nil {
		return nil, err
	}
	return ia, nil
}

// waitRouted polls pico_endpoints (and pico_agents when agents > 0) of e.
func (h *harness) waitRouted(ctx context.Context, e *edgeProc, agents, eps int, timeout time.Duration) error {
	return poll(ctx, timeout, fmt.Sprintf("%d agents and %d endpoints on %s", agents, eps, e.name), func() (bool, error) {
		m, err := h.edgeMetrics(ctx, e)
		if err != nil {
			return false, err
		}
		return int(m["pico_endpoints"]) == eps && (agents == 0 || int(m["pico_agents"]) == agents), nil
	})
}

// scaleSingle measures one fresh edge before and after n links × per
// endpoints.
func (h *harness) scaleSingle(ctx context.Context, name string, n, per int, extra ...string) (ScaleNode, float64, error) {
	sn := ScaleNode{Name: name}
	tokFile, tok, err := h.adminToken()
	if err != nil {
		return sn, 0, err
	}
	e, err := h.startEdge(ctx, name, false, append([]string{"--admin-token-file", tokFile, "--admin-pprof"}, extra...)...)
	if err != nil {
		return sn, 0, err
	}
	defer e.kill()
	rss, m, err := h.snapshot(ctx, e, tok)
	if err != nil {
		return sn, 0, err
	}
	sn.before(rss, m)
	start := time.Now()
	ia, err := h.startIdleAgents(ctx, e, n, per, name)
	if err != nil {
		return sn, 0, err
	}
	defer ia.kill()
	if err := h.waitRouted(ctx, e, n, n*per, 5*time.Minute); err != nil {
		if ia.exited() {
			err = fmt.Errorf("%w; idle-agents exited:\n%s", err, ia.tail(10))
		}
		return sn, 0, err
	}
	sn.RoutedSeconds = time.Since(start).Seconds()
	// Links that dropped (a loaded host) come back: wait for that, up to
	// three times, before the figures count.
	var m2 map[string]float64
	for try := 0; ; try++ {
		rss, m2, err = h.snapshot(ctx, e, tok)
		if err != nil {
			return sn, 0, err
		}
		if int(m2["pico_agents"]) == n && int(m2["pico_endpoints"]) == n*per {
			break
		}
		if try == 2 {
			return sn, 0, fmt.Errorf("%s: %v of %d agents linked after the settle", name, m2["pico_agents"], n)
		}
		if err := h.waitRouted(ctx, e, n, n*per, time.Minute); err != nil {
			return sn, 0, err
		}
	}
	sn.after(rss, m2, n*per)
	if re := int(m2["pico_agent_connections_total"]) - n; re > 0 {
		h.warn("S: %s accepted %d agent connections more than its %d links: links dropped and reconnected (a loaded host: they time out after %s of silence)", name, re, n, quicutil.AgentIdleTimeout)
	}
	return sn, m2["pico_gossip_state_bytes"], nil
}

// runS is scenario S.
func (h *harness) runS(ctx context.Context) error {
	n, per := h.opts.ScaleAgents, h.opts.ScalePerAgent
	eps := n * per
	r := &ScaleResult{Agents: n, PerAgent: per, Endpoints: eps}
	h.res.Scale = r
	h.logf("S: one edge, %d idle agent links × %d endpoints", n, per)
	sn, gossip, err := h.scaleSingle(ctx, "scale-single", n, per)
	if err != nil {
		return err
	}
	r.Single, r.GossipB, r.GossipPerE = sn, gossip, gossip/float64(eps)
	r.RSSPerAgKB = float64(sn.RSSAfterKiB-sn.RSSBeforeKiB) / float64(n)

	// The endpoints' own cost: the same endpoints over few links, which
	// needs the per-link endpoint and registration limits raised.
	r.EPLinks = max(1, min(10, n))
	r.EPPerLink = (eps + r.EPLinks - 1) / r.EPLinks
	h.logf("S: one edge, %d links × %d endpoints", r.EPLinks, r.EPPerLink)
	ep, _, err := h.scaleSingle(ctx, "scale-endpoints", r.EPLinks, r.EPPerLink,
		"--max-endpoints-per-agent="+strconv.Itoa(r.EPPerLink), "--registrations-per-second=1000000")
	if err != nil {
		return err
	}
	r.EPOnly = ep
	r.HeapPerEP = ep.HeapPerEP
	r.HeapPerAg = (sn.HeapAfter - sn.HeapBefore - float64(eps)*r.HeapPerEP) / float64(n)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return h.scaleCluster(ctx, r)
}

// scaleCluster is the three-node half of S: the agents link to node-1;
// nodes 2 and 3 learn the endpoints by gossip.
func (h *harness) scaleCluster(ctx context.Context, r *ScaleResult) error {
	n, per, eps := r.Agents, r.PerAgent, r.Endpoints
	tokFile, tok, err := h.adminToken()
	if err != nil {
		return err
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	keyFile := filepath.Join(h.tmp, "scale-cluster.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return err
	}
	burstLinks, burstPer := 10, (eps+9)/10
	common := []string{"--cluster-secret-file", keyFile, "--admin-token-file", tokFile, "--admin-pprof",
		// for the burst only; the idle links serve per (at most 100) each
		"--max-endpoints-per-agent=" + strconv.Itoa(max(100, burstPer+1)), "--registrations-per-second=1000000"}
	h.logf("S: three-node cluster, %d links × %d endpoints on node-1", n, per)
	var nodes []*edgeProc
	join := ""
	for i := 1; i <= 3; i++ {
		args := common
		if join != "" {
			args = append(append([]string{}, common...), "--join", join)
		}
		e, err := h.startEdge(ctx, fmt.Sprintf("scale-node-%d", i), false, args...)
		if err != nil {
			return err
		}
		defer e.kill()
		nodes = append(nodes, e)
		if join == "" {
			var started struct {
				Msg    string `json:"msg"`
				Gossip string `json:"gossip_addr"`
			}
			if _, err := e.waitLine(ctx, 10*time.Second, jsonLine(&started, func() bool {
				return started.Msg == "cluster member started" && started.Gossip != ""
			})); err != nil {
				return err
			}
			join = started.Gossip
		}
	}
	for _, e := range nodes {
		if err := poll(ctx, 30*time.Second, e.name+" sees 3 members", func() (bool, error) {
			m, err := h.edgeMetrics(ctx, e)
			return err == nil && m["pico_cluster_members"] == 3, err
		}); err != nil {
			return err
		}
	}
	snaps := make([]ScaleNode, len(nodes))
	for i, e := range nodes {
		rss, m, err := h.snapshot(ctx, e, tok)
		if err != nil {
			return err
		}
		snaps[i].Name = e.name
		snaps[i].before(rss, m)
	}
	start := time.Now()
	ia, err := h.startIdleAgents(ctx, nodes[0], n, per, "scale-cluster")
	if err != nil {
		return err
	}
	defer ia.kill()
	routed, err := h.routedEverywhere(ctx, nodes, eps, start, ia)
	if err != nil {
		return err
	}
	r.RegisterSeconds = routed[0]
	for i := range nodes {
		snaps[i].RoutedSeconds = routed[i]
		r.RoutableSeconds = max(r.RoutableSeconds, routed[i])
	}
	r.PropagationSeconds = r.RoutableSeconds - r.RegisterSeconds
	for i, e := range nodes {
		rss, m, err := h.snapshot(ctx, e, tok)
		if err != nil {
			return err
		}
		snaps[i].after(rss, m, eps)
		if i == 0 {
			r.ClusterGossipB = m["pico_gossip_state_bytes"]
			r.Reconnects = int(m["pico_agent_connections_total"]) - n
			if int(m["pico_agents"]) != n {
				return fmt.Errorf("node-1: %v of %d agents still linked after the settle", m["pico_agents"], n)
			}
		}
	}
	r.Cluster = snaps
	if r.Reconnects > 0 {
		h.warn("S: node-1 accepted %d agent connections more than the %d links: links dropped and reconnected (a loaded host: agent links time out after %s of silence)", r.Reconnects, n, quicutil.AgentIdleTimeout)
	}

	h.logf("S: burst of %d more endpoints over %d links on node-1", burstLinks*burstPer, burstLinks)
	start = time.Now()
	ra, err := h.procs.start("reg-agents", false, h.binary("pico-bench"), "reg-agents",
		"--n", strconv.Itoa(burstLinks), "--endpoints", strconv.Itoa(burstPer+1), "--edge", nodes[0].agentAddr, "--ca", nodes[0].caFile())
	if err != nil {
		return err
	}
	defer ra.kill()
	routed, err = h.routedEverywhere(ctx, nodes, eps+burstLinks*(burstPer+1), start, ra)
	if err != nil {
		return err
	}
	r.BurstLinks, r.BurstEndpoints = burstLinks, burstLinks*burstPer
	r.BurstOwnerSeconds = routed[0]
	for _, t := range routed {
		r.BurstAllSeconds = max(r.BurstAllSeconds, t)
	}
	return nil
}

// routedEverywhere polls pico_endpoints of every node together every 50 ms
// until each routes eps endpoints, and returns when each first did, in
// seconds since start. helper is the process adding them; its exit fails.
func (h *harness) routedEverywhere(ctx context.Context, nodes []*edgeProc, eps int, start time.Time, helper *proc) ([]float64, error) {
	routed := make([]float64, len(nodes))
	left := len(nodes)
	err := poll(ctx, 5*time.Minute, fmt.Sprintf("%d endpoints routable from every node", eps), func() (bool, error) {
		if helper.exited() {
			return false, fmt.Errorf("%s exited:\n%s", helper.name, helper.tail(10))
		}
		var wg sync.WaitGroup
		got := make([]float64, len(nodes))
		for i, e := range nodes {
			if routed[i] == 0 {
				wg.Go(func() {
					if m, err := h.edgeMetrics(ctx, e); err == nil {
						got[i] = m["pico_endpoints"]
					}
				})
			}
		}
		wg.Wait()
		now := time.Since(start).Seconds()
		for i := range nodes {
			if routed[i] == 0 && int(got[i]) == eps {
				routed[i] = now
				left--
			}
		}
		return left == 0, nil
	})
	return routed, err
}

// runR is scenario R.
func (h *harness) runR(ctx context.Context) error {
	total := h.opts.RegEndpoints
	res := &RegResult{}
	h.res.Regs = res
	runs := []struct {
		limit       string
		links, eps  int // eps per link, the first (untimed) included
		extra       []string
		maxPerAgent int
	}{
		{"1000000", 1, total + 1, nil, total + 1},
		{"1000000", 10, total/10 + 1, nil, total/10 + 1},
		// The default: 10 a second, a burst of 20, 100 endpoints a link.
		{"10 (default)", 1, 100, nil, 0},
	}
	for _, run := range runs {
		name := "reg-" + strconv.Itoa(run.links)
		args := []string{}
		if run.maxPerAgent > 0 {
			args = append(args, "--max-endpoints-per-agent="+strconv.Itoa(run.maxPerAgent), "--registrations-per-second="+run.limit)
		}
		e, err := h.startEdge(ctx, name, false, args...)
		if err != nil {
			return err
		}
		h.logf("R: %d link(s) registering %d endpoints each at once, --registrations-per-second %s", run.links, run.eps-1, run.limit)
		cpu0, _ := procCPU(e.pid())
		ra, err := h.procs.start("reg-agents", true, h.binary("pico-bench"), "reg-agents",
			"--n", strconv.Itoa(run.links), "--endpoints", strconv.Itoa(run.eps),
			"--edge", e.agentAddr, "--ca", e.caFile())
		if err != nil {
			e.kill()
			return err
		}
		var rr RegReady
		_, err = ra.waitLine(ctx, 5*time.Minute, jsonLine(&rr, func() bool { return rr.Endpoints > 0 }))
		cpu1, _ := procCPU(e.pid())
		if err == nil {
			err = h.waitRouted(ctx, e, run.links, run.links*run.eps, time.Minute)
		}
		ra.kill()
		e.kill()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		res.Rows = append(res.Rows, RegRow{Limit: run.limit, Links: run.links, Endpoints: rr.Endpoints,
			Seconds: rr.Seconds, PerSecond: float64(rr.Endpoints) / rr.Seconds, EdgeCPU: cpu1 - cpu0})
	}
	return nil
}

// RegReady is what reg-agents prints once every endpoint is registered.
type RegReady struct {
	Endpoints int     `json:"endpoints"` // timed registrations
	Seconds   float64 `json:"seconds"`
}

// runRegAgents connects --n agents, registers one endpoint on each (so
// each link is up), then registers the other --endpoints-1 of every agent
// all at once, one ServeUpstream call (one Register message) each, and
// prints how long those took to be acknowledged. It stays until killed.
func runRegAgents(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("reg-agents", flag.ContinueOnError)
	n := fs.Int("n", 1, "agents (QUIC connections)")
	perAgent := fs.Int("endpoints", 1000, "endpoints per agent, the first (untimed) included")
	edgeAddr := fs.String("edge", "", "edge agent address")
	caFile := fs.String("ca", "", "CA certificate (PEM) of the edge")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *perAgent < 2 || *edgeAddr == "" || *caFile == "" {
		return errors.New("--n must be positive and --endpoints at least 2; --edge and --ca are required")
	}
	pool, err := certs.LoadPool(*caFile)
	if err != nil {
		return err
	}
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	ctx, cancel := context.WithTimeout(ctx, maxLife)
	defer cancel()
	var wg sync.WaitGroup
	agents := make([]*agent.Agent, *n)
	for i := range agents {
		a, err := agent.New(agent.Config{Edges: []string{*edgeAddr}, RootCAs: pool, Name: "pico-bench/reg", Connections: 1})
		if err != nil {
			return err
		}
		agents[i] = a
		wg.Go(func() { a.Run(ctx) })
	}
	defer func() {
		for _, a := range agents {
			a.Close()
		}
		wg.Wait()
	}()
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Minute)
	defer ccancel()
	register := func(from, to int) error {
		var regs sync.WaitGroup
		var mu sync.Mutex
		var first error
		for i, a := range agents {
			for j := from; j < to; j++ {
				regs.Go(func() {
					id := fmt.Sprintf("reg-%d-%d", i, j)
					if err := a.ServeUpstream(cctx, id, quicutil.KindHTTP, "127.0.0.1:9"); err != nil {
						mu.Lock()
						first = cmpOr(first, fmt.Errorf("endpoint %s: %w", id, err))
						mu.Unlock()
					}
				})
			}
		}
		regs.Wait()
		return first
	}
	if err := register(0, 1); err != nil {
		return err
	}
	start := time.Now()
	if err := register(1, *perAgent); err != nil {
		return err
	}
	printJSON(RegReady{Endpoints: *n * (*perAgent - 1), Seconds: time.Since(start).Seconds()})
	<-ctx.Done()
	return nil
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
