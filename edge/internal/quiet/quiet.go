// Package quiet logs what anyone who can reach a port can cause (garbage
// packets, failed handshakes) at most once per interval: a flood must fill
// neither the disk nor the alerts. It imports no other package of ours.
package quiet

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Every is how often a Log logs at most.
const Every = 10 * time.Second

// Log logs one kind of line at most once per Every: the first at once,
// then the next one due with how many were left out in between. The
// counters in the metrics say how many there were; the log says what.
// Make it with New.
type Log struct {
	log   *slog.Logger
	level slog.Level
	msg   string

	mu   sync.Mutex // guards the fields below
	next time.Time  // when the next line may be logged
	left int        // lines left out since the last one logged
}

// New returns a Log of msg at level to log.
func New(log *slog.Logger, level slog.Level, msg string) *Log {
	return &Log{log: log, level: level, msg: msg}
}

// Log logs msg with args, unless a line was logged less than Every
// ago.
func (q *Log) Log(args ...any) {
	now := time.Now()
	q.mu.Lock()
	if now.Before(q.next) {
		q.left++
		q.mu.Unlock()
		return
	}
	left := q.left
	q.left, q.next = 0, now.Add(Every)
	q.mu.Unlock()
	if left > 0 {
		args = append(args, "like_it_left_out", left, "left_out_for", Every.String())
	}
	q.log.Log(context.Background(), q.level, q.msg, args...)
}
