package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/quicutil"
)

// link is one QUIC connection to an edge node, on a UDP socket of its own
// (or a TCP connection of its own, over the TCP transport): a load
// balancer that hashes the 4-tuple then sees each link (and each attempt)
// as a flow of its own and may send it to another node.
type link struct {
	a          *Agent
	conn       *quic.Conn
	tr         *quic.Transport
	addr       string // the address dialled
	serverName string // the name verified in the edge's certificate
	nodeID     string
	token      string // presented in the hello
	log        *slog.Logger

	connected time.Time

	pconn     net.PacketConn // the UDP socket, or the TCP transport's connection
	transport Transport      // TransportQUIC or TransportTCP

	// Guarded by a.mu.
	leaving bool             // no new work; the link finishes its streams
	answers map[string]error // by endpoint ID: nil registered, else refused or withdrawn

	ctrlMu sync.Mutex // serializes writes to ctrl
	ctrl   *quic.Stream
	br     quicutil.MessageReader // unbuffered: control messages are rare

	seq     atomic.Uint64
	mu      sync.Mutex // guards pending
	pending map[uint64]chan *quicutil.Result

	goAway chan string        // the edge asked the agent to move, and why
	silent chan time.Duration // the watcher heard nothing for that long

	// Liveness, touched only by the watcher (under a.mu).
	seenPackets uint64    // packets received at the last change
	seenAt      time.Time // when the count last changed
	// silentPackets is the count of packets received when the link was
	// found silent; a higher count later means the edge is back.
	silentPackets atomic.Uint64

	active     atomic.Int64   // streams being served or dialled
	lastAccept atomic.Int64   // when the edge last opened a stream (unix ns)
	wg         sync.WaitGroup // control reader, stream acceptor and handlers
	closeOnce  sync.Once
}

// connect dials the edge at c, on a new UDP socket (or TCP connection, by
// the agent's transport), and says hello with token.
func (a *Agent) connect(ctx context.Context, c candidate, token string) (*link, error) {
	timeout := dialTimeout
	if c.hint {
		timeout = hintDialTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if t := a.transportOf(c); t != TransportAuto {
		return a.connectOver(ctx, c, token, t)
	}
	return a.connectAuto(ctx, c, token)
}

// connectOver dials the edge at c over transport t (TransportQUIC or
// TransportTCP) and says hello with token.
func (a *Agent) connectOver(ctx context.Context, c candidate, token string, t Transport) (*link, error) {
	tlsConf, err := a.tlsConfig(c)
	if err != nil {
		return nil, fmt.Errorf("dial edge %s: %w", c.addr, err)
	}
	pc, remote, err := a.packetConn(ctx, c, t)
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: pc}
	conn, err := tr.Dial(ctx, remote, tlsConf, quicConfig(t))
	if err != nil {
		tr.Close()
		pc.Close()
		if t == TransportTCP {
			return nil, fmt.Errorf("dial edge %s over TCP: %w", c.addr, err)
		}
		if udp, ok := remote.(*net.UDPAddr); ok && noHandshake(err) && udpRefused(udp) {
			// A closed UDP port looks like silence to quic-go.
			return nil, fmt.Errorf("dial edge %s: no QUIC answer, and the UDP port is closed (ICMP port unreachable): %w", c.addr, syscall.ECONNREFUSED)
		}
		return nil, fmt.Errorf("dial edge %s: %w", c.addr, err)
	}
	l := &link{
		a:          a,
		conn:       conn,
		tr:         tr,
		pconn:      pc,
		transport:  t,
		addr:       c.addr,
		token:      token,
		serverName: tlsConf.ServerName,
		log:        a.log.With("edge", c.addr, "transport", string(t)),
		pending:    make(map[uint64]chan *quicutil.Result),
		goAway:     make(chan string, 1),
		silent:     make(chan time.Duration, 1),
		seenAt:     time.Now(),
		answers:    make(map[string]error),
	}
	w, err := l.hello(ctx, token)
	if err != nil {
		l.close(quicutil.ConnCodeNormal, "")
		return nil, fmt.Errorf("edge %s: %w", c.addr, err)
	}
	l.nodeID = w.NodeID
	l.connected = time.Now()
	l.log = l.log.With("node_id", l.nodeID)
	a.learn(l, w)
	return l, nil
}

// Timeouts of one connection attempt: an address the edges listed may be
// unreachable from here (a pod IP behind a load balancer), so it gets
// less time than a configured one.
const (
	dialTimeout     = 10 * time.Second
	hintDialTimeout = 2 * time.Second
)

