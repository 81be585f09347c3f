package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"slices"
	"sync"
	"time"
)

// jwkKey is one public key of a JSON Web Key Set.
type jwkKey struct {
	kid string
	alg string // "" unless the JWK names one
	key any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// maxJWKS bounds a JWKS document.
const maxJWKS = 1 << 20

// parseJWKS parses a JSON Web Key Set (RFC 7517) and returns its signature
// public keys. Keys of a type it does not know (kty "oct" among them: a
// secret has no place in a key set), for another use than "sig", or too
// weak (RSA under 2048 bits) are skipped; a key that is malformed fails
// the whole set.
func parseJWKS(b []byte) ([]jwkKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("not a JSON Web Key Set: %w", err)
	}
	if set.Keys == nil {
		return nil, errors.New(`not a JSON Web Key Set: no "keys" array`)
	}
	var out []jwkKey
	for i, raw := range set.Keys {
		var j struct {
			Kty, Kid, Alg, Use, Crv, N, E, X, Y string
		}
		if err := json.Unmarshal(raw, &j); err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		if j.Use != "" && j.Use != "sig" {
			continue
		}
		name := fmt.Sprintf("key %d", i)
		if j.Kid != "" {
			name = fmt.Sprintf("key %q", j.Kid)
		}
		key, err := jwkPublicKey(j.Kty, j.Crv, j.N, j.E, j.X, j.Y)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if key == nil {
			continue // a type or strength not used here
		}
		if j.Alg != "" && !slices.Contains(algsFor(key), j.Alg) {
			return nil, fmt.Errorf("%s: alg %s does not fit a %s key", name, j.Alg, j.Kty)
		}
		if j.Kid != "" && slices.ContainsFunc(out, func(k jwkKey) bool { return k.kid == j.Kid }) {
			return nil, fmt.Errorf("%s: the kid is used twice", name)
		}
		out = append(out, jwkKey{kid: j.Kid, alg: j.Alg, key: key})
	}
	return out, nil
}

// jwkPublicKey decodes the fields of one JWK; nil, nil for a key this
// edge does not use.
func jwkPublicKey(kty, crv, n, e, x, y string) (any, error) {
	b64 := func(field, v string) ([]byte, error) {
		b, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("field %s is not base64url", field)
		}
		return b, nil
	}
	switch kty {
	case "RSA":
		nb, err := b64("n", n)
		if err != nil {
			return nil, err
		}
		eb, err := b64("e", e)
		if err != nil {
			return nil, err
		}
		ei := new(big.Int).SetBytes(eb)
		if !ei.IsInt64() || ei.Int64() < 3 || ei.Int64() > 1<<31-1 {
			return nil, errors.New("RSA exponent out of range")
		}
		k := &rsa.PublicKey{N: new(big.Int).SetBytes(nb), E: int(ei.Int64())}
		if k.N.BitLen() < 2048 {
			return nil, nil // too weak to trust
		}
		return k, nil
	case "EC":
		var curve elliptic.Curve
		switch crv {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		case "P-521":
			curve = elliptic.P521()
		default:
			return nil, nil
		}
		size := (curve.Params().BitSize + 7) / 8
		xb, err := b64("x", x)
		if err != nil {
			return nil, err
		}
		yb, err := b64("y", y)
		if err != nil {
			return nil, err
		}
		if len(xb) != size || len(yb) != size {
			return nil, fmt.Errorf("%s coordinates of %d and %d bytes, want %d", crv, len(xb), len(yb), size)
		}
		k, err := ecdsa.ParseUncompressedPublicKey(curve, slices.Concat([]byte{4}, xb, yb))
		if err != nil {
			return nil, fmt.Errorf("%s point: %w", crv, err)
		}
		return k, nil
	case "OKP":
		if crv != "Ed25519" {
			return nil, nil
		}
		xb, err := b64("x", x)
		if err != nil {
			return nil, err
		}
		if len(xb) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("Ed25519 key of %d bytes", len(xb))
		}
		return ed25519.PublicKey(xb), nil
	}
	return nil, nil
}

