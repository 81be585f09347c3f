package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/http/httpproxy"

	"github.com/pico-edge/pico/quicutil"
)

// Transport selects how links reach the edge.
type Transport string

const (
	// TransportQUIC: QUIC on UDP only.
	TransportQUIC Transport = "quic"
	// TransportTCP: the same QUIC connection, its packets carried over one
	// TCP connection (an HTTP/1.1 WebSocket upgrade at /_pico/agent, through
	// an HTTP proxy when one is set).
	TransportTCP Transport = "tcp"
	// TransportAuto: QUIC first; TCP when QUIC gets no handshake within
	// AutoQUICTimeout (UDP blocked), with QUIC probed again in the
	// background and links moved back to it when it works.
	TransportAuto Transport = "auto"
)

// Timing of TransportAuto.
const (
	// AutoQUICTimeout is how long a QUIC attempt gets before auto tries TCP.
	AutoQUICTimeout = 3 * time.Second
	// DefaultQUICProbe is the first wait before a link on TCP probes QUIC
	// again; each failed probe doubles it, up to MaxQUICProbe.
	DefaultQUICProbe = 30 * time.Second
	MaxQUICProbe     = 5 * time.Minute
)

// isURL reports whether an Edges entry is a URL (http:// or https://), the
// TCP transport's address of a balancer, rather than host:port.
func isURL(edge string) bool {
	return strings.HasPrefix(edge, "https://") || strings.HasPrefix(edge, "http://")
}

// edgeURL returns the URL of the TCP transport at edge: the URL itself, or
// for host:port the agent port's TCP listener (plain HTTP: the QUIC
// connection inside carries its own TLS).
func edgeURL(edge string) (*url.URL, error) {
	if !isURL(edge) {
		return &url.URL{Scheme: "http", Host: edge, Path: quicutil.AgentPath}, nil
	}
	u, err := url.Parse(edge)
	if err != nil {
		return nil, err
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("want http(s)://host[:port][/path]")
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = quicutil.AgentPath
	}
	return u, nil
}

// hostPort returns u's host:port, with the scheme's default port.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// transportOf says how to reach c: a URL is reached over TCP whatever the
// configured transport.
func (a *Agent) transportOf(c candidate) Transport {
	if isURL(c.addr) {
		return TransportTCP
	}
	return a.cfg.Transport
}

// packetConn opens what a link's quic.Transport runs on: a UDP socket, or
// a TCP connection upgraded at the edge's /_pico/agent. It returns the
// address to dial.
func (a *Agent) packetConn(ctx context.Context, c candidate, t Transport) (net.PacketConn, net.Addr, error) {
	if t != TransportTCP {
		udpAddr, err := net.ResolveUDPAddr("udp", c.addr)
		if err != nil {
			return nil, nil, fmt.Errorf("resolve edge %s: %w", c.addr, err)
		}
		udp, err := net.ListenUDP("udp", nil)
		if err != nil {
			return nil, nil, fmt.Errorf("open UDP socket: %w", err)
		}
		return udp, udpAddr, nil
	}
	u, err := edgeURL(c.addr)
	if err != nil {
		return nil, nil, fmt.Errorf("edge %s: %w", c.addr, err)
	}
	conn, err := a.dialTCP(ctx, u)
	if err != nil {
		return nil, nil, err
	}
	pc, err := quicutil.Upgrade(ctx, conn, u.String(), nil)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return pc, pc.RemoteAddr(), nil
}

// quicConfig is the link's QUIC configuration over transport t.
func quicConfig(t Transport) *quic.Config {
	if t == TransportTCP {
		return quicutil.TCPConfig(quicutil.AgentConfig())
	}
	return quicutil.AgentConfig()
}

// dialTCP connects to u's host (through the proxy, if one applies), with
// TLS for https.
func (a *Agent) dialTCP(ctx context.Context, u *url.URL) (net.Conn, error) {
	target := hostPort(u)
	proxy, err := a.proxyFor(target)
	if err != nil {
		return nil, err
	}
	var conn net.Conn
	if proxy != nil {
		conn, err = a.dialProxy(ctx, proxy, target)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", target)
		if err != nil {
			err = fmt.Errorf("dial edge %s over TCP: %w", target, err)
		}
	}
	if err != nil {
		return nil, err
	}
	if u.Scheme != "https" {
		return conn, nil
	}
	tc := tls.Client(conn, a.outerTLS(u.Hostname()))
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS to %s: %w", target, err)
	}
	return tc, nil
}

// outerTLS is the TLS config of an https:// edge URL (a balancer's
// certificate): the system roots or, failing them, Config.RootCAs.
func (a *Agent) outerTLS(host string) *tls.Config {
	roots := a.cfg.RootCAs
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         host,
		NextProtos:         []string{"http/1.1"},
		InsecureSkipVerify: true, // verified below, against either pool
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no certificate")
			}
			opts := x509.VerifyOptions{DNSName: host, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			if err != nil && roots != nil {
				opts.Roots = roots
				if _, err2 := cs.PeerCertificates[0].Verify(opts); err2 == nil {
					return nil
				}
			}
			return err
		},
	}
}

