package auth_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/golang-jwt/jwt/v5"

	"github.com/pico-edge/pico/edge/auth"
	"github.com/pico-edge/pico/edge/auth/authtest"
)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

// testConfig verifies with the HMAC, RSA and Ed25519 test keys at clock.
func testConfig(clock func() time.Time) auth.Config {
	k := authtest.Keys()
	return auth.Config{
		HMACSecret:       k.HMAC,
		RSAPublicKey:     &k.RSA.PublicKey,
		Ed25519PublicKey: k.Ed.Public().(ed25519.PublicKey),
		Issuer:           authtest.Issuer,
		Audience:         authtest.Audience,
		Now:              clock,
	}
}

// newVerifier returns the Verifier of cfg, closed at cleanup.
func newVerifier(t testing.TB, cfg auth.Config) *auth.Verifier {
	t.Helper()
	v, err := auth.New(cfg, metrics.NewSet(), nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

func mustRSA(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestVerifyMatrix: every bad token is refused with a precise reason;
// tokens within the leeway pass.
func TestVerifyMatrix(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	v := newVerifier(t, testConfig(fixedClock(now)))
	refused, accepted := authtest.Matrix(t, now)
	for name, tc := range refused {
		t.Run(name, func(t *testing.T) {
			g, err := v.Verify(tc.Token)
			if err == nil || !strings.Contains(err.Error(), tc.Want) {
				t.Fatalf("Verify = %v, want an error saying %q", err, tc.Want)
			}
			if len(err.Error()) > 400 {
				t.Fatalf("reason of %d bytes, want at most 400", len(err.Error()))
			}
			if g.Scope().String() != "none" || !g.Expires().IsZero() || g.Subject() != "" {
				t.Fatalf("Verify refused but returned a grant: %s, %s, %q", g.Scope(), g.Expires(), g.Subject())
			}
		})
	}

	for name, token := range accepted {
		t.Run(name, func(t *testing.T) {
			g, err := v.Verify(token)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if !g.Scope().Allows("foo") || g.Subject() != "test" || g.Expires().IsZero() {
				t.Fatalf("grant: scope %s, subject %q, expires %s; want foo, test and an expiry", g.Scope(), g.Subject(), g.Expires())
			}
		})
	}
}

// A verifier that has only an RSA key refuses HS256 tokens outright, even
// one signed with the RSA public key's bytes.
func TestVerifyAlgorithmConfusion(t *testing.T) {
	now := time.Now()
	k := authtest.Keys()
	v := newVerifier(t, auth.Config{RSAPublicKey: &k.RSA.PublicKey, Now: fixedClock(now)})
	der, _ := x509.MarshalPKIXPublicKey(&k.RSA.PublicKey)
	for name, secret := range map[string][]byte{
		"PEM": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"DER": der,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := v.Verify(authtest.Sign(t, jwt.SigningMethodHS256, secret, authtest.Claims(now, "foo"), ""))
			want := `token algorithm "HS256" is not accepted (this edge accepts PS256, PS384, PS512, RS256, RS384, RS512)`
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("Verify = %v, want an error saying %q", err, want)
			}
		})
	}
}

func TestVerifyExpiry(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	v := newVerifier(t, testConfig(fixedClock(now)))
	c := authtest.Claims(now, "foo")
	c["exp"] = now.Add(10 * time.Minute).Unix()
	g, err := v.Verify(authtest.HS256(t, c))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := g.Expires(), now.Add(10*time.Minute); !got.Equal(want) {
		t.Fatalf("Expires = %s, want %s", got, want)
	}
	if cfg := v.Config(); cfg.Leeway != 30*time.Second || cfg.Now().Compare(now) != 0 {
		t.Fatalf("Config: leeway %s, now %s; want 30s and the test clock", cfg.Leeway, cfg.Now())
	}
}

