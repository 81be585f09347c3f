package edge

import (
	"net/http"
	"sync/atomic"

	"github.com/pico-edge/pico/quicutil"
)

// upstreams is what the proxy keeps toward one target between requests:
// the idle HTTP/1.1 keep-alive streams of the stream path (h1stream.go),
// by endpoint, and ReverseProxy's http.Transports, one per stream kind,
// made on first use. Each target holds one (its upstreams method); only
// the proxy uses it. The zero value is ready.
type upstreams struct {
	h1  streamPools
	rt  atomic.Pointer[http.Transport] // HTTP/1.1: one request per stream at a time
	rt2 atomic.Pointer[http.Transport] // HTTP/2: many requests on one stream
}

// transport returns the transport to tg for streams of kind k (HTTP/2 for
// KindHTTP2, else HTTP/1.1). It makes it on first use, also after the
// target closed: then its streams fail to open, so it never holds an idle
// one.
func (u *upstreams) transport(s *Server, tg target, k quicutil.Kind) *http.Transport {
	p, kind := &u.rt, quicutil.KindHTTP
	if k == quicutil.KindHTTP2 {
		p, kind = &u.rt2, quicutil.KindHTTP2
	}
	if rt := p.Load(); rt != nil {
		return rt
	}
	p.CompareAndSwap(nil, s.newAgentTransport(tg, kind))
	return p.Load()
}

// closeIdle closes the idle streams and connections to the target; with
// final (the target is gone), also every stream put back later.
func (u *upstreams) closeIdle(final bool) {
	u.h1.closeIdle(final)
	for _, rt := range [...]*http.Transport{u.rt.Load(), u.rt2.Load()} {
		if rt != nil {
			rt.CloseIdleConnections()
		}
	}
}