func (l *link) hello(ctx context.Context, token string) (*quicutil.Welcome, error) {
	str, err := l.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	l.ctrl = str
	hdr := (&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil)
	msg, _ := quicutil.AppendMessage(hdr, &quicutil.Hello{Token: token, Agent: l.a.cfg.Name, AgentID: l.a.id})
	if _, err := str.Write(msg); err != nil {
		return nil, refusal(err)
	}
	if d, ok := ctx.Deadline(); ok {
		str.SetReadDeadline(d)
	}
	// A round that linked elsewhere cancels ctx: the read ends then too.
	stop := context.AfterFunc(ctx, func() { str.SetReadDeadline(time.Now()) })
	l.br = quicutil.NewUnbufferedReader(str)
	m, err := quicutil.ReadMessage(l.br)
	stop()
	str.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, refusal(err)
	}
	w, ok := m.(*quicutil.Welcome)
	if !ok {
		return nil, fmt.Errorf("edge answered hello with %T", m)
	}
	return w, nil
}

// refusal turns the edge's CONNECTION_CLOSE into an error that says why.
func refusal(err error) error {
	var appErr *quic.ApplicationError
	if errors.As(err, &appErr) && appErr.Remote {
		if appErr.ErrorCode == quicutil.ConnCodeUnauthorized {
			return fmt.Errorf("%w: %s", ErrUnauthorized, appErr.ErrorMessage)
		}
		return &closedError{appErr}
	}
	return err
}

// closedError is the edge's CONNECTION_CLOSE.
type closedError struct{ err *quic.ApplicationError }

func (e *closedError) Error() string { return "edge closed the connection: " + e.err.ErrorMessage }
func (e *closedError) Unwrap() error { return e.err }

// goingAway reports whether err is the edge closing the link because its
// node shuts down.
func goingAway(err error) bool {
	var appErr *quic.ApplicationError
	return errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == quicutil.ConnCodeGoingAway
}

func (l *link) writeControl(m quicutil.Message) error {
	l.ctrlMu.Lock()
	defer l.ctrlMu.Unlock()
	l.ctrl.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return quicutil.WriteMessage(l.ctrl, m)
}

// request sends a Register or Deregister and waits for its Result.
func (l *link) request(ctx context.Context, seq uint64, m quicutil.Message) (*quicutil.Result, error) {
	ch := make(chan *quicutil.Result, 1)
	l.mu.Lock()
	l.pending[seq] = ch
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.pending, seq)
		l.mu.Unlock()
	}()
	if err := l.writeControl(m); err != nil {
		return nil, err
	}
	select {
	case res := <-ch:
		return res, nil
	case <-l.conn.Context().Done():
		return nil, context.Cause(l.conn.Context())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// register announces regs on this link and records the edge's answers.
// The caller counted the link as asked for each (registration.ask).
func (l *link) register(regs []*registration) {
	if len(regs) == 0 {
		return
	}
	m := &quicutil.Register{Seq: l.seq.Add(1)}
	for _, r := range regs {
		m.Endpoints = append(m.Endpoints, quicutil.Endpoint{ID: r.id, Kind: r.kind})
	}
	res, err := l.request(context.Background(), m.Seq, m)
	if err != nil {
		for _, r := range regs {
			r.answered(err, false) // the link is down; the next link registers again
		}
		return
	}
	byID := make(map[string]quicutil.EndpointResult, len(res.Results))
	for _, r := range res.Results {
		byID[r.ID] = r
	}
	for _, r := range regs {
		er, ok := byID[r.id]
		if !ok {
			er = quicutil.EndpointResult{ID: r.id, Code: quicutil.StatusInternal, Message: "edge did not answer for it"}
		}
		err := er.Err()
		switch {
		case er.Code == quicutil.StatusShuttingDown:
			l.log.Info("endpoint not registered: the edge node is draining", "endpoint_id", r.id)
			l.a.setAnswer(l, r, nil, false)
		case err != nil:
			err = fmt.Errorf("edge %s refused endpoint %q: %w", l.addr, r.id, err)
			l.log.Error("endpoint refused", "endpoint_id", r.id, "err", er.Err())
			l.a.setAnswer(l, r, err, true)
		default:
			urls := publicURLs(er.Message)
			if len(urls) > 0 {
				l.log.Info("endpoint registered", "endpoint_id", r.id, "protocol", r.kind.String(), "urls", urls)
				l.a.addURLs(r, urls)
			} else {
				l.log.Info("endpoint registered", "endpoint_id", r.id, "protocol", r.kind.String())
			}
			if l.a.lookup(r.id) != r || l.a.isDraining() {
				// Removed while this link registered it (Remove may
				// not have known the link yet), or Shutdown began.
				l.deregister(r.id)
			} else {
				l.a.setAnswer(l, r, nil, true)
			}
		}
		// A draining edge refuses for now; the agent's next link asks again.
		r.answered(err, er.Code != quicutil.StatusShuttingDown)
	}
}

// publicURLs returns the URLs in the message of an ok registration: where
// the edge says clients reach the endpoint (none from an edge that does
// not say).
func publicURLs(msg string) []string {
	var out []string
	for _, f := range strings.Fields(msg) {
		if u, err := url.Parse(f); err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" {
			out = append(out, f)
		}
	}
	return out
}

