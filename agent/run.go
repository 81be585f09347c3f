package agent

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Timing of links.
const (
	// retireGrace bounds how long a link the edge asked to leave keeps
	// serving its streams after its replacement is registered.
	retireGrace = 30 * time.Second
	// silentAfter is how long a link may receive nothing before it is
	// suspected dead and replaced. With the 1 s keep-alive a healthy edge
	// answers at least every second or so, while QUIC itself gives up
	// only after its 5 s idle timeout.
	silentAfter = 2500 * time.Millisecond
	// watchInterval is how often the watcher looks at every live link.
	watchInterval = 250 * time.Millisecond
)

// Run keeps links to edge nodes until ctx ends or Close is called, then
// returns nil. It keeps Config.Connections links, each to a distinct node;
// each link reconnects with backoff forever, trying the edges in turn and
// then the other nodes they listed, and registers every endpoint on each
// new link. A link whose edge asks it to move (goaway) or that receives
// nothing for a few seconds is replaced by a link to another node before
// it closes. Run returns an error only when retrying cannot help
// (ErrUnauthorized) or it cannot start.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	if a.running {
		a.mu.Unlock()
		return errors.New("agent: Run called twice")
	}
	a.running = true
	a.want = a.cfg.Connections
	if a.want == 0 {
		a.want = 1
		if len(a.cfg.Edges) > 1 {
			a.want = 2 // and learn raises it to 2 when an edge lists peers
		}
	}
	a.mu.Unlock()
	defer close(a.runDone)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var slots sync.WaitGroup
	fatal := make(chan error, MaxConnections) // a slot sends at most once
	started := 0
	startSlots := func() {
		a.mu.Lock()
		want := a.want
		a.mu.Unlock()
		for ; started < want; started++ {
			n := started
			slots.Go(func() {
				if err := a.runSlot(ctx, n); err != nil {
					fatal <- err
				}
			})
		}
	}
	startSlots()
	tick := time.NewTicker(watchInterval)
	defer tick.Stop()
	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-a.quit:
			break loop
		case err = <-fatal:
			break loop
		case <-a.grow:
			startSlots()
		case now := <-tick.C:
			a.watch(now)
		}
	}
	a.mu.Lock()
	a.stopping = true
	a.mu.Unlock()
	cancel()
	slots.Wait()
	a.retiring.Wait()
	a.mu.Lock()
	a.runErr = err
	a.mu.Unlock()
	return err
}

// watch looks for live links that have received nothing for too long;
// their slots replace them. One ticker serves every link.
func (a *Agent) watch(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, l := range a.links {
		if !l.leaving {
			l.checkSilence(now)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
