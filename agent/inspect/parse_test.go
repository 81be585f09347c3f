package inspect

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// parseBytes parses the two directions of a stream given whole, as the
// capture does, and returns the exchanges kept.
func parseBytes(t testing.TB, cfg Config, req, resp []byte) []*Exchange {
	t.Helper()
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	p := &parser{in: in, info: StreamInfo{Endpoint: "web", ClientAddr: "192.0.2.1:5"}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.run(bytes.NewReader(req), bytes.NewReader(resp))
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("the parser hangs on\nrequest %q\nresponse %q", req, resp)
	}
	return in.Exchanges(nil)
}

var (
	wsReq  = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	wsResp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
	// Frames: client text "hi" (masked), a ping, "a" + continuation "b"; server text "yo" twice.
	wsIn  = "\x81\x82\x01\x02\x03\x04" + "hk" + "\x89\x80\x01\x02\x03\x04" + "\x01\x81\x00\x00\x00\x00a" + "\x80\x81\x00\x00\x00\x00b"
	wsOut = "\x81\x02yo\x81\x02yo"
	seeds = [][2]string{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"},
		{"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
			"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nTrailer: X-S\r\n\r\n2\r\nok\r\n0\r\nX-S: 9\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"},
		{"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"},
		{"GET /sse HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\ndata: 2\r\n\r\n"},
		{wsReq + wsIn, wsResp + wsOut},
		{"GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 200 OK\r\n\r\nuntil the end"},
		{"BAD\r\n\r\n", ""},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"},
	}
)

// Several requests on one stream are several exchanges; 1xx responses are
// skipped; chunked bodies and their trailers are kept.
func TestParseKeepAliveChunked(t *testing.T) {
	got := parseBytes(t, Config{}, []byte(seeds[1][0]), []byte(seeds[1][1]))
	if len(got) != 2 {
		t.Fatalf("got %d exchanges, want 2: %+v", len(got), got)
	}
	a, b := got[0], got[1]
	if a.Request.Method != "POST" || string(a.Request.Body) != "abc" || a.Request.Trailer.Get("X-T") != "1" {
		t.Errorf("first request: %s %q trailer %v", a.Request.Method, a.Request.Body, a.Request.Trailer)
	}
	if a.Response.Status != 201 || string(a.Response.Body) != "ok" || a.Response.Trailer.Get("X-S") != "9" {
		t.Errorf("first response: %d %q trailer %v", a.Response.Status, a.Response.Body, a.Response.Trailer)
	}
	if b.Request.URL != "/2" || b.Response.Status != 204 || b.State != "complete" {
		t.Errorf("second exchange: %s %d %s", b.Request.URL, b.Response.Status, b.State)
	}
	if a.ClientAddr != "192.0.2.1:5" {
		t.Errorf("client address without forwarding headers: %q, want the stream header's", a.ClientAddr)
	}
}

// A WebSocket exchange keeps the handshake and counts messages each way.
func TestParseWebSocket(t *testing.T) {
	got := parseBytes(t, Config{}, []byte(seeds[4][0]), []byte(seeds[4][1]))
	if len(got) != 1 {
		t.Fatalf("got %d exchanges: %+v", len(got), got)
	}
	e := got[0]
	if e.Upgrade != "websocket" || e.Response.Status != 101 || e.MessagesIn != 2 || e.MessagesOut != 2 || e.State != "complete" {
		t.Errorf("websocket: upgrade %q status %d messages in %d out %d state %s; want websocket 101 2 2 complete",
			e.Upgrade, e.Response.Status, e.MessagesIn, e.MessagesOut, e.State)
	}
}

// An event stream counts its events.
func TestParseSSE(t *testing.T) {
	got := parseBytes(t, Config{}, []byte(seeds[3][0]), []byte(seeds[3][1]))
	if len(got) != 1 || got[0].Events != 2 {
		t.Fatalf("got %+v, want one exchange with 2 events", got)
	}
}

