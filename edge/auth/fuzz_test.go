package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/golang-jwt/jwt/v5"
)

// encodeJWK encodes k as the JWK parseJWKS reads back.
func encodeJWK(k jwkKey) map[string]string {
	b64 := base64.RawURLEncoding.EncodeToString
	m := map[string]string{}
	if k.kid != "" {
		m["kid"] = k.kid
	}
	if k.alg != "" {
		m["alg"] = k.alg
	}
	switch key := k.key.(type) {
	case *rsa.PublicKey:
		m["kty"], m["n"], m["e"] = "RSA", b64(key.N.Bytes()), b64(big.NewInt(int64(key.E)).Bytes())
	case *ecdsa.PublicKey:
		raw, _ := key.Bytes()
		size := (len(raw) - 1) / 2
		m["kty"], m["crv"], m["x"], m["y"] = "EC", key.Curve.Params().Name, b64(raw[1:1+size]), b64(raw[1+size:])
	case ed25519.PublicKey:
		m["kty"], m["crv"], m["x"] = "OKP", "Ed25519", b64(key)
	}
	return m
}

func encodeJWKS(keys []jwkKey) []byte {
	out := make([]map[string]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, encodeJWK(k))
	}
	b, _ := json.Marshal(map[string]any{"keys": out})
	return b
}

// sampleJWKS are key sets of every kind of key parseJWKS keeps.
func sampleJWKS(tb testing.TB) [][]byte {
	tb.Helper()
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	var ecs []jwkKey
	for _, c := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		ecs = append(ecs, jwkKey{kid: c.Params().Name, key: &k.PublicKey})
	}
	ed, _, _ := ed25519.GenerateKey(rand.Reader)
	return [][]byte{
		encodeJWKS(nil),
		encodeJWKS([]jwkKey{{kid: "r1", alg: "RS256", key: &r.PublicKey}}),
		encodeJWKS([]jwkKey{{kid: "r2", alg: "PS512", key: &r.PublicKey}, {kid: "d", key: ed}}),
		encodeJWKS(ecs),
		encodeJWKS([]jwkKey{{key: ed}}),
		[]byte(`{"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "crv": "P-256", "use": "enc"}]}`),
	}
}

// FuzzParseJWKS: parseJWKS reads bytes fetched over the network
// (Config.JWKSURL). Whatever it keeps is a key of a type it uses, of a
// fitting alg and a unique kid, and survives encoding and parsing again.
func FuzzParseJWKS(f *testing.F) {
	for _, b := range sampleJWKS(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		keys, err := parseJWKS(b)
		if err != nil {
			return
		}
		var kids []string
		for _, k := range keys {
			algs := algsFor(k.key)
			if len(algs) == 0 {
				t.Fatalf("kept a key of type %T", k.key)
			}
			if _, ok := k.key.([]byte); ok {
				t.Fatal("kept a secret")
			}
			if r, ok := k.key.(*rsa.PublicKey); ok && r.N.BitLen() < 2048 {
				t.Fatalf("kept an RSA key of %d bits", r.N.BitLen())
			}
			if k.alg != "" && !slices.Contains(algs, k.alg) {
				t.Fatalf("kept alg %s for a key of %v", k.alg, algs)
			}
			if k.kid != "" {
				if slices.Contains(kids, k.kid) {
					t.Fatalf("kid %q twice", k.kid)
				}
				kids = append(kids, k.kid)
			}
		}
		again, err := parseJWKS(encodeJWKS(keys))
		if err != nil || len(again) != len(keys) {
			t.Fatalf("round trip: %d keys -> %d, %v", len(keys), len(again), err)
		}
		for i := range keys {
			if again[i].kid != keys[i].kid || again[i].alg != keys[i].alg || !keyEqual(again[i].key, keys[i].key) {
				t.Fatalf("round trip of key %d: %+v -> %+v", i, keys[i], again[i])
			}
		}
	})
}

func keyEqual(a, b any) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// FuzzVerify: Verify reads tokens from the network (an agent's Hello, a
// client's header, a stream header). It never accepts one that the test
// key did not sign, and a refusal's reason stays short.
func FuzzVerify(f *testing.F) {
	secret := []byte("0123456789abcdef0123456789abcdef-fuzz-secret")
	now := time.Unix(1_800_000_000, 0)
	v, err := New(Config{HMACSecret: secret, Now: func() time.Time { return now }}, metrics.NewSet(), nil)
	if err != nil {
		f.Fatal(err)
	}
	defer v.Close()
	good, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "fuzz", "iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(), "pico": map[string]any{"endpoints": []string{"foo", "team-*"}}}).SignedString(secret)
	for _, s := range []string{good, "", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", good[:len(good)-2]} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		g, err := v.Verify(token)
		if err != nil {
			if len(err.Error()) > maxReason {
				t.Fatalf("reason of %d bytes", len(err.Error()))
			}
			return
		}
		if g.Expires().Sub(now) > 24*time.Hour+time.Minute {
			t.Fatalf("accepted a token valid until %s", g.Expires())
		}
		parsed, err := jwt.Parse(token, func(*jwt.Token) (any, error) { return secret, nil },
			jwt.WithTimeFunc(func() time.Time { return now }), jwt.WithLeeway(v.cfg.Leeway), jwt.WithValidMethods(hmacAlgs))
		if err != nil || !parsed.Valid {
			t.Fatalf("accepted a token the secret does not verify: %v", err)
		}
	})
}
