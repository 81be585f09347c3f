package routing

import (
	"slices"
	"sync"
)

// Local is what this node announces: the endpoints its agents serve, with a
// version that grows with every change. Withdrawn endpoints stay as
// tombstones until every peer has seen them (Forget), so that a delta can
// tell a peer what went away.
type Local struct {
	mu      sync.Mutex // guards the fields below
	node    string
	epoch   uint64
	version uint64
	links   uint32
	eps     map[EndpointID]*localEndpoint
	tombs   int
	horizon uint64        // deltas from a base below it need the full state
	changed chan struct{} // closed and replaced on every change
}

type localEndpoint struct {
	a   Announcement
	ver uint64 // the version that last changed it
}

// NewLocal returns the empty announcement of node in epoch.
func NewLocal(node string, epoch uint64) *Local {
	return &Local{node: node, epoch: epoch, eps: make(map[EndpointID]*localEndpoint), changed: make(chan struct{})}
}

// Node returns the node's name and epoch.
func (l *Local) Node() (string, uint64) { return l.node, l.epoch }

func (l *Local) bumpLocked() {
	l.version++
	close(l.changed)
	l.changed = make(chan struct{})
}

// Set announces a (Agents 0 withdraws it). It is a no-op if nothing changed.
func (l *Local) Set(a Announcement) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.eps[a.ID]
	switch {
	case e == nil && a.Agents == 0:
		return
	case e != nil && e.a == a:
		return
	}
	l.bumpLocked()
	if e == nil {
		l.eps[a.ID] = &localEndpoint{a: a, ver: l.version}
		return
	}
	if e.a.Agents == 0 {
		l.tombs--
	}
	if a.Agents == 0 {
		l.tombs++
	}
	e.a, e.ver = a, l.version
}

// SetLinks announces the number of agent links on the node.
func (l *Local) SetLinks(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if uint32(n) != l.links {
		l.links = uint32(n)
		l.bumpLocked()
	}
}

// Version returns the current version.
func (l *Local) Version() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.version
}

// Changed returns a channel closed at the next change.
func (l *Local) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// Delta returns what a peer that has version base must learn: a delta, or
// the full state when base is 0 or older than the tombstones kept.
func (l *Local) Delta(base uint64) *State {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := &State{Node: l.node, Epoch: l.epoch, Version: l.version, Links: l.links}
	if base == 0 || base < l.horizon || base > l.version {
		s.Full = true
		s.Endpoints = make([]Announcement, 0, len(l.eps)-l.tombs)
		for _, e := range l.eps {
			if e.a.Agents > 0 {
				s.Endpoints = append(s.Endpoints, e.a)
			}
		}
		return s
	}
	s.Base = base
	for _, e := range l.eps {
		if e.ver > base {
			s.Endpoints = append(s.Endpoints, e.a)
		}
	}
	return s
}

// Full returns the full state.
func (l *Local) Full() *State { return l.Delta(0) }

// Forget drops the tombstones every peer has seen: those changed at or
// before version acked.
func (l *Local) Forget(acked uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tombs == 0 || acked <= l.horizon {
		return
	}
	for id, e := range l.eps {
		if e.a.Agents == 0 && e.ver <= acked {
			delete(l.eps, id)
			l.tombs--
		}
	}
	l.horizon = acked
}

// Announced lists the endpoints announced, sorted by ID.
func (l *Local) Announced() []Announcement {
	l.mu.Lock()
	out := make([]Announcement, 0, len(l.eps))
	for _, e := range l.eps {
		if e.a.Agents > 0 {
			out = append(out, e.a)
		}
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b Announcement) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}
