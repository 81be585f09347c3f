package agent_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// waitTimeout bounds every wait on a condition.
const waitTimeout = 20 * time.Second

// newNodes starts n edge nodes named node-1 … node-n that share one CA,
// each with its own routing table (they form no cluster).
func newNodes(t *testing.T, n int, opts ...func(*edge.Config)) []*edgetest.Node {
	t.Helper()
	b, err := certs.Generate()
	if err != nil {
		t.Fatal(err)
	}
	nodes := make([]*edgetest.Node, n)
	for i := range nodes {
		name := fmt.Sprintf("node-%d", i+1)
		nodes[i] = edgetest.NewNodeOn(t, "127.0.0.1:0", b, append([]func(*edge.Config){func(c *edge.Config) { c.NodeID = name }}, opts...)...)
	}
	return nodes
}

// agentAddrs returns the nodes' agent addresses.
func agentAddrs(nodes ...*edgetest.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.AgentAddr)
	}
	return out
}

// newAgent starts an agent that dials edges, keeps conns links and logs
// to rec; it trusts the CA of nodes[0].
func newAgent(t *testing.T, n *edgetest.Node, edges []string, conns int, rec *recorder) *agent.Agent {
	t.Helper()
	return n.NewAgent(t, func(c *agent.Config) {
		c.Edges = edges
		c.Connections = conns
		c.Logger = slog.New(rec.handler(t))
	})
}

// waitNodes waits until the agent's live links go to exactly want.
func waitNodes(t *testing.T, a *agent.Agent, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.After(waitTimeout)
	for {
		changed := a.NodesChanged()
		got := a.Nodes()
		if slices.Equal(got, want) {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("agent linked to %q, want %q (waited %s)", got, want, waitTimeout)
		}
	}
}

// waitLinks waits until the agent has n live links, and returns their nodes.
func waitLinks(t *testing.T, a *agent.Agent, n int) []string {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		changed := a.NodesChanged()
		if got := a.Nodes(); len(got) == n {
			return got
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("agent linked to %q, want %d nodes (waited %s)", a.Nodes(), n, waitTimeout)
		}
	}
}

// nodeByID returns the node named id.
func nodeByID(t *testing.T, nodes []*edgetest.Node, id string) *edgetest.Node {
	t.Helper()
	for _, n := range nodes {
		if n.Server.NodeID() == id {
			return n
		}
	}
	t.Fatalf("no node %q", id)
	return nil
}

// recorder keeps the agent's log records so tests can wait for events;
// with PICO_TEST_LOG=1 it prints them too.
type recorder struct {
	mu      sync.Mutex
	recs    []record
	changed chan struct{} // closed at the next record, then replaced
}

type record struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) handler(t *testing.T) slog.Handler {
	return &recordHandler{r: r, next: edgetest.Logger(t).Handler()}
}

func (r *recorder) add(rec record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	close(r.changed)
	r.changed = make(chan struct{})
}

// count returns how many records match.
func (r *recorder) count(match func(record) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if match(rec) {
			n++
		}
	}
	return n
}

// wait waits until n records match.
func (r *recorder) wait(t *testing.T, what string, n int, match func(record) bool) {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		r.mu.Lock()
		changed := r.changed
		r.mu.Unlock()
		if r.count(match) >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no %d log records of %s (waited %s)", n, what, waitTimeout)
		}
	}
}

func msgIs(msg string) func(record) bool {
	return func(r record) bool { return r.msg == msg }
}

