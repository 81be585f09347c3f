package edge

import (
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/time/rate"

	"github.com/pico-edge/pico/routing"
)

// Limits that keep one busy endpoint, agent or client from degrading the
// others (docs/limits.md). Each is a Config field and a flag.

// endpointGate bounds the streams in flight to each endpoint: beyond the
// bound they are refused at once (503) rather than queued behind the
// others. A node has two: requests (Config.MaxInflightPerEndpoint), and
// long-lived connections, upgrades and TCP (Config.MaxConnsPerEndpoint).
type endpointGate struct {
	max      int64
	inflight sync.Map // routing.EndpointID -> *atomic.Int64; only endpoints that exist get one
}

// acquire counts one more stream to id, or reports that id has max already.
func (g *endpointGate) acquire(id routing.EndpointID) (release func(), ok bool) {
	v, _ := g.inflight.Load(id)
	if v == nil {
		v, _ = g.inflight.LoadOrStore(id, new(atomic.Int64))
	}
	n := v.(*atomic.Int64)
	if n.Add(1) > g.max {
		n.Add(-1)
		return nil, false
	}
	return func() { n.Add(-1) }, true
}

// handshakeLimiter decides when QUIC handshakes must first prove their
// source address (a Retry, one more round trip): above perSecond new
// handshakes a second on the node, as quic-go's documentation suggests.
func handshakeLimiter(perSecond int) func(net.Addr) bool {
	if perSecond <= 0 {
		return nil
	}
	lim := rate.NewLimiter(rate.Limit(perSecond), perSecond)
	return func(net.Addr) bool { return !lim.Allow() }
}

// isUpgrade reports whether r asks to switch protocols (RFC 9110 §7.8):
// a WebSocket, say, which holds its stream for as long as it lives.
func isUpgrade(r *http.Request) bool {
	return r.Header.Get("Upgrade") != "" && httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade")
}
