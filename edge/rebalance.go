package edge

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
const (
	rebalanceSlack = 1
	rebalanceBatch = 16
	// rebalanceSettle is the quiet time after a membership change before
	// links are counted: the new node's count must have arrived.
	rebalanceSettle = 2 * time.Second
)

func (c *cluster) rebalanceLoop() {
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
		c.rebalance()
	}
}

// rebalance sheds this node's excess agent links, if any.
func (c *cluster) rebalance() {
	s := c.s
	if s.draining.Load() {
		return
	}
	c.mu.Lock()
	settled := time.Since(c.lastChange) >= rebalanceSettle
	draining := make(map[string]bool, len(c.members))
	for name, m := range c.members {
		draining[name] = m.meta.Draining
	}
	c.mu.Unlock()
	if !settled {
		return
	}
	nodes, total := 1, s.sessionCount()
	own := total
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
	list := s.sessionList()
	// Move the links that carry the least: fewest streams in flight.
	slices.SortFunc(list, func(a, b *session) int { return int(a.inflight.Load() - b.inflight.Load()) })
	moved := 0
	for _, sess := range list {
		if moved == excess {
			break
		}
		if sess.movedAt.Load() != 0 {
			continue // asked already
		}
		sess.movedAt.Store(time.Now().UnixNano())
		sess.goAway("rebalancing: edge node " + s.cfg.NodeID + " has more than its share of agents")
		s.m.rebalanced.Inc()
		moved++
	}
	if moved > 0 {
		c.log.Info("asked agents to move to rebalance the cluster", "moved", moved, "links", own,
			"cluster_links", total, "nodes", nodes, "share", share)
	}
}
