package cluster

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pico-edge/pico/routing"
)

// Ownership changes go straight to every member, as versioned deltas over
// memberlist's reliable (TCP, encrypted) user messages: a burst of
// registrations reaches every node in one message, within milliseconds.
// memberlist's push/pull every 15 s repairs anything missed.
const (
	// sendCoalesce batches the changes of a burst into one message.
	sendCoalesce = 10 * time.Millisecond
	// sendRetryMax caps the wait between failed sends to one node.
	sendRetryMax = 2 * time.Second
)

// sender sends this node's ownership changes to one other node.
type sender struct {
	c     *Cluster
	node  string
	epoch uint64 // of the receiving node

	acked atomic.Uint64 // version the node was sent last

	mu       sync.Mutex // guards the fields below
	addr     memberlist.Address
	full     bool // send the full state next
	wantFull bool // ask the node for its full state

	kick     chan struct{} // buffered 1
	done     chan struct{}
	stopOnce sync.Once
}

func newSender(c *Cluster, node string, epoch uint64) *sender {
	return &sender{c: c, node: node, epoch: epoch, full: true,
		kick: make(chan struct{}, 1), done: make(chan struct{})}
}

func (s *sender) setAddr(a memberlist.Address) {
	s.mu.Lock()
	s.addr = a
	s.mu.Unlock()
}

func (s *sender) signal() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// resync sends the full state next: the node asked for it.
func (s *sender) resync() {
	s.mu.Lock()
	s.full = true
	s.mu.Unlock()
	s.signal()
}

// wantFullState asks the node for its full state.
func (s *sender) wantFullState() {
	s.mu.Lock()
	s.wantFull = true
	s.mu.Unlock()
	s.signal()
}

func (s *sender) stop() { s.stopOnce.Do(func() { close(s.done) }) }

func (s *sender) run() {
	c := s.c
	retry := 100 * time.Millisecond
	for {
		changed := c.local.Changed()
		s.mu.Lock()
		full, wantFull, addr := s.full, s.wantFull, s.addr
		s.mu.Unlock()
		pending := full || wantFull || c.local.Version() != s.acked.Load()
		if !pending {
			select {
			case <-changed:
			case <-s.kick:
			case <-s.done:
				return
			case <-c.stop:
				return
			}
			// Let the rest of a burst of changes in.
			select {
			case <-time.After(sendCoalesce):
			case <-s.done:
				return
			case <-c.stop:
				return
			}
			continue
		}
		var err error
		if wantFull {
			err = c.sendTo(addr, routing.AppendSyncRequest(nil, c.h.NodeID))
			if err == nil {
				s.mu.Lock()
				s.wantFull = false
				s.mu.Unlock()
			}
		}
		if err == nil && (full || c.local.Version() != s.acked.Load()) {
			base := s.acked.Load()
			if full {
				base = 0
			}
			st := c.local.Delta(base)
			err = c.sendTo(addr, routing.AppendState(nil, st))
			if err == nil {
				s.mu.Lock()
				if full {
					s.full = false
				}
				s.mu.Unlock()
				s.acked.Store(st.Version)
				c.forgetAcked()
				c.h.Metrics.GossipSent.Inc()
			}
		}
		if err == nil {
			retry = 100 * time.Millisecond
			continue
		}
		c.log.Debug("send ownership to node", "node", s.node, "err", err, "retry_in", retry.String())
		select {
		case <-time.After(retry):
		case <-s.done:
			return
		case <-c.stop:
			return
		}
		retry = min(2*retry, sendRetryMax)
	}
}

// sendTo sends one message to a node over memberlist's reliable channel.
func (c *Cluster) sendTo(a memberlist.Address, msg []byte) error {
	host, port, err := splitHostPort(a.Addr)
	if err != nil {
		return err
	}
	return c.ml.SendReliable(&memberlist.Node{Name: a.Name, Addr: host, Port: port}, msg)
}
