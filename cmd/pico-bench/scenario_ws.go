package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Scenario W: WSConns concurrent idle WebSockets, first straight to an
// echo upstream (the baseline: the upstream's RSS per connection), then
// client → edge → agents → a fresh upstream. Every WebSocket carries one
// echoed message before it goes idle, so each one is known to work.
//
// One agent link carries at most quicutil.MaxStreamsToAgent (1,000)
// streams, so the pico half runs one agent process per wsPerAgent
// WebSockets.

const wsPerAgent = 800

// WSResult is scenario W. Memory in KiB.
type WSResult struct {
	Conns  int `json:"conns"`
	Agents int `json:"agents"`
	// Direct: the upstream alone.
	DirectUpBeforeKiB int64   `json:"direct_upstream_rss_before_kib"`
	DirectUpAfterKiB  int64   `json:"direct_upstream_rss_after_kib"`
	DirectUpPerConnKB float64 `json:"direct_upstream_kib_per_conn"`
	DirectOpenSeconds float64 `json:"direct_open_seconds"`
	// Through Pico.
	EdgeBeforeKiB     int64   `json:"edge_rss_before_kib"`
	EdgeAfterKiB      int64   `json:"edge_rss_after_kib"`
	EdgePerConnKB     float64 `json:"edge_kib_per_conn"`
	EdgeHeapPerConn   float64 `json:"edge_heap_bytes_per_conn"` // live heap after a forced GC
	EdgeStackPerConn  float64 `json:"edge_stack_bytes_per_conn"`
	EdgeGoroutinesPer float64 `json:"edge_goroutines_per_conn"`
	AgentsBeforeKiB   int64   `json:"agents_rss_before_kib"` // all agent processes
	AgentsAfterKiB    int64   `json:"agents_rss_after_kib"`
	AgentsPerConnKB   float64 `json:"agents_kib_per_conn"`
	UpBeforeKiB       int64   `json:"pico_upstream_rss_before_kib"`
	UpAfterKiB        int64   `json:"pico_upstream_rss_after_kib"`
	UpPerConnKB       float64 `json:"pico_upstream_kib_per_conn"`
	PicoOpenSeconds   float64 `json:"pico_open_seconds"`
	// EdgeVsUpstreamX is EdgePerConnKB / DirectUpPerConnKB.
	EdgeVsUpstreamX float64 `json:"edge_vs_upstream_per_conn_x"`
}

