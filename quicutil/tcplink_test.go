package quicutil_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/quicutil"
)

// tcpEdge is the edge's end of the TCP transport on loopback: an HTTP
// server whose AgentPath upgrades into a Mux, and a QUIC listener on it.
type tcpEdge struct {
	url string
	mux *quicutil.Mux
	ln  *quic.Listener
}

func startTCPEdge(t testing.TB) *tcpEdge {
	t.Helper()
	b, err := testCerts()
	if err != nil {
		t.Fatalf("certs.Generate: %v", err)
	}
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := quicutil.NewMux(tcpLn.Addr())
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != quicutil.AgentPath {
			http.NotFound(w, r)
			return
		}
		ap, _ := netip.ParseAddrPort(r.RemoteAddr)
		mux.ServeUpgrade(w, r, ap)
	}), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() { defer close(served); hs.Serve(tcpLn) }()
	tr := &quic.Transport{Conn: mux}
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &b.Cert, nil }
	ln, err := tr.Listen(certs.ServerTLSConfig(getCert, quicutil.ALPNAgent), quicutil.TCPConfig(quicutil.EdgeConfig()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		hs.Close()
		<-served
		ln.Close()
		tr.Close()
		mux.Close()
		mux.Close() // safe twice
	})
	return &tcpEdge{url: "http://" + tcpLn.Addr().String() + quicutil.AgentPath, mux: mux, ln: ln}
}

// dialTCPAgent upgrades a TCP connection to e and returns its PacketConn.
func dialTCPAgent(t testing.TB, e *tcpEdge) *quicutil.PacketConn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(strings.TrimSuffix(e.url, quicutil.AgentPath), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), safety)
	defer cancel()
	pc, err := quicutil.Upgrade(ctx, conn, e.url, nil)
	if err != nil {
		conn.Close()
		t.Fatalf("Upgrade: %v", err)
	}
	t.Cleanup(func() { pc.Close(); pc.Close() })
	return pc
}

// tcpLink connects a QUIC connection over the TCP transport.
func tcpLink(t testing.TB) (client, server *quic.Conn, e *tcpEdge) {
	t.Helper()
	e = startTCPEdge(t)
	pc := dialTCPAgent(t, e)
	b, _ := testCerts()
	tr := &quic.Transport{Conn: pc}
	t.Cleanup(func() { tr.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), safety)
	defer cancel()
	acc := make(chan *quic.Conn, 1)
	go func() {
		c, _ := e.ln.Accept(ctx)
		acc <- c
	}()
	client, err := tr.Dial(ctx, pc.RemoteAddr(), certs.ClientTLSConfig(b.CAPool, "localhost", quicutil.ALPNAgent), quicutil.TCPConfig(quicutil.AgentConfig()))
	if err != nil {
		cancel()
		<-acc
		t.Fatalf("dial over TCP: %v", err)
	}
	t.Cleanup(func() { client.CloseWithError(0, "") })
	server = <-acc
	if server == nil {
		t.Fatal("accept over TCP failed")
	}
	t.Cleanup(func() { server.CloseWithError(0, "") })
	return client, server, e
}

