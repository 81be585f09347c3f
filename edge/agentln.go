package edge

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"github.com/pico-edge/pico/edge/admin"
	"github.com/pico-edge/pico/edge/auth"
	"github.com/pico-edge/pico/edge/cluster"
	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// acceptAgents accepts agent connections until ctx ends or ln closes. The
// loop stays trivial: quic-go's accept queue holds only 32 connections.
// It keeps accepting while the node drains, until shutdown closes ln: a
// new agent is told at once to go elsewhere, and other nodes may still
// relay to the agents that have not moved yet.
func (s *Server) acceptAgents(ln *quic.Listener) error {
	for {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			if errors.Is(err, quic.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("accept agent connection: %w", err)
		}
		peer := conn.ConnectionState().TLS.NegotiatedProtocol == quicutil.ALPNPeer
		if !s.links.admit(peer) {
			conn.CloseWithError(quicutil.ConnCodeGoingAway, "edge node "+s.cfg.NodeID+" is shutting down; connect to another node")
			continue
		}
		go func() {
			defer s.links.serving.Done()
			if peer {
				s.servePeerConn(conn)
				return
			}
			s.serveAgentConn(conn)
		}()
	}
}

// maxBadStreams is how many malformed streams an agent connection may open
// before the edge closes it: a bug is reported, a flood is cut.
const maxBadStreams = 10

// link is one agent connection: its control stream, the endpoints it
// serves, and an HTTP transport whose connections are streams to it.
type link struct {
	srv     *Server
	id      uint64
	conn    *quic.Conn
	log     *slog.Logger
	hello   quicutil.Hello
	started time.Time
	// ups holds the proxy's idle streams and transports to the agent; the
	// transports are made on first use: an idle link never needs one (an
	// http.Transport is about 0.5 KiB before its first request).
	ups upstreams

	inflight   atomic.Int64  // streams in flight, for the balancer
	movedAt    atomic.Int64  // when rebalancing asked it to move (unix ns)
	badStreams atomic.Int32  // malformed streams the agent opened
	open       atomic.Int64  // streams to the agent not closed yet (keep-alive ones included)
	leaving    atomic.Bool   // told to go away: used only when nothing else serves
	streams    atomic.Uint64 // streams served in total
	suspect    atomic.Bool   // silent for linkSuspectAfter: used only when nothing else serves

	// Owned by watchLinks (linkwatch.go): the packets received at its last
	// look, and when that count last changed.
	seenPackets uint64
	seenAt      time.Time

	regLimit *rate.Limiter // Register messages

	ctrlMu sync.Mutex // serializes writes to ctrl
	ctrl   *quic.Stream

	mu        sync.Mutex // guards the fields below
	endpoints map[routing.EndpointID]quicutil.Kind
	closing   bool
	grant     auth.Grant  // what the token allows (with auth on; see authz.go)
	grantGen  int         // bumped by each new grant
	expiry    *time.Timer // closes the connection when the token expires

	connAttrs    []any       // of the "agent connected" log line
	connLogTimer *time.Timer // logs it when no registration came first
	connLogged   bool        // it was logged (or the link ended first)

	wg sync.WaitGroup // stream handlers
}

// Load implements routing.Target.
func (l *link) Load() int64 { return l.inflight.Load() }

func (l *link) addLoad(d int64)       { l.inflight.Add(d) }
func (l *link) leavingNow() bool      { return l.leaving.Load() || l.suspect.Load() }
func (l *link) upstreams() *upstreams { return &l.ups }

// The link as rebalancing sees it (cluster.Link).
func (l *link) LinkID() uint64     { return l.id }
func (l *link) AgentID() string    { return l.hello.AgentID }
func (l *link) Started() time.Time { return l.started }
func (l *link) AskedToMove() bool  { return l.movedAt.Load() != 0 }
func (l *link) AskToMove(reason string, now time.Time) {
	l.movedAt.Store(now.UnixNano())
	l.goAway(reason)
}

func (l *link) name() string                                   { return l.hello.AgentID }
func (l *link) rtt() time.Duration                             { return l.conn.ConnectionStats().SmoothedRTT }
func (l *link) streamKind(id routing.EndpointID) quicutil.Kind { return l.endpointKind(id) }

