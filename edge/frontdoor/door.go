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
	// VerifySourceAddress, if set, is HTTP/3's quic.Transport field of that
	// name: true makes a new connection prove its address with a Retry.
	VerifySourceAddress func(net.Addr) bool
	ReadHeaderTimeout   time.Duration
	IdleTimeout         time.Duration // of keep-alive connections
	MaxHeaderBytes      int
	Limits              Limits
	Log                 *slog.Logger
}

// Listeners are the sockets of the doors; Plain is required, the others may
// be nil. Start takes them over: Shutdown closes them.
type Listeners struct {
	Plain net.Listener   // HTTP/1.1 and h2c with prior knowledge
	TLS   net.Listener   // HTTPS: HTTP/1.1 and HTTP/2 over TLS
	H3    net.PacketConn // HTTP/3, usually on TLS's port number
}

// Door is the front door of an edge node: the plain HTTP door (HTTP/1.1
// behind the request guard, and h2c), the HTTPS door (HTTP/1.1 behind the
// guard, HTTP/2) and HTTP/3 on UDP on the TLS door's port number, all
// serving one handler, with connection limits on the TCP doors. Create it
// with New, serve with Start, stop with Shutdown.
type Door struct {
	cfg    Config
	limits *connLimits

	plain *http.Server
	tcp   *http.Server   // HTTPS; nil without a TLS listener
	tcpLn net.Listener   // the TLS listener the accept loop reads
	hs    sync.WaitGroup // TLS handshakes under way
	h3    *http3.Server  // nil without an HTTP/3 listener
	tr    *quic.Transport
	ln    *quic.Listener
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
			ErrorLog:    ErrorLog(cfg.Log),
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
		ErrorLog:          ErrorLog(cfg.Log),
	}
	plainLn := guardListener{&limitListener{Listener: lns.Plain, l: d.limits, tell429: true}, maxHead}
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
		d.hs.Go(func() {
			tc := c.(*tls.Conn)
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tc.Handshake(); err != nil {
				tc.Close()
				return
			}
			tc.SetDeadline(time.Time{})
			st := tc.ConnectionState()
			if st.NegotiatedProtocol == "h2" {
				conns.push(tc)
				return
			}
			conns.push(newGuardConn(tc, maxHead, &st))
		})
	}
}

// StopKeepAlives makes every HTTP/1.1 response from now on close its
// connection (Connection: close), so that clients and balancers open new
// connections, which go elsewhere once the node's readiness fails, rather
// than send their next request on a connection that Shutdown will close.
// A draining node calls it when the drain begins.
func (d *Door) StopKeepAlives() {
	for _, srv := range []*http.Server{d.plain, d.tcp} {
		if srv != nil {
			srv.SetKeepAlivesEnabled(false)
		}
	}
}

// Shutdown stops taking connections and waits for the requests in flight
// on every door until ctx ends, then closes every connection and listener.
// It is safe before Start (it then does nothing) and more than once.
func (d *Door) Shutdown(ctx context.Context) {
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
		d.tcpLn.Close() // no new connections; acceptTLS returns
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
