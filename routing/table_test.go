package routing_test

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pico-edge/pico/routing"
)

// target is a routing.Target with a settable load.
type target struct {
	name string
	load atomic.Int64
}

func (t *target) Load() int64    { return t.load.Load() }
func (t *target) String() string { return t.name }

func newTarget(name string, load int64) *target {
	t := &target{name: name}
	t.load.Store(load)
	return t
}

func mustAdd(t testing.TB, tb *routing.Table, id routing.EndpointID, proto string, tg routing.Target) {
	t.Helper()
	if err := tb.Add(id, proto, tg); err != nil {
		t.Fatalf("Add(%q, %q, %v): %v", id, proto, tg, err)
	}
}

// wantRoute checks Lookup(id).
func wantRoute(t testing.TB, tb *routing.Table, id routing.EndpointID, proto string, targets ...routing.Target) {
	t.Helper()
	p, got, err := tb.Lookup(id)
	if err != nil || p != proto || !slices.Equal(got, targets) {
		t.Fatalf("Lookup(%q) = %q, %v, %v; want %q, %v, nil", id, p, got, err, proto, targets)
	}
}

func wantNoRoute(t testing.TB, tb *routing.Table, id routing.EndpointID) {
	t.Helper()
	if p, got, err := tb.Lookup(id); !errors.Is(err, routing.ErrNoRoute) || p != "" || got != nil {
		t.Fatalf("Lookup(%q) = %q, %v, %v; want ErrNoRoute", id, p, got, err)
	}
	if got, err := tb.Pick(id, nil); !errors.Is(err, routing.ErrNoRoute) || got != nil {
		t.Fatalf("Pick(%q) = %v, %v; want ErrNoRoute", id, got, err)
	}
}

func TestTableAddLookup(t *testing.T) {
	tb := routing.NewTable()
	t1, t2, t3 := newTarget("t1", 0), newTarget("t2", 0), newTarget("t3", 0)
	wantNoRoute(t, tb, "web")
	if n, eps := tb.Len(), tb.Endpoints(); n != 0 || len(eps) != 0 {
		t.Fatalf("empty table: Len() = %d, Endpoints() = %v; want 0, none", n, eps)
	}

	mustAdd(t, tb, "web", "http", t1)
	wantRoute(t, tb, "web", "http", t1)
	mustAdd(t, tb, "web", "http", t2)
	wantRoute(t, tb, "web", "http", t1, t2)
	mustAdd(t, tb, "web", "http", t1) // twice: a no-op
	wantRoute(t, tb, "web", "http", t1, t2)

	err := tb.Add("web", "tcp", t3)
	if !errors.Is(err, routing.ErrConflict) {
		t.Fatalf("Add with a second protocol = %v, want ErrConflict", err)
	}
	if err := tb.Add("web", "tcp", t1); !errors.Is(err, routing.ErrConflict) {
		t.Fatalf("Add of a present target with a second protocol = %v, want ErrConflict", err)
	}
	wantRoute(t, tb, "web", "http", t1, t2)

	mustAdd(t, tb, "db", "tcp", t1)
	mustAdd(t, tb, "api", "http", t3)
	if n := tb.Len(); n != 3 {
		t.Fatalf("Len() = %d, want 3", n)
	}
	want := []routing.EndpointInfo{
		{ID: "api", Protocol: "http", Targets: []routing.Target{t3}},
		{ID: "db", Protocol: "tcp", Targets: []routing.Target{t1}},
		{ID: "web", Protocol: "http", Targets: []routing.Target{t1, t2}},
	}
	got := tb.Endpoints()
	if !slices.EqualFunc(got, want, func(a, b routing.EndpointInfo) bool {
		return a.ID == b.ID && a.Protocol == b.Protocol && slices.Equal(a.Targets, b.Targets)
	}) {
		t.Fatalf("Endpoints() = %v, want %v (sorted by ID)", got, want)
	}
}

