package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main() // the test binary as the command: see runMain
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// status runs 'pico-edge status what --admin admin' and returns its
// header line and table rows, each split into its cells.
func status(t *testing.T, admin, what string) (string, [][]string) {
	t.Helper()
	var out bytes.Buffer
	cmd := &StatusCmd{Admin: admin, Timeout: 10 * time.Second}
	if err := cmd.run(&out, what, time.Now()); err != nil {
		t.Fatalf("status %s: %v", what, err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	var rows [][]string
	for _, l := range lines[1:] {
		rows = append(rows, regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(l), -1))
	}
	t.Logf("pico-edge status %s:\n%s", what, out.String())
	return lines[0], rows
}

// checkRows compares rows with want, whose cells are regular expressions.
func checkRows(t *testing.T, what string, rows [][]string, want ...[]string) {
	t.Helper()
	if len(rows) != len(want) {
		t.Fatalf("%s: %d rows, want %d: %q", what, len(rows), len(want), rows)
	}
	for i, w := range want {
		if len(rows[i]) != len(w) {
			t.Fatalf("%s row %d = %q, want %d cells like %q", what, i, rows[i], len(w), w)
		}
		for j, re := range w {
			if !regexp.MustCompile(`^(?:` + re + `)$`).MatchString(rows[i][j]) {
				t.Errorf("%s row %d cell %d = %q, want %q", what, i, j, rows[i][j], re)
			}
		}
	}
}

func get(t *testing.T, n *edgetest.Node, id string) {
	t.Helper()
	resp, err := edgetest.Client(t).Do(n.Request(t, "GET", id, "/", nil))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s through %s: %d, want 200", id, n.Server.NodeID(), resp.StatusCode)
	}
}

func upstream(t *testing.T) string {
	return edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }))
}

// The tables of a single node with one agent serving two endpoints.
func TestStatusNode(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.NodeID = "solo" })
	a := n.NewAgent(t)
	if err := a.ServeUpstream(t.Context(), "web", quicutil.KindHTTP, upstream(t)); err != nil {
		t.Fatal(err)
	}
	if err := a.ServeUpstream(t.Context(), "db", quicutil.KindTCP, edgetest.ClosedPort(t)); err != nil {
		t.Fatal(err)
	}
	get(t, n, "web")
	id := regexp.QuoteMeta(a.ID())

	head, rows := status(t, n.AdminURL, "endpoints")
	if head != "node solo: 2 endpoints" {
		t.Errorf("endpoints header = %q", head)
	}
	checkRows(t, "endpoints", rows,
		[]string{"ENDPOINT", "PROTOCOL", "LOCAL AGENTS", "OTHER NODES", "IN FLIGHT"},
		[]string{"db", "tcp", id, "-", "0"},
		[]string{"web", "http", id, "-", `[01]`}, // the edge may keep the request's stream for the next one
	)

	head, rows = status(t, n.AdminURL, "agents")
	if head != "node solo: 1 agent link (auth: none)" {
		t.Errorf("agents header = %q", head)
	}
	checkRows(t, "agents", rows,
		[]string{"SESSION", "AGENT ID", "AGENT", "ENDPOINTS", "REMOTE ADDR", "TRANSPORT", "CONNECTED FOR", "RTT", "IN FLIGHT", "STREAMS"},
		[]string{`\d+`, id, "pico-agent", "db/tcp,web/http", `127\.0\.0\.1:\d+`, "quic", `\d+s`, `[\d.]+ms|-`, `[01]`, "1"},
	)

	head, rows = status(t, n.AdminURL, "members")
	if head != "node solo: not in a cluster (no --gossip-addr)" {
		t.Errorf("members header = %q", head)
	}
	checkRows(t, "members", rows,
		[]string{"NODE", "STATE", "DRAINING", "RELAY ADDR", "ENDPOINTS", "AGENT LINKS", "ROUTED", "RELAY", "RTT"},
		[]string{"solo \\(this node\\)", "alive", "no", "-", "2", "1", "yes", "-", "-"},
	)

	// --json prints the admin API's answer as it came.
	var out bytes.Buffer
	if err := (&StatusCmd{Admin: n.AdminURL, JSON: true, Timeout: 10 * time.Second}).run(&out, "agents", time.Now()); err != nil {
		t.Fatal(err)
	}
	var st struct {
		NodeID string `json:"node_id"`
		Agents []struct {
			AgentID string `json:"agent_id"`
		} `json:"agents"`
	}
	if err := json.Unmarshal(out.Bytes(), &st); err != nil || st.NodeID != "solo" || len(st.Agents) != 1 || st.Agents[0].AgentID != a.ID() {
		t.Fatalf("--json: %q: %v", out.String(), err)
	}
}