// serveAgentConn serves one agent connection; its goroutine reads the
// control stream for the life of the link. The setup is a function of its
// own so that its large frame (hello, grant, log arguments: 1.2 KiB) is off
// the stack while the link idles: the runtime halves a parked goroutine's
// stack only while it uses less than a quarter of it (800 bytes of guard
// included), so with that frame the stack stayed at 8 KiB on some links.
func (s *Server) serveAgentConn(conn *quic.Conn) {
	l, br, release, err := s.startLink(conn)
	if l == nil {
		return
	}
	if release != nil {
		defer release()
	}
	if err == nil {
		l.wg.Go(l.acceptStreams)
		err = l.controlLoop(br)
	}
	l.teardown(err)
}

// startSession reads the agent's Hello, checks its token, registers the
// link and sends the Welcome, whose error it returns. It returns a nil
// link if it refused the agent (and closed the connection), and a
// release to call once the link is torn down, or nil.
func (s *Server) startLink(conn *quic.Conn) (l *link, br quicutil.MessageReader, release func(), err error) {
	remote := conn.RemoteAddr().String()
	log := s.log.With("remote_addr", remote)
	ctx, cancel := context.WithTimeout(conn.Context(), s.cfg.HelloTimeout)
	hello, ctrl, br, err := s.readHello(ctx, conn)
	cancel()
	if err != nil {
		code := quicutil.ConnCodeProtocolError
		if errors.Is(err, context.DeadlineExceeded) {
			code = quicutil.ConnCodeTimeout
		}
		s.m.agentRefused["hello"].add("remote_addr", remote, "err", err)
		conn.CloseWithError(code, err.Error())
		return nil, nil, nil, err
	}
	var g auth.Grant
	var tokenKey [sha256.Size]byte
	if s.auth != nil {
		if g, err = s.auth.Verify(hello.Token); err != nil {
			s.auth.Refused(auth.WhoAgent)
			s.m.agentRefused["token"].add("remote_addr", remote, "agent_id", hello.AgentID, "err", err)
			conn.CloseWithError(quicutil.ConnCodeUnauthorized, err.Error())
			return nil, nil, nil, err
		}
		tokenKey = sha256.Sum256([]byte(hello.Token))
		if !s.tokens.take(tokenKey, s.cfg.MaxConnsPerToken) {
			msg := fmt.Sprintf("this token has %d agent connections to node %s already (the limit)", s.cfg.MaxConnsPerToken, s.cfg.NodeID)
			s.m.agentRefused["limit"].add("remote_addr", remote, "agent_id", hello.AgentID, "err", msg)
			conn.CloseWithError(quicutil.ConnCodeLimit, msg)
			return nil, nil, nil, errors.New(msg)
		}
		release = func() { s.tokens.give(tokenKey) }
	}
	hello.Token = "" // not kept
	l = &link{
		srv:       s,
		conn:      conn,
		hello:     hello,
		started:   time.Now(),
		ctrl:      ctrl,
		endpoints: make(map[routing.EndpointID]quicutil.Kind),
		regLimit:  rate.NewLimiter(rate.Limit(s.cfg.RegistrationsPerSecond), 2*s.cfg.RegistrationsPerSecond),
	}
	s.local.SetLinks(s.links.add(l))
	l.log = log.With("agent_id", hello.AgentID, "session", l.id)
	s.m.agentConnected.Inc()
	l.connAttrs = []any{"agent", hello.Agent}
	if s.auth != nil {
		l.mu.Lock()
		l.setGrantLocked(g)
		l.mu.Unlock()
		l.connAttrs = append(l.connAttrs, "subject", g.Subject(),
			"endpoints_allowed", g.Scope().String(), "token_expires", g.Expires().UTC().Format(time.RFC3339))
	}
	// "agent connected" waits for the first registration or a second: an
	// agent that only looks at which node it reached (a link slot finding
	// a node it is linked to already) leaves before, at debug level.
	l.mu.Lock()
	l.connLogTimer = time.AfterFunc(connectedLogDelay, l.logConnected)
	l.mu.Unlock()

	welcome := &quicutil.Welcome{NodeID: s.cfg.NodeID, Version: s.cfg.Version}
	if s.cluster != nil {
		welcome.Peers = s.cluster.PeerHints()
	}
	return l, br, release, l.writeControl(welcome)
}

