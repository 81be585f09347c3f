//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDashboardChromium loads the admin dashboard of node 2 of a real
// two-node cluster in headless Chromium, with one agent linked to node 1,
// and checks the DOM after the page's script ran: both nodes, the endpoint
// with node 1 as the node serving it, and node 2's request count. It also
// takes a screenshot and checks it is a PNG of the window's size with
// something drawn on it.
func TestDashboardChromium(t *testing.T) {
	e2e(t)
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s not found (install Debian's chromium package to run this test): %v", chromiumPath, err)
	}
	c := newCluster(t, 2, clusterOpts{})
	n1, n2 := c.nodes[0], c.nodes[1]
	port := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from the upstream")
	}))
	const endpoint = "dash-web"
	c.serve(t, c.edges(0), 1, "http", endpoint, "127.0.0.1:"+port)
	n1.waitOwners(t, endpoint, waitTimeout, "node-1")
	n2.waitOwners(t, endpoint, waitTimeout, "node-1")
	hc := newClient(t, waitTimeout)
	const requests = 7
	for range requests {
		if resp, body := n2.request(t, hc, "GET", endpoint, "/", nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET via node 2: %d %q", resp.StatusCode, body)
		}
	}

	url := "http://" + n2.admin + "/"
	common := []string{
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", // nothing but the admin port
		"--virtual-time-budget=5000",                               // the first poll, and two more 2 s apart
	}
	dom, stderr := runChromium(t, append(common, "--dump-dom", url)...)
	edgeVersion, agentVersion := binVersion(t, bin.edge), binVersion(t, bin.agent)
	for what, re := range map[string]string{
		"node 2's version (pico-edge --version)": `id="version"[^>]*>` + regexp.QuoteMeta(edgeVersion) + `<`,
		"node 1 in the node table":               `data-node="node-1"`,
		"node 2 as this node":                    `data-node="node-2"[^>]*>node-2 \(this node\)<`,
		"both nodes alive":                       `\(2 of 2 alive\)`,
		"the endpoint":                           `data-endpoint="` + endpoint + `"[^>]*>` + endpoint + `<`,
		"node 2's requests":                      fmt.Sprintf(`id="requests-total"[^>]*>%d<`, requests),
		"node 2 ready":                           `id="ready"[^>]*>ready<`,
		"the page's header with node 2's ID":     `id="node-id">node-2<`,
		"HTTP/1.1 row of the traffic table":      `<td>HTTP/1\.1</td>`,
		"no fetch error shown (error hidden)":    `<p id="error" hidden=""></p>`,
	} {
		if !regexp.MustCompile(re).MatchString(dom) {
			t.Errorf("the DOM after the script ran lacks %s (/%s/)", what, re)
		}
	}
	// The endpoint's row names node 1 among the nodes serving it.
	if _, row, _ := strings.Cut(dom, `data-endpoint="`+endpoint+`"`); !strings.Contains(strings.SplitN(row, "</tr>", 2)[0], "<span>node-1</span>") {
		t.Errorf("the endpoint's row does not list node-1 as serving it: %.300s", row)
	}
	// ... and the requests node 2 received for it (the last cell).
	if _, row, _ := strings.Cut(dom, `data-endpoint="`+endpoint+`"`); !strings.HasSuffix(strings.SplitN(row, "</tr>", 2)[0], fmt.Sprintf(`<td class="num">%d</td>`, requests)) {
		t.Errorf("the endpoint's row does not end with node 2's %d requests: %.600s", requests, row)
	}
	if t.Failed() {
		t.Fatalf("DOM:\n%s\nchromium stderr:\n%s", dom, stderr)
	}
	// Node 1's page lists its agent with the version the agent sent in
	// its hello: the one pico-agent --version prints.
	dom1, stderr := runChromium(t, append(common, "--dump-dom", "http://"+n1.admin+"/")...)
	if _, row, ok := strings.Cut(dom1, `data-agent="`); !ok || !strings.Contains(strings.SplitN(row, "</tr>", 2)[0], "<td>pico-agent/"+agentVersion+"</td>") {
		t.Fatalf("node 1's agent table lacks a row with pico-agent/%s:\n%s\nchromium stderr:\n%s", agentVersion, dom1, stderr)
	}

	shot := filepath.Join(t.TempDir(), "dashboard.png")
	const width, height = 1280, 900
	runChromium(t, append(common, "--screenshot="+shot, fmt.Sprintf("--window-size=%d,%d", width, height), "--hide-scrollbars", url)...)
	b, err := os.ReadFile(shot)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot %s (%d bytes) is no PNG: %v", shot, len(b), err)
	}
	if got := img.Bounds().Size(); got != image.Pt(width, height) {
		t.Errorf("screenshot is %v, want %dx%d", got, width, height)
	}
	if n := colours(img); n < 8 {
		t.Errorf("screenshot has %d colours: the page drew nothing", n)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(b))
}

// colours counts the distinct colours of img, up to 1000.
func colours(img image.Image) int {
	seen := map[[4]uint32]bool{}
	r := img.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y += 3 {
		for x := r.Min.X; x < r.Max.X; x += 3 {
			cr, cg, cb, ca := img.At(x, y).RGBA()
			seen[[4]uint32{cr, cg, cb, ca}] = true
			if len(seen) >= 1000 {
				return len(seen)
			}
		}
	}
	return len(seen)
}