// proxyFor returns the HTTP proxy to reach target (host:port) through:
// Config.ProxyURL when set, else HTTPS_PROXY (and NO_PROXY) from the
// environment, or nil. The link is QUIC with its own TLS inside, so it
// always goes through CONNECT, as HTTPS does.
func (a *Agent) proxyFor(target string) (*url.URL, error) {
	if a.cfg.ProxyURL != nil {
		return a.cfg.ProxyURL, nil
	}
	if a.envProxy == nil {
		return nil, nil
	}
	p, err := a.envProxy(&url.URL{Scheme: "https", Host: target})
	if err != nil {
		return nil, fmt.Errorf("HTTPS_PROXY: %w", err)
	}
	return p, nil
}

// envProxyFunc reads HTTPS_PROXY and NO_PROXY once.
func envProxyFunc() func(*url.URL) (*url.URL, error) {
	cfg := httpproxy.FromEnvironment()
	if cfg.HTTPSProxy == "" {
		return nil
	}
	return cfg.ProxyFunc()
}

// ProxyError is an HTTP proxy's refusal of the tunnel.
type ProxyError struct {
	Proxy      string // the proxy's host:port
	StatusCode int
	Status     string
}

// Credentials reports whether the proxy wants (other) credentials: 407,
// or 401 as some proxies (tinyproxy) answer a CONNECT.
func (e *ProxyError) Credentials() bool {
	return e.StatusCode == http.StatusProxyAuthRequired || e.StatusCode == http.StatusUnauthorized
}

func (e *ProxyError) Error() string {
	if e.Credentials() {
		return fmt.Sprintf("proxy %s refused the credentials (%s): "+
			"give them in the proxy URL, http://USER:PASSWORD@%s", e.Proxy, e.Status, e.Proxy)
	}
	return fmt.Sprintf("proxy %s refused the tunnel: %s", e.Proxy, e.Status)
}

// dialProxy opens a tunnel to target through the HTTP proxy p (CONNECT,
// with TLS to the proxy for https://, Basic credentials from p's userinfo).
func (a *Agent) dialProxy(ctx context.Context, p *url.URL, target string) (net.Conn, error) {
	addr := hostPort(p)
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial proxy %s: %w", addr, err)
	}
	if p.Scheme == "https" {
		tc := tls.Client(conn, &tls.Config{MinVersion: tls.VersionTLS12, ServerName: p.Hostname(), RootCAs: a.cfg.ProxyRootCAs})
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS to proxy %s: %w", addr, err)
		}
		conn = tc
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\nUser-Agent: pico-agent\r\n"
	if p.User != nil {
		pw, _ := p.User.Password()
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(p.User.Username()+":"+pw)) + "\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		conn.Close()
		return nil, fmt.Errorf("proxy %s: %w", addr, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("proxy %s: read CONNECT answer: %w", addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		conn.Close()
		return nil, &ProxyError{Proxy: addr, StatusCode: resp.StatusCode, Status: resp.Status}
	}
	conn.SetDeadline(time.Time{})
	if br.Buffered() > 0 {
		return &bufferedConn{Conn: conn, r: io.MultiReader(io.LimitReader(br, int64(br.Buffered())), conn)}, nil
	}
	return conn, nil
}

// bufferedConn reads what a proxy sent after its answer first.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// udpBlocked reports whether err, from a QUIC attempt, looks like UDP not
// getting through: no handshake in time, or the socket refused to send.
// An answer from the edge (a refusal, a certificate) means it does.
func udpBlocked(err error) bool {
	var hs *quic.HandshakeTimeoutError
	var idle *quic.IdleTimeoutError
	switch {
	case errors.Is(err, ErrUnauthorized):
		return false
	case errors.As(err, &hs), errors.As(err, &idle), errors.Is(err, context.DeadlineExceeded):
		return true
	}
	// quic-go closes a connection whose socket refused to send with a
	// local INTERNAL_ERROR that keeps only the error's text ("write udp
	// ...: sendmsg: operation not permitted": a firewall rule on this
	// machine), so the text is matched too.
	var te *quic.TransportError
	local := errors.As(err, &te) && !te.Remote && te.ErrorCode == quic.InternalError
	for _, e := range []syscall.Errno{syscall.EPERM, syscall.EACCES, syscall.ECONNREFUSED, syscall.ENETUNREACH, syscall.EHOSTUNREACH} {
		if errors.Is(err, e) || local && strings.Contains(te.ErrorMessage, e.Error()) {
			return true
		}
	}
	return false
}

// fallback is TransportAuto's state, shared by the agent's slots.
type fallback struct {
	mu      sync.Mutex // guards the fields below
	onTCP   bool       // QUIC got no handshake and TCP did: new links use TCP
	quicUp  bool       // a link came up over QUIC since the agent started
	fails   int        // QUIC attempts in a row that got no handshake
	warned  bool       // the fallback was logged at WARN
	started time.Time
}

