package cluster

import (
	"testing"
	"time"
)

// links returns what a round sees when the sessions of agents are live,
// each session started at the time given.
func links(sessions map[uint64]string, started map[uint64]time.Time) agentLinks {
	l := agentLinks{live: make(map[uint64]bool), newest: make(map[string]time.Time)}
	for id, agent := range sessions {
		l.live[id] = true
		if started[id].After(l.newest[agent]) {
			l.newest[agent] = started[id]
		}
	}
	return l
}

func TestMoveMemoryHoldsAgentsThatComeBack(t *testing.T) {
	m := newMoveMemory(time.Minute)
	t0 := time.Unix(1_000_000, 0)
	now := t0
	session := uint64(1)
	started := map[uint64]time.Time{1: t0.Add(-time.Hour)}
	// "a" is asked, comes back (a new session 20 s later), its old link
	// retires; again and again: each hold doubles, up to an hour.
	wantHolds := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60}
	for i, want := range wantHolds {
		if got := m.state("a", now); got != moveFree {
			t.Fatalf("move %d: state %d before the ask, want free", i, got)
		}
		m.asked("a", session, now)
		if got := m.state("a", now); got != movePending {
			t.Fatalf("move %d: state %d after the ask, want pending", i, got)
		}
		back := session + 1
		started[back] = now.Add(20 * time.Second)
		now = now.Add(30 * time.Second)
		// Both links are here: not judged yet.
		if f, _ := m.judge(links(map[uint64]string{session: "a", back: "a"}, started), now); f != 0 {
			t.Fatalf("move %d judged while the old link is here", i)
		}
		f, hold := m.judge(links(map[uint64]string{back: "a"}, started), now)
		if f != 1 || hold != want*time.Minute {
			t.Fatalf("move %d: futile %d, hold %s; want 1, %s", i, f, hold, want*time.Minute)
		}
		if got := m.state("a", now.Add(hold-time.Second)); got != moveHeld {
			t.Fatalf("move %d: state %d within the hold, want held", i, got)
		}
		session = back
		now = now.Add(hold)
	}

	// A move that takes forgets the agent: the next hold starts at base.
	m.asked("a", session, now)
	if f, _ := m.judge(links(nil, nil), now.Add(time.Second)); f != 0 || m.len() != 0 {
		t.Fatalf("a move that took: futile %d, %d agents remembered; want 0, 0", f, m.len())
	}
}

func TestMoveMemoryForgets(t *testing.T) {
	m := newMoveMemory(time.Minute)
	t0 := time.Unix(1_000_000, 0)
	here := map[uint64]string{2: "a", 12: "b"}
	started := map[uint64]time.Time{2: t0.Add(time.Second), 12: t0.Add(time.Second)}
	m.asked("a", 1, t0)
	m.asked("b", 11, t0)
	m.asked("", 21, t0) // an agent without an ID: not tracked
	if m.len() != 2 {
		t.Fatalf("%d agents remembered, want 2", m.len())
	}
	if f, _ := m.judge(links(here, started), t0.Add(2*time.Second)); f != 2 {
		t.Fatalf("futile %d, want 2", f)
	}
	// "b" leaves this node: forgotten once its hold is over.
	delete(here, 12)
	if m.judge(links(here, started), t0.Add(59*time.Second)); m.len() != 2 {
		t.Fatalf("%d agents remembered within the hold, want 2", m.len())
	}
	if m.judge(links(here, started), t0.Add(63*time.Second)); m.len() != 1 || m.state("b", t0.Add(63*time.Second)) != moveFree {
		t.Fatalf("%d agents remembered after b's hold, want 1 (a)", m.len())
	}
	// "a" stays but is never asked again: forgotten max after its hold.
	if m.judge(links(here, started), t0.Add(time.Hour)); m.len() != 1 {
		t.Fatalf("%d agents remembered, want 1", m.len())
	}
	if m.judge(links(here, started), t0.Add(62*time.Minute)); m.len() != 0 {
		t.Fatalf("%d agents remembered after a quiet hour, want 0", m.len())
	}
}

// An agent that connects again to this node long before the ask (its
// other link, say) does not make the move futile: only a link that came
// after the ask does.
func TestMoveMemoryOlderLinkIsNotAReturn(t *testing.T) {
	m := newMoveMemory(time.Minute)
	t0 := time.Unix(1_000_000, 0)
	m.asked("a", 1, t0)
	started := map[uint64]time.Time{2: t0.Add(-time.Minute)}
	if f, _ := m.judge(links(map[uint64]string{2: "a"}, started), t0.Add(time.Second)); f != 0 {
		t.Fatalf("futile %d, want 0", f)
	}
}
