package edge_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/auth"
	"github.com/pico-edge/pico/edge/auth/authtest"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// authOpt configures a node to verify tokens with the test keys, checking
// them against clock; mut adjusts the rest.
func authOpt(clock func() time.Time, mut ...func(*auth.Config)) func(*edge.Config) {
	return func(c *edge.Config) {
		k := authtest.Keys()
		ac := &auth.Config{
			HMACSecret:       k.HMAC,
			RSAPublicKey:     &k.RSA.PublicKey,
			Ed25519PublicKey: k.Ed.Public().(ed25519.PublicKey),
			Issuer:           authtest.Issuer,
			Audience:         authtest.Audience,
			Now:              clock,
		}
		for _, m := range mut {
			m(ac)
		}
		c.Auth = ac
	}
}

// withProxyAuth makes clients present a token too; for authOpt.
func withProxyAuth(c *auth.Config) { c.ProxyAuth = true }

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

// runAgent runs an agent with token against n until Run returns, and
// returns Run's error.
func runAgent(t *testing.T, n *edgetest.Node, token string) error {
	t.Helper()
	a, err := agent.New(agent.Config{Edges: []string{n.AgentAddr}, RootCAs: n.CAPool, Token: token,
		Logger: edgetest.Logger(t), Backoff: agent.Backoff{Min: 20 * time.Millisecond, Max: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	go a.ServeUpstream(ctx, "foo", quicutil.KindHTTP, "127.0.0.1:1") // would register, were it allowed
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		t.Fatal("agent Run did not return")
		return nil
	}
}

// TestAgentAuthMatrix: every bad token is refused at Hello with a precise
// reason and registers nothing; tokens within the leeway pass.
func TestAgentAuthMatrix(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	n := edgetest.NewNode(t, authOpt(fixedClock(now)))
	refused, accepted := authtest.Matrix(t, now)
	for name, tc := range refused {
		t.Run(name, func(t *testing.T) {
			err := runAgent(t, n, tc.Token)
			if !errors.Is(err, agent.ErrUnauthorized) || !strings.Contains(err.Error(), tc.Want) {
				t.Fatalf("Run = %v\nwant ErrUnauthorized saying %q", err, tc.Want)
			}
			if got := n.Server.Table().Len(); got != 0 {
				t.Fatalf("%d endpoints registered, want 0", got)
			}
		})
	}

	for name, token := range accepted {
		t.Run(name, func(t *testing.T) {
			a := n.NewAgent(t, func(c *agent.Config) { c.Token = token })
			if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, "127.0.0.1:1"); err != nil {
				t.Fatalf("serve foo: %v", err)
			}
			a.Close()
			n.WaitRoute(t, "foo", 0)
		})
	}
}

func mustRSA(t testing.TB) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A node that has only an RSA key refuses HS256 tokens outright, even one
// signed with the RSA public key's bytes.
func TestAgentAuthAlgorithmConfusion(t *testing.T) {
	now := time.Now()
	k := authtest.Keys()
	n := edgetest.NewNode(t, func(c *edge.Config) {
		c.Auth = &auth.Config{RSAPublicKey: &k.RSA.PublicKey, Now: fixedClock(now)}
	})
	der, _ := x509.MarshalPKIXPublicKey(&k.RSA.PublicKey)
	for name, secret := range map[string][]byte{
		"PEM": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"DER": der,
	} {
		t.Run(name, func(t *testing.T) {
			err := runAgent(t, n, authtest.Sign(t, jwt.SigningMethodHS256, secret, authtest.Claims(now, "foo"), ""))
			want := `token algorithm "HS256" is not accepted (this edge accepts PS256, PS384, PS512, RS256, RS384, RS512)`
			if !errors.Is(err, agent.ErrUnauthorized) || !strings.Contains(err.Error(), want) {
				t.Fatalf("Run = %v, want ErrUnauthorized saying %q", err, want)
			}
		})
	}
	if got := n.Server.Table().Len(); got != 0 {
		t.Fatalf("%d endpoints registered, want 0", got)
	}
}

// TestEndpointScope: the token's pico.endpoints decides, per endpoint,
// what an agent may register; a refusal leaves its other endpoints alone.
func TestEndpointScope(t *testing.T) {
	now := time.Now()
	n := edgetest.NewNode(t, authOpt(fixedClock(now)))
	up := edgetest.Upstream(t, echoHeaders())
	tests := map[string]struct {
		scope   []string
		allowed []string
		refused []string
	}{
		"IDs and a wildcard": {
			scope:   []string{"foo", "team-a-*"},
			allowed: []string{"foo", "team-a-x", "team-a-web-1"},
			refused: []string{"bar", "team-ab", "team-b-x", "team-a", "fo", "foo1"},
		},
		"wildcard without dash": {
			scope:   []string{"team-a*"},
			allowed: []string{"team-a", "team-ab", "team-a-x"},
			refused: []string{"team-b"},
		},
		"every endpoint": {scope: []string{"*"}, allowed: []string{"anything", "x"}},
		"empty list":     {scope: []string{}, refused: []string{"foo", "bar"}},
		"missing claim":  {scope: nil, refused: []string{"foo"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := authtest.Claims(now, tc.scope...)
			if tc.scope == nil {
				delete(c, "pico")
			}
			a := n.NewAgent(t, func(cfg *agent.Config) { cfg.Token = authtest.HS256(t, c) })
			for _, id := range tc.refused {
				err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, up)
				var se *quicutil.StatusError
				want := fmt.Sprintf("token does not allow endpoint %q (its pico.endpoints: ", id)
				if !errors.As(err, &se) || se.Code != quicutil.StatusForbidden || !strings.Contains(err.Error(), want) {
					t.Errorf("register %s: err = %v, want StatusForbidden saying %q", id, err, want)
				}
			}
			for _, id := range tc.allowed {
				if err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, up); err != nil {
					t.Errorf("register %s: %v", id, err)
				}
			}
			if got, want := n.Server.Table().Len(), len(tc.allowed); got != want {
				t.Errorf("%d endpoints registered, want %d", got, want)
			}
			a.Close()
			for _, id := range tc.allowed {
				n.WaitRoute(t, id, 0)
			}
		})
	}
}

