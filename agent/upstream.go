package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pico-edge/pico/agent/inspect"
	"github.com/pico-edge/pico/quicutil"
)

// ServeUpstream registers endpoint id with kind (quicutil.KindHTTP,
// quicutil.KindTCP, or quicutil.KindTLS for a TLS server the edge passes
// through by SNI) and connects each of its streams to the TCP address
// upstream, speaking HTTP/1.1 for HTTP. It returns once the edge accepted
// the endpoint, or with the edge's refusal; the endpoint is served until
// Close or Remove.
func (a *Agent) ServeUpstream(ctx context.Context, id string, kind quicutil.Kind, upstream string) error {
	if kind == quicutil.KindHTTP2 {
		return a.ServeHTTPUpstream(ctx, id, Upstream{Addr: upstream, HTTP2: true})
	}
	return a.serveUpstream(ctx, id, kind, Upstream{Addr: upstream})
}

// Upstream says how the agent reaches an HTTP upstream.
type Upstream struct {
	Addr string // host:port
	// HTTP2 speaks HTTP/2 to the upstream: with prior knowledge (h2c) in
	// plaintext, or negotiated with ALPN over TLS. gRPC needs it.
	HTTP2 bool
	// TLS connects to the upstream with TLS; nil means plaintext. Its
	// ServerName defaults to the host of Addr and its NextProtos are set
	// from HTTP2.
	TLS *tls.Config
}

// ServeHTTPUpstream registers HTTP endpoint id and connects each of its
// streams to up: the edge speaks HTTP/1.1 or, with up.HTTP2, HTTP/2 over
// the stream, and the agent adds TLS when up.TLS is set.
func (a *Agent) ServeHTTPUpstream(ctx context.Context, id string, up Upstream) error {
	kind := quicutil.KindHTTP
	if up.HTTP2 {
		kind = quicutil.KindHTTP2
	}
	if up.TLS != nil {
		cfg := up.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(up.Addr)
		}
		cfg.NextProtos = []string{"http/1.1"}
		if up.HTTP2 {
			cfg.NextProtos = []string{"h2"}
		}
		up.TLS = cfg
	}
	return a.serveUpstream(ctx, id, kind, up)
}

func (a *Agent) serveUpstream(ctx context.Context, id string, kind quicutil.Kind, up Upstream) error {
	if _, _, err := net.SplitHostPort(up.Addr); err != nil {
		return fmt.Errorf("agent: upstream %q: want host:port", up.Addr)
	}
	_, err := a.serve(ctx, id, kind, &upstreamHandler{a: a, up: up})
	return err
}

// Remove stops serving endpoint id.
func (a *Agent) Remove(id string) {
	if r := a.lookup(id); r != nil {
		if ln, ok := r.handler.(*Listener); ok {
			ln.closeLocal()
		}
		a.remove(r)
	}
}

type upstreamHandler struct {
	a  *Agent
	up Upstream
}

func (u *upstreamHandler) serve(c *quicutil.Conn, h quicutil.StreamHeader, st *endpointStats) {
	cfg := &u.a.cfg
	up, err := u.dial(c.Stream().Context())
	if err != nil {
		st.upstreamErrors.Add(1)
		code := quicutil.StatusUpstreamUnreachable
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
			code = quicutil.StatusUpstreamTimeout
		}
		u.a.log.Warn("upstream unreachable", "endpoint_id", h.Endpoint, "upstream", u.up.Addr, "err", err)
		msg := fmt.Sprintf("agent could not reach upstream %s: %v", u.up.Addr, unwrapOp(err))
		if h.Kind.IsHTTP() {
			cfg.Inspector.Refused(u.inspectInfo(h), msg)
		}
		refuse(c, code, msg)
		return
	}
	idle := cfg.TCPIdleTimeout
	if h.Kind.IsHTTP() {
		idle = cfg.StreamIdleTimeout
	}
	acceptAnswer(c, h)
	if h.Kind == quicutil.KindHTTP {
		// A keep-alive stream: when the upstream closes the idle
		// connection as the edge sends the next request, the edge learns
		// that the request never reached it.
		if s := cfg.Inspector.Stream(u.inspectInfo(h)); s != nil {
			s.Close(quicutil.JoinUpstreamObserved(c, up, idle, s).Err)
			return
		}
		quicutil.JoinUpstream(c, up, idle)
		return
	}
	if h.Kind == quicutil.KindHTTP2 {
		if s := cfg.Inspector.Stream(u.inspectInfo(h)); s != nil {
			s.Close(quicutil.JoinObserved(c, up, idle, s).Err)
			return
		}
	}
	quicutil.Join(c, up, idle)
}

// dial connects to the upstream, with TLS when configured; over TLS an
// HTTP/2 upstream must agree to h2.
func (u *upstreamHandler) dial(ctx context.Context) (net.Conn, error) {
	d := &net.Dialer{Timeout: u.a.cfg.UpstreamDialTimeout, KeepAlive: 30 * time.Second}
	if u.up.TLS == nil {
		return d.DialContext(ctx, "tcp", u.up.Addr)
	}
	td := &tls.Dialer{NetDialer: d, Config: u.up.TLS}
	c, err := td.DialContext(ctx, "tcp", u.up.Addr)
	if err != nil {
		return nil, err
	}
	if u.up.HTTP2 && c.(*tls.Conn).ConnectionState().NegotiatedProtocol != "h2" {
		c.Close()
		return nil, errors.New("it does not offer HTTP/2 over TLS (ALPN h2)")
	}
	return c, nil
}

// acceptAnswer tells the edge the stream is being served. An HTTP answer
// rides with the first response bytes; a TCP answer goes at once, since
// the edge waits for it before it passes on the client's bytes.
func acceptAnswer(c *quicutil.Conn, h quicutil.StreamHeader) {
	ok := quicutil.AppendAnswer(nil, quicutil.StatusOK, "")
	if h.Kind.IsHTTP() {
		c.Prepend(ok)
		return
	}
	writeAnswer(c, quicutil.StatusOK, "")
}

// unwrapOp drops the *net.OpError wrapping ("dial tcp 127.0.0.1:3000: ")
// since the message names the upstream already.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// clientAddr is the client's address from a stream header, or fallback.
func clientAddr(h quicutil.StreamHeader, fallback net.Addr) net.Addr {
	if ap, err := netip.ParseAddrPort(h.ClientAddr); err == nil {
		return net.TCPAddrFromAddrPort(ap)
	}
	return fallback
}

// inspectInfo describes a stream to the inspector.
func (u *upstreamHandler) inspectInfo(h quicutil.StreamHeader) inspect.StreamInfo {
	return inspect.StreamInfo{Endpoint: h.Endpoint, ClientAddr: h.ClientAddr, HTTP2: h.Kind == quicutil.KindHTTP2,
		Upstream: inspect.Upstream{Addr: u.up.Addr, TLS: u.up.TLS, HTTP2: u.up.HTTP2}}
}