// connectAuto connects to c for TransportAuto: QUIC first (within
// AutoQUICTimeout) unless the agent moved to TCP already; TCP when QUIC
// got no handshake, once if QUIC never worked, twice in a row if it did
// (a link lost over QUIC retries QUIC: a passing loss is no reason to
// leave it), and only if TCP gets through (an edge that is down is not a
// blocked UDP).
func (a *Agent) connectAuto(ctx context.Context, c candidate, token string) (*link, error) {
	fb := &a.fb
	fb.mu.Lock()
	onTCP := fb.onTCP
	fb.mu.Unlock()
	if onTCP {
		return a.connectOver(ctx, c, token, TransportTCP)
	}
	qctx, cancel := context.WithTimeout(ctx, AutoQUICTimeout)
	l, qerr := a.connectOver(qctx, c, token, TransportQUIC)
	cancel()
	if qerr == nil {
		fb.mu.Lock()
		fb.quicUp, fb.fails = true, 0
		fb.mu.Unlock()
		return l, nil
	}
	if ctx.Err() != nil || !udpBlocked(qerr) {
		return nil, qerr
	}
	if errors.Is(qerr, context.DeadlineExceeded) {
		qerr = fmt.Errorf("no QUIC handshake within %s: %w", AutoQUICTimeout, qerr)
	}
	fb.mu.Lock()
	fb.fails++
	due := fb.fails >= 1 && !fb.quicUp || fb.fails >= 2
	fb.mu.Unlock()
	if !due {
		return nil, qerr
	}
	l, terr := a.connectOver(ctx, c, token, TransportTCP)
	if terr != nil {
		return nil, &autoError{quic: qerr, tcp: terr}
	}
	fb.mu.Lock()
	fb.onTCP = true
	warn := !fb.warned
	fb.warned = true
	since := time.Since(fb.started)
	fb.mu.Unlock()
	_, port, _ := net.SplitHostPort(c.addr)
	attrs := []any{"edge", c.addr, "quic_err", qerr.Error(), "since_start", since.Round(time.Millisecond).String(),
		"hint", "allow outbound UDP to port " + port + " of the edge to get QUIC back; the agent keeps trying QUIC in the background and moves back to it when it works"}
	if warn {
		l.log.Warn("QUIC over UDP got no handshake from the edge; serving over the TCP transport", attrs...)
	} else {
		l.log.Info("QUIC over UDP got no handshake from the edge again; serving over the TCP transport", attrs...)
	}
	return l, nil
}

// quicBack records that a probe reached the edge over QUIC: new links use
// QUIC again.
func (a *Agent) quicBack() {
	a.fb.mu.Lock()
	a.fb.onTCP, a.fb.fails, a.fb.quicUp = false, 0, true
	a.fb.mu.Unlock()
}

// probeQUIC tries to link to l's edge over QUIC, for a link on TCP under
// TransportAuto. It returns the new link, or nil.
func (a *Agent) probeQUIC(ctx context.Context, l *link) *link {
	qctx, cancel := context.WithTimeout(ctx, AutoQUICTimeout)
	defer cancel()
	nl, err := a.connectOver(qctx, candidate{addr: l.addr, serverName: l.serverName}, a.currentToken(), TransportQUIC)
	if err != nil {
		l.log.Debug("QUIC still gets no handshake; staying on TCP", "err", err)
		return nil
	}
	a.quicBack()
	nl.log.Info("QUIC works again: moving the link back from TCP to QUIC (make before break)")
	return nl
}

// withdrawAll deregisters every endpoint the link registered, so that its
// edge routes nothing more to it (see leavingLink.withdraw).
func (l *link) withdrawAll() {
	l.a.mu.Lock()
	ids := make([]string, 0, len(l.answers))
	for id, err := range l.answers {
		if err == nil {
			ids = append(ids, id)
		}
	}
	l.a.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	slices.Sort(ids)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	seq := l.seq.Add(1)
	if _, err := l.request(ctx, seq, &quicutil.Deregister{Seq: seq, IDs: ids}); err != nil {
		l.log.Debug("withdrawing the endpoints of the link being replaced", "err", err)
	}
}

// probing reports whether a link over t to addr should probe QUIC.
func (a *Agent) probing(l *link) bool {
	return a.cfg.Transport == TransportAuto && l.transport == TransportTCP && !isURL(l.addr)
}

// nextProbe doubles the probe wait, up to MaxQUICProbe.
func nextProbe(d time.Duration) time.Duration { return min(2*d, max(MaxQUICProbe, d)) }

// validTransport checks a Config's transport and edges together.
func validTransport(t Transport, edges []string) error {
	switch t {
	case TransportAuto, TransportQUIC, TransportTCP:
	default:
		return fmt.Errorf("agent: config: transport %q; want auto, quic or tcp", t)
	}
	for _, e := range edges {
		if !isURL(e) {
			continue
		}
		if t == TransportQUIC {
			return fmt.Errorf("agent: config: edge %q is a URL, reached over TCP, but the transport is quic", e)
		}
		if _, err := edgeURL(e); err != nil {
			return fmt.Errorf("agent: config: edge URL %q: %w", e, err)
		}
	}
	return nil
}
