package deploy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

const (
	rulesFile     = "prometheus/rules.yaml"
	rulesTestFile = "prometheus/rules_test.yaml"
)

// ruleFile is a Prometheus rule file.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []rule `json:"rules"`
	} `json:"groups"`
}

type rule struct {
	Record      string            `json:"record,omitempty"`
	Alert       string            `json:"alert,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func readRules(t testing.TB, path string) ruleFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f
}

func (f ruleFile) rules() []rule {
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// promtool returns the path of promtool, or skips t.
func promtool(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not in PATH (Debian: apt-get install prometheus): the rules are not checked")
	}
	return p
}

func runTool(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestPrometheusRulesCheck runs `promtool check rules` on rules.yaml: the
// file parses, every expression is valid PromQL, every template expands.
func TestPrometheusRulesCheck(t *testing.T) {
	out := runTool(t, ".", promtool(t), "check", "rules", rulesFile)
	if n := len(readRules(t, rulesFile).rules()); !strings.Contains(out, fmt.Sprintf("SUCCESS: %d rules found", n)) {
		t.Errorf("promtool check rules: want %d rules found:\n%s", n, out)
	}
}

// TestPrometheusRulesUnit runs the unit tests of the rules,
// `promtool test rules rules_test.yaml`.
func TestPrometheusRulesUnit(t *testing.T) {
	out := runTool(t, "prometheus", promtool(t), "test", "rules", filepath.Base(rulesTestFile))
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules:\n%s", out)
	}
}

// rulesTest is the part of a promtool unit-test file this test reads.
type rulesTest struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		Name          string `json:"name"`
		AlertRuleTest []struct {
			AlertName string           `json:"alertname"`
			ExpAlerts []map[string]any `json:"exp_alerts"`
		} `json:"alert_rule_test"`
		PromQLExprTest []struct {
			Expr string `json:"expr"`
		} `json:"promql_expr_test"`
	} `json:"tests"`
}

// TestPrometheusRulesAllTested checks that the unit tests cover every rule:
// each alert is seen firing and seen quiet, each recording rule evaluated.
func TestPrometheusRulesAllTested(t *testing.T) {
	b, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var rt rulesTest
	if err := yaml.Unmarshal(b, &rt); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rt.RuleFiles, []string{filepath.Base(rulesFile)}) {
		t.Errorf("rule_files %v, want [%s]", rt.RuleFiles, filepath.Base(rulesFile))
	}
	firing, quiet, evaluated := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, tc := range rt.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				firing[a.AlertName] = true
			} else {
				quiet[a.AlertName] = true
			}
		}
		for _, e := range tc.PromQLExprTest {
			evaluated[strings.TrimSpace(e.Expr)] = true
		}
	}
	for _, r := range readRules(t, rulesFile).rules() {
		switch {
		case r.Alert != "" && (!firing[r.Alert] || !quiet[r.Alert]):
			t.Errorf("alert %s: tested firing %v, tested quiet %v; want both in %s", r.Alert, firing[r.Alert], quiet[r.Alert], rulesTestFile)
		case r.Record != "" && !evaluated[r.Record]:
			t.Errorf("recording rule %s: no promql_expr_test in %s", r.Record, rulesTestFile)
		case r.Alert != "" && r.Labels["severity"] == "":
			t.Errorf("alert %s has no severity label", r.Alert)
		}
	}
}

// TestPrometheusRulesDocumented checks that docs/observability.md shows
// the alerts of rules.yaml, no more and no fewer, with the same
// expressions and for durations.
func TestPrometheusRulesDocumented(t *testing.T) {
	b, err := os.ReadFile("../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := map[string]rule{}
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(b, -1) {
		if !strings.Contains(string(m[1]), "alert:") {
			continue
		}
		var rules []rule
		block := string(m[1])
		var f ruleFile
		if yaml.Unmarshal([]byte(block), &f) == nil && len(f.Groups) > 0 {
			rules = f.rules()
		} else if err := yaml.Unmarshal([]byte(block), &rules); err != nil {
			t.Fatalf("docs/observability.md: an alert block that is no rule file nor list of rules: %v\n%s", err, block)
		}
		for _, r := range rules {
			if r.Alert != "" {
				doc[r.Alert] = r
			}
		}
	}
	space := regexp.MustCompile(`\s+`)
	rules := map[string]rule{}
	for _, r := range readRules(t, rulesFile).rules() {
		if r.Alert == "" {
			continue
		}
		rules[r.Alert] = r
		d, ok := doc[r.Alert]
		if !ok {
			t.Errorf("alert %s of %s is not in docs/observability.md", r.Alert, rulesFile)
			continue
		}
		if space.ReplaceAllString(d.Expr, " ") != space.ReplaceAllString(r.Expr, " ") || d.For != r.For {
			t.Errorf("alert %s: the doc has %q for %q, %s has %q for %q", r.Alert, d.Expr, d.For, rulesFile, r.Expr, r.For)
		}
	}
	for name := range doc {
		if _, ok := rules[name]; !ok {
			t.Errorf("docs/observability.md shows alert %s, which %s lacks", name, rulesFile)
		}
	}
}
