package quicutil_test

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/quicutil"
)

var webHeader = quicutil.StreamHeader{Kind: quicutil.KindHTTP, Endpoint: "web", ClientAddr: "192.0.2.1:1234"}

// openConn opens a stream on client as an OpenConn that sends h.
func openConn(t testing.TB, client *quic.Conn, h quicutil.StreamHeader, wantAnswer bool) *quicutil.Conn {
	t.Helper()
	str := openStream(t, client)
	str.SetDeadline(time.Now().Add(safety))
	c := quicutil.OpenConn(str, client.LocalAddr(), client.RemoteAddr(), h.Append(nil), wantAnswer)
	t.Cleanup(func() { c.Close() })
	return c
}

// acceptHeader accepts the next stream on server and reads its header.
func acceptHeader(t testing.TB, server *quic.Conn, want quicutil.StreamHeader) *quic.Stream {
	t.Helper()
	str := acceptStream(t, server)
	h, err := quicutil.ReadStreamHeader(str)
	if err != nil || h != want {
		t.Fatalf("ReadStreamHeader = %+v, %v; want %+v, nil", h, err, want)
	}
	return str
}

func readN(t testing.TB, r io.Reader, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return string(b)
}

func TestOpenConnHeaderThenPayload(t *testing.T) {
	client, server := defaultLink(t)
	c := openConn(t, client, webHeader, true)
	if c.LocalAddr() != client.LocalAddr() || c.RemoteAddr() != client.RemoteAddr() {
		t.Errorf("addresses: got %v, %v; want %v, %v", c.LocalAddr(), c.RemoteAddr(), client.LocalAddr(), client.RemoteAddr())
	}
	if ok, err := c.Answer(); err != nil || ok {
		t.Fatalf("Answer() before any read = %v, %t; want nil, false", err, ok)
	}
	n, err := c.Write([]byte("request"))
	if n != len("request") || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil (payload bytes only)", n, err, len("request"))
	}
	if _, err := c.Write([]byte("+more")); err != nil {
		t.Fatal(err)
	}

	acc := acceptHeader(t, server, webHeader)
	if got := readN(t, acc, len("request+more")); got != "request+more" {
		t.Fatalf("payload after the header: got %q, want %q", got, "request+more")
	}
	if _, err := acc.Write(append(quicutil.AppendAnswer(nil, quicutil.StatusOK, "ok"), "response"...)); err != nil {
		t.Fatal(err)
	}
	acc.Close()

	got, err := io.ReadAll(c)
	if err != nil || string(got) != "response" {
		t.Fatalf("ReadAll = %q, %v; want %q, nil (without the answer)", got, err, "response")
	}
	if ok, err := c.Answer(); err != nil || !ok {
		t.Fatalf("Answer() = %v, %t; want nil, true", err, ok)
	}
}

func TestOpenConnFlush(t *testing.T) {
	client, server := defaultLink(t)
	c := openConn(t, client, webHeader, false)
	if err := c.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	acc := acceptHeader(t, server, webHeader) // arrives with no payload
	if err := c.Flush(); err != nil {         // nothing pending: a no-op
		t.Fatalf("second Flush: %v", err)
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, acc, 1); got != "x" {
		t.Fatalf("got %q after the header, want %q (the header is sent once)", got, "x")
	}
	// Without wantAnswer the first bytes are data.
	acc.Write(quicutil.AppendAnswer(nil, quicutil.StatusOK, ""))
	if got := readN(t, c, 2); got != "\x00\x00" {
		t.Fatalf("Read = %q, want the raw bytes", got)
	}
	if ok, err := c.Answer(); err != nil || ok {
		t.Fatalf("Answer() = %v, %t; want nil, false when no answer is wanted", err, ok)
	}
}

func TestOpenConnRefused(t *testing.T) {
	client, server := defaultLink(t)
	c := openConn(t, client, webHeader, true)
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	acc := acceptHeader(t, server, webHeader)
	acc.Write(quicutil.AppendAnswer(nil, quicutil.StatusNoRoute, "nope"))
	acc.Close()

	n, err := c.Read(make([]byte, 10))
	var se *quicutil.StatusError
	if n != 0 || !errors.As(err, &se) || se.Code != quicutil.StatusNoRoute || se.Message != "nope" {
		t.Fatalf("Read = %d, %v; want 0 and a *StatusError{NoRoute, nope}", n, err)
	}
	ok, aerr := c.Answer()
	if !ok || !errors.As(aerr, &se) || se.Code != quicutil.StatusNoRoute {
		t.Fatalf("Answer() = %v, %t; want the *StatusError, true", aerr, ok)
	}
}

