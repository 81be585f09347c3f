// Package authtest makes the keys and tokens that tests of edge/auth and of
// the edge sign and verify with. Only tests import it.
package authtest

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestKeys are the keys of the tests: an HMAC secret and a key pair of each
// kind edge/auth accepts.
type TestKeys struct {
	HMAC []byte
	RSA  *rsa.PrivateKey
	EC   *ecdsa.PrivateKey
	Ed   ed25519.PrivateKey
}

// Keys returns the test keys, made once per test binary (an RSA key takes
// a while).
var Keys = sync.OnceValue(func() (k TestKeys) {
	k.HMAC = []byte("0123456789abcdef0123456789abcdef-test-secret")
	k.RSA, _ = rsa.GenerateKey(rand.Reader, 2048)
	k.EC, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, k.Ed, _ = ed25519.GenerateKey(rand.Reader)
	return k
})

// The issuer and audience of the tokens Claims makes.
const (
	Issuer   = "pico-test"
	Audience = "edge"
)

// Claims returns valid claims at now for endpoints, for an hour.
func Claims(now time.Time, endpoints ...string) jwt.MapClaims {
	return jwt.MapClaims{
		"iss":  Issuer,
		"aud":  Audience,
		"sub":  "test",
		"iat":  now.Unix(),
		"nbf":  now.Unix(),
		"exp":  now.Add(time.Hour).Unix(),
		"pico": map[string]any{"endpoints": endpoints},
	}
}

