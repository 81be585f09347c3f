package e2e

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeSDK returns the Go program of the README's "The Go SDK" section.
func readmeSDK(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## The Go SDK\n")
	if !ok {
		t.Fatal(`README.md has no "## The Go SDK" section`)
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	_, code, ok := strings.Cut(sec, "\n```go\n")
	if !ok {
		t.Fatal("the README's Go SDK section has no ```go block")
	}
	code, _, ok = strings.Cut(code, "\n```\n")
	if !ok {
		t.Fatal("the README's Go SDK block does not end")
	}
	return code + "\n"
}

// TestReadmeSDK builds the README's SDK program as written and runs it
// against a development edge: it finds the development CA by itself and
// serves its endpoint; without that CA it exits at once with the error and
// the hint pico-agent gives, instead of waiting silently.
func TestReadmeSDK(t *testing.T) {
	e2e(t)
	code := readmeSDK(t)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// A directory of the module (dot-named: ./... skips it), so that the
	// program builds against this checkout's agent package.
	src, err := os.MkdirTemp(root, ".readme-sdk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(src) })
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(t.TempDir(), "readme-sdk")
	build := exec.Command("go", "build", "-o", exe, "./"+filepath.Base(src))
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build of the README's program: %v\n%s", err, out)
	}

	xdg := t.TempDir()
	e := startEdgeAt(t, filepath.Join(xdg, "pico")) // pico-edge's default --data-dir under XDG_DATA_HOME
	p := startProcEnv(t, "readme-sdk", []string{"XDG_DATA_HOME=" + xdg}, exe, "-edge", e.agent)
	p.waitLineFor(t, 0, "serving endpoint hello", startTimeout, contains("serving endpoint hello"))
	resp, body := e.request(t, newClient(t, 30*time.Second), "GET", "hello", "/", nil)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(body, "hello from Go, ") {
		t.Fatalf("GET through the edge: %d %q; want 200 hello from Go", resp.StatusCode, body)
	}

	// SIGTERM: it withdraws the endpoint and exits once nothing is in flight.
	p.signal(t, syscall.SIGTERM)
	if st := p.waitExit(t, startTimeout); !st.Success() {
		t.Errorf("after SIGTERM: %s; want exit 0", st)
	}
	e.waitEndpointAgents(t, "hello", 0, waitTimeout)

	t.Run("without the development CA it says why at once", func(t *testing.T) {
		q := startProcEnv(t, "readme-sdk without CA", []string{"XDG_DATA_HOME=" + t.TempDir()}, exe, "-edge", e.agent)
		// The bound only catches a hang: the program has no deadline of its own.
		st := q.waitExit(t, startTimeout)
		out := strings.Join(q.output(), "\n")
		if st.Success() {
			t.Fatalf("exited with success:\n%s", out)
		}
		for _, want := range []string{"certificate signed by unknown authority", "--ca FILE"} {
			if !slices.ContainsFunc(q.output(), func(l string) bool { return strings.Contains(l, want) }) {
				t.Errorf("its output lacks %q:\n%s", want, out)
			}
		}
	})
}