// addURLs adds urls to where r is reached.
func (a *Agent) addURLs(r *registration, urls []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(r.urls)
	for _, u := range urls {
		if !slices.Contains(r.urls, u) {
			r.urls = append(r.urls, u)
		}
	}
	if len(r.urls) != n {
		a.statusChangedLocked()
	}
}

// refresh sends token to the edge and reports its answer (see SetToken).
func (l *link) refresh(ctx context.Context, token string) error {
	m := &quicutil.Refresh{Seq: l.seq.Add(1), Token: token}
	res, err := l.request(ctx, m.Seq, m)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("refresh token on edge %s: %w", l.addr, ctx.Err())
		}
		l.log.Debug("link ended before the edge answered a token refresh", "err", err)
		return nil
	}
	if len(res.Results) == 1 && res.Results[0].ID == "" && res.Results[0].Code != quicutil.StatusOK {
		return fmt.Errorf("%w: edge %s: %s", ErrUnauthorized, l.addr, res.Results[0].Message)
	}
	var errs []error
	for _, r := range res.Results {
		if r.Code != quicutil.StatusOK {
			err := &WithdrawnError{Edge: l.addr, Endpoint: r.ID, Reason: r.Message}
			l.log.Error("endpoint withdrawn by the edge", "endpoint_id", r.ID, "err", err)
			errs = append(errs, err)
			if reg := l.a.lookup(r.ID); reg != nil {
				l.a.setAnswer(l, reg, err, true)
			}
		}
	}
	l.log.Info("token refreshed", "endpoints", len(res.Results))
	return errors.Join(errs...)
}

func (l *link) deregister(id string) {
	seq := l.seq.Add(1)
	l.request(context.Background(), seq, &quicutil.Deregister{Seq: seq, IDs: []string{id}})
}

// serve reads control messages until the link dies, and returns why. A
// GoAway goes to l.goAway; serve keeps reading, since the link serves its
// streams (and answers to Deregister) until it is replaced.
func (l *link) serve() error {
	for {
		m, err := quicutil.ReadMessage(l.br)
		if err != nil {
			l.conn.CloseWithError(quicutil.ConnCodeNormal, "")
			return refusal(err)
		}
		switch m := m.(type) {
		case *quicutil.Result:
			l.mu.Lock()
			ch := l.pending[m.Seq]
			l.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		case *quicutil.GoAway:
			select {
			case l.goAway <- m.Reason:
			default: // asked already
			}
		default:
			err := fmt.Errorf("unexpected control message %T from edge", m)
			l.conn.CloseWithError(quicutil.ConnCodeProtocolError, err.Error())
			return err
		}
	}
}

// retire waits for the link's streams to end (until grace passes or ctx
// ends), then closes it. The link must also have been quiet for
// retireQuiet: the edge may have picked this link for a request just
// before it asked the agent to move, and that stream may still be on its
// way; closing under it would fail a request the upstream never saw.
func (l *link) retire(ctx context.Context, grace time.Duration) {
	timer := time.NewTimer(grace)
	defer timer.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
wait:
	for l.active.Load() > 0 || time.Since(time.Unix(0, l.lastAccept.Load())) < retireQuiet {
		select {
		case <-tick.C:
		case <-l.conn.Context().Done():
			break wait
		case <-ctx.Done():
			break wait
		case <-timer.C:
			break wait
		}
	}
	l.close(quicutil.ConnCodeNormal, "agent closing")
}

// retireQuiet is how long a retiring link must have had no new stream.
const retireQuiet = 500 * time.Millisecond

// close closes the connection with code and reason, waits for the link's
// goroutines and releases its socket. It is safe to call more than once.
func (l *link) close(code quic.ApplicationErrorCode, reason string) {
	l.conn.CloseWithError(code, reason)
	l.wg.Wait()
	l.closeOnce.Do(func() {
		l.tr.Close()
		l.pconn.Close()
	})
}

// died reports whether err, from an operation on the link, is the link's
// own end rather than the stream's.
func (l *link) died(err error) bool {
	if l.conn.Context().Err() != nil {
		return true
	}
	var appErr *quic.ApplicationError
	var idle *quic.IdleTimeoutError
	var reset *quic.StatelessResetError
	return errors.As(err, &appErr) || errors.As(err, &idle) || errors.As(err, &reset)
}