// TestOpenConnWriteAfterRefusal: once the peer refused the stream and
// stopped reading, writes fail with the refusal, not with the reset.
func TestOpenConnWriteAfterRefusal(t *testing.T) {
	client, server := defaultLink(t)
	c := openConn(t, client, webHeader, true)
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	acc := acceptHeader(t, server, webHeader)
	acc.Write(quicutil.AppendAnswer(nil, quicutil.StatusShuttingDown, "draining"))
	acc.Close()
	acc.CancelRead(quicutil.StreamCodeCanceled)

	var se *quicutil.StatusError
	if _, err := c.Read(make([]byte, 1)); !errors.As(err, &se) {
		t.Fatalf("Read = %v, want a *StatusError", err)
	}
	var err error
	for err == nil { // until STOP_SENDING arrives
		_, err = c.Write(make([]byte, 1024))
	}
	if !errors.As(err, &se) || se.Code != quicutil.StatusShuttingDown {
		t.Fatalf("Write after the refusal = %v, want the *StatusError %v", err, quicutil.StatusShuttingDown)
	}
}

func TestOpenConnNoAnswer(t *testing.T) {
	tests := map[string]struct {
		end       func(*quic.Stream)
		wantCause error // also wrapped, besides ErrNoAnswer
	}{
		"FIN before answer": {end: func(s *quic.Stream) { s.Close() }, wantCause: io.EOF},
		"FIN inside answer": {end: func(s *quic.Stream) { s.Write([]byte{byte(quicutil.StatusOK)}); s.Close() }, wantCause: io.ErrUnexpectedEOF},
		"reset":             {end: func(s *quic.Stream) { s.CancelWrite(42) }},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			client, server := defaultLink(t)
			c := openConn(t, client, webHeader, true)
			if _, err := c.Write([]byte("request")); err != nil {
				t.Fatal(err)
			}
			tt.end(acceptHeader(t, server, webHeader))

			_, err := c.Read(make([]byte, 10))
			if !errors.Is(err, quicutil.ErrNoAnswer) {
				t.Fatalf("Read = %v, want an error wrapping ErrNoAnswer", err)
			}
			if tt.wantCause != nil && !errors.Is(err, tt.wantCause) {
				t.Fatalf("Read = %v, want it to wrap %v", err, tt.wantCause)
			}
			if tt.wantCause == nil {
				wantStreamError(t, "Read", err, 42)
			}
			if ok, aerr := c.Answer(); !ok || !errors.Is(aerr, quicutil.ErrNoAnswer) {
				t.Fatalf("Answer() = %v, %t; want ErrNoAnswer, true", aerr, ok)
			}
		})
	}
}

// TestConnCloseUnusedResets: a Conn that never wrote must not send its
// header on Close, or the peer would serve an empty request.
func TestConnCloseUnusedResets(t *testing.T) {
	client, server := defaultLink(t)
	unused := openConn(t, client, quicutil.StreamHeader{Kind: quicutil.KindHTTP, Endpoint: "unused"}, true)
	if err := unused.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n, err := unused.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %d, %v; want net.ErrClosed", n, err)
	}
	// A second stream, used normally, makes the first one visible to the
	// acceptor (streams are accepted in order) and bounds the test.
	marker := quicutil.StreamHeader{Kind: quicutil.KindHTTP, Endpoint: "marker"}
	used := openConn(t, client, marker, false)
	if _, err := used.Write([]byte("m")); err != nil {
		t.Fatal(err)
	}

	first := acceptStream(t, server)
	h, err := quicutil.ReadStreamHeader(first)
	if err == nil {
		t.Fatalf("the acceptor read a header %+v from a stream closed before its first write", h)
	}
	wantStreamError(t, "reading the unused stream", err, quicutil.StreamCodeCanceled)
	acceptHeader(t, server, marker)
}

// TestConnCloseSendsFIN: Close after writing delivers what was written,
// then a clean EOF, and stops the peer from sending (STOP_SENDING).
func TestConnCloseSendsFIN(t *testing.T) {
	client, server := defaultLink(t)
	c := openConn(t, client, webHeader, false)
	if _, err := c.Write([]byte("all of it")); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	acc := acceptHeader(t, server, webHeader)
	if got, err := io.ReadAll(acc); err != nil || string(got) != "all of it" {
		t.Fatalf("ReadAll = %q, %v; want %q, nil", got, err, "all of it")
	}
	var err error
	for err == nil { // the first writes may go out before STOP_SENDING arrives
		_, err = acc.Write(make([]byte, 1024))
	}
	wantStreamError(t, "peer Write after Close", err, quicutil.StreamCodeCanceled)
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("Read after Close succeeded")
	}
}

