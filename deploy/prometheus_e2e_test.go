package deploy

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// promServer is a prometheus process started by a test.
type promServer struct {
	*logged
	addr   string
	client *http.Client
}

// promSample is one sample of an instant vector.
type promSample struct {
	Metric map[string]string
	Value  float64
}

// query runs an instant query and returns its vector; an error of the API
// fails the test.
func (p *promServer) query(t testing.TB, q string) []promSample {
	t.Helper()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	p.get(t, "/api/v1/query?query="+url.QueryEscape(q), &r)
	if r.Status != "success" {
		t.Fatalf("query %s: %s %s", q, r.Status, r.Error)
	}
	var out []promSample
	for _, s := range r.Data.Result {
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			t.Fatalf("query %s: value %v: %v", q, s.Value, err)
		}
		out = append(out, promSample{s.Metric, v})
	}
	return out
}

func (p *promServer) get(t testing.TB, path string, v any) {
	t.Helper()
	resp, err := p.client.Get("http://" + p.addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: status %d: %v", path, resp.StatusCode, err)
	}
}

// alertRule is a rule of /api/v1/rules.
type alertRule struct {
	Name   string `json:"name"`
	Type   string `json:"type"`
	State  string `json:"state"` // alerts: inactive, pending, firing
	Health string `json:"health"`
	Error  string `json:"lastError"`
}

func (p *promServer) rules(t testing.TB) map[string]alertRule {
	t.Helper()
	var r struct {
		Data struct {
			Groups []struct {
				Rules []alertRule `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	p.get(t, "/api/v1/rules", &r)
	out := map[string]alertRule{}
	for _, g := range r.Data.Groups {
		for _, rl := range g.Rules {
			out[rl.Name] = rl
		}
	}
	return out
}

// eventually polls cond every 200 ms until it holds, failing after d.
func eventually(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s; last: %s", what, d, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPrometheusScrapesCluster runs a real Prometheus (Debian's prometheus
// binary) on 127.0.0.1 with rules.yaml, whose alerts' for is shortened to
// 2s, scraping two edge nodes and an agent every second. It checks: every
// target is up; every rule evaluates without error on the real series;
// after 10 requests through each of the two nodes, Prometheus sees each
// node's 2xx counter 10 higher, the agent's links, and the recorded
// request rate above 0; PicoNoAgents is inactive, then fires
// once the agent is killed (SIGKILL: the nodes notice its links are gone
// after the QUIC idle timeout).
func TestPrometheusScrapesCluster(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not in PATH (Debian: apt-get install prometheus): no real Prometheus to scrape the nodes")
	}
	c := startLiveCluster(t)

	dir := t.TempDir()
	rules := readRules(t, rulesFile)
	for gi := range rules.Groups {
		for ri := range rules.Groups[gi].Rules {
			if r := &rules.Groups[gi].Rules[ri]; r.For != "" {
				r.For = "2s"
			}
		}
	}
	rb, err := yaml.Marshal(rules)
	if err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
rule_files: [rules.yaml]
scrape_configs:
  - job_name: pico-edge
    static_configs: [{targets: [%q, %q]}]
  - job_name: pico-agent
    static_configs: [{targets: [%q]}]
`, c.edges[0].admin, c.edges[1].admin, c.agentAdmin)
	for name, b := range map[string][]byte{"rules.yaml": rb, "prometheus.yml": []byte(config)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := &promServer{addr: addr, client: c.client}
	p.logged = startLogged(t, bin, []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()},
		"--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	eventually(t, 60*time.Second, "ready Prometheus", func() (bool, string) {
		resp, err := p.client.Get("http://" + addr + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	eventually(t, 30*time.Second, "three targets up", func() (bool, string) {
		up := p.query(t, "up == 1")
		return len(up) == 3, fmt.Sprint(up)
	})

	// Counters before the traffic: the first scrapes came after the
	// cluster's own readiness requests, so nothing else moves them.
	perNode := func() map[string]float64 {
		out := map[string]float64{}
		for _, s := range p.query(t, `sum by (instance) (pico_requests_total{job="pico-edge",code="2xx"})`) {
			out[s.Metric["instance"]] = s.Value
		}
		return out
	}
	var before map[string]float64
	eventually(t, 30*time.Second, "request counters of both nodes", func() (bool, string) {
		before = perNode()
		return len(before) == 2, fmt.Sprint(before)
	})
	const n = 10
	for range n {
		for _, e := range c.edges {
			if s := c.get(e); s != http.StatusOK {
				t.Fatalf("GET through %s: %d", e.id, s)
			}
		}
	}
	eventually(t, 30*time.Second, fmt.Sprintf("both nodes' 2xx counters %d higher in Prometheus", n), func() (bool, string) {
		after := perNode()
		for inst, v := range before {
			if after[inst] < v+n {
				return false, fmt.Sprintf("before %v, now %v", before, after)
			}
		}
		return true, ""
	})
	// The agent's own metrics, from its admin API (streams carry several
	// keep-alive requests each, so only links are counted here).
	if v := p.query(t, `pico_agent_links{job="pico-agent"} >= 1`); len(v) != 1 {
		t.Errorf("pico_agent_links of the agent: %v, want one series at 1 or more", v)
	}
	eventually(t, 30*time.Second, "a recorded request rate above 0", func() (bool, string) {
		v := p.query(t, `pico:requests:rate5m{proto="http1",code="2xx"} > 0`)
		return len(v) == 1, fmt.Sprint(v)
	})

	// Every rule of rules.yaml evaluates on the real series.
	want := rules.rules()
	eventually(t, 30*time.Second, "every rule evaluated without error", func() (bool, string) {
		got := p.rules(t)
		for _, r := range want {
			name := r.Alert + r.Record
			if g, ok := got[name]; !ok || g.Health != "ok" {
				return false, fmt.Sprintf("%s: %+v", name, g)
			}
		}
		return true, ""
	})
	if s := p.rules(t)["PicoNoAgents"].State; s != "inactive" {
		t.Fatalf("PicoNoAgents is %q with an agent linked, want inactive", s)
	}

	c.agent.cmd.Process.Kill() // by PID
	<-c.agent.exited
	killed := time.Now()
	eventually(t, 60*time.Second, "PicoNoAgents firing after the agent was killed", func() (bool, string) {
		r := p.rules(t)["PicoNoAgents"]
		return r.State == "firing", fmt.Sprintf("%+v, sum(pico_agents) = %v", r, p.query(t, "sum(pico_agents)"))
	})
	t.Logf("PicoNoAgents fired %s after the agent was killed", time.Since(killed).Round(100*time.Millisecond))
	var alerts struct {
		Data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		} `json:"data"`
	}
	p.get(t, "/api/v1/alerts", &alerts)
	found := false
	for _, a := range alerts.Data.Alerts {
		if a.Labels["alertname"] == "PicoNoAgents" && a.State == "firing" && a.Labels["severity"] == "critical" {
			found = true
		}
	}
	if !found {
		t.Errorf("/api/v1/alerts has no firing PicoNoAgents with severity critical: %+v", alerts.Data.Alerts)
	}
}
