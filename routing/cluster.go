package routing

import (
	"fmt"
	"sort"
	"sync"
)

// Cluster merges the announcements of other nodes into a Table: each
// endpoint a live node announces routes to that node's Target (the edge's
// relay to it). It trusts membership (Alive, Gone) to say which node and
// epoch is live, and the messages (Apply) to say what each serves.
//
// Rules: a node's state is replaced only by a full state or a delta that
// follows on from it, within one epoch; a greater epoch replaces the state
// of an older one (the node restarted); a lesser epoch, or an epoch of a
// node that is gone, changes nothing. A delta that does not follow on (a
// gap) asks for the node's full state.
type Cluster struct {
	t *Table

	mu    sync.Mutex // guards nodes; taken before t.mu
	nodes map[string]*remoteNode
}

type remoteNode struct {
	epoch     uint64 // of the state below; 0: none
	version   uint64
	links     uint32
	eps       map[EndpointID]remoteEP // the endpoints of its state
	one       []Target                // {target}, shared by the table entries only it serves
	alive     uint64                  // epoch membership says is live; 0: not live
	gone      uint64                  // epochs up to this one are over
	target    Target                  // set while alive
	installed bool                    // eps are in the table
	conflicts int                     // endpoints left out: served here with another protocol
}

// NewCluster returns a Cluster that routes through t.
func NewCluster(t *Table) *Cluster {
	return &Cluster{t: t, nodes: make(map[string]*remoteNode)}
}

func (c *Cluster) node(name string) *remoteNode {
	n := c.nodes[name]
	if n == nil {
		n = &remoteNode{}
		c.nodes[name] = n
	}
	return n
}

// Alive records that membership sees node live in epoch, reachable through
// tg. It reports whether the node's full state should be asked for (none,
// or only an older epoch's, is known).
func (c *Cluster) Alive(node string, epoch uint64, tg Target) (wantSync bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.node(node)
	if epoch == 0 || n.alive != 0 && epoch < n.alive {
		return false // an old incarnation, superseded
	}
	if n.installed && (n.alive != epoch || n.target != tg) {
		c.uninstallLocked(n)
	}
	n.alive, n.target, n.one = epoch, tg, []Target{tg}
	if epoch <= n.gone {
		n.gone = epoch - 1 // the same incarnation is back (a healed partition)
	}
	if n.epoch != 0 && n.epoch < epoch {
		c.dropStateLocked(n) // state of an earlier incarnation
	}
	if n.epoch == epoch {
		if !n.installed {
			c.installLocked(n)
		}
		return false
	}
	return true
}

// Gone records that membership lost node (it left or is dead): its
// endpoints leave the table, and nothing of its current epoch comes back
// unless membership sees it alive again.
func (c *Cluster) Gone(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[node]
	if n == nil {
		return
	}
	c.uninstallLocked(n)
	n.gone = max(n.gone, n.alive, n.epoch)
	n.alive, n.target, n.one = 0, nil, nil
	c.dropStateLocked(n)
}

