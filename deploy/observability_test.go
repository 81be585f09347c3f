package deploy

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// ---------------------------------------------------------------------------
// Grafana dashboards

const dashboardDir = "grafana"

// dashboardFiles are the dashboards, by what they show.
var dashboardFiles = []string{"pico-edge-overview.json", "pico-agents.json", "pico-cluster.json"}

type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID          int    `json:"id"`
	Type        string `json:"type"`
	Title       string `json:"title"`
	Description string `json:"description"`
	Datasource  *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

func readDashboard(t testing.TB, file string) dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dashboardDir, file))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return d
}

// allPanels returns the panels of d, those inside rows too.
func (d dashboard) allPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// query is one PromQL expression of the dashboards or the rules.
type query struct{ where, expr string }

// observabilityQueries returns every PromQL expression of the dashboards
// (panel targets and variable queries) and of rules.yaml.
func observabilityQueries(t testing.TB) []query {
	t.Helper()
	var out []query
	for _, f := range dashboardFiles {
		d := readDashboard(t, f)
		for _, v := range d.Templating.List {
			if v.Type != "query" {
				continue
			}
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				var s string
				if json.Unmarshal(v.Query, &s) != nil {
					t.Fatalf("%s: variable %s: query %s", f, v.Name, v.Query)
				}
				q.Query = s
			}
			out = append(out, query{fmt.Sprintf("%s variable %s", f, v.Name), q.Query})
		}
		for _, p := range d.allPanels() {
			for _, tg := range p.Targets {
				out = append(out, query{fmt.Sprintf("%s panel %q %s", f, p.Title, tg.RefID), tg.Expr})
			}
		}
	}
	for _, r := range readRules(t, rulesFile).rules() {
		out = append(out, query{fmt.Sprintf("%s %s%s", rulesFile, r.Alert, r.Record), r.Expr})
	}
	return out
}

// TestGrafanaDashboards checks the dashboards' structure: a unique uid and
// a title, the data source as a variable, every panel titled, described
// and inside the 24-column grid, every target with a unique refId and an
// expression that selects at least one metric.
func TestGrafanaDashboards(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(dashboardDir, "*.json"))
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	if !slices.Equal(names, slices.Sorted(slices.Values(dashboardFiles))) {
		t.Errorf("%s holds %v, want %v", dashboardDir, names, dashboardFiles)
	}
	uids := map[string]bool{}
	for _, f := range dashboardFiles {
		d := readDashboard(t, f)
		if d.UID == "" || uids[d.UID] || !strings.HasPrefix(d.Title, "Pico / ") || d.SchemaVersion == 0 {
			t.Errorf("%s: uid %q (unique?), title %q, schemaVersion %d: want a unique uid, a title Pico / ..., a schema version", f, d.UID, d.Title, d.SchemaVersion)
		}
		uids[d.UID] = true
		if !slices.ContainsFunc(d.Templating.List, func(v struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		}) bool {
			return v.Name == "datasource" && v.Type == "datasource"
		}) {
			t.Errorf("%s: no datasource variable", f)
		}
		ids := map[int]bool{}
		n := 0
		for _, p := range d.allPanels() {
			if ids[p.ID] || p.ID == 0 {
				t.Errorf("%s: panel %q: id %d is zero or not unique", f, p.Title, p.ID)
			}
			ids[p.ID] = true
			if p.GridPos.X < 0 || p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H <= 0 {
				t.Errorf("%s: panel %q: gridPos %+v outside the 24 columns", f, p.Title, p.GridPos)
			}
			if p.Type == "row" {
				continue
			}
			n++
			if p.Title == "" || p.Description == "" || p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
				t.Errorf("%s: panel %d %q: want a title, a description, the ${datasource} data source and targets", f, p.ID, p.Title)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if refs[tg.RefID] || tg.RefID == "" {
					t.Errorf("%s: panel %q: refId %q empty or repeated", f, p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
				if names, err := promqlMetricNames(tg.Expr); err != nil || len(names) == 0 {
					t.Errorf("%s: panel %q %s: %q selects no metric (%v)", f, p.Title, tg.RefID, tg.Expr, err)
				}
			}
		}
		if n < 5 {
			t.Errorf("%s: %d panels, want at least 5", f, n)
		}
	}
}

