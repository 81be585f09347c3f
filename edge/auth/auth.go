// Package auth verifies the tokens of an edge node: JSON Web Tokens that
// agents present in their Hello and, with proxy auth, clients in a request
// header or a TCP forward's stream header. It owns their configuration
// (Config), the keys (configured ones, a JWKS file, a JWKS URL fetched
// again periodically and on an unknown kid), what a verified token allows
// (Grant, Scope), the counters of refused tokens and the auth section of
// the node's status.
//
// Of our packages it imports only quicutil, for the endpoint ID rule; only
// edge and cmd import it. Mapping a refusal to an HTTP status or a wire
// code is the caller's business.
package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/golang-jwt/jwt/v5"
)

// Config makes the edge verify tokens: JSON Web Tokens (RFC 7519)
// signed with one of the configured keys. Every agent connection must
// present one (quicutil.Hello.Token), and with ProxyAuth every client
// request and TCP forward too. The claim
//
//	{"pico": {"endpoints": ["foo", "team-a-*"]}}
//
// lists the endpoints a token allows: IDs, prefix wildcards ("team-a-*":
// every ID that starts with "team-a-"; the prefix is not empty) and "*"
// (every endpoint). A missing or empty list allows nothing.
//
// The accepted algorithms follow from the configured keys alone: HS256,
// HS384 and HS512 with HMACSecret; RS* and PS* with an RSA key; the ES*
// of an ECDSA key's curve; EdDSA with an Ed25519 key. "none" never is, and
// a token is only ever verified with a key of its algorithm's family (no
// HMAC with an RSA key's bytes). exp is required; exp, nbf and iat are
// checked with Leeway; iss and aud when Issuer and Audience are set.
//
// The zero Config has no key and does not validate: at least one of
// HMACSecret, the public keys, JWKS and JWKSURL is required.
type Config struct {
	// HMACSecret verifies HS256, HS384 and HS512 tokens; at least 32 bytes.
	HMACSecret []byte
	// RSAPublicKey verifies RS256/384/512 and PS256/384/512 tokens; at
	// least 2048 bits.
	RSAPublicKey *rsa.PublicKey
	// ECDSAPublicKey verifies the ES* tokens of its curve: ES256 (P-256),
	// ES384 (P-384) or ES512 (P-521).
	ECDSAPublicKey *ecdsa.PublicKey
	// Ed25519PublicKey verifies EdDSA tokens.
	Ed25519PublicKey ed25519.PublicKey
	// JWKS is a JSON Web Key Set (RFC 7517) of public keys (kty RSA, EC or
	// OKP with crv Ed25519), as read from a file at start. A token whose
	// header names a kid is verified with that key.
	JWKS []byte
	// JWKSURL is a JSON Web Key Set fetched when Run starts, every
	// JWKSRefresh, and when a token names a kid it does not know (at most
	// once per JWKSMinRefresh): a key an issuer rotates in works at once.
	// Its keys add to those of JWKS.
	JWKSURL string
	// JWKSRefresh is the period of JWKSURL fetches; if zero, 5m.
	JWKSRefresh time.Duration
	// JWKSMinRefresh is the least time between two fetches of JWKSURL
	// (by the clock Now); if zero, 10s.
	JWKSMinRefresh time.Duration
	// JWKSClient fetches JWKSURL; if nil, a client with a 10 s timeout.
	JWKSClient *http.Client

	// Issuer, if set, is the iss every token must have.
	Issuer string
	// Audience, if set, must be one of a token's aud.
	Audience string
	// Leeway absorbs clock skew in exp, nbf and iat; if zero, 30s.
	Leeway time.Duration
	// MaxLifetime refuses tokens valid for longer: exp - iat, or exp - now
	// without iat; if zero, 24h.
	MaxLifetime time.Duration

	// ProxyAuth makes clients authenticate too: HTTP requests with
	// "X-Pico-Authorization: Bearer <token>" or "Authorization: Bearer
	// <token>", TCP forwards with the token in their stream header.
	ProxyAuth bool

	// Now is the clock tokens are checked against; if nil, time.Now.
	Now func() time.Time
}

