package agent

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Shutdown stops the agent gracefully: it withdraws every endpoint from
// every edge (which from then on routes new requests and connections to
// the endpoints' other agents, or answers that none serves them), lets the
// streams in flight end, and then closes the agent as Close does. It
// returns once they ended, or when ctx ends first: then it closes the
// agent, cutting what is left, and returns ctx's error. From its start,
// registering an endpoint fails with ErrClosed.
//
// A stream in flight is a request being served (or a TCP connection), on
// an upstream or a Listener's connection until it is closed, or a Dial's
// connection. An edge closes its idle keep-alive streams to the agent once
// the agent serves nothing there.
func (a *Agent) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.draining = true
	links := slices.Clone(a.links)
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, l := range links {
		wg.Go(l.withdrawAll)
	}
	wg.Wait()
	withdrawn := time.Now()
	a.log.Info("shutting down: endpoints withdrawn from the edges; waiting for the streams in flight", "streams", a.inFlight())
	err := a.waitIdle(ctx, withdrawn)
	if err != nil {
		a.log.Warn("shutting down: the grace period is over; closing the streams still open", "streams", a.inFlight())
	} else {
		a.log.Info("shutting down: the streams in flight ended")
	}
	a.Close()
	return err
}

// inFlight counts the streams being served or dialled: those of the links,
// and the Listeners' connections that are still open.
func (a *Agent) inFlight() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var n int64
	for _, l := range a.links {
		n += l.active.Load()
	}
	for _, r := range a.endpoints {
		if _, ok := r.handler.(*Listener); ok {
			n += r.stats.inflight.Load()
		}
	}
	return n
}

// waitIdle waits until no stream is in flight and no link has taken a new
// one for retireQuiet (nor since the endpoints were withdrawn, at
// withdrawn: the edge may have opened a stream just before), or until ctx
// ends.
func (a *Agent) waitIdle(ctx context.Context, withdrawn time.Time) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !a.idleSince(withdrawn) {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		case <-a.quit:
			return nil
		}
	}
	return nil
}

func (a *Agent) idleSince(withdrawn time.Time) bool {
	if time.Since(withdrawn) < retireQuiet || a.inFlight() > 0 {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, l := range a.links {
		if time.Since(time.Unix(0, l.lastAccept.Load())) < retireQuiet {
			return false
		}
	}
	return true
}

// isDraining reports whether Shutdown has begun.
func (a *Agent) isDraining() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.draining
}
