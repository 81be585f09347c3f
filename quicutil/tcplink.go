package quicutil

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// AgentPath is the path of the edge's TCP transport upgrade, on the front
// doors and on TCP at the agent port. It is reserved: no endpoint sees it.
const AgentPath = "/_pico/agent"

// WebSocketProtocol is the subprotocol of the TCP transport.
const WebSocketProtocol = ALPNAgent

// websocketGUID is the key suffix of RFC 6455 section 1.3.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + websocketGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// TCPConfig adapts a quic.Config for a link over the TCP transport: TCP
// carries packets of any size and never loses one, so the packet size is
// fixed at its largest and path MTU discovery is off.
func TCPConfig(c *quic.Config) *quic.Config {
	c = c.Clone()
	c.InitialPacketSize = TCPPacketSize
	c.DisablePathMTUDiscovery = true
	return c
}

// UpgradeError is an edge's (or a proxy's) refusal of the upgrade.
type UpgradeError struct {
	URL        string
	StatusCode int
	Body       string // the start of the response body
}

func (e *UpgradeError) Error() string {
	msg := fmt.Sprintf("upgrade at %s: %d %s", e.URL, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

// Upgrade sends the TCP transport's upgrade request for the URL u (its
// host and path; the caller dialled conn, with TLS for https) and returns
// conn as a net.PacketConn carrying QUIC packets. Closing it closes conn.
// ctx bounds the handshake.
func Upgrade(ctx context.Context, conn net.Conn, u string, header http.Header) (*PacketConn, error) {
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Key", key)
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Protocol", WebSocketProtocol)
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "pico-agent")
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer func() {
		stop()
		conn.SetDeadline(time.Time{})
	}()
	if err := req.Write(conn); err != nil {
		return nil, fmt.Errorf("upgrade at %s: %w", u, ctxErr(ctx, err))
	}
	br := bufio.NewReaderSize(conn, writeBuffer)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("upgrade at %s: %w", u, ctxErr(ctx, err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		resp.Body.Close()
		return nil, &UpgradeError{URL: u, StatusCode: resp.StatusCode, Body: strings.TrimSpace(string(b))}
	}
	if !headerHas(resp.Header, "Upgrade", "websocket") || resp.Header.Get("Sec-WebSocket-Accept") != acceptKey(key) {
		return nil, fmt.Errorf("upgrade at %s: the answer is not a WebSocket handshake for this request (a proxy in the way?)", u)
	}
	return newPacketConn(conn, br), nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// headerHas reports whether a comma-separated header of h lists token.
func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

// PacketConn is the agent's end of the TCP transport: a net.PacketConn
// whose every packet goes to, and comes from, the edge at the other end of
// one TCP connection. Run a quic.Transport on it and dial RemoteAddr.
type PacketConn struct {
	fc     *frameConn
	remote net.Addr
}

func newPacketConn(conn net.Conn, br *bufio.Reader) *PacketConn {
	return &PacketConn{fc: newFrameConn(conn, br, true), remote: conn.RemoteAddr()}
}

// ReadFrom reads the next packet from the edge.
func (c *PacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, err := c.fc.readPacket(p)
	if err != nil {
		return 0, nil, err
	}
	return n, c.remote, nil
}

// WriteTo queues p for the edge, whatever addr is; a full queue drops it.
func (c *PacketConn) WriteTo(p []byte, _ net.Addr) (int, error) { return c.fc.writePacket(p) }

// Close says goodbye and closes the TCP connection. It is safe to call more
// than once.
func (c *PacketConn) Close() error {
	c.fc.close(closeNormal, "")
	return nil
}

func (c *PacketConn) LocalAddr() net.Addr                { return c.fc.conn.LocalAddr() }
func (c *PacketConn) RemoteAddr() net.Addr               { return c.remote }
func (c *PacketConn) SetDeadline(t time.Time) error      { return c.fc.conn.SetReadDeadline(t) }
func (c *PacketConn) SetReadDeadline(t time.Time) error  { return c.fc.conn.SetReadDeadline(t) }
func (c *PacketConn) SetWriteDeadline(t time.Time) error { return nil }

// SetReadBuffer and SetWriteBuffer do nothing: the TCP connection has its
// own buffers. They keep quic-go from warning about UDP buffer sizes.
func (c *PacketConn) SetReadBuffer(int) error  { return nil }
func (c *PacketConn) SetWriteBuffer(int) error { return nil }

// Dropped returns how many packets were dropped because the queue was full.
func (c *PacketConn) Dropped() uint64 { return c.fc.dropped.Load() }

// StreamAddr is the address of one upgraded TCP connection on the edge's
// Mux: the client's address (from X-Forwarded-For when the peer is a
// trusted proxy, else the TCP peer), distinct for every connection.
type StreamAddr struct {
	Client netip.AddrPort
	fc     *frameConn
}

func (a *StreamAddr) Network() string { return "tcp" }
func (a *StreamAddr) String() string  { return a.Client.String() }

// Mux is the edge's end of the TCP transport: one net.PacketConn for a
// quic.Transport, fed by every upgraded TCP connection. Each connection
// has an address of its own (a *StreamAddr); a packet written to it goes
// down that connection only. New allocates; Close ends every connection
// and waits for their goroutines.
type Mux struct {
	local net.Addr
	in    chan muxPacket
	done  chan struct{}
	idle  time.Duration

	dlMu     sync.Mutex // guards deadline
	deadline time.Time
	dlKick   chan struct{}

	dropped atomic.Uint64 // packets of closed connections' full queues

	mu     sync.Mutex // guards conns and closed
	conns  map[*frameConn]struct{}
	closed bool
	wg     sync.WaitGroup
	once   sync.Once
}

type muxPacket struct {
	buf  *[]byte
	n    int
	addr *StreamAddr
}

// MuxIdleTimeout is how long an upgraded connection may bring no frame
// before the edge closes it: QUIC keep-alives come every AgentKeepAlive.
const MuxIdleTimeout = 30 * time.Second

// NewMux returns a Mux whose LocalAddr is local (informational).
func NewMux(local net.Addr) *Mux {
	return &Mux{
		local:  local,
		in:     make(chan muxPacket, 256),
		done:   make(chan struct{}),
		dlKick: make(chan struct{}, 1),
		idle:   MuxIdleTimeout,
		conns:  make(map[*frameConn]struct{}),
	}
}

// ErrMuxClosed is returned by Add once the Mux is closed.
var ErrMuxClosed = fmt.Errorf("quicutil: TCP transport closed")

// Add serves conn, whose upgrade is done, as the address client; br holds
// what was read of it already (or nil). It returns at once; the
// connection ends when the peer closes it, when it is idle for
// MuxIdleTimeout, on a bad frame, or when the Mux closes.
func (m *Mux) Add(conn net.Conn, br *bufio.Reader, client netip.AddrPort) error {
	fc := newFrameConn(conn, br, false)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		fc.close(closeGoingAway, "edge shutting down")
		return ErrMuxClosed
	}
	m.conns[fc] = struct{}{}
	m.wg.Add(1)
	m.mu.Unlock()
	addr := &StreamAddr{Client: client, fc: fc}
	go func() {
		defer m.wg.Done()
		err := m.readLoop(addr)
		m.mu.Lock()
		delete(m.conns, fc)
		m.mu.Unlock()
		if isTimeout(err) {
			fc.close(closeGoingAway, fmt.Sprintf("no frame for %s", m.idle))
		} else {
			fc.close(closeNormal, "")
		}
		m.dropped.Add(fc.dropped.Load())
	}()
	return nil
}

// readLoop hands the connection's packets to ReadFrom until it fails, and
// returns why.
func (m *Mux) readLoop(addr *StreamAddr) error {
	fc := addr.fc
	var setAt time.Time
	for {
		if now := time.Now(); now.Sub(setAt) > m.idle/8 {
			fc.conn.SetReadDeadline(now.Add(m.idle))
			setAt = now
		}
		bp := packetPool.Get().(*[]byte)
		n, err := fc.readPacket((*bp)[:cap(*bp)])
		if err != nil {
			packetPool.Put(bp)
			return err
		}
		select {
		case m.in <- muxPacket{bp, n, addr}:
		case <-m.done:
			packetPool.Put(bp)
			return net.ErrClosed
		}
	}
}

// ReadFrom returns the next packet of any connection, and its *StreamAddr.
func (m *Mux) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		m.dlMu.Lock()
		dl := m.deadline
		m.dlMu.Unlock()
		var timeout <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			timeout = t.C
		}
		n, addr, err, again := 0, net.Addr(nil), error(nil), false
		select {
		case pk := <-m.in:
			n, addr = copy(p, (*pk.buf)[:pk.n]), pk.addr
			packetPool.Put(pk.buf)
		case <-m.done:
			err = net.ErrClosed
		case <-timeout:
			err = os.ErrDeadlineExceeded
		case <-m.dlKick:
			again = true
		}
		if t != nil {
			t.Stop()
		}
		if !again {
			return n, addr, err
		}
	}
}