// A token that expires closes its agent's connection (exp + leeway) and
// withdraws its endpoints; the agent, whose token is no good any more,
// stops with ErrUnauthorized.
func TestTokenExpiryDisconnects(t *testing.T) {
	const ahead = 28 * time.Second // the node's clock: 2 s of the 30 s leeway are left
	n := edgetest.NewNode(t, authOpt(func() time.Time { return time.Now().Add(ahead) }))
	now := time.Now()
	c := authtest.Claims(now.Add(-time.Minute), "foo")
	c["exp"] = now.Unix()
	a, err := agent.New(agent.Config{Edges: []string{n.AgentAddr}, RootCAs: n.CAPool, Token: authtest.HS256(t, c), Logger: edgetest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	done := make(chan error, 1)
	go func() { done <- a.Run(t.Context()) }()
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	n.WaitRoute(t, "foo", 0) // within about 2 s
	select {
	case err := <-done:
		if !errors.Is(err, agent.ErrUnauthorized) || !strings.Contains(err.Error(), "token expired at") {
			t.Fatalf("Run = %v, want ErrUnauthorized saying the token expired", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("agent Run did not return")
	}
}

// SetToken refreshes a live link: a refused token changes nothing, an
// accepted one moves the expiry and withdraws what it no longer allows.
func TestTokenRefresh(t *testing.T) {
	const ahead = 26 * time.Second // the first token has 4 s left
	n := edgetest.NewNode(t, authOpt(func() time.Time { return time.Now().Add(ahead) }))
	now := time.Now()
	c := authtest.Claims(now.Add(-time.Minute), "foo", "bar")
	c["exp"] = now.Unix()
	a := n.NewAgent(t, func(cfg *agent.Config) { cfg.Token = authtest.HS256(t, c) })
	up := edgetest.Upstream(t, echoHeaders())
	for _, id := range []string{"foo", "bar"} {
		if err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, up); err != nil {
			t.Fatal(err)
		}
	}

	bad := authtest.Sign(t, jwt.SigningMethodHS256, []byte("not-the-secret-not-the-secret-not-the-secret"), authtest.Claims(now, "foo"), "")
	err := a.SetToken(t.Context(), bad)
	if !errors.Is(err, agent.ErrUnauthorized) || !strings.Contains(err.Error(), "token signature is invalid") {
		t.Fatalf("SetToken(bad) = %v, want ErrUnauthorized", err)
	}
	n.WaitRoute(t, "bar", 1) // nothing changed

	fresh := authtest.Claims(now.Add(ahead), "foo") // bar is no longer allowed
	err = a.SetToken(t.Context(), authtest.HS256(t, fresh))
	var we *agent.WithdrawnError
	if !errors.As(err, &we) || we.Endpoint != "bar" || !strings.Contains(we.Reason, `the new token does not allow endpoint "bar"`) {
		t.Fatalf("SetToken(fresh) = %v, want bar withdrawn", err)
	}
	n.WaitRoute(t, "bar", 0)
	time.Sleep(5 * time.Second) // past the first token's expiry
	n.WaitRoute(t, "foo", 1)
	resp, _ := do(t, edgetest.Client(t), n.Request(t, "GET", "foo", "/", nil))
	if resp.StatusCode != 200 {
		t.Fatalf("after refresh: status %d, want 200", resp.StatusCode)
	}
}

// jwk encodes a public key as a JWK.
func jwk(kid string, key any) map[string]string {
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		raw, _ := k.Bytes()
		size := (len(raw) - 1) / 2
		return map[string]string{"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(raw[1 : 1+size]), "y": b64(raw[1+size:])}
	case ed25519.PublicKey:
		return map[string]string{"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(k)}
	case *rsa.PublicKey:
		return map[string]string{"kty": "RSA", "kid": kid, "alg": "RS256", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
	}
	panic("unknown key type")
}

// A JWKS URL (a loopback httptest server) is fetched on an unknown kid, at
// most once per JWKSMinRefresh: a key rotated in works once fetched, and a
// key rotated out stops working.
func TestJWKSRotation(t *testing.T) {
	k := authtest.Keys()
	_, ed2, _ := ed25519.GenerateKey(rand.Reader)
	var set atomic.Value
	set.Store([]map[string]string{jwk("k1", &k.EC.PublicKey), jwk("r1", &k.RSA.PublicKey)})
	var fetches atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		json.NewEncoder(w).Encode(map[string]any{"keys": set.Load()})
	}))
	t.Cleanup(srv.Close)

	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	n := edgetest.NewNode(t, func(c *edge.Config) {
		c.Auth = &auth.Config{JWKSURL: srv.URL, JWKSRefresh: time.Hour, Now: clock, Audience: authtest.Audience, Issuer: authtest.Issuer}
	})
	register := func(t *testing.T, token string) error {
		a := n.NewAgent(t, func(c *agent.Config) { c.Token = token })
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		err := a.ServeUpstream(ctx, "foo", quicutil.KindHTTP, "127.0.0.1:1")
		a.Close()
		n.WaitRoute(t, "foo", 0)
		return err
	}

	if err := register(t, authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(clock(), "foo"), "k1")); err != nil {
		t.Fatalf("ES256 with kid k1: %v", err)
	}
	if err := register(t, authtest.Sign(t, jwt.SigningMethodRS256, k.RSA, authtest.Claims(clock(), "foo"), "r1")); err != nil {
		t.Fatalf("RS256 with kid r1: %v", err)
	}
	if err := runAgent(t, n, authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(clock(), "foo"), "r1")); err == nil ||
		!strings.Contains(err.Error(), `token algorithm ES256 does not fit key "r1" (alg RS256)`) {
		t.Fatalf("ES256 with the RSA key's kid: %v", err)
	}

	set.Store([]map[string]string{jwk("k2", ed2.Public())}) // rotation: k1 out, k2 in
	before := fetches.Load()
	err := runAgent(t, n, authtest.Sign(t, jwt.SigningMethodEdDSA, ed2, authtest.Claims(clock(), "foo"), "k2"))
	if !errors.Is(err, agent.ErrUnauthorized) || !strings.Contains(err.Error(), `token key ID (kid) "k2" is unknown`) {
		t.Fatalf("k2 before a fetch is allowed: %v", err)
	}
	if got := fetches.Load(); got != before {
		t.Fatalf("%d fetches within JWKSMinRefresh of the last, want none", got-before)
	}

	offset.Store(int64(11 * time.Second)) // past JWKSMinRefresh
	if err := register(t, authtest.Sign(t, jwt.SigningMethodEdDSA, ed2, authtest.Claims(clock(), "foo"), "k2")); err != nil {
		t.Fatalf("EdDSA with kid k2 after rotation: %v", err)
	}
	err = runAgent(t, n, authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(clock(), "foo"), "k1"))
	if !errors.Is(err, agent.ErrUnauthorized) || !strings.Contains(err.Error(), `token key ID (kid) "k1" is unknown`) {
		t.Fatalf("k1 after rotation: %v", err)
	}

	var st struct {
		Auth struct {
			Agents     string   `json:"agents"`
			Algorithms []string `json:"algorithms"`
			JWKSKeys   int      `json:"jwks_keys"`
		} `json:"auth"`
	}
	getJSON(t, n.AdminURL+"/status/node", &st)
	if st.Auth.Agents != "jwt" || st.Auth.JWKSKeys != 1 || strings.Join(st.Auth.Algorithms, ",") != "EdDSA" {
		t.Fatalf("/status/node auth = %+v, want jwt with the one EdDSA key", st.Auth)
	}
}

