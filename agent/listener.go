package agent

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/pico-edge/pico/quicutil"
)

// Listener is an endpoint served by the program itself: each stream the
// edge opens is a net.Conn from Accept, whose RemoteAddr is the client's.
type Listener struct {
	a    *Agent
	reg  *registration
	id   string
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

// Listen serves endpoint id as HTTP: use the Listener with http.Serve. It
// returns once the edge accepted the endpoint, or with its refusal.
func (a *Agent) Listen(ctx context.Context, id string) (*Listener, error) {
	return a.listen(ctx, id, quicutil.KindHTTP)
}

// ListenTCP serves endpoint id as raw TCP (reached with Dial or
// pico-agent forward).
func (a *Agent) ListenTCP(ctx context.Context, id string) (*Listener, error) {
	return a.listen(ctx, id, quicutil.KindTCP)
}

func (a *Agent) listen(ctx context.Context, id string, kind quicutil.Kind) (*Listener, error) {
	ln := &Listener{a: a, id: id, ch: make(chan net.Conn), done: make(chan struct{})}
	r, err := a.serve(ctx, id, kind, ln)
	if err != nil {
		return nil, err
	}
	ln.reg = r
	return ln, nil
}

func (ln *Listener) serve(c *quicutil.Conn, h quicutil.StreamHeader, _ *endpointStats) {
	select {
	case <-ln.done:
		refuse(c, quicutil.StatusNoRoute, fmt.Sprintf("endpoint %q is closing", ln.id))
		return
	default:
	}
	acceptAnswer(c, h)
	select {
	case ln.ch <- c:
	case <-ln.done:
		c.Abort(quicutil.StreamCodeCanceled)
	case <-c.Stream().Context().Done():
		c.Abort(quicutil.StreamCodeCanceled)
	}
}

// Accept waits for the next connection to the endpoint.
func (ln *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-ln.ch:
		return c, nil
	case <-ln.done:
		return nil, net.ErrClosed
	}
}

// Close stops serving the endpoint. Connections accepted before stay open.
func (ln *Listener) Close() error {
	ln.closeLocal()
	if ln.reg != nil {
		ln.a.remove(ln.reg)
	}
	return nil
}

func (ln *Listener) closeLocal() { ln.once.Do(func() { close(ln.done) }) }

// Addr returns the endpoint as an address of network "pico".
func (ln *Listener) Addr() net.Addr { return endpointAddr(ln.id) }

type endpointAddr string

func (endpointAddr) Network() string  { return "pico" }
func (e endpointAddr) String() string { return string(e) }
