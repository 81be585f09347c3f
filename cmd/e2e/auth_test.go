package e2e

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// sign returns an HS256 token with secret for endpoint web, issued at iat
// and expiring at exp, as 'pico-edge token' would mint it.
func sign(t testing.TB, secret []byte, iat, exp time.Time) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "e2e", "iat": iat.Unix(), "nbf": iat.Unix(), "exp": exp.Unix(),
		"pico": map[string]any{"endpoints": []string{"web"}},
	}).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTokenQuickstart is the quickstart with authentication, with the real
// binaries: 'pico-edge token' creates the secret and mints tokens, the edge
// verifies them (agents, and clients with --proxy-auth), and an agent
// whose token does not allow its endpoint, has expired, is signed with
// another key or is not a JWT, or that has none, exits 1 saying why. It
// runs over each transport.
func TestTokenQuickstart(t *testing.T) {
	e2e(t)
	forEachTransport(t, testTokenQuickstart)
}

func testTokenQuickstart(t *testing.T, tr transport) {
	key := filepath.Join(t.TempDir(), "s.key")
	mint := func(endpoints string) string {
		t.Helper()
		out, code := runCmd(t, nil, bin.edge, "token", "--hmac-secret-file", key, "--endpoints", endpoints, "--ttl", "1h")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != 0 || strings.Count(lines[len(lines)-1], ".") != 2 {
			t.Fatalf("pico-edge token: exit %d:\n%s", code, out)
		}
		return lines[len(lines)-1] // the token is on stdout, notes before it on stderr
	}
	token := mint("web,team-*")
	e := startEdge(t, "--auth-hmac-secret-file", key, "--proxy-auth").over(t, tr)
	e.proc.waitLineFor(t, 0, "auth mode line", startTimeout, isMsg("agents and clients must present a token"))

	up := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("auth=" + r.Header.Get("Authorization")))
	}))
	a := e.startAgent(t, "--token", token, "http", "web", up)
	checkStatusLine(t, tr, a.waitLineFor(t, 0, "registered", startTimeout, contains("endpoint web (http) is registered")))
	e.checkLinks(t, 1)

	c := newClient(t, 10*time.Second)
	resp, body := e.request(t, c, "GET", "web", "/", nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Bearer realm="pico"` {
		t.Fatalf("no token: %d %q %q, want 401 with a Bearer challenge", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
	}
	resp, body = e.request(t, c, "GET", "web", "/", http.Header{"Authorization": {"Bearer " + token}})
	if resp.StatusCode != http.StatusOK || body != "auth=" {
		t.Fatalf("with a token: %d %q, want 200 and no Authorization upstream", resp.StatusCode, body)
	}

	secret, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	expired := sign(t, bytes.TrimSpace(secret), now.Add(-2*time.Hour), now.Add(-time.Hour))
	otherKey := sign(t, []byte(strings.Repeat("k", 32)), now, now.Add(time.Hour))
	for name, tc := range map[string]struct {
		token []string
		want  string
	}{
		"endpoint not in the token": {[]string{"--token", mint("other")}, `refused endpoint "web": forbidden: token does not allow endpoint "web" (its pico.endpoints: other)`},
		"no token":                  {nil, "edge refused the token: no token: this edge requires one"},
		"expired token":             {[]string{"--token", expired}, "edge refused the token: token expired at " + now.Add(-time.Hour).UTC().Format(time.RFC3339)},
		"token of another key":      {[]string{"--token", otherKey}, "edge refused the token: token signature is invalid"},
		"malformed token":           {[]string{"--token", "not-a-jwt"}, "edge refused the token: token is malformed"},
	} {
		t.Run(name, func(t *testing.T) {
			args := append(e.agentFlags(e.ca), tc.token...)
			out, code := runCmd(t, nil, bin.agent, append(args, "http", "web", up)...)
			if code != 1 || !strings.Contains(out, tc.want) {
				t.Fatalf("pico-agent: exit %d, want 1 saying %q:\n%s", code, tc.want, out)
			}
		})
	}
	var node struct {
		Auth struct{ Agents, Clients string } `json:"auth"`
	}
	e.adminJSON(t, "/status/node", &node)
	if node.Auth.Agents != "jwt" || node.Auth.Clients != "jwt" {
		t.Fatalf("/status/node auth = %+v", node.Auth)
	}
}