func TestAuthConfigValidation(t *testing.T) {
	k := authtest.Keys()
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	tests := map[string]struct {
		auth auth.Config
		want string
	}{
		"no key":          {auth.Config{Issuer: "x"}, "Auth has no key"},
		"short secret":    {auth.Config{HMACSecret: []byte("short")}, "HMAC secret of 5 bytes (min 32)"},
		"small RSA":       {auth.Config{RSAPublicKey: &small.PublicKey}, "RSA key of 1024 bits (min 2048)"},
		"P-224":           {auth.Config{ECDSAPublicKey: &p224.PublicKey}, "ECDSA key on curve P-224"},
		"bad JWKS":        {auth.Config{JWKS: []byte(`{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}`)}, "P-256 coordinates of 1 and 1 bytes"},
		"not a JWKS":      {auth.Config{JWKS: []byte(`{"kty": "EC"}`)}, `no "keys" array`},
		"JWKS URL":        {auth.Config{JWKSURL: "file:///etc/keys"}, "want http:// or https://"},
		"negative leeway": {auth.Config{HMACSecret: k.HMAC, Leeway: -time.Second}, "Auth.Leeway is negative"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := edge.New(edge.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil }, Auth: &tc.auth})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// A JWKS from a file (no URL) verifies tokens by kid, and an unknown kid
// is refused at once.
func TestJWKSFile(t *testing.T) {
	k := authtest.Keys()
	now := time.Now()
	b, _ := json.Marshal(map[string]any{"keys": []any{
		jwk("e1", &k.EC.PublicKey),
		map[string]string{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}, // skipped: no secrets in a key set
		map[string]string{"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
	}})
	n := edgetest.NewNode(t, func(c *edge.Config) { c.Auth = &auth.Config{JWKS: b, Now: fixedClock(now)} })
	a := n.NewAgent(t, func(c *agent.Config) {
		c.Token = authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(now, "foo"), "e1")
	})
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	// No kid: the one ES256 key of the set.
	b2 := n.NewAgent(t, func(c *agent.Config) {
		c.Token = authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(now, "bar"), "")
	})
	if err := b2.ServeUpstream(t.Context(), "bar", quicutil.KindHTTP, "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	err := runAgent(t, n, authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(now, "foo"), "nope"))
	if !errors.Is(err, agent.ErrUnauthorized) || !strings.Contains(err.Error(), `token key ID (kid) "nope" is unknown`) {
		t.Fatalf("unknown kid: %v", err)
	}
	err = runAgent(t, n, authtest.Sign(t, jwt.SigningMethodHS256, []byte("c2VjcmV0"), authtest.Claims(now, "foo"), "s"))
	if !errors.Is(err, agent.ErrUnauthorized) || !strings.Contains(err.Error(), `token key ID (kid) "s" is unknown`) {
		t.Fatalf("HS256 with the oct key's kid: %v", err)
	}
	err = runAgent(t, n, authtest.Sign(t, jwt.SigningMethodHS256, []byte("c2VjcmV0"), authtest.Claims(now, "foo"), ""))
	if !errors.Is(err, agent.ErrUnauthorized) || !strings.Contains(err.Error(), `token algorithm "HS256" is not accepted (this edge accepts ES256)`) {
		t.Fatalf("HS256 without kid: %v", err)
	}
}

// TestClientAuth: with proxy auth on, requests need a token that allows
// their endpoint, over HTTP/1.1, HTTP/2 and HTTP/3; the Pico token never
// reaches the upstream.
func TestClientAuth(t *testing.T) {
	now := time.Now()
	n := edgetest.NewNode(t, authOpt(fixedClock(now), func(c *auth.Config) { c.ProxyAuth = true }))
	up := edgetest.Upstream(t, echoHeaders())
	a := n.NewAgent(t, func(c *agent.Config) { c.Token = authtest.HS256(t, authtest.Claims(now, "foo", "bar")) })
	for _, id := range []string{"foo", "bar"} {
		if err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, up); err != nil {
			t.Fatal(err)
		}
	}
	good := authtest.HS256(t, authtest.Claims(now, "foo", "nowhere"))
	expired := authtest.Claims(now.Add(-2*time.Hour), "foo")

	type result struct {
		status  int
		auth    string // WWW-Authenticate
		body    string
		headers http.Header // seen upstream
	}
	tests := map[string]struct {
		endpoint string
		header   map[string]string
		accept   string
		check    func(t *testing.T, r result)
	}{
		"no token": {endpoint: "foo", check: func(t *testing.T, r result) {
			want(t, r.status, 401, r.auth, `Bearer realm="pico"`, r.body, "unauthorized: no token")
		}},
		"no token, unknown endpoint": {endpoint: "nowhere", check: func(t *testing.T, r result) {
			want(t, r.status, 401, r.auth, `Bearer realm="pico"`, r.body, "unauthorized: no token")
		}},
		"bad signature": {endpoint: "foo", header: map[string]string{"Authorization": "Bearer " + good[:len(good)-4] + "AAAA"}, check: func(t *testing.T, r result) {
			want(t, r.status, 401, r.auth, `Bearer realm="pico", error="invalid_token", error_description="token signature is invalid"`, r.body, "unauthorized: token signature is invalid")
		}},
		"expired": {endpoint: "foo", header: map[string]string{"X-Pico-Authorization": "Bearer " + authtest.HS256(t, expired)}, check: func(t *testing.T, r result) {
			want(t, r.status, 401, r.auth, `error_description="token expired at `, r.body, "unauthorized: token expired at")
		}},
		"not bearer": {endpoint: "foo", header: map[string]string{"Authorization": "Basic dXNlcjpwYXNz"}, check: func(t *testing.T, r result) {
			want(t, r.status, 401, r.auth, `error="invalid_token", error_description="Authorization is not 'Bearer <token>'"`, r.body, "unauthorized")
		}},
		"JSON error": {endpoint: "foo", accept: "application/json", check: func(t *testing.T, r result) {
			want(t, r.status, 401, r.auth, `Bearer realm="pico"`, r.body, `{"status":401,"error":"unauthorized: no token`)
		}},
		"endpoint not in the token": {endpoint: "bar", header: map[string]string{"Authorization": "Bearer " + good}, check: func(t *testing.T, r result) {
			want(t, r.status, 403, r.auth, `Bearer realm="pico", error="insufficient_scope", error_description="token does not allow endpoint 'bar' (its pico.endpoints: foo, nowhere)"`,
				r.body, `forbidden: token does not allow endpoint "bar"`)
		}},
		"valid, unknown endpoint": {endpoint: "nowhere", header: map[string]string{"Authorization": "Bearer " + good}, check: func(t *testing.T, r result) {
			want(t, r.status, 502, r.auth, "", r.body, `no upstream for endpoint "nowhere"`)
		}},
		"Authorization carries the token": {endpoint: "foo", header: map[string]string{"Authorization": "Bearer " + good}, check: func(t *testing.T, r result) {
			want(t, r.status, 200, r.auth, "", r.body, "")
			if v := r.headers.Get("Authorization"); v != "" {
				t.Errorf("upstream saw Authorization %q, want none", v)
			}
		}},
		"X-Pico-Authorization wins, Authorization passes": {endpoint: "foo",
			header: map[string]string{"X-Pico-Authorization": "Bearer " + good, "Authorization": "Bearer upstream-token"}, check: func(t *testing.T, r result) {
				want(t, r.status, 200, r.auth, "", r.body, "")
				if v := r.headers.Get("Authorization"); v != "Bearer upstream-token" {
					t.Errorf("upstream saw Authorization %q, want the client's own", v)
				}
				if v := r.headers.Get("X-Pico-Authorization"); v != "" {
					t.Errorf("upstream saw X-Pico-Authorization %q", v)
				}
			}},
		"X-Pico-Authorization bad, Authorization good": {endpoint: "foo",
			header: map[string]string{"X-Pico-Authorization": "Bearer nope", "Authorization": "Bearer " + good}, check: func(t *testing.T, r result) {
				want(t, r.status, 401, r.auth, `error="invalid_token"`, r.body, "token is malformed")
			}},
	}
	cls := clients(t, n)
	cls["plain HTTP/1.1"] = edgetest.Client(t)
	for proto, c := range cls {
		t.Run(proto, func(t *testing.T) {
			base := n.TLSURL
			if proto == "plain HTTP/1.1" {
				base = n.ProxyURL
			}
			for name, tc := range tests {
				t.Run(name, func(t *testing.T) {
					req, _ := http.NewRequest("GET", base+"/", nil)
					req.Header.Set(edge.EndpointHeader, tc.endpoint)
					for k, v := range tc.header {
						req.Header.Set(k, v)
					}
					if tc.accept != "" {
						req.Header.Set("Accept", tc.accept)
					}
					resp, body := do(t, c, req)
					if resp.Proto != proto && proto != "plain HTTP/1.1" {
						t.Fatalf("proto %s, want %s", resp.Proto, proto)
					}
					r := result{status: resp.StatusCode, auth: resp.Header.Get("WWW-Authenticate"), body: body}
					if resp.StatusCode == 200 {
						var e echoed
						json.Unmarshal([]byte(body), &e)
						r.headers = e.Header
					}
					tc.check(t, r)
				})
			}
		})
	}
}

