package edge_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// Flow control with slow consumers (issue 7): a client that stops reading
// a large answer stalls its own QUIC stream only. The other streams of the
// same agent link (small requests, and a second bulk transfer at full
// speed) must complete. There is no timing assertion: a stall shows as the
// fast transfers making no progress for stallAfter (the race detector
// slows them several times, but they keep moving), and slowTestCeiling
// only bounds a test that goes wrong.
const (
	slowBody = 64 << 20 // what each slow consumer asks for
	// The full-speed transfer: more than the connection credit 64 stalled
	// streams leave (176 - 128 MiB), so the link must grant more while
	// they stay stalled.
	fastBody        = 64 << 20
	stallAfter      = 20 * time.Second
	slowTestCeiling = 5 * time.Minute
)

// slowCounts are the numbers of slow consumers the tests run with. 64
// stalled streams that each pin a full auto-tuned stream window need
// more connection credit than the link has unless the windows are sized
// for them (quicutil/config.go).
var slowCounts = []int{1, 64}

// patternWriter writes n bytes of a pattern to w in 32 KiB writes,
// counting them in written.
func patternWriter(w io.Writer, n int64, written *atomic.Int64) error {
	buf := make([]byte, 32<<10)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for n > 0 {
		m, err := w.Write(buf[:min(int64(len(buf)), n)])
		written.Add(int64(m))
		n -= int64(m)
		if err != nil {
			return err
		}
	}
	return nil
}

// bulkUpstream answers GET /big?n=BYTES with BYTES of the pattern, and
// anything else with "ok". written counts the bytes of the big answers.
func bulkUpstream(written *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/big" {
			io.WriteString(w, "ok")
			return
		}
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		patternWriter(w, n, written)
	})
}

// slowReader reads 1 KiB a second from r until quit, through a small
// socket buffer when r is a TCP connection, so that its sender stalls
// soon.
func slowReader(r io.Reader, quit <-chan struct{}) {
	buf := make([]byte, 1<<10)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if _, err := io.ReadFull(r, buf); err != nil {
			return
		}
		select {
		case <-quit:
			return
		case <-tick.C:
		}
	}
}

// waitStalled waits until written grows by less than 1 MiB in 500 ms: the
// slow consumers' streams are full and their senders blocked.
func waitStalled(t *testing.T, written *atomic.Int64) {
	t.Helper()
	deadline := time.Now().Add(slowTestCeiling)
	last := written.Load()
	for time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		now := written.Load()
		if now-last < 1<<20 {
			t.Logf("slow consumers stalled with %.1f MiB sent by the upstream", float64(now)/(1<<20))
			return
		}
		last = now
	}
	t.Fatalf("the upstream still sends after %s (%d bytes): the slow consumers do not stall", slowTestCeiling, last)
}

// countPattern reads r to the end and checks it is the pattern of
// patternWriter, returning the byte count. Each read touches w.
func countPattern(r io.Reader, w *watchdog) (int64, error) {
	want := make([]byte, 64<<10)
	for i := range want {
		want[i] = byte(i * 7)
	}
	buf := make([]byte, 32<<10)
	var n int64
	for {
		m, err := r.Read(buf)
		if m > 0 {
			w.touch()
			off := int(n % (32 << 10))
			if !bytes.Equal(buf[:m], want[off:off+m]) {
				return n, fmt.Errorf("bytes %d to %d differ from the pattern", n, n+int64(m))
			}
			n += int64(m)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// watchdog cancels its context when nobody touched it for stallAfter: the
// fast transfers stalled.
type watchdog struct {
	last   atomic.Int64 // UnixNano of the last touch
	maxGap atomic.Int64 // the longest time between touches, in ns
}

func (w *watchdog) touch() {
	now := time.Now().UnixNano()
	gap := now - w.last.Swap(now)
	for {
		m := w.maxGap.Load()
		if gap <= m || w.maxGap.CompareAndSwap(m, gap) {
			return
		}
	}
}

// longestGap is the longest time between touches so far.
func (w *watchdog) longestGap() time.Duration { return time.Duration(w.maxGap.Load()) }

// start returns a context that ends with errStalled after stallAfter
// without a touch, or at slowTestCeiling; stop ends its goroutine.
func (w *watchdog) start(parent context.Context) (ctx context.Context, stop func()) {
	w.last.Store(time.Now().UnixNano())
	ctx, cancel := context.WithCancelCause(parent)
	ctx, cancelCeiling := context.WithTimeout(ctx, slowTestCeiling)
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if idle := time.Since(time.Unix(0, w.last.Load())); idle > stallAfter {
					cancel(fmt.Errorf("%w: no progress for %s", errStalled, idle.Round(time.Second)))
					return
				}
			}
		}
	}()
	return ctx, func() {
		close(done)
		cancelCeiling()
		cancel(nil)
	}
}

