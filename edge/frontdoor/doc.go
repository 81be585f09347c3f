// Package frontdoor is where client connections come in to an edge node:
// the plain HTTP door (HTTP/1.1 and h2c), the HTTPS door (HTTP/1.1 and
// HTTP/2) and HTTP/3 on UDP, all serving one http.Handler; the HTTP/1.1
// request guard in front of net/http (it refuses request-smuggling framing
// and over-long heads before net/http reads them); the limits on client
// connections (per listener, global, new ones per source address); and
// the request limits net/http leaves to its user (CheckRequest).
//
// It knows nothing of endpoints, agents or the cluster: the edge gives it
// the handler. A request the guard refused reaches the handler bodiless
// with RejectHeader set, and the handler must answer it with that status.
//
// It imports no other package of ours.
package frontdoor
