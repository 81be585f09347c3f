package agent

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/pico-edge/pico/certs"
)

func TestLocalDevCA(t *testing.T) {
	dir := t.TempDir()
	file := certs.DevCAFile(dir)
	for _, tc := range []struct {
		edges []string
		want  string
	}{
		{[]string{"127.0.0.1:8001"}, file},
		{[]string{"localhost:8001", "[::1]:8001", "127.0.0.2:9001"}, file},
		{[]string{"LocalHost:8001"}, file},
		{[]string{"127.0.0.1:8001", "edge.example.com:8001"}, ""}, // one edge elsewhere: never
		{[]string{"10.0.0.1:8001"}, ""},
		{[]string{"[::ffff:127.0.0.1]:8001"}, file}, // IPv4 loopback, mapped
		{[]string{"localhost.example.com:8001"}, ""},
		{[]string{"127.0.0.1"}, ""}, // no port: the agent refuses it anyway
		// The TCP transport's URLs.
		{[]string{"https://localhost:8443/_pico/agent"}, file},
		{[]string{"http://127.0.0.1:8000/_pico/agent", "https://lb.example.com/_pico/agent"}, ""},
		{nil, ""},
	} {
		if got := localDevCA(tc.edges, dir); got != tc.want {
			t.Errorf("localDevCA(%q) = %q, want %q", tc.edges, got, tc.want)
		}
	}
}

// The development CA is read at every attempt: absent (the system roots),
// created later, replaced by another, or not a certificate (an error).
func TestDevCARereads(t *testing.T) {
	dir := t.TempDir()
	a, err := New(Config{Edges: []string{"127.0.0.1:8001"}})
	if err != nil {
		t.Fatal(err)
	}
	a.dev = &devCA{file: certs.DevCAFile(dir)} // what New sets for $XDG_DATA_HOME/pico
	if pool, err := a.rootCAs(); pool != nil || err != nil {
		t.Fatalf("with no CA file: %v, %v; want the system roots (nil)", pool, err)
	}
	leafOf := func(dev *certs.Dev) *x509.Certificate {
		t.Helper()
		pair, err := tls.LoadX509KeyPair(dev.CertFile, dev.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf
	}
	verifies := func(leaf *x509.Certificate) bool {
		t.Helper()
		pool, err := a.rootCAs()
		if err != nil {
			t.Fatal(err)
		}
		_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost"})
		return err == nil
	}
	first, err := certs.LoadOrCreateDev(dir, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	firstLeaf := leafOf(first)
	if !verifies(firstLeaf) {
		t.Fatal("the CA created after New does not verify the development certificate")
	}
	// A new data directory in the same place: a new CA.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	second, err := certs.LoadOrCreateDev(dir, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !verifies(leafOf(second)) {
		t.Error("the replaced CA does not verify the new development certificate")
	}
	if verifies(firstLeaf) {
		t.Error("the old CA is still trusted after it was replaced")
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := a.rootCAs(); err == nil {
		t.Error("a ca.pem without a certificate was accepted")
	}
	b, err := New(Config{Edges: []string{"edge.example.com:8001"}})
	if err != nil {
		t.Fatal(err)
	}
	if b.dev != nil {
		t.Errorf("an agent of an edge elsewhere trusts the development CA %s", b.dev.file)
	}
}