// TestConnCloseWrite: half-close sends the pending header and FIN; the
// other direction keeps working.
func TestConnCloseWrite(t *testing.T) {
	client, server := defaultLink(t)
	c := openConn(t, client, webHeader, true)
	if err := c.CloseWrite(); err != nil { // header + FIN, no payload
		t.Fatalf("CloseWrite: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("second CloseWrite: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after CloseWrite = %v, want net.ErrClosed", err)
	}
	acc := acceptHeader(t, server, webHeader)
	if got, err := io.ReadAll(acc); err != nil || len(got) != 0 {
		t.Fatalf("after the header: %q, %v; want EOF", got, err)
	}
	acc.Write(append(quicutil.AppendAnswer(nil, quicutil.StatusOK, ""), "reply"...))
	acc.Close()
	if got, err := io.ReadAll(c); err != nil || string(got) != "reply" {
		t.Fatalf("ReadAll = %q, %v; want %q, nil", got, err, "reply")
	}
}

func TestConnAbort(t *testing.T) {
	client, server := defaultLink(t)
	c := openConn(t, client, webHeader, false)
	if _, err := c.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	acc := acceptHeader(t, server, webHeader)
	readN(t, acc, len("partial"))
	c.Abort(7)
	c.Abort(8) // no-op
	c.Close()  // no-op: no FIN after a reset
	_, err := acc.Read(make([]byte, 1))
	wantStreamError(t, "peer Read after Abort", err, 7)
	for err = nil; err == nil; {
		_, err = acc.Write(make([]byte, 1024))
	}
	wantStreamError(t, "peer Write after Abort", err, 7)
}

// TestConnCloseDuringBlockedWrite: Close (from several goroutines at once)
// unblocks a Write stuck on flow control by resetting the stream. Run with
// -race.
func TestConnCloseDuringBlockedWrite(t *testing.T) {
	client, server := defaultLink(t)
	c := openConn(t, client, webHeader, false)

	big := make([]byte, 4<<20) // far more than the 512 KiB stream window
	type result struct {
		n   int
		err error
	}
	wrote := make(chan result, 1)
	go func() {
		n, err := c.Write(big)
		wrote <- result{n, err}
	}()
	// The header goes out with the first bytes of that Write, so once the
	// stream is accepted the Write holds the Conn and, with a peer that
	// never reads, cannot finish.
	acc := acceptStream(t, server)
	// Read the header before the reset: a reset discards whatever the peer
	// has not read yet, the header included.
	if _, err := quicutil.ReadStreamHeader(acc); err != nil {
		t.Fatalf("ReadStreamHeader: %v", err)
	}

	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if err := c.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Fatalf("Close again: %v", err)
	}
	r := recv(t, "blocked Write", wrote)
	if r.err == nil || r.n >= len(big) {
		t.Fatalf("Write = %d, %v; want a short write and an error", r.n, r.err)
	}

	// The peer gets a reset, never a clean end of a truncated stream.
	_, err := io.Copy(io.Discard, acc)
	wantStreamError(t, "peer reading a stream whose Write was cut", err, quicutil.StreamCodeAborted)
}

// TestConnIdleTimeout: with no byte either way for the idle timeout, the
// stream is reset with StreamCodeIdleTimeout, and Read and Write fail with
// ErrIdle, which is a timeout.
func TestConnIdleTimeout(t *testing.T) {
	const idle = 200 * time.Millisecond
	client, server := defaultLink(t)
	opened, acc := streamPair(t, client, server)
	start := time.Now()
	c := quicutil.NewConn(acc, server.LocalAddr(), server.RemoteAddr())
	c.SetIdleTimeout(idle)
	c.SetIdleTimeout(time.Hour) // only the first call counts
	n, err := c.Read(make([]byte, 10))
	if n != 0 || !errors.Is(err, quicutil.ErrIdle) || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read = %d, %v; want 0, ErrIdle (and os.ErrDeadlineExceeded)", n, err)
	}
	if el := time.Since(start); el < idle {
		t.Fatalf("Read timed out after %v, before the idle timeout of %v", el, idle)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read error %v is not a net.Error timeout", err)
	}
	for err = nil; err == nil; { // Abort resets the read side first, then the write side
		_, err = c.Write([]byte("late"))
	}
	if !errors.Is(err, quicutil.ErrIdle) {
		t.Fatalf("Write after the idle timeout = %v, want ErrIdle", err)
	}
	_, err = io.Copy(io.Discard, opened) // "late" may have gone out before the reset
	wantStreamError(t, "peer Read", err, quicutil.StreamCodeIdleTimeout)
}

