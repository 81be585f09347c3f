package agent_test

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func hello(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }

func get(t *testing.T, n *edgetest.Node, id string) (int, string) {
	t.Helper()
	resp, err := edgetest.Client(t).Do(n.Request(t, "GET", id, "/", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The agent reconnects to a restarted edge and registers its endpoints again.
func TestReconnectAndReregister(t *testing.T) {
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	n1 := edgetest.NewNode(t)
	a := n1.NewAgent(t)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	if status, body := get(t, n1, "foo"); status != 200 || body != "hello" {
		t.Fatalf("before restart: %d %q", status, body)
	}
	n1.Stop(t)
	n2 := edgetest.NewNodeOn(t, n1.AgentAddr, n1.Bundle)
	n2.WaitRoute(t, "foo", 1)
	if status, body := get(t, n2, "foo"); status != 200 || body != "hello" {
		t.Fatalf("after restart: %d %q", status, body)
	}
}

// Edges are tried in turn: a dead first address does not stop the agent.
func TestEdgesTriedInTurn(t *testing.T) {
	dead, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().String()
	dead.Close()
	n := edgetest.NewNode(t)
	a := n.NewAgent(t, func(c *agent.Config) { c.Edges = []string{deadAddr, n.AgentAddr} })
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, http.HandlerFunc(hello))); err != nil {
		t.Fatal(err)
	}
	if status, _ := get(t, n, "foo"); status != 200 {
		t.Fatalf("status = %d, want 200", status)
	}
}

// Remove withdraws one endpoint; the agent's other endpoints stay.
func TestRemove(t *testing.T) {
	n := edgetest.NewNode(t)
	a := n.NewAgent(t)
	up := edgetest.Upstream(t, http.HandlerFunc(hello))
	for _, id := range []string{"one", "two"} {
		if err := a.ServeUpstream(t.Context(), id, quicutil.KindHTTP, up); err != nil {
			t.Fatal(err)
		}
	}
	a.Remove("one")
	n.WaitRoute(t, "one", 0)
	if status, _ := get(t, n, "one"); status != http.StatusBadGateway {
		t.Fatalf("removed endpoint: status = %d, want 502", status)
	}
	if status, _ := get(t, n, "two"); status != 200 {
		t.Fatalf("other endpoint: status = %d, want 200", status)
	}
	// The Deregister got its Result: nothing waits on the link any more.
	deadline := time.Now().Add(10 * time.Second)
	for a.PendingRequests() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d control requests still wait for a result", a.PendingRequests())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCloseTwiceAndUseAfterClose(t *testing.T) {
	n := edgetest.NewNode(t)
	a := n.NewAgent(t)
	a.Close()
	a.Close()
	if _, err := a.Listen(t.Context(), "x"); err != agent.ErrClosed {
		t.Fatalf("Listen after Close: err = %v, want ErrClosed", err)
	}
	if _, err := a.Dial(t.Context(), "x"); err == nil {
		t.Fatal("Dial after Close succeeded")
	}
}
