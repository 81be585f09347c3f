package routing

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"testing"
)

func sortedEps(eps []Announcement) []Announcement {
	out := slices.Clone(eps)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func TestStateRoundTrip(t *testing.T) {
	states := map[string]*State{
		"full": {Node: "edge-1", Epoch: 1<<63 + 5, Version: 7, Full: true, Links: 3, Endpoints: []Announcement{
			{ID: "foo", Proto: "http", Kinds: 0b110, Agents: 2}, {ID: "db-1", Proto: "tcp", Kinds: 0b100, Agents: 1},
			{ID: "secure", Proto: "tls", Kinds: 0b10000, Agents: 4}}},
		"delta": {Node: "n", Epoch: 9, Base: 3, Version: 4, Endpoints: []Announcement{
			{ID: "gone", Proto: "http", Agents: 0}}},
		"empty full": {Node: "n", Epoch: 1, Full: true, Endpoints: []Announcement{}},
	}
	for name, s := range states {
		t.Run(name, func(t *testing.T) {
			b := AppendState(nil, s)
			m, err := ParseMessage(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(m.State, s) {
				t.Fatalf("round trip: got %+v, want %+v", m.State, s)
			}
		})
	}
	m, err := ParseMessage(AppendSyncRequest(nil, "edge-2"))
	if err != nil || m.SyncWant != "edge-2" || m.State != nil {
		t.Fatalf("sync request: %+v %v", m, err)
	}
}

func TestParseMessageRejects(t *testing.T) {
	good := AppendState(nil, &State{Node: "n", Epoch: 1, Version: 1, Full: true,
		Endpoints: []Announcement{{ID: "foo", Proto: "http", Agents: 1}}})
	bad := map[string][]byte{
		"empty":          nil,
		"wrong magic":    append([]byte{'x'}, good[1:]...),
		"wrong format":   append([]byte{'p', 9}, good[2:]...),
		"unknown type":   {'p', 1, 7},
		"unknown flag":   append([]byte{'p', 1, 1, 0x80}, good[4:]...),
		"truncated":      good[:len(good)-1],
		"trailing":       append(slices.Clone(good), 0),
		"empty node":     AppendState(nil, &State{Epoch: 1, Full: true}),
		"long node":      AppendState(nil, &State{Node: string(bytes.Repeat([]byte("n"), MaxNodeNameLen+1)), Epoch: 1}),
		"bad id":         AppendState(nil, &State{Node: "n", Epoch: 1, Endpoints: []Announcement{{ID: "Foo", Proto: "http", Agents: 1}}}),
		"id dash":        AppendState(nil, &State{Node: "n", Epoch: 1, Endpoints: []Announcement{{ID: "-a", Proto: "http", Agents: 1}}}),
		"delta backward": AppendState(nil, &State{Node: "n", Epoch: 1, Base: 5, Version: 4}),
		"huge count":     {'p', 1, 1, 0, 1, 'n', 1, 0, 1, 0, 0xff, 0xff, 0xff, 0x7f},
		"bad proto":      {'p', 1, 1, 0, 1, 'n', 1, 0, 1, 0, 1, 1, 'a', 9, 0, 1},
		"empty sync":     AppendSyncRequest(nil, ""),
	}
	for name, b := range bad {
		t.Run(name, func(t *testing.T) {
			if m, err := ParseMessage(b); !errors.Is(err, ErrBadGossip) {
				t.Fatalf("ParseMessage = %+v, %v; want ErrBadGossip", m, err)
			}
		})
	}
}

func FuzzParseGossip(f *testing.F) {
	f.Add(AppendState(nil, &State{Node: "edge-1", Epoch: 3, Version: 2, Full: true, Links: 1,
		Endpoints: []Announcement{{ID: "foo", Proto: "http", Kinds: 2, Agents: 1}}}))
	f.Add(AppendState(nil, &State{Node: "e", Epoch: 3, Base: 1, Version: 2,
		Endpoints: []Announcement{{ID: "a", Proto: "tcp", Agents: 0}}}))
	f.Add(AppendSyncRequest(nil, "edge-2"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			return
		}
		var again []byte
		if m.State != nil {
			again = AppendState(nil, m.State)
		} else {
			again = AppendSyncRequest(nil, m.SyncWant)
		}
		m2, err := ParseMessage(again)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-encoding changed the message: %+v / %+v, %v", m, m2, err)
		}
		if m.State != nil {
			// Merging anything decodable must not panic.
			c := NewCluster(NewTable())
			c.Alive(m.State.Node, m.State.Epoch, &fakeTarget{name: "peer"})
			c.Apply(m.State)
		}
	})
}

