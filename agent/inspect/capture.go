package inspect

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StreamInfo describes a stream being captured.
type StreamInfo struct {
	Endpoint   string
	ClientAddr string // the stream header's, used when the request has no forwarding header
	Upstream   Upstream
	HTTP2      bool // the stream carries HTTP/2 (prior knowledge), else HTTP/1.1
}

// A Stream captures one HTTP/1.1 or HTTP/2 stream: it is the quicutil.Observer of
// the stream's copy. Its methods never block on the parser.
type Stream struct {
	in        *Inspector
	info      StreamInfo
	req, resp *pipe
	endOnce   sync.Once
	endErr    error // set before the pipes close
}

// Stream starts capturing a stream of info's endpoint, many exchanges
// keep-alive. The caller hands it the bytes each way and must call Close
// when the stream ends. On a nil or closed Inspector it returns nil.
func (in *Inspector) Stream(info StreamInfo) *Stream {
	if in == nil {
		return nil
	}
	s := &Stream{in: in, info: info, req: newPipe(&in.parse), resp: newPipe(&in.parse)}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return nil
	}
	in.upstreams[info.Endpoint] = info.Upstream
	in.streams[s] = struct{}{}
	in.wg.Go(func() {
		p := &parser{in: in, info: info, reqPipe: s.req, respPipe: s.resp, endErr: s.err}
		if info.HTTP2 {
			p.runH2(s.req, s.resp)
		} else {
			p.run(s.req, s.resp)
		}
		s.req.stop()
		s.resp.stop()
		in.mu.Lock()
		delete(in.streams, s)
		in.mu.Unlock()
	})
	return s
}

// ToUpstream is the quicutil.Observer method for request bytes.
func (s *Stream) ToUpstream(p []byte) { s.req.write(p) }

// FromUpstream is the quicutil.Observer method for response bytes.
func (s *Stream) FromUpstream(p []byte) { s.resp.write(p) }

// Close ends the capture of the stream; err is how the stream ended (nil
// when both directions ended cleanly). The parser finishes with the bytes
// it has. Safe twice.
func (s *Stream) Close(err error) {
	s.endOnce.Do(func() {
		s.in.mu.Lock()
		s.endErr = err
		s.in.mu.Unlock()
		s.req.close()
		s.resp.close()
	})
}

func (s *Stream) err() error {
	s.in.mu.Lock()
	defer s.in.mu.Unlock()
	return s.endErr
}

// Refused records a stream that the agent refused because it could not
// reach the upstream: no request was read, reason says why.
func (in *Inspector) Refused(info StreamInfo, reason string) {
	if in == nil {
		return
	}
	in.add(&Exchange{Time: time.Now(), Endpoint: info.Endpoint, ClientAddr: info.ClientAddr,
		Upstream: info.Upstream.Addr, State: "error", Error: reason})
}

// maxHead bounds a request or response head the parser reads (the edge's
// own limit is lower).
const maxHead = 1 << 20

// A parser turns the two directions of a stream into exchanges.
type parser struct {
	in                *Inspector
	info              StreamInfo
	reqPipe, respPipe *pipe        // for times; nil in tests that parse readers
	endErr            func() error // how the stream ended; may be nil
}

// pending is a request whose response the response side reads next.
type pending struct {
	ex      *Exchange
	method  string
	upgrade bool          // the request asks for a protocol switch
	done    chan struct{} // closed when the request's side is done with ex
	// switched says whether the response switched protocols, for an
	// upgrade request.
	switched chan bool
	// wsIn counts the client's messages after a switch, written before
	// wsDone closes.
	wsIn   int64
	wsDone chan struct{}
}

// headLimit limits the bytes read for one message head.
type headLimit struct {
	r io.Reader
	n int64 // < 0: no limit
}

var errHeadTooLarge = errors.New("message head over 1 MiB")

