package quicutil_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"

	"github.com/pico-edge/pico/quicutil"
)

// joined is a running Join between the server end of a TCP connection (a)
// and the accepted end of a QUIC stream wrapped in a Conn (b). The test
// plays client, the other end of the TCP connection, and far, the opener of
// the stream.
type joined struct {
	conn   *quicutil.Conn // the QUIC end Join holds
	client *net.TCPConn
	far    *quic.Stream
	done   chan struct{}
	res    quicutil.JoinResult
}

func startJoin(t *testing.T, idle time.Duration) *joined {
	t.Helper()
	return startJoinWith(t, func(server *net.TCPConn, c *quicutil.Conn) quicutil.JoinResult {
		return quicutil.Join(server, c, idle)
	})
}

// startJoinWith is startJoin with join in place of Join.
func startJoinWith(t *testing.T, join func(server *net.TCPConn, c *quicutil.Conn) quicutil.JoinResult) *joined {
	t.Helper()
	qc, qs := defaultLink(t)
	far, acc := streamPair(t, qc, qs)
	client, server := tcpPair(t)
	c := quicutil.NewConn(acc, qs.LocalAddr(), qs.RemoteAddr())
	j := &joined{client: client, far: far, conn: c, done: make(chan struct{})}
	acc.SetDeadline(time.Time{}) // Join manages deadlines
	go func() {
		defer close(j.done)
		j.res = join(server, c)
	}()
	t.Cleanup(func() {
		// Unblock Join if the test failed half way, then wait for it.
		client.SetLinger(0)
		client.Close()
		far.CancelRead(0)
		far.CancelWrite(0)
		select {
		case <-j.done:
		case <-time.After(safety):
			t.Errorf("Join did not return")
		}
	})
	return j
}

// wait returns Join's result.
func (j *joined) wait(t *testing.T) quicutil.JoinResult {
	t.Helper()
	recv(t, "Join", j.done)
	return j.res
}

// returned reports whether Join has returned.
func (j *joined) returned() bool {
	select {
	case <-j.done:
		return true
	default:
		return false
	}
}

func TestJoinHalfClose(t *testing.T) {
	j := startJoin(t, 0)
	if _, err := j.client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, j.far, 4); got != "ping" {
		t.Fatalf("far read %q, want %q", got, "ping")
	}
	if _, err := j.far.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, j.client, 4); got != "pong" {
		t.Fatalf("client read %q, want %q", got, "pong")
	}

	// The client is done sending: the far side sees EOF ...
	if err := j.client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(j.far); err != nil || len(rest) != 0 {
		t.Fatalf("far after the client's CloseWrite: %q, %v; want a clean EOF", rest, err)
	}
	// ... and can still answer.
	if _, err := j.far.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, j.client, 5); got != "reply" {
		t.Fatalf("client read %q, want %q", got, "reply")
	}
	if j.returned() {
		t.Fatal("Join returned while one direction was still open")
	}
	j.far.Close()
	if rest, err := io.ReadAll(j.client); err != nil || len(rest) != 0 {
		t.Fatalf("client after the far side's FIN: %q, %v; want a clean EOF", rest, err)
	}

	res := j.wait(t)
	if res.Err != nil || res.AToB != 4 || res.BToA != 9 {
		t.Fatalf("Join = %+v; want AToB 4, BToA 9, Err nil", res)
	}
}

func TestJoinBulk(t *testing.T) {
	j := startJoin(t, 0)
	up, down := make([]byte, 1<<20), make([]byte, 3<<20/2)
	rand.Read(up)
	rand.Read(down)
	var g errgroup.Group
	var gotUp, gotDown []byte
	g.Go(func() error {
		if _, err := j.client.Write(up); err != nil {
			return err
		}
		return j.client.CloseWrite()
	})
	g.Go(func() (err error) { gotUp, err = io.ReadAll(j.far); return err })
	g.Go(func() error {
		if _, err := j.far.Write(down); err != nil {
			return err
		}
		return j.far.Close()
	})
	g.Go(func() (err error) { gotDown, err = io.ReadAll(j.client); return err })
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
		t.Fatalf("got %d and %d bytes, want %d and %d, equal", len(gotUp), len(gotDown), len(up), len(down))
	}
	if res := j.wait(t); res.Err != nil || res.AToB != int64(len(up)) || res.BToA != int64(len(down)) {
		t.Fatalf("Join = %+v; want AToB %d, BToA %d, Err nil", res, len(up), len(down))
	}
}

