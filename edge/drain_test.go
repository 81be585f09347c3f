package edge_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// TestDrainClosesKeepAlives: once a node drains, its HTTP/1.1 responses
// say Connection: close, so that clients and balancers send their next
// request on a new connection (which goes elsewhere once /readyz fails)
// instead of one that the shutdown will close under it.
func TestDrainClosesKeepAlives(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.DrainDelay = 3 * time.Second })
	serve(t, n, "web", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders()))
	c := edgetest.Client(t)
	get := func() *http.Response {
		t.Helper()
		resp, err := c.Do(n.Request(t, "GET", "web", "/", nil))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET: %s", resp.Status)
		}
		return resp
	}
	if resp := get(); resp.Close {
		t.Fatal("a response before the drain closes its connection")
	}
	n.Server.Drain()
	waitFor(t, "/readyz to say 503", func() bool {
		resp, err := http.Get(n.AdminURL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if resp := get(); !resp.Close { // within the 3 s drain delay: still served
		t.Fatal("a response during the drain keeps its connection open; want Connection: close")
	}
}