var errStalled = errors.New("stalled")

// stallErr adds the reason ctx ended, if it did, to err.
func stallErr(ctx context.Context, err error) error {
	if err != nil && context.Cause(ctx) != nil && !strings.Contains(err.Error(), context.Cause(ctx).Error()) {
		return fmt.Errorf("%w (%v)", err, context.Cause(ctx))
	}
	return err
}

// TestSlowConsumerHTTP: slow HTTP/1.1 clients download 64 MiB each from an
// endpoint and read 1 KiB a second; meanwhile, on the same agent link,
// small requests to another endpoint and a full-speed 64 MiB download
// must complete. Via relay, the clients use node 1 of a cluster and the
// agent is linked to node 0 only: the relay connection between the nodes
// carries the stalled streams too.
func TestSlowConsumerHTTP(t *testing.T) {
	for _, relay := range []bool{false, true} {
		for _, slow := range slowCounts {
			name := fmt.Sprintf("%d slow", slow)
			if relay {
				name += " via relay"
			}
			t.Run(name, func(t *testing.T) { testSlowConsumerHTTP(t, slow, relay) })
		}
	}
}

func testSlowConsumerHTTP(t *testing.T, slow int, relay bool) {
	var written atomic.Int64
	up := edgetest.Upstream(t, bulkUpstream(&written))
	var n *edgetest.Node // the clients' front door
	var a *agent.Agent
	if relay {
		cl := edgetest.NewCluster(t, 2)
		n, a = cl.Nodes[1], cl.Nodes[0].NewAgent(t, singleLink)
	} else {
		n = edgetest.NewNode(t)
		a = n.NewAgent(t)
	}
	for _, id := range []string{"bulk", "small"} {
		if err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, up); err != nil {
			t.Fatalf("serve %s: %v", id, err)
		}
		if relay {
			n.WaitRemote(t, id, 1)
		} else {
			n.WaitRoute(t, id, 1)
		}
	}

	quit := make(chan struct{})
	var wg sync.WaitGroup
	proxy := strings.TrimPrefix(n.ProxyURL, "http://")
	for range slow {
		c, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).SetReadBuffer(4 << 10)
		fmt.Fprintf(c, "GET /big?n=%d HTTP/1.1\r\nHost: x\r\nX-Pico-Endpoint: bulk\r\n\r\n", slowBody)
		wg.Go(func() {
			defer c.Close()
			slowReader(c, quit)
		})
		t.Cleanup(func() { c.Close() })
	}
	defer wg.Wait()
	defer close(quit)
	waitStalled(t, &written)

	var wd watchdog
	ctx, stop := wd.start(t.Context())
	defer stop()
	c := edgetest.Client(t)
	// No client timeout: the watchdog's context bounds the wait
	// (slowTestCeiling), and what this test checks is that no byte or
	// answer waits long, not how fast 64 MiB go on a loaded machine.
	c.Timeout = 0
	errs := make(chan error, 2)
	go func() { // the full-speed download
		req := n.Request(t, "GET", "bulk", fmt.Sprintf("/big?n=%d", fastBody), nil).WithContext(ctx)
		resp, err := c.Do(req)
		if err != nil {
			errs <- fmt.Errorf("fast download: %w", stallErr(ctx, err))
			return
		}
		defer resp.Body.Close()
		got, err := countPattern(resp.Body, &wd)
		if err == nil && got != fastBody {
			err = fmt.Errorf("%d bytes, want %d", got, fastBody)
		}
		if err != nil {
			err = fmt.Errorf("fast download: %w", stallErr(ctx, err))
		}
		errs <- err
	}()
	go func() { // small requests, one after the other
		for i := range 20 {
			req := n.Request(t, "GET", "small", "/", nil).WithContext(ctx)
			resp, err := c.Do(req)
			if err != nil {
				errs <- fmt.Errorf("small request %d: %w", i, stallErr(ctx, err))
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(b) != "ok" {
				errs <- fmt.Errorf("small request %d: %q, %v", i, b, stallErr(ctx, err))
				return
			}
			wd.touch()
		}
		errs <- nil
	}()
	fastStart := time.Now()
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("with %d slow consumers on the link: %v", slow, err)
		}
	}
	t.Logf("the fast download and the small requests took %s (longest wait for a byte or an answer: %s)",
		time.Since(fastStart).Round(time.Millisecond), wd.longestGap().Round(time.Millisecond))
}

