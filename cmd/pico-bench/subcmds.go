package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/quicutil"
)

// Helper processes print one JSON line on stdout when ready (and a result
// line when they have one); everything else goes to stderr.

// maxLife bounds every helper, should the harness vanish without killing it.
const maxLife = 30 * time.Minute

func printJSON(v any) {
	b, _ := json.Marshal(v)
	os.Stdout.Write(append(b, '\n'))
}

// Upstream bodies.
var (
	smallBody = []byte("hello world\n") // 12 bytes
	bigBody   = func() []byte {
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = byte('a' + i%26)
		}
		return b
	}()
)

type upstreamReady struct {
	Addr    string `json:"addr"`
	TLSAddr string `json:"tls_addr,omitempty"` // HTTP/1.1 and HTTP/2 over TLS (TCP)
	H3Addr  string `json:"h3_addr,omitempty"`  // HTTP/3 (UDP)
}

// runUpstream serves /small (12 bytes) and /1m (1 MiB) over HTTP/1.1 and,
// with --tls-addr, also over TLS: HTTP/1.1 and HTTP/2 on TCP and HTTP/3 on
// UDP (the same port number if it is free), with a certificate from
// certs.Generate whose CA it writes to --ca-out.
func runUpstream(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("upstream", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	tlsAddr := fs.String("tls-addr", "", "also serve HTTPS (HTTP/1.1, HTTP/2) on this TCP address and HTTP/3 on UDP (empty: no TLS)")
	caOut := fs.String("ca-out", "", "with --tls-addr: file to write the generated CA certificate (PEM) to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tlsAddr != "" && *caOut == "" {
		return errors.New("--tls-addr needs --ca-out")
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	smallLen := strconv.Itoa(len(smallBody))
	bigLen := strconv.Itoa(len(bigBody))
	mux := http.NewServeMux()
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{smallLen}
		w.Write(smallBody)
	})
	mux.HandleFunc("/1m", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/octet-stream"}
		h["Content-Length"] = []string{bigLen}
		w.Write(bigBody)
	})
	// /post reads a request body (scenario A's 1 KiB POSTs) and answers
	// like /small.
	mux.HandleFunc("/post", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{smallLen}
		w.Write(smallBody)
	})
	mux.HandleFunc("/upload", uploadHandler)
	mux.HandleFunc("/ws", wsEchoHandler)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	ctx, cancel := context.WithTimeout(ctx, maxLife)
	defer cancel()
	ready := upstreamReady{Addr: ln.Addr().String()}
	errc := make(chan error, 3)
	if *tlsAddr != "" {
		tlsSrv, h3Srv, err := serveUpstreamTLS(*tlsAddr, *caOut, mux, &ready, errc)
		if err != nil {
			return err
		}
		go func() { // ends with ctx
			<-ctx.Done()
			tlsSrv.Close()
			h3Srv.Close()
		}()
	}
	go func() { // ends with ctx
		<-ctx.Done()
		srv.Close()
	}()
	go func() { errc <- srv.Serve(ln) }()
	printJSON(ready)
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	case <-ctx.Done():
	}
	return nil
}

// serveUpstreamTLS starts the upstream's TLS listeners: HTTP/1.1 and
// HTTP/2 on TCP, HTTP/3 on UDP. Serve errors go to errc.
func serveUpstreamTLS(addr, caOut string, h http.Handler, ready *upstreamReady, errc chan<- error) (*http.Server, *http3.Server, error) {
	b, err := certs.Generate()
	if err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(caOut, b.CAPEM, 0o644); err != nil {
		return nil, nil, err
	}
	tcp, udp, err := listenTCPAndUDP(addr)
	if err != nil {
		return nil, nil, err
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	tlsSrv := &http.Server{
		Handler: h, ReadHeaderTimeout: 10 * time.Second, Protocols: protocols,
		// The edge's front door allows 100 streams per connection too.
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: 100},
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{b.Cert}},
	}
	h3Srv := &http3.Server{
		Handler:    h,
		TLSConfig:  http3.ConfigureTLSConfig(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{b.Cert}}),
		QUICConfig: &quic.Config{MaxIncomingStreams: 100, MaxIdleTimeout: 30 * time.Second},
	}
	go func() { errc <- tlsSrv.ServeTLS(tcp, "", "") }()
	go func() {
		if err := h3Srv.Serve(udp); err != nil && !errors.Is(err, quic.ErrServerClosed) {
			errc <- err
		}
	}()
	ready.TLSAddr, ready.H3Addr = tcp.Addr().String(), udp.LocalAddr().String()
	return tlsSrv, h3Srv, nil
}

