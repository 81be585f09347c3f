package main

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
	dev, err := certs.LoadOrCreateDev(dir, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		edges []string
		want  string
	}{
		{[]string{"127.0.0.1:8001"}, dev.CAFile},
		{[]string{"localhost:8001", "[::1]:8001", "127.0.0.2:9001"}, dev.CAFile},
		{[]string{"LocalHost:8001"}, dev.CAFile},
		{[]string{"127.0.0.1:8001", "edge.example.com:8001"}, ""}, // one edge elsewhere: never
		{[]string{"10.0.0.1:8001"}, ""},
		{[]string{"[::ffff:127.0.0.1]:8001"}, dev.CAFile}, // IPv4 loopback, mapped
		{[]string{"localhost.example.com:8001"}, ""},
		{[]string{"127.0.0.1"}, ""}, // no port: the agent refuses it anyway
		// The TCP transport's URLs.
		{[]string{"https://localhost:8443/_pico/agent"}, dev.CAFile},
		{[]string{"http://127.0.0.1:8000/_pico/agent", "https://lb.example.com/_pico/agent"}, ""},
		{nil, ""},
	} {
		if got := localDevCA(tc.edges, dir); got != tc.want {
			t.Errorf("localDevCA(%q) = %q, want %q", tc.edges, got, tc.want)
		}
	}
	if got := localDevCA([]string{"127.0.0.1:8001"}, t.TempDir()); got != "" {
		t.Errorf("with no CA in the data directory: %q, want none", got)
	}
	notFile := t.TempDir()
	if err := os.Mkdir(filepath.Join(notFile, "ca.pem"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := localDevCA([]string{"127.0.0.1:8001"}, notFile); got != "" {
		t.Errorf("with a directory named ca.pem: %q, want none", got)
	}

	// The pool verifies the edge's development certificate.
	pool, err := devPool(dev.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(dev.CertFile, dev.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost"}); err != nil {
		t.Errorf("the development certificate does not verify with the pool: %v", err)
	}
	garbage := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := devPool(garbage); err == nil {
		t.Error("a ca.pem without a certificate was accepted")
	}
}