func want(t *testing.T, status, wantStatus int, auth, wantAuth, body, wantBody string) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("status = %d, want %d (body %q)", status, wantStatus, body)
	}
	if wantAuth == "" && auth != "" || !strings.Contains(auth, wantAuth) {
		t.Errorf("WWW-Authenticate = %q, want %q", auth, wantAuth)
	}
	if !strings.Contains(body, wantBody) {
		t.Errorf("body = %q, want it to contain %q", body, wantBody)
	}
}

// TestForwardAuth: with proxy auth on, a TCP forward needs a token (in
// its stream header) that allows its endpoint.
func TestForwardAuth(t *testing.T) {
	now := time.Now()
	n := edgetest.NewNode(t, authOpt(fixedClock(now), func(c *auth.Config) { c.ProxyAuth = true }))
	server := n.NewAgent(t, func(c *agent.Config) { c.Token = authtest.HS256(t, authtest.Claims(now, "db", "other")) })
	echo := echoServer(t)
	for _, id := range []string{"db", "other"} {
		if err := server.ServeUpstream(t.Context(), id, quicutil.KindTCP, echo); err != nil {
			t.Fatal(err)
		}
	}
	fwd := n.NewAgent(t, func(c *agent.Config) { c.Token = authtest.HS256(t, authtest.Claims(now, "db")) })

	t.Run("allowed", func(t *testing.T) {
		c, err := fwd.Dial(t.Context(), "db")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "ping\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("echo: %q %v", line, err)
		}
	})
	t.Run("endpoint not in the token", func(t *testing.T) {
		_, err := fwd.Dial(t.Context(), "other")
		var de *agent.DialError
		if !errors.As(err, &de) || de.Code != quicutil.StatusForbidden || !strings.Contains(de.Reason, `token does not allow endpoint "other" (its pico.endpoints: db)`) {
			t.Fatalf("Dial(other) = %v, want StatusForbidden", err)
		}
	})
	t.Run("no token on the connection", func(t *testing.T) {
		err := runAgent(t, n, "")
		if !errors.Is(err, agent.ErrUnauthorized) || !strings.Contains(err.Error(), "no token") {
			t.Fatalf("Run = %v, want ErrUnauthorized", err)
		}
	})
	// A connection whose Hello had a token, opening streams with none or
	// a bad one in their header.
	conn := helloRaw(t, n, authtest.HS256(t, authtest.Claims(now, "db")))
	for name, tc := range map[string]struct {
		token string
		code  quicutil.Status
		want  string
	}{
		"stream without token":   {"", quicutil.StatusUnauthorized, "no token: this edge requires one"},
		"stream with bad token":  {"x.y.z", quicutil.StatusUnauthorized, "token is malformed"},
		"stream with wrong aud":  {authtest.HS256(t, func() jwt.MapClaims { c := authtest.Claims(now, "db"); c["aud"] = "x"; return c }()), quicutil.StatusUnauthorized, `token audience ["x"] does not include "edge"`},
		"stream with good token": {authtest.HS256(t, authtest.Claims(now, "db")), quicutil.StatusOK, ""},
	} {
		t.Run(name, func(t *testing.T) {
			str, err := conn.OpenStreamSync(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer str.CancelRead(0)
			defer str.Close()
			str.Write((&quicutil.StreamHeader{Kind: quicutil.KindTCP, Endpoint: "db", Token: tc.token}).Append(nil))
			err = quicutil.ReadAnswer(str)
			var se *quicutil.StatusError
			switch {
			case tc.code == quicutil.StatusOK && err != nil:
				t.Fatalf("answer = %v, want OK", err)
			case tc.code != quicutil.StatusOK && (!errors.As(err, &se) || se.Code != tc.code || !strings.Contains(se.Message, tc.want)):
				t.Fatalf("answer = %v, want %s saying %q", err, tc.code, tc.want)
			}
		})
	}
}

