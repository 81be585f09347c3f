package auth_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pico-edge/pico/edge/auth"
	"github.com/pico-edge/pico/edge/auth/authtest"
)

// jwk encodes a public key as a JWK.
func jwk(kid string, key any) map[string]string {
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		raw, _ := k.Bytes()
		size := (len(raw) - 1) / 2
		return map[string]string{"kty": "EC", "crv": k.Curve.Params().Name, "kid": kid, "x": b64(raw[1 : 1+size]), "y": b64(raw[1+size:])}
	case ed25519.PublicKey:
		return map[string]string{"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(k)}
	case *rsa.PublicKey:
		return map[string]string{"kty": "RSA", "kid": kid, "alg": "RS256", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
	}
	panic("unknown key type")
}

func jwks(keys ...any) []byte {
	b, _ := json.Marshal(map[string]any{"keys": keys})
	return b
}

// TestJWKSParse checks what a key set may hold, through Config.Validate
// (which parses Config.JWKS) and the algorithms of the keys kept.
func TestJWKSParse(t *testing.T) {
	k := authtest.Keys()
	ec := jwk("e1", &k.EC.PublicKey)
	ed := jwk("d1", k.Ed.Public())
	rs := jwk("r1", &k.RSA.PublicKey)
	with := func(m map[string]string, kv ...string) map[string]string {
		c := map[string]string{}
		for k, v := range m {
			c[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			c[kv[i]] = kv[i+1]
		}
		return c
	}
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	tests := map[string]struct {
		set     []byte
		algs    string // of the keys kept, "" for none
		wantErr string
	}{
		"three keys":       {jwks(ec, ed, rs), "ES256,EdDSA,RS256", ""},
		"oct skipped":      {jwks(ec, map[string]string{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}), "ES256", ""},
		"enc skipped":      {jwks(with(rs, "use", "enc"), ed), "EdDSA", ""},
		"sig kept":         {jwks(with(ec, "use", "sig")), "ES256", ""},
		"weak RSA skipped": {jwks(jwk("w", &weak.PublicKey), ec), "ES256", ""},
		"X25519 skipped":   {jwks(with(ed, "crv", "X25519"), ec), "ES256", ""},
		"P-192 skipped":    {jwks(with(ec, "crv", "P-192"), ed), "EdDSA", ""},
		"empty set":        {[]byte(`{"keys": []}`), "", ""},
		"RSA without alg":  {jwks(with(rs, "alg", "")), "PS256,PS384,PS512,RS256,RS384,RS512", ""},
		"not JSON":         {[]byte(`{`), "", "not a JSON Web Key Set"},
		"no keys":          {[]byte(`{"kty": "EC"}`), "", `no "keys" array`},
		"key not object":   {[]byte(`{"keys": [1]}`), "", "key 0:"},
		"short EC":         {jwks(with(ec, "x", "AA", "y", "AA")), "", `key "e1": P-256 coordinates of 1 and 1 bytes, want 32`},
		"EC off curve":     {jwks(with(ec, "y", ec["x"])), "", `key "e1": P-256 point`},
		"bad base64":       {jwks(with(ed, "x", "!!")), "", `key "d1": field x is not base64url`},
		"short Ed25519":    {jwks(with(ed, "x", "AAAA")), "", "Ed25519 key of 3 bytes"},
		"RSA exponent":     {jwks(with(rs, "e", "AQ")), "", "RSA exponent out of range"},
		"alg misfit":       {jwks(with(ec, "alg", "RS256")), "", `key "e1": alg RS256 does not fit a EC key`},
		"kid twice":        {jwks(ec, with(ed, "kid", "e1")), "", `key "e1": the kid is used twice`},
		"unnamed bad key":  {jwks(with(ed, "kid", "", "x", "")), "", "key 0: field x is not base64url"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := auth.Config{JWKS: tc.set}
			err := cfg.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Validate = %v, want an error saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Validate = %v", err)
			}
			v := newVerifier(t, cfg)
			got := map[string]bool{}
			for _, a := range v.Algorithms() {
				got[a] = true
			}
			want := map[string]bool{}
			for _, a := range strings.Split(tc.algs, ",") {
				if a != "" {
					want[a] = true
				}
			}
			if len(got) != len(want) {
				t.Fatalf("algorithms %v, want %s", v.Algorithms(), tc.algs)
			}
			for a := range want {
				if !got[a] {
					t.Fatalf("algorithms %v, want %s", v.Algorithms(), tc.algs)
				}
			}
		})
	}
}

