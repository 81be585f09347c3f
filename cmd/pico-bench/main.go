// Command pico-bench is the load harness behind `just bench`.
//
// It builds pico-edge, pico-agent and itself into a temporary directory,
// starts an upstream HTTP server, an edge and an agent as separate processes
// on 127.0.0.1 ephemeral ports, and measures, always in the same run as the
// direct baseline each figure is divided by:
//
//	A  small requests (wrk, 12-byte body) direct vs through Pico, at 1, 16, 64 and 256 connections (--conns)
//	B  1 MiB responses at 4 connections, direct vs through Pico; then again with an agent started with
//	   pico-agent --connections N (--agent-connections; against one edge node it keeps one link)
//	C  a plain quic-go one-stream copy between two processes, the QUIC stack's bulk limit,
//	   and the ratio of B's Pico throughput to it
//	D  edge RSS per idle agent link, and per endpoint
//	E  small requests over HTTPS: HTTP/2 (h2load) and HTTP/3 (the h3load subcommand) through the
//	   edge's TLS front door, each against the upstream's own TLS listener speaking the same protocol,
//	   at the connection counts of A, 10 streams each (fewer at 64 and 256, to stay within the
//	   edge's 256 in-flight requests per endpoint)
//	F  cross-node relay: small requests through the node the agent is linked to, and through
//	   another node of the cluster that relays them, at 1, 16 and 64 connections
//	G  one 1 GiB POST (--upload-mib), which the upstream reads and answers with its length
//	H  TCP forward: pico-agent forward -> edge -> an agent serving a tcp endpoint -> a TCP sink/echo
//	   upstream; bulk at 1 and 4 connections (--tcp-bulk-mib per run; its ratio to C), request/response
//	   (64-byte ping-pong) at 1, 16 and 64 connections; bulk again with agents of --agent-connections links
//	I  WebSocket echo (64-byte messages) at 1, 16 and 64 connections
//	T  the tunnel floor: small requests and 1 MiB through a bare TCP-QUIC-TCP pipe over quic-go
//	X  the agent's TCP transport beside QUIC in the same run: small requests at 1 and 16 connections
//	   (and p50 at 1), 1 MiB responses at 4, TCP forward bulk at 1, each with --transport quic and tcp
//	S  scale: 1,000 idle agent links × 10 endpoints on one edge and on one node of three:
//	   RSS and live heap per agent and per endpoint, gossip state size, time until routable everywhere
//	R  registrations per second from one agent link and from ten
//	W  10,000 concurrent idle WebSockets through the edge vs straight to the upstream
//
// Every Pico run records the CPU seconds of the edge and agent(s) per 1000
// requests or per GiB, their peak RSS during that run alone (VmHWM, reset
// before it), and p50/p99/p99.9 where the client gives them (wrk through a
// Lua done hook). It prints tables to stdout and writes the raw figures as
// JSON (--json); when that file exists already, the run first compares
// each figure with it and prints the changes ("vs last").
//
// Usage:
//
//	pico-bench [--duration 10s] [--quick] [--scenarios a,b,c,d,e,g,h,i] [--conns 1,16,64,256]
//	           [--agent-connections 2] [--upload-mib 1024] [--tcp-bulk-mib 1024]
//	           [--idle-agents 200] [--json bench-results/latest.json]
//
// The subcommands upstream, quic-sink, quic-source, idle-agents, h3load,
// upload, tcp-upstream, tcpload and wsload are the harness's own helper
// processes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options configure one harness run.
type Options struct {
	Duration      time.Duration   // per wrk run (and the QUIC copy)
	Warmup        time.Duration   // wrk warm-up run before the measurements
	Scenarios     map[string]bool // "a" to "i"
	SmallConns    []int           // connection counts of A and E (default 1, 16, 64, 256)
	RRConns       []int           // connection counts of H's request/response and of I (default 1, 16, 64)
	AgentConns    int             // links of the second agent of B and H (1: none)
	UploadBytes   int64           // body of G's upload
	TCPBulkBytes  int64           // H's bulk copy, per connection, per run
	IdleAgents    int             // K of scenario D
	Repeat        int             // direct/pico pairs per measurement; the median ratio is reported
	QuietWait     time.Duration   // before each measurement, wait up to this long for other processes to go idle
	JSON          string          // results file
	History       bool            // also keep a timestamped copy next to JSON
	Settle        time.Duration   // interval between RSS samples in D
	SettleSamples int             // RSS samples in D (the last one counts)
	ScaleAgents   int             // links in S
	ScalePerAgent int             // endpoints per link in S
	RegEndpoints  int             // endpoints registered in R
	WSConns       int             // WebSockets in W
	Out           io.Writer       // tables
	Log           io.Writer       // progress
}

