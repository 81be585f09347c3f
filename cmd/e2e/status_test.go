package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestStatusCommandsAndAgentAdmin drives `pico-edge status` and the
// agent's --admin-addr with the real binaries.
func TestStatusCommandsAndAgentAdmin(t *testing.T) {
	e2e(t)
	e := startEdge(t)
	a := e.startAgent(t, "--admin-addr", "127.0.0.1:0", "http", "web", "127.0.0.1:"+serveHTTP(t, nameServer("web")))
	a.waitLineFor(t, 0, "registered", startTimeout, contains("endpoint web (http) is registered"))
	line := a.waitLineFor(t, 0, "admin API line", startTimeout, contains("admin API on http://"))
	adminURL := strings.Fields(line[strings.Index(line, "http://"):])[0]
	adminURL = strings.TrimSuffix(adminURL, ":")

	out, code := runCmd(t, nil, bin.edge, "status", "endpoints", "--admin", "http://"+e.admin)
	if code != 0 || !strings.Contains(out, "web") || !strings.Contains(out, "http") || !strings.Contains(out, "ENDPOINT") {
		t.Fatalf("pico-edge status endpoints: exit %d\n%s", code, out)
	}
	out, code = runCmd(t, nil, bin.edge, "status", "members", "--admin", "http://"+e.admin)
	if code != 0 || !strings.Contains(out, "this node") {
		t.Fatalf("pico-edge status members: exit %d\n%s", code, out)
	}
	// The agent's hello carries the version pico-agent --version prints.
	out, code = runCmd(t, nil, bin.edge, "status", "agents", "--admin", "http://"+e.admin)
	if want := "pico-agent/" + binVersion(t, bin.agent); code != 0 || !strings.Contains(out, " "+want+" ") || !strings.Contains(out, "AGENT") {
		t.Fatalf("pico-edge status agents: exit %d, want a row with %s\n%s", code, want, out)
	}
	out, code = runCmd(t, nil, bin.edge, "status", "agents", "--admin", "http://127.0.0.1:1")
	if code == 0 || !strings.Contains(out, "127.0.0.1:1") {
		t.Fatalf("status against a closed port: exit %d\n%s", code, out)
	}

	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatalf("agent /metrics at %s: %v", adminURL, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "pico_agent_links 1") {
		t.Fatalf("agent /metrics lacks pico_agent_links 1:\n%s", b)
	}
	resp, err = http.Get(adminURL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || !strings.Contains(func() string { b, _ := json.Marshal(st); return string(b) }(), `"web"`) {
		t.Fatalf("agent /status: %v %v", st, err)
	}
}
