package frontdoor

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RejectHeader carries, from the HTTP/1.1 guard to the front door, the
// status and reason ("400 why") a request must be refused with. The guard
// strips it from what clients send.
const RejectHeader = "X-Pico-Reject"

// guardConn reads HTTP/1.1 requests one step ahead of net/http so that it
// can refuse what net/http would let through: a request with both
// Transfer-Encoding and Content-Length (a request-smuggling vector, which
// net/http resolves by dropping the length). Each request head is read
// whole before net/http sees a byte of it; a refused head is replaced by a
// bodiless request carrying the reason in X-Pico-Reject and "Connection:
// close", and the connection ends after it. Bodies pass through by their
// framing (Content-Length or chunked) so that the next head is found.
// Anything the guard does not follow (HTTP/2 preface, upgrades, CONNECT,
// HTTP/1.0, malformed framing) switches it to plain pass-through: net/http
// then applies its own rules.
type guardConn struct {
	net.Conn
	br       *bufio.Reader
	tlsState *tls.ConnectionState // of the TLS connection under it, if any
	maxHead  int

	out     []byte // bytes ready for net/http
	state   guardState
	left    int64  // bytes of body or chunk data still to pass
	partial []byte // a head or chunk line read in part (a read deadline fired)
	scratch []byte // the last head's buffer, reused for the next one
}

type guardState int

const (
	guardHead      guardState = iota // expecting a request head
	guardBody                        // passing left bytes of a Content-Length body
	guardChunkLine                   // expecting a chunk-size line
	guardChunkData                   // passing left bytes of chunk data and its CRLF
	guardTrailer                     // expecting trailer lines up to an empty one
	guardPass                        // passing everything through
	guardEnd                         // a refused request was handed over: EOF
)

func newGuardConn(c net.Conn, maxHead int, st *tls.ConnectionState) *guardConn {
	return &guardConn{Conn: c, br: bufio.NewReaderSize(c, 4096), maxHead: maxHead, tlsState: st}
}

func (g *guardConn) Read(p []byte) (int, error) {
	for len(g.out) == 0 {
		switch g.state {
		case guardEnd:
			return 0, errGuardEnd
		case guardPass:
			return g.br.Read(p)
		case guardBody, guardChunkData:
			n, err := g.br.Read(p[:min(int64(len(p)), g.left)])
			g.left -= int64(n)
			if g.left == 0 {
				if g.state == guardBody {
					g.state = guardHead
				} else {
					g.state = guardChunkLine
				}
			}
			return n, err
		}
		if err := g.step(); err != nil {
			return 0, err
		}
	}
	n := copy(p, g.out)
	g.out = g.out[n:]
	return n, nil
}

var errGuardEnd = &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed}

// Close closes the connection. After a refused request (a head over the
// limit, say) the client may still be sending: closing with its bytes
// unread would reset the connection, and the reset can destroy the refusal
// before the client reads it. So the connection first says EOF and reads
// what comes, for refuseLinger or refuseDrain bytes at most, as RFC 9112
// section 9.6 advises.
func (g *guardConn) Close() error {
	if g.state == guardEnd {
		if cw := closeWriter(g.Conn); cw != nil && cw.CloseWrite() == nil {
			g.Conn.SetReadDeadline(time.Now().Add(refuseLinger))
			io.CopyN(io.Discard, g.Conn, refuseDrain)
		}
	}
	return g.Conn.Close()
}

// closeWriter finds the connection under c's wrappers (limitConn) that
// can send EOF: the TCP connection, or the TLS one.
func closeWriter(c net.Conn) interface{ CloseWrite() error } {
	for {
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			return cw
		}
		u, ok := c.(interface{ Unwrap() net.Conn })
		if !ok {
			return nil
		}
		c = u.Unwrap()
	}
}

// How long, and how many bytes, a refused connection is read before it
// closes.
const (
	refuseLinger = 500 * time.Millisecond
	refuseDrain  = 1 << 20
)

// step reads one head or line and decides what follows.
func (g *guardConn) step() error {
	switch g.state {
	case guardHead:
		head, err := g.readUntil(func(b []byte) bool {
			return bytes.HasSuffix(b, []byte("\r\n\r\n")) || bytes.HasSuffix(b, []byte("\n\n"))
		}, g.maxHead)
		if err == errTooLong {
			// Refused here, so that the client reads a 431 instead of a
			// reset while it is still sending its header.
			g.out = g.refuse(head, http.StatusRequestHeaderFieldsTooLarge,
				"request header of more than "+strconv.Itoa(g.maxHead-4096)+" bytes")
			return nil
		}
		if err != nil {
			return err
		}
		g.out = g.checkHead(head)
	case guardChunkLine:
		line, err := g.readUntil(func(b []byte) bool { return bytes.HasSuffix(b, []byte("\n")) }, maxChunkLine)
		if err == errTooLong {
			return &BodyError{Status: http.StatusBadRequest, Reason: ChunkLineTooLong}
		}
		if err != nil {
			return err
		}
		g.out = line
		size := strings.TrimSpace(string(line))
		if i := strings.IndexByte(size, ';'); i >= 0 {
			size = size[:i]
		}
		n, perr := strconv.ParseInt(strings.TrimSpace(size), 16, 64)
		switch {
		case perr != nil || n < 0:
			g.state = guardPass // net/http refuses the body
		case n == 0:
			g.state = guardTrailer
		default:
			g.state, g.left = guardChunkData, n+2 // the data and its CRLF
		}
	case guardTrailer:
		line, err := g.readUntil(func(b []byte) bool { return bytes.HasSuffix(b, []byte("\n")) }, maxChunkLine)
		if err == errTooLong {
			return &BodyError{Status: http.StatusBadRequest,
				Reason: "a trailer line of more than " + strconv.Itoa(maxChunkLine) + " bytes"}
		}
		if err != nil {
			return err
		}
		g.out = line
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			g.state = guardHead
		}
	}
	return nil
}

