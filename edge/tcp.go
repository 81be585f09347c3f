package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// forwardTCP connects a stream opened by a forwarder to an agent serving
// h.Endpoint, answers the forwarder, and splices the two streams.
func (s *Server) forwardTCP(client *quicutil.Conn, h quicutil.StreamHeader, ctx context.Context) {
	start := time.Now()
	id := routing.EndpointID(h.Endpoint)
	s.m.tcpConns.Inc()
	var up *quicutil.Conn
	var tg target
	release, ok := func() {}, true
	if _, _, lerr := s.table.Lookup(id); lerr == nil {
		release, ok = s.connGate.acquire(id) // only endpoints that exist get a counter
	}
	var err error
	if ok {
		defer release()
		up, tg, err = s.dialEndpoint(ctx, id, quicutil.KindTCP, h.ClientAddr)
	} else {
		s.m.overloaded.Inc()
		err = &quicutil.StatusError{Code: quicutil.StatusOverloaded,
			Message: fmt.Sprintf("%d upgraded connections and TCP connections open to the endpoint on this node (the limit); retry in a moment", s.cfg.MaxConnsPerEndpoint)}
	}
	attrs := []slog.Attr{
		slog.String("endpoint_id", h.Endpoint),
		slog.String("proto", "tcp"),
		slog.String("remote_addr", h.ClientAddr),
		slog.String("node_id", s.cfg.NodeID),
	}
	if err != nil {
		var code quicutil.Status
		var msg string
		var se *quicutil.StatusError
		switch {
		case errors.Is(err, routing.ErrNoRoute):
			code, msg = quicutil.StatusNoRoute, fmt.Sprintf("no upstream for endpoint %q", h.Endpoint)
		case errors.As(err, &se):
			code, msg = se.Code, fmt.Sprintf("endpoint %q: %s", h.Endpoint, se.Message)
		default:
			code, msg = quicutil.StatusUpstreamUnreachable, fmt.Sprintf("endpoint %q: agent link failed: %v", h.Endpoint, err)
		}
		answer(client, code, msg)
		client.Close()
		if s.cfg.AccessLogOff[h.Endpoint] {
			return
		}
		s.cfg.AccessLog.LogAttrs(ctx, slog.LevelInfo, "tcp connection", append(attrs,
			slog.Duration("duration", time.Since(start)), slog.String("err", msg))...)
		return
	}
	defer tg.addLoad(-1)
	s.live.add()
	defer s.live.done()
	answer(client, quicutil.StatusOK, "")
	res := s.splice(client, up, s.cfg.TCPIdleTimeout)
	s.m.tcpBytesIn.Add(int(res.AToB))
	s.m.tcpBytesOut.Add(int(res.BToA))
	attrs = append(attrs,
		slog.String("agent_id", tg.name()),
		slog.Int64("bytes_in", res.AToB),
		slog.Int64("bytes_out", res.BToA),
		slog.Duration("duration", time.Since(start)))
	if res.Err != nil {
		attrs = append(attrs, slog.String("err", res.Err.Error()))
	}
	if s.logRequest(id, 200, res.Err) {
		s.cfg.AccessLog.LogAttrs(ctx, slog.LevelInfo, "tcp connection", attrs...)
	}
}

// dialEndpoint opens a stream of kind (KindTCP or KindTLS) to an agent
// serving id and waits for its answer. The upstream has seen no byte before a good answer, so a failure
// is retried once on another agent. On success the link's in-flight
// count includes the stream; the caller decrements it.
func (s *Server) dialEndpoint(ctx context.Context, id routing.EndpointID, kind quicutil.Kind, clientAddr string) (*quicutil.Conn, target, error) {
	proto, _, err := s.table.Lookup(id)
	if err != nil {
		return nil, nil, err
	}
	if proto != tableProto(kind) {
		return nil, nil, &quicutil.StatusError{Code: quicutil.StatusNoRoute, Message: wrongProto(proto, kind)}
	}
	at := attempts{s: s, id: id}
	for {
		tg, err := at.next()
		if err != nil {
			return nil, nil, err
		}
		tg.addLoad(1)
		c, err := s.openAnswered(ctx, tg, id, kind, clientAddr)
		if err == nil {
			return c, tg, nil
		}
		tg.addLoad(-1)
		at.failed(err)
	}
}

// wrongProto says why an endpoint that serves proto is not reached by a
// connection that wants kind.
func wrongProto(proto string, kind quicutil.Kind) string {
	switch {
	case proto == protoHTTP && kind == quicutil.KindTLS:
		return "serves HTTP, not TLS passthrough; send HTTPS requests to the edge's HTTPS port instead"
	case proto == protoHTTP:
		return "serves HTTP, not raw TCP; send HTTP requests to the edge's proxy port instead"
	case proto == protoTLS:
		return "is a TLS passthrough endpoint; reach it on the edge's passthrough port (--passthrough-addr), not with pico-agent forward"
	}
	return "serves raw TCP, not TLS passthrough; reach it with 'pico-agent forward'"
}

func (s *Server) openAnswered(ctx context.Context, tg target, id routing.EndpointID, kind quicutil.Kind, clientAddr string) (*quicutil.Conn, error) {
	c, err := tg.openStream(ctx, &quicutil.StreamHeader{Kind: kind, Endpoint: string(id), ClientAddr: clientAddr}, false)
	if err != nil {
		return nil, err
	}
	if err := c.Flush(); err != nil {
		c.Abort(quicutil.StreamCodeCanceled)
		return nil, &linkError{err: err}
	}
	c.SetReadDeadline(time.Now().Add(s.cfg.OpenStreamTimeout))
	err = quicutil.ReadAnswer(c)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Abort(quicutil.StreamCodeCanceled)
		return nil, err
	}
	return c, nil
}