// checkSilence signals l.silent when no packet arrived for longer than
// silentAfter (more on a slow path: a keep-alive and a few of its
// retransmissions). Only the watcher calls it, holding a.mu.
func (l *link) checkSilence(now time.Time) {
	st := l.conn.ConnectionStats()
	if st.PacketsReceived != l.seenPackets {
		l.seenPackets, l.seenAt = st.PacketsReceived, now
		return
	}
	pto := st.SmoothedRTT + 4*st.MeanDeviation + 25*time.Millisecond
	quiet := now.Sub(l.seenAt)
	if quiet < max(silentAfter, quicutil.AgentKeepAlive+4*pto) {
		return
	}
	l.silentPackets.Store(st.PacketsReceived)
	select {
	case l.silent <- quiet:
	default: // signalled already
	}
}

// recovered reports whether packets arrived since the link was found silent.
func (l *link) recovered() bool {
	return l.conn.ConnectionStats().PacketsReceived > l.silentPackets.Load()
}

func (l *link) acceptStreams() {
	for {
		str, err := l.conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		l.active.Add(1)
		l.lastAccept.Store(time.Now().UnixNano())
		l.wg.Go(func() {
			defer l.active.Add(-1)
			l.handleStream(str)
		})
	}
}

// handleStream serves one stream the edge opened.
func (l *link) handleStream(str *quic.Stream) {
	str.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := quicutil.ReadStreamHeader(str)
	str.SetReadDeadline(time.Time{})
	c := quicutil.NewConn(str, l.conn.LocalAddr(), clientAddr(h, l.conn.RemoteAddr()))
	if err == nil && h.Kind == quicutil.KindControl {
		err = errors.New("edge opened a control stream")
	}
	if err != nil {
		l.log.Warn("stream refused", "err", err)
		str.CancelRead(quicutil.StreamCodeBadHeader)
		writeAnswer(c, quicutil.StatusBadHeader, err.Error())
		c.Close()
		return
	}
	r := l.a.lookup(h.Endpoint)
	if r == nil {
		refuse(c, quicutil.StatusNoRoute, fmt.Sprintf("agent %s does not serve endpoint %q", l.a.id, h.Endpoint))
		return
	}
	st := &r.stats
	st.streams.Add(1)
	st.inflight.Add(1)
	c.OnClose(func() { st.inflight.Add(-1) }) // a Listener's conn ends when its user closes it
	r.handler.serve(c, h, st)
}

// refuseDrain is how much of a refused stream's request is read and
// dropped before the agent stops reading: as much as the edge keeps to
// retry the request elsewhere, so that the edge gets to read the refusal
// instead of failing on a write.
const refuseDrain = 64<<10 + 1

// refuse answers a stream that will not be served, and ends it.
func refuse(c *quicutil.Conn, code quicutil.Status, msg string) {
	writeAnswer(c, code, msg)
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.CopyN(io.Discard, c, refuseDrain)
	c.Close()
}

func writeAnswer(c *quicutil.Conn, code quicutil.Status, msg string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write(quicutil.AppendAnswer(nil, code, msg))
	c.SetWriteDeadline(time.Time{})
}

// dial opens a TCP stream to endpoint id and waits for the edge's answer.
func (l *link) dial(ctx context.Context, id string) (net.Conn, error) {
	str, err := l.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("dial endpoint %q: %w", id, err)
	}
	h := quicutil.StreamHeader{Kind: quicutil.KindTCP, Endpoint: id, Token: l.a.currentToken()}
	c := quicutil.OpenConn(str, l.conn.LocalAddr(), l.conn.RemoteAddr(), h.Append(nil), false)
	if err := c.Flush(); err != nil {
		c.Abort(quicutil.StreamCodeCanceled)
		return nil, fmt.Errorf("dial endpoint %q: %w", id, err)
	}
	if d, ok := ctx.Deadline(); ok {
		c.SetReadDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	err = quicutil.ReadAnswer(c)
	stop()
	c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Abort(quicutil.StreamCodeCanceled)
		var se *quicutil.StatusError
		if errors.As(err, &se) {
			return nil, &DialError{Endpoint: id, Code: se.Code, Reason: se.Message}
		}
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("dial endpoint %q: %w", id, err)
	}
	// A link retiring after goaway waits for dialled streams (pico-agent
	// forward) as for accepted ones, until the caller closes them.
	l.active.Add(1)
	c.OnClose(func() { l.active.Add(-1) })
	return c, nil
}

// DialError is the edge's refusal of a Dial.
type DialError struct {
	Endpoint string
	Code     quicutil.Status
	Reason   string
}

func (e *DialError) Error() string {
	if e.Reason != "" {
		return e.Reason
	}
	return fmt.Sprintf("dial endpoint %q: %s", e.Endpoint, e.Code)
}