func TestJoinAbort(t *testing.T) {
	t.Run("tcp reset", func(t *testing.T) {
		j := startJoin(t, 0)
		j.client.Write([]byte("some"))
		readN(t, j.far, 4)
		j.client.SetLinger(0)
		j.client.Close()
		if res := j.wait(t); !errors.Is(res.Err, syscall.ECONNRESET) {
			t.Fatalf("Join = %+v, want an error wrapping ECONNRESET", res)
		}
		_, err := j.far.Read(make([]byte, 1))
		wantStreamError(t, "far Read", err, quicutil.StreamCodeAborted)
	})
	t.Run("stream reset", func(t *testing.T) {
		j := startJoin(t, 0)
		j.far.Write([]byte("some"))
		readN(t, j.client, 4)
		j.far.CancelWrite(42)
		res := j.wait(t)
		wantStreamError(t, "Join", res.Err, 42)
		_, err := j.client.Read(make([]byte, 1))
		wantReset(t, "client Read", err)
		_, err = j.far.Read(make([]byte, 1))
		wantStreamError(t, "far Read", err, quicutil.StreamCodeAborted)
	})
	t.Run("stream stop sending", func(t *testing.T) {
		j := startJoin(t, 0)
		j.far.CancelRead(43)
		// Join notices when it next writes to the stream after STOP_SENDING arrived.
		var werr error
		for werr == nil && !j.returned() {
			_, werr = j.client.Write([]byte("x"))
		}
		res := j.wait(t)
		wantStreamError(t, "Join", res.Err, 43)
		for werr == nil { // the reset is reported once: by a write or by the read below
			_, werr = j.client.Write([]byte("x"))
		}
		_, rerr := j.client.Read(make([]byte, 1))
		if !errors.Is(werr, syscall.EPIPE) && !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(rerr, syscall.ECONNRESET) {
			t.Fatalf("client: write %v, read %v; want a reset", werr, rerr)
		}
		var err error
		for err == nil { // Join's side stopped reading too
			_, err = j.far.Write([]byte("x"))
		}
		wantStreamError(t, "far Write", err, quicutil.StreamCodeAborted)
	})
	t.Run("after half-close", func(t *testing.T) {
		// A reset after one direction ended cleanly is still an abort.
		j := startJoin(t, 0)
		j.client.CloseWrite()
		if rest, err := io.ReadAll(j.far); err != nil || len(rest) != 0 {
			t.Fatalf("far: %q, %v; want a clean EOF", rest, err)
		}
		j.far.CancelWrite(44)
		wantStreamError(t, "Join", j.wait(t).Err, 44)
		_, err := j.client.Read(make([]byte, 1))
		wantReset(t, "client Read", err)
	})
}

func TestJoinIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	t.Run("silent", func(t *testing.T) {
		j := startJoin(t, idle)
		res := j.wait(t)
		if !errors.Is(res.Err, quicutil.ErrIdle) {
			t.Fatalf("Join = %+v, want ErrIdle", res)
		}
		_, err := j.client.Read(make([]byte, 1))
		wantReset(t, "client Read", err)
		_, err = j.far.Read(make([]byte, 1))
		wantStreamError(t, "far Read", err, quicutil.StreamCodeIdleTimeout)
	})
	t.Run("one way traffic", func(t *testing.T) {
		// Bytes moving one way keep the other direction from timing out.
		const tick, ticks = 20 * time.Millisecond, 45 // 3 idle timeouts
		j := startJoin(t, idle)
		tk := time.NewTicker(tick)
		defer tk.Stop()
		for i := range ticks {
			<-tk.C
			if j.returned() {
				t.Fatalf("Join returned %+v after %d bytes, while bytes were moving", j.res, i)
			}
			if _, err := j.client.Write([]byte("t")); err != nil {
				t.Fatal(err)
			}
			readN(t, j.far, 1)
		}
		if res := j.wait(t); !errors.Is(res.Err, quicutil.ErrIdle) || res.AToB != ticks {
			t.Fatalf("Join = %+v, want ErrIdle after %d bytes", res, ticks)
		}
	})
}

// TestJoinNotHalfClosable: a connection without CloseWrite cannot pass an
// EOF on; Join still ends when the peer closes.
func TestJoinNotHalfClosable(t *testing.T) {
	a1, a2 := net.Pipe()
	b1, b2 := net.Pipe()
	done := make(chan quicutil.JoinResult, 1)
	go func() { done <- quicutil.Join(a1, b1, 0) }()
	go func() {
		a2.Write([]byte("hello"))
		a2.Close()
	}()
	if got := readN(t, b2, 5); got != "hello" {
		t.Fatalf("read %q, want %q", got, "hello")
	}
	b2.Close()
	if res := recv(t, "Join", done); res.AToB != 5 || res.Err != nil {
		t.Fatalf("Join = %+v, want AToB 5, Err nil", res)
	}
}

// TestJoinEndWrite: a proxy ending a spliced stream with EndWrite gives
// the far side a clean EOF, drops what the client still sends instead of
// resetting, and lets the other direction finish.
func TestJoinEndWrite(t *testing.T) {
	j := startJoin(t, 0)
	if err := j.conn.EndWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(j.far); err != nil || len(rest) != 0 {
		t.Fatalf("far after EndWrite: %q, %v; want a clean EOF", rest, err)
	}
	if _, err := j.client.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if _, err := j.far.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, j.client, 5); got != "reply" {
		t.Fatalf("client read %q, want %q", got, "reply")
	}
	j.far.Close()
	if rest, err := io.ReadAll(j.client); err != nil || len(rest) != 0 {
		t.Fatalf("client after the far side's FIN: %q, %v; want a clean EOF", rest, err)
	}
	j.client.CloseWrite()
	if res := j.wait(t); res.Err != nil {
		t.Fatalf("Join = %+v; want no error", res)
	}
}
