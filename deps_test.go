package pico_test

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDeps enforces the package map of DESIGN.md: arrows point one way,
// cmd -> edge, agent -> routing, quicutil, certs. edge/auth is a leaf
// too, and only edge and cmd import it.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const mod = "github.com/pico-edge/pico/"
	imports := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		imports[strings.TrimPrefix(p.ImportPath, mod)] = p.Imports
	}
	if len(imports) < 6 {
		t.Fatalf("go list found %d packages, want the whole module", len(imports))
	}
	// The leaves, and the parts of edge that stand alone: each imports no
	// package of ours (edge composes them), but edge/auth, which checks
	// endpoint IDs by quicutil's rule.
	leaves := map[string]bool{"routing": true, "quicutil": true, "certs": true,
		"edge/admin": true, "edge/auth": true, "edge/frontdoor": true, "edge/internal/quiet": true,
		"agent/inspect": true}
	for leaf := range leaves {
		if _, ok := imports[leaf]; !ok {
			t.Errorf("go list found no package %s", leaf)
		}
	}
	for pkg, deps := range imports {
		for _, d := range deps {
			own, ours := strings.CutPrefix(d, mod)
			switch {
			case leaves[pkg] && ours && !(pkg == "edge/auth" && own == "quicutil"):
				t.Errorf("%s imports %s: routing, quicutil, certs, edge/admin, edge/auth and edge/frontdoor import no package of ours (edge/auth: but quicutil)", pkg, d)
			case pkg == "edge/cluster" && ours && !slices.Contains([]string{"routing", "quicutil", "edge/admin", "edge/internal/quiet"}, own):
				t.Errorf("edge/cluster imports %s: of ours it may import routing, quicutil, edge/admin and edge/internal/quiet, never edge", d)
			case pkg == "agent" && (own == "edge" || own == "routing" || strings.HasPrefix(own, "edge/")):
				t.Errorf("agent imports %s", d)
			case (pkg == "edge" || pkg == "routing") && own == "agent":
				t.Errorf("%s imports agent", pkg)
			case own == "edge/auth" && pkg != "edge" && !strings.HasPrefix(pkg, "edge/") && !strings.HasPrefix(pkg, "cmd"):
				t.Errorf("%s imports edge/auth: only edge, edge/... and cmd/... do", pkg)
			case own == "edge/edgetest" || strings.HasPrefix(own, "cmd"):
				if !strings.HasPrefix(pkg, "cmd") {
					t.Errorf("%s imports %s (test harnesses and commands are imported only by tests and commands)", pkg, d)
				}
			case (d == "github.com/alecthomas/kong" || d == "github.com/lmittmann/tint") && !strings.HasPrefix(pkg, "cmd"):
				t.Errorf("%s imports %s: only cmd does", pkg, d)
			}
		}
	}
}

// TestModuleGraph keeps Kubernetes, gRPC, connect-go and Pebble (the test
// ACME CA) out of the root module's graph, and so out of the graph of every
// program that requires the agent SDK: the tests that need them live in
// modules of their own (deploy/, cmd/e2e/grpc/, cmd/e2e/acme/; .ci/modules
// lists them). It checks go mod graph
// (every requirement a build of this module may consult) and the modules
// of the packages ./... and its tests build from. GOWORK=off: a go.work
// would widen both to other modules.
func TestModuleGraph(t *testing.T) {
	banned := func(mod string) bool {
		mod, _, _ = strings.Cut(mod, "@")
		for _, p := range []string{"k8s.io/", "sigs.k8s.io/", "connectrpc.com/", "google.golang.org/grpc/", "github.com/letsencrypt/"} {
			if strings.HasPrefix(mod+"/", p) {
				return true
			}
		}
		return false
	}
	goCmd := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Env = append(cmd.Environ(), "GOWORK=off")
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return string(out)
	}
	const hint = "tests that need them belong in a module of their own, like deploy/, cmd/e2e/grpc/ and cmd/e2e/acme/"

	var bad []string
	for line := range strings.Lines(goCmd("mod", "graph")) {
		from, to, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok && (banned(from) || banned(to)) {
			bad = append(bad, from+" requires "+to)
		}
	}
	if len(bad) > 0 {
		t.Errorf("go mod graph has %d edges to Kubernetes, gRPC or connect-go; %s:\n%s", len(bad), hint, strings.Join(bad[:min(len(bad), 10)], "\n"))
	}

	bad = bad[:0]
	for line := range strings.Lines(goCmd("list", "-deps", "-test", "-f", "{{.ImportPath}} {{with .Module}}{{.Path}}{{end}}", "./...")) {
		pkg, mod, _ := strings.Cut(strings.TrimSpace(line), " ")
		if banned(mod) {
			bad = append(bad, pkg+" (module "+mod+")")
		}
	}
	if len(bad) > 0 {
		t.Errorf("./... and its tests build from %d packages of Kubernetes, gRPC or connect-go; %s:\n%s", len(bad), hint, strings.Join(bad[:min(len(bad), 10)], "\n"))
	}
}
