package deploy

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// promqlMetricNames returns the metric names an expression selects, in
// order of appearance, without duplicates. It is a tokenizer, not a
// parser: it skips strings, comments, label matchers ({...}, whose
// __name__="x" it does read), ranges and subqueries ([...]), numbers and
// durations, Grafana variables ($x, ${x}), function and aggregation names
// (an identifier before "("), the label lists after by, without, on,
// ignoring, group_left and group_right, and keywords. Brackets must
// balance. Grafana's label_values(metric, label) selects metric.
func promqlMetricNames(expr string) ([]string, error) {
	var names []string
	add := func(n string) {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if m := regexp.MustCompile(`^\s*label_values\(\s*([^,()]+?)\s*,\s*[a-zA-Z_]\w*\s*\)\s*$`).FindStringSubmatch(expr); m != nil {
		return promqlMetricNames(m[1])
	}
	keywords := map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"inf": true, "nan": true, "atan2": true}
	labelLists := map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
	var stack []byte // open brackets: ( only; {} and [] are skipped whole
	s := expr
	i := 0
	skipString := func() error {
		q := s[i]
		for i++; i < len(s); i++ {
			switch {
			case s[i] == '\\' && q != '`':
				i++
			case s[i] == q:
				i++
				return nil
			}
		}
		return fmt.Errorf("unterminated string in %q", expr)
	}
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	nextNonSpace := func(j int) byte {
		for ; j < len(s); j++ {
			if s[j] != ' ' && s[j] != '\t' && s[j] != '\n' && s[j] != '\r' {
				return s[j]
			}
		}
		return 0
	}
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			if err := skipString(); err != nil {
				return nil, err
			}
		case c == '{':
			// Label matchers: skip to the closing brace, reading __name__.
			start := i
			for i++; i < len(s) && s[i] != '}'; {
				if s[i] == '"' || s[i] == '\'' || s[i] == '`' {
					if err := skipString(); err != nil {
						return nil, err
					}
					continue
				}
				if s[i] == '{' {
					return nil, fmt.Errorf("nested { at %d in %q", i, expr)
				}
				i++
			}
			if i == len(s) {
				return nil, fmt.Errorf("unclosed { in %q", expr)
			}
			i++
			if m := regexp.MustCompile(`__name__\s*=\s*"([^"]+)"`).FindStringSubmatch(s[start:i]); m != nil {
				add(m[1])
			}
		case c == '[':
			j := strings.IndexByte(s[i:], ']')
			if j < 0 {
				return nil, fmt.Errorf("unclosed [ in %q", expr)
			}
			i += j + 1
		case c == '}' || c == ']':
			return nil, fmt.Errorf("unbalanced %c at %d in %q", c, i, expr)
		case c == '(':
			stack = append(stack, c)
			i++
		case c == ')':
			if len(stack) == 0 {
				return nil, fmt.Errorf("unbalanced ) at %d in %q", i, expr)
			}
			stack = stack[:len(stack)-1]
			i++
		case c == '$':
			// A Grafana variable: $name or ${name...}.
			i++
			if i < len(s) && s[i] == '{' {
				j := strings.IndexByte(s[i:], '}')
				if j < 0 {
					return nil, fmt.Errorf("unclosed ${ in %q", expr)
				}
				i += j + 1
			} else {
				for i < len(s) && isIdent(s[i]) {
					i++
				}
			}
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			// A number (1, 0.5, 1e3, 0x1f) or a duration (5m, 1h30m).
			for i < len(s) && (isIdent(s[i]) || s[i] == '.' || (s[i] == '+' || s[i] == '-') && (s[i-1] == 'e' || s[i-1] == 'E')) {
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word := s[i:j]
			i = j
			lower := strings.ToLower(word)
			switch {
			case labelLists[lower]:
				if nextNonSpace(i) == '(' {
					k := strings.IndexByte(s[i:], ')')
					if k < 0 {
						return nil, fmt.Errorf("unclosed label list after %s in %q", word, expr)
					}
					i += k + 1
				} else {
					add(word) // not a grouping: a metric of that name
				}
			case keywords[lower]:
			case nextNonSpace(i) == '(':
				// a function or an aggregation
			case regexp.MustCompile(`^\s+(?i:by|without)\s*\(`).MatchString(s[i:]):
				// an aggregation with its grouping first: sum by (le) (...)
			default:
				add(word)
			}
		default:
			i++ // operators, commas, @
		}
	}
	if len(stack) > 0 {
		return nil, fmt.Errorf("unclosed ( in %q", expr)
	}
	return names, nil
}

