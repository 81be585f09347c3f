package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// runMainEnv makes the test binary run main with its arguments (TestMain).
const runMainEnv = "PICO_TEST_RUN_MAIN"

// runMain runs pico-agent's main in a process of its own with args, and
// returns its exit code and stderr.
func runMain(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1", "XDG_DATA_HOME="+t.TempDir())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run %q: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// A bad flag, value or argument is one line on stderr and exit code 1, as
// docs/agent.md says: no usage dump.
func TestErrorsAreOneLine(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want []string
	}{
		"missing --ca file": {[]string{"--ca", "nope.pem", "http", "foo", "3000"}, []string{"pico-agent: --ca:", "nope.pem: no such file", "see 'pico-agent --help'"}},
		"missing argument":  {[]string{"http"}, []string{`expected "<ENDPOINT UPSTREAM> ..."`, "see 'pico-agent http --help'"}},
		"unknown flag":      {[]string{"tcp", "db", "5432", "--bogus"}, []string{"unknown flag --bogus", "see 'pico-agent tcp --help'"}},
		"bad enum":          {[]string{"--transport", "udp", "http", "foo", "3000"}, []string{"--transport", `"udp"`}},
		"negative value":    {[]string{"--connections", "-1", "http", "foo", "3000"}, []string{"pico-agent: ", "-1 connections"}},
		"bad endpoint":      {[]string{"--admin-addr=", "http", "Foo", "3000"}, []string{"pico-agent: ", `"Foo"`}},
		"tls with a scheme": {[]string{"--admin-addr=", "tls", "sec", "https://localhost:8443"}, []string{"pico-agent: endpoint sec: tls endpoints take a plain host:port upstream"}},
		"tls with a flag":   {[]string{"--admin-addr=", "tls", "sec", "8443", "--upstream-server-name", "x"}, []string{"tls endpoints take a plain host:port upstream, without --upstream-* flags"}},
	} {
		t.Run(name, func(t *testing.T) {
			code, stderr := runMain(t, tc.args...)
			if code != 1 {
				t.Errorf("exit code %d, want 1; stderr:\n%s", code, stderr)
			}
			if lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n"); len(lines) != 1 {
				t.Errorf("stderr has %d lines, want one:\n%s", len(lines), stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not say %q", stderr, w)
				}
			}
		})
	}
}