// WithDefaults returns a copy of c with the documented defaults in place
// of zero values. It is idempotent; New applies it too.
func (c Config) WithDefaults() Config {
	if c.JWKSRefresh == 0 {
		c.JWKSRefresh = 5 * time.Minute
	}
	if c.JWKSMinRefresh == 0 {
		c.JWKSMinRefresh = 10 * time.Second
	}
	if c.JWKSClient == nil {
		c.JWKSClient = &http.Client{Timeout: 10 * time.Second}
	}
	if c.Leeway == 0 {
		c.Leeway = 30 * time.Second
	}
	if c.MaxLifetime == 0 {
		c.MaxLifetime = 24 * time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// MinHMACSecret is the shortest HMAC secret accepted (RFC 7518 3.2: at
// least the hash size of HS256).
const MinHMACSecret = 32

// Validate reports the first invalid field. Its errors carry no package
// prefix and name fields as edge.Config does ("Auth.Leeway"): the caller
// adds its own prefix (edge: "edge: config: ").
func (c Config) Validate() error {
	if len(c.HMACSecret) == 0 && c.RSAPublicKey == nil && c.ECDSAPublicKey == nil &&
		c.Ed25519PublicKey == nil && len(c.JWKS) == 0 && c.JWKSURL == "" {
		return errors.New("Auth has no key (HMAC secret, public key or JWKS)")
	}
	if n := len(c.HMACSecret); n > 0 && n < MinHMACSecret {
		return fmt.Errorf("HMAC secret of %d bytes (min %d)", n, MinHMACSecret)
	}
	if k := c.RSAPublicKey; k != nil && k.N.BitLen() < 2048 {
		return fmt.Errorf("RSA key of %d bits (min 2048)", k.N.BitLen())
	}
	if k := c.ECDSAPublicKey; k != nil && ecdsaAlg(k) == "" {
		return fmt.Errorf("ECDSA key on curve %s (want P-256, P-384 or P-521)", k.Curve.Params().Name)
	}
	if k := c.Ed25519PublicKey; k != nil && len(k) != ed25519.PublicKeySize {
		return fmt.Errorf("Ed25519 key of %d bytes", len(k))
	}
	if len(c.JWKS) > 0 {
		if _, err := parseJWKS(c.JWKS); err != nil {
			return fmt.Errorf("JWKS: %w", err)
		}
	}
	if c.JWKSURL != "" && !strings.HasPrefix(c.JWKSURL, "https://") && !strings.HasPrefix(c.JWKSURL, "http://") {
		return fmt.Errorf("JWKS URL %q: want http:// or https://", c.JWKSURL)
	}
	for name, d := range map[string]time.Duration{"Leeway": c.Leeway, "MaxLifetime": c.MaxLifetime,
		"JWKSRefresh": c.JWKSRefresh, "JWKSMinRefresh": c.JWKSMinRefresh} {
		if d < 0 {
			return fmt.Errorf("Auth.%s is negative (%s)", name, d)
		}
	}
	return nil
}

// Algorithm families.
var (
	hmacAlgs = []string{"HS256", "HS384", "HS512"}
	rsaAlgs  = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)

// ecdsaAlg is the one algorithm an ECDSA key verifies, by its curve.
func ecdsaAlg(k *ecdsa.PublicKey) string {
	switch k.Curve {
	case elliptic.P256():
		return "ES256"
	case elliptic.P384():
		return "ES384"
	case elliptic.P521():
		return "ES512"
	}
	return ""
}

// algsFor returns the algorithms key verifies.
func algsFor(key any) []string {
	switch k := key.(type) {
	case []byte:
		return hmacAlgs
	case *rsa.PublicKey:
		return rsaAlgs
	case *ecdsa.PublicKey:
		if a := ecdsaAlg(k); a != "" {
			return []string{a}
		}
	case ed25519.PublicKey:
		return []string{"EdDSA"}
	}
	return nil
}

// Verifier verifies tokens for one edge node. Make one with New; its
// methods are safe for concurrent use. A nil *Verifier stands for no
// authentication where a method says so (Status, Mode).
type Verifier struct {
	cfg     Config
	static  []any    // configured keys without a kid
	jwks    *jwksSet // nil without JWKS and JWKSURL
	refused map[Who]*metrics.Counter

	ctx    context.Context // done at Close
	cancel context.CancelFunc

	mu      sync.Mutex // guards the fields below
	running bool       // Run was called before Close
	done    chan struct{}
}

// Who is whose token a refusal counts against, the label of
// pico_auth_refused_total.
type Who string

// The refusals counted, one counter each.
const (
	WhoAgent   Who = "agent"   // an agent connection's Hello
	WhoClient  Who = "client"  // a client request, with ProxyAuth
	WhoForward Who = "forward" // a TCP forward's stream, with ProxyAuth
	WhoRefresh Who = "refresh" // an agent's token refresh
)

// New validates cfg, with its defaults applied, and returns its Verifier.
// It registers pico_auth_refused_total{who="agent|client|forward|refresh"}
// in set (if nil, a private set) and logs JWKS fetches to log (if nil,
// nowhere). Run fetches JWKSURL; Close stops it.
func New(cfg Config, set *metrics.Set, log *slog.Logger) (*Verifier, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if set == nil {
		set = metrics.NewSet()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	v := &Verifier{cfg: cfg, refused: make(map[Who]*metrics.Counter), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	if len(cfg.HMACSecret) > 0 {
		v.static = append(v.static, cfg.HMACSecret)
	}
	if cfg.RSAPublicKey != nil {
		v.static = append(v.static, cfg.RSAPublicKey)
	}
	if cfg.ECDSAPublicKey != nil {
		v.static = append(v.static, cfg.ECDSAPublicKey)
	}
	if cfg.Ed25519PublicKey != nil {
		v.static = append(v.static, cfg.Ed25519PublicKey)
	}
	if len(cfg.JWKS) > 0 || cfg.JWKSURL != "" {
		v.jwks = newJWKSSet(ctx, cfg, log)
	}
	for _, who := range []Who{WhoAgent, WhoClient, WhoForward, WhoRefresh} {
		v.refused[who] = set.NewCounter(`pico_auth_refused_total{who="` + string(who) + `"}`)
	}
	return v, nil
}

// Config returns the configuration v verifies with, defaults applied.
// Its slices and keys are v's own: do not modify them.
func (v *Verifier) Config() Config { return v.cfg }

// Refused counts a refused token of who, one of the Who constants; any
// other value panics.
func (v *Verifier) Refused(who Who) {
	c, ok := v.refused[who]
	if !ok {
		panic(fmt.Sprintf("auth: Refused(%q): not a Who", who))
	}
	c.Inc()
}

// Run fetches JWKSURL now and every JWKSRefresh, and returns when Close
// is called; without JWKSURL it only waits for Close. Call it once: a
// second call, or one after Close, returns at once.
func (v *Verifier) Run() {
	v.mu.Lock()
	if v.running || v.ctx.Err() != nil {
		v.mu.Unlock()
		return
	}
	v.running = true
	v.mu.Unlock()
	defer close(v.done)
	if v.jwks != nil && v.cfg.JWKSURL != "" {
		v.jwks.run()
		return
	}
	<-v.ctx.Done()
}

// Close stops Run and ends a JWKS fetch in flight (a token waiting on
// that fetch is judged by the keys known before), then waits for Run to
// return. Verify still works after Close, without fetching. It is safe to
// call more than once, and before Run or without it.
func (v *Verifier) Close() {
	v.cancel()
	v.cfg.JWKSClient.CloseIdleConnections()
	v.mu.Lock()
	running := v.running
	v.mu.Unlock()
	if running {
		<-v.done
	}
}

// Algorithms returns the algorithms of the keys known now, sorted: those
// a token may be signed with.
func (v *Verifier) Algorithms() []string {
	var out []string
	add := func(key any) {
		for _, alg := range algsFor(key) {
			if !slices.Contains(out, alg) {
				out = append(out, alg)
			}
		}
	}
	for _, k := range v.static {
		add(k)
	}
	if v.jwks != nil {
		for _, k := range v.jwks.keys() {
			if k.alg != "" {
				if !slices.Contains(out, k.alg) && slices.Contains(algsFor(k.key), k.alg) {
					out = append(out, k.alg)
				}
				continue
			}
			add(k.key)
		}
	}
	slices.Sort(out)
	return out
}

// picoClaims are the claims Pico reads.
type picoClaims struct {
	jwt.RegisteredClaims
	Pico *struct {
		Endpoints []string `json:"endpoints"`
	} `json:"pico,omitempty"`
}

// authError is a refused token; its message says why, for the agent or
// client and the log alike.
type authError struct{ msg string }

func (e *authError) Error() string { return e.msg }

func refuse(format string, args ...any) error {
	return &authError{msg: fmt.Sprintf(format, args...)}
}

// maxReason bounds the reason a refusal carries (a CONNECTION_CLOSE reason
// and a Result message must stay short).
const maxReason = 400

// Verify checks token (surrounding space trimmed) and returns what it
// allows. A refused token's error says why, in at most 400 bytes, for the
// agent or client and the log alike. With JWKSURL, a token that names an
// unknown kid may wait on a fetch of the key set.
func (v *Verifier) Verify(token string) (Grant, error) {
	g, err := v.verifyToken(strings.TrimSpace(token))
	if err != nil {
		msg := err.Error()
		if len(msg) > maxReason {
			msg = msg[:maxReason]
		}
		return Grant{}, &authError{msg: msg}
	}
	return g, nil
}

func (v *Verifier) verifyToken(token string) (Grant, error) {
	if token == "" {
		return Grant{}, refuse("no token: this edge requires one")
	}
	if v.jwks != nil && v.cfg.JWKSURL != "" {
		// A kid not seen yet may be a key rotated in, maybe of another
		// type: fetch before the algorithms are decided.
		if t, _, _ := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{}); t != nil {
			if kid, _ := t.Header["kid"].(string); kid != "" {
				if _, ok := v.jwks.lookup(kid); !ok {
					v.jwks.refreshFor(kid)
				}
			}
		}
	}
	allowed := v.Algorithms()
	now := v.cfg.Now()
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(allowed),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(v.cfg.Leeway),
		jwt.WithTimeFunc(func() time.Time { return now }),
	}
	if v.cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.cfg.Issuer))
	}
	if v.cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(v.cfg.Audience))
	}
	var claims picoClaims
	tok, err := jwt.NewParser(opts...).ParseWithClaims(token, &claims, v.key)
	if err != nil {
		return Grant{}, v.explain(err, tok, &claims, allowed, now)
	}
	exp := claims.ExpiresAt.Time
	start := now
	if claims.IssuedAt != nil {
		start = claims.IssuedAt.Time
	}
	if life := exp.Sub(start); life > v.cfg.MaxLifetime {
		from := "iat"
		if claims.IssuedAt == nil {
			from = "now (no iat)"
		}
		return Grant{}, refuse("token lifetime of %s (exp - %s) exceeds the maximum of %s",
			life.Round(time.Second), from, v.cfg.MaxLifetime)
	}
	var entries []string
	if claims.Pico != nil {
		entries = claims.Pico.Endpoints
	}
	sc, err := parseScope(entries)
	if err != nil {
		return Grant{}, err
	}
	return Grant{scope: sc, expires: exp, subject: claims.Subject}, nil
}

