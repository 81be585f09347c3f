package edge

import (
	"crypto/tls"
	"errors"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// quicPair returns the two ends of a real QUIC connection over loopback:
// the accepted one (the edge's side of an agent link) and the dialled one
// (the agent's).
func quicPair(t *testing.T) (edgeSide, agentSide *quic.Conn) {
	t.Helper()
	dir := t.TempDir()
	dev, err := certs.LoadOrCreateDev(dir, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := dev.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	pool, err := dev.CAPool()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"t"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	agentSide, err = quic.DialAddr(t.Context(), ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"t"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	edgeSide, err = ln.Accept(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		agentSide.CloseWithError(0, "")
		edgeSide.CloseWithError(0, "")
	})
	return edgeSide, agentSide
}

// attemptsServer returns a Server whose table routes endpoint "e" to n
// links on real QUIC connections; closed says which of them their agent
// closed (the edge saw the CONNECTION_CLOSE; the link's teardown, which
// would withdraw it, has not run), as a frozen node finds its links when
// it wakes.
func attemptsServer(t *testing.T, closed ...bool) (*Server, []*link) {
	t.Helper()
	s, err := New(Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	var links []*link
	for i, c := range closed {
		e, a := quicPair(t)
		l := &link{srv: s, id: uint64(i + 1), conn: e, hello: quicutil.Hello{AgentID: string(rune('a' + i))},
			endpoints: map[routing.EndpointID]quicutil.Kind{"e": quicutil.KindHTTP}}
		if err := s.table.Add("e", protoHTTP, l); err != nil {
			t.Fatal(err)
		}
		if c {
			a.CloseWithError(0, "no packets from edge")
			select {
			case <-e.Context().Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the edge's side of a closed connection is still open after 10 s")
			}
		}
		links = append(links, l)
	}
	return s, links
}

// A link whose connection is closed but still in the table is never
// picked: the request goes to the open one.
func TestAttemptsSkipClosedLinks(t *testing.T) {
	s, links := attemptsServer(t, true, true, false)
	for range 20 {
		at := attempts{s: s, id: "e"}
		tg, err := at.next()
		if err != nil || tg != links[2] {
			name := "none"
			if tg != nil {
				name = tg.name()
			}
			t.Fatalf("picked %s (%v), want the open link c", name, err)
		}
	}
}

// Attempts that found their target's connection gone (a linkError of a
// closed QUIC connection: the upstream never saw the request) do not count
// against maxAttempts; others do.
func TestAttemptsGoneTargetsDoNotCount(t *testing.T) {
	s, _ := attemptsServer(t, false, false, false)
	gone := &linkError{err: &quic.ApplicationError{Remote: true, ErrorMessage: "no packets from edge"}}

	at := attempts{s: s, id: "e"}
	for i := range 2 {
		if _, err := at.next(); err != nil {
			t.Fatalf("attempt %d: %v", i+1, err)
		}
		at.failed(gone)
	}
	if _, err := at.next(); err != nil {
		t.Fatalf("a third target after two found gone: %v, want one", err)
	}

	at = attempts{s: s, id: "e"}
	for range 2 {
		if _, err := at.next(); err != nil {
			t.Fatal(err)
		}
		at.failed(quicutil.ErrNoAnswer)
	}
	if tg, err := at.next(); !errors.Is(err, quicutil.ErrNoAnswer) {
		t.Fatalf("after %d attempts that reached an agent: %v (target %v); want the last error", maxAttempts, err, tg != nil)
	}
}