// listenTCPAndUDP listens on a TCP address and on UDP at the same port
// number, retrying with new ephemeral ports when that UDP port is taken.
func listenTCPAndUDP(addr string) (net.Listener, net.PacketConn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	var last error
	for range 10 {
		tcp, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		_, p, _ := net.SplitHostPort(tcp.Addr().String())
		udp, err := net.ListenPacket("udp", net.JoinHostPort(host, p))
		if err == nil {
			return tcp, udp, nil
		}
		tcp.Close()
		last = err
		if port != "0" {
			break
		}
	}
	return nil, nil, fmt.Errorf("UDP at the TCP port of %s: %w", addr, last)
}

const copyALPN = "pico-bench-copy"

type sinkReady struct {
	Addr string `json:"addr"`
}

// CopyResult is what the sink measured of the one-stream copy: from the
// first byte received to EOF.
type CopyResult struct {
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
}

// runQUICSink accepts one QUIC connection and one stream, reads it to EOF,
// and answers with a CopyResult on the same stream.
func runQUICSink(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("quic-sink", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "UDP listen address")
	caOut := fs.String("ca-out", "", "file to write the generated CA certificate (PEM) to")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	bufSize := fs.Int("buf", 64<<10, "read buffer size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	b, err := certs.Generate()
	if err != nil {
		return err
	}
	if *caOut != "" {
		if err := os.WriteFile(*caOut, b.CAPEM, 0o644); err != nil {
			return err
		}
	}
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	tlsConf := &tls.Config{Certificates: []tls.Certificate{b.Cert}, NextProtos: []string{copyALPN}}
	ln, err := quic.ListenAddr(*addr, tlsConf, quicutil.LinkConfig(1000))
	if err != nil {
		return err
	}
	defer ln.Close()
	printJSON(sinkReady{Addr: ln.Addr().String()})
	conn, err := ln.Accept(ctx)
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	defer conn.CloseWithError(0, "done")
	str, err := conn.AcceptStream(ctx)
	if err != nil {
		return fmt.Errorf("accept stream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { str.CancelRead(1); str.CancelWrite(1) })
	defer stop()
	buf := make([]byte, *bufSize)
	var n int64
	var first time.Time
	for {
		k, err := str.Read(buf)
		if k > 0 && n == 0 {
			first = time.Now()
		}
		n += int64(k)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read after %d bytes: %w", n, err)
		}
	}
	res := CopyResult{Bytes: n, Seconds: time.Since(first).Seconds()}
	out, _ := json.Marshal(res)
	if _, err := str.Write(append(out, '\n')); err != nil {
		return fmt.Errorf("answer: %w", err)
	}
	str.Close()
	printJSON(res)
	// Wait for the source to read the answer and close the connection.
	select {
	case <-conn.Context().Done():
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
	}
	return nil
}

// SourceResult is what quic-source prints: its own view and the sink's.
type SourceResult struct {
	BytesSent   int64      `json:"bytes_sent"`
	SendSeconds float64    `json:"send_seconds"`
	Sink        CopyResult `json:"sink"`
	// From the sender's quic.ConnectionStats at the end.
	PacketsSent uint64  `json:"packets_sent"`
	PacketsLost uint64  `json:"packets_lost"`
	CwndBytes   uint64  `json:"cwnd_bytes"`
	SRTTMs      float64 `json:"srtt_ms"`
	MinRTTMs    float64 `json:"min_rtt_ms"`
}

// runQUICSource dials the sink, opens one stream and writes a preallocated
// buffer over and over for --duration (or --bytes), then closes the stream
// and reads the sink's CopyResult.
func runQUICSource(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("quic-source", flag.ContinueOnError)
	addr := fs.String("addr", "", "sink address")
	caFile := fs.String("ca", "", "CA certificate (PEM) of the sink")
	duration := fs.Duration("duration", 10*time.Second, "write for this long (0: use --bytes)")
	total := fs.Int64("bytes", 0, "write this many bytes instead of for --duration")
	chunk := fs.Int("chunk", 1<<20, "write size, from one preallocated buffer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *caFile == "" {
		return errors.New("--addr and --ca are required")
	}
	if *duration <= 0 && *total <= 0 {
		return errors.New("--duration or --bytes must be positive")
	}
	pool, err := certs.LoadPool(*caFile)
	if err != nil {
		return err
	}
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	limit := *duration + time.Minute
	if *total > 0 {
		limit = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tlsConf := certs.ClientTLSConfig(pool, "127.0.0.1", copyALPN)
	raddr, err := net.ResolveUDPAddr("udp", *addr)
	if err != nil {
		return err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) // loopback only
	if err != nil {
		return err
	}
	defer udp.Close()
	tr := &quic.Transport{Conn: udp}
	defer tr.Close()
	conn, err := tr.Dial(ctx, raddr, tlsConf, quicutil.LinkConfig(1000))
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.CloseWithError(0, "done")
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { str.CancelRead(1); str.CancelWrite(1) })
	defer stop()
	buf := make([]byte, *chunk)
	for i := range buf {
		buf[i] = byte(i)
	}
	start := time.Now()
	deadline := start.Add(*duration)
	var sent int64
	for {
		p := buf
		if *total > 0 {
			if sent >= *total {
				break
			}
			if rem := *total - sent; rem < int64(len(p)) {
				p = p[:rem]
			}
		} else if !time.Now().Before(deadline) {
			break
		}
		n, err := str.Write(p)
		sent += int64(n)
		if err != nil {
			return fmt.Errorf("write after %d bytes: %w", sent, err)
		}
	}
	sendSecs := time.Since(start).Seconds()
	if err := str.Close(); err != nil {
		return err
	}
	answer, err := io.ReadAll(io.LimitReader(str, 4096))
	if err != nil {
		return fmt.Errorf("read the sink's answer: %w", err)
	}
	st := conn.ConnectionStats()
	res := SourceResult{BytesSent: sent, SendSeconds: sendSecs,
		PacketsSent: st.PacketsSent, PacketsLost: st.PacketsLost, CwndBytes: st.CongestionWindow,
		SRTTMs: float64(st.SmoothedRTT.Microseconds()) / 1e3, MinRTTMs: float64(st.MinRTT.Microseconds()) / 1e3}
	if err := json.Unmarshal(answer, &res.Sink); err != nil {
		return fmt.Errorf("sink answer %q: %w", answer, err)
	}
	if res.Sink.Bytes != sent {
		return fmt.Errorf("sink received %d bytes, %d were sent", res.Sink.Bytes, sent)
	}
	printJSON(res)
	return nil
}

// IdleReady is what idle-agents prints once every agent is registered.
type IdleReady struct {
	Agents    int     `json:"agents"`
	Endpoints int     `json:"endpoints"`
	Seconds   float64 `json:"seconds"`
}

// runIdleAgents connects --n agents from this one process, each with its
// own QUIC connection (and UDP socket), each serving --endpoints endpoints,
// and keeps them idle until killed.
func runIdleAgents(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("idle-agents", flag.ContinueOnError)
	n := fs.Int("n", 200, "agents (QUIC connections)")
	perAgent := fs.Int("endpoints", 1, "endpoints per agent")
	edgeAddr := fs.String("edge", "", "edge agent address")
	caFile := fs.String("ca", "", "CA certificate (PEM) of the edge")
	upstream := fs.String("upstream", "127.0.0.1:9", "upstream address the endpoints forward to (never dialled while idle)")
	prefix := fs.String("prefix", "idle", "endpoint ID prefix")
	parallel := fs.Int("parallel", 16, "agents connecting at once (the edge's accept queue holds 32)")
	timeout := fs.Duration("connect-timeout", 2*time.Minute, "time all agents have to register")
	links := fs.Int("connections", 0, "links each agent keeps (agent.Config.Connections; 0: the agent's default, 2 when the edge has peers)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *perAgent < 1 || *edgeAddr == "" || *caFile == "" || *parallel < 1 {
		return errors.New("--n, --endpoints and --parallel must be positive; --edge and --ca are required")
	}
	pool, err := certs.LoadPool(*caFile)
	if err != nil {
		return err
	}
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	ctx, cancel := context.WithTimeout(ctx, maxLife)
	defer cancel()

	start := time.Now()
	cctx, ccancel := context.WithTimeout(ctx, *timeout)
	defer ccancel()
	var (
		wg      sync.WaitGroup // Run loops
		regs    sync.WaitGroup // registrations
		sem     = make(chan struct{}, *parallel)
		failed  atomic.Int64
		errOnce sync.Once
		firstEr error
		agents  []*agent.Agent
	)
	for i := 0; i < *n; i++ {
		a, err := agent.New(agent.Config{Edges: []string{*edgeAddr}, RootCAs: pool, Name: "pico-bench/idle", Connections: *links})
		if err != nil {
			return err
		}
		agents = append(agents, a)
		wg.Go(func() { a.Run(ctx) })
		select {
		case sem <- struct{}{}:
		case <-cctx.Done():
		}
		if cctx.Err() != nil {
			break
		}
		regs.Go(func() {
			defer func() { <-sem }()
			for j := 0; j < *perAgent; j++ {
				id := fmt.Sprintf("%s-%d", *prefix, i)
				if *perAgent > 1 {
					id = fmt.Sprintf("%s-%d-%d", *prefix, i, j)
				}
				if err := a.ServeUpstream(cctx, id, quicutil.KindHTTP, *upstream); err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstEr = fmt.Errorf("endpoint %s: %w", id, err) })
					return
				}
			}
		})
	}
	regs.Wait()
	defer func() {
		for _, a := range agents {
			a.Close()
		}
		wg.Wait()
	}()
	if cctx.Err() != nil && firstEr == nil {
		firstEr = cctx.Err()
	}
	if firstEr != nil {
		return fmt.Errorf("%d agents failed to register; first: %w", failed.Load(), firstEr)
	}
	printJSON(IdleReady{Agents: *n, Endpoints: *n * *perAgent, Seconds: time.Since(start).Seconds()})
	<-ctx.Done()
	return nil
}
