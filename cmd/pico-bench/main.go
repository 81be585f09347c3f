// Command pico-bench is the load harness behind `just bench`.
//
// It builds pico-edge, pico-agent and itself into a temporary directory,
// starts an upstream HTTP server, an edge and an agent as separate processes
// on 127.0.0.1 ephemeral ports, and measures, always in the same run as the
// direct baseline each figure is divided by:
//
//	A  small requests (wrk, 12-byte body) direct vs through Pico, at 1, 16 and 64 connections
//	B  1 MiB responses at 4 connections, direct vs through Pico
//	C  a plain quic-go one-stream copy between two processes, the QUIC stack's bulk limit,
//	   and the ratio of B's Pico throughput to it
//	D  edge RSS per idle agent link, and per endpoint
//	E  small requests over HTTPS: HTTP/2 (h2load) and HTTP/3 (the h3load subcommand) through the
//	   edge's TLS front door, each against the upstream's own TLS listener speaking the same protocol
//	F  cross-node relay: small requests through the node the agent is linked to, and through
//	   another node of the cluster that relays them, at 1, 16 and 64 connections
//	S  scale: 1,000 idle agent links × 10 endpoints on one edge and on one node of three:
//	   RSS and live heap per agent and per endpoint, gossip state size, time until routable everywhere
//	R  registrations per second from one agent link and from ten
//	W  10,000 concurrent idle WebSockets through the edge vs straight to the upstream
//
// It prints tables to stdout and writes the raw figures as JSON (--json).
//
// Usage:
//
//	pico-bench [--duration 10s] [--quick] [--scenarios a,b,c,d,e] [--idle-agents 200] [--json bench-results/latest.json]
//
// The subcommands upstream, quic-sink, quic-source, idle-agents and h3load
// are the harness's own helper processes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Options configure one harness run.
type Options struct {
	Duration      time.Duration   // per wrk run (and the QUIC copy)
	Warmup        time.Duration   // wrk warm-up run before the measurements
	Scenarios     map[string]bool // "a", "b", "c", "d", "e"
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
	"upstream":    runUpstream,
	"quic-sink":   runQUICSink,
	"quic-source": runQUICSource,
	"idle-agents": runIdleAgents,
	"h3load":      runH3Load,
	"reg-agents":  runRegAgents,
	"ws-upstream": runWSUpstream,
	"ws-clients":  runWSClients,
}

var allScenarios = []string{"a", "b", "c", "d", "e", "f", "s", "r", "w"}

func parseFlags(args []string) (Options, error) {
	fs := flag.NewFlagSet("pico-bench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: pico-bench [flags]\n\n"+
			"Load harness: builds pico-edge and pico-agent, runs wrk and a quic-go copy against them\n"+
			"on 127.0.0.1, and reports every Pico figure as a ratio of a baseline measured in the same run.\n\n"+
			"Helper subcommands (started by the harness): upstream, quic-sink, quic-source, idle-agents, h3load.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	duration := fs.Duration("duration", 10*time.Second, "length of each wrk run and of the QUIC copy (whole seconds, at least 1s)")
	quick := fs.Bool("quick", false, "smoke mode: 3s runs (unless --duration is given), shorter warm-up and settle")
	scenarios := fs.String("scenarios", "a,b,c,d,e", "scenarios to run, comma separated: a (small requests), b (1 MiB responses), c (quic-go copy), d (idle agent memory), e (small requests over HTTP/2 and HTTP/3), f (cross-node relay), s (scale: 10,000 endpoints), r (registrations per second), w (10,000 idle WebSockets)")
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
		return Options{}, fmt.Errorf("unexpected argument %q (subcommands: upstream, quic-sink, quic-source, idle-agents, h3load)", fs.Arg(0))
	}
	durationSet := isSet(fs, "duration")

	o := Options{
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
	}
	sc, err := parseScenarios(*scenarios)
	if err != nil {
		return Options{}, err
	}
	o.Scenarios = sc
	return o, o.validate()
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
		case "a", "b", "c", "d", "e", "f", "s", "r", "w":
			out[p] = true
		default:
			return nil, fmt.Errorf("--scenarios: unknown scenario %q (want a, b, c, d, e, f, s, r, w or all)", p)
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
