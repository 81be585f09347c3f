package main

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/auth"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef-agent-test")

func mint(t *testing.T, exp time.Time, endpoints ...string) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"exp": exp.Unix(), "pico": map[string]any{"endpoints": endpoints},
	}).SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A new token written to --token-file reaches the live link before the
// old token expires: the endpoint stays registered past that expiry.
func TestTokenFileRefresh(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) {
		c.Auth = &auth.Config{HMACSecret: testSecret, Leeway: time.Second}
	})
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(mint(t, time.Now().Add(2*time.Second), "foo")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &Globals{TokenFile: file}
	tok, err := g.token()
	if err != nil {
		t.Fatal(err)
	}
	a := n.NewAgent(t, func(c *agent.Config) { c.Token = tok })
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { watchTokenFile(ctx, file, a, 50*time.Millisecond, edgetest.Logger(t)) })
	defer func() { cancel(); wg.Wait() }()
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(mint(t, time.Now().Add(time.Hour), "foo")), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // past the first token's exp + leeway
	if _, targets, err := n.Server.Table().Lookup("foo"); err != nil || len(targets) != 1 {
		t.Fatalf("foo after the first token expired: %d agents, %v; want 1", len(targets), err)
	}
}

func TestTokenFlags(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte(" \n"), 0o600)
	for name, g := range map[string]*Globals{
		"both":    {Token: "a", TokenFile: empty},
		"empty":   {TokenFile: empty},
		"missing": {TokenFile: filepath.Join(dir, "none")},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := g.token(); err == nil {
				t.Fatal("no error")
			}
		})
	}
}
