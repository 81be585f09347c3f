// Package routing tracks which agents serve each endpoint and chooses one for
// each stream. It is pure data and logic: no sockets, no QUIC, no HTTP; only
// edge imports it.
package routing

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
)

// EndpointID names an endpoint, like a DNS label (validated by the caller).
type EndpointID string

// Target is one agent link that serves endpoints. Load is its number of
// streams in flight, read by the balancer.
type Target interface {
	Load() int64
}

var (
	// ErrNoRoute means no target serves the endpoint.
	ErrNoRoute = errors.New("routing: no route to endpoint")
	// ErrConflict means the endpoint is served with another protocol.
	ErrConflict = errors.New("routing: endpoint served with another protocol")
)

// Table maps endpoints to the targets that serve them. The zero value is not
// usable; call NewTable.
type Table struct {
	mu      sync.RWMutex // guards the fields below
	eps     map[EndpointID]*entry
	changed chan struct{} // closed and replaced on every change
}

// An entry is never modified once in the map (copy on write), so Lookup and
// Pick can use it after dropping the lock.
type entry struct {
	proto   string
	targets []Target // local agent links
	remote  []Target // other nodes whose agents serve it (see Cluster)
}

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{eps: make(map[EndpointID]*entry), changed: make(chan struct{})}
}

func (t *Table) notifyLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// Changed returns a channel that is closed at the next change of the table.
func (t *Table) Changed() <-chan struct{} {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.changed
}

// Add routes id to tg. Adding a target twice is a no-op. All targets of an
// endpoint serve one protocol; another one gets ErrConflict.
func (t *Table) Add(id EndpointID, proto string, tg Target) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.eps[id]
	if e == nil {
		t.eps[id] = &entry{proto: proto, targets: []Target{tg}}
		t.notifyLocked()
		return nil
	}
	if e.proto != proto {
		return fmt.Errorf("%w: %q is served as %s", ErrConflict, id, e.proto)
	}
	if slices.Contains(e.targets, tg) {
		return nil
	}
	t.eps[id] = &entry{proto: e.proto, targets: append(slices.Clip(e.targets), tg), remote: e.remote}
	t.notifyLocked()
	return nil
}

// Remove stops routing id to tg. It reports whether tg was there.
func (t *Table) Remove(id EndpointID, tg Target) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.removeLocked(id, tg)
}

func (t *Table) removeLocked(id EndpointID, tg Target) bool {
	e := t.eps[id]
	if e == nil {
		return false
	}
	i := slices.Index(e.targets, tg)
	if i < 0 {
		return false
	}
	if len(e.targets) == 1 && len(e.remote) == 0 {
		delete(t.eps, id)
	} else {
		t.eps[id] = &entry{proto: e.proto, targets: slices.Delete(slices.Clone(e.targets), i, i+1), remote: e.remote}
	}
	t.notifyLocked()
	return true
}

// addRemoteLocked routes id to the other node tg too. It reports false
// when id is served here with another protocol. one, if not nil, is
// []Target{tg}: entries that tg alone serves share it instead of each
// allocating its own (entries' slices are never written, only replaced).
func (t *Table) addRemoteLocked(id EndpointID, proto string, tg Target, one []Target) bool {
	if len(one) != 1 || one[0] != tg {
		one = []Target{tg}
	}
	one = slices.Clip(one)
	e := t.eps[id]
	if e == nil {
		t.eps[id] = &entry{proto: proto, remote: one}
		return true
	}
	if e.proto != proto {
		return false
	}
	switch {
	case len(e.remote) == 0:
		t.eps[id] = &entry{proto: e.proto, targets: e.targets, remote: one}
	case !slices.Contains(e.remote, tg):
		t.eps[id] = &entry{proto: e.proto, targets: e.targets, remote: append(slices.Clip(e.remote), tg)}
	}
	return true
}

func (t *Table) removeRemoteLocked(id EndpointID, tg Target) {
	e := t.eps[id]
	if e == nil {
		return
	}
	i := slices.Index(e.remote, tg)
	if i < 0 {
		return
	}
	if len(e.remote) == 1 && len(e.targets) == 0 {
		delete(t.eps, id)
		return
	}
	t.eps[id] = &entry{proto: e.proto, targets: e.targets, remote: slices.Delete(slices.Clone(e.remote), i, i+1)}
}

// RemoveAll stops routing every endpoint in ids to tg.
func (t *Table) RemoveAll(ids []EndpointID, tg Target) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		t.removeLocked(id, tg)
	}
}

// Lookup returns the protocol and local targets of id (the slice must not
// be modified), or ErrNoRoute when neither a local agent nor another node
// serves it.
func (t *Table) Lookup(id EndpointID) (string, []Target, error) {
	t.mu.RLock()
	e := t.eps[id]
	t.mu.RUnlock()
	if e == nil {
		return "", nil, fmt.Errorf("%w %q", ErrNoRoute, id)
	}
	return e.proto, e.targets, nil
}

// Remote returns the other nodes that serve id (the slice must not be
// modified).
func (t *Table) Remote(id EndpointID) []Target {
	t.mu.RLock()
	e := t.eps[id]
	t.mu.RUnlock()
	if e == nil {
		return nil
	}
	return e.remote
}

// Pick chooses a target for a new stream to id by the power of two choices:
// of two targets drawn at random, the one with less load. Local agents come
// first; other nodes only when no local agent is left. Targets for which
// skip returns true (those that already failed this request) are left out;
// skip may be nil.
func (t *Table) Pick(id EndpointID, skip func(Target) bool) (Target, error) {
	t.mu.RLock()
	e := t.eps[id]
	t.mu.RUnlock()
	if e == nil {
		return nil, fmt.Errorf("%w %q", ErrNoRoute, id)
	}
	if tg, err := pickTwo(kept(e.targets, skip), id); err == nil {
		return tg, nil
	}
	return pickTwo(kept(e.remote, skip), id)
}

func kept(targets []Target, skip func(Target) bool) []Target {
	if skip == nil {
		return targets
	}
	var out []Target
	for _, tg := range targets {
		if !skip(tg) {
			out = append(out, tg)
		}
	}
	return out
}

func pickTwo(targets []Target, id EndpointID) (Target, error) {
	switch n := len(targets); n {
	case 0:
		return nil, fmt.Errorf("%w %q", ErrNoRoute, id)
	case 1:
		return targets[0], nil
	default:
		i := rand.IntN(n)
		j := rand.IntN(n - 1)
		if j >= i {
			j++
		}
		a, b := targets[i], targets[j]
		if b.Load() < a.Load() {
			return b, nil
		}
		return a, nil
	}
}

// EndpointInfo describes one endpoint of the table.
type EndpointInfo struct {
	ID       EndpointID
	Protocol string
	Targets  []Target // local
	Remote   []Target // other nodes
}

// Endpoints lists the table, sorted by ID.
func (t *Table) Endpoints() []EndpointInfo {
	t.mu.RLock()
	out := make([]EndpointInfo, 0, len(t.eps))
	for id, e := range t.eps {
		out = append(out, EndpointInfo{ID: id, Protocol: e.proto, Targets: e.targets, Remote: e.remote})
	}
	t.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Len returns the number of endpoints with at least one target, local or
// remote.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.eps)
}