// readHello accepts the control stream and reads the agent's Hello.
// The control stream is read without a buffer: control messages are rare
// and small, and a buffer would stay allocated on every idle link.
func (s *Server) readHello(ctx context.Context, conn *quic.Conn) (quicutil.Hello, *quic.Stream, quicutil.MessageReader, error) {
	str, err := conn.AcceptStream(ctx)
	if err != nil {
		return quicutil.Hello{}, nil, nil, fmt.Errorf("wait for control stream: %w", err)
	}
	deadline, _ := ctx.Deadline()
	str.SetReadDeadline(deadline)
	defer str.SetReadDeadline(time.Time{})
	h, err := quicutil.ReadStreamHeader(str)
	if err != nil {
		return quicutil.Hello{}, nil, nil, err
	}
	if h.Kind != quicutil.KindControl {
		return quicutil.Hello{}, nil, nil, fmt.Errorf("first stream is %s, want control", h.Kind)
	}
	br := quicutil.NewUnbufferedReader(str)
	msg, err := quicutil.ReadMessage(br)
	if err != nil {
		return quicutil.Hello{}, nil, nil, fmt.Errorf("read hello: %w", err)
	}
	hello, ok := msg.(*quicutil.Hello)
	if !ok {
		return quicutil.Hello{}, nil, nil, fmt.Errorf("first control message is %T, want Hello", msg)
	}
	return *hello, str, br, nil
}

func (l *link) writeControl(m quicutil.Message) error {
	l.ctrlMu.Lock()
	defer l.ctrlMu.Unlock()
	l.ctrl.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return quicutil.WriteMessage(l.ctrl, m)
}

// controlLoop serves registration messages until the control stream or the
// connection ends. It returns nil when the agent closed on purpose.
func (l *link) controlLoop(br quicutil.MessageReader) error {
	for {
		msg, err := quicutil.ReadMessage(br)
		if err != nil {
			var ce *quicutil.ControlError
			if errors.As(err, &ce) {
				l.srv.m.registrations["protocol_error"].Inc()
				l.conn.CloseWithError(quicutil.ConnCodeProtocolError, ce.Error())
			}
			return err
		}
		var res *quicutil.Result
		switch m := msg.(type) {
		case *quicutil.Register:
			l.logConnected()
			// Beyond the rate, the agent waits: its registrations are
			// slowed down, not refused.
			if !l.regLimit.Allow() {
				l.srv.m.registrationsThrottled.Inc()
				if err := l.regLimit.Wait(l.conn.Context()); err != nil {
					return err
				}
			}
			res = l.register(m)
		case *quicutil.Deregister:
			res = l.deregister(m)
		case *quicutil.Refresh:
			res = l.refresh(m)
		default:
			err := fmt.Errorf("unexpected control message %T", msg)
			l.conn.CloseWithError(quicutil.ConnCodeProtocolError, err.Error())
			return err
		}
		res.Fit() // one frame, whatever the messages
		if err := l.writeControl(res); err != nil {
			return err
		}
	}
}

func (l *link) register(m *quicutil.Register) *quicutil.Result {
	res := &quicutil.Result{Seq: m.Seq, Results: make([]quicutil.EndpointResult, 0, len(m.Endpoints))}
	s := l.srv
	for _, ep := range m.Endpoints {
		r := l.registerOne(ep)
		res.Results = append(res.Results, r)
		switch r.Code {
		case quicutil.StatusOK:
			if ep.Kind.IsHTTP() {
				// An ok Result's message: the endpoint's public URLs
				// (agents before them ignore it).
				res.Results[len(res.Results)-1].Message = s.endpointURLs(ep.ID)
			}
			s.announce(routing.EndpointID(ep.ID))
			s.m.registrations["ok"].Inc()
			l.log.Info("endpoint registered", "endpoint_id", ep.ID, "protocol", ep.Kind.String())
		default:
			s.m.registrations[registrationLabel(r.Code)].Inc()
			l.log.Warn("endpoint refused", "endpoint_id", ep.ID, "err", r.Err())
		}
	}
	return res
}