func TestPromQLMetricNames(t *testing.T) {
	for name, tc := range map[string]struct {
		expr string
		want []string
		err  bool
	}{
		"bare metric":           {expr: "up", want: []string{"up"}},
		"matchers skipped":      {expr: `pico_requests_total{code=~"5xx|error", proto!="http1"}`, want: []string{"pico_requests_total"}},
		"brace in a label":      {expr: `foo{a="}{", b='x"y'}`, want: []string{"foo"}},
		"escaped quote":         {expr: `foo{a="\"bar baz\" qux"} + quux`, want: []string{"foo", "quux"}},
		"functions and by":      {expr: `histogram_quantile(0.99, sum by (le, instance) (rate(x_bucket[5m])))`, want: []string{"x_bucket"}},
		"without first":         {expr: `max without (instance) (a)`, want: []string{"a"}},
		"metric named by":       {expr: `by + without`, want: []string{"by", "without"}},
		"by after":              {expr: `sum(rate(a_total[5m])) by (le) / ignoring(code) group_left(proto) b`, want: []string{"a_total", "b"}},
		"keywords":              {expr: `a and b or c unless d > bool 1`, want: []string{"a", "b", "c", "d"}},
		"offset and durations":  {expr: `rate(a[1h30m] offset 5m) > 1e-3 * 0x1f`, want: []string{"a"}},
		"subquery":              {expr: `max_over_time(rate(a[5m])[1h:30s])`, want: []string{"a"}},
		"grafana variables":     {expr: `sum(rate(a{instance=~"$instance"}[$__rate_interval])) * ${factor} / $__interval_ms`, want: []string{"a"}},
		"__name__":              {expr: `{__name__="pico_agents", instance="x"}`, want: []string{"pico_agents"}},
		"recording rule":        {expr: `pico:requests:rate5m > 0`, want: []string{"pico:requests:rate5m"}},
		"inf nan":               {expr: `a > Inf or b < NaN`, want: []string{"a", "b"}},
		"clamp_min":             {expr: `a / clamp_min(b, 1)`, want: []string{"a", "b"}},
		"label_values":          {expr: `label_values(pico_cluster_members, instance)`, want: []string{"pico_cluster_members"}},
		"comment":               {expr: "a # b\n+ c", want: []string{"a", "c"}},
		"duplicates once":       {expr: `a + a`, want: []string{"a"}},
		"unclosed paren":        {expr: `sum(rate(a[5m])`, err: true},
		"unclosed brace":        {expr: `a{b="c"`, err: true},
		"unclosed string":       {expr: `a{b="c}`, err: true},
		"stray close":           {expr: `a)`, err: true},
		"unclosed range":        {expr: `rate(a[5m)`, err: true},
		"function without args": {expr: `time() - process_start_time_seconds`, want: []string{"process_start_time_seconds"}},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := promqlMetricNames(tc.expr)
			if tc.err {
				if err == nil {
					t.Errorf("promqlMetricNames(%q) = %v, want an error", tc.expr, got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("promqlMetricNames(%q) = %v, %v; want %v", tc.expr, got, err, tc.want)
			}
		})
	}
}

// parseExposition reads the Prometheus text exposition format (0.0.4) and
// returns the names of its samples. A line that is not a comment, a blank
// line or a well-formed sample (name, optional labels, a float value, an
// optional integer timestamp) is an error.
func parseExposition(r io.Reader) (map[string]bool, error) {
	names := map[string]bool{}
	nameRe := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*`)
	labelRe := regexp.MustCompile(`^\s*[a-zA-Z_][a-zA-Z0-9_]*\s*=\s*"(?:[^"\\]|\\.)*"\s*(,|$)`)
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name := nameRe.FindString(line)
		if name == "" {
			return nil, fmt.Errorf("line %d: no metric name: %q", n, line)
		}
		rest := line[len(name):]
		if strings.HasPrefix(rest, "{") {
			end := -1
			for j, inStr := 1, false; j < len(rest); j++ {
				switch {
				case inStr && rest[j] == '\\':
					j++
				case rest[j] == '"':
					inStr = !inStr
				case !inStr && rest[j] == '}':
					end = j
				}
				if end >= 0 {
					break
				}
			}
			if end < 0 {
				return nil, fmt.Errorf("line %d: unclosed labels: %q", n, line)
			}
			for labels := rest[1:end]; strings.TrimSpace(labels) != ""; {
				m := labelRe.FindString(labels)
				if m == "" {
					return nil, fmt.Errorf("line %d: bad label pair in %q", n, line)
				}
				labels = labels[len(m):]
			}
			rest = rest[end+1:]
		}
		f := strings.Fields(rest)
		if len(f) < 1 || len(f) > 2 || !strings.HasPrefix(rest, " ") {
			return nil, fmt.Errorf("line %d: want NAME[{LABELS}] VALUE [TIMESTAMP]: %q", n, line)
		}
		if _, err := strconv.ParseFloat(f[0], 64); err != nil && f[0] != "+Inf" && f[0] != "-Inf" && f[0] != "NaN" {
			return nil, fmt.Errorf("line %d: value %q: %v", n, f[0], err)
		}
		if len(f) == 2 {
			if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
				return nil, fmt.Errorf("line %d: timestamp %q: %v", n, f[1], err)
			}
		}
		names[name] = true
	}
	return names, sc.Err()
}

func TestParseExposition(t *testing.T) {
	good := "# HELP a_total A.\n# TYPE a_total counter\na_total 3\nb{x=\"1\",y=\"a\\\"}b\"} 0.5 1700000000000\n" +
		"h_bucket{le=\"+Inf\"} 2\nh_sum 1e-3\nh_count 2\nnan_metric NaN\n\n"
	got, err := parseExposition(strings.NewReader(good))
	if want := []string{"a_total", "b", "h_bucket", "h_count", "h_sum", "nan_metric"}; err != nil || !slices.Equal(keys(got), want) {
		t.Errorf("parseExposition = %v, %v; want %v", keys(got), err, want)
	}
	for _, bad := range []string{"a", "a{x=\"1\" 2", "a{x=1} 2", "a two", "a 1 2 3", "1a 2", "a{x=\"1\"}2", "a 1 1.5"} {
		if got, err := parseExposition(strings.NewReader(bad + "\n")); err == nil {
			t.Errorf("parseExposition(%q) = %v, want an error", bad, keys(got))
		}
	}
}