type recordHandler struct {
	r     *recorder
	attrs []slog.Attr
	next  slog.Handler
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recordHandler) Handle(ctx context.Context, r slog.Record) error {
	rec := record{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.r.add(rec)
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *recordHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &recordHandler{r: h.r, attrs: append(slices.Clip(h.attrs), attrs...), next: h.next.WithAttrs(attrs)}
}

func (h *recordHandler) WithGroup(string) slog.Handler { return h }

// udpProxy relays datagrams between clients and backends like a UDP load
// balancer that hashes flows: each new client address goes to the next
// backend in turn, and stays there. blackhole drops every datagram from
// then on, as a dead node or a broken path does (no CONNECTION_CLOSE, no
// stateless reset).
type udpProxy struct {
	conn     *net.UDPConn
	backends []*net.UDPAddr
	dropping atomic.Bool

	mu    sync.Mutex // guards flows and next
	flows map[string]*net.UDPConn
	next  int

	wg sync.WaitGroup
}

func newUDPProxy(t *testing.T, backends ...string) *udpProxy {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &udpProxy{conn: conn, flows: make(map[string]*net.UDPConn)}
	for _, b := range backends {
		addr, err := net.ResolveUDPAddr("udp", b)
		if err != nil {
			t.Fatal(err)
		}
		p.backends = append(p.backends, addr)
	}
	p.wg.Go(p.serve)
	t.Cleanup(p.close)
	return p
}

func (p *udpProxy) Addr() string { return p.conn.LocalAddr().String() }

func (p *udpProxy) blackhole() { p.dropping.Store(true) }

func (p *udpProxy) serve() {
	buf := make([]byte, 64<<10)
	for {
		n, client, err := p.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		if p.dropping.Load() {
			continue
		}
		up := p.flow(client)
		if up == nil {
			return
		}
		up.Write(buf[:n])
	}
}

// flow returns the socket of client's flow, opening it on the next
// backend the first time.
func (p *udpProxy) flow(client *net.UDPAddr) *net.UDPConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if up, ok := p.flows[client.String()]; ok {
		return up
	}
	if p.flows == nil { // closed
		return nil
	}
	backend := p.backends[p.next%len(p.backends)]
	p.next++
	up, err := net.DialUDP("udp", nil, backend)
	if err != nil {
		return nil
	}
	p.flows[client.String()] = up
	p.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			if !p.dropping.Load() {
				p.conn.WriteToUDP(buf[:n], client)
			}
		}
	})
	return up
}

func (p *udpProxy) close() {
	p.conn.Close()
	p.mu.Lock()
	for _, up := range p.flows {
		up.Close()
	}
	p.flows = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// fakeEdge speaks only the control protocol: its Welcome names node and
// lists peers, and it accepts every registration. It serves no stream.
// It returns its agent address.
func fakeEdge(t *testing.T, b *certs.Bundle, node string, peers []quicutil.NodeAddr) string {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	ln, err := tr.Listen(&tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{b.Cert},
		NextProtos:   []string{quicutil.ALPNAgent},
	}, quicutil.EdgeConfig())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			wg.Go(func() { serveFakeAgent(conn, node, peers) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		tr.Close() // closes the connections too
		udp.Close()
		wg.Wait()
	})
	return udp.LocalAddr().String()
}

func serveFakeAgent(conn *quic.Conn, node string, peers []quicutil.NodeAddr) {
	defer conn.CloseWithError(quicutil.ConnCodeNormal, "")
	str, err := conn.AcceptStream(context.Background())
	if err != nil {
		return
	}
	if _, err := quicutil.ReadStreamHeader(str); err != nil {
		return
	}
	br := bufio.NewReader(str)
	if _, err := quicutil.ReadMessage(br); err != nil { // Hello
		return
	}
	if quicutil.WriteMessage(str, &quicutil.Welcome{NodeID: node, Peers: peers}) != nil {
		return
	}
	for {
		m, err := quicutil.ReadMessage(br)
		if err != nil {
			return
		}
		res := &quicutil.Result{}
		switch m := m.(type) {
		case *quicutil.Register:
			res.Seq = m.Seq
			for _, e := range m.Endpoints {
				res.Results = append(res.Results, quicutil.EndpointResult{ID: e.ID})
			}
		case *quicutil.Deregister:
			res.Seq = m.Seq
			for _, id := range m.IDs {
				res.Results = append(res.Results, quicutil.EndpointResult{ID: id})
			}
		}
		if quicutil.WriteMessage(str, res) != nil {
			return
		}
	}
}

// closedUDPAddr returns a 127.0.0.1 address where nothing listens.
func closedUDPAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

// tcpEcho starts a TCP echo server that closes its write side at EOF; it
// returns its address and closes, with its connections, in cleanup.
func tcpEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						c.Write(buf[:n])
					}
					if err != nil {
						c.(*net.TCPConn).CloseWrite()
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}
