package edge_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

func adminDo(t *testing.T, method, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminIsReadOnlyWithoutToken(t *testing.T) {
	n := edgetest.NewNode(t)
	for _, c := range []struct{ method, path string }{
		{"GET", "/debug/pprof/"}, {"POST", "/admin/drain"}, {"DELETE", "/admin/agents/1"}, {"POST", "/admin/agents/1/goaway"},
	} {
		if code, _ := adminDo(t, c.method, n.AdminURL+c.path, "anything"); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
			t.Errorf("%s %s without an admin token configured: %d, want 404", c.method, c.path, code)
		}
	}
}

func TestAdminOperations(t *testing.T) {
	const token = "s3cret-admin-token"
	n := edgetest.NewNode(t, func(c *edge.Config) { c.AdminToken = token; c.AdminPprof = true })
	a := n.NewAgent(t)
	if err := a.ServeUpstream(t.Context(), "foo", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "wrong"} {
		code, body := adminDo(t, "GET", n.AdminURL+"/debug/pprof/", bad)
		if code != http.StatusUnauthorized || !strings.Contains(body, "admin token") {
			t.Fatalf("pprof with token %q: %d %s", bad, code, body)
		}
	}
	if code, body := adminDo(t, "GET", n.AdminURL+"/debug/pprof/goroutine?debug=1", token); code != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("pprof with the token: %d", code)
	}

	link := func() string {
		var st struct {
			Agents []struct {
				Session uint64 `json:"session"`
			} `json:"agents"`
		}
		getJSON(t, n.AdminURL+"/status/agents", &st)
		if len(st.Agents) != 1 {
			return ""
		}
		return fmt.Sprint(st.Agents[0].Session)
	}
	waitNewSession := func(old string) string {
		deadline := time.Now().Add(10 * time.Second)
		for {
			if s := link(); s != "" && s != old {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("no new agent session after %s", old)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	first := link()
	if code, body := adminDo(t, "POST", n.AdminURL+"/admin/agents/"+first+"/goaway", token); code != 200 || !strings.Contains(body, "asked to move") {
		t.Fatalf("goaway: %d %s", code, body)
	}
	second := waitNewSession(first) // the agent moved (here: to the same node, the only one)
	if code, body := adminDo(t, "DELETE", n.AdminURL+"/admin/agents/"+second, token); code != 200 || !strings.Contains(body, "evicted") {
		t.Fatalf("evict: %d %s", code, body)
	}
	waitNewSession(second) // it reconnected
	if code, _ := adminDo(t, "DELETE", n.AdminURL+"/admin/agents/999999", token); code != http.StatusNotFound {
		t.Fatalf("evict of an unknown session: %d", code)
	}
	if code, _ := adminDo(t, "DELETE", n.AdminURL+"/admin/agents/x", token); code != http.StatusBadRequest {
		t.Fatalf("evict of a bad session: %d", code)
	}
	n.WaitRoute(t, "foo", 1)
	if resp, body := do(t, edgetest.Client(t), n.Request(t, "GET", "foo", "/", nil)); resp.StatusCode != 200 {
		t.Fatalf("after the moves: %d %s", resp.StatusCode, body)
	}

	if code, body := adminDo(t, "POST", n.AdminURL+"/admin/drain", token); code != 200 || !strings.Contains(body, "draining") {
		t.Fatalf("drain: %d %s", code, body)
	}
	// Run returns once the node drained, with no error.
	n.WaitStopped(t, 10*time.Second)
}
