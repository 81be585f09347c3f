package agent

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := Backoff{}.withDefaults()
	ceilings := map[int]time.Duration{
		0: 250 * time.Millisecond, 1: 500 * time.Millisecond, 2: time.Second,
		7: 30 * time.Second, 100: 30 * time.Second,
	}
	for n, want := range ceilings {
		if got := b.Ceiling(n); got != want {
			t.Errorf("Ceiling(%d) = %s, want %s", n, got, want)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[time.Duration]bool{}
	for n := range 12 {
		for range 100 {
			d := b.Delay(n, r)
			if c := b.Ceiling(n); d < c/2 || d > c {
				t.Fatalf("Delay(%d) = %s, want within [%s, %s]", n, d, c/2, c)
			}
			seen[d] = true
		}
	}
	if len(seen) < 100 {
		t.Errorf("%d distinct delays in 1200 draws, want jitter", len(seen))
	}
}
