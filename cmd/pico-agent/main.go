// Command pico-agent connects local services to a Pico edge over QUIC, and
// forwards local TCP ports to endpoints.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/alecthomas/kong"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/cmd/internal/cli"
	"github.com/pico-edge/pico/quicutil"
)

type Globals struct {
	Config      cli.ConfigFile `help:"YAML file of flag values (keys are flag names: edge: host:8001); $${VAR} takes an environment variable. A flag or PICO_* variable wins over the file." placeholder:"FILE"`
	Edge        string         `help:"Edge agent addresses (host:port), comma separated, tried in turn; or the URL of the TCP transport behind an HTTP load balancer (https://lb.example.com/_pico/agent)." default:"127.0.0.1:8001"`
	Transport   string         `help:"How links reach the edge: quic (UDP), tcp (the same QUIC link over one TCP connection, an HTTP/1.1 WebSocket upgrade at /_pico/agent on the --edge host and port) or auto (QUIC, and TCP when UDP gets no answer within 3s; back to QUIC when it works)." enum:"auto,quic,tcp" default:"auto"`
	ProxyURL    string         `help:"HTTP proxy for links over TCP (http:// or https://, credentials as http://USER:PASSWORD@HOST:PORT); default: HTTPS_PROXY, except hosts in NO_PROXY." placeholder:"URL"`
	QUICProbe   time.Duration  `help:"First wait before a link that auto moved to TCP tries QUIC again (doubling up to 5m)." default:"30s" hidden:""`
	CA          string         `help:"PEM bundle of CA certificates that verify the edge (default: the system roots, and for an edge on this machine (loopback --edge) also the development CA of pico-edge's default --data-dir, read again at every attempt)." type:"existingfile"`
	ServerName  string         `help:"Name to verify in the edge's certificate (default: the host of --edge)."`
	Token       string         `help:"Token presented to the edge (a JWT when the edge checks tokens)."`
	TokenFile   string         `help:"File with the token, looked at every 2s: when it changes, new links use the new token and live links hand it to their edge, which keeps them past the old token's expiry." type:"path"`
	Connections int            `help:"Links to keep, each to a distinct edge node; every link registers every endpoint. 0: 2 when more than one edge node is known (several --edge addresses, or the edge lists other nodes of its cluster), else 1." default:"0"`
	GracePeriod time.Duration  `help:"On SIGTERM or SIGINT: how long the requests and connections in flight may take to finish, once every endpoint is withdrawn from the edges (which send new ones to other agents); a second signal exits at once." default:"30s"`
	AdminAddr   string         `help:"Address (host:port) to serve /metrics (Prometheus), /status (JSON), /healthz and /readyz on, and the inspector of pico-agent http when loopback; if the default 127.0.0.1:4040 is taken (another pico-agent), another loopback port; empty: none." placeholder:"ADDR" default:"127.0.0.1:4040"`
	cli.LogFlags

	inspector inspectorRun // of pico-agent http, if on
}

type CLI struct {
	PrintVersion kong.VersionFlag `name:"version" help:"Print the version, the Go version and the platform, and exit." env:"-"`
	Globals

	HTTP    ServeCmd   `cmd:"" name:"http" help:"Serve HTTP endpoints: pico-agent http ENDPOINT UPSTREAM [ENDPOINT UPSTREAM]..."`
	TCP     ServeCmd   `cmd:"" name:"tcp" help:"Serve raw TCP endpoints: pico-agent tcp ENDPOINT UPSTREAM [ENDPOINT UPSTREAM]..."`
	TLS     ServeCmd   `cmd:"" name:"tls" help:"Serve TLS servers by passthrough, with their own certificates (the edge routes by SNI on its --passthrough-addr and never decrypts): pico-agent tls ENDPOINT UPSTREAM [ENDPOINT UPSTREAM]..."`
	Forward ForwardCmd `cmd:"" help:"Listen on a local port and tunnel each connection to an endpoint: pico-agent forward LOCAL ENDPOINT."`
}

