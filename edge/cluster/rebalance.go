package cluster

import (
	"slices"
	"time"
)

// Rebalancing: when nodes join, agents connected elsewhere stay where they
// are, so a node that has more than its share of agent links asks some of
// them to move (goaway; the agent connects elsewhere before it leaves,
// so no request fails). A node sheds links while it has more than
// ceil(links/nodes) + rebalanceSlack, counting only live, not draining
// nodes, and at most rebalanceBatch per round.
//
// A move may not take: an agent given only this node's address, or behind
// a load balancer that keeps sending it here, comes back after a few tries
// at avoiding the node (agent/slot.go, maxAvoidTries). The node notices
// (moveMemory) and holds such an agent back, so that a cluster whose
// agents can reach only one node settles instead of moving the same links
// in circles, each move a full handshake and re-registration. The agent
// does not tell the node it had nowhere else to go: the node sees it come
// back, which needs no change to the protocol, works with agents of any
// version, and also covers a load balancer that sends the agent back
// although the agent itself believed it had another address to try.
const (
	rebalanceSlack = 1
	rebalanceBatch = 16
	// rebalanceSettle is the quiet time after a membership change before
	// links are counted: the new node's count must have arrived.
	rebalanceSettle = 2 * time.Second
	// rebalanceMaxHolds bounds a hold: the backoff doubles up to this
	// many times itself.
	rebalanceMaxHolds = 60
)

func (c *Cluster) rebalanceLoop() {
	every := c.cfg.RebalanceInterval
	if every < 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		c.rebalance(time.Now())
	}
}

// rebalance judges the moves asked in earlier rounds, then sheds this
// node's excess agent links, if any.
func (c *Cluster) rebalance(now time.Time) {
	list := c.h.Links()
	c.judgeMoves(list, now)
	if c.h.Draining() {
		return
	}
	c.mu.Lock()
	settled := now.Sub(c.lastChange) >= rebalanceSettle
	draining := make(map[string]bool, len(c.members))
	for name, m := range c.members {
		draining[name] = m.meta.Draining
	}
	c.mu.Unlock()
	if !settled {
		return
	}
	nodes, own := 1, len(list)
	total := own
	for _, n := range c.remote.Nodes() {
		if !n.Alive || draining[n.Node] {
			continue
		}
		nodes++
		total += int(n.Links)
	}
	share := (total + nodes - 1) / nodes
	excess := own - share - rebalanceSlack
	if nodes < 2 || excess <= 0 {
		return
	}
	excess = min(excess+rebalanceSlack, rebalanceBatch) // down to the share itself
	// Move the links that carry the least: fewest streams in flight.
	slices.SortFunc(list, func(a, b Link) int { return int(a.Load() - b.Load()) })
	movable := make([]Link, 0, excess)
	held := 0
	for _, l := range list {
		if len(movable) == excess {
			break
		}
		if l.AskedToMove() {
			continue // asked already
		}
		switch c.moves.state(l.AgentID(), now) {
		case moveHeld:
			held++
			continue
		case movePending:
			continue // its agent's last move is not judged yet
		}
		movable = append(movable, l)
	}
	skipped := min(excess, len(movable)+held) - len(movable)
	c.h.Metrics.RebalanceSkipped.Add(skipped)
	for _, l := range movable {
		c.moves.asked(l.AgentID(), l.LinkID(), now)
		l.AskToMove("rebalancing: edge node "+c.h.NodeID+" has more than its share of agents", now)
		c.h.Metrics.Rebalanced.Inc()
	}
	switch {
	case len(movable) > 0:
		c.log.Info("asked agents to move to rebalance the cluster", "moved", len(movable), "held_back", skipped,
			"links", own, "cluster_links", total, "nodes", nodes, "share", share)
	case skipped > 0:
		c.log.Debug("every agent that could move came back the last time it was asked; not asking now",
			"held_back", skipped, "links", own, "cluster_links", total, "nodes", nodes, "share", share)
	}
}