// TestSlowConsumerTCP is TestSlowConsumerHTTP for TCP forwards: slow
// readers dial a TCP endpoint through a forwarding agent and ask for 64
// MiB each; on the same forwarding agent's link, a full-speed 64 MiB
// connection and small exchanges must complete. The bytes cross two agent
// links (serving agent to edge, edge to forwarding agent) and both carry
// the stalled streams.
func TestSlowConsumerTCP(t *testing.T) {
	for _, slow := range slowCounts {
		t.Run(fmt.Sprintf("%d slow", slow), func(t *testing.T) {
			n := edgetest.NewNode(t)
			var written atomic.Int64
			up := tcpUpstream(t, &written)
			server := n.NewAgent(t)
			if err := server.ServeUpstream(t.Context(), "src", quicutil.KindTCP, up); err != nil {
				t.Fatalf("serve src: %v", err)
			}
			n.WaitRoute(t, "src", 1)
			fwd := n.NewAgent(t)

			quit := make(chan struct{})
			var wg sync.WaitGroup
			for range slow {
				c, err := fwd.Dial(t.Context(), "src")
				if err != nil {
					t.Fatalf("dial src: %v", err)
				}
				fmt.Fprintf(c, "%d\n", slowBody)
				wg.Go(func() {
					defer c.Close()
					slowReader(c, quit)
				})
				t.Cleanup(func() { c.Close() })
			}
			defer wg.Wait()
			defer close(quit)
			waitStalled(t, &written)

			var wd watchdog
			ctx, stop := wd.start(t.Context())
			defer stop()
			errs := make(chan error, 2)
			fetch := func(size int64) error {
				c, err := fwd.Dial(ctx, "src")
				if err != nil {
					return stallErr(ctx, err)
				}
				defer c.Close()
				unhook := context.AfterFunc(ctx, func() { c.Close() })
				defer unhook()
				fmt.Fprintf(c, "%d\n", size)
				got, err := countPattern(c, &wd)
				if err == nil && got != size {
					err = fmt.Errorf("%d bytes, want %d", got, size)
				}
				if ctx.Err() != nil {
					err = fmt.Errorf("%w after %d bytes", context.Cause(ctx), got)
				}
				return err
			}
			fastStart := time.Now()
			go func() {
				if err := fetch(fastBody); err != nil {
					errs <- fmt.Errorf("fast connection: %w", err)
					return
				}
				errs <- nil
			}()
			go func() {
				for i := range 20 {
					if err := fetch(100); err != nil {
						errs <- fmt.Errorf("small exchange %d: %w", i, err)
						return
					}
				}
				errs <- nil
			}()
			for range 2 {
				if err := <-errs; err != nil {
					t.Errorf("with %d slow readers on the link: %v", slow, err)
				}
			}
			t.Logf("the fast connection and the small exchanges took %s (longest wait for a byte or an answer: %s)",
				time.Since(fastStart).Round(time.Millisecond), wd.longestGap().Round(time.Millisecond))
		})
	}
}

// tcpUpstream accepts TCP connections on 127.0.0.1 that each read a line
// holding a byte count, write that many bytes of the pattern and close.
// It closes every connection and waits for them in cleanup.
func tcpUpstream(t *testing.T, written *atomic.Int64) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
				if err != nil {
					return
				}
				patternWriter(c, n, written)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}