// TestConnCloseStopsIdle: a Conn closed before its idle timeout is not
// reset by it later; the peer reads a clean end.
func TestConnCloseStopsIdle(t *testing.T) {
	const idle = 50 * time.Millisecond
	client, server := defaultLink(t)
	opened, acc := streamPair(t, client, server)
	c := quicutil.NewConn(acc, server.LocalAddr(), server.RemoteAddr())
	c.SetIdleTimeout(idle)
	c.Write([]byte("bye"))
	c.Close()
	// Read past several idle timeouts: a reset by the timer would show here.
	if got, err := io.ReadAll(opened); err != nil || string(got) != "bye" {
		t.Fatalf("peer ReadAll = %q, %v; want %q and a clean EOF", got, err, "bye")
	}
}

// TestConnIdleTimeoutActivity: traffic either way keeps a Conn with an
// idle timeout alive for many timeouts; silence then ends it.
func TestConnIdleTimeoutActivity(t *testing.T) {
	const (
		idle  = 300 * time.Millisecond
		tick  = 20 * time.Millisecond
		ticks = 45 // 3 idle timeouts
	)
	t.Run("own writes", func(t *testing.T) {
		client, server := defaultLink(t)
		opened, acc := streamPair(t, client, server)
		c := quicutil.NewConn(acc, server.LocalAddr(), server.RemoteAddr())
		c.SetIdleTimeout(idle)
		type result struct {
			b   string
			err error
		}
		read := make(chan result, 1)
		go func() { // blocked in Read while only the write side moves
			b := make([]byte, 10)
			n, err := c.Read(b)
			read <- result{string(b[:n]), err}
		}()
		tk := time.NewTicker(tick)
		defer tk.Stop()
		for i := range ticks {
			select {
			case r := <-read:
				t.Fatalf("Read returned %q, %v after %d writes, while the Conn was writing", r.b, r.err, i)
			case <-tk.C:
			}
			if _, err := c.Write([]byte("t")); err != nil {
				t.Fatalf("Write: %v", err)
			}
			readN(t, opened, 1)
		}
		opened.Write([]byte("x"))
		if r := recv(t, "Read", read); r.b != "x" || r.err != nil {
			t.Fatalf("Read = %q, %v; want %q, nil", r.b, r.err, "x")
		}
	})
	t.Run("peer writes", func(t *testing.T) {
		client, server := defaultLink(t)
		opened, acc := streamPair(t, client, server)
		c := quicutil.NewConn(acc, server.LocalAddr(), server.RemoteAddr())
		c.SetIdleTimeout(idle)
		errc := make(chan error, 1)
		go func() {
			tk := time.NewTicker(tick)
			defer tk.Stop()
			for range ticks {
				<-tk.C
				if _, err := opened.Write([]byte("t")); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		for i := range ticks {
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatalf("Read %d while the peer was writing: %v", i, err)
			}
		}
		if err := recv(t, "writer", errc); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read once the peer stopped = %v, want os.ErrDeadlineExceeded", err)
		}
	})
}

// TestConnUserDeadline: a read deadline set by the user applies alongside
// the idle timeout, and clearing it leaves the Conn usable.
func TestConnUserDeadline(t *testing.T) {
	client, server := defaultLink(t)
	opened, acc := streamPair(t, client, server)
	c := quicutil.NewConn(acc, server.LocalAddr(), server.RemoteAddr())
	c.SetIdleTimeout(time.Hour)
	c.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the user's deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	c.SetReadDeadline(time.Time{})
	opened.Write([]byte("y"))
	if got := readN(t, c, 1); got != "y" {
		t.Fatalf("Read = %q, want %q", got, "y")
	}
	before := time.Now()
	c.Write([]byte("z"))
	if c.LastActivity().Before(before) {
		t.Fatalf("LastActivity() = %v after a Write at %v", c.LastActivity(), before)
	}
	if got := readN(t, opened, 1); got != "z" {
		t.Fatalf("peer read %q, want %q", got, "z")
	}
}
