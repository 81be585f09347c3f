package edge

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// The direct stream path: a request that takes the stream path
// (h1stream.go) and whose endpoint's agent speaks HTTP/1.1 is proxied by
// the front door itself rather than by httputil.ReverseProxy. Its head is
// written from the client's request as it goes (hop-by-hop headers,
// Pico's own and the client's forwarding headers left out, the edge's
// forwarding headers added), and the response's header is handed to the
// client's writer without copying: no request clone, no header maps built
// and thrown away. It answers what ReverseProxy answers (1xx, trailers,
// flushing of streamed bodies, errors through proxyError); requests it
// does not take, and endpoints whose agent speaks HTTP/2, go through
// ReverseProxy as before (proxyHandler.ServeHTTP makes the choice).

// direct says how the stream path writes a client's own request.
type direct struct {
	fwd    forwarding
	got1xx func(code int, h textproto.MIMEHeader)
	body   []byte // the whole request body, read before the request is sent
}

// maxDirectBody is the largest request body the direct path takes: it
// reads the body whole before it picks an agent, so that the request goes
// out in one write and can be sent again to another agent. Larger bodies
// stream through ReverseProxy.
const maxDirectBody = maxReplay

// canDirect reports whether r can be written as it is: a request without
// a body, or with a small one of known length, that asks for no upgrade
// and no 100-continue, with a query ReverseProxy would pass unchanged and
// a Host that needs no conversion.
func canDirect(r *http.Request) bool {
	if !onStreamPath(r) && !smallBody(r) {
		return false
	}
	return plainQuery(r.URL.RawQuery) && plainHost(r.Host) && r.Method != "CONNECT"
}

// smallBody reports whether r has a body of known length the direct path
// reads whole: at most maxDirectBody bytes, no upgrade, and no Expect
// (the upstream decides on 100-continue, not the edge).
func smallBody(r *http.Request) bool {
	return r.ContentLength > 0 && r.ContentLength <= maxDirectBody && len(r.TransferEncoding) == 0 &&
		r.Header["Expect"] == nil && r.Header.Get("Upgrade") == ""
}