// judgeMoves tells the move memory which agents have links here now, and
// logs the moves that came back.
func (c *Cluster) judgeMoves(list []Link, now time.Time) {
	links := agentLinks{live: make(map[uint64]bool, len(list)), newest: make(map[string]time.Time)}
	for _, l := range list {
		links.live[l.LinkID()] = true
		if id := l.AgentID(); id != "" && l.Started().After(links.newest[id]) {
			links.newest[id] = l.Started()
		}
	}
	futile, hold := c.moves.judge(links, now)
	if futile > 0 {
		c.h.Metrics.RebalanceFutile.Add(futile)
		c.log.Info("agents asked to move came back to this node: they reach no other; not asking them again for a while",
			"agents", futile, "hold", hold.String())
	}
}

// moveMemory remembers, by agent ID (Hello.AgentID, one per agent
// process, shared by its links), the rebalancing asks this node made and
// whether they took. An ask is judged once the link asked to move is gone
// (it retires only after its replacement registered, make before break):
// if a link of the same agent that connected after the ask is live here,
// the move was futile and the agent is held, not asked again until the
// hold ends; the hold starts at base and doubles with each futile move in
// a row, up to max. A move that took forgets the agent: it is asked as
// any other the next time.
//
// The memory stays bounded: a record is made only by an ask (at most
// rebalanceBatch a round); it is forgotten when its ask took, when its
// hold ended and the agent has no link here, or max after its hold ended.
// Agents without an ID (hand-made clients) are not tracked.
type moveMemory struct {
	base, max time.Duration
	agents    map[string]*moveRecord
}

type moveRecord struct {
	session   uint64    // the session asked to move; 0 once the ask is judged
	askedAt   time.Time // of the last ask
	strikes   int       // futile moves in a row
	holdUntil time.Time // not asked before then
}

// agentLinks is what one round sees of the agent links on this node.
type agentLinks struct {
	live   map[uint64]bool      // session IDs
	newest map[string]time.Time // by agent ID: the latest start of a live session
}

// moveState says whether an agent may be asked to move.
type moveState int

const (
	moveFree    moveState = iota
	moveHeld              // its last move came back; its hold lasts
	movePending           // asked; the link asked is still here
)

func newMoveMemory(base time.Duration) moveMemory {
	return moveMemory{base: base, max: rebalanceMaxHolds * base, agents: make(map[string]*moveRecord)}
}

// asked records that session, of agent, was asked to move.
func (m *moveMemory) asked(agent string, session uint64, now time.Time) {
	if agent == "" {
		return
	}
	r := m.agents[agent]
	if r == nil {
		r = new(moveRecord)
		m.agents[agent] = r
	}
	r.session, r.askedAt = session, now
}

// state says whether agent may be asked to move now.
func (m *moveMemory) state(agent string, now time.Time) moveState {
	r := m.agents[agent]
	switch {
	case r == nil:
		return moveFree
	case r.session != 0:
		return movePending
	case now.Before(r.holdUntil):
		return moveHeld
	}
	return moveFree
}

// judge decides the asks whose link is gone, and forgets what is no
// longer needed. It returns how many moves came back, and the longest
// hold they got.
func (m *moveMemory) judge(links agentLinks, now time.Time) (futile int, hold time.Duration) {
	for agent, r := range m.agents {
		switch {
		case r.session != 0 && links.live[r.session]:
			// The link asked to move still serves its streams.
		case r.session != 0 && links.newest[agent].After(r.askedAt):
			r.session = 0
			r.strikes++
			h := m.base
			for i := 1; i < r.strikes && h < m.max; i++ {
				h *= 2
			}
			h = min(h, m.max)
			r.holdUntil = now.Add(h)
			futile++
			hold = max(hold, h)
		case r.session != 0:
			delete(m.agents, agent) // the move took
		case !now.Before(r.holdUntil.Add(m.max)):
			delete(m.agents, agent) // long quiet: start again at base
		case !now.Before(r.holdUntil) && links.newest[agent].IsZero():
			delete(m.agents, agent) // its hold is over and it is not here
		}
	}
	return futile, hold
}

// len returns how many agents the memory holds.
func (m *moveMemory) len() int { return len(m.agents) }