func registrationLabel(code quicutil.Status) string {
	switch code {
	case quicutil.StatusConflict:
		return "conflict"
	case quicutil.StatusLimit:
		return "limit"
	case quicutil.StatusForbidden:
		return "forbidden"
	}
	return "invalid_endpoint"
}

func (l *link) registerOne(ep quicutil.Endpoint) quicutil.EndpointResult {
	r := quicutil.EndpointResult{ID: ep.ID}
	fail := func(code quicutil.Status, format string, args ...any) quicutil.EndpointResult {
		r.Code, r.Message = code, fmt.Sprintf(format, args...)
		return r
	}
	if err := quicutil.ValidateEndpointID(ep.ID); err != nil {
		return fail(quicutil.StatusInvalidEndpoint, "%v", err)
	}
	if !ep.Kind.IsHTTP() && !ep.Kind.IsRaw() {
		return fail(quicutil.StatusInvalidEndpoint, "endpoint %q: unknown protocol %s", ep.ID, ep.Kind)
	}
	id := routing.EndpointID(ep.ID)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return fail(quicutil.StatusShuttingDown, "connection closing")
	}
	if !l.allowsLocked(ep.ID) {
		return fail(quicutil.StatusForbidden, "%s", auth.Forbidden(l.grant.Scope(), ep.ID))
	}
	if k, ok := l.endpoints[id]; ok && k == ep.Kind {
		return r // registered already
	}
	if max := l.srv.cfg.MaxEndpointsPerAgent; len(l.endpoints) >= max {
		return fail(quicutil.StatusLimit, "agent serves %d endpoints already (max %d per connection)", len(l.endpoints), max)
	}
	if err := l.srv.table.Add(id, tableProto(ep.Kind), l); err != nil {
		other := "another protocol"
		if proto, _, lerr := l.srv.table.Lookup(id); lerr == nil {
			other = proto
		}
		return fail(quicutil.StatusConflict, "endpoint %q is served as %s by another agent; it cannot also be %s",
			ep.ID, other, tableProto(ep.Kind))
	}
	l.endpoints[id] = ep.Kind
	return r
}

// The protocols of the routing table: every agent of an endpoint serves
// HTTP (whatever version it speaks on its streams), or every one raw TCP,
// or every one TLS passthrough.
const (
	protoHTTP = "http"
	protoTCP  = "tcp"
	protoTLS  = "tls"
)

func tableProto(k quicutil.Kind) string {
	switch {
	case k.IsHTTP():
		return protoHTTP
	case k == quicutil.KindTLS:
		return protoTLS
	}
	return protoTCP
}

// endpointKind returns what the agent speaks on the streams of endpoint id.
func (l *link) endpointKind(id routing.EndpointID) quicutil.Kind {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.endpoints[id]
}

func (l *link) deregister(m *quicutil.Deregister) *quicutil.Result {
	res := &quicutil.Result{Seq: m.Seq}
	defer func() {
		for _, r := range res.Results {
			if r.Code == quicutil.StatusOK {
				l.srv.announce(routing.EndpointID(r.ID))
			}
		}
		// A link that serves nothing now (an agent retiring it) keeps no
		// idle keep-alive streams open: the agent waits for them to end.
		l.mu.Lock()
		unused := len(l.endpoints) == 0
		l.mu.Unlock()
		if unused {
			l.ups.closeIdle(false)
		}
	}()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, raw := range m.IDs {
		id := routing.EndpointID(raw)
		r := quicutil.EndpointResult{ID: raw}
		if _, ok := l.endpoints[id]; !ok {
			r.Code, r.Message = quicutil.StatusNoRoute, fmt.Sprintf("endpoint %q is not registered on this connection", raw)
		} else {
			delete(l.endpoints, id)
			l.srv.table.Remove(id, l)
			l.log.Info("endpoint deregistered", "endpoint_id", raw)
		}
		res.Results = append(res.Results, r)
	}
	return res
}

