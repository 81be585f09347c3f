package edge

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// quietEvery is how often a quietLog logs at most.
const quietEvery = 10 * time.Second

// quietLog logs one kind of line at most once per quietEvery: the first
// at once, then the next one due with how many were left out in between.
// It is for what anyone who can reach a port can cause (garbage packets,
// failed handshakes): a flood must fill neither the disk nor the alerts.
// The counters in the metrics say how many there were; the log says what.
// The zero value is not ready: set log, level and msg.
type quietLog struct {
	log   *slog.Logger
	level slog.Level
	msg   string

	mu   sync.Mutex // guards the fields below
	next time.Time  // when the next line may be logged
	left int        // lines left out since the last one logged
}

func newQuietLog(log *slog.Logger, level slog.Level, msg string) *quietLog {
	return &quietLog{log: log, level: level, msg: msg}
}

// Log logs msg with args, unless a line was logged less than quietEvery
// ago.
func (q *quietLog) Log(args ...any) {
	now := time.Now()
	q.mu.Lock()
	if now.Before(q.next) {
		q.left++
		q.mu.Unlock()
		return
	}
	left := q.left
	q.left, q.next = 0, now.Add(quietEvery)
	q.mu.Unlock()
	if left > 0 {
		args = append(args, "like_it_left_out", left, "left_out_for", quietEvery.String())
	}
	q.log.Log(context.Background(), q.level, q.msg, args...)
}
