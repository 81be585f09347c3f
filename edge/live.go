package edge

import (
	"sync"
	"sync/atomic"
)

// liveStreams tracks the node's streams in flight: requests, TCP forwards,
// relayed streams and upgraded connections. It counts them (the hot path
// pays one atomic add each way), knows how to end each long-lived one
// cleanly when the grace period is over, and tells shutdown when none is
// left, without polling.
type liveStreams struct {
	n       atomic.Int64
	waiting atomic.Bool // a waiter exists: done must look for zero

	mu sync.Mutex // guards the fields below
	// ending holds what ends a long-lived stream cleanly: a FIN on both
	// ends of TCP forwards and relayed streams, a close of the agent side
	// of upgraded connections.
	ending map[any]func()
	zero   chan struct{} // closed when n reaches 0; made by idle
}

func (l *liveStreams) add() { l.n.Add(1) }

func (l *liveStreams) done() {
	if l.n.Add(-1) == 0 && l.waiting.Load() {
		l.mu.Lock()
		if l.zero != nil && l.n.Load() == 0 {
			close(l.zero)
			l.zero = nil
		}
		l.mu.Unlock()
	}
}

// count is the number of streams in flight.
func (l *liveStreams) count() int64 { return l.n.Load() }

// idle returns a channel that is closed once no stream is in flight (at
// once if none is now). A stream that starts after that is not waited for.
func (l *liveStreams) idle() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.waiting.Store(true) // before the load: a done that makes zero after it takes l.mu
	if l.n.Load() == 0 {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if l.zero == nil {
		l.zero = make(chan struct{})
	}
	return l.zero
}

// onEnd registers end as the way to end the stream of key cleanly; forget
// removes it.
func (l *liveStreams) onEnd(key any, end func()) {
	l.mu.Lock()
	if l.ending == nil {
		l.ending = make(map[any]func())
	}
	l.ending[key] = end
	l.mu.Unlock()
}

func (l *liveStreams) forget(keys ...any) {
	l.mu.Lock()
	for _, k := range keys {
		delete(l.ending, k)
	}
	l.mu.Unlock()
}

// endAll ends every long-lived stream registered with onEnd.
func (l *liveStreams) endAll() {
	l.mu.Lock()
	ends := make([]func(), 0, len(l.ending))
	for _, end := range l.ending {
		ends = append(ends, end)
	}
	l.mu.Unlock()
	for _, end := range ends { // they call forget themselves
		end()
	}
}

// broadcast wakes every waiter at each notify.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

// wait returns a channel closed at the next notify.
func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

func (b *broadcast) notify() {
	b.mu.Lock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
	b.mu.Unlock()
}
