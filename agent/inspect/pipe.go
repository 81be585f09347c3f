package inspect

import (
	"errors"
	"io"
	"sync"
	"time"
)

// errTruncated ends a pipe that dropped bytes: what the parser reads after
// it would not be the stream.
var errTruncated = errors.New("inspect: capture fell behind and dropped bytes")

// chunkSize is the unit the pipes keep bytes in (quicutil.CopyBufferSize:
// one read of the proxy's copy fits).
const chunkSize = 32 << 10

// pipeLimit bounds the bytes one direction of one stream keeps for its
// parser.
const pipeLimit = 32 * chunkSize

// smallChunk is the unit for a write that fits it: a small request or
// response costs 4 KiB, not 32.
const smallChunk = 4 << 10

var (
	chunkPool = sync.Pool{New: func() any { b := make([]byte, 0, chunkSize); return &b }}
	smallPool = sync.Pool{New: func() any { b := make([]byte, 0, smallChunk); return &b }}
)

type chunk struct {
	b *[]byte
	t time.Time // when its last byte was written
}

// A pipe carries the bytes of one direction of a stream from the proxy's
// copy (write, which never blocks: when the pipe is full it drops the
// bytes and breaks) to a parser (Read, which blocks).
type pipe struct {
	budget *budget

	mu      sync.Mutex // guards the fields below
	cond    sync.Cond  // signalled on a write, a close or a stop
	chunks  []chunk
	off     int  // read offset in chunks[0]
	closed  bool // the writer is done: EOF after the queued bytes
	broken  bool // bytes were dropped: errTruncated after the queued bytes
	stopped bool // the reader is gone: writes are dropped
	waiting bool // the reader waits in cond
	last    time.Time
	skipN   int64 // bytes to drop as they are written (skip)
	queued  int   // capacity of the chunks held
}

func newPipe(b *budget) *pipe {
	p := &pipe{budget: b}
	p.cond.L = &p.mu
	return p
}

// write copies b into the pipe, or drops it and breaks the pipe when the
// stream's or the inspector's limit is reached. It never blocks on the
// reader. It reports whether the bytes were kept.
func (p *pipe) write(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.broken || p.stopped {
		return !p.broken
	}
	if p.skipN > 0 {
		k := min(p.skipN, int64(len(b)))
		p.skipN -= k
		b = b[k:]
		p.last = now
		if p.skipN == 0 && p.waiting {
			p.cond.Signal()
		}
	}
	for len(b) > 0 {
		if n := len(p.chunks); n > 0 {
			tail := &p.chunks[n-1]
			if room := cap(*tail.b) - len(*tail.b); room > 0 {
				k := min(room, len(b))
				*tail.b = append(*tail.b, b[:k]...)
				tail.t = now
				b = b[k:]
				continue
			}
		}
		size, pool := chunkSize, &chunkPool
		if len(b) <= smallChunk {
			size, pool = smallChunk, &smallPool
		}
		if p.queued+size > pipeLimit || !p.budget.take(int64(size)) {
			p.broken = true
			p.budget.breaks.Add(1)
			p.releaseLocked()
			p.cond.Signal()
			return false
		}
		p.queued += size
		p.chunks = append(p.chunks, chunk{b: pool.Get().(*[]byte), t: now})
	}
	if p.waiting {
		p.cond.Signal()
	}
	return true
}

// Read reads what was written, blocking until there is some; after a
// close it returns io.EOF, after a drop errTruncated.
func (p *pipe) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.chunks) == 0 && !p.closed && !p.broken && !p.stopped {
		p.waiting = true
		p.cond.Wait()
		p.waiting = false
	}
	if len(p.chunks) == 0 {
		if p.broken {
			return 0, errTruncated
		}
		return 0, io.EOF
	}
	c := &p.chunks[0]
	n := copy(b, (*c.b)[p.off:])
	p.off += n
	p.last = c.t
	if p.off == len(*c.b) {
		p.off = 0
		p.put(*c)
		p.chunks[0] = chunk{}
		p.chunks = p.chunks[1:]
	}
	return n, nil
}

// skip drops the next n bytes unread, those queued and those still to be
// written (which are then not copied), and waits until they are. The
// parser skips the rest of a body it does not keep. On a close before
// the n bytes it returns what it skipped and io.ErrUnexpectedEOF.
func (p *pipe) skip(n int64) (int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := n
	for n > 0 && len(p.chunks) > 0 {
		c := &p.chunks[0]
		k := min(n, int64(len(*c.b)-p.off))
		p.off += int(k)
		n -= k
		p.last = c.t
		if p.off == len(*c.b) {
			p.off = 0
			p.put(*c)
			p.chunks[0] = chunk{}
			p.chunks = p.chunks[1:]
		}
	}
	p.skipN = n
	for p.skipN > 0 && !p.closed && !p.broken && !p.stopped {
		p.waiting = true
		p.cond.Wait()
		p.waiting = false
	}
	left := p.skipN
	p.skipN = 0
	switch {
	case left == 0:
		return want, nil
	case p.broken:
		return want - left, errTruncated
	}
	return want - left, io.ErrUnexpectedEOF
}

// lastTime is when the last byte read was written.
func (p *pipe) lastTime() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

func (p *pipe) isBroken() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.broken
}

// close ends the writer's side: the reader gets EOF after what is queued.
// Safe twice.
func (p *pipe) close() {
	p.mu.Lock()
	p.closed = true
	p.cond.Signal()
	p.mu.Unlock()
}

// stop ends the reader's side: queued bytes are released and later writes
// dropped; a blocked Read returns. Safe twice.
func (p *pipe) stop() {
	p.mu.Lock()
	p.stopped = true
	p.releaseLocked()
	p.cond.Signal()
	p.mu.Unlock()
}

func (p *pipe) releaseLocked() {
	for _, c := range p.chunks {
		p.put(c)
	}
	p.chunks, p.off = nil, 0
}

func (p *pipe) put(c chunk) {
	size := cap(*c.b)
	*c.b = (*c.b)[:0]
	if size == smallChunk {
		smallPool.Put(c.b)
	} else {
		chunkPool.Put(c.b)
	}
	p.queued -= size
	p.budget.give(int64(size))
}
