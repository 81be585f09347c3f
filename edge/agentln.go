package edge

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

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
		s.mu.Lock()
		if s.connsClosed || s.draining.Load() && !peer {
			s.mu.Unlock()
			conn.CloseWithError(quicutil.ConnCodeGoingAway, "edge node "+s.cfg.NodeID+" is shutting down; connect to another node")
			continue
		}
		s.conns.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.conns.Done()
			if peer {
				s.servePeerConn(conn)
				return
			}
			s.serveAgentConn(conn)
		}()
	}
}

// takeTokenConn counts one more agent connection with the token of key,
// or reports that the token has Config.MaxConnsPerToken on this node.
func (s *Server) takeTokenConn(key [sha256.Size]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tokenConns[key] >= s.cfg.MaxConnsPerToken {
		return false
	}
	s.tokenConns[key]++
	return true
}

func (s *Server) giveTokenConn(key [sha256.Size]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tokenConns[key]--; s.tokenConns[key] <= 0 {
		delete(s.tokenConns, key)
	}
}

// maxBadStreams is how many malformed streams an agent connection may open
// before the edge closes it: a bug is reported, a flood is cut.
const maxBadStreams = 10

// session is one agent connection: its control stream, the endpoints it
// serves, and an HTTP transport whose connections are streams to it.
type session struct {
	srv     *Server
	id      uint64
	conn    *quic.Conn
	log     *slog.Logger
	hello   quicutil.Hello
	started time.Time
	// HTTP transports whose connections are streams to the agent, made on
	// first use: an idle link never needs one (an http.Transport is about
	// 0.5 KiB before its first request).
	rt  atomic.Pointer[http.Transport] // HTTP/1.1, one request at a time per stream
	rt2 atomic.Pointer[http.Transport] // HTTP/2, many requests on one stream
	h1  streamPools                    // idle HTTP/1.1 streams of the stream path

	inflight   atomic.Int64  // streams in flight, for the balancer
	movedAt    atomic.Int64  // when rebalancing asked it to move (unix ns)
	badStreams atomic.Int32  // malformed streams the agent opened
	open       atomic.Int64  // streams to the agent not closed yet (keep-alive ones included)
	leaving    atomic.Bool   // told to go away: used only when nothing else serves
	streams    atomic.Uint64 // streams served in total

	regLimit *rate.Limiter // Register messages

	ctrlMu sync.Mutex // serializes writes to ctrl
	ctrl   *quic.Stream

	mu        sync.Mutex // guards the fields below
	endpoints map[routing.EndpointID]quicutil.Kind
	closing   bool
	grant     grant       // what the token allows (with auth on; see auth.go)
	grantGen  int         // bumped by each new grant
	expiry    *time.Timer // closes the connection when the token expires

	connAttrs    []any       // of the "agent connected" log line
	connLogTimer *time.Timer // logs it when no registration came first
	connLogged   bool        // it was logged (or the session ended first)

	wg sync.WaitGroup // stream handlers
}

// Load implements routing.Target.
func (sess *session) Load() int64 { return sess.inflight.Load() }

func (sess *session) inflightAdd(d int64) { sess.inflight.Add(d) }
func (sess *session) isLeaving() bool     { return sess.leaving.Load() }

// closeIdle closes the idle keep-alive streams to the agent.
func (sess *session) closeIdle() {
	sess.h1.closeIdle(false)
	for _, rt := range [...]*http.Transport{sess.rt.Load(), sess.rt2.Load()} {
		if rt != nil {
			rt.CloseIdleConnections()
		}
	}
}
func (sess *session) h1pools() *streamPools                          { return &sess.h1 }
func (sess *session) name() string                                   { return sess.hello.AgentID }
func (sess *session) rtt() time.Duration                             { return sess.conn.ConnectionStats().SmoothedRTT }
func (sess *session) streamKind(id routing.EndpointID) quicutil.Kind { return sess.endpointKind(id) }

// serveAgentConn serves one agent connection; its goroutine reads the
// control stream for the life of the link. The setup is a function of its
// own so that its large frame (hello, grant, log arguments: 1.2 KiB) is off
// the stack while the link idles: the runtime halves a parked goroutine's
// stack only while it uses less than a quarter of it (800 bytes of guard
// included), so with that frame the stack stayed at 8 KiB on some links.
func (s *Server) serveAgentConn(conn *quic.Conn) {
	sess, br, release, err := s.startSession(conn)
	if sess == nil {
		return
	}
	if release != nil {
		defer release()
	}
	if err == nil {
		sess.wg.Go(sess.acceptStreams)
		err = sess.controlLoop(br)
	}
	sess.teardown(err)
}