// WriteTo queues p on the connection of addr, a *StreamAddr from ReadFrom.
func (m *Mux) WriteTo(p []byte, addr net.Addr) (int, error) {
	a, ok := addr.(*StreamAddr)
	if !ok || a.fc == nil {
		return 0, fmt.Errorf("quicutil: write to %v, not an address of this TCP transport", addr)
	}
	return a.fc.writePacket(p)
}

// Close closes every connection and waits for their goroutines. It is safe
// to call more than once.
func (m *Mux) Close() error {
	m.once.Do(func() {
		m.mu.Lock()
		m.closed = true
		conns := make([]*frameConn, 0, len(m.conns))
		for fc := range m.conns {
			conns = append(conns, fc)
		}
		m.mu.Unlock()
		close(m.done)
		var wg sync.WaitGroup
		for _, fc := range conns {
			wg.Go(func() { fc.close(closeGoingAway, "edge shutting down") })
		}
		wg.Wait()
		m.wg.Wait()
		for {
			select {
			case pk := <-m.in:
				packetPool.Put(pk.buf)
			default:
				return
			}
		}
	})
	return nil
}

// Dropped returns how many packets the Mux dropped because a
// connection's write queue was full (as a full UDP socket drops them).
func (m *Mux) Dropped() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.dropped.Load()
	for fc := range m.conns {
		n += fc.dropped.Load()
	}
	return n
}

