package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/certs"
)

// runHintAgent runs an agent that dials only edge over transport tr,
// logging to rec, until the test ends.
func runHintAgent(t *testing.T, b *certs.Bundle, edge string, tr agent.Transport, rec *recorder) {
	t.Helper()
	a, err := agent.New(agent.Config{
		Edges:     []string{edge},
		RootCAs:   b.CAPool,
		Transport: tr,
		Logger:    slog.New(rec.handler(t)),
		Backoff:   agent.Backoff{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("agent Run: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		a.Close()
		wg.Wait()
	})
}

// waitHint waits for the agent's first WARN that it cannot connect, and
// checks that its hint says want.
func waitHint(t *testing.T, rec *recorder, want ...string) record {
	t.Helper()
	failed := msgIs("cannot connect to edge; retrying with backoff")
	rec.wait(t, "a failed attempt", 1, failed)
	var got record
	rec.mu.Lock()
	for _, r := range rec.recs {
		if failed(r) {
			got = r
			break
		}
	}
	rec.mu.Unlock()
	t.Logf("err=%q hint=%q", got.attrs["err"], got.attrs["hint"])
	if got.level != slog.LevelWarn {
		t.Errorf("logged at %s, want WARN", got.level)
	}
	for _, w := range want {
		if !strings.Contains(got.attrs["hint"], w) {
			t.Errorf("hint %q does not say %q (err %q)", got.attrs["hint"], w, got.attrs["err"])
		}
	}
	return got
}

// An agent pointed at a real HTTP/3 server (what the edge's port 8443 is)
// is told that it is not an agent port, and which port is.
func TestHintHTTP3Port(t *testing.T) {
	b, err := certs.Generate()
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http3.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("h3")) }),
		TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{b.Cert}}),
	}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(udp) })
	t.Cleanup(func() {
		srv.Close()
		udp.Close()
		wg.Wait()
	})
	rec := newRecorder()
	runHintAgent(t, b, udp.LocalAddr().String(), agent.TransportQUIC, rec)
	r := waitHint(t, rec, "not a Pico agent port", "--agent-addr, 8001 by default")
	if !strings.Contains(r.attrs["err"], "no application protocol") {
		t.Errorf("err %q: want quic-go's no application protocol", r.attrs["err"])
	}
}

// A closed UDP port, which quic-go sees as silence, is named as closed
// (the ICMP port unreachable), with the hint to check the port.
func TestHintClosedPort(t *testing.T) {
	b, err := certs.Generate()
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	runHintAgent(t, b, closedUDPAddr(t), agent.TransportQUIC, rec)
	r := waitHint(t, rec, "nothing listens at the address", "8001 by default")
	if !strings.Contains(r.attrs["err"], "UDP port is closed") {
		t.Errorf("err %q: want it to say the UDP port is closed", r.attrs["err"])
	}
}

// Over --transport auto, a closed port is refused over TCP too: the hint
// says so rather than blame UDP.
func TestHintClosedPortAuto(t *testing.T) {
	b, err := certs.Generate()
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	runHintAgent(t, b, closedUDPAddr(t), agent.TransportAuto, rec)
	waitHint(t, rec, "nothing listens at the address")
}

// An HTTP server that does not upgrade /_pico/agent (a web server, an
// admin port) is named as not a Pico edge.
func TestHintNotAPicoServer(t *testing.T) {
	b, err := certs.Generate()
	if err != nil {
		t.Fatal(err)
	}
	web := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(web.Close)
	rec := newRecorder()
	runHintAgent(t, b, web.URL+"/_pico/agent", agent.TransportTCP, rec)
	waitHint(t, rec, "HTTP server that answered 404", "not a Pico edge's agent port")
}

// An agent that cannot connect says so again, ever less often, with the
// count of attempts: it never goes silent.
func TestRepeatedFailuresLogged(t *testing.T) {
	b, err := certs.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused from now on (unless another process takes the port)
	rec := newRecorder()
	runHintAgent(t, b, addr, agent.TransportTCP, rec)
	again := msgIs("still cannot connect to edge; retrying with backoff")
	rec.wait(t, "two repeats of the failure", 2, again)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var attempts []string
	for _, r := range rec.recs {
		if again(r) {
			attempts = append(attempts, r.attrs["attempts"])
			if r.level != slog.LevelWarn || r.attrs["hint"] == "" || r.attrs["failing_for"] == "" {
				t.Errorf("repeat %v: want WARN with a hint and failing_for", r)
			}
		}
	}
	if len(attempts) < 2 || attempts[0] == attempts[1] || attempts[0] == "1" {
		t.Errorf("attempts of the repeats: %v, want growing counts above 1", attempts)
	}
}
