package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/edge/frontdoor"
	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// EndpointHeader names the endpoint of a request; it wins over Host.
const EndpointHeader = "X-Pico-Endpoint"

// maxReplay is how much of a request body is kept so that the request can
// be retried on another agent when the first one never reached its upstream.
const maxReplay = 64 << 10

type ctxKey int

const requestInfoKey ctxKey = 0

// requestInfo collects what the transport and the access log need to know
// of a request.
type requestInfo struct {
	endpoint   routing.EndpointID
	known      bool // the endpoint is served somewhere
	clientAddr string
	agent      string // the agent that served it, when local
	servedBy   string // the node whose agent served it
	ttfb       time.Duration
	body       *countingBody
	at         attempts // the targets tried, and the next one
	retried    bool
	// respErr is why reading the agent's response body failed, if it did:
	// the response was cut on the agent's side.
	respErr  error
	cut      bool           // the agent's side cut the response
	upgraded *trackedRWBody // the connection after a 101, if it upgraded
	err      error
}

// newProxy makes the handler of every client request: it finds the
// endpoint, checks the request, and sends it to an agent.
func (s *Server) newProxy() http.Handler {
	rp := &httputil.ReverseProxy{
		Rewrite: s.rewrite,
		// The upstream's Alt-Svc names its own ports, not the edge's.
		ModifyResponse: func(resp *http.Response) error { resp.Header.Del("Alt-Svc"); return nil },
		Transport:      &agentRoundTripper{s: s},
		ErrorHandler:   s.proxyError,
		BufferPool:     bufferPool{},
		ErrorLog:       frontdoor.ErrorLog(s.log),
	}
	return &proxyHandler{s: s, rp: rp}
}

// proxyHandler is the front door's handler.
type proxyHandler struct {
	s  *Server
	rp *httputil.ReverseProxy
}