// plainQuery reports whether ReverseProxy would forward the query as it is
// (it re-encodes one with ';', a bad escape, or more than 10,000
// parameters).
func plainQuery(q string) bool {
	if strings.Count(q, "&") >= 10000 {
		return false
	}
	for i := 0; i < len(q); i++ {
		switch q[i] {
		case ';':
			return false
		case '%':
			if i+2 >= len(q) || !isHex(q[i+1]) || !isHex(q[i+2]) {
				return false
			}
			i += 2
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// plainHost reports whether host goes out as it came: net/http converts
// a non-ASCII host to punycode and sends an invalid one as empty.
func plainHost(host string) bool {
	return host != "" && httpguts.ValidHostHeader(host)
}

// serveDirect proxies r over the direct stream path.
func (f *proxyHandler) serveDirect(rw *statusWriter, r *http.Request, info *requestInfo) {
	s := f.s
	d := &direct{fwd: s.forwardingOf(r)}
	if r.ContentLength > 0 {
		bp := directBodies.Get().(*[]byte)
		defer directBodies.Put(bp)
		d.body = (*bp)[:r.ContentLength]
		if n, err := io.ReadFull(r.Body, d.body); err != nil {
			info.err = err
			if r.Context().Err() != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
				rw.WriteHeader(statusClientClosed) // gone: nobody reads an answer
				return
			}
			writeError(rw, r, http.StatusBadRequest, info.endpoint,
				fmt.Sprintf("request body ended after %d of its %d bytes: %v", n, r.ContentLength, err))
			return
		}
	}
	d.got1xx = func(code int, h textproto.MIMEHeader) {
		dst := rw.Header()
		for k, vv := range h {
			dst[k] = vv
		}
		rw.WriteHeader(code)
		clear(dst)
	}
	resp, err := s.roundTrip(r, info, d)
	if err != nil {
		s.proxyError(rw, r, err)
		return
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body.Close()
		s.proxyError(rw, r, errors.New("upstream switched protocols on a request that did not ask to"))
		return
	}
	removeHopByHop(resp.Header)
	delete(resp.Header, "Alt-Svc") // the upstream's Alt-Svc names its own ports, not the edge's
	h := rw.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	rw.WriteHeader(resp.StatusCode)
	if err := copyBody(rw, resp); err != nil {
		resp.Body.Close()
		// As ReverseProxy does: the client must not take a cut body for a
		// whole one, so the server aborts the connection or stream.
		panic(http.ErrAbortHandler)
	}
	resp.Body.Close() // now, to read the trailers
	if len(resp.Trailer) > 0 {
		rw.Flush()
	}
	if len(resp.Trailer) == announced {
		for k, vv := range resp.Trailer {
			h[k] = vv
		}
		return
	}
	for k, vv := range resp.Trailer {
		for _, v := range vv {
			h.Add(http.TrailerPrefix+k, v)
		}
	}
}

// directBodies lends serveDirect the buffers it reads request bodies into.
var directBodies = sync.Pool{New: func() any { b := make([]byte, maxDirectBody); return &b }}

// copyBody copies resp's body to w, flushing after each write when the
// body is streamed (no length, or server-sent events), as ReverseProxy
// does.
func copyBody(w *statusWriter, resp *http.Response) error {
	flush := resp.ContentLength == -1
	if !flush {
		if ct := resp.Header["Content-Type"]; len(ct) > 0 && strings.HasPrefix(strings.ToLower(ct[0]), "text/event-stream") {
			mt, _, _ := mime.ParseMediaType(ct[0])
			flush = mt == "text/event-stream"
		}
	}
	if flush {
		w.Flush() // the header goes now, even if the body's first bytes take long
	}
	bp := proxyBufs.Get().(*[]byte)
	defer proxyBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if flush {
				w.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// hopHeaders are removed from requests and responses, with the headers a
// Connection header names (RFC 9110 7.6.1; ReverseProxy's list).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func isHopHeader(k string) bool {
	for _, h := range hopHeaders {
		if k == h {
			return true
		}
	}
	return false
}

// removeHopByHop removes the hop-by-hop headers of h.
func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// connectionListed reports whether the Connection header values conn name
// header k (canonical).
func connectionListed(conn []string, k string) bool {
	for _, f := range conn {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" && strings.EqualFold(sf, k) {
				return true
			}
		}
	}
	return false
}

// errBadHeader is a header the edge will not write to an upstream.
type errBadHeader struct{ name string }

func (e errBadHeader) Error() string {
	return "request header " + strconv.Quote(e.name) + " has an invalid name"
}

// writeHead writes req as an HTTP/1.1 request to an agent, the way
// http.Request.Write would: its head, since req has no body, or with d
// its head and d.body. With d, req is the client's own request: its
// hop-by-hop headers, Pico's X-Pico-* headers and its forwarding headers
// are left out and the edge's forwarding headers written instead (what
// rewrite does for ReverseProxy).
// Header values have their line breaks turned into spaces, as
// http.Request.Write does.
func writeHead(b *bytes.Buffer, req *http.Request, d *direct) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if d == nil && (req.Method == "CONNECT" || !plainHost(host)) {
		return req.Write(b) // net/http's rules for these (canDirect keeps them off the direct path)
	}
	b.WriteString(req.Method)
	b.WriteByte(' ')
	b.WriteString(req.URL.RequestURI())
	b.WriteString(" HTTP/1.1\r\nHost: ")
	b.WriteString(host)
	b.WriteString("\r\n")
	hdr := req.Header
	conn := hdr["Connection"]
	if ua := hdr["User-Agent"]; len(ua) > 0 && ua[0] != "" && (d == nil || !connectionListed(conn, "User-Agent")) {
		writeField(b, "User-Agent", ua[0])
	}
	switch {
	case d != nil && d.body != nil:
		b.WriteString("Content-Length: ")
		b.WriteString(strconv.Itoa(len(d.body)))
		b.WriteString("\r\n")
	case req.Method == "POST" || req.Method == "PUT" || req.Method == "PATCH":
		b.WriteString("Content-Length: 0\r\n") // what net/http sends for these without a body
	}
	for k, vv := range hdr {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if d != nil {
			if isHopHeader(k) || len(conn) > 0 && connectionListed(conn, k) || len(k) > 7 && strings.EqualFold(k[:7], "X-Pico-") {
				continue
			}
			switch k {
			case "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto":
				continue
			}
		}
		if !validFieldName(k) {
			return errBadHeader{k}
		}
		for _, v := range vv {
			writeField(b, k, v)
		}
	}
	if d != nil {
		if hasToken(hdr["Te"], "trailers") {
			b.WriteString("Te: trailers\r\n")
		}
		f := &d.fwd
		writeField(b, "X-Forwarded-For", f.xff)
		writeField(b, "X-Forwarded-Host", f.host)
		writeField(b, "X-Forwarded-Proto", f.proto)
		writeField(b, "Forwarded", f.forwarded)
	}
	b.WriteString("\r\n")
	if d != nil {
		b.Write(d.body)
	}
	return nil
}

// writeField writes one header line, its value trimmed and its line
// breaks made spaces.
func writeField(b *bytes.Buffer, k, v string) {
	b.WriteString(k)
	b.WriteString(": ")
	if strings.ContainsAny(v, "\r\n") {
		v = newlineToSpace.Replace(v)
	}
	v = textproto.TrimString(v)
	b.WriteString(v)
	b.WriteString("\r\n")
}

var newlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// validFieldName reports whether k is a token (RFC 9110 5.1).
func validFieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c >= 0x7f || c <= ' ' || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// hasToken reports whether a comma-separated header's values hold token
// (case-insensitive).
func hasToken(vv []string, token string) bool {
	for _, v := range vv {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(t), token) {
				return true
			}
		}
	}
	return false
}