// key finds the key that verifies t: the JWKS key its kid names, else the
// configured key of its algorithm's family.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	kid, _ := t.Header["kid"].(string)
	fits := func(key any, keyAlg string) bool {
		return slices.Contains(algsFor(key), alg) && (keyAlg == "" || keyAlg == alg)
	}
	if kid != "" && v.jwks != nil {
		k, ok := v.jwks.lookup(kid)
		if !ok {
			k, ok = v.jwks.refreshFor(kid)
		}
		if ok {
			if !fits(k.key, k.alg) {
				return nil, refuse("token algorithm %s does not fit key %q (%s)", alg, kid, describeKey(k.key, k.alg))
			}
			return k.key, nil
		}
	}
	for _, k := range v.static {
		if fits(k, "") {
			return k, nil
		}
	}
	if v.jwks != nil {
		var only []jwkKey
		for _, k := range v.jwks.keys() {
			if fits(k.key, k.alg) {
				only = append(only, k)
			}
		}
		switch {
		case kid != "":
			return nil, refuse("token key ID (kid) %q is unknown: not in the JWKS", kid)
		case len(only) == 1:
			return only[0].key, nil
		case len(only) > 1:
			return nil, refuse("token has no key ID (kid) and the JWKS has %d %s keys", len(only), alg)
		}
	}
	return nil, refuse("no key verifies %s tokens", alg)
}

