package certs

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// LoadSecret reads a cluster secret: the base64 of 16, 24 or 32 bytes (as
// made by 'openssl rand -base64 32'), or those bytes raw.
func LoadSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read cluster secret: %w", err)
	}
	return parseSecret(path, b)
}

func parseSecret(path string, b []byte) ([]byte, error) {
	text := bytes.TrimSpace(b)
	if key, err := base64.StdEncoding.DecodeString(string(text)); err == nil && validSecretLen(len(key)) {
		return key, nil
	}
	if validSecretLen(len(b)) {
		return b, nil
	}
	return nil, fmt.Errorf("cluster secret %s: want the base64 of 16, 24 or 32 random bytes (openssl rand -base64 32)", path)
}

func validSecretLen(n int) bool { return n == 16 || n == 24 || n == 32 }

// LoadOrCreateSecret reads the cluster secret at path, creating a random
// one (0600) if there is none. It reports whether it created it.
func LoadOrCreateSecret(path string) ([]byte, bool, error) {
	key, err := LoadSecret(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return key, false, err
	}
	key = make([]byte, 32)
	rand.Read(key)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("create data dir: %w", err)
	}
	text := base64.StdEncoding.EncodeToString(key) + "\n"
	if err := writeFile(path, []byte(text), 0o600); err != nil {
		return nil, false, fmt.Errorf("write cluster secret: %w", err)
	}
	return key, true, nil
}