// A JWKS from a file (no URL) verifies tokens by kid, and an unknown kid
// is refused at once.
func TestJWKSFile(t *testing.T) {
	k := authtest.Keys()
	now := time.Now()
	v := newVerifier(t, auth.Config{JWKS: jwks(
		jwk("e1", &k.EC.PublicKey),
		map[string]string{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}, // skipped: no secrets in a key set
		map[string]string{"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
	), Now: fixedClock(now)})
	if _, err := v.Verify(authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(now, "foo"), "e1")); err != nil {
		t.Fatalf("kid e1: %v", err)
	}
	if _, err := v.Verify(authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(now, "foo"), "")); err != nil {
		t.Fatalf("no kid, the one ES256 key: %v", err)
	}
	for name, tc := range map[string]struct{ token, want string }{
		"unknown kid":       {authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(now, "foo"), "nope"), `token key ID (kid) "nope" is unknown`},
		"the oct key's kid": {authtest.Sign(t, jwt.SigningMethodHS256, []byte("c2VjcmV0"), authtest.Claims(now, "foo"), "s"), `token key ID (kid) "s" is unknown`},
		"HS256 without kid": {authtest.Sign(t, jwt.SigningMethodHS256, []byte("c2VjcmV0"), authtest.Claims(now, "foo"), ""), `token algorithm "HS256" is not accepted (this edge accepts ES256)`},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := v.Verify(tc.token); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Verify = %v, want an error saying %q", err, tc.want)
			}
		})
	}
	if st := v.Status(); st.JWKSKeys != 1 || st.JWKSURL != "" || !st.JWKSFetched.IsZero() {
		t.Fatalf("Status = %+v, want the one key of the file", st)
	}
}

// Two keys of one algorithm: a token without kid cannot choose.
func TestJWKSAmbiguous(t *testing.T) {
	k := authtest.Keys()
	_, ed2, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	v := newVerifier(t, auth.Config{JWKS: jwks(jwk("d1", k.Ed.Public()), jwk("d2", ed2.Public())), Now: fixedClock(now)})
	_, err := v.Verify(authtest.Sign(t, jwt.SigningMethodEdDSA, k.Ed, authtest.Claims(now, "foo"), ""))
	if want := "token has no key ID (kid) and the JWKS has 2 EdDSA keys"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Verify = %v, want an error saying %q", err, want)
	}
	if _, err := v.Verify(authtest.Sign(t, jwt.SigningMethodEdDSA, ed2, authtest.Claims(now, "foo"), "d2")); err != nil {
		t.Fatalf("kid d2: %v", err)
	}
}

// keyServer serves a key set on loopback and counts its fetches.
type keyServer struct {
	*httptest.Server
	keys    atomic.Value // []map[string]string
	status  atomic.Int64 // if not zero, the status of every answer
	fetches atomic.Int64
}

func newKeyServer(t testing.TB, keys ...map[string]string) *keyServer {
	t.Helper()
	ks := &keyServer{}
	ks.keys.Store(keys)
	ks.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.fetches.Add(1)
		if code := ks.status.Load(); code != 0 {
			w.WriteHeader(int(code))
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"keys": ks.keys.Load()})
	}))
	t.Cleanup(ks.Close)
	return ks
}

// A JWKS URL is fetched on an unknown kid, at most once per
// JWKSMinRefresh: a key rotated in works once fetched, and a key rotated
// out stops working.
func TestJWKSRotation(t *testing.T) {
	k := authtest.Keys()
	_, ed2, _ := ed25519.GenerateKey(rand.Reader)
	ks := newKeyServer(t, jwk("k1", &k.EC.PublicKey), jwk("r1", &k.RSA.PublicKey))
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	v := newVerifier(t, auth.Config{JWKSURL: ks.URL, JWKSRefresh: time.Hour, Now: clock, Audience: authtest.Audience, Issuer: authtest.Issuer})
	// Without Run: the first token's kid fetches the set.
	if _, err := v.Verify(authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(clock(), "foo"), "k1")); err != nil {
		t.Fatalf("ES256 with kid k1: %v", err)
	}
	if _, err := v.Verify(authtest.Sign(t, jwt.SigningMethodRS256, k.RSA, authtest.Claims(clock(), "foo"), "r1")); err != nil {
		t.Fatalf("RS256 with kid r1: %v", err)
	}
	if _, err := v.Verify(authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(clock(), "foo"), "r1")); err == nil ||
		!strings.Contains(err.Error(), `token algorithm ES256 does not fit key "r1" (alg RS256)`) {
		t.Fatalf("ES256 with the RSA key's kid: %v", err)
	}

	ks.keys.Store([]map[string]string{jwk("k2", ed2.Public())}) // rotation: k1 out, k2 in
	before := ks.fetches.Load()
	_, err := v.Verify(authtest.Sign(t, jwt.SigningMethodEdDSA, ed2, authtest.Claims(clock(), "foo"), "k2"))
	if err == nil || !strings.Contains(err.Error(), `token key ID (kid) "k2" is unknown`) {
		t.Fatalf("k2 before a fetch is allowed: %v", err)
	}
	if got := ks.fetches.Load(); got != before {
		t.Fatalf("%d fetches within JWKSMinRefresh of the last, want none", got-before)
	}

	offset.Store(int64(11 * time.Second)) // past JWKSMinRefresh
	if _, err := v.Verify(authtest.Sign(t, jwt.SigningMethodEdDSA, ed2, authtest.Claims(clock(), "foo"), "k2")); err != nil {
		t.Fatalf("EdDSA with kid k2 after rotation: %v", err)
	}
	_, err = v.Verify(authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(clock(), "foo"), "k1"))
	if err == nil || !strings.Contains(err.Error(), `token key ID (kid) "k1" is unknown`) {
		t.Fatalf("k1 after rotation: %v", err)
	}
	st := v.Status()
	if st.Agents != "jwt" || st.JWKSKeys != 1 || strings.Join(st.Algorithms, ",") != "EdDSA" || st.JWKSURL != ks.URL ||
		st.JWKSFetched.IsZero() || st.JWKSError != "" {
		t.Fatalf("Status = %+v, want jwt with the one EdDSA key", st)
	}
}

