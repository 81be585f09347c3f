package edge

import (
	"net/http"
	"strings"

	"github.com/pico-edge/pico/routing"
)

// acmeChallengePath is where ACME CAs ask for HTTP-01 answers (RFC 8555
// section 8.3).
const acmeChallengePath = "/.well-known/acme-challenge/"

// withACMEChallenges serves acmeChallengePath with challenges, whatever the
// Host, and the rest with next; with no challenges, it is next.
func withACMEChallenges(challenges, next http.Handler) http.Handler {
	if challenges == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, acmeChallengePath) {
			challenges.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Serves reports whether an agent serves endpoint id on this node or on
// another node of the cluster (the routing table's view). An ACME client
// asks it before ordering a certificate for the endpoint's name.
func (s *Server) Serves(id string) bool {
	_, _, err := s.table.Lookup(routing.EndpointID(strings.ToLower(id)))
	return err == nil
}