// readUntil reads until done says the bytes so far are complete, or max
// bytes: then it hands over what it has and passes everything after.
func (g *guardConn) readUntil(done func([]byte) bool, max int) ([]byte, error) {
	if g.partial == nil {
		// What readUntil returned last was handed over in full before this
		// call (Read steps only once g.out is empty): reuse its buffer.
		g.partial, g.scratch = g.scratch[:0], nil
	}
	for {
		b, err := g.br.ReadSlice('\n')
		g.partial = append(g.partial, b...)
		if err != nil && err != bufio.ErrBufferFull {
			if len(g.partial) > 0 && errors.Is(err, io.EOF) {
				out := g.partial
				g.partial, g.state = nil, guardPass
				return out, nil
			}
			return nil, err
		}
		if done(g.partial) || len(g.partial) > max {
			out := g.partial
			g.partial = nil
			if cap(out) <= 8<<10 {
				g.scratch = out[:0]
			}
			if !done(out) {
				return out, errTooLong
			}
			return out, nil
		}
	}
}

// checkHead inspects a complete request head and returns the bytes to
// hand to net/http, setting what follows it.
func (g *guardConn) checkHead(head []byte) []byte {
	if g.state == guardPass || g.checkHeadFast(head) {
		return head
	}
	return g.checkHeadSlow(head)
}

