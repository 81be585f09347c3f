package edge

import (
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/pico-edge/pico/edge/auth"
	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

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
	if a == nil || !a.Config().ProxyAuth {
		return true
	}
	header := "X-Pico-Authorization"
	vals := r.Header.Values(header)
	if len(vals) == 0 {
		header = "Authorization"
		vals = r.Header.Values(header)
	}
	token, err := auth.Bearer(header, vals)
	var g auth.Grant
	if err == nil {
		g, err = a.Verify(token)
	}
	if err != nil {
		a.Refused(auth.WhoClient)
		challenge := `Bearer realm="pico"`
		if len(vals) > 0 {
			challenge += `, error="invalid_token", error_description="` + quoteSafe(err.Error()) + `"`
		}
		w.Header().Set("WWW-Authenticate", challenge)
		writeError(w, r, http.StatusUnauthorized, ep, "unauthorized: "+err.Error())
		return false
	}
	if !g.Scope().Allows(string(ep)) {
		a.Refused(auth.WhoClient)
		msg := auth.Forbidden(g.Scope(), string(ep))
		w.Header().Set("WWW-Authenticate", `Bearer realm="pico", error="insufficient_scope", error_description="`+quoteSafe(msg)+`"`)
		writeError(w, r, http.StatusForbidden, ep, "forbidden: "+msg)
		return false
	}
	r.Header.Del(header)
	return true
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
	if a == nil || !a.Config().ProxyAuth {
		return quicutil.StatusOK, ""
	}
	g, err := a.Verify(h.Token)
	if err != nil {
		a.Refused(auth.WhoForward)
		return quicutil.StatusUnauthorized, err.Error()
	}
	if !g.Scope().Allows(h.Endpoint) {
		a.Refused(auth.WhoForward)
		return quicutil.StatusForbidden, auth.Forbidden(g.Scope(), h.Endpoint)
	}
	return quicutil.StatusOK, ""
}

// logMode says at start who has to authenticate, loudly when nobody does.
func (s *Server) logMode() {
	switch a := s.auth; {
	case a == nil:
		s.log.Warn("no authentication configured: anyone who can reach the agent port can register any endpoint, " +
			"and anyone who can reach the proxy port can use every endpoint")
	case !a.Config().ProxyAuth:
		s.log.Info("agents must present a token; clients need none (proxy auth is off): "+
			"anyone who can reach the proxy port can use every endpoint", "algorithms", a.Algorithms())
	default:
		s.log.Info("agents and clients must present a token", "algorithms", a.Algorithms())
	}
	if a := s.auth; a != nil {
		if c := a.Config(); c.Audience == "" &&
			(len(c.JWKS) > 0 || c.JWKSURL != "" || c.RSAPublicKey != nil || c.ECDSAPublicKey != nil || c.Ed25519PublicKey != nil) {
			s.log.Warn("no token audience configured: a token the same keys signed for another service is accepted too")
		}
	}
}

// setGrantLocked makes g the link's token and arms the timer that
// closes the connection when it expires (exp + leeway); the caller holds
// l.mu.
func (l *link) setGrantLocked(g auth.Grant) {
	c := l.srv.auth.Config()
	l.grant = g
	l.grantGen++
	gen := l.grantGen
	if l.expiry != nil {
		l.expiry.Stop()
	}
	reason := "token expired at " + g.Expires().UTC().Format(time.RFC3339)
	l.expiry = time.AfterFunc(max(g.Expires().Add(c.Leeway).Sub(c.Now()), 0), func() {
		l.mu.Lock()
		current := l.grantGen == gen && !l.closing
		l.mu.Unlock()
		if current {
			l.log.Info("token expired: closing the agent connection", "expired", g.Expires().UTC().Format(time.RFC3339))
			l.conn.CloseWithError(quicutil.ConnCodeUnauthorized, reason)
		}
	})
}

// allowsLocked reports whether the link's token allows endpoint id;
// the caller holds l.mu.
func (l *link) allowsLocked(id string) bool {
	return l.srv.auth == nil || l.grant.Scope().Allows(id)
}

// refresh verifies the token of a Refresh. A refused token changes
// nothing; an accepted one becomes the link's token, moves its expiry,
// and withdraws the endpoints it does not allow.
func (l *link) refresh(m *quicutil.Refresh) *quicutil.Result {
	res := &quicutil.Result{Seq: m.Seq, Results: []quicutil.EndpointResult{}}
	s := l.srv
	var g auth.Grant
	if s.auth != nil {
		var err error
		if g, err = s.auth.Verify(m.Token); err != nil {
			s.auth.Refused(auth.WhoRefresh)
			l.log.Warn("token refresh refused; the connection keeps its token", "err", err)
			res.Results = append(res.Results, quicutil.EndpointResult{Code: quicutil.StatusUnauthorized, Message: err.Error()})
			return res
		}
	}
	var withdrawn []routing.EndpointID
	l.mu.Lock()
	if s.auth != nil {
		l.setGrantLocked(g)
	}
	ids := make([]routing.EndpointID, 0, len(l.endpoints))
	for id := range l.endpoints {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		r := quicutil.EndpointResult{ID: string(id)}
		if !l.allowsLocked(string(id)) {
			delete(l.endpoints, id)
			s.table.Remove(id, l)
			withdrawn = append(withdrawn, id)
			r.Code, r.Message = quicutil.StatusForbidden, fmt.Sprintf("the new token does not allow endpoint %q: withdrawn", id)
		}
		res.Results = append(res.Results, r)
	}
	l.mu.Unlock()
	for _, id := range withdrawn {
		s.announce(id)
		l.log.Warn("endpoint withdrawn: the refreshed token does not allow it", "endpoint_id", string(id))
	}
	if s.auth != nil {
		l.log.Info("token refreshed", "expires", g.Expires().UTC().Format(time.RFC3339), "withdrawn", len(withdrawn))
	}
	return res
}