// Apply merges one node's announcement. It reports whether the node's full
// state should be asked for (the message did not follow on from what is
// known), and an error for a message that makes no sense.
func (c *Cluster) Apply(s *State) (wantSync bool, err error) {
	if s.Epoch == 0 {
		return false, fmt.Errorf("%w: epoch 0", ErrBadGossip)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.node(s.Node)
	switch {
	case s.Epoch <= n.gone, s.Epoch < n.epoch, n.alive != 0 && s.Epoch < n.alive:
		return false, nil // an old incarnation: replayed or late
	case s.Epoch > n.epoch:
		if !s.Full {
			return true, nil
		}
		c.uninstallLocked(n)
		c.dropStateLocked(n)
		n.epoch = s.Epoch
	}
	// s.Epoch == n.epoch from here.
	if s.Version <= n.version && n.eps != nil {
		return false, nil // nothing new
	}
	if !s.Full && (n.eps == nil || s.Base > n.version) {
		return true, nil // a gap: the deltas in between were missed
	}
	live := n.alive == s.Epoch && n.target != nil
	if s.Full {
		if live {
			c.uninstallLocked(n)
		}
		n.eps = make(map[EndpointID]remoteEP, len(s.Endpoints))
	}
	var adds []Announcement
	var removes []EndpointID
	for _, a := range s.Endpoints {
		if a.Agents == 0 {
			if _, ok := n.eps[a.ID]; ok {
				delete(n.eps, a.ID)
				removes = append(removes, a.ID)
			}
			continue
		}
		if _, ok := n.eps[a.ID]; !ok {
			adds = append(adds, a)
		}
		n.eps[a.ID] = packEP(a)
	}
	n.version, n.links = s.Version, s.Links
	if live {
		if s.Full || !n.installed {
			c.installLocked(n)
		} else {
			c.patchLocked(n, adds, removes)
		}
	}
	return false, nil
}

func (c *Cluster) dropStateLocked(n *remoteNode) {
	n.epoch, n.version, n.links, n.eps = 0, 0, 0, nil
}

// installLocked puts every endpoint of n into the table.
func (c *Cluster) installLocked(n *remoteNode) {
	if n.target == nil || n.eps == nil {
		return
	}
	t := c.t
	t.mu.Lock()
	n.conflicts = 0
	for id, a := range n.eps {
		if !t.addRemoteLocked(id, a.proto(), n.target, n.one) {
			n.conflicts++
		}
	}
	n.installed = true
	t.notifyLocked()
	t.mu.Unlock()
}

func (c *Cluster) patchLocked(n *remoteNode, adds []Announcement, removes []EndpointID) {
	if len(adds) == 0 && len(removes) == 0 {
		return
	}
	t := c.t
	t.mu.Lock()
	for _, id := range removes {
		t.removeRemoteLocked(id, n.target)
	}
	for _, a := range adds {
		if !t.addRemoteLocked(a.ID, packEP(a).proto(), n.target, n.one) {
			n.conflicts++
		}
	}
	t.notifyLocked()
	t.mu.Unlock()
}

func (c *Cluster) uninstallLocked(n *remoteNode) {
	if !n.installed {
		return
	}
	t := c.t
	t.mu.Lock()
	for id := range n.eps {
		t.removeRemoteLocked(id, n.target)
	}
	n.installed = false
	t.notifyLocked()
	t.mu.Unlock()
}

// Announcement returns how node serves id.
func (c *Cluster) Announcement(node string, id EndpointID) (Announcement, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[node]
	if n == nil || n.eps == nil {
		return Announcement{}, false
	}
	a, ok := n.eps[id]
	if !ok {
		return Announcement{}, false
	}
	return a.announcement(id), true
}

// NodeInfo describes what is known of another node.
type NodeInfo struct {
	Node      string
	Epoch     uint64 // of the state known
	Version   uint64
	Endpoints int
	Links     uint32
	Alive     bool // membership sees it live and its state is routed
	Conflicts int  // endpoints not routed: served with another protocol here
}

// Nodes lists the other nodes known, sorted by name.
func (c *Cluster) Nodes() []NodeInfo {
	c.mu.Lock()
	out := make([]NodeInfo, 0, len(c.nodes))
	for name, n := range c.nodes {
		if n.alive == 0 && n.eps == nil {
			continue
		}
		out = append(out, NodeInfo{Node: name, Epoch: n.epoch, Version: n.version, Endpoints: len(n.eps),
			Links: n.links, Alive: n.installed, Conflicts: n.conflicts})
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Endpoints lists the endpoints node is known to serve.
func (c *Cluster) Endpoints(node string) []Announcement {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[node]
	if n == nil {
		return nil
	}
	out := make([]Announcement, 0, len(n.eps))
	for id, a := range n.eps {
		out = append(out, a.announcement(id))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// remoteEP is what a Cluster keeps of one endpoint of another node: its
// Announcement without the ID, which is the map key, and with the
// protocol as its byte in gossip (protoByte). At 8
// bytes instead of 40 it keeps the other nodes' share of each endpoint
// small (docs/scale.md).
type remoteEP struct {
	protoB uint8 // protoByte
	kinds  uint8
	agents uint32
}

func packEP(a Announcement) remoteEP {
	return remoteEP{protoB: protoByte(a.Proto), kinds: a.Kinds, agents: a.Agents}
}

func (r remoteEP) proto() string {
	return gossipProtos[r.protoB]
}

func (r remoteEP) announcement(id EndpointID) Announcement {
	return Announcement{ID: id, Proto: r.proto(), Kinds: r.kinds, Agents: r.agents}
}
