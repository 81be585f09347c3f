package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pico-edge/pico/certs"
)

// TestTLSCertReload runs the edge on --tls-cert/--tls-key, replaces the
// files with a pair from another CA, and checks that new agents get the new
// certificate while the agent connected before keeps its connection.
func TestTLSCertReload(t *testing.T) {
	e2e(t)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p+".tmp", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(p+".tmp", p); err != nil { // replaced whole, as a Secret update does
			t.Fatal(err)
		}
		return p
	}
	a, err := certs.Generate()
	if err != nil {
		t.Fatal(err)
	}
	b, err := certs.Generate()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := write("tls.pem", a.CertPEM), write("tls-key.pem", a.KeyPEM)
	caA, caB := write("ca-a.pem", a.CAPEM), write("ca-b.pem", b.CAPEM)

	e := startEdge(t, "--tls-cert", certFile, "--tls-key", keyFile)
	upstream := startPython(t, t.TempDir())
	first := e.startAgentCA(t, caA, "http", "one", upstream)
	first.waitLineFor(t, 0, "registration", startTimeout, contains("endpoint one (http) is registered"))

	// Swap in the pair of CA B: key first, then the certificate.
	write("tls-key.pem", b.KeyPEM)
	write("tls.pem", b.CertPEM)
	e.waitLineFor(t, 0, "reload", startTimeout, isMsg("certificate reloaded"))

	second := e.startAgentCA(t, caB, "http", "two", upstream)
	second.waitLineFor(t, 0, "registration", startTimeout, contains("endpoint two (http) is registered"))
	if n := e.endpointAgents(t, "one"); n != 1 {
		t.Fatalf("endpoint one has %d agents after the reload, want 1 (its connection must survive)", n)
	}
	stale := e.startAgentCA(t, caA, "http", "three", upstream)
	stale.waitLineFor(t, 0, "certificate error", startTimeout, contains("certificate signed by unknown authority"))
}