func TestTCPTransportCarriesQUIC(t *testing.T) {
	client, server, e := tcpLink(t)
	if got := server.RemoteAddr().String(); !strings.HasPrefix(got, "127.0.0.1:") {
		t.Errorf("server sees the agent at %q, want its TCP address", got)
	}
	if e.mux.Conns() != 1 {
		t.Errorf("Mux.Conns() = %d, want 1", e.mux.Conns())
	}
	// Several streams at once, both directions, 1 MiB each.
	const streams, size = 4, 1 << 20
	errc := make(chan error, streams)
	go func() {
		for range streams {
			str, err := server.AcceptStream(t.Context())
			if err != nil {
				errc <- err
				return
			}
			go func() { // echo
				_, err := io.Copy(str, str)
				str.Close()
				errc <- err
			}()
		}
	}()
	want := make([]byte, size)
	rand.Read(want)
	for range streams {
		str, err := client.OpenStreamSync(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := str.Write(want)
			str.Close()
			done <- err
		}()
		got, err := io.ReadAll(str)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("echo: %d bytes, equal %v, err %v", len(got), bytes.Equal(got, want), err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	for range streams {
		if err := recv(t, "echo", errc); err != nil {
			t.Fatal(err)
		}
	}
	// The edge closing the connection reaches the agent with its code.
	server.CloseWithError(0x42, "bye")
	<-client.Context().Done()
	var appErr *quic.ApplicationError
	if err := context.Cause(client.Context()); !errors.As(err, &appErr) || appErr.ErrorCode != 0x42 {
		t.Fatalf("client closed with %v, want application error 0x42", err)
	}
}

func TestTCPTransportRefusesNonUpgrades(t *testing.T) {
	e := startTCPEdge(t)
	key := base64.StdEncoding.EncodeToString(make([]byte, 16))
	good := func() http.Header {
		return http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"},
			"Sec-Websocket-Key": {key}, "Sec-Websocket-Protocol": {quicutil.WebSocketProtocol}}
	}
	tests := map[string]struct {
		method string
		edit   func(h http.Header)
		want   int
	}{
		"plain GET":       {"GET", func(h http.Header) { clear(h) }, http.StatusUpgradeRequired},
		"POST":            {"POST", nil, http.StatusMethodNotAllowed},
		"version 8":       {"GET", func(h http.Header) { h.Set("Sec-Websocket-Version", "8") }, http.StatusUpgradeRequired},
		"no subprotocol":  {"GET", func(h http.Header) { h.Del("Sec-Websocket-Protocol") }, http.StatusBadRequest},
		"short key":       {"GET", func(h http.Header) { h.Set("Sec-Websocket-Key", "AAAA") }, http.StatusBadRequest},
		"upgrade to h2c":  {"GET", func(h http.Header) { h.Set("Upgrade", "h2c") }, http.StatusUpgradeRequired},
		"no Connection":   {"GET", func(h http.Header) { h.Del("Connection") }, http.StatusUpgradeRequired},
		"key not base64!": {"GET", func(h http.Header) { h.Set("Sec-Websocket-Key", "!!!!!!!!!!!!!!!!!!!!!!!=") }, http.StatusBadRequest},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), tc.method, e.url, nil)
			req.Header = good()
			if tc.edit != nil {
				tc.edit(req.Header)
			}
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status = %d (%s), want %d", resp.StatusCode, body, tc.want)
			}
			if len(body) == 0 {
				t.Errorf("empty body: the refusal should say why")
			}
		})
	}
	if e.mux.Conns() != 0 {
		t.Errorf("Mux.Conns() = %d after refusals, want 0", e.mux.Conns())
	}
}

// rawUpgrade upgrades a TCP connection to e by hand and returns it, for
// sending frames of our own.
func rawUpgrade(t testing.TB, e *tcpEdge) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(strings.TrimSuffix(e.url, quicutil.AgentPath), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(safety))
	key := base64.StdEncoding.EncodeToString(make([]byte, 16))
	io.WriteString(conn, "GET "+quicutil.AgentPath+" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "+key+"\r\nSec-WebSocket-Protocol: "+quicutil.WebSocketProtocol+"\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	return conn, br
}

// frame builds a WebSocket frame; mask selects a (fixed) mask key.
func frame(b0 byte, payload []byte, mask bool) []byte {
	var out []byte
	m := byte(0)
	if mask {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		out = append(out, b0, m|byte(n))
	case n <= 0xffff:
		out = binary.BigEndian.AppendUint16(append(out, b0, m|126), uint16(n))
	default:
		out = binary.BigEndian.AppendUint64(append(out, b0, m|127), uint64(n))
	}
	if mask {
		key := []byte{1, 2, 3, 4}
		out = append(out, key...)
		for i, c := range payload {
			out = append(out, c^key[i%4])
		}
		return out
	}
	return append(out, payload...)
}

// readCloseFrame reads frames from br until a close frame and returns its code.
func readCloseFrame(t testing.TB, br *bufio.Reader) (uint16, string) {
	t.Helper()
	for {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("read frame: %v (no close frame)", err)
		}
		n := int(h[1] & 0x7f)
		if n == 126 {
			var l [2]byte
			io.ReadFull(br, l[:])
			n = int(binary.BigEndian.Uint16(l[:]))
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(br, body); err != nil {
			t.Fatal(err)
		}
		if h[0]&0x0f == 0x8 {
			if len(body) < 2 {
				return 1005, ""
			}
			return binary.BigEndian.Uint16(body), string(body[2:])
		}
	}
}