func (f *proxyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := f.s
	start := time.Now()
	rw := &statusWriter{ResponseWriter: w}
	info := &requestInfo{clientAddr: r.RemoteAddr}
	active := s.m.activeRequests[min(max(r.ProtoMajor, 1), 3)-1]
	active.Add(1)
	defer func() {
		active.Add(-1)
		p := recover()
		if p == http.ErrAbortHandler && info.err == nil {
			// The response was cut (ReverseProxy and the direct path abort
			// the client's connection or stream so that a cut body is not
			// taken for a whole one): say so in the access log.
			info.err = info.cutError(r, rw)
		}
		s.observe(r, rw, info, time.Since(start))
		if p != nil {
			panic(p)
		}
	}()

	if r.ProtoMajor == 1 && s.draining.Load() {
		// Draining: the client's next request goes on a new connection,
		// to another node once /readyz fails, not on this one, which
		// the shutdown closes. (Keep-alive connections stay open until
		// then: closing them now would race the requests on their way.)
		rw.Header().Set("Connection", "close")
	}
	r.TLS = frontdoor.TLSState(r) // also HTTP/1.1 over TLS behind the request guard
	if v := r.Header.Get(frontdoor.RejectHeader); v != "" && r.ProtoMajor == 1 {
		code, reason, _ := strings.Cut(v, " ")
		status, _ := strconv.Atoi(code)
		if status < 400 {
			status = http.StatusBadRequest
		}
		writeError(rw, r, status, "", reason)
		return
	}
	if status, msg := frontdoor.CheckRequest(r, s.cfg.MaxHeaderBytes, s.cfg.AllowUnderscoresInHeaders); status != 0 {
		writeError(rw, r, status, "", msg)
		return
	}
	ep, err := endpointOf(r)
	if err != nil {
		writeError(rw, r, http.StatusBadRequest, "", err.Error())
		return
	}
	info.endpoint = ep
	if !s.authorizeRequest(rw, r, ep) { // before the lookup: no hint whether ep exists
		return
	}
	// The first target, picked now, also says what the endpoint serves:
	// one look in the table per request.
	info.at = attempts{s: s, id: ep}
	first, err := info.at.peek()
	info.known = err == nil
	if err != nil {
		info.err = err
		writeError(rw, r, http.StatusBadGateway, ep, fmt.Sprintf("no upstream for endpoint %q", ep))
		return
	}
	kind := first.streamKind(ep)
	if kind == quicutil.KindTCP {
		writeError(rw, r, http.StatusBadGateway, ep, fmt.Sprintf(
			"endpoint %q serves raw TCP, not HTTP; reach it with 'pico-agent forward PORT %s'", ep, ep))
		return
	}
	if kind == quicutil.KindTLS {
		writeError(rw, r, http.StatusBadGateway, ep, fmt.Sprintf(
			"endpoint %q is a TLS passthrough endpoint, not HTTP; reach it on the edge's passthrough port (--passthrough-addr)", ep))
		return
	}
	gate, msg := s.gate, fmt.Sprintf("endpoint %q has %d requests in flight on this node (the limit); retry in a moment", ep, s.cfg.MaxInflightPerEndpoint)
	if isUpgrade(r) {
		gate, msg = s.connGate, fmt.Sprintf("endpoint %q has %d upgraded connections and TCP connections open on this node (the limit); retry in a moment", ep, s.cfg.MaxConnsPerEndpoint)
	}
	release, ok := gate.acquire(ep)
	if !ok {
		s.m.overloaded.Inc()
		rw.Header().Set("Retry-After", "1")
		writeError(rw, r, http.StatusServiceUnavailable, ep, msg)
		return
	}
	defer release()
	if r.Body != nil && r.Body != http.NoBody {
		defer watchClientIdle(rw, r, s.cfg.StreamIdleTimeout)()
		info.body = &countingBody{ReadCloser: r.Body}
		r.Body = info.body
	}
	r = r.WithContext(context.WithValue(r.Context(), requestInfoKey, info))
	// The one choice of path: a request the direct path can write
	// (canDirect) whose first target's upstream speaks HTTP/1.1 goes
	// direct (h1direct.go), and so do its retries, to such targets only;
	// every other request goes through ReverseProxy. Both send through
	// roundTrip, with the same attempts, on the stream path (h1stream.go)
	// or the target's http.Transport.
	if canDirect(r) && kind == quicutil.KindHTTP {
		info.at.http1Only = true
		f.serveDirect(rw, r, info)
		return
	}
	f.rp.ServeHTTP(rw, r)
}