func (l *headLimit) Read(b []byte) (int, error) {
	if l.n == 0 {
		return 0, errHeadTooLarge
	}
	if l.n > 0 && int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.r.Read(b)
	if l.n > 0 {
		l.n -= int64(n)
	}
	return n, err
}

// run parses reqR and respR until both end, and keeps each exchange.
func (p *parser) run(reqR, respR io.Reader) {
	reqs := make(chan *pending, 16)
	respDone := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(respDone)
		p.responses(respR, reqs)
	})
	p.requests(reqR, reqs, respDone)
	close(reqs)
	wg.Wait()
}

func (p *parser) now(pp *pipe) time.Time {
	if pp != nil {
		if t := pp.lastTime(); !t.IsZero() {
			return t
		}
	}
	return time.Now()
}

// requests reads requests from r and sends each to the response side.
func (p *parser) requests(r io.Reader, reqs chan<- *pending, respDone <-chan struct{}) {
	lim := &headLimit{r: r}
	br := bufio.NewReader(lim)
	for {
		lim.n = maxHead
		if _, err := br.Peek(1); err != nil {
			if err != io.EOF {
				p.lost(nil, err)
			}
			return
		}
		req, err := http.ReadRequest(br)
		lim.n = -1
		if err != nil {
			p.in.add(&Exchange{Time: time.Now(), Endpoint: p.info.Endpoint, ClientAddr: p.info.ClientAddr,
				Upstream: p.info.Upstream.Addr, State: "error", Truncated: errors.Is(err, errTruncated),
				Error: "could not parse the request: " + p.describe(err)})
			return
		}
		ex := &Exchange{Time: p.now(p.reqPipe), Endpoint: p.info.Endpoint, Upstream: p.info.Upstream.Addr,
			ClientAddr: clientFromHeader(req.Header)}
		if ex.ClientAddr == "" {
			ex.ClientAddr = p.info.ClientAddr
		}
		ex.Request = &Message{Method: req.Method, URL: req.RequestURI, Host: req.Host, Proto: req.Proto,
			Header: p.in.redactHeader(req.Header)}
		if req.Host != "" && req.Header.Get("Host") == "" {
			ex.Request.Header.Set("Host", req.Host)
		}
		pd := &pending{ex: ex, method: req.Method, done: make(chan struct{}),
			upgrade: req.Header.Get("Upgrade") != "" && headerHas(req.Header, "Connection", "upgrade")}
		if pd.upgrade {
			pd.switched = make(chan bool, 1)
			pd.wsDone = make(chan struct{})
		}
		select {
		case reqs <- pd:
		case <-respDone:
			return
		}
		var trailer http.Header
		trailer, err = p.body(ex.Request, br, p.reqPipe, framingOf(req.Body, req.ContentLength, req.TransferEncoding), nil)
		ex.Request.Trailer = p.in.redactHeader(trailer)
		ex.Truncated = errors.Is(err, errTruncated)
		close(pd.done)
		if err != nil {
			if pd.wsDone != nil {
				close(pd.wsDone)
			}
			p.lost(nil, err)
			return
		}
		if pd.upgrade {
			var switched bool
			select {
			case switched = <-pd.switched:
			case <-respDone:
			}
			if switched {
				pd.wsIn, _ = countFrames(br)
				close(pd.wsDone)
				return
			}
			close(pd.wsDone)
		}
	}
}