// A response cut short is an error that says so; a bad request is kept
// with the parser's reason.
func TestParseErrors(t *testing.T) {
	got := parseBytes(t, Config{}, []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), []byte("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
	if len(got) != 1 || got[0].State != "error" || !strings.Contains(got[0].Error, "ended before the message did") {
		t.Fatalf("cut response: %+v", got)
	}
	got = parseBytes(t, Config{}, []byte("BAD\r\n\r\n"), nil)
	if len(got) != 1 || !strings.Contains(got[0].Error, "could not parse the request") {
		t.Fatalf("bad request: %+v", got)
	}
}

// A pipe that fills drops instead of blocking, and the exchange read from
// it is marked truncated.
func TestPipeFullTruncates(t *testing.T) {
	in, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	s := in.Stream(StreamInfo{Endpoint: "web"})
	// Response bytes before any request: the parser does not read them
	// until it has a request, so the response pipe fills.
	s.FromUpstream([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n"))
	big := bytes.Repeat([]byte("x"), 32<<10)
	start := time.Now()
	drops := 0
	for range 64 { // 2 MiB, over the pipe's 1 MiB
		if !s.resp.write(big) {
			drops++
		}
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("writes took %s: they must not wait for the parser", time.Since(start))
	}
	if drops == 0 {
		t.Fatal("2 MiB went into a pipe of 1 MiB")
	}
	s.ToUpstream([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	s.Close(nil)
	deadline := time.After(10 * time.Second)
	for {
		ch := in.Changed()
		if got := in.Exchanges(nil); len(got) == 1 {
			if !got[0].Truncated || got[0].State != "error" || in.Stats().Dropped != 1 {
				t.Fatalf("exchange after a drop: %+v, stats %+v; want truncated, an error, one drop", got[0], in.Stats())
			}
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatal("no exchange after the drop")
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range seeds {
		f.Add([]byte(s[0]), []byte(s[1]))
	}
	f.Fuzz(func(t *testing.T, req, resp []byte) {
		got := parseBytes(t, Config{BodyBytes: 16}, req, resp)
		for _, e := range got {
			for _, m := range []*Message{e.Request, e.Response} {
				if m == nil {
					continue
				}
				if len(m.Body) > 16 || m.BodySize >= 0 && int64(len(m.Body)) > m.BodySize {
					t.Fatalf("body kept %d of %d, limit 16", len(m.Body), m.BodySize)
				}
			}
			if e.State == "" {
				t.Fatalf("exchange without a state: %+v", e)
			}
		}
		if len(got) > len(req)+1 {
			t.Fatalf("%d exchanges from %d request bytes", len(got), len(req))
		}
	})
}

// h2Seed encodes an HTTP/2 exchange on stream 1 with the x/net/http2
// encoder: the client's preface, HEADERS and DATA; the upstream's HEADERS,
// DATA and trailers.
func h2Seed(t testing.TB) (req, resp []byte) {
	var rq, rs bytes.Buffer
	rq.WriteString(http2.ClientPreface)
	enc := func(fields ...string) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		for i := 0; i+1 < len(fields); i += 2 {
			e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return b.Bytes()
	}
	cf := http2.NewFramer(&rq, nil)
	cf.WriteSettings()
	cf.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true,
		BlockFragment: enc(":method", "POST", ":scheme", "http", ":path", "/x?y=1", ":authority", "a", "authorization", "secret")})
	cf.WriteData(1, true, []byte("hello"))
	sf := http2.NewFramer(&rs, nil)
	sf.WriteSettings()
	sf.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: enc(":status", "200", "content-type", "text/plain")})
	sf.WriteData(1, false, []byte("world"))
	sf.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true, BlockFragment: enc("grpc-status", "0")})
	return rq.Bytes(), rs.Bytes()
}

// parseH2Bytes is parseBytes for an HTTP/2 stream.
func parseH2Bytes(t testing.TB, req, resp []byte) []*Exchange {
	t.Helper()
	in, err := New(Config{BodyBytes: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	p := &parser{in: in, info: StreamInfo{Endpoint: "web", HTTP2: true}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.runH2(bytes.NewReader(req), bytes.NewReader(resp))
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("the HTTP/2 parser hangs on\nrequest %q\nresponse %q", req, resp)
	}
	return in.Exchanges(nil)
}

func TestParseH2(t *testing.T) {
	req, resp := h2Seed(t)
	got := parseH2Bytes(t, req, resp)
	if len(got) != 1 {
		t.Fatalf("got %d exchanges: %+v", len(got), got)
	}
	e := got[0]
	if e.Request.Method != "POST" || e.Request.URL != "/x?y=1" || string(e.Request.Body) != "hello" || e.Request.Header.Get("Authorization") != Redacted {
		t.Errorf("request: %+v", e.Request)
	}
	if e.Response.Status != 200 || string(e.Response.Body) != "world" || e.Response.Trailer.Get("Grpc-Status") != "0" || e.State != "complete" {
		t.Errorf("response: %+v state %s", e.Response, e.State)
	}
	// Cut short: the exchange is kept with an error.
	got = parseH2Bytes(t, req, resp[:len(resp)-12])
	if len(got) != 1 || got[0].State != "error" {
		t.Fatalf("cut response: %+v", got)
	}
}

func FuzzParseH2(f *testing.F) {
	req, resp := h2Seed(f)
	f.Add(req, resp)
	f.Add(req[:30], resp)
	f.Add([]byte(http2.ClientPreface), []byte{})
	f.Fuzz(func(t *testing.T, req, resp []byte) {
		for _, e := range parseH2Bytes(t, req, resp) {
			for _, m := range []*Message{e.Request, e.Response} {
				if m != nil && (len(m.Body) > 16 || int64(len(m.Body)) > m.BodySize) {
					t.Fatalf("body kept %d of %d, limit 16", len(m.Body), m.BodySize)
				}
			}
			if e.State == "" {
				t.Fatalf("exchange without a state: %+v", e)
			}
		}
	})
}