// endpointOf finds the endpoint a request names: the X-Pico-Endpoint
// header, else the first label of a Host with two labels or more.
func endpointOf(r *http.Request) (routing.EndpointID, error) {
	if v := r.Header.Get(EndpointHeader); v != "" {
		id := strings.ToLower(strings.TrimSpace(v))
		if err := quicutil.ValidateEndpointID(id); err != nil {
			return "", fmt.Errorf("bad %s header %q: %v", EndpointHeader, v, err)
		}
		return routing.EndpointID(id), nil
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(host, ".")
	label, rest, ok := strings.Cut(host, ".")
	if host == "" || !ok || rest == "" || net.ParseIP(strings.Trim(host, "[]")) != nil {
		return "", errNoEndpoint
	}
	label = strings.ToLower(label)
	if err := quicutil.ValidateEndpointID(label); err != nil {
		return "", fmt.Errorf("host %q names no valid endpoint: %v", r.Host, err)
	}
	return routing.EndpointID(label), nil
}

var errNoEndpoint = errors.New("no endpoint in the request: set the " + EndpointHeader +
	" header, or use a host name whose first label is the endpoint (foo.example.com for endpoint foo)")

// rewrite prepares the outgoing request: the endpoint becomes the URL host
// (the transport turns it into a stream header), the client's Host is kept,
// X-Forwarded-* are set by the edge and Pico's own headers are dropped.
func (s *Server) rewrite(pr *httputil.ProxyRequest) {
	info := pr.In.Context().Value(requestInfoKey).(*requestInfo)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = string(info.endpoint)
	pr.Out.Host = pr.In.Host
	s.setForwarded(pr)
	for k := range pr.Out.Header {
		if len(k) > 7 && strings.EqualFold(k[:7], "X-Pico-") {
			delete(pr.Out.Header, k)
		}
	}
}

// setForwarded sets X-Forwarded-For, -Host and -Proto and Forwarded
// (RFC 7239) from what the edge saw (forwardingOf).
func (s *Server) setForwarded(pr *httputil.ProxyRequest) {
	f := s.forwardingOf(pr.In)
	out := pr.Out.Header
	out.Set("X-Forwarded-For", f.xff)
	out.Set("X-Forwarded-Host", f.host)
	out.Set("X-Forwarded-Proto", f.proto)
	out.Set("Forwarded", f.forwarded)
}

// forwarding is the values of the forwarding headers the edge sends.
type forwarding struct {
	xff, host, proto, forwarded string
}

// forwardingOf says what X-Forwarded-For, -Host and -Proto and Forwarded
// (RFC 7239) carry for in, from what the edge saw. What the client sent in
// them is dropped, unless the client is a proxy in Config.TrustedProxies:
// then its chains are kept and extended, and its -Host and -Proto stand.
func (s *Server) forwardingOf(in *http.Request) forwarding {
	proto := "http"
	if in.TLS != nil {
		proto = "https"
	}
	clientIP := ""
	if ap, err := netip.ParseAddrPort(in.RemoteAddr); err == nil {
		clientIP = ap.Addr().Unmap().String()
	}
	f := forwarding{xff: clientIP, host: in.Host, proto: proto, forwarded: forwardedElement(clientIP, in.Host, proto)}
	if !s.trusted(clientIP) {
		return f
	}
	if prior := in.Header["X-Forwarded-For"]; len(prior) > 0 {
		f.xff = strings.Join(prior, ", ") + ", " + clientIP
	}
	f.host = firstNonEmpty(in.Header.Get("X-Forwarded-Host"), in.Host)
	f.proto = firstNonEmpty(in.Header.Get("X-Forwarded-Proto"), proto)
	if prior := in.Header.Values("Forwarded"); len(prior) > 0 {
		f.forwarded = strings.Join(prior, ", ") + ", " + f.forwarded
	}
	return f
}

func (s *Server) trusted(ip string) bool {
	if len(s.cfg.TrustedProxies) == 0 || ip == "" {
		return false
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// forwardedElement is one element of a Forwarded header.
func forwardedElement(ip, host, proto string) string {
	forIP := ip
	if strings.Contains(ip, ":") {
		forIP = `"[` + ip + `]"`
	}
	if forIP == "" {
		forIP = "unknown"
	}
	return "for=" + forIP + ";host=" + quoteIfNeeded(host) + ";proto=" + proto
}

func quoteIfNeeded(v string) string {
	if strings.ContainsAny(v, `:[]\" ;,=`) {
		return strconv.Quote(v)
	}
	return v
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// agentRoundTripper sends a request to an agent that serves its endpoint,
// and retries once on another agent when that is safe.
type agentRoundTripper struct{ s *Server }

func (t *agentRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.s.roundTrip(req, req.Context().Value(requestInfoKey).(*requestInfo), nil)
}

// roundTrip sends req to the agents of its endpoint, one after another
// while retrying is safe. With d, req is the client's own request on the
// direct stream path (h1direct.go), whose attempts take only targets that
// speak HTTP/1.1. The targets come from info.at, which ServeHTTP began.
func (s *Server) roundTrip(req *http.Request, info *requestInfo, d *direct) (*http.Response, error) {
	var body *replayBody
	if d == nil && req.Body != nil && req.Body != http.NoBody {
		body = newReplayBody(req.Body)
		req.Body = body.reader()
	}
	at := &info.at
	for {
		tg, err := at.next()
		if err != nil {
			return nil, err
		}
		k := tg.streamKind(info.endpoint)
		info.agent, info.servedBy = tg.name(), s.cfg.NodeID
		if t, ok := tg.(*relayTarget); ok {
			info.agent, info.servedBy = "", t.p.Node()
		}
		tg.addLoad(1)
		s.live.add()
		start := time.Now()
		var resp *http.Response
		if k == quicutil.KindHTTP && (d != nil || onStreamPath(req)) {
			resp, err = s.roundTripStream(tg, tg.upstreams().h1.get(info.endpoint), req, d)
		} else {
			resp, err = tg.upstreams().transport(s, tg, k).RoundTrip(req)
		}
		if err == nil {
			info.ttfb = time.Since(start)
			s.m.ttfb.Update(info.ttfb.Seconds())
			resp.Body = trackBody(resp.Body, tg, s, info)
			return resp, nil
		}
		tg.addLoad(-1)
		s.live.done()
		at.failed(err)
		if !retryable(req, err) {
			return nil, err
		}
		if body != nil {
			r, ok := body.rewind()
			if !ok {
				return nil, err
			}
			req.Body = r
		}
		info.retried = true
		s.log.Debug("retrying request on another target", "endpoint_id", info.endpoint, "target", tg.name(), "err", err)
	}
}

// maxAttempts is how many agents one request or TCP connection may try.
// Targets found gone (targetGone) do not count, up to maxTargets in all.
const maxAttempts = 2

// maxTargets bounds the targets one request or TCP connection may try,
// gone ones included.
const maxTargets = 8

// target is where a stream to an endpoint goes: a local agent link
// (*link) or another node that relays to its agents (*peer).
type target interface {
	routing.Target   // Load: the streams in flight there
	addLoad(d int64) // counts a stream in flight (d = 1) or ended (d = -1)
	// openStream opens a stream with header h.
	openStream(ctx context.Context, h *quicutil.StreamHeader, wantAnswer bool) (*quicutil.Conn, error)
	// streamKind is the kind of stream endpoint id's upstream speaks.
	streamKind(id routing.EndpointID) quicutil.Kind
	name() string // for logs: the agent's ID, or "node:" and the node's
	// leavingNow reports an agent told to move, or a node draining: other
	// targets come first, and its keep-alive streams are not kept.
	leavingNow() bool
	// rtt is the round-trip time to the agent: of the link, or through the
	// relay.
	rtt() time.Duration
	// upstreams is what the proxy keeps toward the target between
	// requests (upstreams.go).
	upstreams() *upstreams
}

// attempts picks the targets of one request or TCP connection: a different
// one each time, up to maxAttempts. Local agents come first, then other
// nodes, those draining last.
type attempts struct {
	s         *Server
	id        routing.EndpointID
	http1Only bool // only targets whose upstream for id speaks HTTP/1.1
	tried     []routing.Target
	gone      int    // of tried, those found gone (targetGone)
	ahead     target // picked by peek, returned by the next next
	err       error  // why the last attempt failed
}

// peek returns the target next will return.
func (a *attempts) peek() (target, error) {
	if a.ahead != nil {
		return a.ahead, nil
	}
	tg, err := a.next()
	a.ahead = tg
	return tg, err
}

// next returns the agent to try next, or why there is none: the last
// attempt's error once there was one, else routing.ErrNoRoute.
func (a *attempts) next() (target, error) {
	if tg := a.ahead; tg != nil {
		a.ahead = nil
		return tg, nil
	}
	if len(a.tried)-a.gone >= maxAttempts || len(a.tried) >= maxTargets {
		return nil, a.err
	}
	tg, err := a.s.table.Pick(a.id, a.skipDraining)
	if err != nil {
		tg, err = a.s.table.Pick(a.id, a.skip)
	}
	if err != nil {
		if a.err != nil {
			return nil, a.err
		}
		return nil, err
	}
	if len(a.tried) > 0 {
		a.s.m.retries.Inc()
	}
	a.tried = append(a.tried, tg)
	return tg.(target), nil
}

func (a *attempts) skip(tg routing.Target) bool {
	return slices.Contains(a.tried, tg) || linkClosed(tg) || a.http1Only && tg.(target).streamKind(a.id) != quicutil.KindHTTP
}

// linkClosed reports an agent link whose QUIC connection is closed but
// whose teardown has not withdrawn it yet: a node that was frozen (SIGSTOP,
// a stalled VM) wakes with the links its agents closed meanwhile still in
// the table, and a stream to one would fail at once.
func linkClosed(tg routing.Target) bool {
	l, ok := tg.(*link)
	return ok && l.conn.Context().Err() != nil
}

func (a *attempts) skipDraining(tg routing.Target) bool {
	return tg.(target).leavingNow() || a.skip(tg)
}

func (a *attempts) failed(err error) {
	a.err = err
	if targetGone(err) {
		a.gone++
	}
}

// targetGone reports whether an attempt failed because the connection to
// its target (an agent's link, or the relay to another node) had already
// ended when the stream was to be opened: the upstream never saw the
// request, and the attempt says nothing about the endpoint's other
// targets, so it does not count against maxAttempts. A node that wakes
// from a freeze finds all its links to an endpoint's agents closed at once
// when they gave up on it meanwhile.
func targetGone(err error) bool {
	var le *linkError
	return errors.As(err, &le) && linkLost(le.err)
}

// retryable reports whether a failed attempt may be sent to another agent:
// always when the upstream never saw it (the agent answered so, or no
// stream could be opened), and for idempotent requests also when the
// stream ended before its answer or the link died before the response
// head (nothing has gone to the client yet; the upstream may have seen the
// request, which an idempotent one allows, as nginx's proxy_next_upstream
// does).
func retryable(req *http.Request, err error) bool {
	var le *linkError
	var se *quicutil.StatusError
	switch {
	case errors.As(err, &se), errors.As(err, &le):
		return true
	case errors.Is(err, quicutil.ErrNoAnswer), linkLost(err):
		// The link (or the relay) died before the response head: a
		// request that may be sent twice goes to another agent.
		return idempotent(req)
	}
	return false
}

// linkLost reports whether err is the end of the QUIC connection a stream
// was on: closed, timed out or reset.
func linkLost(err error) bool {
	var appErr *quic.ApplicationError
	var idle *quic.IdleTimeoutError
	var reset *quic.StatelessResetError
	return errors.As(err, &appErr) || errors.As(err, &idle) || errors.As(err, &reset)
}

func idempotent(req *http.Request) bool {
	switch req.Method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return req.Header.Get("Upgrade") == ""
	}
	return false
}

// newAgentTransport returns the transport whose connections are streams
// to tg carrying kind: HTTP/1.1, where a keep-alive connection reuses its
// stream, or HTTP/2 with prior knowledge, where one stream carries many
// requests (gRPC and other HTTP/2 upstreams need it end to end).
func (s *Server) newAgentTransport(tg streamOpener, kind quicutil.Kind) *http.Transport {
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return s.dialStream(ctx, tg, kind, host)
		},
		MaxIdleConns:           0,
		MaxIdleConnsPerHost:    256,
		IdleConnTimeout:        s.cfg.IdleTimeout,
		ResponseHeaderTimeout:  s.cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		DisableCompression:     true,
		WriteBufferSize:        32 << 10,
		ReadBufferSize:         32 << 10,
	}
	if kind == quicutil.KindHTTP2 {
		t.Protocols = new(http.Protocols)
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	return t
}

// proxyError answers a request that could not be proxied, saying why.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	info := r.Context().Value(requestInfoKey).(*requestInfo)
	info.err = err
	ep := info.endpoint
	if be := info.refusedBody(); be != nil {
		// The guard refused the body's framing mid-way (net/http then ends
		// the request's context too): say what was wrong.
		info.err = be
		writeError(w, r, be.Status, ep, be.Reason)
		return
	}
	if r.Context().Err() != nil {
		// The client went away; nobody reads the answer.
		w.WriteHeader(statusClientClosed)
		return
	}
	status, msg := http.StatusBadGateway, ""
	var se *quicutil.StatusError
	var le *linkError
	var appErr *quic.ApplicationError
	var idle *quic.IdleTimeoutError
	var strErr *quic.StreamError
	var badHeader errBadHeader
	switch {
	case errors.Is(err, routing.ErrNoRoute):
		msg = fmt.Sprintf("no upstream for endpoint %q", ep)
	case errors.As(err, &badHeader):
		status, msg = http.StatusBadRequest, err.Error()
	case errors.Is(err, http.ErrLineTooLong):
		status, msg = http.StatusBadRequest, frontdoor.ChunkLineTooLong
	case errors.As(err, &se):
		switch se.Code {
		case quicutil.StatusUpstreamTimeout:
			status = http.StatusGatewayTimeout
		case quicutil.StatusOverloaded:
			status = http.StatusServiceUnavailable
		}
		msg = fmt.Sprintf("endpoint %q: %s", ep, se.Message)
		if se.Message == "" {
			msg = fmt.Sprintf("endpoint %q: %s", ep, se.Code)
		}
	case errors.As(err, &le):
		// The stream could not be opened: the agent's link, or the relay to
		// another node, failed or timed out. Not the upstream's slowness.
		msg = fmt.Sprintf("endpoint %q: %v", ep, le)
	case isTimeout(err):
		status = http.StatusGatewayTimeout
		msg = fmt.Sprintf("endpoint %q: upstream did not start its response within %s (--response-header-timeout)", ep, s.cfg.ResponseHeaderTimeout)
	case errors.As(err, &idle):
		msg = fmt.Sprintf("endpoint %q: agent stopped answering (connection timed out)", ep)
	case errors.As(err, &appErr) && !appErr.Remote && appErr.ErrorCode == quicutil.ConnCodeTimeout:
		// This node closed a silent link or relay connection (linkwatch.go,
		// cluster.Peer.watch); the message says for how long.
		msg = fmt.Sprintf("endpoint %q: agent stopped answering (%s)", ep, appErr.ErrorMessage)
	case errors.As(err, &appErr), errors.As(err, &le), errors.Is(err, quicutil.ErrNoAnswer):
		msg = fmt.Sprintf("endpoint %q: agent disconnected before answering", ep)
	case errors.As(err, &strErr):
		msg = fmt.Sprintf("endpoint %q: agent reset the stream (upstream connection failed)", ep)
	default:
		msg = fmt.Sprintf("endpoint %q: %v", ep, err)
	}
	writeError(w, r, status, ep, msg)
}

// statusClientClosed is logged for requests whose client went away (nginx's 499).
const statusClientClosed = 499

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() && !isIdle(err)
}