// responses reads the response to each request from reqs off r.
func (p *parser) responses(r io.Reader, reqs <-chan *pending) {
	lim := &headLimit{r: r}
	br := bufio.NewReader(lim)
	for pd := range reqs {
		ex := pd.ex
		var resp *http.Response
		var err error
		for {
			lim.n = maxHead
			resp, err = http.ReadResponse(br, &http.Request{Method: pd.method})
			lim.n = -1
			if err != nil || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
				break
			}
			// 100 Continue, 103 Early Hints: the final response follows.
		}
		if pd.switched != nil {
			pd.switched <- err == nil && resp.StatusCode == http.StatusSwitchingProtocols
		}
		if err != nil {
			<-pd.done
			ex.State = "error"
			ex.Truncated = ex.Truncated || errors.Is(err, errTruncated) || p.respPipe != nil && p.respPipe.isBroken()
			ex.Error = "no response: " + p.describe(err)
			ex.Duration = time.Since(ex.Time)
			p.in.add(ex)
			return
		}
		ex.Response = &Message{Status: resp.StatusCode, Proto: resp.Proto, Header: p.in.redactHeader(resp.Header)}
		if resp.StatusCode == http.StatusSwitchingProtocols && !pd.upgrade {
			<-pd.done
			ex.State, ex.Error = "error", "101 Switching Protocols to a request that asked for no upgrade; the rest of the stream is not captured"
			ex.Duration = p.now(p.respPipe).Sub(ex.Time)
			p.in.add(ex)
			return
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			<-pd.done
			ex.Upgrade = strings.ToLower(resp.Header.Get("Upgrade"))
			ex.State = "open"
			ex.Duration = p.now(p.respPipe).Sub(ex.Time)
			open := *ex
			id := p.in.add(&open)
			out, ferr := countFrames(br)
			<-pd.wsDone
			final := open
			final.ID, final.MessagesOut, final.MessagesIn = id, out, pd.wsIn
			final.State, final.Duration = "complete", p.now(p.respPipe).Sub(ex.Time)
			if ferr != nil && ferr != io.EOF {
				final.State, final.Error = "error", p.describe(ferr)
				final.Truncated = errors.Is(ferr, errTruncated)
			}
			p.in.update(&final)
			return
		}
		var id uint64
		var events *int64
		if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(ct, "text/event-stream") {
			<-pd.done
			ex.State = "open"
			ex.Duration = p.now(p.respPipe).Sub(ex.Time)
			open := *ex
			id = p.in.add(&open)
			events = new(int64)
		}
		trailer, err := p.body(ex.Response, br, p.respPipe, framingOf(resp.Body, resp.ContentLength, resp.TransferEncoding), events)
		ex.Response.Trailer = p.in.redactHeader(trailer)
		ex.Duration = p.now(p.respPipe).Sub(ex.Time)
		<-pd.done
		ex.State = "complete"
		if events != nil {
			ex.Events = *events
		}
		if err != nil {
			ex.State, ex.Error = "error", "response body: "+p.describe(err)
			ex.Truncated = ex.Truncated || errors.Is(err, errTruncated)
		}
		if ex.Request.BodySize < 0 && ex.Error == "" {
			ex.State, ex.Error = "error", "the request body did not end"
		}
		if id != 0 {
			ex.ID = id
			p.in.update(ex)
		} else {
			p.in.add(ex)
		}
		if err != nil {
			return
		}
	}
}

// framing says how a body's end is found.
type framing struct {
	chunked bool
	size    int64 // with !chunked: the length, or -1 for "until the connection ends"
}

func framingOf(body io.ReadCloser, size int64, te []string) framing {
	switch {
	case body == nil || body == http.NoBody:
		return framing{size: 0}
	case len(te) > 0 && te[len(te)-1] == "chunked":
		return framing{chunked: true}
	}
	return framing{size: size}
}

// body reads a body framed as f from br (over pp, nil when the bytes come
// from elsewhere), keeping its first bytes in m; events, if not nil,
// counts server-sent events (blank lines). The bytes past those kept are
// skipped, not copied, where the framing allows. It returns a chunked
// body's trailer.
func (p *parser) body(m *Message, br *bufio.Reader, pp *pipe, f framing, events *int64) (http.Header, error) {
	b := &bodyReader{p: p, m: m, br: br, pp: pp, events: events}
	var trailer http.Header
	var err error
	switch {
	case f.chunked:
		trailer, err = b.chunked()
	case f.size >= 0:
		err = b.data(f.size)
	default:
		err = b.data(-1)
	}
	if len(b.kept) > 0 {
		m.Body = bytes.Clone(b.kept) // no spare capacity kept
	}
	m.BodySize, m.BodyTruncated = b.n, b.n > int64(len(b.kept))
	if err != nil {
		m.BodySize, m.BodyTruncated = -1, true
	}
	return trailer, err
}

