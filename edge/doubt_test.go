package edge_test

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// gossipGate is a memberlist transport over loopback whose gossip (UDP
// and TCP, both ways) a test can cut while everything else of the node,
// its QUIC relay included, goes on: what memberlist sees of a node starved
// of CPU long enough to miss its probes.
type gossipGate struct {
	inner   *memberlist.NetTransport
	cut     atomic.Bool
	packets chan *memberlist.Packet
	streams chan net.Conn
	// stopping: forwarders drop what comes in, so the inner transport's
	// listeners never block handing it over; done: forwarders return.
	stopping, done chan struct{}
	wg             sync.WaitGroup
}

var errGossipCut = errors.New("gossip cut by the test")

// gateGossip returns an option that puts g between the node and its gossip.
func gateGossip(tb testing.TB, g *gossipGate) func(*edge.Config) {
	return func(c *edge.Config) {
		prev := c.Cluster.Memberlist
		c.Cluster.Memberlist = func(mc *memberlist.Config) {
			if prev != nil {
				prev(mc)
			}
			fixedProbeTimes(mc)
			inner, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}, Logger: mc.Logger})
			if err != nil {
				tb.Errorf("gossip transport: %v", err)
				return
			}
			g.inner = inner
			g.packets = make(chan *memberlist.Packet)
			g.streams = make(chan net.Conn)
			g.stopping, g.done = make(chan struct{}), make(chan struct{})
			g.wg.Go(g.forwardPackets)
			g.wg.Go(g.forwardStreams)
			mc.Transport = g
			mc.BindPort = inner.GetAutoBindPort()
			mc.AdvertisePort = mc.BindPort
		}
	}
}

func (g *gossipGate) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return g.inner.FinalAdvertiseAddr(ip, g.inner.GetAutoBindPort())
}

func (g *gossipGate) WriteTo(b []byte, addr string) (time.Time, error) {
	if g.cut.Load() {
		return time.Now(), nil // lost on the way
	}
	return g.inner.WriteTo(b, addr)
}

func (g *gossipGate) PacketCh() <-chan *memberlist.Packet { return g.packets }

func (g *gossipGate) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if g.cut.Load() {
		return nil, errGossipCut
	}
	return g.inner.DialTimeout(addr, timeout)
}

func (g *gossipGate) StreamCh() <-chan net.Conn { return g.streams }

func (g *gossipGate) Shutdown() error {
	close(g.stopping)
	err := g.inner.Shutdown() // waits for its listeners
	close(g.done)
	g.wg.Wait()
	return err
}

func (g *gossipGate) forwardPackets() {
	for {
		select {
		case p := <-g.inner.PacketCh():
			if g.cut.Load() {
				continue
			}
			select {
			case g.packets <- p:
			case <-g.stopping:
			}
		case <-g.done:
			return
		}
	}
}

func (g *gossipGate) forwardStreams() {
	for {
		select {
		case c := <-g.inner.StreamCh():
			if g.cut.Load() {
				c.Close()
				continue
			}
			select {
			case g.streams <- c:
			case <-g.stopping:
				c.Close()
			}
		case <-g.done:
			return
		}
	}
}

// fixedProbeTimes keeps memberlist's probe timeouts as set, not scaled up
// by its health awareness after failed probes: a probe in progress when
// the node stops then ends within a probe interval, before goleak looks.
func fixedProbeTimes(mc *memberlist.Config) { mc.AwarenessMaxMultiplier = 1 }

// memberState returns n's view of member node in /status/members.
func memberState(t *testing.T, n *edgetest.Node, node string) (state, relay string, routed bool) {
	t.Helper()
	var members struct {
		Members []struct {
			NodeID string `json:"node_id"`
			State  string `json:"state"`
			Relay  string `json:"relay"`
			Routed bool   `json:"routed"`
		} `json:"members"`
	}
	getJSON(t, n.AdminURL+"/status/members", &members)
	for _, m := range members.Members {
		if m.NodeID == node {
			return m.State, m.Relay, m.Routed
		}
	}
	return "", "", false
}

// TestClusterDoubtsDeadVerdictWhileRelayIsOpen: memberlist declares a
// node dead when its gossip goes unanswered, as on a host starved of CPU,
// while the node still serves. Its routes stay as long as the relay
// connection to it is open, so no request fails; once the node is really
// gone (its relay connection closes), they go.
func TestClusterDoubtsDeadVerdictWhileRelayIsOpen(t *testing.T) {
	gate := &gossipGate{}
	var logs logBuffer
	cl := edgetest.NewCluster(t, 1, gateGossip(t, gate))
	n0 := cl.Nodes[0]
	n1 := cl.Add(t, "node-1", func(c *edge.Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		prev := c.Cluster.Memberlist
		c.Cluster.Memberlist = func(mc *memberlist.Config) { prev(mc); fixedProbeTimes(mc) }
	})
	cl.WaitMembers(t, 2)
	a := n0.NewAgent(t, singleLink)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	n1.WaitRemote(t, "foo", 1)
	// node-1 dialled node-0 when it joined, before any request.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, relay, _ := memberState(t, n1, "node-0"); relay == "connected" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node-1 holds no relay connection to node-0 before its first relayed request")
		}
	}

	gate.cut.Store(true)
	const doubted = "membership lost a node whose relay connection is open"
	for deadline := time.Now().Add(20 * time.Second); !logs.contains(doubted); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("memberlist on node-1 never declared node-0 dead")
		}
	}
	if state, relay, routed := memberState(t, n1, "node-0"); state != "dead" || relay != "connected" || !routed {
		t.Fatalf("node-0 as node-1 sees it: state %q, relay %q, routed %v; want dead, connected, routed", state, relay, routed)
	}
	c := edgetest.Client(t)
	for i := range 20 {
		resp, body := do(t, c, n1.Request(t, "POST", "foo", "/", strings.NewReader("x")))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d after the verdict: %d %s", i, resp.StatusCode, body)
		}
	}

	// The gossip heals: node-0 refutes the verdict and is a member again.
	gate.cut.Store(false)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if state, _, _ := memberState(t, n1, "node-0"); state == "alive" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node-0 never came back after the gossip healed")
		}
	}
	if r := n1.Server.Table().Remote("foo"); len(r) != 1 {
		t.Fatalf("after the gossip healed, node-1 routes foo to %d nodes, want 1", len(r))
	}

	// Declared dead again, and then really gone: its relay connection
	// closes, and its routes go.
	gate.cut.Store(true)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if state, _, _ := memberState(t, n1, "node-0"); state == "dead" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("memberlist on node-1 never declared node-0 dead again")
		}
	}
	n0.Kill(t)
	n1.WaitRemote(t, "foo", 0)
	if !logs.contains(`"confirmed_by":"relay connection"`) {
		t.Fatal("node-1 did not say the relay connection confirmed node-0 gone")
	}
}