func TestTableRemove(t *testing.T) {
	tb := routing.NewTable()
	t1, t2 := newTarget("t1", 0), newTarget("t2", 0)
	mustAdd(t, tb, "web", "http", t1)
	mustAdd(t, tb, "web", "http", t2)
	mustAdd(t, tb, "db", "tcp", t1)

	tests := []struct {
		id   routing.EndpointID
		tg   routing.Target
		want bool
	}{
		{"web", t1, true},
		{"web", t1, false}, // already gone
		{"nope", t1, false},
		{"db", t2, false}, // t2 never served db
	}
	for _, tt := range tests {
		if got := tb.Remove(tt.id, tt.tg); got != tt.want {
			t.Fatalf("Remove(%q, %v) = %t, want %t", tt.id, tt.tg, got, tt.want)
		}
	}
	wantRoute(t, tb, "web", "http", t2)
	wantRoute(t, tb, "db", "tcp", t1)

	if !tb.Remove("web", t2) {
		t.Fatal("Remove of the last target = false, want true")
	}
	wantNoRoute(t, tb, "web")
	if n := tb.Len(); n != 1 {
		t.Fatalf("Len() = %d, want 1", n)
	}
	// With its last target gone, the endpoint may come back with another protocol.
	mustAdd(t, tb, "web", "tcp", t1)
	wantRoute(t, tb, "web", "tcp", t1)
}

func TestTableRemoveAll(t *testing.T) {
	tb := routing.NewTable()
	t1, t2 := newTarget("t1", 0), newTarget("t2", 0)
	for _, id := range []routing.EndpointID{"a", "b", "c"} {
		mustAdd(t, tb, id, "http", t1)
	}
	mustAdd(t, tb, "b", "http", t2)
	mustAdd(t, tb, "d", "http", t2)

	tb.RemoveAll([]routing.EndpointID{"a", "b", "c", "d", "unknown"}, t1)
	wantNoRoute(t, tb, "a")
	wantNoRoute(t, tb, "c")
	wantRoute(t, tb, "b", "http", t2)
	wantRoute(t, tb, "d", "http", t2)
	if n := tb.Len(); n != 2 {
		t.Fatalf("Len() = %d, want 2", n)
	}
	tb.RemoveAll(nil, t2)
	if n := tb.Len(); n != 2 {
		t.Fatalf("Len() after RemoveAll(nil) = %d, want 2", n)
	}
}

