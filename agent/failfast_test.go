package agent_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/auth"
	"github.com/pico-edge/pico/edge/edgetest"
)

// With no Logger, an edge certificate the agent cannot verify fails Listen
// at once, with the hint pico-agent logs: not when the context ends.
func TestListenFailsOnCertificate(t *testing.T) {
	n := edgetest.NewNode(t)
	other, err := certs.Generate()
	if err != nil {
		t.Fatal(err)
	}
	a := n.NewAgent(t, func(c *agent.Config) {
		c.RootCAs = other.CAPool // not the CA of the edge's certificate
		c.Logger = nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	_, err = a.Listen(ctx, "foo")
	var ce *agent.ConnectError
	if !errors.As(err, &ce) {
		t.Fatalf("Listen: %v; want a *agent.ConnectError before the context ends", err)
	}
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) || ce.Hint == "" {
		t.Errorf("Listen: %v (hint %q); want x509.UnknownAuthorityError and a hint", err, ce.Hint)
	}
	t.Logf("Listen: %v", err)

	// Waiting instead: Listen returns when its context ends.
	w := n.NewAgent(t, func(c *agent.Config) {
		c.RootCAs = other.CAPool
		c.WaitOnCertErrors = true
	})
	short, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := w.Listen(short, "foo"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Listen with WaitOnCertErrors: %v; want the context's end", err)
	}
}

// A token the edge refuses ends Run; Listen returns that error at once.
func TestListenFailsWhenRunEnds(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) {
		c.Auth = &auth.Config{HMACSecret: bytes.Repeat([]byte("k"), 32)}
	})
	a := n.NewAgent(t, func(c *agent.Config) { c.Token = "not-a-token"; c.Logger = nil })
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if _, err := a.Listen(ctx, "foo"); !errors.Is(err, agent.ErrUnauthorized) {
		t.Fatalf("Listen: %v; want ErrUnauthorized before the context ends", err)
	}
}