func describeKey(key any, alg string) string {
	if alg != "" {
		return "alg " + alg
	}
	return strings.Join(algsFor(key), ", ")
}

// explain turns a parser error into a precise reason.
func (v *Verifier) explain(err error, tok *jwt.Token, c *picoClaims, allowed []string, now time.Time) error {
	var ae *authError
	if errors.As(err, &ae) {
		return ae
	}
	if errors.Is(err, jwt.ErrTokenMalformed) {
		return refuse("token is malformed: %s", strings.TrimPrefix(err.Error(), jwt.ErrTokenMalformed.Error()+": "))
	}
	if tok != nil && tok.Header != nil {
		alg, ok := tok.Header["alg"].(string)
		if !ok {
			return refuse("token header has no alg")
		}
		if !slices.Contains(allowed, alg) {
			if kid, _ := tok.Header["kid"].(string); kid != "" && v.jwks != nil {
				if _, ok := v.jwks.lookup(kid); !ok {
					return refuse("token key ID (kid) %q is unknown: not in the JWKS", kid)
				}
			}
			return refuse("token algorithm %q is not accepted (this edge accepts %s)", alg, strings.Join(allowed, ", "))
		}
	}
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	leeway := v.cfg.Leeway.String()
	switch {
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return refuse("token signature is invalid")
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return refuse("token cannot be verified: %v", err)
	case c.ExpiresAt == nil:
		return refuse("token has no exp claim: the edge requires an expiry")
	case errors.Is(err, jwt.ErrTokenExpired):
		return refuse("token expired at %s (now %s, leeway %s)", ts(c.ExpiresAt.Time), ts(now), leeway)
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return refuse("token is not valid before %s (now %s, leeway %s)", ts(c.NotBefore.Time), ts(now), leeway)
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return refuse("token is issued in the future: iat %s (now %s, leeway %s)", ts(c.IssuedAt.Time), ts(now), leeway)
	case v.cfg.Issuer != "" && c.Issuer == "":
		return refuse("token has no iss claim (want %q)", v.cfg.Issuer)
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return refuse("token issuer %q is not %q", c.Issuer, v.cfg.Issuer)
	case v.cfg.Audience != "" && len(c.Audience) == 0:
		return refuse("token has no aud claim (want %q)", v.cfg.Audience)
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return refuse("token audience %q does not include %q", []string(c.Audience), v.cfg.Audience)
	}
	return refuse("token refused: %v", err)
}

