package edge_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// TestUpgradeCopiesBurstsAndTrickles sends an upgraded connection's echo
// upstream bursts bigger than every copy buffer and single bytes in turn:
// the edge's copies switch between their small and big buffers, and every
// byte must come back in order.
func TestUpgradeCopiesBurstsAndTrickles(t *testing.T) {
	n := edgetest.NewNode(t)
	serve(t, n, "ws", quicutil.KindHTTP, edgetest.Upstream(t, upgradeEcho()))
	conn, br := dialUpgrade(t, n, "ws")
	conn.SetDeadline(time.Now().Add(30 * time.Second)) // a ceiling for failure
	for i, size := range []int{1, 1 << 20, 1, 2, 1024, 1025, 100 << 10, 1, 32<<10 + 1, 3} {
		msg := make([]byte, size)
		rand.Read(msg)
		errc := make(chan error, 1)
		go func() { // ends when the write does: conn closes at cleanup
			_, err := conn.Write(msg)
			errc <- err
		}()
		got := make([]byte, size)
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatalf("message %d (%d bytes): read: %v", i, size, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("message %d (%d bytes): write: %v", i, size, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("message %d (%d bytes) came back changed", i, size)
		}
	}
}