// checkHeadSlow is checkHead for any head: it drops the guard's own
// header, normalizes line ends and refuses what must be refused.
func (g *guardConn) checkHeadSlow(head []byte) []byte {
	lines := strings.Split(strings.TrimRight(string(head), "\r\n"), "\n")
	reqLine := strings.TrimRight(lines[0], "\r")
	if strings.HasPrefix(reqLine, "PRI * HTTP/2.0") || strings.HasPrefix(reqLine, "CONNECT ") || !strings.HasSuffix(reqLine, " HTTP/1.1") {
		if strings.HasSuffix(reqLine, " HTTP/1.0") && bothFramings(lines[1:]) {
			// net/http would take the length and ignore the coding; a
			// proxy in front might do the opposite.
			return g.refuse(head, http.StatusBadRequest, "the request has both Transfer-Encoding and Content-Length")
		}
		g.state = guardPass
		return head
	}
	var te, cl, upgrade bool
	chunked := false
	var length int64 = -1
	kept := make([]string, 0, len(lines))
	for _, l := range lines[1:] {
		l = strings.TrimRight(l, "\r")
		if l != "" && (l[0] == ' ' || l[0] == '\t') {
			// RFC 9112 5.2: reject obs-fold rather than guess where the
			// field ends (net/http would fold it, other servers not).
			return g.refuse(head, http.StatusBadRequest, "obsolete line folding (a header line starting with a space or tab)")
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok {
			g.state = guardPass // malformed: net/http refuses it
			return head
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(name) {
		case "transfer-encoding":
			te = true
			chunked = strings.HasSuffix(strings.ToLower(value), "chunked")
		case "content-length":
			cl = true
			if n, err := strconv.ParseInt(value, 10, 64); err == nil && n >= 0 {
				length = n
			}
		case "upgrade":
			upgrade = true
		case strings.ToLower(RejectHeader):
			continue // only the guard says that
		}
		kept = append(kept, l)
	}
	switch {
	case te && cl:
		return g.refuse(head, http.StatusBadRequest, "the request has both Transfer-Encoding and Content-Length")
	case upgrade:
		g.state = guardPass
	case te && chunked:
		g.state = guardChunkLine
	case te:
		g.state = guardPass // net/http refuses other codings
	case cl && length < 0:
		g.state = guardPass // net/http refuses a bad length
	case length > 0:
		g.state, g.left = guardBody, length
	}
	return []byte(strings.Join(append([]string{reqLine}, kept...), "\r\n") + "\r\n\r\n")
}

// bothFramings reports whether header lines name both Transfer-Encoding
// and Content-Length.
func bothFramings(lines []string) bool {
	var te, cl bool
	for _, l := range lines {
		name, _, _ := strings.Cut(l, ":")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "transfer-encoding":
			te = true
		case "content-length":
			cl = true
		}
	}
	return te && cl
}

// checkHeadFast checks the common head without allocating: CRLF line ends
// only, no Transfer-Encoding, Upgrade, obs-fold or the guard's own header,
// at most one valid Content-Length. For such a head checkHead would hand
// over the same bytes; it reports false for any other, which checkHead
// then rewrites or refuses.
func (g *guardConn) checkHeadFast(head []byte) bool {
	i := bytes.IndexByte(head, '\n')
	if i < 1 || head[i-1] != '\r' {
		return false
	}
	reqLine := head[:i-1]
	if !bytes.HasSuffix(reqLine, []byte(" HTTP/1.1")) || bytes.HasPrefix(reqLine, []byte("CONNECT ")) ||
		bytes.IndexByte(reqLine, '\r') >= 0 {
		return false
	}
	rest := head[i+1:]
	var length int64 = -1
	for {
		j := bytes.IndexByte(rest, '\n')
		if j < 1 || rest[j-1] != '\r' {
			return false
		}
		line := rest[:j-1]
		rest = rest[j+1:]
		if len(line) == 0 {
			if len(rest) != 0 {
				return false
			}
			break
		}
		if line[0] == ' ' || line[0] == '\t' || bytes.IndexByte(line, '\r') >= 0 {
			return false
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return false
		}
		switch {
		case asciiEqualFold(name, "Content-Length"):
			n, ok := parseLength(bytes.TrimSpace(value))
			if !ok || length >= 0 {
				return false
			}
			length = n
		case asciiEqualFold(name, "Transfer-Encoding"), asciiEqualFold(name, "Upgrade"), asciiEqualFold(name, RejectHeader):
			return false
		}
	}
	if length > 0 {
		g.state, g.left = guardBody, length
	}
	return true
}

// asciiEqualFold is strings.EqualFold for an ASCII s, without converting b.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// parseLength parses 1 to 18 decimal digits.
func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

var errTooLong = errors.New("edge: request head too long")

// maxChunkLine bounds a chunk-size line (with its extensions) and a
// trailer line of a chunked request body.
const maxChunkLine = 4096

// ChunkLineTooLong is the reason a request whose chunk-size line is over
// maxChunkLine is refused with: by the guard, or by net/http's chunked
// reader (http.ErrLineTooLong, the same limit), which can see such a line
// before the guard has read all of it.
const ChunkLineTooLong = "a chunk-size line (with its extensions) of more than 4096 bytes"

// BodyError is what reading a request body returns when the guard
// refuses the body's framing mid-way (a chunk line over maxChunkLine):
// the handler should answer Status with Reason, if it can still answer.
type BodyError struct {
	Status int
	Reason string
}

func (e *BodyError) Error() string { return "request body refused: " + e.Reason }

// refuse returns a bodiless request in place of head that makes the front
// door answer status with reason, and ends the connection after it.
func (g *guardConn) refuse(head []byte, status int, reason string) []byte {
	reqLine, rest, _ := strings.Cut(string(head), "\n")
	reqLine = strings.TrimRight(reqLine, "\r")
	m, target, ok := strings.Cut(reqLine, " ")
	target, _, _ = strings.Cut(target, " ")
	if !ok || m == "" || !strings.HasPrefix(target, "/") {
		reqLine = "GET / HTTP/1.1"
	} else {
		reqLine = m + " " + target + " HTTP/1.1"
	}
	host := "unknown.invalid"
	for _, l := range strings.Split(rest, "\n") {
		if name, value, ok := strings.Cut(strings.TrimRight(l, "\r"), ":"); ok && strings.EqualFold(name, "host") {
			if v := strings.TrimSpace(value); v != "" && !strings.ContainsAny(v, " \t") {
				host = v
			}
			break
		}
	}
	g.state = guardEnd
	return []byte(reqLine + "\r\nHost: " + host + "\r\n" + RejectHeader + ": " + strconv.Itoa(status) + " " + reason +
		"\r\nConnection: close\r\n\r\n")
}

// guardListener wraps the plain HTTP/1.1 listener's connections in guardConn.
type guardListener struct {
	net.Listener
	maxHead int
}

func (l guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newGuardConn(c, l.maxHead, nil), nil
}

type tlsStateKey struct{}

// guardConnContext lets the handler see that a guarded connection came
// over TLS (net/http sets Request.TLS only for a *tls.Conn): see TLSState.
func guardConnContext(ctx context.Context, c net.Conn) context.Context {
	if g, ok := c.(*guardConn); ok && g.tlsState != nil {
		return context.WithValue(ctx, tlsStateKey{}, g.tlsState)
	}
	return ctx
}

// TLSState returns the TLS connection state of an HTTP/1.1 request that
// came through the TLS door behind the guard (net/http leaves Request.TLS
// nil for it), or nil.
func TLSState(r *http.Request) *tls.ConnectionState {
	if r.TLS != nil {
		return r.TLS
	}
	st, _ := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState)
	return st
}

// chanListener is a net.Listener fed by the TLS accept loop.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// push hands c to Accept, or closes it once the listener is closed.
func (l *chanListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
