package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/quicutil"
)

// link is one QUIC connection to an edge node.
type link struct {
	a      *Agent
	conn   *quic.Conn
	addr   string
	nodeID string
	log    *slog.Logger

	ctrlMu sync.Mutex // serializes writes to ctrl
	ctrl   *quic.Stream
	br     *bufio.Reader

	seq     atomic.Uint64
	mu      sync.Mutex // guards pending
	pending map[uint64]chan *quicutil.Result

	active atomic.Int64   // streams being served
	wg     sync.WaitGroup // stream handlers
}

// connect dials addr and says hello.
func (a *Agent) connect(ctx context.Context, tr *quic.Transport, addr string) (*link, error) {
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve edge %s: %w", addr, err)
	}
	conn, err := tr.Dial(ctx, udpAddr, a.tlsConfig(addr), quicutil.AgentConfig())
	if err != nil {
		return nil, fmt.Errorf("dial edge %s: %w", addr, err)
	}
	l := &link{a: a, conn: conn, addr: addr, pending: make(map[uint64]chan *quicutil.Result)}
	if err := l.hello(ctx); err != nil {
		conn.CloseWithError(quicutil.ConnCodeNormal, "")
		return nil, fmt.Errorf("edge %s: %w", addr, err)
	}
	l.log = a.log.With("edge", addr, "node_id", l.nodeID)
	return l, nil
}

func (l *link) hello(ctx context.Context) error {
	str, err := l.conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	l.ctrl = str
	hdr := (&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil)
	msg, _ := quicutil.AppendMessage(hdr, &quicutil.Hello{Token: l.a.cfg.Token, Agent: l.a.cfg.Name, AgentID: l.a.id})
	if _, err := str.Write(msg); err != nil {
		return refusal(err)
	}
	if d, ok := ctx.Deadline(); ok {
		str.SetReadDeadline(d)
	}
	l.br = bufio.NewReader(str)
	m, err := quicutil.ReadMessage(l.br)
	str.SetReadDeadline(time.Time{})
	if err != nil {
		return refusal(err)
	}
	w, ok := m.(*quicutil.Welcome)
	if !ok {
		return fmt.Errorf("edge answered hello with %T", m)
	}
	l.nodeID = w.NodeID
	return nil
}

// refusal turns the edge's CONNECTION_CLOSE into an error that says why.
func refusal(err error) error {
	var appErr *quic.ApplicationError
	if errors.As(err, &appErr) && appErr.Remote {
		if appErr.ErrorCode == quicutil.ConnCodeUnauthorized {
			return fmt.Errorf("%w: %s", ErrUnauthorized, appErr.ErrorMessage)
		}
		return fmt.Errorf("edge closed the connection: %s", appErr.ErrorMessage)
	}
	return err
}

func (l *link) writeControl(m quicutil.Message) error {
	l.ctrlMu.Lock()
	defer l.ctrlMu.Unlock()
	l.ctrl.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return quicutil.WriteMessage(l.ctrl, m)
}

// request sends a Register or Deregister and waits for its Result.
func (l *link) request(seq uint64, m quicutil.Message) (*quicutil.Result, error) {
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
	}
}

// register announces regs on this link and records the edge's answers.
func (l *link) register(regs []*registration) {
	if len(regs) == 0 {
		return
	}
	m := &quicutil.Register{Seq: l.seq.Add(1)}
	for _, r := range regs {
		m.Endpoints = append(m.Endpoints, quicutil.Endpoint{ID: r.id, Kind: r.kind})
	}
	res, err := l.request(m.Seq, m)
	if err != nil {
		return // the link is down; the next link registers again
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
		if err != nil {
			err = fmt.Errorf("edge %s refused endpoint %q: %w", l.addr, r.id, err)
			l.log.Error("endpoint refused", "endpoint_id", r.id, "err", er.Err())
		} else {
			l.log.Info("endpoint registered", "endpoint_id", r.id, "protocol", r.kind.String())
		}
		r.answered(err)
	}
}

func (l *link) deregister(id string) {
	l.request(0, &quicutil.Deregister{Seq: l.seq.Add(1), IDs: []string{id}})
}

// serve reads control messages and accepts streams until the link dies
// or the edge says go away. It returns why.
func (l *link) serve() error {
	l.wg.Go(l.acceptStreams)
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
			return &goAwayError{reason: m.Reason}
		default:
			err := fmt.Errorf("unexpected control message %T from edge", m)
			l.conn.CloseWithError(quicutil.ConnCodeProtocolError, err.Error())
			return err
		}
	}
}

type goAwayError struct{ reason string }

func (e *goAwayError) Error() string { return "edge asked to move: " + e.reason }

// retire waits for the link's streams to end (or grace), then closes it.
func (l *link) retire(grace time.Duration) {
	deadline := time.Now().Add(grace)
	for l.active.Load() > 0 && time.Now().Before(deadline) {
		select {
		case <-l.conn.Context().Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	l.close()
}

func (l *link) close() {
	l.conn.CloseWithError(quicutil.ConnCodeNormal, "agent closing")
	l.wg.Wait()
}

func (l *link) acceptStreams() {
	for {
		str, err := l.conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		l.active.Add(1)
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
	r.handler.serve(c, h)
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
	h := quicutil.StreamHeader{Kind: quicutil.KindTCP, Endpoint: id, Token: l.a.cfg.Token}
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