// jwksSet holds the keys of Config.JWKS and of Config.JWKSURL, which it
// fetches again periodically and when a token names a kid it does not
// know.
type jwksSet struct {
	cfg  Config
	log  *slog.Logger
	file []jwkKey        // from Config.JWKS
	ctx  context.Context // done when the Verifier closes

	fetchMu sync.Mutex // one fetch at a time

	mu      sync.Mutex // guards the fields below
	fetched []jwkKey
	lastTry time.Time // by cfg.Now
	lastOK  time.Time
	lastErr string
}

func newJWKSSet(ctx context.Context, cfg Config, log *slog.Logger) *jwksSet {
	file, _ := parseJWKS(cfg.JWKS) // validated with the config
	return &jwksSet{cfg: cfg, log: log, file: file, ctx: ctx}
}

// keys returns every key: those fetched, then those of the file.
func (j *jwksSet) keys() []jwkKey {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Concat(j.fetched, j.file)
}

func (j *jwksSet) lookup(kid string) (jwkKey, bool) {
	for _, k := range j.keys() {
		if k.kid == kid {
			return k, true
		}
	}
	return jwkKey{}, false
}

func (j *jwksSet) lastFetch() (time.Time, string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.lastOK, j.lastErr
}

// refreshFor fetches the key set again for a token that names kid, unless
// a fetch happened less than JWKSMinRefresh ago, and looks kid up.
func (j *jwksSet) refreshFor(kid string) (jwkKey, bool) {
	if j.cfg.JWKSURL == "" {
		return jwkKey{}, false
	}
	j.fetchMu.Lock()
	defer j.fetchMu.Unlock()
	if k, ok := j.lookup(kid); ok { // fetched while this one waited
		return k, true
	}
	j.mu.Lock()
	recent := !j.lastTry.IsZero() && j.cfg.Now().Sub(j.lastTry) < j.cfg.JWKSMinRefresh
	j.mu.Unlock()
	if recent {
		return jwkKey{}, false
	}
	j.log.Info("token names an unknown key ID: fetching the JWKS again", "kid", kid, "url", j.cfg.JWKSURL)
	j.fetchLocked()
	return j.lookup(kid)
}

// run fetches JWKSURL now and every JWKSRefresh until ctx is done.
func (j *jwksSet) run() {
	if j.cfg.JWKSURL == "" {
		return
	}
	j.fetch()
	tick := time.NewTicker(j.cfg.JWKSRefresh)
	defer tick.Stop()
	for {
		select {
		case <-j.ctx.Done():
			return
		case <-tick.C:
			j.fetch()
		}
	}
}

func (j *jwksSet) fetch() {
	j.fetchMu.Lock()
	defer j.fetchMu.Unlock()
	j.fetchLocked()
}

// fetchLocked fetches the key set; the caller holds fetchMu. A failed
// fetch keeps the keys fetched before.
func (j *jwksSet) fetchLocked() {
	j.mu.Lock()
	j.lastTry = j.cfg.Now()
	j.mu.Unlock()
	keys, err := j.get()
	j.mu.Lock()
	defer j.mu.Unlock()
	if err != nil {
		j.lastErr = err.Error()
		if j.ctx.Err() == nil {
			j.log.Warn("JWKS fetch failed; keeping the keys fetched before", "url", j.cfg.JWKSURL,
				"keys", len(j.fetched), "err", err)
		}
		return
	}
	if len(keys) != len(j.fetched) || j.lastOK.IsZero() {
		j.log.Info("JWKS fetched", "url", j.cfg.JWKSURL, "keys", len(keys))
	}
	j.fetched, j.lastOK, j.lastErr = keys, j.cfg.Now(), ""
}

func (j *jwksSet) get() ([]jwkKey, error) {
	ctx, cancel := context.WithTimeout(j.ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.cfg.JWKSURL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.cfg.JWKSClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", j.cfg.JWKSURL, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKS+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", j.cfg.JWKSURL, err)
	}
	if len(b) > maxJWKS {
		return nil, fmt.Errorf("GET %s: key set larger than %d bytes", j.cfg.JWKSURL, maxJWKS)
	}
	keys, err := parseJWKS(b)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", j.cfg.JWKSURL, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("GET %s: no usable signature key in the set", j.cfg.JWKSURL)
	}
	return keys, nil
}