func main() {
	if len(os.Args) > 1 {
		if sub, ok := subcommands[os.Args[1]]; ok {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			err := sub(ctx, os.Args[2:])
			stop()
			if err != nil {
				fmt.Fprintf(os.Stderr, "pico-bench %s: %v\n", os.Args[1], err)
				os.Exit(1)
			}
			return
		}
	}
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "pico-bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := Run(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "pico-bench:", err)
		stop()
		os.Exit(1)
	}
}

var subcommands = map[string]func(ctx context.Context, args []string) error{
	"upstream":     runUpstream,
	"quic-sink":    runQUICSink,
	"quic-source":  runQUICSource,
	"idle-agents":  runIdleAgents,
	"h3load":       runH3Load,
	"upload":       runUpload,
	"tcp-upstream": runTCPUpstream,
	"tcpload":      runTCPLoad,
	"wsload":       runWSLoad,
	"reg-agents":   runRegAgents,
	"ws-upstream":  runWSUpstream,
	"ws-clients":   runWSClients,
	"floor-edge":   runFloorEdge,
	"floor-agent":  runFloorAgent,
}

var allScenarios = []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "t", "x", "s", "r", "w"}

func parseFlags(args []string) (Options, error) {
	fs := flag.NewFlagSet("pico-bench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: pico-bench [flags]\n\n"+
			"Load harness: builds pico-edge and pico-agent, runs wrk, h2load and its own load clients against them\n"+
			"on 127.0.0.1, and reports every Pico figure as a ratio of a baseline measured in the same run.\n\n"+
			"Helper subcommands (started by the harness): upstream, quic-sink, quic-source, idle-agents, h3load,\n"+
			"upload, tcp-upstream, tcpload, wsload, reg-agents, ws-upstream, ws-clients.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	duration := fs.Duration("duration", 10*time.Second, "length of each wrk run and of the QUIC copy (whole seconds, at least 1s)")
	quick := fs.Bool("quick", false, "smoke mode: 3s runs (unless --duration is given), shorter warm-up and settle")
	scenarios := fs.String("scenarios", "a,b,c,d,e,g,h,i,t,x", "scenarios to run, comma separated, or all: a (small requests), b (1 MiB responses), c (quic-go copy), d (idle agent memory), e (small requests over HTTP/2 and HTTP/3), f (cross-node relay), g (1 GiB upload), h (TCP forward), i (WebSocket echo), t (small requests through the tunnel floor: a bare TCP-QUIC-TCP pipe over quic-go), x (the agent's TCP transport beside QUIC: small requests, 1 MiB responses, TCP forward bulk), s (scale: 10,000 endpoints), r (registrations per second), w (10,000 idle WebSockets)")
	conns := fs.String("conns", "1,16,64,256", "connection counts of scenarios A (HTTP/1.1) and E (HTTP/2, HTTP/3), comma separated")
	agentConns := fs.Int("agent-connections", 2, "B and H also measure an agent started with pico-agent --connections N (links to the one edge node), beside the one-link agent; 1: don't")
	upload := fs.Int64("upload-mib", 1024, "size of scenario G's upload in MiB (--quick: 256 unless given)")
	tcpBulk := fs.Int64("tcp-bulk-mib", 1024, "bytes each connection of scenario H's bulk copy sends, in MiB (--quick: 256 unless given)")
	idle := fs.Int("idle-agents", 200, "idle agent links K in scenario D")
	scaleAgents := fs.Int("scale-agents", 1000, "idle agent links in scenario S")
	scalePer := fs.Int("scale-endpoints-per-agent", 10, "endpoints per agent link in scenario S")
	regEPs := fs.Int("reg-endpoints", 10000, "endpoints registered at once in scenario R")
	wsConns := fs.Int("ws-conns", 10000, "concurrent idle WebSockets in scenario W")
	quietWait := fs.Duration("quiet-wait", 30*time.Second, "before each measurement, wait up to this long for other processes' CPU use to drop below 0.15 cores (0: don't wait); the run proceeds, flagged, if it does not")
	repeat := fs.Int("repeat", 1, "run each direct/pico pair (and the QUIC copy) this many times, interleaved, and report the median ratio; use 3 on a busy machine")
	jsonPath := fs.String("json", "bench-results/latest.json", "file the JSON results are written to (its directory is created)")
	history := fs.Bool("history", true, "also write a timestamped copy of the JSON results next to --json, for comparing runs")
	if err := fs.Parse(args); err != nil {
		return Options{}, err
	}
	if fs.NArg() > 0 {
		return Options{}, fmt.Errorf("unexpected argument %q (subcommands: upstream, quic-sink, quic-source, idle-agents, h3load, upload, tcp-upstream, tcpload, wsload, reg-agents, ws-upstream, ws-clients)", fs.Arg(0))
	}
	durationSet := isSet(fs, "duration")
	var err error

	o := Options{
		AgentConns:    *agentConns,
		UploadBytes:   *upload << 20,
		TCPBulkBytes:  *tcpBulk << 20,
		Duration:      *duration,
		Warmup:        2 * time.Second,
		IdleAgents:    *idle,
		ScaleAgents:   *scaleAgents,
		ScalePerAgent: *scalePer,
		RegEndpoints:  *regEPs,
		WSConns:       *wsConns,
		Repeat:        *repeat,
		QuietWait:     *quietWait,
		JSON:          *jsonPath,
		History:       *history,
		Settle:        time.Second,
		SettleSamples: 4,
		Out:           os.Stdout,
		Log:           os.Stderr,
	}
	if *quick {
		if !durationSet {
			o.Duration = 3 * time.Second
		}
		o.Warmup = time.Second
		o.Settle = 500 * time.Millisecond
		o.SettleSamples = 3
		if !isSet(fs, "quiet-wait") {
			o.QuietWait = 5 * time.Second
		}
		if !isSet(fs, "upload-mib") {
			o.UploadBytes = 256 << 20
		}
		if !isSet(fs, "tcp-bulk-mib") {
			o.TCPBulkBytes = 256 << 20
		}
	}
	if *upload < 1 || *tcpBulk < 1 {
		return Options{}, fmt.Errorf("--upload-mib %d, --tcp-bulk-mib %d: want at least 1", *upload, *tcpBulk)
	}
	if o.SmallConns, err = parseInts(*conns); err != nil {
		return Options{}, fmt.Errorf("--conns: %w", err)
	}
	sc, err := parseScenarios(*scenarios)
	if err != nil {
		return Options{}, err
	}
	o.Scenarios = sc
	return o, o.validate()
}

// parseInts parses a comma-separated list of integers.
func parseInts(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("empty list")
	}
	return out, nil
}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func parseScenarios(s string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, p := range strings.Split(s, ",") {
		p = strings.ToLower(strings.TrimSpace(p))
		switch p {
		case "":
		case "all":
			for _, k := range allScenarios {
				out[k] = true
			}
		default:
			if !slices.Contains(allScenarios, p) {
				return nil, fmt.Errorf("--scenarios: unknown scenario %q (want one of %s, or all)", p, strings.Join(allScenarios, ", "))
			}
			out[p] = true
		}
	}
	if len(out) == 0 {
		return nil, errors.New("--scenarios: none selected")
	}
	return out, nil
}

