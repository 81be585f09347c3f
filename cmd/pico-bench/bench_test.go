package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const wrkSample = `Running 5s test @ http://127.0.0.1:40000/small
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   152.20us  110.41us   8.07ms   95.37%
    Req/Sec    52.53k     3.18k   58.44k    71.00%
  Latency Distribution
     50%  134.00us
     75%  160.00us
     90%  203.00us
     99%    1.55ms
  522840 requests in 5.00s, 62.33MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 2, timeout 4
Requests/sec: 104554.24
Transfer/sec:     12.46MB
p99.9_us: 4100
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk(wrkSample)
	if err != nil {
		t.Fatal(err)
	}
	want := WrkResult{
		Requests: 522840, Seconds: 5, RequestsPerSec: 104554.24, TransferBPS: 12.46 * (1 << 20),
		LatencyAvgUs: 152.2, LatencyMaxUs: 8070, P50Us: 134, P75Us: 160, P90Us: 203, P99Us: 1550, P999Us: 4100,
		Non2xx: 3, ErrRead: 1, ErrWrite: 2, ErrTimeout: 4,
	}
	if !approxEqual(r, want) {
		t.Errorf("parseWrk:\n got %+v\nwant %+v", r, want)
	}
	if r.Errors() != 10 {
		t.Errorf("Errors() = %d, want 10", r.Errors())
	}
	if _, err := parseWrk("Running 1s test @ http://x\nunable to connect to 127.0.0.1:1 Connection refused\n"); err == nil {
		t.Error("parseWrk accepted output without figures")
	}
}

const h2loadSample = `starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Application protocol: h2

finished in 1.00s, 28878.00 req/s, 959.30KB/s
requests: 28880 total, 28886 started, 28880 done, 28878 succeeded, 2 failed, 1 errored, 0 timeout
status codes: 28876 2xx, 2 3xx, 1 4xx, 0 5xx
traffic: 959.30KB (982324) total, 113.03KB (115740) headers (space savings 95.05%), 338.41KB (346536) data
                     min         max         mean         sd        +/- sd
