package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/pico-edge/pico/quicutil"
)

// A slot keeps one of the agent's links up. It dials until it reaches a
// node that no other live link goes to, serves the link, and replaces it
// when it dies, when its edge asks it to move (goaway) or when it goes
// silent. The replacement comes first (make before break): the old link
// keeps serving its streams until the new one is registered.
type slot struct {
	a        *Agent
	next     int // the Edges address the next round starts at
	attempt  int // backoff attempt
	lastWait time.Duration
	lastWarn string
	fails    failLog       // rounds that failed since the last link, for the log
	leaving  []leavingLink // links being replaced, until the next registers
	// ready is a link over QUIC that a probe made to replace the slot's
	// link over TCP (TransportAuto); dial takes it first.
	ready     *link
	probeWait time.Duration // the wait before the next probe
}

type leavingLink struct {
	l      *link
	silent bool // it left because it went silent, not because its edge asked
	// withdraw: the agent itself moves it (auto, from TCP back to QUIC),
	// so the edge still routes to it until told: its endpoints are
	// withdrawn before it retires.
	withdraw bool
}

// How a link stopped serving new work.
type ending int

const (
	endStopped ending = iota // Run is ending
	endMoved                 // its edge asked it to move
	endSilent                // it received nothing for too long
	endLost                  // its connection died
	endToQUIC                // auto: a link over QUIC (s.ready) replaces it on TCP
)

// maxAvoidTries is how many times a slot reaches the node its previous
// link left before it accepts a link to it anyway.
const maxAvoidTries = 3

// Behind a balancer (every edge a URL): each round tries each URL
// urlTriesPerRound times, and a round that reached only nodes linked
// already waits at most dupRetryMax before the next (the balancer may
// send the next connection elsewhere; a node that just restarted is back
// behind it within seconds).
const (
	urlTriesPerRound = 3
	dupRetryMax      = 5 * time.Second
)

// balanced reports whether every edge is a balancer's URL.
func (a *Agent) balanced() bool {
	return !slices.ContainsFunc(a.cfg.Edges, func(e string) bool { return !isURL(e) })
}

// hintRetry is how long an address an edge listed is skipped after an
// attempt to reach it failed.
const hintRetry = 30 * time.Second

// runSlot keeps slot n's link up until ctx ends. It returns an error only
// when retrying cannot help.
func (a *Agent) runSlot(ctx context.Context, n int) error {
	s := &slot{a: a, next: n}
	defer s.closeLeaving()
	avoid := "" // the node the previous link left
	for {
		l, err := s.dial(ctx, avoid)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		avoid = ""
		connectedAt := time.Now()
		l.log.Debug("connected to edge")
		end, err := s.serve(ctx, l)
		if end != endStopped {
			a.reconnects.Add(1)
		}
		switch end {
		case endStopped:
			a.dropLink(l)
			l.close(quicutil.ConnCodeNormal, "agent closing")
			return nil
		case endMoved, endSilent:
			if end == endSilent {
				a.markDown(l.addr)
			}
			a.setLeaving(l)
			s.leaving = append(s.leaving, leavingLink{l: l, silent: end == endSilent})
			avoid, s.attempt = l.nodeID, 0
		case endToQUIC: // same node, make before break: no avoid
			a.setLeaving(l)
			s.leaving = append(s.leaving, leavingLink{l: l, withdraw: true})
			s.attempt = 0
		case endLost:
			a.dropLink(l)
			l.close(quicutil.ConnCodeNormal, "")
			if goingAway(err) || len(l.goAway) > 0 {
				l.log.Info("edge asked the agent to move; reconnecting", "reason", err.Error())
				avoid, s.attempt = l.nodeID, 0
				continue
			}
			a.markDown(l.addr)
			if time.Since(connectedAt) > 2*s.lastWait {
				s.attempt = 0
			}
			wait := s.backoff()
			l.log.Warn("lost connection to edge; reconnecting", "err", err, "retry_in", wait.Round(time.Millisecond).String())
			sleep(ctx, wait)
		}
	}
}

