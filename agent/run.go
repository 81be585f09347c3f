package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// retireGrace bounds how long a link the edge asked to leave keeps serving
// its streams after the new link is up.
const retireGrace = 30 * time.Second

// Run keeps a link to an edge until ctx ends or Close is called, then
// returns nil. It reconnects with backoff forever, trying the edges in
// turn, and registers every endpoint on each new link. It returns an error
// only when retrying cannot help (ErrUnauthorized) or it cannot start.
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
	a.mu.Unlock()
	defer close(a.runDone)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // owned by Run: ends with it
		select {
		case <-a.quit:
			cancel()
		case <-stop:
		}
	}()

	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		return fmt.Errorf("agent: open UDP socket: %w", err)
	}
	tr := &quic.Transport{Conn: udp}
	defer udp.Close()
	defer tr.Close()

	var retiring sync.WaitGroup
	defer retiring.Wait()

	var (
		attempt  int
		next     int
		lastWarn string
		lastWait time.Duration
	)
	for ctx.Err() == nil {
		addr := a.cfg.Edges[next%len(a.cfg.Edges)]
		next++
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		l, err := a.connect(dctx, tr, addr)
		dcancel()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, ErrUnauthorized) {
				a.log.Error("edge refused the agent's token; not retrying", "edge", addr, "err", err)
				return err
			}
			if next%len(a.cfg.Edges) != 0 {
				a.log.Debug("edge unreachable, trying the next", "edge", addr, "err", err)
				continue
			}
			lastWait = a.cfg.Backoff.Delay(attempt, nil)
			attempt++
			if msg := err.Error(); msg != lastWarn {
				a.log.Warn("cannot connect to edge; retrying with backoff", "err", err, "retry_in", lastWait.Round(time.Millisecond).String())
				lastWarn = msg
			} else {
				a.log.Debug("still cannot connect to edge", "err", err, "retry_in", lastWait.Round(time.Millisecond).String())
			}
			sleep(ctx, lastWait)
			continue
		}
		lastWarn = ""
		l.log.Info("connected to edge")
		connectedAt := time.Now()
		a.setLink(l)
		served := make(chan error, 1)
		go func() { served <- l.serve() }() // owned: Run receives from served below
		l.wg.Go(func() { l.register(a.registrations()) })

		var cause error
		select {
		case cause = <-served:
		case <-ctx.Done():
			a.setLink(nil)
			l.close()
			<-served
			continue
		}
		a.setLink(nil)
		var ga *goAwayError
		if errors.As(cause, &ga) {
			// Make before break: the old link keeps serving its streams
			// while the next one comes up, then retires.
			l.log.Info("edge asked the agent to move; reconnecting", "reason", ga.reason)
			retiring.Go(func() { l.retire(retireGrace) })
			attempt = 0
			continue
		}
		l.close()
		if time.Since(connectedAt) > 2*lastWait {
			attempt = 0
		}
		lastWait = a.cfg.Backoff.Delay(attempt, nil)
		attempt++
		l.log.Warn("lost connection to edge; reconnecting", "err", cause, "retry_in", lastWait.Round(time.Millisecond).String())
		sleep(ctx, lastWait)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