// helloRaw opens an agent connection to n with token, by hand.
func helloRaw(t *testing.T, n *edgetest.Node, token string) *quic.Conn {
	t.Helper()
	tlsConf := &tls.Config{RootCAs: n.CAPool, ServerName: "127.0.0.1", NextProtos: []string{quicutil.ALPNAgent}}
	conn, err := quic.DialAddr(t.Context(), n.AgentAddr, tlsConf, quicutil.AgentConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	ctrl, err := conn.OpenStreamSync(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	hello, _ := quicutil.AppendMessage((&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil), &quicutil.Hello{Token: token, AgentID: "raw"})
	ctrl.Write(hello)
	if _, err := quicutil.ReadMessage(bufio.NewReader(ctrl)); err != nil {
		t.Fatalf("welcome: %v", err)
	}
	return conn
}

// TestAuthStatus: /status says whether the node checks tokens.
func TestAuthStatus(t *testing.T) {
	for name, tc := range map[string]struct {
		opts          []func(*edge.Config)
		mode, clients string
	}{
		"none":              {nil, "none", "none"},
		"agents":            {[]func(*edge.Config){authOpt(time.Now)}, "jwt (agents)", "none"},
		"agents and client": {[]func(*edge.Config){authOpt(time.Now, func(c *auth.Config) { c.ProxyAuth = true })}, "jwt (agents and clients)", "jwt"},
	} {
		t.Run(name, func(t *testing.T) {
			n := edgetest.NewNode(t, tc.opts...)
			var agents struct {
				Auth string `json:"auth"`
			}
			getJSON(t, n.AdminURL+"/status/agents", &agents)
			var node struct {
				Auth struct{ Agents, Clients string } `json:"auth"`
			}
			getJSON(t, n.AdminURL+"/status/node", &node)
			if agents.Auth != tc.mode || node.Auth.Clients != tc.clients || (node.Auth.Agents == "none") != (tc.mode == "none") {
				t.Fatalf("/status/agents auth %q, /status/node %+v; want %q, clients %q", agents.Auth, node.Auth, tc.mode, tc.clients)
			}
		})
	}
}

// TestEndpointTakeoverAcrossNodes: an agent on node 1 whose token does not
// allow foo (or that has no good token) never gets foo's traffic, however
// often it tries while the legitimate agent serves foo on node 0.
func TestEndpointTakeoverAcrossNodes(t *testing.T) {
	now := time.Now()
	c := edgetest.NewCluster(t, 2, authOpt(fixedClock(now)))
	var legit, stolen atomic.Int64
	legitUp := edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { legit.Add(1) }))
	thiefUp := edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { stolen.Add(1) }))

	owner := c.Nodes[0].NewAgent(t, singleLink, func(cfg *agent.Config) { cfg.Token = authtest.HS256(t, authtest.Claims(now, "foo")) })
	if err := owner.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, legitUp); err != nil {
		t.Fatal(err)
	}
	c.Nodes[1].WaitRemote(t, "foo", 1)

	tokens := map[string]string{
		"other endpoints": authtest.HS256(t, authtest.Claims(now, "bar", "fo-*")),
		"no endpoints":    authtest.HS256(t, authtest.Claims(now)),
		"bad signature":   authtest.Sign(t, jwt.SigningMethodHS256, []byte("guessed-secret-guessed-secret-guessed"), authtest.Claims(now, "foo"), ""),
		"alg none":        authtest.Unsigned(authtest.Claims(now, "foo")),
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	stop := make(chan struct{})
	for name, tok := range tokens {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				a, err := agent.New(agent.Config{Edges: []string{c.Nodes[1].AgentAddr}, RootCAs: c.Nodes[1].CAPool,
					Token: tok, Connections: 1, Logger: edgetest.Logger(t)})
				if err != nil {
					errs <- err
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				runDone := make(chan error, 1)
				go func() { runDone <- a.Run(ctx) }()
				err = a.ServeUpstream(ctx, "foo", quicutil.KindHTTP, thiefUp)
				if err == nil {
					errs <- fmt.Errorf("%s: attempt %d registered foo", name, i)
				}
				cancel()
				a.Close()
				<-runDone
			}
		})
	}
	cl := edgetest.Client(t)
	for i := range 60 {
		resp, _ := do(t, cl, c.Nodes[i%2].Request(t, "GET", "foo", "/", nil))
		if resp.StatusCode != 200 {
			t.Errorf("request %d via node %d: status %d", i, i%2, resp.StatusCode)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := stolen.Load(); n != 0 {
		t.Fatalf("the thief's upstream got %d requests", n)
	}
	if n := legit.Load(); n != 60 {
		t.Fatalf("the owner's upstream got %d requests, want 60", n)
	}
	if _, targets, _ := c.Nodes[1].Server.Table().Lookup("foo"); len(targets) != 0 {
		t.Fatalf("node 1 has %d local agents for foo, want 0", len(targets))
	}
}
