package frontdoor

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Limits bound the client connections of the TCP doors (docs/limits.md).
// A connection over a limit is closed at once; on the plain HTTP door it
// is first told 429 Too Many Requests when its address opens too many,
// once its request head is read (refuse429).
type Limits struct {
	PerListener int     // open connections on one listener; 0: none allowed
	Global      int     // open connections on all of them; 0: none allowed
	PerIP       float64 // new connections a second from one IP (burst 2×); 0 or less: no limit
	// Exempt, if set, says which sources PerIP does not apply to (trusted
	// proxies: many clients behind one address).
	Exempt func(netip.Addr) bool
	// Refused, if set, is told each refusal: "listener", "global" or
	// "source".
	Refused func(reason string)
}

func newConnLimits(l Limits) *connLimits {
	refused := l.Refused
	if refused == nil {
		refused = func(string) {}
	}
	return &connLimits{perListener: int64(l.PerListener), global: int64(l.Global),
		perIP: rate.Limit(l.PerIP), exempt: l.Exempt, refused: refused}
}

// connLimits applies Limits: it counts the connections open on every
// listener and the recent new ones of each source.
type connLimits struct {
	perListener int64
	global      int64
	open        atomic.Int64 // on every listener
	perIP       rate.Limit
	exempt      func(netip.Addr) bool // trusted proxies: many clients behind one address
	refused     func(reason string)

	mu      sync.Mutex // guards sources
	sources map[netip.Addr]*sourceRate
	swept   time.Time
}

type sourceRate struct {
	lim  *rate.Limiter
	seen time.Time
}

// allowSource reports whether ip may open one more connection now.
func (l *connLimits) allowSource(ip netip.Addr, now time.Time) bool {
	if l.perIP <= 0 || l.exempt != nil && l.exempt(ip) {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sources == nil {
		l.sources = make(map[netip.Addr]*sourceRate)
	}
	// Forget sources quiet for a minute, at most once every 10 s: the map
	// holds only addresses seen recently.
	if now.Sub(l.swept) > 10*time.Second {
		for a, s := range l.sources {
			if now.Sub(s.seen) > time.Minute {
				delete(l.sources, a)
			}
		}
		l.swept = now
	}
	s := l.sources[ip]
	if s == nil {
		s = &sourceRate{lim: rate.NewLimiter(l.perIP, 2*int(l.perIP)+1)}
		l.sources[ip] = s
	}
	s.seen = now
	return s.lim.AllowN(now, 1)
}

// limitListener applies connLimits to one listener.
type limitListener struct {
	net.Listener
	l       *connLimits
	open    atomic.Int64
	tell429 bool // plain HTTP: say why before closing (refuse429)

	// Of refuse429, when tell429 is set:
	headTimeout time.Duration // the time a client has to send its head
	maxHead     int           // the longest head read before the 429
	refusing    sync.WaitGroup
	mu          sync.Mutex // guards the fields below
	refused     map[net.Conn]bool
	stopped     bool // stopRefusing ran: refuse no more
}

// maxRefusing bounds the connections told 429 at once, each for up to
// headTimeout plus refuseLinger; beyond it a refused connection is closed
// at once, unanswered.
const maxRefusing = 256

func (ln *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		reason := ""
		switch {
		case ln.open.Load() >= ln.l.perListener:
			reason = "listener"
		case ln.l.open.Load() >= ln.l.global:
			reason = "global"
		default:
			if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil && !ln.l.allowSource(ap.Addr().Unmap(), time.Now()) {
				reason = "source"
			}
		}
		if reason != "" {
			ln.l.refused(reason)
			if !ln.tell429 || reason != "source" || !ln.startRefusal(c) {
				c.Close()
			}
			continue
		}
		ln.open.Add(1)
		ln.l.open.Add(1)
		return &limitConn{Conn: c, ln: ln}, nil
	}
}

// startRefusal has refuse429 answer c in a goroutine of its own, unless
// maxRefusing are being answered or the door is shutting down.
func (ln *limitListener) startRefusal(c net.Conn) bool {
	ln.mu.Lock()
	defer ln.mu.Unlock()
	if ln.stopped || len(ln.refused) >= maxRefusing {
		return false
	}
	if ln.refused == nil {
		ln.refused = make(map[net.Conn]bool)
	}
	ln.refused[c] = true
	ln.refusing.Go(func() {
		ln.refuse429(c)
		ln.mu.Lock()
		delete(ln.refused, c)
		ln.mu.Unlock()
	})
	return true
}

// refuse429 tells c 429 Too Many Requests once it has read the request
// head, so that the answer is one to the request: written before, it
// reaches a client that has not sent yet, which may take it for a stray
// answer on an idle connection (Go's "Unsolicited response received on
// idle HTTP channel") and retry or fail. The head is read for up to
// headTimeout and maxHead bytes (then the 429 goes out all the same); a
// client that sends nothing in that time, or closes, gets no answer, as
// net/http does. Then c says EOF and is drained for a moment before it
// closes, as the guard's refusals are (guardConn.Close): closed with the
// client's bytes unread, it would reset, and the reset can destroy the 429.
func (ln *limitListener) refuse429(c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(ln.headTimeout))
	if !readHead(c, ln.maxHead) {
		return
	}
	c.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := c.Write(tooManyConns); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		c.SetReadDeadline(time.Now().Add(refuseLinger))
		io.CopyN(io.Discard, c, refuseDrain)
	}
}

// readHead reads from c to the end of a request head (an empty line) or
// limit bytes, whichever comes first, and reports whether it got either.
func readHead(c net.Conn, limit int) bool {
	buf := make([]byte, 4096)
	var tail []byte // the last 3 bytes read: an empty line may span reads
	read := 0
	for read < limit {
		n, err := c.Read(buf[:min(len(buf), limit-read)])
		if n > 0 {
			read += n
			b := append(tail, buf[:n]...)
			if bytes.Contains(b, []byte("\r\n\r\n")) || bytes.Contains(b, []byte("\n\n")) {
				return true
			}
			tail = append([]byte(nil), b[max(0, len(b)-3):]...)
		}
		if err != nil {
			return false
		}
	}
	return true
}

// stopRefusing closes the connections being told 429 and waits for their
// goroutines; connections refused later are closed at once.
func (ln *limitListener) stopRefusing() {
	ln.mu.Lock()
	ln.stopped = true
	for c := range ln.refused {
		c.Close()
	}
	ln.mu.Unlock()
	ln.refusing.Wait()
}

var tooManyConns = func() []byte {
	body := "too many new connections from your address; retry in a moment\n"
	return fmt.Appendf(nil, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n"+
		"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}()

// limitConn gives its place back once, when closed.
type limitConn struct {
	net.Conn
	ln   *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	c.once.Do(func() {
		c.ln.open.Add(-1)
		c.ln.l.open.Add(-1)
	})
	return c.Conn.Close()
}

// Unwrap lets the TLS door and the guard reach the TCP connection.
func (c *limitConn) Unwrap() net.Conn { return c.Conn }