// TestScopeAllows: pico.endpoints decides, per endpoint, what a token
// allows.
func TestScopeAllows(t *testing.T) {
	now := time.Now()
	v := newVerifier(t, testConfig(fixedClock(now)))
	tests := map[string]struct {
		scope   []string
		str     string
		allowed []string
		refused []string
	}{
		"IDs and a wildcard": {
			scope:   []string{"foo", "team-a-*"},
			str:     "foo, team-a-*",
			allowed: []string{"foo", "team-a-x", "team-a-web-1"},
			refused: []string{"bar", "team-ab", "team-b-x", "team-a", "fo", "foo1"},
		},
		"wildcard without dash": {
			scope:   []string{"team-a*"},
			str:     "team-a*",
			allowed: []string{"team-a", "team-ab", "team-a-x"},
			refused: []string{"team-b"},
		},
		"every endpoint": {scope: []string{"*"}, str: "*", allowed: []string{"anything", "x"}},
		"empty list":     {scope: []string{}, str: "none", refused: []string{"foo", "bar"}},
		"missing claim":  {scope: nil, str: "none", refused: []string{"foo"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := authtest.Claims(now, tc.scope...)
			if tc.scope == nil {
				delete(c, "pico")
			}
			g, err := v.Verify(authtest.HS256(t, c))
			if err != nil {
				t.Fatal(err)
			}
			sc := g.Scope()
			if got := sc.String(); got != tc.str {
				t.Errorf("String = %q, want %q", got, tc.str)
			}
			for _, id := range tc.allowed {
				if !sc.Allows(id) {
					t.Errorf("Allows(%q) = false, want true", id)
				}
			}
			for _, id := range tc.refused {
				if sc.Allows(id) {
					t.Errorf("Allows(%q) = true, want false", id)
				}
				want := `token does not allow endpoint "` + id + `" (its pico.endpoints: ` + tc.str + ")"
				if got := auth.Forbidden(sc, id); got != want {
					t.Errorf("Forbidden = %q, want %q", got, want)
				}
			}
		})
	}
	var zero auth.Scope
	if zero.Allows("foo") || zero.String() != "none" {
		t.Errorf("zero Scope: Allows(foo) %t, String %q; want false, none", zero.Allows("foo"), zero.String())
	}
}

func TestScopeStringCut(t *testing.T) {
	now := time.Now()
	v := newVerifier(t, testConfig(fixedClock(now)))
	var ids []string
	for i := range 100 {
		ids = append(ids, "endpoint-"+strings.Repeat("x", i%5+1))
	}
	g, err := v.Verify(authtest.HS256(t, authtest.Claims(now, ids...)))
	if err != nil {
		t.Fatal(err)
	}
	if s := g.Scope().String(); len(s) != 203 || !strings.HasSuffix(s, "...") {
		t.Fatalf("String of %d bytes %q, want 200 and \"...\"", len(s), s)
	}
}

