package inspect

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// maxH2Frame bounds the frames the HTTP/2 parser reads (the peers' own
// SETTINGS_MAX_FRAME_SIZE is 16 KiB unless they raise it).
const maxH2Frame = 1 << 20

// h2conn is the parse of one HTTP/2 connection: the client's frames and
// the upstream's, each read by a goroutine, meet in streams.
type h2conn struct {
	p *parser

	mu      sync.Mutex // guards streams and ended
	streams map[uint32]*h2stream
	ended   map[uint32]bool // streams kept or failed: their late frames are ignored
}

// An h2stream is created by whichever side's goroutine sees it first:
// the upstream's frames may be parsed before the client's that caused them.
type h2stream struct {
	ex                *Exchange
	reqDone, respDone bool
	respEnd           time.Time
	reqBody, respBody *bodyKeeper
}

// streamLocked returns stream id, created if new.
func (c *h2conn) streamLocked(id uint32) *h2stream {
	s := c.streams[id]
	if s == nil && !c.ended[id] {
		in := c.p.in
		s = &h2stream{ex: &Exchange{Time: time.Now(), Endpoint: c.p.info.Endpoint, Upstream: c.p.info.Upstream.Addr, ClientAddr: c.p.info.ClientAddr},
			reqBody: &bodyKeeper{limit: in.cfg.BodyBytes}, respBody: &bodyKeeper{limit: in.cfg.BodyBytes}}
		if len(c.streams) >= maxH2Streams {
			return nil
		}
		c.streams[id] = s
	}
	return s
}

// maxH2Streams bounds the streams of a connection the parser follows at
// once.
const maxH2Streams = 1000

// bodyKeeper keeps the first bytes of a body given in pieces.
type bodyKeeper struct {
	limit int
	kept  []byte
	n     int64
}

func (b *bodyKeeper) add(p []byte) {
	if room := b.limit - len(b.kept); room > 0 {
		b.kept = append(b.kept, p[:min(room, len(p))]...)
	}
	b.n += int64(len(p))
}

func (b *bodyKeeper) into(m *Message) {
	if len(b.kept) > 0 {
		m.Body = bytes.Clone(b.kept)
	}
	m.BodySize, m.BodyTruncated = b.n, b.n > int64(len(b.kept))
}

// runH2 parses an HTTP/2 connection: reqR carries the client's preface and
// frames, respR the upstream's frames.
func (p *parser) runH2(reqR, respR io.Reader) {
	c := &h2conn{p: p, streams: map[uint32]*h2stream{}, ended: map[uint32]bool{}}
	var wg sync.WaitGroup
	var respErr error
	wg.Go(func() { respErr = c.read(respR, false) })
	reqErr := c.read(reqR, true)
	wg.Wait()
	err := reqErr
	if err == nil || errors.Is(respErr, errTruncated) {
		err = respErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, s := range c.streams {
		why := "the connection ended before the stream did"
		if err != nil {
			why = p.describe(err)
		}
		c.emitLocked(id, s, why, errors.Is(err, errTruncated))
	}
}

// read reads one direction's frames until it ends.
func (c *h2conn) read(r io.Reader, client bool) error {
	br := bufio.NewReaderSize(r, 16<<10)
	if client {
		var pre [len(http2.ClientPreface)]byte
		if _, err := io.ReadFull(br, pre[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if string(pre[:]) != http2.ClientPreface {
			c.p.in.add(&Exchange{Time: time.Now(), Endpoint: c.p.info.Endpoint, Upstream: c.p.info.Upstream.Addr,
				ClientAddr: c.p.info.ClientAddr, State: "error", Error: "could not parse the stream: no HTTP/2 client preface"})
			return nil
		}
	}
	fr := http2.NewFramer(nil, br)
	dec := hpack.NewDecoder(4096, nil)
	dec.SetAllowedMaxDynamicTableSize(64 << 10)
	fr.ReadMetaHeaders = dec
	fr.MaxHeaderListSize = maxHead
	fr.SetMaxReadFrameSize(maxH2Frame)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.fail(se.StreamID, "malformed frame: "+se.Error())
				continue
			}
			if err == io.EOF {
				return nil
			}
			return err
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			c.headers(client, f)
		case *http2.DataFrame:
			c.data(client, f)
		case *http2.RSTStreamFrame:
			who := "the upstream"
			if client {
				who = "the edge (the client went away or gave up)"
			}
			c.fail(f.StreamID, fmt.Sprintf("stream reset by %s: %v", who, f.ErrCode))
		}
	}
}

func (c *h2conn) headers(client bool, f *http2.MetaHeadersFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := f.StreamID
	s := c.streamLocked(id)
	if s == nil {
		return
	}
	in := c.p.in
	regular := http.Header{}
	for _, hf := range f.RegularFields() {
		regular.Add(hf.Name, hf.Value)
	}
	switch {
	case client && s.ex.Request == nil:
		ex := s.ex
		ex.Time = c.p.now(c.p.reqPipe)
		if a := clientFromHeader(regular); a != "" {
			ex.ClientAddr = a
		}
		ex.Request = &Message{Method: f.PseudoValue("method"), URL: f.PseudoValue("path"), Host: f.PseudoValue("authority"),
			Proto: "HTTP/2.0", Header: in.redactHeader(regular)}
	case client:
		s.ex.Request.Trailer = in.redactHeader(regular)
	case s.ex.Response == nil:
		var status int
		fmt.Sscan(f.PseudoValue("status"), &status)
		if status < 200 {
			return // 1xx: the final response follows
		}
		s.ex.Response = &Message{Status: status, Proto: "HTTP/2.0", Header: in.redactHeader(regular)}
	default:
		s.ex.Response.Trailer = in.redactHeader(regular)
	}
	if f.StreamEnded() {
		c.endLocked(id, s, client)
	}
}

func (c *h2conn) data(client bool, f *http2.DataFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streamLocked(f.StreamID)
	if s == nil {
		return
	}
	if client {
		s.reqBody.add(f.Data())
	} else {
		s.respBody.add(f.Data())
	}
	if f.StreamEnded() {
		c.endLocked(f.StreamID, s, client)
	}
}

// endLocked notes one side's END_STREAM; with both, the exchange is kept.
func (c *h2conn) endLocked(id uint32, s *h2stream, client bool) {
	if client {
		s.reqDone = true
	} else {
		s.respDone = true
		s.respEnd = c.p.now(c.p.respPipe)
	}
	if s.reqDone && s.respDone {
		c.emitLocked(id, s, "", false)
	}
}

// fail ends stream id with an error.
func (c *h2conn) fail(id uint32, why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[id]; s != nil {
		c.emitLocked(id, s, why, false)
	}
}

func (c *h2conn) emitLocked(id uint32, s *h2stream, why string, truncated bool) {
	delete(c.streams, id)
	if len(c.ended) >= 4*maxH2Streams {
		clear(c.ended)
	}
	c.ended[id] = true
	ex := s.ex
	if ex.Request == nil {
		ex.Request = &Message{Proto: "HTTP/2.0"}
		if why == "" {
			why = "a response to a request the capture did not see"
		}
	}
	s.reqBody.into(ex.Request)
	if ex.Response != nil {
		s.respBody.into(ex.Response)
	}
	if s.respEnd.IsZero() {
		s.respEnd = c.p.now(c.p.respPipe)
	}
	ex.Duration = s.respEnd.Sub(ex.Time)
	ex.State, ex.Truncated = "complete", truncated
	if why != "" {
		ex.State, ex.Error = "error", why
	}
	c.p.in.add(ex)
}
