package certs

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClusterSecret(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "cluster.key")
	key, created, err := LoadOrCreateSecret(path)
	if err != nil || !created || len(key) != 32 {
		t.Fatalf("create: %d bytes, created=%v, %v", len(key), created, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	again, created, err := LoadOrCreateSecret(path)
	if err != nil || created || !bytes.Equal(again, key) {
		t.Fatalf("reload: created=%v %v", created, err)
	}
	raw := filepath.Join(dir, "raw")
	os.WriteFile(raw, bytes.Repeat([]byte{7}, 16), 0o600)
	if k, err := LoadSecret(raw); err != nil || len(k) != 16 {
		t.Fatalf("raw 16 bytes: %d %v", len(k), err)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("hunter2\n"), 0o600)
	if _, err := LoadSecret(bad); err == nil || !strings.Contains(err.Error(), "openssl rand -base64 32") {
		t.Fatalf("bad secret: %v", err)
	}
	if _, err := LoadSecret(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing file: no error")
	}
}
