package edge

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// The direct stream path writes the client's request head itself; it must
// send what ReverseProxy (with the edge's rewrite) and net/http's
// Request.Write send for the same request. Both heads are parsed back and
// compared: method, target, Host and every header with its values in
// order.
func FuzzDirectHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: foo.example.com\r\n\r\n",
		"GET /a%20b/c?x=1&y=%41 HTTP/1.1\r\nHost: foo.example.com:8000\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
		"HEAD /x HTTP/1.1\r\nHost: foo\r\nConnection: keep-alive, X-Secret, User-Agent\r\nX-Secret: 1\r\nUser-Agent: a\r\nKeep-Alive: 5\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: foo\r\nX-Pico-Endpoint: foo\r\nX-Pico-Authorization: Bearer t\r\nAuthorization: Basic x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: foo\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nForwarded: for=1.2.3.4\r\nX-Forwarded-Host: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: foo\r\nTe: trailers, deflate\r\nProxy-Authorization: x\r\nProxy-Connection: close\r\nTrailer: X\r\n\r\n",
		"POST /form HTTP/1.1\r\nHost: foo\r\nContent-Length: 0\r\nIdempotency-Key: 7\r\n\r\n",
		"POST /json HTTP/1.1\r\nHost: foo\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"a\": \"b c\"}",
		"PUT /x HTTP/1.1\r\nHost: foo\r\nContent-Length: 3\r\nConnection: content-length\r\n\r\nabc",
		"PATCH /x HTTP/1.1\r\nHost: foo\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
		"DELETE /x HTTP/1.1\r\nHost: foo\r\nA: 1\r\nA: 2\r\nB:  padded  \r\nUser-Agent:\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: foo\r\n\r\n",
		"GET http://foo.example.com/abs?q HTTP/1.1\r\nHost: foo.example.com\r\n\r\n",
		"GET /? HTTP/1.1\r\nHost: foo\r\nConnection: te\r\nTe: trailers\r\n\r\n",
		"GET //double/slash HTTP/1.1\r\nHost: foo\r\n\r\n",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, head []byte, trusted bool) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			return
		}
		r.RemoteAddr = "127.0.0.1:40000"
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength == 0 {
			r.Body = http.NoBody // as the server hands a handler a request without a body
		}
		if !canDirect(r) {
			return
		}
		s := &Server{}
		if trusted {
			s.cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		}
		info := &requestInfo{endpoint: "foo", clientAddr: r.RemoteAddr}
		r = r.WithContext(context.WithValue(context.Background(), requestInfoKey, info))

		d := &direct{fwd: s.forwardingOf(r)}
		if r.ContentLength > 0 {
			d.body = make([]byte, r.ContentLength)
			if _, err := io.ReadFull(r.Body, d.body); err != nil {
				return // a body shorter than its Content-Length: serveDirect answers 400
			}
			r.Body = io.NopCloser(bytes.NewReader(d.body))
		}
		var mine bytes.Buffer
		derr := writeHead(&mine, r, d)

		// ReverseProxy's outgoing request, written by net/http.
		var viaRP bytes.Buffer
		var rpErr error
		rp := &httputil.ReverseProxy{
			Rewrite: s.rewrite,
			Transport: roundTripFunc(func(out *http.Request) (*http.Response, error) {
				rpErr = out.Write(&viaRP)
				return nil, errors.New("captured")
			}),
			ErrorHandler: func(http.ResponseWriter, *http.Request, error) {},
		}
		rp.ServeHTTP(discardWriter{}, r)
		var bad errBadHeader
		if rpErr == nil && errors.As(derr, &bad) && !validFieldName(bad.name) {
			return // net/http writes any name; the edge refuses those that are not tokens
		}
		if rpErr != nil || derr != nil {
			if (rpErr == nil) != (derr == nil) {
				t.Fatalf("net/http: %v, direct: %v, for %q", rpErr, derr, head)
			}
			return
		}
		a, errA := http.ReadRequest(bufio.NewReader(bytes.NewReader(mine.Bytes())))
		b, errB := http.ReadRequest(bufio.NewReader(bytes.NewReader(viaRP.Bytes())))
		if errA != nil && errB != nil {
			// Neither is a request net/http reads back (a URI like "a:b"
			// goes out opaque): the same request line is all there is.
			la, _, _ := strings.Cut(mine.String(), "\r\n")
			lb, _, _ := strings.Cut(viaRP.String(), "\r\n")
			if la == lb {
				return
			}
		}
		if errA != nil || errB != nil {
			t.Fatalf("parsing back: direct %v, net/http %v\ndirect:   %q\nnet/http: %q", errA, errB, mine.String(), viaRP.String())
		}
		if a.Method != b.Method || a.RequestURI != b.RequestURI || a.Host != b.Host || !maps.EqualFunc(a.Header, b.Header, slices.Equal) {
			t.Fatalf("heads differ for %q\ndirect:   %q\nnet/http: %q", head, mine.String(), viaRP.String())
		}
		ba, errA := io.ReadAll(a.Body)
		bb, errB := io.ReadAll(b.Body)
		if errA != nil || errB != nil || !bytes.Equal(ba, bb) {
			t.Fatalf("bodies differ for %q: direct %q (%v), net/http %q (%v)", head, ba, errA, bb, errB)
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}

// Header values lose their line breaks, as with net/http.
func TestWriteHeadValues(t *testing.T) {
	r, _ := http.NewRequest("GET", "http://foo/x", nil)
	r.Header["X-A"] = []string{" a\r\nInjected: 1 "}
	var b bytes.Buffer
	if err := writeHead(&b, r, nil); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "\r\nInjected") || !strings.Contains(b.String(), "X-A: a  Injected: 1\r\n") {
		t.Fatalf("head %q", b.String())
	}
	r.Header["Bad Name"] = []string{"v"}
	if err := writeHead(&b, r, nil); err == nil || !strings.Contains(err.Error(), `"Bad Name"`) {
		t.Fatalf("a header name with a space: %v", err)
	}
}
