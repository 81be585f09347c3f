package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/cluster"
)

// With no command, pico-edge runs the node (serve) with the flags given;
// token is a command of its own.
func TestCommands(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
		ok   func(c *CLI) bool
	}{
		"no arguments": {nil, "serve", func(c *CLI) bool { return c.ProxyAddr == ":8000" }},
		"flags only": {[]string{"--proxy-addr", ":9000", "--auth-hmac-secret-file", "s.key", "--proxy-auth"}, "serve",
			func(c *CLI) bool {
				return c.ProxyAddr == ":9000" && c.ProxyAuth && strings.HasSuffix(c.AuthHMACSecretFile, "s.key")
			}},
		"serve": {[]string{"serve", "--agent-addr", ":9001"}, "serve", func(c *CLI) bool { return c.AgentAddr == ":9001" }},
		"token": {[]string{"token", "--endpoints", "foo,team-a-*", "--hmac-secret-file", "s.key", "--ttl", "1h"}, "token",
			func(c *CLI) bool {
				return strings.Join(c.Token.Endpoints, " ") == "foo team-a-*" && c.Token.TTL == time.Hour
			}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var c CLI
			p, err := newParser(&c)
			if err != nil {
				t.Fatal(err)
			}
			kctx, err := p.Parse(tc.args)
			if err != nil {
				t.Fatalf("parse %q: %v", tc.args, err)
			}
			if got := kctx.Command(); got != tc.want {
				t.Fatalf("command = %q, want %q", got, tc.want)
			}
			if !tc.ok(&c) {
				t.Fatalf("flags not as given: %+v", c)
			}
		})
	}
}