// Conns returns the number of upgraded connections being served.
func (m *Mux) Conns() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.conns)
}

func (m *Mux) LocalAddr() net.Addr { return m.local }

func (m *Mux) SetDeadline(t time.Time) error { return m.SetReadDeadline(t) }

// SetReadDeadline sets the deadline of ReadFrom (quic-go uses it to stop
// its reader on Transport.Close).
func (m *Mux) SetReadDeadline(t time.Time) error {
	m.dlMu.Lock()
	m.deadline = t
	m.dlMu.Unlock()
	select {
	case m.dlKick <- struct{}{}:
	default:
	}
	return nil
}

func (m *Mux) SetWriteDeadline(time.Time) error { return nil }
func (m *Mux) SetReadBuffer(int) error          { return nil }
func (m *Mux) SetWriteBuffer(int) error         { return nil }

// ServeUpgrade answers r, an upgrade request for AgentPath, and adds its
// connection as the address client. A request that is not a WebSocket
// upgrade from an agent gets a status saying what is wrong.
func (m *Mux) ServeUpgrade(w http.ResponseWriter, r *http.Request, client netip.AddrPort) {
	refuse := func(code int, msg string) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Connection", "close")
		w.WriteHeader(code)
		io.WriteString(w, msg+"\n")
	}
	switch {
	case r.ProtoMajor != 1:
		refuse(http.StatusHTTPVersionNotSupported, AgentPath+" is pico-agent's TCP transport: it takes an HTTP/1.1 WebSocket upgrade, not "+r.Proto)
		return
	case r.Method != http.MethodGet:
		w.Header().Set("Allow", http.MethodGet)
		refuse(http.StatusMethodNotAllowed, AgentPath+" is pico-agent's TCP transport: it takes GET with Upgrade: websocket, not "+r.Method)
		return
	case !headerHas(r.Header, "Connection", "upgrade") || !headerHas(r.Header, "Upgrade", "websocket"):
		w.Header().Set("Upgrade", "websocket")
		refuse(http.StatusUpgradeRequired, AgentPath+" is pico-agent's TCP transport: it takes a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket); run pico-agent --transport tcp")
		return
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		w.Header().Set("Sec-WebSocket-Version", "13")
		refuse(http.StatusUpgradeRequired, "Sec-WebSocket-Version must be 13")
		return
	case !headerHas(r.Header, "Sec-WebSocket-Protocol", WebSocketProtocol):
		refuse(http.StatusBadRequest, "Sec-WebSocket-Protocol must offer "+WebSocketProtocol+" (this path serves pico agents only)")
		return
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	if b, err := base64.StdEncoding.DecodeString(key); err != nil || len(b) != 16 {
		refuse(http.StatusBadRequest, "Sec-WebSocket-Key must be 16 bytes in base64")
		return
	}
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		refuse(http.StatusServiceUnavailable, "edge node shutting down")
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		refuse(http.StatusInternalServerError, "cannot take over the connection: "+err.Error())
		return
	}
	conn.SetDeadline(time.Now().Add(frameWriteTimeout))
	_, err = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: "+acceptKey(key)+"\r\nSec-WebSocket-Protocol: "+WebSocketProtocol+"\r\n\r\n")
	conn.SetDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return
	}
	// The server's reader buffers only 4 KiB; read through a larger one
	// (it passes large reads through once empty).
	m.Add(conn, bufio.NewReaderSize(brw.Reader, writeBuffer), client)
}