func TestLocalDeltas(t *testing.T) {
	l := NewLocal("edge-1", 42)
	l.Set(Announcement{ID: "a", Proto: "http", Agents: 1})
	l.Set(Announcement{ID: "b", Proto: "tcp", Agents: 1})
	l.Set(Announcement{ID: "b", Proto: "tcp", Agents: 1}) // unchanged: no version
	if v := l.Version(); v != 2 {
		t.Fatalf("version %d after two changes, want 2", v)
	}
	v2 := l.Version()
	l.Set(Announcement{ID: "a", Proto: "http", Agents: 0}) // withdrawn
	l.Set(Announcement{ID: "c", Proto: "http", Agents: 3})
	l.Set(Announcement{ID: "never", Proto: "http", Agents: 0}) // unknown and withdrawn: nothing

	d := l.Delta(v2)
	if d.Full || d.Base != v2 || d.Version != 4 {
		t.Fatalf("delta header %+v", d)
	}
	want := []Announcement{{ID: "a", Proto: "http"}, {ID: "c", Proto: "http", Agents: 3}}
	if got := sortedEps(d.Endpoints); !reflect.DeepEqual(got, want) {
		t.Fatalf("delta endpoints %+v, want %+v", got, want)
	}
	full := l.Full()
	wantFull := []Announcement{{ID: "b", Proto: "tcp", Agents: 1}, {ID: "c", Proto: "http", Agents: 3}}
	if !full.Full || !reflect.DeepEqual(sortedEps(full.Endpoints), wantFull) {
		t.Fatalf("full %+v", full)
	}
	// Once every peer saw version 4, the tombstone goes; a peer still at
	// v2 then needs the full state.
	l.Forget(4)
	if d := l.Delta(v2); !d.Full {
		t.Fatalf("delta from before the horizon should be full: %+v", d)
	}
	if d := l.Delta(4); d.Full || len(d.Endpoints) != 0 {
		t.Fatalf("delta from the current version: %+v", d)
	}
	l.SetLinks(5)
	if d := l.Delta(4); d.Links != 5 || d.Version != 5 {
		t.Fatalf("links change: %+v", d)
	}
}

// routes returns the remote targets of each endpoint of tab, by name.
func routes(tab *Table) map[EndpointID][]string {
	out := make(map[EndpointID][]string)
	for _, e := range tab.Endpoints() {
		for _, tg := range e.Remote {
			out[e.ID] = append(out[e.ID], tg.(*fakeTarget).name)
		}
		slices.Sort(out[e.ID])
	}
	return out
}