// Status is the auth section of an edge node's /status/node.
type Status struct {
	Agents      string    `json:"agents"`                // "jwt" or "none"
	Clients     string    `json:"clients"`               // "jwt" or "none"
	Algorithms  []string  `json:"algorithms,omitempty"`  // those Algorithms returns
	Issuer      string    `json:"issuer,omitempty"`      // Config.Issuer
	Audience    string    `json:"audience,omitempty"`    // Config.Audience
	JWKSURL     string    `json:"jwks_url,omitempty"`    // Config.JWKSURL
	JWKSKeys    int       `json:"jwks_keys,omitempty"`   // keys of the JWKS file and URL
	JWKSFetched time.Time `json:"jwks_fetched,omitzero"` // the last good fetch of JWKSURL
	JWKSError   string    `json:"jwks_error,omitempty"`  // why the last fetch failed; "" if it did not
}

// Status reports what v checks and how its JWKS fetches went. A nil v
// reports Agents and Clients "none".
func (v *Verifier) Status() Status {
	if v == nil {
		return Status{Agents: "none", Clients: "none"}
	}
	st := Status{Agents: "jwt", Clients: "none", Algorithms: v.Algorithms(),
		Issuer: v.cfg.Issuer, Audience: v.cfg.Audience, JWKSURL: v.cfg.JWKSURL}
	if v.cfg.ProxyAuth {
		st.Clients = "jwt"
	}
	if v.jwks != nil {
		st.JWKSKeys = len(v.jwks.keys())
		st.JWKSFetched, st.JWKSError = v.jwks.lastFetch()
	}
	return st
}

// Mode says in a few words who must present a token: "jwt (agents)" or
// "jwt (agents and clients)"; "none" for a nil v, when anyone may connect.
func (v *Verifier) Mode() string {
	switch {
	case v == nil:
		return "none"
	case v.cfg.ProxyAuth:
		return "jwt (agents and clients)"
	}
	return "jwt (agents)"
}