func TestValidateEndpointPattern(t *testing.T) {
	tests := map[string]string{ // pattern: part of the error, "" for none
		"*":                            "",
		"foo":                          "",
		"team-a-*":                     "",
		"team-a*":                      "",
		"a":                            "",
		strings.Repeat("a", 63):        "",
		strings.Repeat("a", 62) + "*":  "",
		strings.Repeat("a", 64):        "is 64 characters (max 63)",
		strings.Repeat("a", 63) + "*":  "prefix of 63 characters (max 62)",
		"":                             `entry "" is neither an endpoint ID nor a prefix wildcard: endpoint ID is empty`,
		"-*":                           `entry "-*": prefix "-" has "-"`,
		"**":                           `prefix "*" has "*"`,
		"team-*-x":                     `entry "team-*-x" is neither an endpoint ID nor a prefix wildcard`,
		"Team_A":                       `endpoint ID "Team_A" has "T"`,
		"foo-":                         `endpoint ID "foo-" starts or ends with '-'`,
		"-foo":                         `starts or ends with '-'`,
		"f\u00f6o":                     `has "\xc3"`,
		"a b":                          `has " "`,
		"the prefix before '*' empty?": `has " "`,
	}
	for p, want := range tests {
		t.Run(p, func(t *testing.T) {
			err := auth.ValidateEndpointPattern(p)
			switch {
			case want == "" && err != nil:
				t.Fatalf("got %v, want nil", err)
			case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
				t.Fatalf("got %v, want an error saying %q", err, want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	k := authtest.Keys()
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	tests := map[string]struct {
		cfg  auth.Config
		want string
	}{
		"no key":               {auth.Config{Issuer: "x"}, "Auth has no key (HMAC secret, public key or JWKS)"},
		"zero":                 {auth.Config{}, "Auth has no key"},
		"short secret":         {auth.Config{HMACSecret: []byte("short")}, "HMAC secret of 5 bytes (min 32)"},
		"small RSA":            {auth.Config{RSAPublicKey: &small.PublicKey}, "RSA key of 1024 bits (min 2048)"},
		"P-224":                {auth.Config{ECDSAPublicKey: &p224.PublicKey}, "ECDSA key on curve P-224 (want P-256, P-384 or P-521)"},
		"short Ed25519":        {auth.Config{Ed25519PublicKey: make(ed25519.PublicKey, 31)}, "Ed25519 key of 31 bytes"},
		"bad JWKS":             {auth.Config{JWKS: []byte(`{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}`)}, "JWKS: key 0: P-256 coordinates of 1 and 1 bytes"},
		"not a JWKS":           {auth.Config{JWKS: []byte(`{"kty": "EC"}`)}, `no "keys" array`},
		"JWKS URL":             {auth.Config{JWKSURL: "file:///etc/keys"}, `JWKS URL "file:///etc/keys": want http:// or https://`},
		"negative leeway":      {auth.Config{HMACSecret: k.HMAC, Leeway: -time.Second}, "Auth.Leeway is negative (-1s)"},
		"negative lifetime":    {auth.Config{HMACSecret: k.HMAC, MaxLifetime: -time.Second}, "Auth.MaxLifetime is negative"},
		"negative refresh":     {auth.Config{JWKSURL: "http://127.0.0.1:1/", JWKSRefresh: -time.Second}, "Auth.JWKSRefresh is negative"},
		"negative min refresh": {auth.Config{JWKSURL: "http://127.0.0.1:1/", JWKSMinRefresh: -time.Second}, "Auth.JWKSMinRefresh is negative"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error saying %q", err, tc.want)
			}
			if _, err := auth.New(tc.cfg, nil, nil); err == nil {
				t.Fatalf("New accepted the config")
			}
		})
	}
	for name, cfg := range map[string]auth.Config{
		"HMAC":     {HMACSecret: k.HMAC[:auth.MinHMACSecret]},
		"RSA":      {RSAPublicKey: &k.RSA.PublicKey},
		"ECDSA":    {ECDSAPublicKey: &k.EC.PublicKey},
		"Ed25519":  {Ed25519PublicKey: k.Ed.Public().(ed25519.PublicKey)},
		"JWKS URL": {JWKSURL: "https://issuer.example/jwks.json"},
	} {
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: Validate = %v, want nil", name, err)
		}
	}
}

func TestConfigWithDefaults(t *testing.T) {
	c := auth.Config{}.WithDefaults()
	if c.JWKSRefresh != 5*time.Minute || c.JWKSMinRefresh != 10*time.Second || c.Leeway != 30*time.Second ||
		c.MaxLifetime != 24*time.Hour || c.Now == nil || c.JWKSClient == nil || c.JWKSClient.Timeout != 10*time.Second {
		t.Fatalf("WithDefaults = %+v", c)
	}
	set := auth.Config{Leeway: time.Second, MaxLifetime: time.Hour, JWKSRefresh: time.Minute, JWKSMinRefresh: time.Second}.WithDefaults()
	if set.Leeway != time.Second || set.MaxLifetime != time.Hour || set.JWKSRefresh != time.Minute || set.JWKSMinRefresh != time.Second {
		t.Fatalf("WithDefaults changed set fields: %+v", set)
	}
}

func TestBearer(t *testing.T) {
	tests := map[string]struct {
		vals      []string
		token     string
		wantError string
	}{
		"bearer":          {[]string{"Bearer abc"}, "abc", ""},
		"any case":        {[]string{"bEaReR abc"}, "abc", ""},
		"spaces":          {[]string{"  Bearer   abc  "}, "abc", ""},
		"none":            {nil, "", "no token: send X-Pico-Authorization: Bearer <token> (or Authorization: Bearer <token>)"},
		"two":             {[]string{"Bearer a", "Bearer b"}, "", "2 Authorization headers; send one"},
		"basic":           {[]string{"Basic dXNlcjpwYXNz"}, "", `Authorization is not "Bearer <token>"`},
		"no token":        {[]string{"Bearer"}, "", `Authorization is not "Bearer <token>"`},
		"only the scheme": {[]string{"Bearer    "}, "", `Authorization is not "Bearer <token>"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tok, err := auth.Bearer("Authorization", tc.vals)
			switch {
			case tc.wantError == "" && (err != nil || tok != tc.token):
				t.Fatalf("got %q, %v; want %q", tok, err, tc.token)
			case tc.wantError != "" && (err == nil || err.Error() != tc.wantError):
				t.Fatalf("got %q, %v; want the error %q", tok, err, tc.wantError)
			}
		})
	}
}

// TestRefusedMetrics: the counters keep the names edge had, one per who.
func TestRefusedMetrics(t *testing.T) {
	set := metrics.NewSet()
	v, err := auth.New(testConfig(time.Now), set, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.Refused(auth.WhoAgent)
	v.Refused(auth.WhoClient)
	v.Refused(auth.WhoClient)
	v.Refused(auth.WhoRefresh)
	var b bytes.Buffer
	set.WritePrometheus(&b)
	for _, want := range []string{
		`pico_auth_refused_total{who="agent"} 1`,
		`pico_auth_refused_total{who="client"} 2`,
		`pico_auth_refused_total{who="forward"} 0`,
		`pico_auth_refused_total{who="refresh"} 1`,
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, b.String())
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("Refused(\"nobody\") did not panic")
		}
	}()
	v.Refused("nobody")
}

func TestStatusAndMode(t *testing.T) {
	var none *auth.Verifier
	if st := none.Status(); st.Agents != "none" || st.Clients != "none" || none.Mode() != "none" {
		t.Fatalf("nil Verifier: Status %+v, Mode %q; want none", st, none.Mode())
	}
	b, _ := json.Marshal(none.Status())
	if got, want := string(b), `{"agents":"none","clients":"none"}`; got != want {
		t.Fatalf("JSON %s, want %s", got, want)
	}
	v := newVerifier(t, testConfig(time.Now))
	st := v.Status()
	if st.Agents != "jwt" || st.Clients != "none" || st.Issuer != authtest.Issuer || st.Audience != authtest.Audience ||
		strings.Join(st.Algorithms, ",") != "EdDSA,HS256,HS384,HS512,PS256,PS384,PS512,RS256,RS384,RS512" || v.Mode() != "jwt (agents)" {
		t.Fatalf("Status %+v, Mode %q", st, v.Mode())
	}
	cfg := testConfig(time.Now)
	cfg.ProxyAuth = true
	v = newVerifier(t, cfg)
	if st := v.Status(); st.Clients != "jwt" || v.Mode() != "jwt (agents and clients)" {
		t.Fatalf("with ProxyAuth: Status %+v, Mode %q", st, v.Mode())
	}
	b, _ = json.Marshal(v.Status())
	var m map[string]any
	json.Unmarshal(b, &m)
	for _, key := range []string{"agents", "clients", "algorithms", "issuer", "audience"} {
		if _, ok := m[key]; !ok {
			t.Errorf("JSON %s lacks %q", b, key)
		}
	}
	for _, key := range []string{"jwks_url", "jwks_keys", "jwks_fetched", "jwks_error"} {
		if _, ok := m[key]; ok {
			t.Errorf("JSON %s has %q without a JWKS", b, key)
		}
	}
}

// TestRunClose: Run blocks until Close; Close waits for Run, is safe more
// than once and before Run; Run after Close returns at once.
func TestRunClose(t *testing.T) {
	v, err := auth.New(testConfig(time.Now), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { v.Run(); close(done) }()
	select {
	case <-done:
		t.Fatal("Run returned before Close")
	case <-time.After(50 * time.Millisecond):
	}
	v.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	v.Close()
	v.Run() // after Close: returns at once

	w, err := auth.New(testConfig(time.Now), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Close() // before Run
	w.Close()
	w.Run()
}