func TestClusterMerge(t *testing.T) {
	tab := NewTable()
	c := NewCluster(tab)
	p1 := &fakeTarget{name: "p1"}
	l := NewLocal("edge-1", 100)
	l.Set(Announcement{ID: "foo", Proto: "http", Agents: 1})

	// State before membership: kept, not routed.
	if sync, err := c.Apply(l.Full()); sync || err != nil {
		t.Fatalf("apply full: %v %v", sync, err)
	}
	if r := routes(tab); len(r) != 0 {
		t.Fatalf("routed before alive: %v", r)
	}
	if sync := c.Alive("edge-1", 100, p1); sync {
		t.Fatal("alive with its state known asked for a sync")
	}
	if r := routes(tab); !reflect.DeepEqual(r, map[EndpointID][]string{"foo": {"p1"}}) {
		t.Fatalf("routes %v", r)
	}

	// A delta that follows on applies.
	v := l.Version()
	l.Set(Announcement{ID: "bar", Proto: "tcp", Agents: 2})
	l.Set(Announcement{ID: "foo", Proto: "http", Agents: 0})
	delta := l.Delta(v)
	if sync, _ := c.Apply(delta); sync {
		t.Fatal("delta asked for sync")
	}
	if r := routes(tab); !reflect.DeepEqual(r, map[EndpointID][]string{"bar": {"p1"}}) {
		t.Fatalf("routes after delta %v", r)
	}
	// Replaying an old message changes nothing.
	old := &State{Node: "edge-1", Epoch: 100, Version: 1, Full: true,
		Endpoints: []Announcement{{ID: "foo", Proto: "http", Agents: 1}}}
	c.Apply(old)
	c.Apply(delta)
	if r := routes(tab); !reflect.DeepEqual(r, map[EndpointID][]string{"bar": {"p1"}}) {
		t.Fatalf("routes after replay %v", r)
	}
	// A gap asks for the full state and changes nothing.
	v = l.Version()
	l.Set(Announcement{ID: "x", Proto: "http", Agents: 1})
	l.Set(Announcement{ID: "y", Proto: "http", Agents: 1})
	if sync, _ := c.Apply(l.Delta(v + 1)); !sync {
		t.Fatal("gap did not ask for sync")
	}
	if sync, _ := c.Apply(l.Full()); sync {
		t.Fatal("full state asked for sync")
	}
	if r := routes(tab); len(r) != 3 {
		t.Fatalf("routes after full %v", r)
	}

	// The node dies: everything goes, and its messages stay out.
	c.Gone("edge-1")
	if r := routes(tab); len(r) != 0 {
		t.Fatalf("routes after gone %v", r)
	}
	c.Apply(l.Full())
	c.Alive("edge-1", 99, p1) // an older incarnation's membership news
	if r := routes(tab); len(r) != 0 {
		t.Fatalf("a dead node's state came back: %v", r)
	}

	// It restarts with the same name: a new epoch; the old one's messages
	// are ignored even when they come late.
	l2 := NewLocal("edge-1", 200)
	l2.Set(Announcement{ID: "new", Proto: "http", Agents: 1})
	p1b := &fakeTarget{name: "p1b"}
	if sync := c.Alive("edge-1", 200, p1b); !sync {
		t.Fatal("a new incarnation did not ask for sync")
	}
	c.Apply(l2.Full())
	c.Apply(l.Full()) // epoch 100, late
	if r := routes(tab); !reflect.DeepEqual(r, map[EndpointID][]string{"new": {"p1b"}}) {
		t.Fatalf("routes after restart %v", r)
	}

	// A healed partition: the same incarnation is declared gone, then alive.
	c.Gone("edge-1")
	if sync := c.Alive("edge-1", 200, p1b); !sync {
		t.Fatal("back from a partition without asking for the state")
	}
	c.Apply(l2.Full())
	if r := routes(tab); !reflect.DeepEqual(r, map[EndpointID][]string{"new": {"p1b"}}) {
		t.Fatalf("routes after the partition healed %v", r)
	}
}

