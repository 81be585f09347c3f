package frontdoor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// acmeALPN is the ALPN protocol of TLS-ALPN-01 challenges (RFC 8737).
const acmeALPN = "acme-tls/1"

// Limits per client connection (docs/limits.md).
const (
	maxClientStreams = 100              // concurrent HTTP/2 and HTTP/3 requests on one connection
	h3IdleTimeout    = 30 * time.Second // HTTP/3 connection idle
	altSvcMaxAge     = 24 * time.Hour   // how long a client may remember that HTTP/3 is there
)

// Config is what a Door serves and how. Zero durations and sizes are
// passed to net/http as they are (no limit): the edge fills them in.
type Config struct {
	Handler           http.Handler // every request of every door
	GetCertificate    func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	StatelessResetKey *quic.StatelessResetKey // HTTP/3's, may be nil
	// ACME makes the HTTPS door offer the ALPN protocol acme-tls/1 of
	// TLS-ALPN-01 challenges (RFC 8737: such a connection is closed after
	// its handshake) and give handshakes a minute instead of 10 s, for a
	// GetCertificate that obtains certificates on demand.
	ACME bool
	// VerifySourceAddress, if set, is HTTP/3's quic.Transport field of that
	// name: true makes a new connection prove its address with a Retry.
	VerifySourceAddress func(net.Addr) bool
	ReadHeaderTimeout   time.Duration
	IdleTimeout         time.Duration // of keep-alive connections
	MaxHeaderBytes      int
	Limits              Limits
	Log                 *slog.Logger
	// Passthrough serves a connection of the TLS passthrough door whose
	// ClientHello named host name sni: raw holds every byte read from c so
	// far. It runs in the connection's own goroutine and closes c. Needed
	// with Listeners.Passthrough.
	Passthrough func(c net.Conn, sni string, raw []byte)
	// PassthroughRefused, if set, is told each passthrough connection
	// refused before Passthrough: the reason ("no_sni", "malformed",
	// "incomplete") and why; the client was sent alert (0: none).
	PassthroughRefused func(c net.Conn, reason string, alert uint8, err error)
}

// Listeners are the sockets of the doors; Plain is required, the others may
// be nil. Start takes them over: Shutdown closes them.
type Listeners struct {
	Plain net.Listener   // HTTP/1.1 and h2c with prior knowledge
	TLS   net.Listener   // HTTPS: HTTP/1.1 and HTTP/2 over TLS
	H3    net.PacketConn // HTTP/3, usually on TLS's port number
	// Passthrough takes TLS connections routed by their SNI, never
	// terminated (passthrough.go); may be nil.
	Passthrough net.Listener
}

// Door is the front door of an edge node: the plain HTTP door (HTTP/1.1
// behind the request guard, and h2c), the HTTPS door (HTTP/1.1 behind the
// guard, HTTP/2) and HTTP/3 on UDP on the TLS door's port number, all
// serving one handler, with connection limits on the TCP doors. Create it
// with New, serve with Start, stop with Shutdown.
type Door struct {
	cfg    Config
	limits *connLimits

	plain      *http.Server
	plainLn    *stoppable     // the plain door's socket
	plainLimit *limitListener // its limits, and the connections it tells 429
	fresh      freshConns     // connections whose first request is not read yet
	tcp        *http.Server   // HTTPS; nil without a TLS listener
	tcpLn      net.Listener   // the TLS listener the accept loop reads
	hs         sync.WaitGroup // TLS handshakes under way
	h3         *http3.Server  // nil without an HTTP/3 listener
	tr         *quic.Transport
	ln         *quic.Listener
	ptLn       *stoppable     // the passthrough door's socket; nil without one
	pt         sync.WaitGroup // passthrough connections
}

// New makes a Door; it opens nothing.
func New(cfg Config) *Door {
	return &Door{cfg: cfg, limits: newConnLimits(cfg.Limits)}
}

// OpenConns is the number of client connections open on the TCP doors.
func (d *Door) OpenConns() int64 { return d.limits.open.Load() }

