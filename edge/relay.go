package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// errNotClustered answers a peer connection to a node without a cluster.
var errNotClustered = errors.New("this node is not in a cluster")

// servePeerConn serves a connection from another node: after it proved
// membership, each stream it opens is relayed to a local agent.
func (s *Server) servePeerConn(conn *quic.Conn) {
	c := s.cluster
	if c == nil {
		conn.CloseWithError(quicutil.ConnCodeProtocolError, errNotClustered.Error())
		return
	}
	log := s.log.With("component", "cluster", "remote_addr", conn.RemoteAddr().String())
	node, err := c.AcceptPeer(conn, s.cfg.HelloTimeout)
	if err != nil {
		s.m.peerRefused.Inc()
		s.m.peerRefusedLog.Log("remote_addr", conn.RemoteAddr().String(), "err", err)
		conn.CloseWithError(quicutil.ConnCodeProtocolError, err.Error())
		return
	}
	log = log.With("node", node)
	log.Debug("peer connected")
	if !s.peerIn.add(conn) {
		conn.CloseWithError(quicutil.ConnCodeGoingAway, "edge node shutting down")
		return
	}
	defer s.peerIn.remove(conn)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		str, err := conn.AcceptStream(conn.Context())
		if err != nil {
			return
		}
		wg.Go(func() { s.relayStream(conn, str, node, log) })
	}
}

// relayStream serves one stream from a peer: it opens a stream with the
// same header to a local agent that speaks the same kind, and copies bytes
// both ways, the agent's answer included. It never relays further.
func (s *Server) relayStream(conn *quic.Conn, str *quic.Stream, node string, log interface {
	Warn(string, ...any)
}) {
	c := quicutil.NewConn(str, conn.LocalAddr(), conn.RemoteAddr())
	str.SetReadDeadline(time.Now().Add(s.cfg.HelloTimeout))
	h, err := quicutil.ReadStreamHeader(str)
	str.SetReadDeadline(time.Time{})
	if err == nil && !h.Kind.IsHTTP() && !h.Kind.IsRaw() {
		err = fmt.Errorf("peer opened a %s stream; only http, tcp and tls streams are relayed", h.Kind)
	}
	if err != nil {
		log.Warn("relayed stream refused", "err", err)
		str.CancelRead(quicutil.StreamCodeBadHeader)
		answer(c, quicutil.StatusBadHeader, err.Error())
		c.Close()
		return
	}
	s.m.relayIn.Inc()
	s.m.peerCounter("pico_relay_peer_streams_total", "in", node).Inc()
	id := routing.EndpointID(h.Endpoint)
	h.Flags &^= quicutil.FlagRelayed
	var tried []routing.Target
	var lastErr error
	// As attempts does: targets found gone do not count against
	// maxAttempts, closed links are not picked.
	for spent := 0; spent < maxAttempts && len(tried) < maxTargets; {
		tg, err := s.table.Pick(id, func(tg routing.Target) bool {
			l, ok := tg.(*link)
			return !ok || slices.Contains(tried, tg) || linkClosed(tg) || l.endpointKind(id) != h.Kind
		})
		if err != nil {
			break
		}
		tried = append(tried, tg)
		l := tg.(*link)
		l.inflight.Add(1)
		target, err := l.openStream(conn.Context(), &h, false)
		if err == nil {
			err = target.Flush()
			if err != nil {
				target.Abort(quicutil.StreamCodeCanceled)
			}
		}
		if err != nil {
			l.inflight.Add(-1)
			lastErr = err
			if !targetGone(err) {
				spent++
			}
			continue
		}
		s.live.add()
		idle := s.cfg.StreamIdleTimeout
		if h.Kind.IsRaw() {
			idle = s.cfg.TCPIdleTimeout
		}
		start := time.Now()
		res := s.splice(c, target, idle)
		s.live.done()
		l.inflight.Add(-1)
		if !s.cfg.AccessLogOff[h.Endpoint] {
			// The node that received the request logs it; this line says
			// which agent served it here.
			attrs := []slog.Attr{slog.String("endpoint_id", h.Endpoint), slog.String("kind", h.Kind.String()),
				slog.String("from_node", node), slog.String("node_id", s.cfg.NodeID), slog.String("agent_id", l.hello.AgentID),
				slog.String("remote_addr", h.ClientAddr), slog.Int64("bytes_in", res.AToB), slog.Int64("bytes_out", res.BToA),
				slog.Duration("duration", time.Since(start))}
			if res.Err != nil {
				attrs = append(attrs, slog.String("err", res.Err.Error()))
			}
			s.cfg.AccessLog.LogAttrs(context.Background(), slog.LevelInfo, "relayed stream", attrs...)
		}
		s.m.relayBytes.Add(int(res.AToB + res.BToA))
		s.m.peerCounter("pico_relay_peer_bytes_total", "in", node).Add(int(res.AToB + res.BToA))
		return
	}
	code, msg := quicutil.StatusNoRoute, fmt.Sprintf("node %s has no agent for endpoint %q", s.cfg.NodeID, h.Endpoint)
	var se *quicutil.StatusError
	switch {
	case errors.As(lastErr, &se):
		code, msg = se.Code, se.Message
	case lastErr != nil:
		code, msg = quicutil.StatusUpstreamUnreachable, fmt.Sprintf("node %s: agent link failed: %v", s.cfg.NodeID, lastErr)
	}
	answer(c, code, msg)
	c.Close()
}