func TestClusterPickPrefersLocalAndKeepsProtocol(t *testing.T) {
	tab := NewTable()
	c := NewCluster(tab)
	peer := &fakeTarget{name: "peer"}
	c.Alive("edge-2", 1, peer)
	c.Apply(&State{Node: "edge-2", Epoch: 1, Version: 1, Full: true, Endpoints: []Announcement{
		{ID: "web", Proto: "http", Agents: 1}, {ID: "db", Proto: "tcp", Agents: 1}, {ID: "pass", Proto: "tls", Agents: 1}}})

	local := &fakeTarget{name: "local"}
	if err := tab.Add("web", "http", local); err != nil {
		t.Fatal(err)
	}
	// Another node serves db as tcp: an http agent here is refused.
	if err := tab.Add("db", "http", local); !errors.Is(err, ErrConflict) {
		t.Fatalf("Add across the cluster: %v, want ErrConflict", err)
	}
	// And pass as tls: a tcp agent here is refused too (the kinds differ).
	if err := tab.Add("pass", "tcp", local); !errors.Is(err, ErrConflict) {
		t.Fatalf("Add tcp over a remote tls endpoint: %v, want ErrConflict", err)
	}
	if proto, _, err := tab.Lookup("pass"); err != nil || proto != "tls" {
		t.Fatalf("Lookup(pass) = %q, %v; want tls from gossip", proto, err)
	}
	for range 20 {
		if tg, _ := tab.Pick("web", nil); tg != local {
			t.Fatalf("picked %v over the local agent", tg)
		}
	}
	tg, err := tab.Pick("web", func(tg Target) bool { return tg == local })
	if err != nil || tg != peer {
		t.Fatalf("with the local agent skipped: %v %v", tg, err)
	}
	tab.Remove("web", local)
	if tg, _ := tab.Pick("web", nil); tg != peer {
		t.Fatalf("after the local agent left: %v", tg)
	}
	if _, _, err := tab.Lookup("db"); err != nil {
		t.Fatalf("Lookup of a remote-only endpoint: %v", err)
	}
	c.Gone("edge-2")
	if n := tab.Len(); n != 0 {
		t.Fatalf("%d endpoints left after the only owner went", n)
	}
}

func TestClusterManyEndpoints(t *testing.T) {
	tab := NewTable()
	c := NewCluster(tab)
	l := NewLocal("big", 7)
	for i := range 10000 {
		l.Set(Announcement{ID: EndpointID(fmt.Sprintf("ep-%d", i)), Proto: "http", Agents: 1})
	}
	c.Alive("big", 7, &fakeTarget{name: "big"})
	b := AppendState(nil, l.Full())
	m, err := ParseMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	c.Apply(m.State)
	if n := tab.Len(); n != 10000 {
		t.Fatalf("%d endpoints routed, want 10000", n)
	}
	t.Logf("full state of 10,000 endpoints: %d bytes", len(b))
}

// fakeTarget stands for a relay to another node.
type fakeTarget struct{ name string }

func (*fakeTarget) Load() int64 { return 0 }

func TestMetaRoundTrip(t *testing.T) {
	for _, m := range []NodeMeta{{Epoch: 1, RelayAddr: "10.0.0.1:8001"}, {Epoch: 1 << 62, RelayAddr: "[::1]:1", Draining: true}} {
		got, err := ParseMeta(AppendMeta(nil, m))
		if err != nil || got != m {
			t.Fatalf("round trip of %+v: %+v %v", m, got, err)
		}
	}
	for name, b := range map[string][]byte{
		"empty": nil, "format": {2, 0, 1, 0}, "flags": {1, 4, 1, 0}, "epoch 0": {1, 0, 0, 0},
		"trailing": {1, 0, 1, 0, 0}, "truncated addr": {1, 0, 1, 5, 'a'},
	} {
		if _, err := ParseMeta(b); !errors.Is(err, ErrBadGossip) {
			t.Errorf("%s: ParseMeta = %v, want ErrBadGossip", name, err)
		}
	}
}

func FuzzParseMeta(f *testing.F) {
	f.Add(AppendMeta(nil, NodeMeta{Epoch: 5, RelayAddr: "127.0.0.1:8001", Draining: true}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMeta(b)
		if err != nil {
			return
		}
		if again, err := ParseMeta(AppendMeta(nil, m)); err != nil || again != m {
			t.Fatalf("re-encoding changed %+v: %+v %v", m, again, err)
		}
	})
}