// serve registers every endpoint on l and serves it until it stops taking
// new work, and says why. Once l is registered, the links it replaces are
// handed off.
func (s *slot) serve(ctx context.Context, l *link) (ending, error) {
	served := make(chan error, 1)
	l.wg.Go(func() { served <- l.serve() })
	l.wg.Go(l.acceptStreams)
	var probe <-chan time.Time // TransportAuto on TCP: when to try QUIC again
	if s.a.probing(l) {
		if s.probeWait == 0 {
			s.probeWait = s.a.cfg.QUICProbe
		}
		t := time.NewTimer(s.probeWait)
		defer t.Stop()
		probe = t.C
	}
	// A probe runs beside the loop (it takes up to AutoQUICTimeout); serve
	// waits for one still running when it returns, and closes its link.
	probed := make(chan *link, 1)
	probing := false
	defer func() {
		if !probing {
			return
		}
		if nl := <-probed; nl != nil {
			nl.close(quicutil.ConnCodeNormal, "agent closing")
		}
	}()
	registered := make(chan struct{})
	regs := s.a.askAll()
	l.wg.Go(func() {
		defer close(registered)
		l.register(regs)
	})
	for {
		select {
		case <-registered:
			registered = nil
			if l.conn.Context().Err() == nil {
				s.handOff(ctx)
			}
		case reason := <-l.goAway:
			l.log.Info("edge asked the agent to move; reconnecting", "reason", reason)
			return endMoved, nil
		case quiet := <-l.silent:
			l.log.Warn("no packets from edge; linking to another node", "silent_for", quiet.Round(time.Millisecond).String())
			return endSilent, nil
		case <-probe:
			probe, probing = nil, true
			go func() { probed <- s.a.probeQUIC(ctx, l) }()
		case nl := <-probed:
			probing = false
			if nl != nil {
				s.ready, s.probeWait = nl, 0
				return endToQUIC, nil
			}
			s.probeWait = nextProbe(s.probeWait)
			probe = time.After(s.probeWait) // the timer above fired: it is spent
		case err := <-served:
			return endLost, err
		case <-ctx.Done():
			return endStopped, nil
		}
	}
}

// handOff lets the links this slot replaced go: one its edge asked to move
// retires (it finishes its streams, up to retireGrace); a silent one
// closes at once, unless packets came back meanwhile.
func (s *slot) handOff(ctx context.Context) {
	s.release(ctx, s.leaving)
	s.leaving = nil
}

// handOffTo lets go the links this slot replaces that go to node, once
// another slot's live link to node has registered every endpoint: that
// link took their place (it reached the node while this slot was avoiding
// it), and this slot, finding only nodes linked already, may never
// register a link of its own to hand them off.
func (s *slot) handOffTo(ctx context.Context, node string) {
	var to []leavingLink
	for _, lv := range s.leaving {
		if lv.l.nodeID == node {
			to = append(to, lv)
		}
	}
	if len(to) == 0 || !s.a.registeredOn(node) {
		return
	}
	s.leaving = slices.DeleteFunc(s.leaving, func(lv leavingLink) bool { return lv.l.nodeID == node })
	s.a.log.Debug("another link to the node took the place of the links leaving it", "node_id", node, "links", len(to))
	s.release(ctx, to)
}

// release lets the links in list go (see handOff).
func (s *slot) release(ctx context.Context, list []leavingLink) {
	a := s.a
	for _, lv := range list {
		l, silent, withdraw := lv.l, lv.silent, lv.withdraw
		a.retiring.Go(func() {
			defer a.dropLink(l)
			if silent && l.conn.Context().Err() != nil {
				l.log.Debug("the silent link timed out before its replacement was registered")
				l.close(quicutil.ConnCodeNormal, "")
				return
			}
			if silent && !l.recovered() {
				l.log.Info("closing the silent link: its replacement is registered")
				l.close(quicutil.ConnCodeNormal, "no packets from edge")
				return
			}
			if withdraw {
				l.withdrawAll()
			}
			l.retire(ctx, retireGrace)
		})
	}
}

// leavingTo reports whether a link of the slot that is leaving node is
// still open.
func (s *slot) leavingTo(node string) bool {
	return slices.ContainsFunc(s.leaving, func(lv leavingLink) bool {
		return lv.l.nodeID == node && lv.l.conn.Context().Err() == nil
	})
}

// reap closes the leaving links whose connections died meanwhile.
func (s *slot) reap() {
	s.leaving = slices.DeleteFunc(s.leaving, func(lv leavingLink) bool {
		if lv.l.conn.Context().Err() == nil {
			return false
		}
		s.a.dropLink(lv.l)
		lv.l.close(quicutil.ConnCodeNormal, "")
		return true
	})
}