// TestTableSnapshots: slices from Lookup and Endpoints do not change when
// the table does (copy on write), so callers may use them unlocked.
func TestTableSnapshots(t *testing.T) {
	tb := routing.NewTable()
	t1, t2, t3 := newTarget("t1", 0), newTarget("t2", 0), newTarget("t3", 0)
	mustAdd(t, tb, "web", "http", t1)
	mustAdd(t, tb, "web", "http", t2)
	_, before, _ := tb.Lookup("web")
	eps := tb.Endpoints()
	mustAdd(t, tb, "web", "http", t3)
	tb.Remove("web", t1)
	if !slices.Equal(before, []routing.Target{t1, t2}) {
		t.Fatalf("a slice from Lookup changed to %v, want [t1 t2]", before)
	}
	if !slices.Equal(eps[0].Targets, []routing.Target{t1, t2}) {
		t.Fatalf("a slice from Endpoints changed to %v, want [t1 t2]", eps[0].Targets)
	}
	wantRoute(t, tb, "web", "http", t2, t3)
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestTableChanged(t *testing.T) {
	tb := routing.NewTable()
	t1, t2 := newTarget("t1", 0), newTarget("t2", 0)
	steps := []struct {
		name    string
		do      func()
		changed bool
	}{
		{"nothing", func() {}, false},
		{"add new endpoint", func() { tb.Add("web", "http", t1) }, true},
		{"add second target", func() { tb.Add("web", "http", t2) }, true},
		{"add twice", func() { tb.Add("web", "http", t1) }, false},
		{"add conflicting", func() { tb.Add("web", "tcp", t1) }, false},
		{"remove absent target", func() { tb.Remove("web", newTarget("t3", 0)) }, false},
		{"remove unknown endpoint", func() { tb.Remove("nope", t1) }, false},
		{"remove all of nothing", func() { tb.RemoveAll([]routing.EndpointID{"nope"}, t1) }, false},
		{"read", func() { tb.Lookup("web"); tb.Pick("web", nil); tb.Endpoints(); tb.Len() }, false},
		{"remove", func() { tb.Remove("web", t1) }, true},
		{"add other endpoint", func() { tb.Add("db", "tcp", t1) }, true},
		{"remove all", func() { tb.RemoveAll([]routing.EndpointID{"web", "db"}, t2) }, true},
		{"remove last", func() { tb.Remove("db", t1) }, true},
	}
	for _, s := range steps {
		ch := tb.Changed()
		if closed(ch) {
			t.Fatalf("%s: Changed() returned a closed channel", s.name)
		}
		s.do()
		if got := closed(ch); got != s.changed {
			t.Fatalf("%s: channel closed = %t, want %t", s.name, got, s.changed)
		}
		if s.changed && closed(tb.Changed()) {
			t.Fatalf("%s: the next Changed() channel is closed already", s.name)
		}
	}
}

func TestTablePickSkip(t *testing.T) {
	tb := routing.NewTable()
	t1, t2, t3 := newTarget("t1", 0), newTarget("t2", 0), newTarget("t3", 0)
	mustAdd(t, tb, "one", "http", t1)
	if got, err := tb.Pick("one", nil); err != nil || got != t1 {
		t.Fatalf("Pick of a single target = %v, %v; want t1", got, err)
	}
	skipAll := func(routing.Target) bool { return true }
	if got, err := tb.Pick("one", skipAll); !errors.Is(err, routing.ErrNoRoute) {
		t.Fatalf("Pick with every target skipped = %v, %v; want ErrNoRoute", got, err)
	}

	for _, tg := range []*target{t1, t2, t3} {
		mustAdd(t, tb, "web", "http", tg)
	}
	t1.load.Store(-5) // the best target, but it failed this request already
	skip := func(tg routing.Target) bool { return tg == t1 }
	seen := map[routing.Target]int{}
	for range 1000 {
		got, err := tb.Pick("web", skip)
		if err != nil {
			t.Fatal(err)
		}
		seen[got]++
	}
	if seen[t1] != 0 || seen[t2] == 0 || seen[t3] == 0 {
		t.Fatalf("picks with t1 skipped: %v; want t2 and t3 only", seen)
	}
	if got, err := tb.Pick("web", func(tg routing.Target) bool { return tg != t3 }); err != nil || got != t3 {
		t.Fatalf("Pick with all but t3 skipped = %v, %v; want t3", got, err)
	}
}

// picks counts the targets Pick returns for id over n picks.
func picks(t testing.TB, tb *routing.Table, id routing.EndpointID, n int) map[*target]int {
	t.Helper()
	seen := map[*target]int{}
	for range n {
		got, err := tb.Pick(id, nil)
		if err != nil {
			t.Fatal(err)
		}
		seen[got.(*target)]++
	}
	return seen
}

// TestPickTwoChoices: Pick draws two distinct targets and takes the one
// with less load, so the most loaded target is never picked when it is
// alone in being so.
func TestPickTwoChoices(t *testing.T) {
	tests := map[string]struct {
		loads []int64
		never []int // indexes never picked
		some  []int // indexes picked at least once
	}{
		"two":           {loads: []int64{10, 0}, never: []int{0}, some: []int{1}},
		"three":         {loads: []int64{5, 10, 0}, never: []int{1}, some: []int{0, 2}},
		"negative load": {loads: []int64{-1, 0}, never: []int{1}, some: []int{0}},
		"equal four":    {loads: []int64{3, 3, 3, 3}, some: []int{0, 1, 2, 3}},
		// One target of 64 is loaded: the other 63 share the picks.
		"one busy of 64": {loads: append(make([]int64, 63), 1), never: []int{63}, some: []int{0, 31, 62}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			tb := routing.NewTable()
			var tgs []*target
			for i, l := range tt.loads {
				tg := newTarget(fmt.Sprint("t", i), l)
				tgs = append(tgs, tg)
				mustAdd(t, tb, "web", "http", tg)
			}
			// P(a given target of k is never one of the two draws in 1000 picks)
			// = ((k-2)/k)^1000: about 1e-14 for k = 64. With 2 targets it is 0.
			seen := picks(t, tb, "web", 1000)
			for _, i := range tt.never {
				if seen[tgs[i]] != 0 {
					t.Errorf("%v (load %d) picked %d times, want never", tgs[i], tt.loads[i], seen[tgs[i]])
				}
			}
			for _, i := range tt.some {
				if seen[tgs[i]] == 0 {
					t.Errorf("%v (load %d) never picked in 1000 picks: %v", tgs[i], tt.loads[i], seen)
				}
			}
		})
	}
}

