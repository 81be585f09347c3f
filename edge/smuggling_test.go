package edge_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/auth/authtest"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// smugglingVector is one raw HTTP/1.1 input of testdata/smuggling/http1.json.
type smugglingVector struct {
	Name     string `json:"name"`
	Raw      string `json:"raw"`
	Expect   string `json:"expect"`    // "reject": an error status and nothing upstream; "one": at most one request upstream
	KnownGap string `json:"known_gap"` // why the edge does not do what it should yet
}

// TestSmugglingVectors sends each vector of the corpus on its own
// connection. Whatever the edge does, the upstream never sees the smuggled
// request, and sees at most one request per vector; vectors expected to be
// rejected get an error status and reach nobody.
func TestSmugglingVectors(t *testing.T) { runSmugglingVectors(t, false) }

// TestSmugglingVectorsWithAuth runs the corpus against a node with proxy
// auth on, each vector carrying a valid token in its first request (a
// smuggled request has none).
func TestSmugglingVectorsWithAuth(t *testing.T) { runSmugglingVectors(t, true) }

func runSmugglingVectors(t *testing.T, auth bool) {
	b, err := os.ReadFile("../testdata/smuggling/http1.json")
	if err != nil {
		t.Fatal(err)
	}
	var vectors []smugglingVector
	if err := json.Unmarshal(b, &vectors); err != nil {
		t.Fatalf("corpus: %v", err)
	}
	if len(vectors) < 15 {
		t.Fatalf("corpus has %d vectors", len(vectors))
	}

	// Each vector reaches its own endpoint and upstream, so that a request
	// of one vector still on its way cannot be taken for another's.
	var opts []func(*edge.Config)
	token := ""
	if auth {
		now := time.Now()
		opts = append(opts, authOpt(fixedClock(now), withProxyAuth))
		token = authtest.HS256(t, authtest.Claims(now, "v*"))
	}
	n := edgetest.NewNode(t, opts...)
	a := n.NewAgent(t, func(c *agent.Config) { c.Token = token })
	var mu sync.Mutex
	seen := make([][]string, len(vectors)) // paths each upstream received
	for i := range vectors {
		up := edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			mu.Lock()
			seen[i] = append(seen[i], r.URL.Path)
			mu.Unlock()
		}))
		if err := a.ServeUpstream(t.Context(), fmt.Sprintf("v%d", i), quicutil.KindHTTP, up); err != nil {
			t.Fatal(err)
		}
	}
	proxy := strings.TrimPrefix(n.ProxyURL, "http://")

	for i, v := range vectors {
		t.Run(v.Name, func(t *testing.T) {
			if v.KnownGap != "" {
				t.Skip("known gap: " + v.KnownGap)
			}
			ep := fmt.Sprintf("v%d", i)
			raw := strings.ReplaceAll(v.Raw, "web.localhost", ep+".localhost")
			raw = strings.ReplaceAll(raw, "X-Pico-Endpoint: web\r", "X-Pico-Endpoint: "+ep+"\r")
			if auth { // after the request line, with its line ending
				if i := strings.IndexByte(raw, '\n'); i > 0 {
					eol := "\n"
					if raw[i-1] == '\r' {
						eol = "\r\n"
					}
					raw = raw[:i+1] + "X-Pico-Authorization: Bearer " + token + eol + raw[i+1:]
				}
			}
			statuses := sendRaw(t, proxy, raw)
			if auth && len(statuses) > 0 && statuses[0] == http.StatusUnauthorized {
				t.Fatalf("statuses %v: the vector's own request was refused for its token", statuses)
			}
			mu.Lock()
			got := append([]string(nil), seen[i]...)
			mu.Unlock()
			for _, p := range got {
				if p == "/smuggled" {
					t.Fatalf("the upstream received the smuggled request (paths %q, statuses %v)", got, statuses)
				}
			}
			switch v.Expect {
			case "reject":
				if len(got) != 0 || len(statuses) == 0 || statuses[0] < 400 {
					t.Fatalf("statuses %v, upstream saw %q; want an error status and nothing upstream", statuses, got)
				}
			case "one":
				if len(got) > 1 {
					t.Fatalf("upstream saw %d requests %q (statuses %v), want at most one", len(got), got, statuses)
				}
			default:
				t.Fatalf("corpus: unknown expectation %q", v.Expect)
			}
		})
	}
}

// sendRaw writes raw on a new connection, half-closes it, and returns the
// status of every response until the edge closes the connection.
func sendRaw(t *testing.T, addr, raw string) []int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second)) // a ceiling for failure only
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	conn.(*net.TCPConn).CloseWrite()
	var statuses []int
	br := bufio.NewReader(conn)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return statuses
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
	}
}