// startSession reads the agent's Hello, checks its token, registers the
// session and sends the Welcome, whose error it returns. It returns a nil
// session if it refused the agent (and closed the connection), and a
// release to call once the session is torn down, or nil.
func (s *Server) startSession(conn *quic.Conn) (sess *session, br quicutil.MessageReader, release func(), err error) {
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
		log.Warn("agent connection refused", "err", err)
		conn.CloseWithError(code, err.Error())
		return nil, nil, nil, err
	}
	var g grant
	var tokenKey [sha256.Size]byte
	if s.auth != nil {
		if g, err = s.auth.verify(hello.Token); err != nil {
			s.auth.m.refused["agent"].Inc()
			log.Warn("agent connection refused: token", "agent_id", hello.AgentID, "err", err)
			conn.CloseWithError(quicutil.ConnCodeUnauthorized, err.Error())
			return nil, nil, nil, err
		}
		tokenKey = sha256.Sum256([]byte(hello.Token))
		if !s.takeTokenConn(tokenKey) {
			msg := fmt.Sprintf("this token has %d agent connections to node %s already (the limit)", s.cfg.MaxConnsPerToken, s.cfg.NodeID)
			log.Warn("agent connection refused: limit", "agent_id", hello.AgentID, "err", msg)
			conn.CloseWithError(quicutil.ConnCodeLimit, msg)
			return nil, nil, nil, errors.New(msg)
		}
		release = func() { s.giveTokenConn(tokenKey) }
	}
	hello.Token = "" // not kept
	sess = &session{
		srv:       s,
		conn:      conn,
		hello:     hello,
		started:   time.Now(),
		ctrl:      ctrl,
		endpoints: make(map[routing.EndpointID]quicutil.Kind),
		regLimit:  rate.NewLimiter(rate.Limit(s.cfg.RegistrationsPerSecond), 2*s.cfg.RegistrationsPerSecond),
	}
	s.mu.Lock()
	s.nextID++
	sess.id = s.nextID
	s.sessions[sess.id] = sess
	links := len(s.sessions)
	s.mu.Unlock()
	s.local.SetLinks(links)
	sess.log = log.With("agent_id", hello.AgentID, "session", sess.id)
	s.m.agentConnected.Inc()
	sess.connAttrs = []any{"agent", hello.Agent}
	if s.auth != nil {
		sess.mu.Lock()
		sess.setGrantLocked(g)
		sess.mu.Unlock()
		sess.connAttrs = append(sess.connAttrs, "subject", g.subject,
			"endpoints_allowed", g.scope.String(), "token_expires", g.expires.UTC().Format(time.RFC3339))
	}
	// "agent connected" waits for the first registration or a second: an
	// agent that only looks at which node it reached (a link slot finding
	// a node it is linked to already) leaves before, at debug level.
	sess.mu.Lock()
	sess.connLogTimer = time.AfterFunc(connectedLogDelay, sess.logConnected)
	sess.mu.Unlock()

	welcome := &quicutil.Welcome{NodeID: s.cfg.NodeID, Version: s.cfg.Version}
	if s.cluster != nil {
		welcome.Peers = s.cluster.peerHints()
	}
	return sess, br, release, sess.writeControl(welcome)
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

func (sess *session) writeControl(m quicutil.Message) error {
	sess.ctrlMu.Lock()
	defer sess.ctrlMu.Unlock()
	sess.ctrl.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return quicutil.WriteMessage(sess.ctrl, m)
}

