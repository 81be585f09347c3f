package edge

import (
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
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/golang-jwt/jwt/v5"

	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// AuthConfig makes the edge verify tokens: JSON Web Tokens (RFC 7519)
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
type AuthConfig struct {
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

func (c AuthConfig) withDefaults() AuthConfig {
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

func (c AuthConfig) validate() error {
	if len(c.HMACSecret) == 0 && c.RSAPublicKey == nil && c.ECDSAPublicKey == nil &&
		c.Ed25519PublicKey == nil && len(c.JWKS) == 0 && c.JWKSURL == "" {
		return errors.New("edge: config: Auth has no key (HMAC secret, public key or JWKS)")
	}
	if n := len(c.HMACSecret); n > 0 && n < MinHMACSecret {
		return fmt.Errorf("edge: config: HMAC secret of %d bytes (min %d)", n, MinHMACSecret)
	}
	if k := c.RSAPublicKey; k != nil && k.N.BitLen() < 2048 {
		return fmt.Errorf("edge: config: RSA key of %d bits (min 2048)", k.N.BitLen())
	}
	if k := c.ECDSAPublicKey; k != nil && ecdsaAlg(k) == "" {
		return fmt.Errorf("edge: config: ECDSA key on curve %s (want P-256, P-384 or P-521)", k.Curve.Params().Name)
	}
	if k := c.Ed25519PublicKey; k != nil && len(k) != ed25519.PublicKeySize {
		return fmt.Errorf("edge: config: Ed25519 key of %d bytes", len(k))
	}
	if len(c.JWKS) > 0 {
		if _, err := parseJWKS(c.JWKS); err != nil {
			return fmt.Errorf("edge: config: JWKS: %w", err)
		}
	}
	if c.JWKSURL != "" && !strings.HasPrefix(c.JWKSURL, "https://") && !strings.HasPrefix(c.JWKSURL, "http://") {
		return fmt.Errorf("edge: config: JWKS URL %q: want http:// or https://", c.JWKSURL)
	}
	for name, d := range map[string]time.Duration{"Leeway": c.Leeway, "MaxLifetime": c.MaxLifetime,
		"JWKSRefresh": c.JWKSRefresh, "JWKSMinRefresh": c.JWKSMinRefresh} {
		if d < 0 {
			return fmt.Errorf("edge: config: Auth.%s is negative (%s)", name, d)
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

// authenticator verifies tokens for one Server.
type authenticator struct {
	cfg    AuthConfig
	static []any // configured keys without a kid
	jwks   *jwksSet
	m      authMetrics
}

type authMetrics struct {
	refused map[string]*metrics.Counter // by who: agent, client, forward, refresh
}

func newAuthenticator(cfg AuthConfig, set *metrics.Set, log *slog.Logger) *authenticator {
	a := &authenticator{cfg: cfg, m: authMetrics{refused: make(map[string]*metrics.Counter)}}
	if len(cfg.HMACSecret) > 0 {
		a.static = append(a.static, cfg.HMACSecret)
	}
	if cfg.RSAPublicKey != nil {
		a.static = append(a.static, cfg.RSAPublicKey)
	}
	if cfg.ECDSAPublicKey != nil {
		a.static = append(a.static, cfg.ECDSAPublicKey)
	}
	if cfg.Ed25519PublicKey != nil {
		a.static = append(a.static, cfg.Ed25519PublicKey)
	}
	if len(cfg.JWKS) > 0 || cfg.JWKSURL != "" {
		a.jwks = newJWKSSet(cfg, log)
	}
	for _, who := range []string{"agent", "client", "forward", "refresh"} {
		a.m.refused[who] = set.NewCounter(`pico_auth_refused_total{who="` + who + `"}`)
	}
	return a
}

// allowedAlgs returns the algorithms of the keys known now, sorted.
func (a *authenticator) allowedAlgs() []string {
	var out []string
	add := func(key any) {
		for _, alg := range algsFor(key) {
			if !slices.Contains(out, alg) {
				out = append(out, alg)
			}
		}
	}
	for _, k := range a.static {
		add(k)
	}
	if a.jwks != nil {
		for _, k := range a.jwks.keys() {
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

// grant is what a verified token allows.
type grant struct {
	scope   scope
	expires time.Time
	subject string
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

// verify checks token and returns what it allows, or an *authError.
func (a *authenticator) verify(token string) (grant, error) {
	g, err := a.verifyToken(strings.TrimSpace(token))
	if err != nil {
		msg := err.Error()
		if len(msg) > maxReason {
			msg = msg[:maxReason]
		}
		return grant{}, &authError{msg: msg}
	}
	return g, nil
}

func (a *authenticator) verifyToken(token string) (grant, error) {
	if token == "" {
		return grant{}, refuse("no token: this edge requires one")
	}
	if a.jwks != nil && a.cfg.JWKSURL != "" {
		// A kid not seen yet may be a key rotated in, maybe of another
		// type: fetch before the algorithms are decided.
		if t, _, _ := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{}); t != nil {
			if kid, _ := t.Header["kid"].(string); kid != "" {
				if _, ok := a.jwks.lookup(kid); !ok {
					a.jwks.refreshFor(kid)
				}
			}
		}
	}
	allowed := a.allowedAlgs()
	now := a.cfg.Now()
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(allowed),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(a.cfg.Leeway),
		jwt.WithTimeFunc(func() time.Time { return now }),
	}
	if a.cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(a.cfg.Issuer))
	}
	if a.cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(a.cfg.Audience))
	}
	var claims picoClaims
	tok, err := jwt.NewParser(opts...).ParseWithClaims(token, &claims, a.key)
	if err != nil {
		return grant{}, a.explain(err, tok, &claims, allowed, now)
	}
	exp := claims.ExpiresAt.Time
	start := now
	if claims.IssuedAt != nil {
		start = claims.IssuedAt.Time
	}
	if life := exp.Sub(start); life > a.cfg.MaxLifetime {
		from := "iat"
		if claims.IssuedAt == nil {
			from = "now (no iat)"
		}
		return grant{}, refuse("token lifetime of %s (exp - %s) exceeds the maximum of %s",
			life.Round(time.Second), from, a.cfg.MaxLifetime)
	}
	var entries []string
	if claims.Pico != nil {
		entries = claims.Pico.Endpoints
	}
	sc, err := parseScope(entries)
	if err != nil {
		return grant{}, err
	}
	return grant{scope: sc, expires: exp, subject: claims.Subject}, nil
}

// key finds the key that verifies t: the JWKS key its kid names, else the
// configured key of its algorithm's family.
func (a *authenticator) key(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	kid, _ := t.Header["kid"].(string)
	fits := func(key any, keyAlg string) bool {
		return slices.Contains(algsFor(key), alg) && (keyAlg == "" || keyAlg == alg)
	}
	if kid != "" && a.jwks != nil {
		k, ok := a.jwks.lookup(kid)
		if !ok {
			k, ok = a.jwks.refreshFor(kid)
		}
		if ok {
			if !fits(k.key, k.alg) {
				return nil, refuse("token algorithm %s does not fit key %q (%s)", alg, kid, describeKey(k.key, k.alg))
			}
			return k.key, nil
		}
	}
	for _, k := range a.static {
		if fits(k, "") {
			return k, nil
		}
	}
	if a.jwks != nil {
		var only []jwkKey
		for _, k := range a.jwks.keys() {
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
func (a *authenticator) explain(err error, tok *jwt.Token, c *picoClaims, allowed []string, now time.Time) error {
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
			if kid, _ := tok.Header["kid"].(string); kid != "" && a.jwks != nil {
				if _, ok := a.jwks.lookup(kid); !ok {
					return refuse("token key ID (kid) %q is unknown: not in the JWKS", kid)
				}
			}
			return refuse("token algorithm %q is not accepted (this edge accepts %s)", alg, strings.Join(allowed, ", "))
		}
	}
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	leeway := a.cfg.Leeway.String()
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
	case a.cfg.Issuer != "" && c.Issuer == "":
		return refuse("token has no iss claim (want %q)", a.cfg.Issuer)
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return refuse("token issuer %q is not %q", c.Issuer, a.cfg.Issuer)
	case a.cfg.Audience != "" && len(c.Audience) == 0:
		return refuse("token has no aud claim (want %q)", a.cfg.Audience)
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return refuse("token audience %q does not include %q", []string(c.Audience), a.cfg.Audience)
	}
	return refuse("token refused: %v", err)
}

// scope is the set of endpoints a token allows.
type scope struct {
	all      bool
	ids      []string // exact IDs
	prefixes []string // of wildcards, without the '*'
	entries  []string // as the token lists them, for messages
}

// parseScope parses the pico.endpoints claim. Each entry is an endpoint ID,
// a prefix wildcard ("team-a-*": a non-empty prefix of a-z, 0-9 and '-',
// not starting with '-', then '*') or "*". A bad entry refuses the token.
func parseScope(entries []string) (scope, error) {
	if len(entries) > 1000 {
		return scope{}, refuse("token lists %d endpoints in pico.endpoints (max 1000)", len(entries))
	}
	sc := scope{entries: entries}
	for _, e := range entries {
		if err := ValidateEndpointPattern(e); err != nil {
			return scope{}, refuse("token claim pico.endpoints: %v", err)
		}
		switch {
		case e == "*":
			sc.all = true
		case strings.HasSuffix(e, "*"):
			sc.prefixes = append(sc.prefixes, strings.TrimSuffix(e, "*"))
		default:
			sc.ids = append(sc.ids, e)
		}
	}
	return sc, nil
}

// ValidateEndpointPattern reports whether p is an entry of the
// pico.endpoints claim: an endpoint ID, a prefix wildcard ("team-a-*": a
// non-empty prefix of a-z, 0-9 and '-', not starting with '-', then '*')
// or "*" (every endpoint).
func ValidateEndpointPattern(p string) error {
	switch {
	case p == "*":
		return nil
	case strings.HasSuffix(p, "*"):
		if err := validPrefix(strings.TrimSuffix(p, "*")); err != nil {
			return fmt.Errorf("entry %q: %v", p, err)
		}
		return nil
	}
	if err := quicutil.ValidateEndpointID(p); err != nil {
		return fmt.Errorf("entry %q is neither an endpoint ID nor a prefix wildcard: %v", p, err)
	}
	return nil
}

func validPrefix(p string) error {
	if p == "" {
		return errors.New("the prefix before '*' is empty (use \"*\" alone for every endpoint)")
	}
	if len(p) >= quicutil.MaxEndpointLen {
		return fmt.Errorf("prefix of %d characters (max %d)", len(p), quicutil.MaxEndpointLen-1)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0:
		default:
			return fmt.Errorf("prefix %q has %q (allowed: a-z, 0-9, '-' not first; '*' only at the end)", p, p[i:i+1])
		}
	}
	return nil
}

// allows reports whether the scope allows endpoint id.
func (sc scope) allows(id string) bool {
	if sc.all || slices.Contains(sc.ids, id) {
		return true
	}
	for _, p := range sc.prefixes {
		if strings.HasPrefix(id, p) {
			return true
		}
	}
	return false
}

// String lists the entries for messages, cut short when long.
func (sc scope) String() string {
	if len(sc.entries) == 0 {
		return "none"
	}
	s := strings.Join(sc.entries, ", ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// forbidden says why a token does not reach endpoint id.
func forbidden(sc scope, id string) string {
	return fmt.Sprintf("token does not allow endpoint %q (its pico.endpoints: %s)", id, sc)
}

// authorizeRequest authenticates a client request for endpoint ep when the
// edge has proxy auth on, and takes the Pico token out of the request. It
// writes the refusal and returns false when the request may not go on.
//
// The token is the one of X-Pico-Authorization when that header is
// present: Authorization then belongs to the upstream and passes
// untouched. Otherwise it is Authorization's bearer token, and
// Authorization is removed.
func (s *Server) authorizeRequest(w http.ResponseWriter, r *http.Request, ep routing.EndpointID) bool {
	a := s.auth
	if a == nil || !a.cfg.ProxyAuth {
		return true
	}
	header := "X-Pico-Authorization"
	vals := r.Header.Values(header)
	if len(vals) == 0 {
		header = "Authorization"
		vals = r.Header.Values(header)
	}
	token, err := bearer(header, vals)
	var g grant
	if err == nil {
		g, err = a.verify(token)
	}
	if err != nil {
		a.m.refused["client"].Inc()
		challenge := `Bearer realm="pico"`
		if len(vals) > 0 {
			challenge += `, error="invalid_token", error_description="` + quoteSafe(err.Error()) + `"`
		}
		w.Header().Set("WWW-Authenticate", challenge)
		writeError(w, r, http.StatusUnauthorized, ep, "unauthorized: "+err.Error())
		return false
	}
	if !g.scope.allows(string(ep)) {
		a.m.refused["client"].Inc()
		msg := forbidden(g.scope, string(ep))
		w.Header().Set("WWW-Authenticate", `Bearer realm="pico", error="insufficient_scope", error_description="`+quoteSafe(msg)+`"`)
		writeError(w, r, http.StatusForbidden, ep, "forbidden: "+msg)
		return false
	}
	r.Header.Del(header)
	return true
}

// bearer returns the token of a header's values: exactly one value,
// "Bearer <token>".
func bearer(header string, vals []string) (string, error) {
	switch len(vals) {
	case 0:
		return "", refuse("no token: send X-Pico-Authorization: Bearer <token> (or Authorization: Bearer <token>)")
	case 1:
	default:
		return "", refuse("%d %s headers; send one", len(vals), header)
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", refuse("%s is not \"Bearer <token>\"", header)
	}
	return strings.TrimSpace(token), nil
}

// quoteSafe makes s fit an RFC 6750 error_description: printable ASCII
// without '"' and '\'.
func quoteSafe(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c == '"':
			b[i] = '\''
		case c == '\\':
			b[i] = '/'
		case c < 0x20 || c > 0x7e:
			b[i] = '?'
		}
	}
	return string(b)
}

// authorizeDial authenticates a TCP forward (a stream an agent opened) for
// its endpoint when the edge has proxy auth on. It returns StatusOK, or
// the answer to refuse the stream with.
func (s *Server) authorizeDial(h quicutil.StreamHeader) (quicutil.Status, string) {
	a := s.auth
	if a == nil || !a.cfg.ProxyAuth {
		return quicutil.StatusOK, ""
	}
	g, err := a.verify(h.Token)
	if err != nil {
		a.m.refused["forward"].Inc()
		return quicutil.StatusUnauthorized, err.Error()
	}
	if !g.scope.allows(h.Endpoint) {
		a.m.refused["forward"].Inc()
		return quicutil.StatusForbidden, forbidden(g.scope, h.Endpoint)
	}
	return quicutil.StatusOK, ""
}

// authStatus is the auth section of /status/node.
type authStatus struct {
	Agents      string    `json:"agents"`  // "jwt" or "none"
	Clients     string    `json:"clients"` // "jwt" or "none"
	Algorithms  []string  `json:"algorithms,omitempty"`
	Issuer      string    `json:"issuer,omitempty"`
	Audience    string    `json:"audience,omitempty"`
	JWKSURL     string    `json:"jwks_url,omitempty"`
	JWKSKeys    int       `json:"jwks_keys,omitempty"`
	JWKSFetched time.Time `json:"jwks_fetched,omitzero"`
	JWKSError   string    `json:"jwks_error,omitempty"`
}

// authMode is "none" when anyone may connect, else what is checked.
func (s *Server) authMode() string {
	switch {
	case s.auth == nil:
		return "none"
	case s.auth.cfg.ProxyAuth:
		return "jwt (agents and clients)"
	}
	return "jwt (agents)"
}

func (s *Server) authStatus() authStatus {
	a := s.auth
	if a == nil {
		return authStatus{Agents: "none", Clients: "none"}
	}
	st := authStatus{Agents: "jwt", Clients: "none", Algorithms: a.allowedAlgs(),
		Issuer: a.cfg.Issuer, Audience: a.cfg.Audience, JWKSURL: a.cfg.JWKSURL}
	if a.cfg.ProxyAuth {
		st.Clients = "jwt"
	}
	if a.jwks != nil {
		st.JWKSKeys = len(a.jwks.keys())
		st.JWKSFetched, st.JWKSError = a.jwks.lastFetch()
	}
	return st
}

// logMode says at start who has to authenticate, loudly when nobody does.
func (s *Server) logMode() {
	switch a := s.auth; {
	case a == nil:
		s.log.Warn("no authentication configured: anyone who can reach the agent port can register any endpoint, " +
			"and anyone who can reach the proxy port can use every endpoint")
	case !a.cfg.ProxyAuth:
		s.log.Info("agents must present a token; clients need none (proxy auth is off): "+
			"anyone who can reach the proxy port can use every endpoint", "algorithms", a.allowedAlgs())
	default:
		s.log.Info("agents and clients must present a token", "algorithms", a.allowedAlgs())
	}
	if a := s.auth; a != nil && a.cfg.Audience == "" &&
		(a.jwks != nil || a.cfg.RSAPublicKey != nil || a.cfg.ECDSAPublicKey != nil || a.cfg.Ed25519PublicKey != nil) {
		s.log.Warn("no token audience configured: a token the same keys signed for another service is accepted too")
	}
}

// setGrantLocked makes g the session's token and arms the timer that
// closes the connection when it expires (exp + leeway); the caller holds
// sess.mu.
func (sess *session) setGrantLocked(g grant) {
	a := sess.srv.auth
	sess.grant = g
	sess.grantGen++
	gen := sess.grantGen
	if sess.expiry != nil {
		sess.expiry.Stop()
	}
	reason := "token expired at " + g.expires.UTC().Format(time.RFC3339)
	sess.expiry = time.AfterFunc(max(g.expires.Add(a.cfg.Leeway).Sub(a.cfg.Now()), 0), func() {
		sess.mu.Lock()
		current := sess.grantGen == gen && !sess.closing
		sess.mu.Unlock()
		if current {
			sess.log.Info("token expired: closing the agent connection", "expired", g.expires.UTC().Format(time.RFC3339))
			sess.conn.CloseWithError(quicutil.ConnCodeUnauthorized, reason)
		}
	})
}

// allowsLocked reports whether the session's token allows endpoint id;
// the caller holds sess.mu.
func (sess *session) allowsLocked(id string) bool {
	return sess.srv.auth == nil || sess.grant.scope.allows(id)
}

// refresh verifies the token of a Refresh. A refused token changes
// nothing; an accepted one becomes the session's token, moves its expiry,
// and withdraws the endpoints it does not allow.
func (sess *session) refresh(m *quicutil.Refresh) *quicutil.Result {
	res := &quicutil.Result{Seq: m.Seq, Results: []quicutil.EndpointResult{}}
	s := sess.srv
	var g grant
	if s.auth != nil {
		var err error
		if g, err = s.auth.verify(m.Token); err != nil {
			s.auth.m.refused["refresh"].Inc()
			sess.log.Warn("token refresh refused; the connection keeps its token", "err", err)
			res.Results = append(res.Results, quicutil.EndpointResult{Code: quicutil.StatusUnauthorized, Message: err.Error()})
			return res
		}
	}
	var withdrawn []routing.EndpointID
	sess.mu.Lock()
	if s.auth != nil {
		sess.setGrantLocked(g)
	}
	ids := make([]routing.EndpointID, 0, len(sess.endpoints))
	for id := range sess.endpoints {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		r := quicutil.EndpointResult{ID: string(id)}
		if !sess.allowsLocked(string(id)) {
			delete(sess.endpoints, id)
			s.table.Remove(id, sess)
			withdrawn = append(withdrawn, id)
			r.Code, r.Message = quicutil.StatusForbidden, fmt.Sprintf("the new token does not allow endpoint %q: withdrawn", id)
		}
		res.Results = append(res.Results, r)
	}
	sess.mu.Unlock()
	for _, id := range withdrawn {
		s.announce(id)
		sess.log.Warn("endpoint withdrawn: the refreshed token does not allow it", "endpoint_id", string(id))
	}
	if s.auth != nil {
		sess.log.Info("token refreshed", "expires", g.expires.UTC().Format(time.RFC3339), "withdrawn", len(withdrawn))
	}
	return res
}