// ServeCmd serves endpoints from upstream addresses.
type ServeCmd struct {
	Pairs []string `arg:"" name:"ENDPOINT UPSTREAM" help:"Pairs of endpoint ID and upstream: a port (3000), host:port, http://host:port or https://host:port."`

	UpstreamProtocol      string `help:"How to speak to HTTP upstreams: http (HTTP/1.1), h2c (HTTP/2 without TLS, e.g. gRPC), https (HTTP/1.1 over TLS) or h2 (HTTP/2 over TLS). Default: http, or https for https:// upstreams." enum:",http,h2c,https,h2" default:""`
	UpstreamCA            string `help:"PEM bundle of CAs that verify TLS upstreams (default: the system roots)." type:"existingfile"`
	UpstreamServerName    string `help:"Name to verify in TLS upstreams' certificates (default: the upstream's host)."`
	UpstreamTLSSkipVerify bool   `help:"Do not verify TLS upstreams' certificates (self-signed development servers only)."`

	InspectFlags
}

// ForwardCmd forwards a local port to an endpoint.
type ForwardCmd struct {
	Local    string `arg:"" help:"Local address to listen on: a port (binds 127.0.0.1) or host:port."`
	Endpoint string `arg:"" help:"Endpoint to forward to."`
}

func main() {
	var c CLI
	parser, err := newParser(&c)
	if err != nil {
		panic(err) // the command structs are wrong
	}
	kctx, ok := cli.Parse(parser, os.Args[1:], os.Stderr)
	if !ok {
		os.Exit(cli.ExitError)
	}
	log := c.Logger(os.Stderr)
	ctx, cancel := cli.SignalContext()
	defer cancel()
	switch kctx.Command() {
	case "http <ENDPOINT UPSTREAM>":
		err = c.HTTP.run(ctx, &c.Globals, log, quicutil.KindHTTP, os.Stderr)
	case "tcp <ENDPOINT UPSTREAM>":
		err = c.TCP.run(ctx, &c.Globals, log, quicutil.KindTCP, os.Stderr)
	case "tls <ENDPOINT UPSTREAM>":
		err = c.TLS.run(ctx, &c.Globals, log, quicutil.KindTLS, os.Stderr)
	case "forward <local> <endpoint>":
		err = c.Forward.run(ctx, &c.Globals, log, os.Stderr)
	default:
		err = fmt.Errorf("unknown command %q", kctx.Command())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pico-agent:", err)
		os.Exit(cli.ExitError)
	}
}

func newParser(c *CLI) (*kong.Kong, error) {
	return kong.New(c,
		kong.Name("pico-agent"),
		kong.Description("Pico agent: serves local services on a Pico edge, and forwards local ports to endpoints.\n\nEvery flag can also be set with a PICO_* environment variable, e.g. PICO_EDGE, PICO_TOKEN."),
		kong.DefaultEnvars("PICO"),
		kong.Vars{"version": cli.VersionLine("pico-agent")},
	)
}

func (g *Globals) newAgent(log *slog.Logger) (*agent.Agent, error) {
	token, err := g.token()
	if err != nil {
		return nil, err
	}
	cfg := agent.Config{
		Edges:       cli.SplitList(g.Edge),
		Connections: g.Connections,
		ServerName:  g.ServerName,
		Token:       token,
		Name:        "pico-agent/" + cli.Version(),
		Logger:      log,
		Transport:   agent.Transport(g.Transport),
		QUICProbe:   g.QUICProbe,
		Inspector:   g.inspector.in,
		// Without --ca and with an edge on this machine, the agent trusts
		// pico-edge's development CA too, re-read at every attempt; a
		// certificate it cannot verify is logged with a hint and retried.
		WaitOnCertErrors: true,
	}
	if g.ProxyURL != "" {
		u, err := url.Parse(g.ProxyURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("--proxy-url %q: want http://[USER:PASSWORD@]HOST:PORT or https://...", g.ProxyURL)
		}
		cfg.ProxyURL = u
	}
	if g.CA != "" {
		pool, err := certs.LoadPool(g.CA)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		cfg.RootCAs = pool
	}
	return agent.New(cfg)
}

