package inspect_test

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/agent/inspect"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// BenchmarkCapture measures small-request throughput through a real edge
// and agent, with capture on (endpoint "on", an agent with an Inspector)
// and off (endpoint "off", an agent without), in short alternating rounds
// of the same run (so that the load of other processes falls on both), and
// reports both rates and their ratio:
//
//	go test -run XXX -bench Capture -benchtime 1x ./agent/inspect
func BenchmarkCapture(b *testing.B) {
	in, err := inspect.New(inspect.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Close() })
	up := edgetest.Upstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	}))
	n := edgetest.NewNode(b)
	on := n.NewAgent(b, func(c *agent.Config) { c.Inspector = in; c.Logger = nil })
	off := n.NewAgent(b, func(c *agent.Config) { c.Logger = nil })
	if err := on.ServeUpstream(b.Context(), "on", quicutil.KindHTTP, up); err != nil {
		b.Fatal(err)
	}
	if err := off.ServeUpstream(b.Context(), "off", quicutil.KindHTTP, up); err != nil {
		b.Fatal(err)
	}
	c := edgetest.Client(b)
	const workers, round, rounds = 8, 150 * time.Millisecond, 20
	load := func(id string) (float64, error) {
		var count atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		stop := time.Now().Add(round)
		start := time.Now()
		for range workers {
			wg.Go(func() {
				for time.Now().Before(stop) {
					resp, err := c.Do(n.Request(b, "GET", id, "/small", nil))
					if err != nil {
						errs <- err
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						errs <- fmt.Errorf("status %d", resp.StatusCode)
						return
					}
					count.Add(1)
				}
			})
		}
		wg.Wait()
		close(errs)
		return float64(count.Load()) / time.Since(start).Seconds(), <-errs
	}
	// Warm up both paths (connections, pools).
	if _, err := load("on"); err != nil {
		b.Fatal(err)
	}
	if _, err := load("off"); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		var onRate, offRate float64
		for i := range rounds {
			first, second := "on", "off"
			if i%2 == 1 {
				first, second = second, first
			}
			for _, id := range []string{first, second} {
				r, err := load(id)
				if err != nil {
					b.Fatal(err)
				}
				if id == "on" {
					onRate += r / rounds
				} else {
					offRate += r / rounds
				}
			}
		}
		b.ReportMetric(onRate, "req/s-on")
		b.ReportMetric(offRate, "req/s-off")
		b.ReportMetric(100*onRate/offRate, "%-on/off")
	}
	st := in.Stats()
	b.Logf("inspector: %d kept (%d bytes), %d evicted, %d truncated, %d dropped", st.Exchanges, st.Bytes, st.Evicted, st.Truncated, st.Dropped)
}
