// Command pico-agent connects local services to a Pico edge over QUIC, and
// forwards local TCP ports to endpoints.
package main

import (
	"context"
	"errors"
	"fmt"
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
	Edge       string `help:"Edge agent addresses (host:port), comma separated, tried in turn." default:"127.0.0.1:8001"`
	CA         string `help:"PEM bundle of CA certificates that verify the edge (default: the system roots)." type:"existingfile"`
	ServerName string `help:"Name to verify in the edge's certificate (default: the host of --edge)."`
	Token      string `help:"Token presented to the edge."`
	cli.LogFlags
}

type CLI struct {
	Globals

	HTTP    ServeCmd   `cmd:"" name:"http" help:"Serve HTTP endpoints: pico-agent http ENDPOINT UPSTREAM [ENDPOINT UPSTREAM]..."`
	TCP     ServeCmd   `cmd:"" name:"tcp" help:"Serve raw TCP endpoints: pico-agent tcp ENDPOINT UPSTREAM [ENDPOINT UPSTREAM]..."`
	Forward ForwardCmd `cmd:"" help:"Listen on a local port and tunnel each connection to an endpoint: pico-agent forward LOCAL ENDPOINT."`
}

// ServeCmd serves endpoints from upstream addresses.
type ServeCmd struct {
	Pairs []string `arg:"" name:"ENDPOINT UPSTREAM" help:"Pairs of endpoint ID and upstream: a port (3000), host:port, or http://host:port."`
}

// ForwardCmd forwards a local port to an endpoint.
type ForwardCmd struct {
	Local    string `arg:"" help:"Local address to listen on: a port (binds 127.0.0.1) or host:port."`
	Endpoint string `arg:"" help:"Endpoint to forward to."`
}

func main() {
	var c CLI
	kctx := kong.Parse(&c,
		kong.Name("pico-agent"),
		kong.Description("Pico agent: serves local services on a Pico edge, and forwards local ports to endpoints.\n\nEvery flag can also be set with a PICO_* environment variable, e.g. PICO_EDGE, PICO_TOKEN."),
		kong.DefaultEnvars("PICO"),
		kong.UsageOnError(),
	)
	log := c.Logger(os.Stderr)
	ctx, cancel := cli.SignalContext()
	defer cancel()
	var err error
	switch kctx.Command() {
	case "http <ENDPOINT UPSTREAM>":
		err = c.HTTP.run(ctx, &c.Globals, log, quicutil.KindHTTP)
	case "tcp <ENDPOINT UPSTREAM>":
		err = c.TCP.run(ctx, &c.Globals, log, quicutil.KindTCP)
	case "forward <local> <endpoint>":
		err = c.Forward.run(ctx, &c.Globals, log)
	default:
		err = fmt.Errorf("unknown command %q", kctx.Command())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pico-agent:", err)
		os.Exit(1)
	}
}

func (g *Globals) newAgent(log *slog.Logger) (*agent.Agent, error) {
	cfg := agent.Config{
		Edges:      cli.SplitList(g.Edge),
		ServerName: g.ServerName,
		Token:      g.Token,
		Name:       "pico-agent/" + cli.Version(),
		Logger:     log,
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
// either ends both.
func runAgent(ctx context.Context, a *agent.Agent, work func(ctx context.Context) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() {
		runErr = a.Run(ctx)
		cancel(runErr)
	})
	err := work(ctx)
	if err != nil {
		cancel(err)
	} else {
		<-ctx.Done()
	}
	a.Close()
	wg.Wait()
	if err != nil {
		return err
	}
	return runErr
}

func (s *ServeCmd) run(ctx context.Context, g *Globals, log *slog.Logger, kind quicutil.Kind) error {
	if len(s.Pairs)%2 != 0 {
		return fmt.Errorf("arguments come in pairs ENDPOINT UPSTREAM; got %d arguments", len(s.Pairs))
	}
	type pair struct{ id, upstream string }
	var pairs []pair
	for i := 0; i < len(s.Pairs); i += 2 {
		id := s.Pairs[i]
		if err := quicutil.ValidateEndpointID(id); err != nil {
			return err
		}
		up, err := parseUpstream(s.Pairs[i+1])
		if err != nil {
			return fmt.Errorf("endpoint %s: %w", id, err)
		}
		pairs = append(pairs, pair{id, up})
	}
	a, err := g.newAgent(log)
	if err != nil {
		return err
	}
	return runAgent(ctx, a, func(ctx context.Context) error {
		for _, p := range pairs {
			if err := a.ServeUpstream(ctx, p.id, kind, p.upstream); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			fmt.Fprintf(os.Stderr, "endpoint %s (%s) is registered: forwarding to %s\n", p.id, kind, p.upstream)
		}
		return nil
	})
}

// parseUpstream turns a port, host:port or http URL into host:port.
func parseUpstream(s string) (string, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 65535 {
			return "", fmt.Errorf("upstream port %d out of range", n)
		}
		return net.JoinHostPort("localhost", s), nil
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", fmt.Errorf("upstream %q: %w", s, err)
		}
		switch u.Scheme {
		case "http":
		case "https":
			return "", fmt.Errorf("upstream %q: TLS to upstreams is not supported yet; give its plain HTTP address", s)
		default:
			return "", fmt.Errorf("upstream %q: scheme %q (want http)", s, u.Scheme)
		}
		if u.Port() == "" {
			return net.JoinHostPort(u.Hostname(), "80"), nil
		}
		return u.Host, nil
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return "", fmt.Errorf("upstream %q: want a port, host:port or http://host:port", s)
	}
	return s, nil
}

func (f *ForwardCmd) run(ctx context.Context, g *Globals, log *slog.Logger) error {
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
	fmt.Fprintf(os.Stderr, "forwarding %s to endpoint %s\n", ln.Addr(), f.Endpoint)
	return runAgent(ctx, a, func(ctx context.Context) error {
		stop := context.AfterFunc(ctx, func() { ln.Close() })
		defer stop()
		var wg sync.WaitGroup
		defer wg.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
			}
			wg.Go(func() { forwardConn(ctx, a, c, f.Endpoint, log) })
		}
	})
}

func forwardConn(ctx context.Context, a *agent.Agent, c net.Conn, endpoint string, log *slog.Logger) {
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	remote, err := a.Dial(dctx, endpoint)
	cancel()
	if err != nil {
		var de *agent.DialError
		if !errors.As(err, &de) && ctx.Err() != nil {
			c.Close()
			return
		}
		log.Error("forward refused", "endpoint_id", endpoint, "client", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	start := time.Now()
	stop := context.AfterFunc(ctx, func() { c.Close(); remote.Close() })
	defer stop()
	res := quicutil.Join(c, remote, time.Hour)
	log.Info("forward closed", "endpoint_id", endpoint, "client", c.RemoteAddr().String(),
		"bytes_out", res.AToB, "bytes_in", res.BToA, "duration", time.Since(start).Round(time.Millisecond).String())
}
