package edge_test

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
)

// countLines counts the log lines in logs whose msg starts with prefix.
func countLines(logs *logBuffer, prefix string) int {
	logs.mu.Lock()
	defer logs.mu.Unlock()
	n := 0
	for line := range strings.SplitSeq(logs.b.String(), "\n") {
		if strings.Contains(line, `"msg":"`+prefix) {
			n++
		}
	}
	return n
}

// TestGossipNoiseIsCountedNotLogged sends garbage to a node's gossip port,
// as anyone who can reach it can: UDP packets without the cluster's label,
// with its label but not encrypted with its secret, and TCP streams of
// garbage. Each is counted in pico_gossip_dropped_total by reason, and the
// log gets a line per reason, not one per packet.
func TestGossipNoiseIsCountedNotLogged(t *testing.T) {
	var logs logBuffer
	n := edgetest.NewCluster(t, 1, func(c *edge.Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	}).Nodes[0]
	gossip := n.Server.GossipAddr()
	udp, err := net.Dial("udp", gossip)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	const packets = 200
	junk := make([]byte, 200)
	rand.Read(junk)
	labelled := append([]byte{244, byte(len("pico"))}, "pico"...) // memberlist's label header
	labelled = append(labelled, junk...)
	for i := range packets {
		if i%2 == 0 {
			udp.Write(append([]byte{byte(i)}, junk...)) // no label
		} else {
			udp.Write(labelled) // the label, then not encrypted with the secret
		}
		if i%50 == 0 {
			time.Sleep(10 * time.Millisecond) // within the socket's buffer
		}
	}
	const streams = 20
	for range streams {
		c, err := net.Dial("tcp", gossip)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(junk)
		c.Close()
	}
	dropped := func() int {
		return metric(t, n, `pico_gossip_dropped_total{reason="label"}`) +
			metric(t, n, `pico_gossip_dropped_total{reason="decrypt"}`) +
			metric(t, n, `pico_gossip_dropped_total{reason="malformed"}`)
	}
	// UDP may lose a few on a busy machine; most must arrive and be counted.
	waitFor(t, "the garbage counted", func() bool { return dropped() >= packets/2+streams })
	time.Sleep(200 * time.Millisecond) // the rest of what is on its way
	for _, r := range []string{"label", "decrypt"} {
		if metric(t, n, `pico_gossip_dropped_total{reason="`+r+`"}`) == 0 {
			t.Errorf("no gossip dropped for reason %s", r)
		}
	}
	lines := countLines(&logs, "memberlist: ")
	t.Logf("%d garbage packets and streams counted, %d memberlist log lines", dropped(), lines)
	if lines > 3 { // a line per reason at most, within 10 s
		t.Fatalf("%d memberlist log lines for %d garbage packets and streams, want at most one per reason (3)", lines, dropped())
	}
}

// TestAgentHelloNoiseIsCountedNotLogged opens agent connections that never
// say a valid hello: each is refused and counted in
// pico_agent_refused_total{reason="hello"}, and logged once, not once each.
func TestAgentHelloNoiseIsCountedNotLogged(t *testing.T) {
	var logs logBuffer
	n := edgetest.NewNode(t, func(c *edge.Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	const conns = 20
	for i := range conns {
		conn := dialAgentRaw(t, n)
		str, err := conn.OpenStreamSync(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(str, "not a hello %d", i)
		str.Close()
		select { // the edge closes the connection on the bad hello
		case <-conn.Context().Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("connection %d: still open 10 s after a bad hello", i)
		}
	}
	waitFor(t, "the refusals counted", func() bool { return metric(t, n, `pico_agent_refused_total{reason="hello"}`) == conns })
	if got := countLines(&logs, "agent connection refused"); got != 1 {
		t.Fatalf("%d log lines for %d refused agent connections, want 1", got, conns)
	}
}
