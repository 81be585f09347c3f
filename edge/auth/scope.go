package auth

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pico-edge/pico/quicutil"
)

// Grant is what a verified token allows. The zero Grant allows nothing
// and has a zero expiry.
type Grant struct {
	scope   Scope
	expires time.Time
	subject string
}

// Scope returns the endpoints the token allows.
func (g Grant) Scope() Scope { return g.scope }

// Expires returns the token's exp.
func (g Grant) Expires() time.Time { return g.expires }

// Subject returns the token's sub: who it is for; "" without one.
func (g Grant) Subject() string { return g.subject }

// Scope is the set of endpoints a token allows, from its pico.endpoints
// claim. The zero Scope allows nothing.
type Scope struct {
	all      bool
	ids      []string // exact IDs
	prefixes []string // of wildcards, without the '*'
	entries  []string // as the token lists them, for messages
}

// parseScope parses the pico.endpoints claim. Each entry is an endpoint ID,
// a prefix wildcard ("team-a-*": a non-empty prefix of a-z, 0-9 and '-',
// not starting with '-', then '*') or "*". A bad entry refuses the token.
func parseScope(entries []string) (Scope, error) {
	if len(entries) > 1000 {
		return Scope{}, refuse("token lists %d endpoints in pico.endpoints (max 1000)", len(entries))
	}
	sc := Scope{entries: entries}
	for _, e := range entries {
		if err := ValidateEndpointPattern(e); err != nil {
			return Scope{}, refuse("token claim pico.endpoints: %v", err)
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

// Allows reports whether the scope allows endpoint id.
func (sc Scope) Allows(id string) bool {
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

// String lists the entries for messages, cut short when long; "none"
// when there are none.
func (sc Scope) String() string {
	if len(sc.entries) == 0 {
		return "none"
	}
	s := strings.Join(sc.entries, ", ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// Forbidden says why a token of scope sc does not reach endpoint id, for
// the agent or client and the log alike.
func Forbidden(sc Scope, id string) string {
	return fmt.Sprintf("token does not allow endpoint %q (its pico.endpoints: %s)", id, sc)
}

// Bearer returns the token of a request header's values: exactly one
// value, "Bearer <token>" (the scheme in any case). Its error says what
// is wrong, for the client and the log alike.
func Bearer(header string, vals []string) (string, error) {
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
