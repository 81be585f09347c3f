package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Front-door limits per client connection (LIMITS.md).
const (
	maxClientStreams = 100              // concurrent HTTP/2 and HTTP/3 requests on one connection
	h3IdleTimeout    = 30 * time.Second // HTTP/3 connection idle
	altSvcMaxAge     = 24 * time.Hour   // how long a client may remember that HTTP/3 is there
)

// tlsDoor is the HTTPS front door: HTTP/1.1 and HTTP/2 over TLS on TCP, and
// HTTP/3 on UDP on the same port number, all served by the same handler.
type tlsDoor struct {
	tcp   *http.Server
	tcpLn net.Listener   // the TLS listener the accept loop reads
	hs    sync.WaitGroup // TLS handshakes under way
	h3    *http3.Server
	tr    *quic.Transport // HTTP/3's UDP socket
	ln    *quic.Listener
}

// startTLSDoor serves the TLS front door on the listeners given (either may
// be nil) in g's goroutines.
func (s *Server) startTLSDoor(lns Listeners, goFn func(func() error)) (*tlsDoor, error) {
	d := &tlsDoor{}
	handler := s.proxy
	if lns.H3 != nil {
		tr := &quic.Transport{Conn: lns.H3, StatelessResetKey: s.cfg.StatelessResetKey}
		tlsConf := http3.ConfigureTLSConfig(&tls.Config{
			MinVersion:             tls.VersionTLS13,
			GetCertificate:         s.cfg.GetCertificate,
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
			return nil, fmt.Errorf("listen for HTTP/3 on %s: %w", lns.H3.LocalAddr(), err)
		}
		d.tr, d.ln = tr, ln
		d.h3 = &http3.Server{
			Handler:        s.proxy,
			MaxHeaderBytes: s.cfg.MaxHeaderBytes,
			IdleTimeout:    h3IdleTimeout,
			Logger:         s.log.With("component", "http3"),
		}
		goFn(func() error {
			if err := d.h3.ServeListener(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, quic.ErrServerClosed) {
				return fmt.Errorf("serve HTTP/3 on %s: %w", lns.H3.LocalAddr(), err)
			}
			return nil
		})
		handler = altSvc(handler, lns.H3.LocalAddr())
	}
	if lns.TLS != nil {
		protocols := new(http.Protocols)
		protocols.SetHTTP1(true)
		protocols.SetHTTP2(true)
		d.tcp = &http.Server{
			Handler:           handler,
			ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
			IdleTimeout:       s.cfg.IdleTimeout,
			MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
			Protocols:         protocols,
			HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxClientStreams},
			TLSConfig: &tls.Config{
				MinVersion:     tls.VersionTLS12,
				GetCertificate: s.cfg.GetCertificate,
				NextProtos:     []string{"h2", "http/1.1"},
			},
			ConnContext: guardConnContext,
			ErrorLog:    log.New(slogWriter{s.log, slog.LevelDebug}, "", 0),
		}
		conns := newChanListener(lns.TLS.Addr())
		d.tcpLn = tls.NewListener(lns.TLS, d.tcp.TLSConfig)
		goFn(func() error {
			if err := d.tcp.Serve(conns); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve HTTPS on %s: %w", lns.TLS.Addr(), err)
			}
			return nil
		})
		goFn(func() error {
			d.acceptTLS(conns, s.cfg.MaxHeaderBytes+4096)
			return nil
		})
	}
	return d, nil
}

// acceptTLS completes TLS handshakes and hands each connection to the
// HTTPS server: HTTP/2 as it is, HTTP/1.1 behind the request guard. It
// returns when the TLS listener closes.
func (d *tlsDoor) acceptTLS(conns *chanListener, maxHead int) {
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

// shutdown stops taking requests and waits for those in flight until ctx
// ends, then closes everything.
func (d *tlsDoor) shutdown(ctx context.Context) {
	if d == nil {
		return
	}
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