func TestTCPTransportBadFrames(t *testing.T) {
	e := startTCPEdge(t)
	tests := map[string]struct {
		send []byte
		code uint16
	}{
		"unmasked":       {frame(0x82, []byte("x"), false), 1002},
		"text":           {frame(0x81, []byte("hi"), true), 1003},
		"oversized":      {[]byte{0x82, 0xff, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 1, 2, 3, 4}, 1009},
		"reserved bits":  {frame(0xc2, []byte("x"), true), 1002},
		"opcode 3":       {frame(0x83, []byte("x"), true), 1002},
		"long ping":      {frame(0x89, make([]byte, 126), true), 1002},
		"lone cont":      {frame(0x80, []byte("x"), true), 1002},
		"fragmented big": {append(frame(0x02, make([]byte, quicutil.MaxFramePayload), true), frame(0x80, []byte("x"), true)...), 1009},
		"close":          {frame(0x88, []byte{0x03, 0xe8}, true), 1000},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			conn, br := rawUpgrade(t, e)
			conn.Write(tc.send)
			code, reason := readCloseFrame(t, br)
			if code != tc.code {
				t.Fatalf("close code = %d (%q), want %d", code, reason, tc.code)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("after the close frame: %v, want EOF (the edge closes the connection)", err)
			}
		})
	}
	// Ping gets its pong, a truncated frame and a bare disconnect end the
	// connection; none leaves a connection behind.
	t.Run("ping", func(t *testing.T) {
		conn, br := rawUpgrade(t, e)
		conn.Write(frame(0x89, []byte("are you there"), true))
		var h [2]byte
		io.ReadFull(br, h[:])
		body := make([]byte, h[1]&0x7f)
		io.ReadFull(br, body)
		if h[0] != 0x8a || string(body) != "are you there" {
			t.Fatalf("got frame %x %q, want a pong with the ping's payload", h, body)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		conn, br := rawUpgrade(t, e)
		conn.Write(frame(0x82, make([]byte, 100), true)[:50])
		conn.(*net.TCPConn).CloseWrite()
		if _, err := io.ReadAll(br); err != nil {
			t.Fatalf("read after truncation: %v", err)
		}
	})
	deadline := time.Now().Add(safety)
	for e.mux.Conns() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := e.mux.Conns(); n != 0 {
		t.Fatalf("Mux.Conns() = %d after bad frames, want 0", n)
	}
}

// A fragmented message and frames with 16- and 64-bit lengths carry
// packets too: the mux delivers them whole.
func TestTCPTransportFragments(t *testing.T) {
	e := startTCPEdge(t)
	conn, _ := rawUpgrade(t, e)
	pkt := bytes.Repeat([]byte("q"), 300)
	conn.Write(append(frame(0x02, pkt[:100], true), frame(0x80, pkt[100:], true)...))
	buf := make([]byte, 2000)
	e.mux.SetReadDeadline(time.Now().Add(safety))
	n, addr, err := e.mux.ReadFrom(buf)
	if err != nil || !bytes.Equal(buf[:n], pkt) {
		t.Fatalf("ReadFrom = %d, %v; want the %d-byte packet", n, err, len(pkt))
	}
	if _, ok := addr.(*quicutil.StreamAddr); !ok {
		t.Fatalf("addr is %T, want *StreamAddr", addr)
	}
	// The edge's answer is one unmasked binary frame.
	if _, err := e.mux.WriteTo([]byte("answer"), addr); err != nil {
		t.Fatal(err)
	}
	var h [8]byte
	io.ReadFull(conn, h[:8])
	if h[0] != 0x82 || h[1] != 6 || string(h[2:8]) != "answer" {
		t.Fatalf("got %q, want an unmasked binary frame", h)
	}
	// A deadline in the past stops ReadFrom at once.
	e.mux.SetReadDeadline(time.Now())
	if _, _, err := e.mux.ReadFrom(buf); !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Fatalf("ReadFrom after deadline: %v, want a timeout", err)
	}
	e.mux.SetReadDeadline(time.Time{})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestUpgradeRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.NotFoundHandler()}
	done := make(chan struct{})
	go func() { defer close(done); hs.Serve(ln) }()
	t.Cleanup(func() { hs.Close(); <-done })
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = quicutil.Upgrade(t.Context(), conn, "http://"+ln.Addr().String()+quicutil.AgentPath, nil)
	var ue *quicutil.UpgradeError
	if !errors.As(err, &ue) || ue.StatusCode != http.StatusNotFound {
		t.Fatalf("Upgrade = %v, want an UpgradeError with 404", err)
	}
}

