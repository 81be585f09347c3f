package edge_test

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/quic-go/quic-go/http3"

	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// clients returns an HTTP/1.1-over-TLS, an HTTP/2 and an HTTP/3 client
// trusting n's CA; their connections close in cleanup.
func clients(t *testing.T, n *edgetest.Node) map[string]*http.Client {
	tlsConf := &tls.Config{RootCAs: n.CAPool, ServerName: "localhost"}
	h1 := &http.Transport{TLSClientConfig: tlsConf.Clone()}
	h1.Protocols = new(http.Protocols)
	h1.Protocols.SetHTTP1(true)
	h2 := &http.Transport{TLSClientConfig: tlsConf.Clone()}
	h2.Protocols = new(http.Protocols)
	h2.Protocols.SetHTTP2(true)
	h3 := &http3.Transport{TLSClientConfig: tlsConf.Clone()}
	t.Cleanup(func() {
		h1.CloseIdleConnections()
		h2.CloseIdleConnections()
		h3.Close()
	})
	return map[string]*http.Client{
		"HTTP/1.1": {Transport: h1},
		"HTTP/2.0": {Transport: h2},
		"HTTP/3.0": {Transport: h3},
	}
}

func TestTLSFrontDoor(t *testing.T) {
	n := edgetest.NewNode(t)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Alt-Svc", `h3=":1"`) // the upstream's own: must not reach clients
		body, _ := io.ReadAll(r.Body)
		json.NewEncoder(w).Encode(map[string]string{
			"proto": r.Header.Get("X-Forwarded-Proto"), "host": r.Host, "body": string(body),
		})
	})
	serve(t, n, "web", quicutil.KindHTTP, edgetest.Upstream(t, up))
	u, _ := url.Parse(n.TLSURL)
	wantAltSvc := fmt.Sprintf(`h3=":%s"; ma=86400`, u.Port())

	for proto, c := range clients(t, n) {
		t.Run(proto, func(t *testing.T) {
			payload := strings.Repeat("p", 100<<10)
			req, _ := http.NewRequest("POST", n.TLSURL+"/", strings.NewReader(payload))
			req.Host = "web.localhost"
			resp, body := do(t, c, req)
			if resp.StatusCode != 200 || resp.Proto != proto {
				t.Fatalf("got %d over %s, want 200 over %s (body %q)", resp.StatusCode, resp.Proto, proto, body)
			}
			var got map[string]string
			json.Unmarshal([]byte(body), &got)
			if got["proto"] != "https" || got["host"] != "web.localhost" || got["body"] != payload {
				t.Errorf("upstream saw proto %q host %q body of %d bytes; want https, web.localhost, %d bytes",
					got["proto"], got["host"], len(got["body"]), len(payload))
			}
			alt := resp.Header.Values("Alt-Svc")
			if proto == "HTTP/3.0" {
				if len(alt) != 0 {
					t.Errorf("Alt-Svc over HTTP/3 = %q, want none", alt)
				}
			} else if len(alt) != 1 || alt[0] != wantAltSvc {
				t.Errorf("Alt-Svc = %q, want [%q]", alt, wantAltSvc)
			}

			req, _ = http.NewRequest("GET", n.TLSURL+"/", nil)
			req.Host = "nope.localhost"
			resp, body = do(t, c, req)
			if resp.StatusCode != 502 || body != "no upstream for endpoint \"nope\"\n" {
				t.Errorf("unknown endpoint: got %d %q", resp.StatusCode, body)
			}
		})
	}

	req, _ := http.NewRequest("GET", n.AdminURL+"/metrics", nil)
	_, metrics := do(t, edgetest.Client(t), req)
	for _, p := range []string{"http1", "http2", "http3"} {
		for _, w := range []string{`pico_requests_total{proto="` + p + `",code="2xx"} 1`, `pico_requests_total{proto="` + p + `",code="5xx"} 1`} {
			if !strings.Contains(metrics, w) {
				t.Errorf("metrics lack %s", w)
			}
		}
	}
}

func TestTLSFrontDoorStreams(t *testing.T) {
	n := edgetest.NewNode(t)
	release := make(chan struct{}, 3)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: two\n\n")
	})
	serve(t, n, "sse", quicutil.KindHTTP, edgetest.Upstream(t, up))
	for proto, c := range clients(t, n) {
		t.Run(proto, func(t *testing.T) {
			req, _ := http.NewRequest("GET", n.TLSURL+"/", nil)
			req.Host = "sse.localhost"
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			if line, err := br.ReadString('\n'); err != nil || line != "data: one\n" {
				t.Fatalf("first line = %q, %v (the first event must arrive before the second is written)", line, err)
			}
			release <- struct{}{}
			rest, _ := io.ReadAll(br)
			if !strings.Contains(string(rest), "data: two") {
				t.Fatalf("rest = %q", rest)
			}
		})
	}
}
