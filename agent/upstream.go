package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pico-edge/pico/quicutil"
)

// ServeUpstream registers endpoint id with kind (quicutil.KindHTTP or
// quicutil.KindTCP) and connects each of its streams to the TCP address
// upstream. It returns once the edge accepted the endpoint, or with the
// edge's refusal; the endpoint is served until Close or Remove.
func (a *Agent) ServeUpstream(ctx context.Context, id string, kind quicutil.Kind, upstream string) error {
	if _, _, err := net.SplitHostPort(upstream); err != nil {
		return fmt.Errorf("agent: upstream %q: want host:port", upstream)
	}
	_, err := a.serve(ctx, id, kind, &upstreamHandler{a: a, addr: upstream})
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
	a    *Agent
	addr string
}

func (u *upstreamHandler) serve(c *quicutil.Conn, h quicutil.StreamHeader) {
	cfg := &u.a.cfg
	d := net.Dialer{Timeout: cfg.UpstreamDialTimeout, KeepAlive: 30 * time.Second}
	up, err := d.DialContext(c.Stream().Context(), "tcp", u.addr)
	if err != nil {
		code := quicutil.StatusUpstreamUnreachable
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
			code = quicutil.StatusUpstreamTimeout
		}
		u.a.log.Warn("upstream unreachable", "endpoint_id", h.Endpoint, "upstream", u.addr, "err", err)
		refuse(c, code, fmt.Sprintf("agent could not reach upstream %s: %v", u.addr, unwrapOp(err)))
		return
	}
	idle := cfg.TCPIdleTimeout
	if h.Kind == quicutil.KindHTTP {
		idle = cfg.StreamIdleTimeout
	}
	acceptAnswer(c, h)
	quicutil.Join(c, up, idle)
}

// acceptAnswer tells the edge the stream is being served. An HTTP answer
// rides with the first response bytes; a TCP answer goes at once, since
// the edge waits for it before it passes on the client's bytes.
func acceptAnswer(c *quicutil.Conn, h quicutil.StreamHeader) {
	ok := quicutil.AppendAnswer(nil, quicutil.StatusOK, "")
	if h.Kind == quicutil.KindHTTP {
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
