package edge

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// An upgraded connection (a WebSocket) is copied both ways by
// httputil.ReverseProxy with io.Copy, which would allocate a 32 KiB buffer
// per direction and hold both for as long as the connection lives, idle
// or not: 64 KiB of the edge's heap per idle WebSocket. The upgraded body
// (trackedRWBody) implements io.WriterTo and io.ReaderFrom, so both copies
// come here instead: each waits for data in a 1 KiB buffer and borrows a
// pooled 32 KiB one only while reads fill the small one.

// leanWaitBuf is the buffer an upgraded connection's copy waits in.
const leanWaitBuf = 1 << 10

var leanBufs = sync.Pool{New: func() any { b := make([]byte, leanWaitBuf); return &b }}

// copyLean copies src to dst until EOF (nil) or an error, as io.Copy
// does, adding each write to count as it goes (from its start) (ReverseProxy returns when
// the first direction ends, and the access log reads both counts then),
// reading into a 1 KiB buffer while traffic is light and a pooled
// 32 KiB one (proxyBufs) from a read that fills the small buffer until a
// read that does not fill the big one.
func copyLean(dst io.Writer, src io.Reader, count *atomic.Int64) (int64, error) {
	small := leanBufs.Get().(*[]byte)
	defer leanBufs.Put(small)
	var big *[]byte
	defer func() {
		if big != nil {
			proxyBufs.Put(big)
		}
	}()
	var written int64
	for {
		buf := *small
		if big != nil {
			buf = *big
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			// Counted before the write, and corrected after it: a peer
			// that got these bytes and closed at once can end the other
			// direction, and the log's read of count, before this
			// goroutine returns from Write.
			count.Add(int64(n))
			w, werr := dst.Write(buf[:n])
			written += int64(w)
			count.Add(int64(w - n))
			if werr != nil {
				return written, werr
			}
			if w != n {
				return written, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return written, nil
			}
			return written, rerr
		}
		switch {
		case big == nil && n == len(buf):
			big = proxyBufs.Get().(*[]byte)
		case big != nil && n < len(buf):
			proxyBufs.Put(big)
			big = nil
		}
	}
}

// WriteTo copies the upgraded connection's bytes from the agent to w (the
// client); io.Copy calls it.
func (b *trackedRWBody) WriteTo(w io.Writer) (int64, error) { return copyLean(w, b.ReadCloser, &b.out) }

// ReadFrom copies the client's bytes from r to the agent; io.Copy calls it.
func (b *trackedRWBody) ReadFrom(r io.Reader) (int64, error) { return copyLean(b.w, r, &b.in) }
