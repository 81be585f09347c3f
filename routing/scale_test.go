package routing

import (
	"fmt"
	"runtime"
	"testing"
)

// liveHeap is the live heap after a full GC.
func liveHeap() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc)
}

// scaleIDs are n endpoint IDs as agents name them: fresh strings.
func scaleIDs(n int) []EndpointID {
	ids := make([]EndpointID, n)
	for i := range ids {
		ids[i] = EndpointID(fmt.Sprintf("service-%05d-%d", i/10, i%10))
	}
	return ids
}

// ownerState fills a Table and a Local as the node the agents link to
// does: every endpoint with its agent link (one per 10 endpoints) in the
// table and announced.
func ownerState(ids []EndpointID) (*Table, *Local) {
	t, l := NewTable(), NewLocal("node-1", 1)
	links := make([]Target, (len(ids)+9)/10)
	for i := range links {
		links[i] = &fakeTarget{name: fmt.Sprint(i)}
	}
	for i, id := range ids {
		if err := t.Add(id, "http", links[i/10]); err != nil {
			panic(err)
		}
		l.Set(Announcement{ID: id, Proto: "http", Kinds: 1, Agents: 1})
	}
	return t, l
}

// otherState fills a Table and a Cluster as another node does: from the
// owner's full state, received as gossip (the decoder allocates the IDs).
func otherState(l *Local) (*Table, *Cluster, error) {
	m, err := ParseMessage(AppendState(nil, l.Full()))
	if err != nil {
		return nil, nil, err
	}
	t := NewTable()
	c := NewCluster(t)
	c.Alive(m.State.Node, m.State.Epoch, &fakeTarget{name: "node-1"})
	if _, err := c.Apply(m.State); err != nil {
		return nil, nil, err
	}
	return t, c, nil
}

// BenchmarkEndpointMemory reports the live heap the routing state of
// 10,000 endpoints takes on the node their agents link to (Table and
// Local: owner-B/endpoint) and on every other node (Table and Cluster:
// other-B/endpoint), and the gossip state's size (gossip-B/endpoint).
// It is the routing share of edge's BenchmarkEndpointHeap.
//
//	go test -run '^$' -bench EndpointMemory ./routing/
func BenchmarkEndpointMemory(b *testing.B) {
	const n = 10000
	var owner, other float64
	var keep []any
	for b.Loop() {
		ids := scaleIDs(n)
		h0 := liveHeap()
		t, l := ownerState(ids)
		h1 := liveHeap()
		ot, oc, err := otherState(l)
		if err != nil {
			b.Fatal(err)
		}
		h2 := liveHeap()
		owner += h1 - h0
		other += h2 - h1
		if ot.Len() != n || t.Len() != n {
			b.Fatalf("tables hold %d and %d endpoints, want %d", t.Len(), ot.Len(), n)
		}
		keep = append(keep[:0], t, l, ot, oc, ids)
	}
	runtime.KeepAlive(keep)
	b.ReportMetric(owner/float64(b.N)/n, "owner-B/endpoint")
	b.ReportMetric(other/float64(b.N)/n, "other-B/endpoint")
	_, l := ownerState(scaleIDs(n))
	b.ReportMetric(float64(len(AppendState(nil, l.Full())))/n, "gossip-B/endpoint")
}

// TestEndpointStateSurvivesGossip checks what the benchmark's other node
// builds: every endpoint routes to the owner's target, with its protocol.
func TestEndpointStateSurvivesGossip(t *testing.T) {
	ids := scaleIDs(1000)
	_, l := ownerState(ids)
	ot, _, err := otherState(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		proto, local, err := ot.Lookup(id)
		if err != nil || proto != "http" || len(local) != 0 || len(ot.Remote(id)) != 1 {
			t.Fatalf("%s: proto %q, %d local, %d remote, err %v", id, proto, len(local), len(ot.Remote(id)), err)
		}
	}
}