// runAgent runs a until ctx ends, and runs work meanwhile; an error of
// either ends both. When ctx ends (a signal), the agent drains: it
// withdraws its endpoints and waits up to --grace-period for the streams
// in flight. With --admin-addr, the admin server runs as long and says
// where on out.
func (g *Globals) runAgent(ctx context.Context, a *agent.Agent, out io.Writer, work func(ctx context.Context) error) error {
	stopAdmin, err := g.serveAdmin(a, out)
	if err != nil {
		a.Close()
		return err
	}
	defer stopAdmin()
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() {
		// Run outlives ctx: the links serve the streams in flight while the
		// agent drains, until Shutdown or Close ends it.
		runErr = a.Run(context.WithoutCancel(ctx))
		cancel(runErr)
	})
	err = work(wctx)
	if err != nil {
		cancel(err)
	} else {
		<-wctx.Done()
	}
	if err == nil && ctx.Err() != nil {
		grace, stop := context.WithTimeout(context.Background(), g.GracePeriod)
		a.Shutdown(grace) // logs how it ended
		stop()
	}
	a.Close()
	wg.Wait()
	if err != nil {
		return err
	}
	return runErr
}

// run serves the endpoints until ctx ends; status lines go to out.
func (s *ServeCmd) run(ctx context.Context, g *Globals, log *slog.Logger, kind quicutil.Kind, out io.Writer) error {
	if len(s.Pairs)%2 != 0 {
		return fmt.Errorf("arguments come in pairs ENDPOINT UPSTREAM; got %d arguments", len(s.Pairs))
	}
	type pair struct {
		id    string
		up    agent.Upstream
		proto string
	}
	var pairs []pair
	for i := 0; i < len(s.Pairs); i += 2 {
		id := s.Pairs[i]
		if err := quicutil.ValidateEndpointID(id); err != nil {
			return err
		}
		addr, scheme, err := parseUpstream(s.Pairs[i+1])
		if err != nil {
			return fmt.Errorf("endpoint %s: %w", id, err)
		}
		up, proto, err := s.upstream(kind, addr, scheme)
		if err != nil {
			return fmt.Errorf("endpoint %s: %w", id, err)
		}
		pairs = append(pairs, pair{id, up, proto})
	}
	if kind == quicutil.KindHTTP {
		ir, err := s.newInspector(log)
		if err != nil {
			return err
		}
		defer ir.in.Close() // after the agent
		g.inspector = ir
	}
	a, err := g.newAgent(log)
	if err != nil {
		return err
	}
	return g.runAgent(ctx, a, out, g.withTokenFile(a, log, func(ctx context.Context) error {
		lines := newStatusLines(out, kind.String())
		for _, p := range pairs {
			var err error
			if kind.IsRaw() {
				err = a.ServeUpstream(ctx, p.id, kind, p.up.Addr)
			} else {
				err = a.ServeHTTPUpstream(ctx, p.id, p.up)
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			lines.add(p.id, fmt.Sprintf("%s (%s)", p.up.Addr, p.proto))
			if err := lines.update(a.Status()); err != nil {
				return err
			}
		}
		return lines.watch(ctx, a)
	}))
}

// parseUpstream turns a port, host:port or http(s) URL into host:port and
// the URL's scheme ("" without one).
func parseUpstream(s string) (addr, scheme string, err error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 65535 {
			return "", "", fmt.Errorf("upstream port %d out of range", n)
		}
		return net.JoinHostPort("localhost", s), "", nil
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", "", fmt.Errorf("upstream %q: %w", s, err)
		}
		port := u.Port()
		switch u.Scheme {
		case "http":
			if port == "" {
				port = "80"
			}
		case "https":
			if port == "" {
				port = "443"
			}
		default:
			return "", "", fmt.Errorf("upstream %q: scheme %q (want http or https)", s, u.Scheme)
		}
		return net.JoinHostPort(u.Hostname(), port), u.Scheme, nil
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return "", "", fmt.Errorf("upstream %q: want a port, host:port or http(s)://host:port", s)
	}
	return s, "", nil
}

