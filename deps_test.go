package pico_test

import (
	"encoding/json"
	"os/exec"
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
	leaves := map[string]bool{"routing": true, "quicutil": true, "certs": true, "edge/auth": true}
	for leaf := range leaves {
		if _, ok := imports[leaf]; !ok {
			t.Errorf("go list found no package %s", leaf)
		}
	}
	for pkg, deps := range imports {
		for _, d := range deps {
			own, ours := strings.CutPrefix(d, mod)
			switch {
			case leaves[pkg] && ours:
				t.Errorf("%s imports %s: routing, quicutil, certs and edge/auth import no package of ours", pkg, d)
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