// Run fetches the set at once and every JWKSRefresh; a failed fetch keeps
// the keys fetched before and shows in Status.
func TestJWKSRunRefresh(t *testing.T) {
	k := authtest.Keys()
	ks := newKeyServer(t, jwk("k1", &k.EC.PublicKey))
	v := newVerifier(t, auth.Config{JWKSURL: ks.URL, JWKSRefresh: 20 * time.Millisecond})
	done := make(chan struct{})
	go func() { v.Run(); close(done) }()
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; status %+v", what, v.Status())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("the first fetch", func() bool { return v.Status().JWKSKeys == 1 })
	waitFor("a second fetch", func() bool { return ks.fetches.Load() >= 2 })

	ks.status.Store(http.StatusInternalServerError)
	waitFor("a failed fetch", func() bool { return v.Status().JWKSError != "" })
	st := v.Status()
	if want := "GET " + ks.URL + ": 500 Internal Server Error"; st.JWKSError != want || st.JWKSKeys != 1 {
		t.Fatalf("Status = %+v, want the key kept and the error %q", st, want)
	}
	if _, err := v.Verify(authtest.Sign(t, jwt.SigningMethodES256, k.EC, authtest.Claims(time.Now(), "foo"), "k1")); err != nil {
		t.Fatalf("k1 after a failed fetch: %v", err)
	}
	ks.status.Store(0)
	waitFor("a good fetch again", func() bool { return v.Status().JWKSError == "" })
	v.Close()
	<-done
}

func TestJWKSFetchErrors(t *testing.T) {
	big := `{"keys": [` + strings.Repeat(" ", 1<<20) + `]}`
	for name, tc := range map[string]struct {
		body string
		want string
	}{
		"not a set": {`{"kty": "EC"}`, `no "keys" array`},
		"empty set": {`{"keys": []}`, "no usable signature key in the set"},
		"too large": {big, "key set larger than 1048576 bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Accept") != "application/json" {
					w.WriteHeader(http.StatusNotAcceptable)
				}
				w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			v := newVerifier(t, auth.Config{JWKSURL: srv.URL, JWKSRefresh: time.Hour})
			_, err := v.Verify(authtest.Sign(t, jwt.SigningMethodEdDSA, authtest.Keys().Ed, authtest.Claims(time.Now(), "foo"), "x"))
			if err == nil || !strings.Contains(err.Error(), `token key ID (kid) "x" is unknown`) {
				t.Fatalf("Verify = %v, want the kid unknown", err)
			}
			if st := v.Status(); !strings.Contains(st.JWKSError, tc.want) || !strings.HasPrefix(st.JWKSError, "GET "+srv.URL+": ") {
				t.Fatalf("JWKSError = %q, want %q", st.JWKSError, tc.want)
			}
		})
	}
}

// Close ends a fetch in flight: Run returns, and the token that waited on
// the fetch is refused.
func TestJWKSCloseEndsFetch(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	v, err := auth.New(auth.Config{JWKSURL: srv.URL}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan struct{})
	go func() { v.Run(); close(runDone) }()
	token := authtest.Sign(t, jwt.SigningMethodEdDSA, authtest.Keys().Ed, authtest.Claims(time.Now(), "foo"), "x")
	verified := make(chan error, 1)
	go func() {
		_, err := v.Verify(token)
		verified <- err
	}()
	time.Sleep(50 * time.Millisecond) // Run's fetch in flight, Verify waiting on it
	closed := make(chan struct{})
	go func() { v.Close(); close(closed) }()
	for name, ch := range map[string]<-chan struct{}{"Close": closed, "Run": runDone} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s did not return", name)
		}
	}
	select {
	case err := <-verified:
		if err == nil {
			t.Fatal("Verify accepted a token while the set was unknown")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Verify did not return")
	}
}