// announce tells the cluster how this node's agents serve id now.
func (s *Server) announce(id routing.EndpointID) {
	a := routing.Announcement{ID: id}
	if proto, targets, err := s.table.Lookup(id); err == nil {
		a.Proto = proto
		for _, tg := range targets {
			if l, ok := tg.(*link); ok {
				a.Kinds |= cluster.KindBit(l.endpointKind(id))
				a.Agents++
			}
		}
	}
	if a.Proto == "" {
		a.Proto = protoHTTP // withdrawn: the protocol does not matter
	}
	s.local.Set(a)
}

// goAway asks the agent to move to another node. New streams go to other
// targets from now on when there are any, and its idle keep-alive streams
// close, so that the agent's old link empties and retires.
func (l *link) goAway(reason string) {
	l.leaving.Store(true)
	l.ups.closeIdle(false)
	// A stream whose response just ended goes back to the pool a moment
	// after its body closed: close those too.
	time.AfterFunc(200*time.Millisecond, func() { l.ups.closeIdle(false) })
	if err := l.writeControl(&quicutil.GoAway{Reason: reason}); err != nil {
		l.log.Debug("send goaway", "err", err)
	}
}

func (l *link) close(code quic.ApplicationErrorCode, reason string) {
	l.conn.CloseWithError(code, reason)
}

// teardown withdraws the link's endpoints at once, closes the
// connection and waits for its stream handlers.
func (l *link) teardown(cause error) {
	l.mu.Lock()
	l.closing = true
	if l.expiry != nil {
		l.expiry.Stop()
	}
	if l.connLogTimer != nil {
		l.connLogTimer.Stop()
	}
	ids := make([]routing.EndpointID, 0, len(l.endpoints))
	for id := range l.endpoints {
		ids = append(ids, id)
	}
	l.mu.Unlock()
	s := l.srv
	s.table.RemoveAll(ids, l)
	for _, id := range ids {
		s.announce(id)
	}
	s.local.SetLinks(s.links.remove(l))
	l.conn.CloseWithError(quicutil.ConnCodeNormal, "")
	l.ups.closeIdle(true)
	l.wg.Wait()
	attrs := []any{"endpoints", len(ids), "reason", disconnectReason(cause),
		"connected_for", time.Since(l.started).Round(time.Millisecond).String()}
	l.mu.Lock()
	logged := l.connLogged
	l.connLogged = true // a timer that fired meanwhile logs nothing now
	l.mu.Unlock()
	if !logged {
		l.log.Debug("agent connected and left before registering", append(l.connAttrs, attrs...)...)
		return
	}
	l.log.Info("agent disconnected", attrs...)
}

// connectedLogDelay is how long "agent connected" waits for a first
// registration.
const connectedLogDelay = time.Second

// logConnected logs "agent connected", once, unless the link ended.
func (l *link) logConnected() {
	l.mu.Lock()
	logged := l.connLogged
	l.connLogged = true
	l.mu.Unlock()
	if !logged {
		l.log.Info("agent connected", l.connAttrs...)
	}
}

func disconnectReason(err error) string {
	var appErr *quic.ApplicationError
	var idle *quic.IdleTimeoutError
	switch {
	case err == nil:
		return "closed"
	case errors.As(err, &appErr):
		if appErr.Remote {
			if appErr.ErrorMessage != "" {
				return "agent closed: " + appErr.ErrorMessage
			}
			return "agent closed"
		}
		return "closed by edge: " + appErr.ErrorMessage
	case errors.As(err, &idle):
		return "no answer from agent (idle timeout)"
	}
	return err.Error()
}

// acceptStreams serves streams the agent opens (Dial and pico-agent forward).
func (l *link) acceptStreams() {
	for {
		str, err := l.conn.AcceptStream(l.conn.Context())
		if err != nil {
			return
		}
		l.wg.Go(func() { l.handleDial(str) })
	}
}