// Start serves lns in goroutines started by goFn (an errgroup's Go: each
// returns when its door is shut down, with an error only if its listener
// failed). It fails only before it starts anything; it then closes nothing.
func (d *Door) Start(lns Listeners, goFn func(func() error)) error {
	cfg := d.cfg
	handler := cfg.Handler
	if lns.Passthrough != nil && cfg.Passthrough == nil {
		return errors.New("frontdoor: a passthrough listener without Config.Passthrough")
	}
	if lns.H3 != nil {
		tr := &quic.Transport{Conn: lns.H3, StatelessResetKey: cfg.StatelessResetKey,
			VerifySourceAddress: cfg.VerifySourceAddress}
		tlsConf := http3.ConfigureTLSConfig(&tls.Config{
			MinVersion:             tls.VersionTLS13,
			GetCertificate:         cfg.GetCertificate,
			SessionTicketsDisabled: true, // no 0-RTT: nothing to resume
		})
		ln, err := tr.Listen(tlsConf, &quic.Config{
			HandshakeIdleTimeout: 5 * time.Second,
			MaxIdleTimeout:       h3IdleTimeout,
			MaxIncomingStreams:   maxClientStreams,
			Allow0RTT:            false, // 0-RTT requests are replayable
		})
		if err != nil {
			tr.Close()
			return fmt.Errorf("listen for HTTP/3 on %s: %w", lns.H3.LocalAddr(), err)
		}
		d.tr, d.ln = tr, ln
		d.h3 = &http3.Server{
			Handler:        cfg.Handler,
			MaxHeaderBytes: cfg.MaxHeaderBytes,
			IdleTimeout:    h3IdleTimeout,
			Logger:         cfg.Log.With("component", "http3"),
		}
		goFn(func() error {
			if err := d.h3.ServeListener(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, quic.ErrServerClosed) {
				return fmt.Errorf("serve HTTP/3 on %s: %w", lns.H3.LocalAddr(), err)
			}
			return nil
		})
		handler = altSvc(handler, lns.H3.LocalAddr())
	}
	maxHead := cfg.MaxHeaderBytes + 4096 // net/http's own allowance beyond MaxHeaderBytes
	if lns.TLS != nil {
		protocols := new(http.Protocols)
		protocols.SetHTTP1(true)
		protocols.SetHTTP2(true)
		d.tcp = &http.Server{
			Handler:           handler,
			ReadHeaderTimeout: cfg.ReadHeaderTimeout,
			IdleTimeout:       cfg.IdleTimeout,
			MaxHeaderBytes:    cfg.MaxHeaderBytes,
			Protocols:         protocols,
			HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxClientStreams},
			TLSConfig: &tls.Config{
				MinVersion:     tls.VersionTLS12,
				GetCertificate: cfg.GetCertificate,
				NextProtos:     []string{"h2", "http/1.1"},
			},
			ConnContext: guardConnContext,
			ConnState:   d.fresh.track,
			ErrorLog:    ErrorLog(cfg.Log),
		}
		if cfg.ACME {
			d.tcp.TLSConfig.NextProtos = append(d.tcp.TLSConfig.NextProtos, acmeALPN)
		}
		conns := newChanListener(lns.TLS.Addr())
		d.tcpLn = tls.NewListener(&limitListener{Listener: lns.TLS, l: d.limits}, d.tcp.TLSConfig)
		goFn(func() error {
			if err := d.tcp.Serve(conns); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve HTTPS on %s: %w", lns.TLS.Addr(), err)
			}
			return nil
		})
		goFn(func() error {
			d.acceptTLS(conns, maxHead)
			return nil
		})
	}
	plain := new(http.Protocols)
	plain.SetHTTP1(true)
	plain.SetUnencryptedHTTP2(true) // h2c with prior knowledge, e.g. gRPC behind a TLS-terminating balancer
	d.plain = &http.Server{
		Handler:           cfg.Handler,
		Protocols:         plain,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxClientStreams},
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ConnState:         d.fresh.track,
		ErrorLog:          ErrorLog(cfg.Log),
	}
	if lns.Passthrough != nil {
		d.ptLn = newStoppable(lns.Passthrough)
		ln := &limitListener{Listener: d.ptLn, l: d.limits}
		goFn(func() error {
			d.acceptPassthrough(ln)
			return nil
		})
	}
	d.plainLn = newStoppable(lns.Plain)
	headTimeout := cfg.ReadHeaderTimeout
	if headTimeout <= 0 {
		headTimeout = 10 * time.Second // a refused client gets no unbounded wait
	}
	d.plainLimit = &limitListener{Listener: d.plainLn, l: d.limits, tell429: true, headTimeout: headTimeout, maxHead: maxHead}
	plainLn := guardListener{d.plainLimit, maxHead}
	goFn(func() error {
		if err := d.plain.Serve(plainLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve proxy on %s: %w", lns.Plain.Addr(), err)
		}
		return nil
	})
	return nil
}

// acceptTLS completes TLS handshakes and hands each connection to the
// HTTPS server: HTTP/2 as it is, HTTP/1.1 behind the request guard. It
// returns when the TLS listener closes.
func (d *Door) acceptTLS(conns *chanListener, maxHead int) {
	defer d.hs.Wait()
	for {
		c, err := d.tcpLn.Accept()
		if err != nil {
			return
		}
		d.fresh.add(1) // until the HTTPS server has it
		d.hs.Go(func() {
			defer d.fresh.add(-1)
			tc := c.(*tls.Conn)
			handshake := 10 * time.Second
			if d.cfg.ACME {
				handshake = time.Minute
			}
			tc.SetDeadline(time.Now().Add(handshake))
			if err := tc.Handshake(); err != nil {
				tc.Close()
				return
			}
			tc.SetDeadline(time.Time{})
			st := tc.ConnectionState()
			if st.NegotiatedProtocol == acmeALPN {
				tc.Close() // the CA has seen the challenge certificate
				return
			}
			if st.NegotiatedProtocol == "h2" {
				conns.push(tc)
				return
			}
			conns.push(newGuardConn(tc, maxHead, &st))
		})
	}
}