// startWSUpstream starts a ws-upstream helper and returns its address.
func (h *harness) startWSUpstream(ctx context.Context, name string) (*proc, string, error) {
	p, err := h.procs.start(name, false, h.binary("pico-bench"), "ws-upstream", "--addr", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	var ready upstreamReady
	if _, err := p.waitLine(ctx, 20*time.Second, jsonLine(&ready, func() bool { return ready.Addr != "" })); err != nil {
		p.kill()
		return nil, "", err
	}
	return p, ready.Addr, nil
}

// openWS starts ws-clients with n WebSockets to target and waits until
// they are all open.
func (h *harness) openWS(ctx context.Context, target, endpoint string, n int) (*proc, float64, error) {
	args := []string{"ws-clients", "--n", strconv.Itoa(n), "--target", target}
	if endpoint != "" {
		args = append(args, "--endpoint", endpoint)
	}
	c, err := h.procs.start("ws-clients", false, h.binary("pico-bench"), args...)
	if err != nil {
		return nil, 0, err
	}
	var ready WSReady
	if _, err := c.waitLine(ctx, 5*time.Minute, jsonLine(&ready, func() bool { return ready.Conns > 0 })); err != nil {
		c.kill()
		return nil, 0, err
	}
	return c, ready.Seconds, nil
}

func (h *harness) runW(ctx context.Context) error {
	n := h.opts.WSConns
	r := &WSResult{Conns: n, Agents: (n + wsPerAgent - 1) / wsPerAgent}
	h.res.WS = r

	h.logf("W: %d idle WebSockets straight to the upstream", n)
	up, upAddr, err := h.startWSUpstream(ctx, "ws-upstream-direct")
	if err != nil {
		return err
	}
	s, err := h.settleRSS(ctx, up)
	if err != nil {
		up.kill()
		return err
	}
	r.DirectUpBeforeKiB = s[len(s)-1]
	cl, secs, err := h.openWS(ctx, upAddr, "", n)
	if err != nil {
		up.kill()
		return err
	}
	r.DirectOpenSeconds = secs
	s, err = h.settleRSS(ctx, up)
	cl.kill()
	up.kill()
	if err != nil {
		return err
	}
	r.DirectUpAfterKiB = s[len(s)-1]
	r.DirectUpPerConnKB = float64(r.DirectUpAfterKiB-r.DirectUpBeforeKiB) / float64(n)

	h.logf("W: %d idle WebSockets through the edge and %d agent processes", n, r.Agents)
	up, upAddr, err = h.startWSUpstream(ctx, "ws-upstream-pico")
	if err != nil {
		return err
	}
	defer up.kill()
	tokFile, tok, err := h.adminToken()
	if err != nil {
		return err
	}
	lim := strconv.Itoa(2 * n)
	e, err := h.startEdge(ctx, "ws-edge", false, "--admin-token-file", tokFile, "--admin-pprof",
		"--max-conns-per-endpoint="+lim, "--max-conns-per-listener="+lim, "--max-conns="+lim)
	if err != nil {
		return err
	}
	defer e.kill()
	var agents []*proc
	for i := range r.Agents {
		ag, err := h.procs.start(fmt.Sprintf("ws-agent-%d", i), false, h.binary("pico-agent"), "http", "ws", upAddr,
			"--edge", e.agentAddr, "--ca", e.caFile(), "--connections", "1", "--log-format", "json")
		if err != nil {
			return err
		}
		defer ag.kill()
		agents = append(agents, ag)
	}
	if err := poll(ctx, time.Minute, fmt.Sprintf("%d agents serving ws", r.Agents), func() (bool, error) {
		for _, ag := range agents {
			if ag.exited() {
				return false, fmt.Errorf("agent exited:\n%s", ag.tail(10))
			}
		}
		m, err := h.edgeMetrics(ctx, e)
		return err == nil && int(m["pico_agents"]) == r.Agents, err
	}); err != nil {
		return err
	}
	agentsRSS := func() (int64, error) {
		var t int64
		for _, ag := range agents {
			rss, _, err := procMem(ag.pid())
			if err != nil {
				return 0, err
			}
			t += rss
		}
		return t, nil
	}
	rss, m0, err := h.snapshot(ctx, e, tok)
	if err != nil {
		return err
	}
	r.EdgeBeforeKiB = rss
	if r.AgentsBeforeKiB, err = agentsRSS(); err != nil {
		return err
	}
	if r.UpBeforeKiB, _, err = procMem(up.pid()); err != nil {
		return err
	}
	cl, secs, err = h.openWS(ctx, e.proxy, "ws", n)
	if err != nil {
		return err
	}
	defer cl.kill()
	r.PicoOpenSeconds = secs
	rss, m1, err := h.snapshot(ctx, e, tok)
	if err != nil {
		return err
	}
	r.EdgeAfterKiB = rss
	if r.AgentsAfterKiB, err = agentsRSS(); err != nil {
		return err
	}
	if r.UpAfterKiB, _, err = procMem(up.pid()); err != nil {
		return err
	}
	if cl.exited() {
		return fmt.Errorf("ws-clients exited (a WebSocket closed?):\n%s", cl.tail(10))
	}
	if open := int(m1["pico_active_streams"]); open < n {
		return fmt.Errorf("the edge has %d streams open, want %d WebSockets", open, n)
	}
	fn := float64(n)
	r.EdgePerConnKB = float64(r.EdgeAfterKiB-r.EdgeBeforeKiB) / fn
	r.EdgeHeapPerConn = (m1["go_memstats_heap_alloc_bytes"] - m0["go_memstats_heap_alloc_bytes"]) / fn
	r.EdgeStackPerConn = (m1["go_memstats_stack_inuse_bytes"] - m0["go_memstats_stack_inuse_bytes"]) / fn
	r.EdgeGoroutinesPer = (m1["go_goroutines"] - m0["go_goroutines"]) / fn
	r.AgentsPerConnKB = float64(r.AgentsAfterKiB-r.AgentsBeforeKiB) / fn
	r.UpPerConnKB = float64(r.UpAfterKiB-r.UpBeforeKiB) / fn
	r.EdgeVsUpstreamX = ratio(r.EdgePerConnKB, r.DirectUpPerConnKB)
	return nil
}

// runWSUpstream serves WebSockets on any path and echoes every message.
func runWSUpstream(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ws-upstream", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, maxLife)
	defer cancel()
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return // Accept answered the client
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	})}
	go func() { // ends with ctx
		<-ctx.Done()
		srv.Close()
	}()
	printJSON(upstreamReady{Addr: ln.Addr().String()})
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// WSReady is what ws-clients prints once every WebSocket is open.
type WSReady struct {
	Conns   int     `json:"conns"`
	Seconds float64 `json:"seconds"`
}