func (o *Options) validate() error {
	if o.Duration < time.Second || o.Duration%time.Second != 0 {
		return fmt.Errorf("--duration %s: want whole seconds, at least 1s (wrk's unit)", o.Duration)
	}
	if o.Duration > 10*time.Minute {
		return fmt.Errorf("--duration %s: at most 10m", o.Duration)
	}
	if o.Scenarios["d"] && (o.IdleAgents < 1 || o.IdleAgents > 5000) {
		return fmt.Errorf("--idle-agents %d: want 1 to 5000", o.IdleAgents)
	}
	if err := o.validateScale(); err != nil {
		return err
	}
	if o.Repeat == 0 {
		o.Repeat = 1
	}
	if len(o.SmallConns) == 0 {
		o.SmallConns = []int{1, 16, 64, 256}
	}
	if len(o.RRConns) == 0 {
		o.RRConns = []int{1, 16, 64}
	}
	for _, n := range o.SmallConns {
		if n < 1 || n > 1000 {
			return fmt.Errorf("--conns %d: want 1 to 1000", n)
		}
	}
	if o.AgentConns == 0 {
		o.AgentConns = 1
	}
	if o.AgentConns < 1 || o.AgentConns > 8 {
		return fmt.Errorf("--agent-connections %d: want 1 to 8 (pico-agent's limit)", o.AgentConns)
	}
	if o.UploadBytes == 0 {
		o.UploadBytes = 1 << 30
	}
	if o.TCPBulkBytes == 0 {
		o.TCPBulkBytes = 1 << 30
	}
	if o.UploadBytes < 1<<20 || o.UploadBytes > 64<<30 || o.TCPBulkBytes < 1<<20 || o.TCPBulkBytes > 64<<30 {
		return fmt.Errorf("--upload-mib %d, --tcp-bulk-mib %d: want 1 to 65536", o.UploadBytes>>20, o.TCPBulkBytes>>20)
	}
	if o.Repeat < 1 || o.Repeat > 20 {
		return fmt.Errorf("--repeat %d: want 1 to 20", o.Repeat)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.SettleSamples < 1 {
		o.SettleSamples = 1
	}
	return nil
}
