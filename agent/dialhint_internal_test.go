package agent

import (
	"testing"
	"time"
)

// The same error is logged at once, then after 1 s, 2 s, 4 s ... and at
// most every minute; a new error is logged at once and starts again at 1 s.
func TestFailLogInterval(t *testing.T) {
	var f failLog
	start := time.Unix(1000, 0)
	var logged []time.Duration // offsets from start of the rounds logged
	// A failed round every 250 ms for 10 minutes.
	for at := time.Duration(0); at <= 10*time.Minute; at += 250 * time.Millisecond {
		if f.failed("timeout", start.Add(at)) {
			logged = append(logged, at)
		}
	}
	want := []time.Duration{0, 1 * time.Second, 3 * time.Second, 7 * time.Second, 15 * time.Second, 31 * time.Second,
		63 * time.Second, 123 * time.Second, 183 * time.Second}
	for i, w := range want {
		if i >= len(logged) || logged[i] != w {
			t.Fatalf("logged at %v, want it to start %v", logged, want)
		}
	}
	for i := len(want); i < len(logged); i++ {
		if gap := logged[i] - logged[i-1]; gap != time.Minute {
			t.Fatalf("logged at %v: gap %s after the interval reached a minute, want 1m", logged, gap)
		}
	}
	if f.rounds != 2401 {
		t.Errorf("rounds = %d, want 2401", f.rounds)
	}
	now := start.Add(10*time.Minute + time.Second)
	if !f.failed("refused", now) {
		t.Fatal("a new error was not logged at once")
	}
	if f.failed("refused", now.Add(999*time.Millisecond)) || !f.failed("refused", now.Add(time.Second)) {
		t.Fatal("after a new error, the interval did not start again at 1s")
	}
	f.reset()
	if !f.failed("refused", now.Add(1500*time.Millisecond)) || f.rounds != 1 {
		t.Fatalf("after reset: not logged at once, or rounds %d, want 1", f.rounds)
	}
}