// TestPickReadsLoadNow: Pick reads each target's load when it picks.
func TestPickReadsLoadNow(t *testing.T) {
	tb := routing.NewTable()
	a, b := newTarget("a", 0), newTarget("b", 10)
	mustAdd(t, tb, "web", "http", a)
	mustAdd(t, tb, "web", "http", b)
	if got, _ := tb.Pick("web", nil); got != a {
		t.Fatalf("Pick = %v, want a (load 0 < 10)", got)
	}
	a.load.Store(20)
	if got, _ := tb.Pick("web", nil); got != b {
		t.Fatalf("Pick = %v, want b (load 10 < 20)", got)
	}
}

// TestTableConcurrent mutates and reads one table from many goroutines.
// Run with -race.
func TestTableConcurrent(t *testing.T) {
	tb := routing.NewTable()
	const workers, rounds = 4, 300
	shared := []routing.EndpointID{"web", "api"}
	anchor := newTarget("anchor", 1000) // keeps "web" routable throughout
	mustAdd(t, tb, "web", "http", anchor)

	var wg sync.WaitGroup
	errs := make(chan error, 4*workers)
	for w := range workers {
		own := routing.EndpointID(fmt.Sprint("own-", w))
		tg := newTarget(fmt.Sprint("w", w), int64(w))
		wg.Go(func() { // writer: shared and own endpoints
			for i := range rounds {
				tg.load.Store(int64(i % 7))
				for _, id := range append(shared, own) {
					if err := tb.Add(id, "http", tg); err != nil {
						errs <- fmt.Errorf("Add(%q): %w", id, err)
						return
					}
				}
				tb.Remove("web", tg)
				tb.RemoveAll(append(shared, own), tg)
			}
		})
		wg.Go(func() { // picker
			for range rounds {
				got, err := tb.Pick("web", nil)
				if err != nil || got == nil {
					errs <- fmt.Errorf("Pick(web) = %v, %v while web always had a target", got, err)
					return
				}
				if _, err := tb.Pick("api", func(x routing.Target) bool { return x == tg }); err != nil && !errors.Is(err, routing.ErrNoRoute) {
					errs <- fmt.Errorf("Pick(api): %v", err)
					return
				}
			}
		})
		wg.Go(func() { // reader
			for range rounds {
				ch := tb.Changed()
				for _, e := range tb.Endpoints() {
					if len(e.Targets) == 0 {
						errs <- fmt.Errorf("Endpoints() lists %q with no target", e.ID)
						return
					}
				}
				if _, tgs, err := tb.Lookup("web"); err != nil || !slices.Contains(tgs, routing.Target(anchor)) {
					errs <- fmt.Errorf("Lookup(web) = %v, %v; want the anchor in it", tgs, err)
					return
				}
				_ = tb.Len()
				_ = closed(ch)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	wantRoute(t, tb, "web", "http", anchor)
	if n := tb.Len(); n != 1 {
		t.Fatalf("Len() = %d after every worker removed its targets, want 1: %v", n, tb.Endpoints())
	}
}

func BenchmarkPick(b *testing.B) {
	for _, n := range []int{1, 4, 64} {
		b.Run(fmt.Sprint("targets=", n), func(b *testing.B) {
			tb := routing.NewTable()
			for i := range n {
				if err := tb.Add("web", "http", newTarget(fmt.Sprint(i), int64(i%5))); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tb.Pick("web", nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