// runWSClients opens --n WebSockets to --target (with X-Pico-Endpoint when
// --endpoint is set), sends one message on each and reads its echo, then
// holds them all idle until killed. It fails if any closes meanwhile.
// Source addresses rotate over 127.0.0.1 … 127.0.0.4 so that the four-tuples
// never run short.
func runWSClients(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ws-clients", flag.ContinueOnError)
	n := fs.Int("n", 10000, "WebSockets")
	target := fs.String("target", "", "host:port")
	endpoint := fs.String("endpoint", "", "X-Pico-Endpoint header (empty: none, a direct connection)")
	parallel := fs.Int("parallel", 64, "handshakes at once")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *target == "" || *parallel < 1 {
		return errors.New("--n and --parallel must be positive; --target is required")
	}
	ctx, cancel := context.WithTimeout(ctx, maxLife)
	defer cancel()
	req := "GET /ws HTTP/1.1\r\nHost: " + *target + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
	if *endpoint != "" {
		req += "X-Pico-Endpoint: " + *endpoint + "\r\n"
	}
	conns := make([]net.Conn, *n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	start := time.Now()
	var (
		wg    sync.WaitGroup
		sem   = make(chan struct{}, *parallel)
		mu    sync.Mutex
		first error
		next  atomic.Int64
	)
	for i := range conns {
		sem <- struct{}{}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+next.Add(1)%4))}
			c, err := wsOpen(ctx, src, *target, req)
			if err != nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("WebSocket %d: %w", i, err)
				}
				mu.Unlock()
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	printJSON(WSReady{Conns: *n, Seconds: time.Since(start).Seconds()})
	// Idle: any byte or close from the far end is a failure.
	closed := make(chan error, 1)
	for i, c := range conns {
		go func() { // ends when c is closed, by the far end or by the deferred Close
			var b [1]byte
			_, err := c.Read(b[:])
			if ctx.Err() == nil {
				select {
				case closed <- fmt.Errorf("WebSocket %d: the far end spoke or closed while idle: %v", i, err):
				default:
				}
			}
		}()
	}
	select {
	case err := <-closed:
		return err
	case <-ctx.Done():
		return nil
	}
}

// wsOpen dials target from src, upgrades with req (a request head without
// its key and final CRLF), and checks one echoed message.
func wsOpen(ctx context.Context, src *net.TCPAddr, target, req string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: src, Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	key := make([]byte, 16)
	rand.Read(key)
	if _, err := io.WriteString(c, req+"Sec-WebSocket-Key: "+base64.StdEncoding.EncodeToString(key)+"\r\n\r\n"); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(c, 512)
	status, err := br.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("read the response: %w", err)
	}
	if !strings.HasPrefix(status, "HTTP/1.1 101 ") {
		return nil, fmt.Errorf("upgrade refused: %q", strings.TrimSpace(status))
	}
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("read the response head: %w", err)
		}
		if l == "\r\n" {
			break
		}
	}
	// One masked text frame, "ping"; the echo comes back unmasked.
	mask := [4]byte{1, 2, 3, 4}
	frame := []byte{0x81, 0x80 | 4, mask[0], mask[1], mask[2], mask[3]}
	for i, b := range []byte("ping") {
		frame = append(frame, b^mask[i%4])
	}
	if _, err := c.Write(frame); err != nil {
		return nil, err
	}
	echo := make([]byte, 6)
	if _, err := io.ReadFull(br, echo); err != nil {
		return nil, fmt.Errorf("read the echo: %w", err)
	}
	if string(echo) != "\x81\x04ping" {
		return nil, fmt.Errorf("echo %q, want a text frame \"ping\"", echo)
	}
	if br.Buffered() > 0 {
		return nil, errors.New("unexpected bytes after the echo")
	}
	c.SetDeadline(time.Time{})
	ok = true
	return c, nil
}