// upstream applies the --upstream-* flags to one upstream address, and
// names the protocol it ends up with.
func (s *ServeCmd) upstream(kind quicutil.Kind, addr, scheme string) (agent.Upstream, string, error) {
	up := agent.Upstream{Addr: addr}
	proto := s.UpstreamProtocol
	if proto == "" {
		proto = "http"
		if scheme == "https" {
			proto = "https"
		}
	}
	if kind.IsRaw() {
		if s.UpstreamProtocol != "" || scheme != "" || s.UpstreamCA != "" || s.UpstreamServerName != "" || s.UpstreamTLSSkipVerify {
			return up, "", fmt.Errorf("%s endpoints take a plain host:port upstream, without --upstream-* flags", kind)
		}
		if kind == quicutil.KindTLS {
			return up, "TLS passthrough", nil
		}
		return up, "tcp", nil
	}
	if scheme == "https" && (proto == "http" || proto == "h2c") || scheme == "http" && (proto == "https" || proto == "h2") {
		return up, "", fmt.Errorf("a %s:// upstream cannot be spoken to as %s", scheme, proto)
	}
	up.HTTP2 = proto == "h2c" || proto == "h2"
	if proto == "https" || proto == "h2" {
		up.TLS = &tls.Config{ServerName: s.UpstreamServerName, InsecureSkipVerify: s.UpstreamTLSSkipVerify}
		if s.UpstreamCA != "" {
			pool, err := certs.LoadPool(s.UpstreamCA)
			if err != nil {
				return up, "", fmt.Errorf("--upstream-ca: %w", err)
			}
			up.TLS.RootCAs = pool
		}
	} else if s.UpstreamCA != "" || s.UpstreamTLSSkipVerify || s.UpstreamServerName != "" {
		return up, "", fmt.Errorf("--upstream-ca, --upstream-server-name and --upstream-tls-skip-verify need a TLS upstream (https or h2)")
	}
	return up, proto, nil
}

// run forwards until ctx ends; status lines go to out.
func (f *ForwardCmd) run(ctx context.Context, g *Globals, log *slog.Logger, out io.Writer) error {
	if err := quicutil.ValidateEndpointID(f.Endpoint); err != nil {
		return err
	}
	local := f.Local
	if _, err := strconv.Atoi(local); err == nil {
		local = net.JoinHostPort("127.0.0.1", local)
	}
	ln, err := net.Listen("tcp", local)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", local, err)
	}
	a, err := g.newAgent(log)
	if err != nil {
		ln.Close()
		return err
	}
	fmt.Fprintf(out, "forwarding %s to endpoint %s\n", ln.Addr(), f.Endpoint)
	return g.runAgent(ctx, a, out, g.withTokenFile(a, log, func(ctx context.Context) error {
		fctx, fail := context.WithCancelCause(ctx) // a refusal no retry can help ends the forward
		defer fail(nil)
		stop := context.AfterFunc(fctx, func() { ln.Close() })
		defer stop()
		var wg sync.WaitGroup
		defer wg.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				switch {
				case ctx.Err() != nil:
					return nil
				case fctx.Err() != nil:
					return context.Cause(fctx)
				}
				return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
			}
			wg.Go(func() {
				if err := forwardConn(fctx, a, c, f.Endpoint, log); err != nil {
					fail(err)
				}
			})
		}
	}))
}

// forwardConn tunnels c to endpoint. It returns an error only when the
// edge refused the forward for a reason that holds for every connection:
// the token is refused, or does not allow the endpoint.
func forwardConn(ctx context.Context, a *agent.Agent, c net.Conn, endpoint string, log *slog.Logger) error {
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	remote, err := a.Dial(dctx, endpoint)
	cancel()
	if err != nil {
		c.Close()
		var de *agent.DialError
		if !errors.As(err, &de) && ctx.Err() != nil {
			return nil
		}
		if de != nil && (de.Code == quicutil.StatusForbidden || de.Code == quicutil.StatusUnauthorized) {
			return fmt.Errorf("the edge refused the forward to endpoint %s (%s): %w", endpoint, de.Code, err)
		}
		log.Error("forward refused", "endpoint_id", endpoint, "client", c.RemoteAddr().String(), "err", err)
		return nil
	}
	start := time.Now()
	stop := context.AfterFunc(ctx, func() { c.Close(); remote.Close() })
	defer stop()
	res := quicutil.Join(c, remote, time.Hour)
	log.Info("forward closed", "endpoint_id", endpoint, "client", c.RemoteAddr().String(),
		"bytes_out", res.AToB, "bytes_in", res.BToA, "duration", time.Since(start).Round(time.Millisecond).String())
	return nil
}