// handleDial serves one stream opened by the agent: a TCP connection to
// an endpoint, routed like any other.
func (l *link) handleDial(str *quic.Stream) {
	s := l.srv
	c := quicutil.NewConn(str, l.conn.LocalAddr(), l.conn.RemoteAddr())
	str.SetReadDeadline(time.Now().Add(s.cfg.HelloTimeout))
	h, err := quicutil.ReadStreamHeader(str)
	str.SetReadDeadline(time.Time{})
	if err == nil && h.Kind != quicutil.KindTCP {
		err = fmt.Errorf("agent opened a %s stream; only tcp streams may be opened by agents", h.Kind)
	}
	if err != nil {
		str.CancelRead(quicutil.StreamCodeBadHeader)
		answer(c, quicutil.StatusBadHeader, err.Error())
		c.Close()
		s.m.badStreams.Inc()
		switch n := l.badStreams.Add(1); {
		case n < maxBadStreams:
			l.log.Warn("stream refused", "err", err)
		case n == maxBadStreams:
			l.log.Warn("connection closed: too many malformed streams", "streams", n, "err", err)
			l.conn.CloseWithError(quicutil.ConnCodeProtocolError,
				fmt.Sprintf("%d malformed streams; last: %v", n, err))
		}
		return
	}
	if code, msg := s.authorizeDial(h); code != quicutil.StatusOK {
		l.log.Warn("forward refused", "endpoint_id", h.Endpoint, "err", msg)
		answer(c, code, msg)
		c.Close()
		return
	}
	if h.ClientAddr == "" {
		h.ClientAddr = l.conn.RemoteAddr().String()
	}
	s.forwardTCP(c, h, l.conn.Context())
}

// answer writes a stream answer; errors are left to the caller's next step.
func answer(c *quicutil.Conn, code quicutil.Status, msg string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write(quicutil.AppendAnswer(nil, code, msg))
	c.SetWriteDeadline(time.Time{})
}

// openStream opens a stream to the agent with header h.
func (l *link) openStream(ctx context.Context, h *quicutil.StreamHeader, wantAnswer bool) (*quicutil.Conn, error) {
	if max := int64(l.srv.cfg.MaxStreamsPerAgent); l.open.Add(1) > max {
		l.open.Add(-1)
		return nil, &quicutil.StatusError{Code: quicutil.StatusOverloaded,
			Message: fmt.Sprintf("the agent connection has %d streams open (the limit on this node)", max)}
	}
	ctx, cancel := context.WithTimeout(ctx, l.srv.cfg.OpenStreamTimeout)
	defer cancel()
	str, err := l.conn.OpenStreamSync(ctx)
	if err != nil {
		l.open.Add(-1)
		if errors.Is(err, context.DeadlineExceeded) && l.conn.Context().Err() == nil {
			return nil, &quicutil.StatusError{Code: quicutil.StatusOverloaded,
				Message: fmt.Sprintf("agent has %d streams open", quicutil.MaxStreamsToAgent)}
		}
		return nil, &linkError{err: err}
	}
	l.streams.Add(1)
	hdr := h.Append(make([]byte, 0, 16+len(h.Endpoint)+len(h.ClientAddr)))
	c := quicutil.OpenConn(str, l.conn.LocalAddr(), l.conn.RemoteAddr(), hdr, wantAnswer)
	c.OnClose(func() { l.open.Add(-1) })
	return c, nil
}

// linkError is a failure of the connection to an agent, or of the relay
// to another node, itself.
type linkError struct {
	via string // "relay to node X"; empty: the agent's link
	err error
}

func (e *linkError) Error() string {
	if e.via != "" {
		return e.via + ": " + e.err.Error()
	}
	return "agent link: " + e.err.Error()
}
func (e *linkError) Unwrap() error { return e.err }

// info describes the link for /status/agents.
func (l *link) info() admin.Agent {
	l.mu.Lock()
	eps := make([]string, 0, len(l.endpoints))
	for id, k := range l.endpoints {
		eps = append(eps, string(id)+"/"+k.String())
	}
	l.mu.Unlock()
	return admin.Agent{
		Session:    l.id,
		AgentID:    l.hello.AgentID,
		Agent:      l.hello.Agent,
		RemoteAddr: l.conn.RemoteAddr().String(),
		Transport:  linkTransport(l.conn),
		Connected:  l.started.UTC(),
		Endpoints:  eps,
		InFlight:   l.inflight.Load(),
		Streams:    l.streams.Load(),
		RTTMillis:  float64(l.conn.ConnectionStats().SmoothedRTT.Microseconds()) / 1000,
	}
}

var _ net.Conn = (*quicutil.Conn)(nil)
