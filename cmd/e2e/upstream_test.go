package e2e

import (
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUpstreamProtocols runs pico-agent against TLS and HTTP/2 upstreams
// with the --upstream-* flags: the upstream sees the protocol asked for.
func TestUpstreamProtocols(t *testing.T) {
	e2e(t)
	forEachTransport(t, testUpstreamProtocols)
}

func testUpstreamProtocols(t *testing.T, tr transport) {
	e := startEdge(t).over(t, tr)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tls := "plain"
		if r.TLS != nil {
			tls = "tls"
		}
		fmt.Fprintf(w, "%s %s", r.Proto, tls)
	}))
	up.EnableHTTP2 = true
	up.StartTLS()
	t.Cleanup(up.Close)
	ca := filepath.Join(t.TempDir(), "upstream-ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(up.URL, "https://")

	h2c := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s plain", r.Proto)
	}))
	h2c.Config.Protocols = new(http.Protocols)
	h2c.Config.Protocols.SetUnencryptedHTTP2(true)
	h2c.Start()
	t.Cleanup(h2c.Close)

	tests := map[string]struct {
		args []string
		want string
	}{
		"https url with --upstream-ca":    {[]string{"http", "tls1", "https://" + addr, "--upstream-ca", ca}, "HTTP/1.1 tls"},
		"h2 with --upstream-ca":           {[]string{"http", "tls2", addr, "--upstream-protocol", "h2", "--upstream-ca", ca}, "HTTP/2.0 tls"},
		"https with skip-verify":          {[]string{"http", "tls3", "https://" + addr, "--upstream-tls-skip-verify"}, "HTTP/1.1 tls"},
		"h2c":                             {[]string{"http", "h2c", strings.TrimPrefix(h2c.URL, "http://"), "--upstream-protocol", "h2c"}, "HTTP/2.0 plain"},
		"https without the CA is refused": {[]string{"http", "tls4", "https://" + addr}, "certificate"},
	}
	c := newClient(t, 30*time.Second)
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a := e.startAgent(t, tc.args...)
			a.waitLineFor(t, 0, "registration", startTimeout, contains(fmt.Sprintf("endpoint %s (http) is registered", tc.args[1])))
			resp, body := e.request(t, c, "GET", tc.args[1], "/", nil)
			if strings.HasSuffix(name, "refused") {
				if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, tc.want) {
					t.Fatalf("got %d %q, want 502 naming the certificate error", resp.StatusCode, body)
				}
				return
			}
			if resp.StatusCode != http.StatusOK || body != tc.want {
				t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, tc.want)
			}
		})
	}

	t.Run("flag errors", func(t *testing.T) {
		for _, args := range [][]string{
			{"http", "x", "3000", "--upstream-ca", ca},
			{"http", "x", "https://" + addr, "--upstream-protocol", "h2c"},
			{"tcp", "x", "3000", "--upstream-protocol", "h2"},
		} {
			out, code := runCmd(t, nil, bin.agent, append([]string{"--edge", e.agent, "--ca", e.ca}, args...)...)
			if code == 0 || !strings.Contains(out, "upstream") {
				t.Errorf("pico-agent %s: exit %d, output %q; want a non-zero exit naming the upstream problem", strings.Join(args, " "), code, out)
			}
		}
	})
}