func isIdle(err error) bool {
	var idle *quic.IdleTimeoutError
	return errors.As(err, &idle)
}

// writeError writes an error answer: text, or JSON when the client asks
// for it with Accept.
func writeError(w http.ResponseWriter, r *http.Request, status int, ep routing.EndpointID, msg string) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if strings.Contains(r.Header.Get("Accept"), "application/json") {
		h.Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(struct {
			Status   int    `json:"status"`
			Error    string `json:"error"`
			Endpoint string `json:"endpoint,omitempty"`
		}{status, msg, string(ep)})
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
}

// replayBody keeps the first maxReplay bytes read from a request body so a
// new reader can start over, as long as no more than that was read.
type replayBody struct {
	mu   sync.Mutex // guards the fields below; held across src.Read
	src  io.ReadCloser
	buf  []byte
	over bool // more than maxReplay read: no replay
	eof  bool
	gen  int // readers of older generations are detached
}

func newReplayBody(src io.ReadCloser) *replayBody { return &replayBody{src: src} }

func (b *replayBody) reader() io.ReadCloser { return &replayReader{b: b, gen: b.gen} }

// rewind detaches earlier readers and returns one that starts over.
func (b *replayBody) rewind() (io.ReadCloser, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.over {
		return nil, false
	}
	b.gen++
	return &replayReader{b: b, gen: b.gen}, true
}