// Shutdown stops taking connections and waits for the requests in flight
// on every door until ctx ends, then closes every connection and listener.
// It is safe before Start (it then does nothing) and more than once.
//
// First the TCP doors stop accepting (a balancer's next connection is
// refused and goes to another node), and the connections accepted just
// before get up to a second to send their first request: net/http's
// Shutdown closes, unanswered, a connection whose request it reads after
// it began.
func (d *Door) Shutdown(ctx context.Context) {
	if d.plainLn != nil {
		d.plainLn.stop()
		d.plainLimit.stopRefusing()
	}
	if d.tcpLn != nil {
		d.tcpLn.Close() // acceptTLS returns
	}
	if d.ptLn != nil {
		// acceptPassthrough returns once its connections have: they are
		// long-lived streams, which the edge drains after the doors.
		d.ptLn.Close()
	}
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	d.fresh.wait(wctx)
	cancel()
	var wg sync.WaitGroup
	if d.tcp != nil || d.h3 != nil {
		wg.Go(func() { // HTTPS and HTTP/3 drain alongside HTTP
			d.shutdownTLS(ctx)
		})
	}
	if d.plain != nil {
		d.plain.Shutdown(ctx) // waits for requests in flight until ctx ends
		d.plain.Close()
	}
	wg.Wait()
}

func (d *Door) shutdownTLS(ctx context.Context) {
	if d.tcp != nil {
		d.tcp.Shutdown(ctx)
		d.tcp.Close()
	}
	if d.h3 != nil {
		d.h3.Shutdown(ctx)
		d.h3.Close()
		d.ln.Close()
		d.tr.Close()
		d.tr.Conn.Close()
	}
}

// ErrorLog adapts net/http's ErrorLog to log, at debug level: what it
// reports (a client's TLS handshake error, a bad request line) is the
// client's business, not the operator's.
func ErrorLog(log *slog.Logger) *stdlog.Logger {
	return stdlog.New(slogWriter{log, slog.LevelDebug}, "", 0)
}

// slogWriter adapts a *log.Logger's output to slog.
type slogWriter struct {
	log   *slog.Logger
	level slog.Level
}

func (w slogWriter) Write(p []byte) (int, error) {
	msg := string(p)
	if n := len(msg); n > 0 && msg[n-1] == '\n' {
		msg = msg[:n-1]
	}
	w.log.Log(context.Background(), w.level, msg)
	return len(p), nil
}

// altSvc advertises HTTP/3 on the UDP port of addr to clients of the TCP
// front door.
func altSvc(h http.Handler, addr net.Addr) http.Handler {
	_, port, _ := net.SplitHostPort(addr.String())
	value := `h3=":` + port + `"; ma=` + strconv.Itoa(int(altSvcMaxAge.Seconds()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Alt-Svc", value)
		h.ServeHTTP(w, r)
	})
}

// stoppable is a listener whose stop closes its socket, so that new
// connections are refused, while Accept waits on until Close: the server
// serving it sees no error before its Shutdown closes it.
type stoppable struct {
	net.Listener
	stopped, closed     chan struct{}
	stopOnce, closeOnce sync.Once
}

func newStoppable(ln net.Listener) *stoppable {
	return &stoppable{Listener: ln, stopped: make(chan struct{}), closed: make(chan struct{})}
}

func (l *stoppable) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		select {
		case <-l.stopped:
			<-l.closed
			return nil, net.ErrClosed
		default:
		}
	}
	return c, err
}

func (l *stoppable) stop() { l.stopOnce.Do(func() { close(l.stopped); l.Listener.Close() }) }

func (l *stoppable) Close() error {
	l.stop()
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

// freshConns counts the client connections whose first request net/http
// has not read yet (and TLS handshakes under way), and tells when none is
// left.
type freshConns struct {
	mu    sync.Mutex // guards the fields below
	n     int
	conns map[net.Conn]bool
	zero  chan struct{} // closed when n drops to 0; made by wait
}

func (f *freshConns) add(d int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n += d
	if f.n == 0 && f.zero != nil {
		close(f.zero)
		f.zero = nil
	}
}

// track is an http.Server's ConnState: a connection is fresh from StateNew
// to its next state.
func (f *freshConns) track(c net.Conn, st http.ConnState) {
	f.mu.Lock()
	if f.conns == nil {
		f.conns = make(map[net.Conn]bool)
	}
	was := f.conns[c]
	switch {
	case st == http.StateNew:
		f.conns[c] = true
	case was:
		delete(f.conns, c)
	}
	f.mu.Unlock()
	switch {
	case st == http.StateNew:
		f.add(1)
	case was:
		f.add(-1)
	}
}

// wait returns once no connection is fresh, or ctx ends.
func (f *freshConns) wait(ctx context.Context) {
	f.mu.Lock()
	if f.n == 0 {
		f.mu.Unlock()
		return
	}
	if f.zero == nil {
		f.zero = make(chan struct{})
	}
	ch := f.zero
	f.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
}
