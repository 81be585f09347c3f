package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pico-edge/pico/edge/auth"
)

// AuthFlags are pico-edge's authentication flags.
type AuthFlags struct {
	AuthHMACSecretFile   string        `name:"auth-hmac-secret-file" help:"File with the HMAC secret that verifies HS256/384/512 tokens (at least 32 bytes; the file's text, trailing whitespace trimmed). 'pico-edge token' creates one and mints tokens with it." type:"path" group:"Authentication"`
	AuthRSAPublicKey     string        `name:"auth-rsa-public-key" help:"PEM file of an RSA public key (at least 2048 bits) that verifies RS256/384/512 and PS256/384/512 tokens." type:"path" group:"Authentication"`
	AuthECDSAPublicKey   string        `name:"auth-ecdsa-public-key" help:"PEM file of an ECDSA public key that verifies ES256 (P-256), ES384 (P-384) or ES512 (P-521) tokens." type:"path" group:"Authentication"`
	AuthEd25519PublicKey string        `name:"auth-ed25519-public-key" help:"PEM file of an Ed25519 public key that verifies EdDSA tokens." type:"path" group:"Authentication"`
	AuthJWKSFile         string        `name:"auth-jwks-file" help:"JSON Web Key Set file (RSA, EC and Ed25519 keys by kid), read at start." type:"path" group:"Authentication"`
	AuthJWKSURL          string        `name:"auth-jwks-url" help:"URL of a JSON Web Key Set, fetched at start, every --auth-jwks-refresh, and when a token names an unknown kid (at most every 10s)." group:"Authentication"`
	AuthJWKSRefresh      time.Duration `name:"auth-jwks-refresh" help:"How often --auth-jwks-url is fetched again." default:"5m" group:"Authentication"`
	AuthIssuer           string        `name:"auth-issuer" help:"The iss every token must have (unchecked if empty)." group:"Authentication"`
	AuthAudience         string        `name:"auth-audience" help:"A value every token's aud must include (unchecked if empty)." group:"Authentication"`
	AuthLeeway           time.Duration `name:"auth-leeway" help:"Clock skew allowed on exp, nbf and iat." default:"30s" group:"Authentication"`
	AuthMaxTokenLifetime time.Duration `name:"auth-max-token-lifetime" help:"Tokens valid for longer (exp - iat) are refused." default:"24h" group:"Authentication"`
	ProxyAuth            bool          `name:"proxy-auth" help:"Clients must present a token too: X-Pico-Authorization: Bearer TOKEN (or Authorization: Bearer TOKEN, then removed), and pico-agent forward its --token." group:"Authentication"`
}

// config returns the edge's auth configuration: nil when no key is
// configured, which means no authentication.
func (f *AuthFlags) config() (*auth.Config, error) {
	ac := &auth.Config{
		JWKSURL:     f.AuthJWKSURL,
		JWKSRefresh: f.AuthJWKSRefresh,
		Issuer:      f.AuthIssuer,
		Audience:    f.AuthAudience,
		Leeway:      f.AuthLeeway,
		MaxLifetime: f.AuthMaxTokenLifetime,
		ProxyAuth:   f.ProxyAuth,
	}
	var err error
	keys := 0
	if f.AuthHMACSecretFile != "" {
		keys++
		if ac.HMACSecret, err = loadHMACSecret(f.AuthHMACSecretFile); err != nil {
			return nil, fmt.Errorf("--auth-hmac-secret-file: %w", err)
		}
	}
	load := func(flag, path string, parse func([]byte) error) error {
		if path == "" {
			return nil
		}
		keys++
		b, err := os.ReadFile(path)
		if err == nil {
			err = parse(b)
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", flag, path, err)
		}
		return nil
	}
	err = errors.Join(
		load("--auth-rsa-public-key", f.AuthRSAPublicKey, func(b []byte) (err error) {
			ac.RSAPublicKey, err = jwt.ParseRSAPublicKeyFromPEM(b)
			return err
		}),
		load("--auth-ecdsa-public-key", f.AuthECDSAPublicKey, func(b []byte) (err error) {
			ac.ECDSAPublicKey, err = jwt.ParseECPublicKeyFromPEM(b)
			return err
		}),
		load("--auth-ed25519-public-key", f.AuthEd25519PublicKey, func(b []byte) error {
			k, err := jwt.ParseEdPublicKeyFromPEM(b)
			if err != nil {
				return err
			}
			var ok bool
			if ac.Ed25519PublicKey, ok = k.(ed25519.PublicKey); !ok {
				return fmt.Errorf("not an Ed25519 key (%T)", k)
			}
			return nil
		}),
		load("--auth-jwks-file", f.AuthJWKSFile, func(b []byte) error { ac.JWKS = b; return nil }),
	)
	if err != nil {
		return nil, err
	}
	if f.AuthJWKSURL != "" {
		keys++
	}
	if keys == 0 {
		if f.ProxyAuth || f.AuthIssuer != "" || f.AuthAudience != "" {
			return nil, errors.New("--proxy-auth, --auth-issuer and --auth-audience need a key: --auth-hmac-secret-file, " +
				"--auth-rsa-public-key, --auth-ecdsa-public-key, --auth-ed25519-public-key, --auth-jwks-file or --auth-jwks-url")
		}
		return nil, nil
	}
	return ac, nil
}

// loadHMACSecret reads an HMAC secret file: its text, trailing whitespace
// trimmed, used as it is (so other issuers can share the file).
func loadHMACSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w; '%s token --hmac-secret-file %s --endpoints ...' creates one (or: openssl rand -base64 32 > %s)", err, self, path, path)
	}
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, " \t\r\n")
	if len(b) < auth.MinHMACSecret {
		return nil, fmt.Errorf("%s: secret of %d bytes, want at least %d (openssl rand -base64 32 > %s)", path, len(b), auth.MinHMACSecret, path)
	}
	return b, nil
}

// loadOrCreateHMACSecret is loadHMACSecret, but creates the file (0600,
// the base64 of 32 random bytes) when there is none, and says so.
func loadOrCreateHMACSecret(path string) (secret []byte, created bool, err error) {
	secret, err = loadHMACSecret(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return secret, false, err
	}
	key := make([]byte, 32)
	rand.Read(key)
	text := base64.StdEncoding.EncodeToString(key)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, false, err
	}
	_, err = f.WriteString(text + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, false, err
	}
	return []byte(text), true, nil
}

// tokenHint returns what the start-up hint adds for agents and clients
// when tokens are required: the agent's --token flag, how to mint a
// token, and curl's header.
func tokenHint(f *AuthFlags) (token, mint, curl string) {
	switch {
	case f.AuthHMACSecretFile != "":
		token = " --token $TOKEN"
		mint = "    TOKEN=$(" + self + " token --hmac-secret-file " + f.AuthHMACSecretFile + " --endpoints foo"
		if f.AuthIssuer != "" {
			mint += " --issuer " + f.AuthIssuer
		}
		if f.AuthAudience != "" {
			mint += " --audience " + f.AuthAudience
		}
		mint += ")\n"
	case f.AuthRSAPublicKey != "" || f.AuthECDSAPublicKey != "" || f.AuthEd25519PublicKey != "" ||
		f.AuthJWKSFile != "" || f.AuthJWKSURL != "":
		token = " --token $TOKEN"
		mint = "    (TOKEN: a JWT your issuer signed, with the claim {\"pico\": {\"endpoints\": [\"foo\"]}})\n"
	}
	if token != "" && f.ProxyAuth {
		curl = " -H \"x-pico-authorization: Bearer $TOKEN\""
	}
	return token, mint, curl
}
