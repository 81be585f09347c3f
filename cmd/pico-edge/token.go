package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pico-edge/pico/edge/auth"
)

// TokenCmd mints an HS256 token.
type TokenCmd struct {
	Endpoints      []string      `help:"Endpoints the token allows, comma separated: IDs, prefix wildcards (team-a-*) or * (every endpoint)." sep:"," required:""`
	TTL            time.Duration `name:"ttl" help:"How long the token is valid (edges refuse tokens valid for longer than their --auth-max-token-lifetime, 24h by default)." default:"24h"`
	HMACSecretFile string        `name:"hmac-secret-file" help:"File with the HMAC secret the edge verifies tokens with (its --auth-hmac-secret-file); created (0600, 32 random bytes in base64) if it does not exist." env:"PICO_AUTH_HMAC_SECRET_FILE" type:"path" required:""`
	Issuer         string        `help:"iss of the token (the edge's --auth-issuer)." env:"PICO_AUTH_ISSUER"`
	Audience       string        `help:"aud of the token (the edge's --auth-audience)." env:"PICO_AUTH_AUDIENCE"`
	Subject        string        `help:"sub of the token: who it is for, shown in the edge's logs." default:"pico-edge-token"`
}

// run mints the token and prints it on out; notes go to errOut.
func (t *TokenCmd) run(out, errOut io.Writer, now time.Time) error {
	for _, e := range t.Endpoints {
		if err := auth.ValidateEndpointPattern(e); err != nil {
			return fmt.Errorf("--endpoints: %w", err)
		}
	}
	if t.TTL <= 0 {
		return fmt.Errorf("--ttl %s: want a positive duration", duration(t.TTL))
	}
	if t.TTL > 24*time.Hour {
		fmt.Fprintf(errOut, "note: a token valid for %s is refused by edges with the default --auth-max-token-lifetime of 24h\n", t.TTL)
	}
	secret, created, err := loadOrCreateHMACSecret(t.HMACSecretFile)
	if err != nil {
		return fmt.Errorf("--hmac-secret-file: %w", err)
	}
	if created {
		fmt.Fprintf(errOut, "created the HMAC secret %s: start the edge with --auth-hmac-secret-file %s\n", t.HMACSecretFile, t.HMACSecretFile)
	}
	id := make([]byte, 8)
	rand.Read(id)
	claims := jwt.MapClaims{
		"sub":  t.Subject,
		"iat":  now.Unix(),
		"nbf":  now.Unix(),
		"exp":  now.Add(t.TTL).Unix(),
		"jti":  hex.EncodeToString(id),
		"pico": map[string]any{"endpoints": t.Endpoints},
	}
	if t.Issuer != "" {
		claims["iss"] = t.Issuer
	}
	if t.Audience != "" {
		claims["aud"] = t.Audience
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		return errors.New("sign token: " + err.Error())
	}
	_, err = fmt.Fprintln(out, s)
	return err
}