// Sign signs c with method and key; kid, if set, goes in the header.
func Sign(t testing.TB, method jwt.SigningMethod, key any, c jwt.MapClaims, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

// HS256 signs c with the test HMAC secret.
func HS256(t testing.TB, c jwt.MapClaims) string {
	return Sign(t, jwt.SigningMethodHS256, Keys().HMAC, c, "")
}

// Unsigned returns a token with alg "none".
func Unsigned(c jwt.MapClaims) string {
	h, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT"})
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(b) + "."
}

// Refusal is a token that must be refused, and what the refusal must say.
type Refusal struct {
	Token string
	Want  string // a part of the reason
}

// Matrix returns the tokens a verifier set up with Keys, Issuer, Audience,
// a leeway of 30 s, a maximum lifetime of 24 h and a clock fixed at now
// must refuse, by case, and those it must accept.
func Matrix(t testing.TB, now time.Time) (refused map[string]Refusal, accepted map[string]string) {
	k := Keys()
	rsaPub, _ := x509.MarshalPKIXPublicKey(&k.RSA.PublicKey)
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPub})
	with := func(mut func(jwt.MapClaims)) jwt.MapClaims {
		c := Claims(now, "foo")
		mut(c)
		return c
	}
	otherSecret := []byte("another-secret-of-enough-length-0123456789")

	refused = map[string]Refusal{
		"no token":      {"", "no token: this edge requires one"},
		"only space":    {" \t ", "no token: this edge requires one"},
		"malformed":     {"not.a.jwt", "token is malformed"},
		"bad signature": {Sign(t, jwt.SigningMethodHS256, otherSecret, Claims(now, "foo"), ""), "token signature is invalid"},
		"alg none":      {Unsigned(Claims(now, "foo")), `token algorithm "none" is not accepted (this edge accepts EdDSA, HS256, HS384, HS512, PS256, PS384, PS512, RS256, RS384, RS512)`},
		// The RSA public key's bytes as an HMAC secret: verified with the
		// HMAC secret, never with the RSA key.
		"HS/RS confusion":       {Sign(t, jwt.SigningMethodHS256, rsaPEM, Claims(now, "foo"), ""), "token signature is invalid"},
		"RS256 signed by other": {Sign(t, jwt.SigningMethodRS256, otherRSA(t), Claims(now, "foo"), ""), "token signature is invalid"},
		"ES256 without a key":   {Sign(t, jwt.SigningMethodES256, k.EC, Claims(now, "foo"), ""), `token algorithm "ES256" is not accepted`},
		"expired": {HS256(t, with(func(c jwt.MapClaims) {
			c["exp"] = now.Add(-31 * time.Second).Unix()
			c["iat"] = now.Add(-time.Hour).Unix()
		})), "token expired at " + now.Add(-31*time.Second).UTC().Format(time.RFC3339) + " (now " + now.UTC().Format(time.RFC3339) + ", leeway 30s)"},
		"not yet valid":          {HS256(t, with(func(c jwt.MapClaims) { c["nbf"] = now.Add(31 * time.Second).Unix() })), "token is not valid before " + now.Add(31*time.Second).UTC().Format(time.RFC3339)},
		"issued in the future":   {HS256(t, with(func(c jwt.MapClaims) { c["iat"] = now.Add(time.Minute).Unix() })), "token is issued in the future"},
		"no exp":                 {HS256(t, with(func(c jwt.MapClaims) { delete(c, "exp") })), "token has no exp claim: the edge requires an expiry"},
		"wrong aud":              {HS256(t, with(func(c jwt.MapClaims) { c["aud"] = "other" })), `token audience ["other"] does not include "edge"`},
		"no aud":                 {HS256(t, with(func(c jwt.MapClaims) { delete(c, "aud") })), `token has no aud claim (want "edge")`},
		"wrong iss":              {HS256(t, with(func(c jwt.MapClaims) { c["iss"] = "evil" })), `token issuer "evil" is not "pico-test"`},
		"no iss":                 {HS256(t, with(func(c jwt.MapClaims) { delete(c, "iss") })), `token has no iss claim (want "pico-test")`},
		"lifetime over 24h":      {HS256(t, with(func(c jwt.MapClaims) { c["exp"] = now.Add(25 * time.Hour).Unix() })), "token lifetime of 25h0m0s (exp - iat) exceeds the maximum of 24h0m0s"},
		"lifetime without iat":   {HS256(t, with(func(c jwt.MapClaims) { delete(c, "iat"); c["exp"] = now.Add(48 * time.Hour).Unix() })), "token lifetime of 48h0m0s (exp - now (no iat)) exceeds the maximum of 24h0m0s"},
		"bad endpoint entry":     {HS256(t, Claims(now, "foo", "Team_A")), `token claim pico.endpoints: entry "Team_A" is neither an endpoint ID nor a prefix wildcard`},
		"empty wildcard prefix":  {HS256(t, Claims(now, "-*")), `token claim pico.endpoints: entry "-*": prefix "-" has "-"`},
		"wildcard in the middle": {HS256(t, Claims(now, "team-*-x")), `entry "team-*-x" is neither an endpoint ID nor a prefix wildcard`},
		"endpoints not a list":   {HS256(t, with(func(c jwt.MapClaims) { c["pico"] = map[string]any{"endpoints": "foo"} })), "token is malformed"},
		"too many endpoints":     {HS256(t, Claims(now, strings.Split(strings.Repeat("a,", 1001), ",")...)), "token lists 1002 endpoints in pico.endpoints (max 1000)"},
	}
	accepted = map[string]string{
		"HS256": HS256(t, Claims(now, "foo")),
		"HS512": Sign(t, jwt.SigningMethodHS512, k.HMAC, Claims(now, "foo"), ""),
		"RS256": Sign(t, jwt.SigningMethodRS256, k.RSA, Claims(now, "foo"), ""),
		"PS384": Sign(t, jwt.SigningMethodPS384, k.RSA, Claims(now, "foo"), ""),
		"EdDSA": Sign(t, jwt.SigningMethodEdDSA, k.Ed, Claims(now, "foo"), ""),
		"expired within leeway": HS256(t, with(func(c jwt.MapClaims) {
			c["exp"] = now.Add(-20 * time.Second).Unix()
			c["iat"] = now.Add(-time.Hour).Unix()
		})),
		"nbf within leeway":    HS256(t, with(func(c jwt.MapClaims) { c["nbf"] = now.Add(29 * time.Second).Unix() })),
		"lifetime of 24h":      HS256(t, with(func(c jwt.MapClaims) { c["exp"] = now.Add(24 * time.Hour).Unix() })),
		"surrounded by spaces": " " + HS256(t, Claims(now, "foo")) + "\n",
	}
	return refused, accepted
}

// otherRSA makes an RSA key that is not the test key.
func otherRSA(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
