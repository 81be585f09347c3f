package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"
)

type testCLI struct {
	Config    ConfigFile    `help:"config file"`
	ProxyAddr string        `default:":8000"`
	AgentAddr string        `default:":8001"`
	Join      []string      `sep:","`
	Grace     time.Duration `default:"30s"`
	Secret    string
	AccessLog bool `default:"true" negatable:""`
}

func parse(t *testing.T, args []string, file string) (*testCLI, error) {
	t.Helper()
	var c testCLI
	p, err := kong.New(&c, kong.DefaultEnvars("PICOTEST"), kong.Exit(func(int) { t.Fatal("exit") }))
	if err != nil {
		t.Fatal(err)
	}
	if file != "" {
		path := filepath.Join(t.TempDir(), "pico.yaml")
		os.WriteFile(path, []byte(file), 0o600)
		args = append([]string{"--config", path}, args...)
	}
	_, err = p.Parse(args)
	return &c, err
}

func TestConfigPrecedence(t *testing.T) {
	file := "proxy-addr: :9000\nagent_addr: :9001\njoin: [a:8003, b:8003]\ngrace: 5s\naccess-log: false\n"
	c, err := parse(t, nil, file)
	if err != nil {
		t.Fatal(err)
	}
	if c.ProxyAddr != ":9000" || c.AgentAddr != ":9001" || strings.Join(c.Join, " ") != "a:8003 b:8003" ||
		c.Grace != 5*time.Second || c.AccessLog {
		t.Fatalf("from the file: %+v", c)
	}
	// The environment wins over the file, the command line over both.
	t.Setenv("PICOTEST_PROXY_ADDR", ":7000")
	t.Setenv("PICOTEST_AGENT_ADDR", ":7001")
	c, err = parse(t, []string{"--agent-addr", ":6001"}, file)
	if err != nil {
		t.Fatal(err)
	}
	if c.ProxyAddr != ":7000" || c.AgentAddr != ":6001" || c.Grace != 5*time.Second {
		t.Fatalf("precedence: %+v", c)
	}
	// No file: defaults.
	os.Unsetenv("PICOTEST_PROXY_ADDR")
	os.Unsetenv("PICOTEST_AGENT_ADDR")
	c, err = parse(t, nil, "")
	if err != nil || c.ProxyAddr != ":8000" || c.Grace != 30*time.Second || !c.AccessLog {
		t.Fatalf("defaults: %+v %v", c, err)
	}
}

func TestConfigExpandsEnvironment(t *testing.T) {
	t.Setenv("PICO_TEST_SECRET", "s3cret")
	c, err := parse(t, nil, "secret: ${PICO_TEST_SECRET}\n")
	if err != nil || c.Secret != "s3cret" {
		t.Fatalf("expansion: %+v %v", c, err)
	}
	_, err = parse(t, nil, "proxy-addr: :1\nsecret: ${PICO_TEST_UNSET_VAR}\n")
	if err == nil || !strings.Contains(err.Error(), "pico.yaml:2:") || !strings.Contains(err.Error(), "PICO_TEST_UNSET_VAR") {
		t.Fatalf("unset variable: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for name, tc := range map[string]struct{ file, want string }{
		"unknown key":    {"proxy-addr: :1\nprox-addr: :2\n", `pico.yaml:2: unknown key "prox-addr"`},
		"config in file": {"config: other.yaml\n", `unknown key "config"`},
		"nested":         {"proxy-addr:\n  port: 1\n", `pico.yaml:2: key "proxy-addr": want a value`},
		"not a mapping":  {"- a\n- b\n", "pico.yaml:1: want a mapping"},
		"duplicate":      {"grace: 1s\ngrace: 2s\n", `pico.yaml:2: key "grace" given twice`},
		"bad value":      {"grace: soon\n", "soon"},
		"bad yaml":       {"proxy-addr: [\n", "pico.yaml"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parse(t, nil, tc.file)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := parse(t, nil, "\n"); err != nil {
		t.Fatalf("empty file: %v", err)
	}
}
