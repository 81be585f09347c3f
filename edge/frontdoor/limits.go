package frontdoor

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Limits bound the client connections of the TCP doors (docs/limits.md).
// A connection over a limit is closed at once; on the plain HTTP door it
// is first told 429 Too Many Requests when its address opens too many.
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
	tell429 bool // plain HTTP: say why before closing
}

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
			if ln.tell429 && reason == "source" {
				c.SetWriteDeadline(time.Now().Add(time.Second))
				c.Write(tooManyConns)
			}
			c.Close()
			continue
		}
		ln.open.Add(1)
		ln.l.open.Add(1)
		return &limitConn{Conn: c, ln: ln}, nil
	}
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