// pico-edge token creates the secret when there is none, and mints a
// token that the edge's flags verify.
func TestTokenRoundTrip(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "sub", "s.key")
	cmd := TokenCmd{Endpoints: []string{"foo", "team-a-*"}, TTL: 2 * time.Hour, HMACSecretFile: file,
		Issuer: "me", Audience: "edge", Subject: "ci"}
	var out, errOut bytes.Buffer
	now := time.Now()
	if err := cmd.run(&out, &errOut, now); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut.String(), "created the HMAC secret "+file) {
		t.Errorf("stderr = %q, want a note that the secret was created", errOut.String())
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v, mode %v; want 0600", err, fi.Mode())
	}
	flags := AuthFlags{AuthHMACSecretFile: file, AuthIssuer: "me", AuthAudience: "edge", AuthLeeway: 30 * time.Second, AuthMaxTokenLifetime: 24 * time.Hour}
	ac, err := flags.config()
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		jwt.RegisteredClaims
		Pico struct{ Endpoints []string } `json:"pico"`
	}
	token := strings.TrimSpace(out.String())
	if _, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return ac.HMACSecret, nil },
		jwt.WithValidMethods([]string{"HS256"}), jwt.WithIssuer("me"), jwt.WithAudience("edge"), jwt.WithExpirationRequired()); err != nil {
		t.Fatalf("verify %q: %v", token, err)
	}
	if got := strings.Join(claims.Pico.Endpoints, ","); got != "foo,team-a-*" || claims.Subject != "ci" ||
		claims.ExpiresAt.Unix() != now.Add(2*time.Hour).Unix() {
		t.Fatalf("claims = %+v", claims)
	}

	// The second run uses the same secret and says nothing of it.
	out.Reset()
	errOut.Reset()
	if err := cmd.run(&out, &errOut, now); err != nil || errOut.Len() != 0 {
		t.Fatalf("second run: %v, stderr %q", err, errOut.String())
	}
	for name, tc := range map[string]struct {
		cmd  TokenCmd
		want string
	}{
		"bad endpoint": {TokenCmd{Endpoints: []string{"Foo"}, TTL: time.Hour, HMACSecretFile: file}, `entry "Foo" is neither`},
		"bad wildcard": {TokenCmd{Endpoints: []string{"a*b*"}, TTL: time.Hour, HMACSecretFile: file}, `entry "a*b*"`},
		"zero ttl":     {TokenCmd{Endpoints: []string{"foo"}, HMACSecretFile: file}, "--ttl 0s: want a positive duration"},
	} {
		t.Run(name, func(t *testing.T) {
			if err := tc.cmd.run(&out, &errOut, now); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

func TestAuthFlags(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	ecPEM := write("ec.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))

	if ac, err := (&AuthFlags{}).config(); ac != nil || err != nil {
		t.Fatalf("no flags: %v, %v; want no auth", ac, err)
	}
	ac, err := (&AuthFlags{AuthECDSAPublicKey: ecPEM, ProxyAuth: true}).config()
	if err != nil || ac.ECDSAPublicKey == nil || !ac.ProxyAuth {
		t.Fatalf("ECDSA key: %+v, %v", ac, err)
	}
	for name, tc := range map[string]struct {
		flags AuthFlags
		want  string
	}{
		"missing secret":    {AuthFlags{AuthHMACSecretFile: filepath.Join(dir, "none.key")}, "'pico-edge token --hmac-secret-file " + filepath.Join(dir, "none.key")},
		"short secret":      {AuthFlags{AuthHMACSecretFile: write("short.key", "abc\n")}, "secret of 3 bytes, want at least 32"},
		"EC key as RSA":     {AuthFlags{AuthRSAPublicKey: ecPEM}, "--auth-rsa-public-key " + ecPEM},
		"EC key as Ed25519": {AuthFlags{AuthEd25519PublicKey: ecPEM}, "--auth-ed25519-public-key " + ecPEM},
		"proxy auth alone":  {AuthFlags{ProxyAuth: true}, "--proxy-auth, --auth-issuer and --auth-audience need a key"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := tc.flags.config(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("config = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// --rebalance-interval reaches the cluster's config: 0 turns rebalancing
// off; a negative interval or one under a second is an error that says so.
func TestRebalanceIntervalFlag(t *testing.T) {
	for name, tc := range map[string]struct {
		args    []string
		want    time.Duration
		wantErr string
	}{
		"default":  {nil, 5 * time.Second, ""},
		"set":      {[]string{"--rebalance-interval", "30s"}, 30 * time.Second, ""},
		"off":      {[]string{"--rebalance-interval", "0"}, -1, ""},
		"negative": {[]string{"--rebalance-interval=-1s"}, 0, "--rebalance-interval -1s: want 0 (rebalancing off) or at least 1s"},
		"too fast": {[]string{"--rebalance-interval", "10ms"}, 0, "--rebalance-interval 10ms: want 0 (rebalancing off) or at least 1s"},
	} {
		t.Run(name, func(t *testing.T) {
			var c CLI
			p, err := newParser(&c)
			if err != nil {
				t.Fatal(err)
			}
			// A node in a cluster: a node alone has no rebalancing.
			if _, err := p.Parse(append([]string{"--data-dir", t.TempDir(), "--gossip-addr", "127.0.0.1:0"}, tc.args...)); err != nil {
				t.Fatalf("parse %q: %v", tc.args, err)
			}
			cc, err := c.cluster(slog.New(slog.DiscardHandler))
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("got error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cc.RebalanceInterval != tc.want {
				t.Fatalf("got RebalanceInterval %s, want %s", cc.RebalanceInterval, tc.want)
			}
		})
	}
}

// TestFlagDefaults checks that every flag whose field shares its name with
// a field of edge.Config (or is GracePeriod, ShutdownGrace there) defaults
// to edge.DefaultConfig's value: the flags take their defaults from it.
func TestFlagDefaults(t *testing.T) {
	var c CLI
	p, err := newParser(&c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Parse([]string{"--data-dir", t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	def := reflect.ValueOf(edge.DefaultConfig())
	cli := reflect.ValueOf(c)
	compared := 0
	for i := range cli.NumField() {
		name := cli.Type().Field(i).Name
		switch name {
		case "GracePeriod":
			name = "ShutdownGrace"
		case "NewConnsPerIP":
			name = "NewConnsPerIPPerSecond"
		}
		d := def.FieldByName(name)
		if !d.IsValid() || d.IsZero() {
			continue // no default in edge.Config
		}
		compared++
		if got := cli.Field(i).Interface(); !reflect.DeepEqual(got, d.Interface()) {
			t.Errorf("CLI.%s defaults to %v; edge.DefaultConfig().%s is %v", cli.Type().Field(i).Name, got, name, d.Interface())
		}
	}
	if compared < 15 {
		t.Fatalf("compared %d flags with edge.DefaultConfig, want at least 15", compared)
	}
	if c.ClusterLabel != cluster.DefaultConfig().Label {
		t.Errorf("--cluster-label defaults to %q, want %q", c.ClusterLabel, cluster.DefaultConfig().Label)
	}
}

// The start-up hint names the command the user ran: a binary go run built
// (in the build cache or a go-build* work directory) is go run ./cmd/pico-edge.
func TestSelfCommand(t *testing.T) {
	for arg0, want := range map[string]string{
		"/tmp/go-build415532079/b001/exe/pico-edge":                     "go run ./cmd/pico-edge",
		"/root/.cache/go-build/70/70a0957e1b4951674c3ad6b4-d/pico-edge": "go run ./cmd/pico-edge",
		"/usr/local/bin/pico-edge":                                      "pico-edge",
		"pico-edge":                                                     "pico-edge",
		"./bin/pico-edge":                                               "pico-edge",
	} {
		if got := selfCommand(arg0); got != want {
			t.Errorf("selfCommand(%q) = %q, want %q", arg0, got, want)
		}
	}
}

func TestACMEFlags(t *testing.T) {
	for name, tc := range map[string]struct {
		args    []string
		wantErr string // "" : an ACME client, or none without --acme-domain
	}{
		"off":              {nil, ""},
		"on":               {[]string{"--acme-domain", "tunnels.example.com", "--acme-email", "ops@example.com"}, ""},
		"email alone":      {[]string{"--acme-email", "ops@example.com"}, "--acme-email, --acme-ca-roots and --acme-cache-dir need --acme-domain"},
		"renew too early":  {[]string{"--acme-domain", "t.example.com", "--acme-renew-before", "1000h"}, "--acme-renew-before 1000h0m0s: want more than 0 and at most 720h"},
		"wildcard domain":  {[]string{"--acme-domain", "*.example.com"}, `--acme-domain: certs: acme: base domain "*.example.com": want a DNS name such as tunnels.example.com`},
		"roots not a file": {[]string{"--acme-domain", "t.example.com", "--acme-ca-roots", "/nonexistent/roots.pem"}, "--acme-ca-roots: certs: read CA bundle: open /nonexistent/roots.pem: no such file or directory"},
	} {
		t.Run(name, func(t *testing.T) {
			var c CLI
			p, err := newParser(&c)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if _, err := p.Parse(append([]string{"--data-dir", dir}, tc.args...)); err != nil {
				t.Fatalf("parse %q: %v", tc.args, err)
			}
			fallback := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil }
			a, err := c.acme(fallback, func(string) bool { return false }, nil, slog.New(slog.DiscardHandler))
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("got error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (a != nil) != (c.ACMEDomain != "") {
				t.Fatalf("ACME client %v with --acme-domain %q", a != nil, c.ACMEDomain)
			}
		})
	}
}
