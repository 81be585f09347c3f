package agent_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/auth"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// waitStatus waits until ok holds for the agent's Status, and returns it.
func waitStatus(t *testing.T, a *agent.Agent, what string, ok func(agent.Status) bool) agent.Status {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		changed := a.StatusChanged()
		st := a.Status()
		if ok(st) {
			return st
		}
		select {
		case <-changed:
		case <-time.After(20 * time.Millisecond): // counters change without notice
		case <-deadline:
			b, _ := json.Marshal(st)
			t.Fatalf("no status with %s (waited %s); last: %s", what, waitTimeout, b)
		}
	}
}

func endpointOf(st agent.Status, id string) (agent.EndpointStatus, bool) {
	for _, e := range st.Endpoints {
		if e.ID == id {
			return e, true
		}
	}
	return agent.EndpointStatus{}, false
}

// Status reports the live links, each endpoint's nodes, and counts the
// streams served and the upstream errors per endpoint.
func TestStatus(t *testing.T) {
	nodes := newNodes(t, 2)
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	a := newAgent(t, nodes[0], agentAddrs(nodes...), 2, newRecorder())
	changed := a.StatusChanged()
	if err := a.ServeUpstream(t.Context(), "web", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("StatusChanged was not closed when an endpoint was added")
	}
	if err := a.ServeUpstream(t.Context(), "down", quicutil.KindTCP, edgetest.ClosedPort(t)); err != nil {
		t.Fatal(err)
	}
	ln, err := a.Listen(t.Context(), "own")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(hello)}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	defer func() { srv.Close(); <-served }()

	waitStatus(t, a, "web and own on both nodes", func(st agent.Status) bool {
		w, _ := endpointOf(st, "web")
		o, _ := endpointOf(st, "own")
		return slices.Equal(w.Nodes, []string{"node-1", "node-2"}) && slices.Equal(o.Nodes, []string{"node-1", "node-2"})
	})
	for range 3 {
		if status, body := get(t, nodes[0], "web"); status != 200 || body != "hello" {
			t.Fatalf("web: %d %q, want 200 hello", status, body)
		}
	}
	if status, _ := get(t, nodes[1], "own"); status != 200 {
		t.Fatalf("own: status %d, want 200", status)
	}
	c, err := a.Dial(t.Context(), "down")
	if err == nil {
		c.Close()
		t.Fatal("Dial to an endpoint whose upstream is down succeeded")
	}

	st := waitStatus(t, a, "the counters", func(st agent.Status) bool {
		w, _ := endpointOf(st, "web")
		d, _ := endpointOf(st, "down")
		o, _ := endpointOf(st, "own")
		// The edge keeps an HTTP/1.1 stream for the next request: the
		// three GETs took one to three streams.
		return w.Streams >= 1 && w.Streams <= 3 && o.Streams == 1 && d.Streams == 1 && d.UpstreamErrors == 1 && d.InFlight == 0
	})
	if st.AgentID != a.ID() {
		t.Errorf("agent ID = %q, want %q", st.AgentID, a.ID())
	}
	var ids []string
	for _, e := range st.Endpoints {
		ids = append(ids, e.ID+"/"+e.Kind)
	}
	if got, want := strings.Join(ids, " "), "down/tcp own/http web/http"; got != want {
		t.Errorf("endpoints = %q, want %q", got, want)
	}
	if len(st.Links) != 2 || st.Links[0].NodeID != "node-1" || st.Links[1].NodeID != "node-2" {
		t.Fatalf("links = %+v, want node-1 and node-2", st.Links)
	}
	for i, l := range st.Links {
		if l.Addr != nodes[i].AgentAddr || l.Connected.IsZero() || time.Since(l.Connected) > time.Minute || l.RTT <= 0 {
			t.Errorf("link %d = %+v, want address %s, connected now, an RTT", i, l, nodes[i].AgentAddr)
		}
	}
	var j struct {
		Links []struct {
			NodeID string  `json:"node_id"`
			RTT    float64 `json:"rtt_ms"`
		} `json:"links"`
		Endpoints []struct {
			ID      string `json:"id"`
			Streams uint64 `json:"streams_total"`
		} `json:"endpoints"`
	}
	b, _ := json.Marshal(st)
	if err := json.Unmarshal(b, &j); err != nil || len(j.Links) != 2 || j.Links[0].RTT <= 0 || j.Endpoints[0].Streams != 1 {
		t.Fatalf("JSON %s: %v; want rtt_ms and streams_total", b, err)
	}

	a.Remove("web")
	waitStatus(t, a, "web removed", func(st agent.Status) bool {
		_, ok := endpointOf(st, "web")
		return !ok
	})
}