time for request:       32us      7.82ms       252us       344us    95.90%
time for connect:     1.93ms      4.28ms      3.06ms      1.02ms    50.00%
`

func TestParseH2load(t *testing.T) {
	log := "1795627692235514\t200\t100\n1795627692235515\t200\t300\n1795627692235516\t-1\t5\n" +
		"1795627692235517\t200\t200\n1795627692235518\t404\t1\n"
	r, err := parseH2load(h2loadSample, strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 28876 || r.Errors != 4 || r.Seconds != 1 || r.RequestsPerSec != 28876 {
		t.Errorf("counts: %+v", r)
	}
	if r.P50Us != 200 || r.P99Us != 300 || r.MeanUs != 252 || r.MaxUs != 7820 {
		t.Errorf("latencies: %+v", r)
	}
	if _, err := parseH2load("starting benchmark...\nconnect error\n", nil); err == nil {
		t.Error("parseH2load accepted output without a summary")
	}
	var lr LoadResult
	lr.setLatencies([]float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10})
	if lr.P50Us != 5 || lr.P90Us != 9 || lr.P99Us != 10 || lr.MaxUs != 10 || lr.MeanUs != 5.5 {
		t.Errorf("setLatencies: %+v", lr)
	}
}

func approxEqual(a, b WrkResult) bool {
	near := func(x, y float64) bool { return x-y < 1e-6*max(1, y) && y-x < 1e-6*max(1, y) }
	return a.Requests == b.Requests && near(a.Seconds, b.Seconds) && near(a.RequestsPerSec, b.RequestsPerSec) &&
		near(a.TransferBPS, b.TransferBPS) && near(a.LatencyAvgUs, b.LatencyAvgUs) && near(a.LatencyMaxUs, b.LatencyMaxUs) &&
		near(a.P50Us, b.P50Us) && near(a.P75Us, b.P75Us) && near(a.P90Us, b.P90Us) && near(a.P99Us, b.P99Us) && near(a.P999Us, b.P999Us) &&
		a.Non2xx == b.Non2xx && a.ErrConnect == b.ErrConnect && a.ErrRead == b.ErrRead &&
		a.ErrWrite == b.ErrWrite && a.ErrTimeout == b.ErrTimeout
}

func TestParseProc(t *testing.T) {
	cpu, err := parseStatCPU("1234 (pico edge) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 12 0 100 0 0")
	if err != nil || cpu != 3.0 {
		t.Errorf("parseStatCPU = %v, %v; want 3.0", cpu, err)
	}
	rss, hwm, err := parseStatusMem("Name:\tpico-edge\nVmHWM:\t   30000 kB\nVmRSS:\t   12345 kB\n")
	if err != nil || rss != 12345 || hwm != 30000 {
		t.Errorf("parseStatusMem = %d, %d, %v", rss, hwm, err)
	}
	busy, err := parseHostBusy("cpu  100 0 50 1000 20 0 10 5 0 0\ncpu0 1 2 3 4 5 6 7 8\n")
	if err != nil || busy != 1.55 {
		t.Errorf("parseHostBusy = %v, %v; want 1.55", busy, err)
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"--quick"})
	if err != nil || o.Duration != 3*time.Second || len(o.Scenarios) != 10 || o.UploadBytes != 256<<20 ||
		!slices.Equal(o.SmallConns, []int{1, 16, 64, 256}) || o.AgentConns != 2 {
		t.Errorf("--quick: %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"--conns", "2, 8", "--agent-connections", "1", "--upload-mib", "64", "--scenarios", "all"})
	if err != nil || !slices.Equal(o.SmallConns, []int{2, 8}) || o.AgentConns != 1 || o.UploadBytes != 64<<20 ||
		o.TCPBulkBytes != 1<<30 || len(o.Scenarios) != len(allScenarios) {
		t.Errorf("--conns 2,8 --agent-connections 1 --upload-mib 64: %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"--quick", "--duration", "1s", "--scenarios", "a,C"})
	if err != nil || o.Duration != time.Second || !o.Scenarios["a"] || !o.Scenarios["c"] || o.Scenarios["b"] {
		t.Errorf("--quick --duration 1s --scenarios a,C: %+v, %v", o, err)
	}
	for _, bad := range [][]string{{"--duration", "1500ms"}, {"--scenarios", "z"}, {"--idle-agents", "0"}, {"extra"},
		{"--conns", "0"}, {"--conns", "a"}, {"--conns", ","}, {"--agent-connections", "9"}, {"--upload-mib", "0"}, {"--tcp-bulk-mib", "-1"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

// TestHarness runs the whole harness in quick mode: a smoke test that it
// works, with no assertion on the figures beyond their being measured.
func TestHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole harness (about a minute and a half)")
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Skip("wrk not installed")
	}
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "out", "results.json")
	var out strings.Builder
	opts := Options{
		Duration: time.Second, Warmup: time.Second, Repeat: 1,
		Scenarios:  map[string]bool{"a": true, "b": true, "c": true, "d": true, "e": true, "g": true, "h": true, "i": true, "t": true, "x": true},
		IdleAgents: 20, JSON: jsonPath, Settle: 300 * time.Millisecond, SettleSamples: 2,
		// One connection count keeps the smoke short; the new scenarios'
		// bulk runs are tiny, and H measures an agent of 2 links too.
		SmallConns: []int{16}, RRConns: []int{16}, UploadBytes: 8 << 20, TCPBulkBytes: 8 << 20, AgentConns: 2,
		Out: &out, Log: testWriter{t},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, opts)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}

	// A: /small, then /post, at 16 connections.
	if len(res.Small) != 2 || res.Small[0].Path != "/small" || res.Small[1].Path != "/post" {
		t.Fatalf("scenario A: %+v, want a /small row and a /post row", res.Small)
	}
	for _, row := range res.Small {
		for _, r := range []WrkRun{row.Direct, row.Pico} {
			w := r.Result
			if w.Requests <= 0 || w.RequestsPerSec <= 0 || w.P50Us <= 0 || w.P99Us < w.P50Us {
				t.Errorf("A %s c=%d: implausible figures %+v", r.Target, row.Conns, w)
			}
		}
		if row.ReqRatioPct <= 0 || row.Pico.CPUPer1kReq["edge"] <= 0 || row.Pico.CPUPer1kReq["agent"] <= 0 {
			t.Errorf("A c=%d: ratio %v, CPU per 1k %v", row.Conns, row.ReqRatioPct, row.Pico.CPUPer1kReq)
		}
		if p := row.Pico; p.Result.P999Us < p.Result.P99Us || p.PeakRSSKiB["edge"] <= 0 || p.PeakRSSKiB["agent"] <= 0 {
			t.Errorf("A c=%d: p99.9 %v (p99 %v), peak RSS %v", row.Conns, p.Result.P999Us, p.Result.P99Us, p.PeakRSSKiB)
		}
	}
	if b := res.Bulk; b == nil || b.DirectMiBps <= 0 || b.PicoMiBps <= 0 || b.RatioPct <= 0 {
		t.Errorf("scenario B: %+v", b)
	}
	// B's second agent, with --connections 2 (against one edge node it
	// keeps one link; the row says how many the edge listed).
	if len(res.BulkLinks) != 1 || res.BulkLinks[0].MiBps <= 0 || res.BulkLinks[0].LinksSeen < 1 || len(res.LinkNotes) != 2 {
		t.Errorf("scenario B with 2 agent links: %+v", res.BulkLinks)
	}
	if g := res.Upload; g == nil || g.Bytes != 8<<20 || g.Direct.Result.MiBps <= 0 || g.Pico.Result.MiBps <= 0 ||
		g.RatioPct <= 0 || g.Pico.CPUPerGiB["edge"] <= 0 || g.Pico.PeakRSSKiB["agent"] <= 0 {
		t.Errorf("scenario G: %+v", g)
	}
	if h := res.TCP; h == nil || len(h.Bulk) != 2 || len(h.RR) != 1 || len(h.Links) != 2 || h.BulkVsQUICPct <= 0 {
		t.Errorf("scenario H: %+v", h)
	} else {
		for _, row := range append(append(h.Bulk, h.Links...), h.RR...) {
			d, p := row.Direct.Result, row.Pico.Result
			if row.RatioPct <= 0 || d.Bytes <= 0 || p.Bytes <= 0 || row.Pico.CPUSeconds["fwd-agent"] <= 0 {
				t.Errorf("H %s c=%d: %+v", row.Mode, row.Conns, row)
			}
			if row.Mode == "rr" && (p.P50Us <= 0 || p.P999Us < p.P50Us || row.Pico.CPUPer1kReq["edge"] <= 0) {
				t.Errorf("H rr c=%d pico: %+v", row.Conns, p)
			}
		}
	}
	if len(res.WebSocket) != 1 {
		t.Errorf("scenario I: %d rows, want 1", len(res.WebSocket))
	}
	for _, row := range res.WebSocket {
		for _, r := range []LoadRun{row.Direct, row.Pico} {
			if l := r.Result; l.Requests <= 0 || l.P50Us <= 0 || l.P99Us < l.P50Us || l.Errors != 0 {
				t.Errorf("I %s c=%d: %+v", r.Target, row.Conns, l)
			}
		}
	}
	if c := res.QUICCopy; c == nil || c.MiBps <= 0 || c.Bytes <= 0 {
		t.Errorf("scenario C: %+v", c)
	}
	if res.PicoVsQUICPct <= 0 {
		t.Errorf("pico vs quic ratio %v", res.PicoVsQUICPct)
	}
	if d := res.Idle; d == nil || d.Links != 20 || d.RSSBeforeKiB <= 0 || d.RSSAfterKiB <= 0 || d.EPRSSAfterKiB <= 0 {
		t.Errorf("scenario D: %+v", d)
	}
	// E: h2load's row, or h3load --proto h2's without h2load, and h3load's.
	_, errH2load := exec.LookPath("h2load")
	if len(res.TLS) != 2 {
		t.Fatalf("scenario E: %d rows, want 2 (notes %q)", len(res.TLS), res.TLSNotes)
	}
	if res.TLS[0].Conns != 16 || res.TLS[0].Streams != 10 {
		t.Errorf("scenario E at %d conns x %d streams, want 16 x 10", res.TLS[0].Conns, res.TLS[0].Streams)
	}
	for i, proto := range []string{"h2", "h3"} {
		row := res.TLS[i]
		if row.Proto != proto {
			t.Errorf("E row %d: proto %q, want %q", i, row.Proto, proto)
		}
		for _, r := range []LoadRun{row.Direct, row.Pico} {
			l := r.Result
			if l.Requests <= 0 || l.RequestsPerSec <= 0 || l.P50Us <= 0 || l.P99Us < l.P50Us || l.Errors != 0 {
				t.Errorf("E %s %s: implausible figures %+v", proto, r.Target, l)
			}
		}
		if row.ReqRatioPct <= 0 || row.P50RatioTimes <= 0 || row.Pico.CPUPer1kReq["edge"] <= 0 || row.Pico.CPUPer1kReq["agent"] <= 0 {
			t.Errorf("E %s: ratio %v, p50 ratio %v, CPU per 1k %v", proto, row.ReqRatioPct, row.P50RatioTimes, row.Pico.CPUPer1kReq)
		}
	}
	if wantClient := "h2load"; errH2load != nil {
		if res.TLS[0].Client == wantClient || len(res.TLSNotes) == 0 {
			t.Errorf("E without h2load: h2 client %q, notes %q", res.TLS[0].Client, res.TLSNotes)
		}
	} else if res.TLS[0].Client != wantClient {
		t.Errorf("E h2 client %q, want h2load", res.TLS[0].Client)
	}
	if res.PeakRSSKiB["edge"] <= 0 || res.PeakRSSKiB["agent"] <= 0 {
		t.Errorf("peak RSS: %v", res.PeakRSSKiB)
	}
	// T: /small at 16 conns and /1m at 4, each direct, through the floor
	// and through Pico.
	if len(res.Floor) != 2 || res.Floor[0].Path != "/small" || res.Floor[1].Path != "/1m" {
		t.Errorf("scenario T: %+v", res.Floor)
	}
	for _, row := range res.Floor {
		for _, r := range []WrkRun{row.Direct, row.Floor, row.Pico} {
			if w := r.Result; w.Requests <= 0 || w.P50Us <= 0 || w.Errors() != 0 {
				t.Errorf("T %s %s: %+v", row.Path, r.Target, w)
			}
		}
		if row.FloorPct <= 0 || row.PicoVsFloorPct <= 0 || row.FloorCPUUs <= 0 || row.PicoCPUUs <= 0 || len(row.Pairs) != 1 {
			t.Errorf("T %s: %+v", row.Path, row)
		}
	}
	// X: every row on both transports (runX checked the edge listed the
	// links on each), with figures measured and a pass verdict.
	if len(res.Transport) != len(xRows) {
		t.Errorf("scenario X: %d rows, want %d: %+v", len(res.Transport), len(xRows), res.Transport)
	}
	for i, row := range res.Transport {
		if row.Figure != xRows[i].figure || row.QUIC <= 0 || row.TCP <= 0 || len(row.Pairs) != 1 ||
			tunnelCPU(row.QUICCPU) <= 0 || tunnelCPU(row.TCPCPU) <= 0 {
			t.Errorf("X row %d: %+v", i, row)
		}
		if row.Unit != "us" && (row.RatioPct <= 0 || row.Pass != (row.RatioPct >= 70)) {
			t.Errorf("X %s: ratio %v, pass %v", row.Figure, row.RatioPct, row.Pass)
		}
	}
	if res.Host.NProc <= 0 || res.Host.GoVersion == "" {
		t.Errorf("host info: %+v", res.Host)
	}

	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("results JSON: %v", err)
	}
	if len(back.Small) != 2 || back.Bulk == nil || back.Upload == nil || back.TCP == nil || len(back.WebSocket) != 1 || back.QUICCopy == nil || back.Idle == nil || len(back.TLS) != 2 {
		t.Errorf("results JSON lacks scenarios: %s", b)
	}
	entries, _ := os.ReadDir(filepath.Dir(jsonPath))
	if len(entries) != 1 {
		t.Errorf("%d files next to the results (history off), want 1", len(entries))
	}
	for _, want := range []string{"A. small requests", "B. 1 MiB responses", "C. quic-go one-stream copy", "D. idle agent links", "E. small requests",
		"B'. 1 MiB responses", "G. one 8 MiB POST", "H. TCP forward", "I. WebSocket echo", "T. the tunnel floor", "X. the agent's TCP transport"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = testWriter{}

func TestCompare(t *testing.T) {
	last := &Results{Schema: 1, Small: []SmallRow{{Conns: 16, ReqRatioPct: 20,
		Pico: WrkRun{Result: WrkResult{RequestsPerSec: 1000, P50Us: 400}}}},
		Upload: &UploadRow{RatioPct: 10, Pico: UploadRun{Result: UploadResult{MiBps: 100}}}}
	now := &Results{Schema: 1, Small: []SmallRow{{Conns: 16, ReqRatioPct: 25,
		Pico: WrkRun{Result: WrkResult{RequestsPerSec: 1250, P50Us: 800}}}, {Conns: 256, ReqRatioPct: 5}}}
	got := map[string]Change{}
	for _, c := range compare(last, now) {
		got[c.Figure] = c
	}
	if len(got) != 3 {
		t.Fatalf("compare: %d figures in common, want 3 (A c=16 req/s, ratio, p50): %+v", len(got), got)
	}
	if c := got["A c=16 pico req/s"]; c.Last != 1000 || c.Now != 1250 || c.ChangePct != 25 || !c.Better {
		t.Errorf("req/s: %+v", c)
	}
	if c := got["A c=16 pico p50"]; c.ChangePct != 100 || c.Better {
		t.Errorf("p50 (higher is worse): %+v", c)
	}
	var out strings.Builder
	printComparison(&out, last, compare(last, now))
	if !strings.Contains(out.String(), "WORSE") || !strings.Contains(out.String(), "better") {
		t.Errorf("comparison report:\n%s", out.String())
	}
	dir := t.TempDir()
	if loadResults(filepath.Join(dir, "none.json")) != nil {
		t.Error("loadResults of a missing file")
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte("{not json"), 0o644)
	if loadResults(bad) != nil {
		t.Error("loadResults of a broken file")
	}
}

func TestPatternReader(t *testing.T) {
	for _, n := range []int64{0, 1, 7, 64 << 10, 64<<10 + 3, 1 << 20} {
		r := &patternReader{buf: []byte("abcdefg"), left: n}
		got, err := io.Copy(io.Discard, r)
		if err != nil || got != n {
			t.Errorf("patternReader(%d) gave %d bytes, %v", n, got, err)
		}
	}
}