type replayReader struct {
	b   *replayBody
	gen int
	off int
}

var errDetached = errors.New("edge: request body taken over by a retry")

func (r *replayReader) Read(p []byte) (int, error) {
	b := r.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if r.gen != b.gen {
		return 0, errDetached
	}
	if r.off < len(b.buf) {
		n := copy(p, b.buf[r.off:])
		r.off += n
		return n, nil
	}
	if b.eof {
		return 0, io.EOF
	}
	n, err := b.src.Read(p)
	if n > 0 && !b.over {
		if len(b.buf)+n > maxReplay {
			b.over, b.buf = true, nil
		} else {
			b.buf = append(b.buf, p[:n]...)
		}
	}
	if !b.over {
		r.off = len(b.buf)
	}
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// Close leaves the client's body alone: the server closes it, and a retry
// may still read it.
func (r *replayReader) Close() error { return nil }

// trackBody counts the response's stream as in flight until its body is
// closed. A 101 response's body is the upgraded connection: it stays
// writable.
func trackBody(body io.ReadCloser, tg target, s *Server, info *requestInfo) io.ReadCloser {
	if rw, ok := body.(io.ReadWriteCloser); ok {
		b := &trackedRWBody{trackedBody: trackedBody{ReadCloser: body, tg: tg, s: s, info: info}, w: rw}
		info.upgraded = b
		s.live.onEnd(b, func() { b.Close() })
		return b
	}
	return &trackedBody{ReadCloser: body, tg: tg, s: s, info: info}
}

// trackedBody is an agent's response body: it counts the stream in
// flight until closed, and remembers why a read failed.
type trackedBody struct {
	io.ReadCloser
	tg   target
	s    *Server
	info *requestInfo
	done atomic.Bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.info.respErr == nil {
		b.info.respErr = err // read by the handler's goroutine, as the body is
	}
	return n, err
}

func (b *trackedBody) Close() error {
	err := b.ReadCloser.Close()
	if !b.done.Swap(true) {
		b.tg.addLoad(-1)
		b.s.live.done()
		if b.tg.leavingNow() {
			// The stream goes back to the pool just after this: close it then.
			time.AfterFunc(50*time.Millisecond, func() { b.tg.upstreams().closeIdle(false) })
		}
	}
	return err
}

// trackedRWBody is the connection after a 101: the agent's side of an
// upgraded connection. It counts the bytes each way for the access log.
type trackedRWBody struct {
	trackedBody
	w       io.Writer
	in, out atomic.Int64 // bytes from the client to the agent, and back
}

func (b *trackedRWBody) Write(p []byte) (int, error) { return b.w.Write(p) }

func (b *trackedRWBody) Close() error {
	b.s.live.forget(b)
	return b.trackedBody.Close()
}

// bufferPool lends ReverseProxy its 32 KiB copy buffers.
type bufferPool struct{}

var proxyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *proxyBufs.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { proxyBufs.Put(&b) }

// statusWriter records the status and size of a response. Unwrap lets
// http.ResponseController reach Flush and Hijack of the real writer.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
	idle   *clientIdle // told of every write, when set
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 || w.status < 200 && w.status != http.StatusSwitchingProtocols {
		w.status = code // the last informational status gives way to the final one
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	if n > 0 && w.idle != nil {
		w.idle.touch()
	}
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// cutError says why the response to r stopped before its end, and marks a
// cut on the agent's side (an agent or upstream that died mid-response).
func (info *requestInfo) cutError(r *http.Request, w *statusWriter) error {
	if info.respErr != nil && r.Context().Err() == nil {
		info.cut = true
		return fmt.Errorf("response cut after %d bytes of its body: the agent's side ended it: %w", w.bytes, info.respErr)
	}
	return fmt.Errorf("response cut after %d bytes of its body: the client went away", w.bytes)
}

// refusedBody is why the guard refused the rest of the request's body, or
// nil.
func (info *requestInfo) refusedBody() *frontdoor.BodyError {
	if info.body == nil {
		return nil
	}
	return info.body.refused.Load()
}