// TestGrafanaDashboardsDocumented checks that docs/observability.md names
// each dashboard (its title and file) and each of its panels.
func TestGrafanaDashboardsDocumented(t *testing.T) {
	b, err := os.ReadFile("../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, f := range dashboardFiles {
		d := readDashboard(t, f)
		if !strings.Contains(doc, d.Title) || !strings.Contains(doc, "deploy/grafana/"+f) {
			t.Errorf("docs/observability.md does not name the dashboard %q (deploy/grafana/%s)", d.Title, f)
		}
		for _, p := range d.allPanels() {
			if p.Type != "row" && !strings.Contains(doc, "**"+p.Title+"**") {
				t.Errorf("docs/observability.md does not describe panel **%s** of %s", p.Title, f)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Live nodes: two pico-edge nodes and a pico-agent, as the Dockerfile
// builds them, on 127.0.0.1

type liveEdge struct {
	*logged
	id, admin, proxy, agent, gossip string
}

type liveCluster struct {
	edges      []*liveEdge
	agent      *logged
	agentAdmin string
	client     *http.Client
}

// startLiveCluster starts two clustered edge nodes (one cluster secret, one
// development CA), an HTTP upstream, and pico-agent serving endpoint web
// with its admin API linked to node 1 alone (node 2 relays to it), and
// waits until both nodes route web.
func startLiveCluster(t *testing.T) *liveCluster {
	t.Helper()
	dir := binaries(t)
	env := []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
	secret := filepath.Join(t.TempDir(), "cluster.key")
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(secret, []byte(base64.StdEncoding.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &liveCluster{}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	dirs := []string{t.TempDir(), t.TempDir()}
	for i, d := range dirs {
		// A short stream idle timeout ends idle relayed keep-alive streams
		// soon, and with them come the relayed byte counts.
		args := []string{"--node-id=edge-" + fmt.Sprint(i+1), "--data-dir=" + d, "--cluster-secret-file=" + secret, "--log-format=json",
			"--stream-idle-timeout=1s"}
		for _, l := range listeners {
			args = append(args, l.flag+"=127.0.0.1:0")
		}
		if i > 0 {
			// One development CA: the agent verifies both nodes with it.
			for _, f := range []string{"ca.pem", "ca-key.pem"} {
				b, err := os.ReadFile(filepath.Join(dirs[0], f))
				if err != nil {
					t.Fatal(err)
				}
				os.WriteFile(filepath.Join(d, f), b, 0o600)
			}
			args = append(args, "--join="+c.edges[0].gossip)
		}
		l := startLogged(t, filepath.Join(dir, "pico-edge"), env, args...)
		ready := l.waitJSON(t, "edge node ready")
		member := l.waitJSON(t, "cluster member started")
		e := &liveEdge{logged: l, id: fmt.Sprint(ready["node_id"])}
		e.admin, _ = ready["admin_addr"].(string)
		e.proxy, _ = ready["proxy_addr"].(string)
		e.agent, _ = ready["agent_addr"].(string)
		e.gossip, _ = member["gossip_addr"].(string)
		if e.admin == "" || e.proxy == "" || e.agent == "" || e.gossip == "" {
			t.Fatalf("edge %d: ready %v, member %v: want admin, proxy, agent and gossip addresses", i+1, ready, member)
		}
		c.edges = append(c.edges, e)
	}

	upstream := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }),
		ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go upstream.Serve(ln)
	t.Cleanup(func() { upstream.Close() })
	c.agent = startLogged(t, filepath.Join(dir, "pico-agent"), env, "--edge="+c.edges[0].agent, "--ca="+filepath.Join(dirs[0], "ca.pem"),
		"--connections=1", "--admin-addr=127.0.0.1:0", "--log-format=json", "http", "web", ln.Addr().String())
	line := c.agent.waitLine(t, "admin API on http://")
	c.agentAdmin, _, _ = strings.Cut(strings.TrimPrefix(line[strings.Index(line, "admin API on http://"):], "admin API on http://"), ": ")
	c.agent.waitLine(t, "endpoint web (http) is registered")
	for _, e := range c.edges {
		deadline := time.Now().Add(30 * time.Second)
		for c.get(e) != http.StatusOK {
			if time.Now().After(deadline) {
				t.Fatalf("%s does not route endpoint web within 30s", e.id)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// get sends GET / for endpoint web to e's front door and returns the
// status, 0 on a transport error.
func (c *liveCluster) get(e *liveEdge) int {
	req, _ := http.NewRequest("GET", "http://"+e.proxy+"/", nil)
	req.Header.Set("X-Pico-Endpoint", "web")
	resp, err := c.client.Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// scrape GETs http://addr/metrics and returns the sample names.
func (c *liveCluster) scrape(t testing.TB, addr string) map[string]bool {
	t.Helper()
	resp, err := c.client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: status %d", addr, resp.StatusCode)
	}
	names, err := parseExposition(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	return names
}

// TestObservabilityMetricsExist runs two edge nodes and an agent with
// traffic through each node (so through the relay too), scrapes their
// /metrics, and fails on any metric a dashboard or a rule names that none
// of them exports (a histogram exports NAME_bucket, _sum and _count, never
// NAME) and on any recorded series rules.yaml does not record.
func TestObservabilityMetricsExist(t *testing.T) {
	c := startLiveCluster(t)
	for range 5 {
		for _, e := range c.edges {
			if s := c.get(e); s != http.StatusOK {
				t.Fatalf("GET through %s: %d", e.id, s)
			}
		}
	}
	// Relayed bytes are counted when a relayed stream ends: an idle
	// keep-alive one after --stream-idle-timeout.
	c.client.CloseIdleConnections()
	var exported map[string]bool
	for deadline := time.Now().Add(15 * time.Second); ; {
		exported = map[string]bool{}
		for _, addr := range []string{c.edges[0].admin, c.edges[1].admin, c.agentAdmin} {
			for n := range c.scrape(t, addr) {
				exported[n] = true
			}
		}
		if exported["pico_relay_peer_bytes_total"] || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, want := range []string{"pico_requests_total", "pico_relay_peer_streams_total", "pico_relay_peer_bytes_total", "pico_agent_links", "pico_upstream_ttfb_seconds_bucket"} {
		if !exported[want] {
			t.Fatalf("the nodes export no %s: the traffic did not happen as planned; exported: %v", want, keys(exported))
		}
	}
	recorded := map[string]bool{}
	for _, r := range readRules(t, rulesFile).rules() {
		if r.Record != "" {
			recorded[r.Record] = true
		}
	}
	used := map[string]bool{}
	for _, q := range observabilityQueries(t) {
		names, err := promqlMetricNames(q.expr)
		if err != nil {
			t.Errorf("%s: %v", q.where, err)
			continue
		}
		for _, n := range names {
			used[n] = true
			switch {
			case strings.Contains(n, ":"):
				if !recorded[n] {
					t.Errorf("%s: %s is recorded by no rule of %s", q.where, n, rulesFile)
				}
			case !exported[n]:
				t.Errorf("%s: no node or agent exports %s (in %q)", q.where, n, q.expr)
			}
		}
	}
	t.Logf("%d metric names used by the dashboards and rules, %d exported", len(used), len(exported))
}