// In a 2-node cluster, a node that relays to the other's agent lists the
// endpoint under the other node, and the other node as a member with a
// relay connection.
func TestStatusCluster(t *testing.T) {
	c := edgetest.NewCluster(t, 2)
	n0, n1 := c.Nodes[0], c.Nodes[1]
	a := n0.NewAgent(t, func(c *agent.Config) { c.Connections = 1 }) // node-0 only
	if err := a.ServeUpstream(t.Context(), "web", quicutil.KindHTTP, upstream(t)); err != nil {
		t.Fatal(err)
	}
	n1.WaitRemote(t, "web", 1)
	get(t, n1, "web") // relayed to node-0: node-1 dials its relay

	head, rows := status(t, n1.AdminURL, "endpoints")
	if head != "node node-1: 1 endpoint" {
		t.Errorf("endpoints header = %q", head)
	}
	checkRows(t, "endpoints", rows,
		[]string{"ENDPOINT", "PROTOCOL", "LOCAL AGENTS", "OTHER NODES", "IN FLIGHT"},
		[]string{"web", "http", "-", "node-0", "0"},
	)

	head, rows = status(t, n1.AdminURL, "members")
	if head != "node node-1: 2 members of its cluster" {
		t.Errorf("members header = %q", head)
	}
	addr := `127\.0\.0\.1:\d+`
	checkRows(t, "members", rows,
		[]string{"NODE", "STATE", "DRAINING", "RELAY ADDR", "ENDPOINTS", "AGENT LINKS", "ROUTED", "RELAY", "RTT"},
		[]string{"node-1 \\(this node\\)", "alive", "no", addr, "0", "0", "yes", "-", "-"},
		[]string{"node-0", "alive", "no", addr, "1", "1", "yes", "connected", `[\d.]+ms`},
	)

	head, rows = status(t, n0.AdminURL, "agents")
	if head != "node node-0: 1 agent link (auth: none)" || len(rows) != 2 || rows[1][1] != a.ID() || rows[1][2] != "pico-agent" || rows[1][3] != "web/http" {
		t.Errorf("agents of node-0: %q %q", head, rows)
	}
	if head, rows := status(t, n1.AdminURL, "agents"); head != "node node-1: 0 agent links (auth: none)" || len(rows) != 0 {
		t.Errorf("agents of node-1: %q %q, want none", head, rows)
	}
}

// Each failure says what went wrong and where.
func TestStatusErrors(t *testing.T) {
	serve := func(code int, body string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(code)
			io.WriteString(w, body)
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	notFound := serve(http.StatusNotFound, "404 page not found\n")
	html := serve(http.StatusOK, "<html>pico</html>")
	other := serve(http.StatusOK, `{"status": "ok"}`)
	for name, tc := range map[string]struct {
		admin string
		json  bool
		want  []string
	}{
		"unreachable": {closed, false, []string{"cannot reach the admin API at http://" + closed + ":", "connection refused",
			"admin port (--admin-addr, :8002 by default) must be reachable from here", "--admin URL or PICO_ADMIN"}},
		"not found": {notFound + "/", false, []string{"GET " + notFound + "/status/members: 404 Not Found: 404 page not found",
			"Is " + notFound + " the admin port of pico-edge (--admin-addr), not its proxy port?"}},
		"not JSON":         {html, false, []string{"GET " + html + "/status/members: the answer is not the admin API's JSON (invalid character '<'"}},
		"not JSON, --json": {html, true, []string{"GET " + html + "/status/members: the answer is not the admin API's JSON (invalid JSON)"}},
		"other JSON":       {other, false, []string{"the answer is not the admin API's JSON (no node_id)"}},
	} {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			err := (&StatusCmd{Admin: tc.admin, JSON: tc.json, Timeout: 5 * time.Second}).run(&out, "members", time.Now())
			if err == nil {
				t.Fatalf("no error; printed %q", out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if out.Len() != 0 {
				t.Errorf("printed %q before failing", out.String())
			}
		})
	}
}

// pico-edge status takes its subcommand, --admin (or PICO_ADMIN) and
// --json; the admin URL defaults to the local admin port.
func TestStatusCommand(t *testing.T) {
	parse := func(args ...string) (string, *CLI) {
		t.Helper()
		var c CLI
		p, err := newParser(&c)
		if err != nil {
			t.Fatal(err)
		}
		kctx, err := p.Parse(args)
		if err != nil {
			t.Fatalf("parse %q: %v", args, err)
		}
		return kctx.Command(), &c
	}
	if cmd, c := parse("status", "members"); cmd != "status members" || c.Status.Admin != "http://127.0.0.1:8002" || c.Status.JSON {
		t.Errorf("status members: %q %+v", cmd, c.Status)
	}
	if cmd, c := parse("status", "agents", "--admin", "http://10.0.0.1:8002", "--json"); cmd != "status agents" || c.Status.Admin != "http://10.0.0.1:8002" || !c.Status.JSON {
		t.Errorf("status agents --admin --json: %q %+v", cmd, c.Status)
	}
	t.Setenv("PICO_ADMIN", "http://10.0.0.2:8002")
	if cmd, c := parse("status", "endpoints"); cmd != "status endpoints" || c.Status.Admin != "http://10.0.0.2:8002" {
		t.Errorf("status endpoints with PICO_ADMIN: %q %+v", cmd, c.Status)
	}
}

// Ages are short: two units at most.
func TestAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                      "0s",
		42*time.Second + time.Millisecond: "42s",
		2*time.Minute + 5*time.Second:     "2m5s",
		3*time.Hour + 12*time.Minute:      "3h12m",
		50*time.Hour + 59*time.Minute:     "2d2h",
	} {
		if got := age(d); got != want {
			t.Errorf("age(%s) = %q, want %q", d, got, want)
		}
	}
}