func (s *slot) closeLeaving() {
	if s.ready != nil {
		s.ready.close(quicutil.ConnCodeNormal, "agent closing")
		s.ready = nil
	}
	for _, lv := range s.leaving {
		s.a.dropLink(lv.l)
		lv.l.close(quicutil.ConnCodeNormal, "agent closing")
	}
	s.leaving = nil
}

// backoff returns the wait before the next round of attempts.
func (s *slot) backoff() time.Duration {
	s.lastWait = s.a.cfg.Backoff.Delay(s.attempt, nil)
	s.attempt++
	return s.lastWait
}

// dial tries the candidates in rounds, with backoff between rounds, until
// it has a live link to a node no other live link goes to and, for the
// first few tries, other than avoid. Every attempt uses a new UDP socket
// (or TCP connection), so a load balancer that hashes the 4-tuple may
// pick another node.
func (s *slot) dial(ctx context.Context, avoid string) (*link, error) {
	a := s.a
	r := &round{s: s, avoid: avoid}
	if l := s.ready; l != nil { // a probe's link over QUIC
		s.ready = nil
		if err := a.admit(l, avoid, true); err == nil {
			return l, nil
		}
		l.close(quicutil.ConnCodeNormal, "duplicate node")
	}
	for {
		s.reap()
		if r.avoid != "" && !s.leavingTo(r.avoid) {
			// The link that left avoid is gone (the node drained and
			// exited, say): a node of that ID now is a new start of it,
			// as good as any other.
			r.avoid = ""
		}
		l, err := r.run(ctx, a.candidates(s, r.avoid, r.avoidTries >= maxAvoidTries))
		if l != nil || err != nil {
			return l, err
		}
		lastErr := r.lastErr
		if lastErr == nil { // no candidate: cannot happen, Edges is never empty
			lastErr = errors.New("no edge address to dial")
		}
		// A round that reached only nodes linked already is no failure:
		// it waits by a count of its own, so that it does not lengthen
		// the backoff of the next lost link (a link made after such
		// rounds and lost soon after waited 15 s to reconnect).
		var wait time.Duration
		if r.dupOnly {
			wait = a.cfg.Backoff.Delay(r.dupRounds, nil)
			r.dupRounds++
			if a.balanced() {
				wait = min(wait, dupRetryMax)
			}
		} else {
			wait = s.backoff()
		}
		retryIn := wait.Round(time.Millisecond).String()
		msg := lastErr.Error()
		repeat := msg == s.fails.last
		switch {
		case msg == s.lastWarn && r.dupOnly:
			a.log.Debug("still no other edge node", "err", lastErr, "retry_in", retryIn)
		case r.dupOnly:
			a.log.Info("every edge node reached is linked already; retrying", "err", lastErr, "retry_in", retryIn)
		case s.fails.failed(msg, time.Now()):
			// The first failure, a new error, or the same one after a
			// growing interval: never silent, never a flood.
			attrs := []any{"err", lastErr, "attempts", s.fails.rounds, "retry_in", retryIn}
			if h := dialHint(lastErr); h != "" {
				attrs = append(attrs, "hint", h)
			}
			if !repeat {
				a.log.Warn("cannot connect to edge; retrying with backoff", attrs...)
			} else {
				attrs = append(attrs, "failing_for", time.Since(s.fails.first).Round(time.Second).String())
				a.log.Warn("still cannot connect to edge; retrying with backoff", attrs...)
			}
		default:
			a.log.Debug("still cannot connect to edge", "err", lastErr, "attempts", s.fails.rounds, "retry_in", retryIn)
		}
		s.lastWarn = lastErr.Error()
		if !r.dupOnly {
			a.roundFailed(lastErr)
		}
		sleep(ctx, wait)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// dialStagger is how long an attempt of a round runs alone before the
// next candidate is dialled beside it (happy eyeballs): an address that
// does not answer costs the round that long, not its handshake timeout.
// An attempt that fails starts the next at once.
const dialStagger = 250 * time.Millisecond

// round is the state of a slot's dial across its rounds.
type round struct {
	s          *slot
	avoid      string // the node the previous link left
	avoidTries int    // times avoid was reached
	dupRounds  int    // rounds that reached only nodes linked already
	// Of the last round:
	lastErr error
	dupOnly bool // every node reached is linked already
}

// attempt is the outcome of one connection attempt of a round.
type attempt struct {
	c     candidate
	token string
	l     *link
	err   error
}

// run dials the candidates of one round, each dialStagger after the
// previous one or as soon as every attempt under way failed, whatever the
// transport (TransportAuto's fallback runs inside each attempt). The first
// link admitted ends the round: the attempts still under way are
// cancelled, and the links they make are closed. run returns the link,
// or an error when retrying cannot help, or neither when the round found
// no link (r.lastErr says why).
func (r *round) run(ctx context.Context, cands []candidate) (*link, error) {
	s, a := r.s, r.s.a
	r.lastErr, r.dupOnly = nil, true
	rctx, cancel := context.WithCancel(ctx)
	results := make(chan attempt, len(cands))
	next, running := 0, 0
	start := func() {
		c := cands[next]
		next++
		running++
		token := a.currentToken()
		a.log.Debug("dialling edge", "edge", c.addr, "hint", c.hint)
		go func() {
			l, err := a.connect(rctx, c, token)
			results <- attempt{c: c, token: token, l: l, err: err}
		}()
	}
	defer func() {
		cancel()
		if running == 0 {
			return
		}
		// The attempts still under way end soon, cancelled: Run waits
		// for them, and what they connected is closed.
		left := running
		a.retiring.Go(func() {
			for range left {
				if at := <-results; at.l != nil {
					at.l.close(quicutil.ConnCodeNormal, "agent linked elsewhere")
				}
			}
		})
	}()
	stagger := time.NewTimer(dialStagger)
	defer stagger.Stop()
	for running > 0 || next < len(cands) {
		if running == 0 {
			start()
			stagger.Reset(dialStagger)
			continue
		}
		var at attempt
		select {
		case <-stagger.C:
			if next < len(cands) {
				start()
				stagger.Reset(dialStagger)
			}
			continue
		case at = <-results:
			running--
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		c, l, err := at.c, at.l, at.err
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			a.connectErrors.Add(1)
			if errors.Is(err, ErrUnauthorized) && a.currentToken() != at.token {
				// SetToken replaced the token meanwhile: try the new one.
				a.log.Info("edge refused the old token; trying the new one", "edge", c.addr, "err", err)
				r.lastErr, r.dupOnly = err, false
				continue
			}
			if errors.Is(err, ErrUnauthorized) {
				a.log.Error("edge refused the agent's token; not retrying", "edge", c.addr, "err", err)
				return nil, err
			}
			if c.hint {
				a.hintFailed(c)
			}
			a.markDown(c.addr)
			a.log.Debug("edge unreachable, trying the next", "edge", c.addr, "err", err)
			r.lastErr, r.dupOnly = err, false
			continue
		}
		a.markUp(c.addr)
		err = a.admit(l, r.avoid, r.avoidTries >= maxAvoidTries)
		if err == nil {
			s.lastWarn = ""
			s.fails.reset()
			if tok := a.currentToken(); tok != l.token {
				// SetToken ran while this link said hello with the old one.
				l.wg.Go(func() {
					if err := l.refresh(context.Background(), tok); err != nil {
						l.log.Error("token refresh failed", "err", err)
					}
				})
			}
			return l, nil
		}
		l.close(quicutil.ConnCodeNormal, "duplicate node")
		if errors.Is(err, ErrClosed) {
			return nil, err
		}
		var dup *duplicateError
		switch {
		case errors.As(err, &dup) && dup.leaving:
			r.avoidTries++
		case errors.As(err, &dup):
			s.handOffTo(ctx, dup.node)
		}
		l.log.Debug("reached a node the agent does not want; trying again", "err", err)
		r.lastErr = err
	}
	return nil, nil
}

// certHint says what to do about an edge certificate the agent cannot
// verify, or "" for other errors.
func certHint(err error) string {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return "the edge's certificate is signed by a CA the agent does not trust: give the edge's CA certificate with --ca FILE (pico-edge without --tls-cert prints the path of its development ca.pem when it starts)"
	case errors.As(err, &host):
		return "the edge's certificate does not name the address dialled: set --server-name to a name in it, or dial the edge by that name"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "the edge's certificate has expired (or this machine's clock is wrong)"
	}
	return ""
}

// candidate is an address a slot may dial.
type candidate struct {
	addr       string
	serverName string // for a hint: the name verified at the edge that listed it
	hint       bool   // listed by an edge, not configured
	nodeID     string // for a hint: the node listed
}

// hint is a node an edge listed in its Welcome.
type hint struct {
	addr       string
	serverName string
	retryAt    time.Time // after a failed attempt, skipped until then
}

// candidates returns the addresses for one round of slot s: the configured
// Edges in turn (those last met as a node in use at the end), then the
// nodes the edges listed that no live link goes to; the addresses just
// lost or found unreachable come last (markDown).
func (a *Agent) candidates(s *slot, avoid string, allowAvoid bool) (out []candidate) {
	a.mu.Lock()
	defer a.mu.Unlock()
	unwanted := make(map[string]bool, len(a.links)+1)
	for _, l := range a.links {
		if !l.leaving {
			unwanted[l.nodeID] = true
		}
	}
	if avoid != "" && !allowAvoid {
		unwanted[avoid] = true
	}
	n := len(a.cfg.Edges)
	out = make([]candidate, 0, n+len(a.hints))
	var later []candidate
	for i := range n {
		addr := a.cfg.Edges[(s.next+i)%n]
		if node, ok := a.addrNode[addr]; ok && unwanted[node] {
			later = append(later, candidate{addr: addr})
		} else {
			out = append(out, candidate{addr: addr})
		}
	}
	s.next++
	out = append(out, later...)
	defer func() { out = a.downLastLocked(out) }()
	if a.balanced() {
		// Every edge is a balancer's URL: the nodes' own addresses that
		// the edges list may be unreachable from here, and dialling them
		// would go around the balancer. Links reach other nodes through
		// the URL, each attempt a new connection that the balancer may
		// send to another node: a round tries it a few times.
		for range urlTriesPerRound - 1 {
			out = append(out, out[:n]...)
		}
		return out
	}
	ids := make([]string, 0, len(a.hints))
	for id := range a.hints {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	now := time.Now()
	for _, id := range ids {
		h := a.hints[id]
		if unwanted[id] || now.Before(h.retryAt) || slices.Contains(a.cfg.Edges, h.addr) {
			continue
		}
		out = append(out, candidate{addr: h.addr, serverName: h.serverName, hint: true, nodeID: id})
	}
	return out
}

// learn records what l's Welcome says: the node at l's address, and the
// other nodes of its cluster (the latest list replaces the previous one),
// which make a second link worth keeping when Config.Connections is zero.
func (a *Agent) learn(l *link, w *quicutil.Welcome) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.addrNode[l.addr] = l.nodeID
	if len(w.Peers) == 0 {
		return // an edge outside a cluster, or one that does not say
	}
	hints := make(map[string]hint, len(w.Peers))
	for _, p := range w.Peers {
		if p.NodeID == "" || p.NodeID == l.nodeID || !usableAddr(p.Addr) {
			continue
		}
		h := hint{addr: p.Addr, serverName: l.serverName}
		if old, ok := a.hints[p.NodeID]; ok && old.addr == p.Addr {
			h.retryAt = old.retryAt
		}
		hints[p.NodeID] = h
	}
	a.hints = hints
	if a.cfg.Connections == 0 && len(hints) > 0 && a.want < 2 {
		a.want = 2
		select {
		case a.grow <- struct{}{}:
		default:
		}
	}
}

// downFor is how long an address whose link was lost, or that an attempt
// failed to reach, is dialled after every other candidate: a slot that
// loses its link reaches a node it has not just lost first.
const downFor = 30 * time.Second

// markDown puts addr last in the rounds of the next downFor.
func (a *Agent) markDown(addr string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.down[addr] = time.Now().Add(downFor)
}

// markUp forgets that addr was down: an attempt reached it.
func (a *Agent) markUp(addr string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.down, addr)
}

// downLastLocked moves the candidates at addresses marked down to the
// end, keeping the order otherwise, and forgets the marks that expired;
// the caller holds a.mu.
func (a *Agent) downLastLocked(cands []candidate) []candidate {
	now := time.Now()
	for addr, until := range a.down {
		if !now.Before(until) {
			delete(a.down, addr)
		}
	}
	if len(a.down) == 0 {
		return cands
	}
	isDown := func(c candidate) bool { _, ok := a.down[c.addr]; return ok }
	up := slices.DeleteFunc(slices.Clone(cands), isDown)
	return append(up, slices.DeleteFunc(cands, func(c candidate) bool { return !isDown(c) })...)
}

// hintFailed skips the listed node c for a while.
func (a *Agent) hintFailed(c candidate) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h, ok := a.hints[c.nodeID]; ok && h.addr == c.addr {
		h.retryAt = time.Now().Add(hintRetry)
		a.hints[c.nodeID] = h
	}
}

// usableAddr reports whether addr, listed by an edge, can be dialled: a
// host and a port, and no unspecified IP address.
func usableAddr(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" || port == "0" {
		return false
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		return false
	}
	return true
}