// controlLoop serves registration messages until the control stream or the
// connection ends. It returns nil when the agent closed on purpose.
func (sess *session) controlLoop(br quicutil.MessageReader) error {
	for {
		msg, err := quicutil.ReadMessage(br)
		if err != nil {
			var ce *quicutil.ControlError
			if errors.As(err, &ce) {
				sess.srv.m.registrations["protocol_error"].Inc()
				sess.conn.CloseWithError(quicutil.ConnCodeProtocolError, ce.Error())
			}
			return err
		}
		var res *quicutil.Result
		switch m := msg.(type) {
		case *quicutil.Register:
			sess.logConnected()
			// Beyond the rate, the agent waits: its registrations are
			// slowed down, not refused.
			if !sess.regLimit.Allow() {
				sess.srv.m.registrationsThrottled.Inc()
				if err := sess.regLimit.Wait(sess.conn.Context()); err != nil {
					return err
				}
			}
			res = sess.register(m)
		case *quicutil.Deregister:
			res = sess.deregister(m)
		case *quicutil.Refresh:
			res = sess.refresh(m)
		default:
			err := fmt.Errorf("unexpected control message %T", msg)
			sess.conn.CloseWithError(quicutil.ConnCodeProtocolError, err.Error())
			return err
		}
		if err := sess.writeControl(res); err != nil {
			return err
		}
	}
}