// A node that refuses an endpoint another node accepted shows in its
// Refusals; the endpoint is not refused everywhere.
func TestStatusRefusals(t *testing.T) {
	nodes := newNodes(t, 2)
	tcpOnly := nodes[1].NewAgent(t)
	if err := tcpOnly.ServeUpstream(t.Context(), "foo", quicutil.KindTCP, tcpEcho(t)); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, nodes[0], agentAddrs(nodes...), 2, newRecorder())
	waitLinks(t, a, 2)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(hello))); err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, a, "node-2's refusal", func(st agent.Status) bool {
		e, _ := endpointOf(st, "foo")
		return e.Refusals["node-2"] != ""
	})
	e, _ := endpointOf(st, "foo")
	if !slices.Equal(e.Nodes, []string{"node-1"}) || !strings.Contains(e.Refusals["node-2"], "conflict") || e.RefusedEverywhere(len(st.Links)) {
		t.Fatalf("foo = %+v, want registered on node-1, refused by node-2 (conflict), not everywhere", e)
	}
}

// An endpoint that a new token no longer allows is withdrawn: with one
// link, it is refused everywhere.
func TestStatusWithdrawn(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef-status-test")
	n := edgetest.NewNode(t, func(c *edge.Config) {
		c.NodeID = "solo"
		c.Auth = &auth.Config{HMACSecret: secret, Leeway: time.Second}
	})
	mint := func(endpoints ...string) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"exp": time.Now().Add(time.Hour).Unix(), "pico": map[string]any{"endpoints": endpoints},
		}).SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a := n.NewAgent(t, func(c *agent.Config) { c.Token = mint("foo", "bar") })
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	for _, id := range []string{"foo", "bar"} {
		if err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, up); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.SetToken(t.Context(), mint("foo")); err == nil {
		t.Fatal("SetToken: no error, want bar withdrawn")
	}
	st := a.Status()
	bar, _ := endpointOf(st, "bar")
	foo, _ := endpointOf(st, "foo")
	if !bar.RefusedEverywhere(len(st.Links)) || !strings.Contains(bar.Refusals["solo"], `withdrew endpoint "bar"`) {
		t.Fatalf("bar = %+v, want withdrawn by solo", bar)
	}
	if foo.RefusedEverywhere(len(st.Links)) || !slices.Equal(foo.Nodes, []string{"solo"}) {
		t.Fatalf("foo = %+v, want registered on solo", foo)
	}
}

// A link lost and dialled again counts as a reconnect; the endpoint is on
// the new link's node.
func TestStatusReconnects(t *testing.T) {
	n1 := edgetest.NewNode(t, func(c *edge.Config) { c.NodeID = "first" })
	a := n1.NewAgent(t)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(hello))); err != nil {
		t.Fatal(err)
	}
	if st := a.Status(); st.Reconnects != 0 || len(st.Links) != 1 {
		t.Fatalf("before: %+v, want one link and no reconnect", st)
	}
	n1.Stop(t)
	waitStatus(t, a, "no link", func(st agent.Status) bool {
		e, _ := endpointOf(st, "foo")
		return len(st.Links) == 0 && len(e.Nodes) == 0 && !e.RefusedEverywhere(0)
	})
	edgetest.NewNodeOn(t, n1.AgentAddr, n1.Bundle, func(c *edge.Config) { c.NodeID = "second" })
	st := waitStatus(t, a, "foo on the restarted node", func(st agent.Status) bool {
		e, _ := endpointOf(st, "foo")
		return slices.Equal(e.Nodes, []string{"second"})
	})
	if st.Reconnects != 1 {
		t.Fatalf("reconnects = %d, want 1", st.Reconnects)
	}
}
