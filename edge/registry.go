package edge

import (
	"crypto/sha256"
	"sync"

	"github.com/quic-go/quic-go"
)

// links are the node's agent links (links) and the connections it
// serves on its agent listener, with one lock of their own. A connection
// is admitted only while the set is open; shutdown closes it and then
// waits for every admitted connection's goroutine.
type links struct {
	mu       sync.Mutex // guards the fields below
	byID     map[uint64]*link
	nextID   uint64
	closed   bool // shutdown is closing every connection: none is admitted
	draining bool // agents are refused; peers still admitted

	serving sync.WaitGroup // one goroutine per admitted connection
	gone    broadcast      // a link left byID
}

func newLinks() *links { return &links{byID: make(map[uint64]*link)} }

// admit reports whether a new connection (from a peer node, or an agent)
// may be served, and if so counts its goroutine in serving.
func (ss *links) admit(peer bool) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed || ss.draining && !peer {
		return false
	}
	ss.serving.Add(1)
	return true
}

// drain refuses new agents from now on (peers may still connect).
func (ss *links) drain() {
	ss.mu.Lock()
	ss.draining = true
	ss.mu.Unlock()
}

// close admits no connection from now on.
func (ss *links) close() {
	ss.mu.Lock()
	ss.closed = true
	ss.mu.Unlock()
}

// add numbers sess and adds it; it returns how many there are now.
func (ss *links) add(l *link) int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.nextID++
	l.id = ss.nextID
	ss.byID[l.id] = l
	return len(ss.byID)
}

// remove removes sess and wakes the waiters of gone; it returns how many
// are left.
func (ss *links) remove(l *link) int {
	ss.mu.Lock()
	delete(ss.byID, l.id)
	n := len(ss.byID)
	ss.mu.Unlock()
	ss.gone.notify()
	return n
}

func (ss *links) list() []*link {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]*link, 0, len(ss.byID))
	for _, l := range ss.byID {
		out = append(out, l)
	}
	return out
}

func (ss *links) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.byID)
}

func (ss *links) get(id uint64) *link {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.byID[id]
}

// tokenConns counts the agent connections of each token (by its hash), for
// Config.MaxConnsPerToken.
type tokenConns struct {
	mu sync.Mutex // guards n
	n  map[[sha256.Size]byte]int
}

// take counts one more connection with the token of key, or reports that
// it has max already.
func (tc *tokenConns) take(key [sha256.Size]byte, max int) bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.n == nil {
		tc.n = make(map[[sha256.Size]byte]int)
	}
	if tc.n[key] >= max {
		return false
	}
	tc.n[key]++
	return true
}

func (tc *tokenConns) give(key [sha256.Size]byte) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.n[key]--; tc.n[key] <= 0 {
		delete(tc.n, key)
	}
}

// peerConns are the relay connections other nodes opened to this one.
type peerConns struct {
	mu     sync.Mutex // guards the fields below
	conns  map[*quic.Conn]struct{}
	closed bool
}

// add adds conn, or reports that the set is closed (shutdown).
func (pc *peerConns) add(conn *quic.Conn) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closed {
		return false
	}
	if pc.conns == nil {
		pc.conns = make(map[*quic.Conn]struct{})
	}
	pc.conns[conn] = struct{}{}
	return true
}

func (pc *peerConns) remove(conn *quic.Conn) {
	pc.mu.Lock()
	delete(pc.conns, conn)
	pc.mu.Unlock()
}

// closeAll closes every connection with code and reason; a connection
// added from now on is refused.
func (pc *peerConns) closeAll(code quic.ApplicationErrorCode, reason string) {
	pc.mu.Lock()
	conns := pc.conns
	pc.conns, pc.closed = nil, true
	pc.mu.Unlock()
	for conn := range conns {
		conn.CloseWithError(code, reason)
	}
}