func (sess *session) register(m *quicutil.Register) *quicutil.Result {
	res := &quicutil.Result{Seq: m.Seq, Results: make([]quicutil.EndpointResult, 0, len(m.Endpoints))}
	s := sess.srv
	for _, ep := range m.Endpoints {
		r := sess.registerOne(ep)
		res.Results = append(res.Results, r)
		switch r.Code {
		case quicutil.StatusOK:
			s.announce(routing.EndpointID(ep.ID))
			s.m.registrations["ok"].Inc()
			sess.log.Info("endpoint registered", "endpoint_id", ep.ID, "protocol", ep.Kind.String())
		default:
			s.m.registrations[registrationLabel(r.Code)].Inc()
			sess.log.Warn("endpoint refused", "endpoint_id", ep.ID, "err", r.Err())
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

func (sess *session) registerOne(ep quicutil.Endpoint) quicutil.EndpointResult {
	r := quicutil.EndpointResult{ID: ep.ID}
	fail := func(code quicutil.Status, format string, args ...any) quicutil.EndpointResult {
		r.Code, r.Message = code, fmt.Sprintf(format, args...)
		return r
	}
	if err := quicutil.ValidateEndpointID(ep.ID); err != nil {
		return fail(quicutil.StatusInvalidEndpoint, "%v", err)
	}
	if !ep.Kind.IsHTTP() && ep.Kind != quicutil.KindTCP {
		return fail(quicutil.StatusInvalidEndpoint, "endpoint %q: unknown protocol %s", ep.ID, ep.Kind)
	}
	id := routing.EndpointID(ep.ID)
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.closing {
		return fail(quicutil.StatusShuttingDown, "connection closing")
	}
	if !sess.allowsLocked(ep.ID) {
		return fail(quicutil.StatusForbidden, "%s", forbidden(sess.grant.scope, ep.ID))
	}
	if k, ok := sess.endpoints[id]; ok && k == ep.Kind {
		return r // registered already
	}
	if max := sess.srv.cfg.MaxEndpointsPerAgent; len(sess.endpoints) >= max {
		return fail(quicutil.StatusLimit, "agent serves %d endpoints already (max %d per connection)", len(sess.endpoints), max)
	}
	if err := sess.srv.table.Add(id, tableProto(ep.Kind), sess); err != nil {
		other := protoTCP
		if ep.Kind == quicutil.KindTCP {
			other = protoHTTP
		}
		return fail(quicutil.StatusConflict, "endpoint %q is served as %s by another agent; it cannot also be %s",
			ep.ID, other, tableProto(ep.Kind))
	}
	sess.endpoints[id] = ep.Kind
	return r
}

// The protocols of the routing table: every agent of an endpoint serves
// HTTP (whatever version it speaks on its streams) or every one raw TCP.
const (
	protoHTTP = "http"
	protoTCP  = "tcp"
)

func tableProto(k quicutil.Kind) string {
	if k.IsHTTP() {
		return protoHTTP
	}
	return protoTCP
}

// endpointKind returns what the agent speaks on the streams of endpoint id.
func (sess *session) endpointKind(id routing.EndpointID) quicutil.Kind {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.endpoints[id]
}

// transport returns the HTTP transport for streams of kind k: HTTP/1.1
// (one stream per connection) or HTTP/2 (many requests on one stream). It
// makes it on first use, also after teardown: then its streams fail to open
// on the closed connection, so it never holds an idle one.
func (sess *session) transport(k quicutil.Kind) *http.Transport {
	p, kind := &sess.rt, quicutil.KindHTTP
	if k == quicutil.KindHTTP2 {
		p, kind = &sess.rt2, quicutil.KindHTTP2
	}
	if rt := p.Load(); rt != nil {
		return rt
	}
	p.CompareAndSwap(nil, sess.srv.newAgentTransport(sess, kind))
	return p.Load()
}

func (sess *session) deregister(m *quicutil.Deregister) *quicutil.Result {
	res := &quicutil.Result{Seq: m.Seq}
	defer func() {
		for _, r := range res.Results {
			if r.Code == quicutil.StatusOK {
				sess.srv.announce(routing.EndpointID(r.ID))
			}
		}
		// A link that serves nothing now (an agent retiring it) keeps no
		// idle keep-alive streams open: the agent waits for them to end.
		sess.mu.Lock()
		unused := len(sess.endpoints) == 0
		sess.mu.Unlock()
		if unused {
			sess.closeIdle()
		}
	}()
	sess.mu.Lock()
	defer sess.mu.Unlock()
	for _, raw := range m.IDs {
		id := routing.EndpointID(raw)
		r := quicutil.EndpointResult{ID: raw}
		if _, ok := sess.endpoints[id]; !ok {
			r.Code, r.Message = quicutil.StatusNoRoute, fmt.Sprintf("endpoint %q is not registered on this connection", raw)
		} else {
			delete(sess.endpoints, id)
			sess.srv.table.Remove(id, sess)
			sess.log.Info("endpoint deregistered", "endpoint_id", raw)
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
			if sess, ok := tg.(*session); ok {
				a.Kinds |= kindBit(sess.endpointKind(id))
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
func (sess *session) goAway(reason string) {
	sess.leaving.Store(true)
	sess.closeIdle()
	// A stream whose response just ended goes back to the pool a moment
	// after its body closed: close those too.
	time.AfterFunc(200*time.Millisecond, sess.closeIdle)
	if err := sess.writeControl(&quicutil.GoAway{Reason: reason}); err != nil {
		sess.log.Debug("send goaway", "err", err)
	}
}

func (sess *session) close(code quic.ApplicationErrorCode, reason string) {
	sess.conn.CloseWithError(code, reason)
}

// teardown withdraws the session's endpoints at once, closes the
// connection and waits for its stream handlers.
func (sess *session) teardown(cause error) {
	sess.mu.Lock()
	sess.closing = true
	if sess.expiry != nil {
		sess.expiry.Stop()
	}
	if sess.connLogTimer != nil {
		sess.connLogTimer.Stop()
	}
	ids := make([]routing.EndpointID, 0, len(sess.endpoints))
	for id := range sess.endpoints {
		ids = append(ids, id)
	}
	sess.mu.Unlock()
	s := sess.srv
	s.table.RemoveAll(ids, sess)
	for _, id := range ids {
		s.announce(id)
	}
	s.mu.Lock()
	delete(s.sessions, sess.id)
	links := len(s.sessions)
	s.mu.Unlock()
	s.local.SetLinks(links)
	sess.conn.CloseWithError(quicutil.ConnCodeNormal, "")
	sess.h1.closeIdle(true)
	sess.closeIdle()
	sess.wg.Wait()
	attrs := []any{"endpoints", len(ids), "reason", disconnectReason(cause),
		"connected_for", time.Since(sess.started).Round(time.Millisecond).String()}
	sess.mu.Lock()
	logged := sess.connLogged
	sess.connLogged = true // a timer that fired meanwhile logs nothing now
	sess.mu.Unlock()
	if !logged {
		sess.log.Debug("agent connected and left before registering", append(sess.connAttrs, attrs...)...)
		return
	}
	sess.log.Info("agent disconnected", attrs...)
}

// connectedLogDelay is how long "agent connected" waits for a first
// registration.
const connectedLogDelay = time.Second

// logConnected logs "agent connected", once, unless the session ended.
func (sess *session) logConnected() {
	sess.mu.Lock()
	logged := sess.connLogged
	sess.connLogged = true
	sess.mu.Unlock()
	if !logged {
		sess.log.Info("agent connected", sess.connAttrs...)
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
func (sess *session) acceptStreams() {
	for {
		str, err := sess.conn.AcceptStream(sess.conn.Context())
		if err != nil {
			return
		}
		sess.wg.Go(func() { sess.handleDial(str) })
	}
}

// handleDial serves one stream opened by the agent: a TCP connection to
// an endpoint, routed like any other.
func (sess *session) handleDial(str *quic.Stream) {
	s := sess.srv
	c := quicutil.NewConn(str, sess.conn.LocalAddr(), sess.conn.RemoteAddr())
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
		switch n := sess.badStreams.Add(1); {
		case n < maxBadStreams:
			sess.log.Warn("stream refused", "err", err)
		case n == maxBadStreams:
			sess.log.Warn("connection closed: too many malformed streams", "streams", n, "err", err)
			sess.conn.CloseWithError(quicutil.ConnCodeProtocolError,
				fmt.Sprintf("%d malformed streams; last: %v", n, err))
		}
		return
	}
	if code, msg := s.authorizeDial(h); code != quicutil.StatusOK {
		sess.log.Warn("forward refused", "endpoint_id", h.Endpoint, "err", msg)
		answer(c, code, msg)
		c.Close()
		return
	}
	if h.ClientAddr == "" {
		h.ClientAddr = sess.conn.RemoteAddr().String()
	}
	s.forwardTCP(c, h, sess.conn.Context())
}

// answer writes a stream answer; errors are left to the caller's next step.
func answer(c *quicutil.Conn, code quicutil.Status, msg string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write(quicutil.AppendAnswer(nil, code, msg))
	c.SetWriteDeadline(time.Time{})
}

// openStream opens a stream to the agent with header h.
func (sess *session) openStream(ctx context.Context, h *quicutil.StreamHeader, wantAnswer bool) (*quicutil.Conn, error) {
	if max := int64(sess.srv.cfg.MaxStreamsPerAgent); sess.open.Add(1) > max {
		sess.open.Add(-1)
		return nil, &quicutil.StatusError{Code: quicutil.StatusOverloaded,
			Message: fmt.Sprintf("the agent connection has %d streams open (the limit on this node)", max)}
	}
	ctx, cancel := context.WithTimeout(ctx, sess.srv.cfg.OpenStreamTimeout)
	defer cancel()
	str, err := sess.conn.OpenStreamSync(ctx)
	if err != nil {
		sess.open.Add(-1)
		if errors.Is(err, context.DeadlineExceeded) && sess.conn.Context().Err() == nil {
			return nil, &quicutil.StatusError{Code: quicutil.StatusOverloaded,
				Message: fmt.Sprintf("agent has %d streams open", quicutil.MaxStreamsToAgent)}
		}
		return nil, &linkError{err: err}
	}
	sess.streams.Add(1)
	hdr := h.Append(make([]byte, 0, 16+len(h.Endpoint)+len(h.ClientAddr)))
	c := quicutil.OpenConn(str, sess.conn.LocalAddr(), sess.conn.RemoteAddr(), hdr, wantAnswer)
	c.OnClose(func() { sess.open.Add(-1) })
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

// agentInfo describes a session for /status/agents.
type agentInfo struct {
	Session    uint64    `json:"session"`
	AgentID    string    `json:"agent_id"`
	Agent      string    `json:"agent"`
	RemoteAddr string    `json:"remote_addr"`
	Connected  time.Time `json:"connected"`
	Endpoints  []string  `json:"endpoints"`
	InFlight   int64     `json:"in_flight"`
	Streams    uint64    `json:"streams_total"`
	RTTMillis  float64   `json:"rtt_ms"`
	Transport  string    `json:"transport"` // quic (UDP) or tcp (agenttcp.go)
}

func (sess *session) info() agentInfo {
	sess.mu.Lock()
	eps := make([]string, 0, len(sess.endpoints))
	for id, k := range sess.endpoints {
		eps = append(eps, string(id)+"/"+k.String())
	}
	sess.mu.Unlock()
	return agentInfo{
		Session:    sess.id,
		AgentID:    sess.hello.AgentID,
		Agent:      sess.hello.Agent,
		RemoteAddr: sess.conn.RemoteAddr().String(),
		Transport:  linkTransport(sess.conn),
		Connected:  sess.started.UTC(),
		Endpoints:  eps,
		InFlight:   sess.inflight.Load(),
		Streams:    sess.streams.Load(),
		RTTMillis:  float64(sess.conn.ConnectionStats().SmoothedRTT.Microseconds()) / 1000,
	}
}

var _ net.Conn = (*quicutil.Conn)(nil)
