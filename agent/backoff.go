package agent

import (
	"math/rand/v2"
	"time"
)

// Backoff paces reconnection: full jitter over an exponentially growing
// ceiling (docs/limits.md).
type Backoff struct {
	Min time.Duration // first ceiling; if zero, 250ms
	Max time.Duration // cap of the ceiling; if zero, 30s
}

func (b Backoff) withDefaults() Backoff {
	if b.Min <= 0 {
		b.Min = 250 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 30 * time.Second
	}
	if b.Max < b.Min {
		b.Max = b.Min
	}
	return b
}

// Ceiling is the longest wait before attempt n (0-based): Min·2ⁿ, capped at Max.
func (b Backoff) Ceiling(n int) time.Duration {
	d := b.Min
	for i := 0; i < n && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Delay draws the wait before attempt n from [Ceiling(n)/2, Ceiling(n)]:
// jitter spreads a herd of reconnecting agents while keeping a floor so
// that a failing edge is not hammered.
func (b Backoff) Delay(n int, r *rand.Rand) time.Duration {
	c := b.Ceiling(n)
	half := c / 2
	var j int64
	if r != nil {
		j = r.Int64N(int64(c-half) + 1)
	} else {
		j = rand.Int64N(int64(c-half) + 1)
	}
	return half + time.Duration(j)
}