// BenchmarkStreamCopy copies 1 MiB per op over one stream of a QUIC link on
// loopback, over UDP and over the TCP transport, in the same run:
//
//	go test -run '^$' -bench StreamCopy -count 5 ./quicutil
func BenchmarkStreamCopy(b *testing.B) {
	links := map[string]func(testing.TB) (*quic.Conn, *quic.Conn){
		"udp": func(t testing.TB) (*quic.Conn, *quic.Conn) { return defaultLink(t) },
		"tcp": func(t testing.TB) (*quic.Conn, *quic.Conn) { c, s, _ := tcpLink(t); return c, s },
	}
	for _, name := range []string{"udp", "tcp"} {
		b.Run(name, func(b *testing.B) {
			client, server := links[name](b)
			const chunk = 1 << 20
			errc := make(chan error, 1)
			go func() {
				str, err := server.AcceptStream(context.Background())
				if err != nil {
					errc <- err
					return
				}
				buf := make([]byte, chunk)
				for {
					if _, err := io.ReadFull(str, buf); err != nil {
						str.CancelWrite(0)
						errc <- nil
						return
					}
					if _, err := str.Write([]byte{1}); err != nil {
						errc <- err
						return
					}
				}
			}()
			str, err := client.OpenStreamSync(b.Context())
			if err != nil {
				b.Fatal(err)
			}
			data := make([]byte, chunk)
			ack := make([]byte, 1)
			b.SetBytes(chunk)
			b.ResetTimer()
			for b.Loop() {
				if _, err := str.Write(data); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(str, ack); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			str.Close()
			str.CancelRead(0)
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// An upgraded connection that brings no frame for the idle timeout is
// closed with 1001 and the reason: a vanished agent leaves nothing behind.
func TestTCPTransportIdleConnCloses(t *testing.T) {
	e := startTCPEdge(t)
	e.mux.SetIdleTimeout(200 * time.Millisecond)
	_, br := rawUpgrade(t, e)
	code, reason := readCloseFrame(t, br)
	if code != 1001 || !strings.Contains(reason, "no frame for 200ms") {
		t.Fatalf("close = %d %q, want 1001 saying it was idle", code, reason)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the close frame: %v, want EOF", err)
	}
}

// Over TCP, QUIC keeps the link busy well inside the 60 s idle timeout of
// common load balancers, with a fixed packet size and no MTU discovery.
func TestTCPConfig(t *testing.T) {
	for name, c := range map[string]*quic.Config{"agent": quicutil.AgentConfig(), "edge": quicutil.EdgeConfig()} {
		tc := quicutil.TCPConfig(c)
		if tc.KeepAlivePeriod <= 0 || tc.KeepAlivePeriod >= 60*time.Second || tc.KeepAlivePeriod >= tc.MaxIdleTimeout {
			t.Errorf("%s: KeepAlivePeriod = %v (idle %v), want 0 < keep-alive < min(60s, idle)", name, tc.KeepAlivePeriod, tc.MaxIdleTimeout)
		}
		if !tc.DisablePathMTUDiscovery || tc.InitialPacketSize != quicutil.TCPPacketSize {
			t.Errorf("%s: MTU discovery off %v, packet size %d; want off, %d", name, tc.DisablePathMTUDiscovery, tc.InitialPacketSize, quicutil.TCPPacketSize)
		}
		if c.DisablePathMTUDiscovery {
			t.Errorf("%s: TCPConfig changed the config it was given", name)
		}
	}
}