// readAll keeps what it can of r to its end, as body does; for a replay's
// response.
func (p *parser) readAll(m *Message, r io.Reader) error {
	b := &bodyReader{p: p, m: m, br: bufio.NewReader(r)}
	err := b.data(-1)
	if len(b.kept) > 0 {
		m.Body = bytes.Clone(b.kept)
	}
	m.BodySize, m.BodyTruncated = b.n, b.n > int64(len(b.kept))
	return err
}

type bodyReader struct {
	p      *parser
	m      *Message
	br     *bufio.Reader
	pp     *pipe
	events *int64
	kept   []byte
	n      int64   // body bytes so far
	prev   [2]byte // the last two bytes seen, for events
}

// data reads n bytes of body (n < 0: until EOF).
func (b *bodyReader) data(n int64) error {
	limit := b.p.in.cfg.BodyBytes
	for n != 0 {
		if len(b.kept) >= limit && b.events == nil {
			return b.skip(n)
		}
		want := limit - len(b.kept)
		if b.events != nil {
			want = 4096
		}
		if n > 0 {
			want = int(min(int64(want), n))
		}
		if b.br.Buffered() == 0 {
			if _, err := b.br.Peek(1); err != nil {
				if n < 0 && err == io.EOF {
					return nil
				}
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
		}
		chunk, _ := b.br.Peek(min(want, b.br.Buffered()))
		if room := limit - len(b.kept); room > 0 {
			b.kept = append(b.kept, chunk[:min(room, len(chunk))]...)
		}
		if b.events != nil {
			*b.events += countEvents(b.prev, chunk)
			if k := len(chunk); k >= 2 {
				b.prev = [2]byte{chunk[k-2], chunk[k-1]}
			} else {
				b.prev = [2]byte{b.prev[1], chunk[0]}
			}
		}
		b.br.Discard(len(chunk))
		b.n += int64(len(chunk))
		if n > 0 {
			n -= int64(len(chunk))
		}
	}
	return nil
}

// skip drops n bytes of body (n < 0: until EOF) without reading them
// where it can: what br holds, then what the pipe holds and gets.
func (b *bodyReader) skip(n int64) error {
	if n < 0 {
		n = 1<<63 - 1
	}
	d, _ := b.br.Discard(int(min(n, int64(b.br.Buffered()))))
	b.n += int64(d)
	n -= int64(d)
	if n == 0 {
		return nil
	}
	var k int64
	var err error
	if b.pp != nil {
		k, err = b.pp.skip(n)
	} else {
		k, err = io.CopyN(io.Discard, b.br, n)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	}
	b.n += k
	if err == io.ErrUnexpectedEOF && n == 1<<63-1-int64(d) {
		return nil // until EOF: the end
	}
	return err
}

var errChunk = errors.New("malformed chunked encoding")

// chunked reads a chunked body and its trailer.
func (b *bodyReader) chunked() (http.Header, error) {
	for {
		line, err := b.line()
		if err != nil {
			return nil, err
		}
		sz, _, _ := strings.Cut(line, ";")
		sz = strings.TrimSpace(sz)
		if sz == "" || len(sz) > 15 {
			return nil, errChunk
		}
		var n int64
		for _, c := range []byte(sz) {
			switch {
			case '0' <= c && c <= '9':
				n = n<<4 | int64(c-'0')
			case 'a' <= c && c <= 'f':
				n = n<<4 | int64(c-'a'+10)
			case 'A' <= c && c <= 'F':
				n = n<<4 | int64(c-'A'+10)
			default:
				return nil, errChunk
			}
		}
		if n == 0 {
			break
		}
		if err := b.data(n); err != nil {
			return nil, err
		}
		if line, err := b.line(); err != nil || line != "" {
			if err == nil {
				err = errChunk
			}
			return nil, err
		}
	}
	// The trailer: header lines up to a blank one.
	var trailer http.Header
	for {
		line, err := b.line()
		if err != nil {
			return trailer, err
		}
		if line == "" {
			return trailer, nil
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || !validHeaderName(k) {
			return trailer, errors.New("malformed trailer line")
		}
		if trailer == nil {
			trailer = http.Header{}
		}
		if len(trailer) < 100 {
			trailer.Add(k, strings.TrimSpace(v))
		}
	}
}

// line reads a CRLF- or LF-ended line of at most 4 KiB.
func (b *bodyReader) line() (string, error) {
	l, err := b.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || err == nil && len(l) > 4096 {
		return "", errors.New("chunk line over 4 KiB")
	}
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	return strings.TrimSuffix(strings.TrimSuffix(string(l), "\n"), "\r"), nil
}

// countEvents counts the blank lines ("\n\n", or "\n\r\n") that end
// server-sent events in b, which follows the bytes prev.
func countEvents(prev [2]byte, b []byte) int64 {
	var n int64
	p1, p2 := prev[0], prev[1]
	for _, c := range b {
		if c == '\n' && (p2 == '\n' || p2 == '\r' && p1 == '\n') {
			n++
		}
		p1, p2 = p2, c
	}
	return n
}

// countFrames counts the WebSocket messages (final frames of data
// messages) in r until it ends.
func countFrames(r *bufio.Reader) (int64, error) {
	var n int64
	var hdr [14]byte
	for {
		if _, err := io.ReadFull(r, hdr[:2]); err != nil {
			if err == io.ErrUnexpectedEOF {
				err = errors.New("websocket frame cut short")
			}
			return n, err
		}
		fin, op := hdr[0]&0x80 != 0, hdr[0]&0x0f
		masked := hdr[1]&0x80 != 0
		size := int64(hdr[1] & 0x7f)
		ext := 0
		switch size {
		case 126:
			ext = 2
		case 127:
			ext = 8
		}
		if masked {
			ext += 4
		}
		if _, err := io.ReadFull(r, hdr[2:2+ext]); err != nil {
			return n, errors.New("websocket frame cut short")
		}
		switch size {
		case 126:
			size = int64(hdr[2])<<8 | int64(hdr[3])
		case 127:
			size = 0
			for _, c := range hdr[2:10] {
				size = size<<8 | int64(c)
			}
			if size < 0 {
				return n, errors.New("websocket frame over 2^63 bytes")
			}
		}
		if fin && op < 8 {
			n++ // the last frame of a text, binary or continued message
		}
		if _, err := r.Discard(int(min(size, 1<<30))); err != nil {
			return n, errors.New("websocket frame cut short")
		}
		for size > 1<<30 {
			size -= 1 << 30
			if _, err := r.Discard(int(min(size, 1<<30))); err != nil {
				return n, errors.New("websocket frame cut short")
			}
		}
	}
}

// lost records that the stream ended in the middle of a message.
func (p *parser) lost(ex *Exchange, err error) {
	if ex == nil {
		return
	}
	ex.State, ex.Error = "error", p.describe(err)
	p.in.add(ex)
}

// describe says why reading a message failed, in terms of the stream.
func (p *parser) describe(err error) string {
	if errors.Is(err, errTruncated) {
		return "not captured: the capture fell behind and dropped bytes (the traffic itself was not affected)"
	}
	var end error
	if p.endErr != nil {
		end = p.endErr()
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		switch {
		case end == nil:
			return "the connection ended before the message did"
		case errors.Is(end, syscall.ECONNRESET):
			return "the upstream reset the connection"
		case isTimeout(end):
			return "timed out: no byte either way for the stream's idle timeout"
		default:
			return "the stream ended: " + end.Error()
		}
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || strings.Contains(err.Error(), "idle")
}

// headerHas reports whether the comma-separated header name lists token.
func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
