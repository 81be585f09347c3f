package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/pico-edge/pico/edge/frontdoor"
	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// TLS passthrough (docs/front-door.md#tls-passthrough): the door reads a
// connection's ClientHello as far as its SNI (frontdoor.ReadClientHello);
// servePassthrough routes the connection, those bytes first, to an agent
// of the tls endpoint named by the SNI's first label, which splices it to
// its upstream. The edge never holds a key, a session or a plaintext byte
// of it.

// passthroughEndpoint is the endpoint an SNI host name names: its first
// label.
func passthroughEndpoint(sni string) (routing.EndpointID, error) {
	label, _, _ := strings.Cut(sni, ".")
	if err := quicutil.ValidateEndpointID(label); err != nil {
		return "", fmt.Errorf("SNI %q names no valid endpoint: %v", sni, err)
	}
	return routing.EndpointID(label), nil
}

// servePassthrough serves one passthrough connection whose ClientHello
// named sni; raw is every byte read from c so far. It closes c.
func (s *Server) servePassthrough(c net.Conn, sni string, raw []byte) {
	start := time.Now()
	remote := c.RemoteAddr().String()
	refuse := func(reason string, alert uint8, err error) {
		frontdoor.WriteAlert(c, alert)
		c.Close()
		s.passthroughRefused(c, reason, alert, fmt.Errorf("SNI %q: %w", sni, err))
	}
	id, err := passthroughEndpoint(sni)
	if err != nil {
		refuse("unknown_endpoint", frontdoor.AlertUnrecognizedName, err)
		return
	}
	proto, _, err := s.table.Lookup(id)
	switch {
	case err != nil:
		refuse("unknown_endpoint", frontdoor.AlertUnrecognizedName, fmt.Errorf("no upstream for endpoint %q", id))
		return
	case proto != protoTLS:
		refuse("unknown_endpoint", frontdoor.AlertUnrecognizedName, fmt.Errorf("endpoint %q %s", id, wrongProto(proto, quicutil.KindTLS)))
		return
	}
	release, ok := s.connGate.acquire(id)
	if !ok {
		s.m.overloaded.Inc()
		refuse("overloaded", frontdoor.AlertInternalError, fmt.Errorf(
			"endpoint %q has %d upgraded connections and TCP connections open on this node (the limit)", id, s.cfg.MaxConnsPerEndpoint))
		return
	}
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.OpenStreamTimeout)
	up, tg, err := s.dialEndpoint(ctx, id, quicutil.KindTLS, remote)
	cancel()
	if err != nil {
		var se *quicutil.StatusError
		switch {
		case errors.Is(err, routing.ErrNoRoute):
			refuse("unknown_endpoint", frontdoor.AlertUnrecognizedName, fmt.Errorf("no upstream for endpoint %q", id))
		case errors.As(err, &se) && se.Code == quicutil.StatusNoRoute:
			refuse("unknown_endpoint", frontdoor.AlertUnrecognizedName, fmt.Errorf("endpoint %q: %s", id, se.Message))
		case errors.As(err, &se):
			refuse("unreachable", frontdoor.AlertInternalError, fmt.Errorf("endpoint %q: %s", id, se.Message))
		default:
			refuse("unreachable", frontdoor.AlertInternalError, fmt.Errorf("endpoint %q: agent link failed: %v", id, err))
		}
		return
	}
	defer tg.addLoad(-1)
	s.m.passthroughConns.Inc()
	s.live.add()
	defer s.live.done()
	var res quicutil.JoinResult
	if _, err := up.Write(raw); err != nil { // the hello, and whatever came with it
		up.Abort(quicutil.StreamCodeCanceled)
		c.Close()
		res.Err = err
	} else {
		s.live.onEnd(c, func() { c.(interface{ CloseWrite() error }).CloseWrite() })
		s.live.onEnd(up, func() { up.EndWrite() })
		res = quicutil.Join(c, up, s.cfg.TCPIdleTimeout)
		s.live.forget(c, up)
		res.AToB += int64(len(raw))
	}
	s.m.passthroughBytesIn.Add(int(res.AToB))
	s.m.passthroughBytesOut.Add(int(res.BToA))
	attrs := []slog.Attr{
		slog.String("endpoint_id", string(id)),
		slog.String("proto", "tls"),
		slog.String("sni", sni),
		slog.String("remote_addr", remote),
		slog.String("node_id", s.cfg.NodeID),
		slog.String("agent_id", tg.name()),
		slog.Int64("bytes_in", res.AToB),
		slog.Int64("bytes_out", res.BToA),
		slog.Duration("duration", time.Since(start)),
	}
	if res.Err != nil {
		attrs = append(attrs, slog.String("err", res.Err.Error()))
	}
	if s.logRequest(id, 200, res.Err) {
		s.cfg.AccessLog.LogAttrs(context.Background(), slog.LevelInfo, "tls passthrough connection", attrs...)
	}
}

// passthroughRefused counts a passthrough connection refused before it
// reached an agent, and logs it quietly: anyone who reaches the port can
// cause it.
func (s *Server) passthroughRefused(c net.Conn, reason string, alert uint8, err error) {
	r := s.m.passthroughRefused[reason]
	if r == nil {
		r = s.m.passthroughRefused["malformed"]
	}
	r.add("remote_addr", c.RemoteAddr().String(), "reason", reason, "alert", int(alert), "err", err)
}
