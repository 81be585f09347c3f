package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// versionLine is what --version prints: "pico-edge v0.3.0 (go1.26.1, linux/amd64)".
var versionLine = regexp.MustCompile(`^(pico-edge|pico-agent) (\S+) \((go\S+), (\w+)/(\w+)\)\n$`)

// binVersion runs bin --version, checks the line names bin, this Go and
// this platform, and returns the version in it.
func binVersion(t testing.TB, bin string) string {
	t.Helper()
	out, code := runCmd(t, nil, bin, "--version")
	m := versionLine.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("%s --version: exit %d, %q; want exit 0 and %q", bin, code, out, versionLine)
	}
	if name := strings.TrimSuffix(filepath.Base(bin), ".exe"); m[1] != name {
		t.Errorf("%s --version names %q, want %q", bin, m[1], name)
	}
	if m[3] != runtime.Version() || m[4] != runtime.GOOS || m[5] != runtime.GOARCH {
		t.Errorf("%s --version: %q, want %s, %s/%s", bin, out, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	}
	return m[2]
}

// buildInfoVersion is the version the rule of cli.Version gives for bin,
// from what `go version -m` reads of its build info: the module version,
// else the VCS revision (12 digits, -dirty), else dev.
func buildInfoVersion(t testing.TB, bin string) string {
	t.Helper()
	out, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m %s: %v\n%s", bin, err, out)
	}
	var mod, rev string
	dirty := false
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "mod" && f[1] == "github.com/pico-edge/pico":
			mod = f[2]
		case len(f) == 2 && f[0] == "build" && strings.HasPrefix(f[1], "vcs.revision="):
			rev = strings.TrimPrefix(f[1], "vcs.revision=")
		case len(f) == 2 && f[0] == "build" && f[1] == "vcs.modified=true":
			dirty = true
		}
	}
	switch {
	case mod != "" && mod != "(devel)":
		return mod
	case rev != "":
		if dirty {
			return rev[:min(12, len(rev))] + "-dirty"
		}
		return rev[:min(12, len(rev))]
	}
	return "dev"
}

// TestVersion checks that the two binaries TestMain built print one
// version, the one their build info gives.
func TestVersion(t *testing.T) {
	e2e(t)
	edge, agent := binVersion(t, bin.edge), binVersion(t, bin.agent)
	if edge != agent {
		t.Errorf("pico-edge --version says %q, pico-agent --version %q: want one version", edge, agent)
	}
	if want := buildInfoVersion(t, bin.edge); edge != want {
		t.Errorf("pico-edge --version says %q; its build info gives %q", edge, want)
	}
}

// TestGoInstall installs both commands as a user would with go install,
// into a fresh GOPATH and GOBIN, and checks that the installed binaries
// print one version. The module is not published, so it installs from this
// checkout (go install ./cmd/pico-edge ./cmd/pico-agent), not @latest; the
// module cache is this machine's (read-only use: no download when it holds
// the dependencies), and VCS stamping is go's default (auto), whatever
// GOFLAGS this machine's go env sets.
func TestGoInstall(t *testing.T) {
	e2e(t)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	modcache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOMODCACHE: %v", err)
	}
	gopath, gobin := t.TempDir(), t.TempDir()
	cmd := exec.Command("go", "install", "./cmd/pico-edge", "./cmd/pico-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOPATH="+gopath, "GOBIN="+gobin, "GOMODCACHE="+strings.TrimSpace(string(modcache)),
		"GOFLAGS=-modcacherw -buildvcs=auto")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install: %v\n%s", err, out)
	}
	exe := ""
	if runtime.GOOS == "windows" {
		exe = ".exe"
	}
	edgeBin, agentBin := filepath.Join(gobin, "pico-edge"+exe), filepath.Join(gobin, "pico-agent"+exe)
	edge, agent := binVersion(t, edgeBin), binVersion(t, agentBin)
	if edge != agent {
		t.Errorf("installed pico-edge --version says %q, pico-agent --version %q: want one version", edge, agent)
	}
	if want := buildInfoVersion(t, edgeBin); edge != want {
		t.Errorf("installed pico-edge --version says %q; its build info gives %q", edge, want)
	}
	t.Logf("go install from %s: version %s", root, edge)
}
