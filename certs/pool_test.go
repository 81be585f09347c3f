package certs_test

import (
	"encoding/pem"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pico-edge/pico/certs"
)

func TestLoadPoolBundle(t *testing.T) {
	a, b, stranger := mustGenerate(t), mustGenerate(t), mustGenerate(t)
	file := filepath.Join(t.TempDir(), "bundle.pem")
	// Text around blocks and blocks of other types are skipped.
	writeFile(t, file, slices.Concat([]byte("# Pico CAs\n"), a.CAPEM, b.KeyPEM, []byte("\n"), b.CAPEM))

	pool, err := certs.LoadPool(file)
	if err != nil {
		t.Fatalf("LoadPool: %v", err)
	}
	tests := map[string]struct {
		bundle  *certs.Bundle
		wantErr bool
	}{
		"first CA":  {bundle: a},
		"second CA": {bundle: b},
		"other CA":  {bundle: stranger, wantErr: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			srv := certs.ServerTLSConfig(staticCert(tt.bundle))
			addr := startTLSServer(t, srv)
			c, err := handshake(t, addr, certs.ClientTLSConfig(pool, "localhost"))
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("handshake got error %v, want error %v", err, tt.wantErr)
			}
			if err == nil {
				echo(t, c, 'p')
			}
		})
	}
}

func TestLoadPoolErrors(t *testing.T) {
	b := mustGenerate(t)
	badCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})
	tests := map[string]struct {
		data    []byte // nil: no file
		wantErr error  // nil: any error
		wantMsg string // substring of the message; "FILE" stands for the path
	}{
		"empty file":      {data: []byte{}, wantErr: certs.ErrNoCertificate, wantMsg: "certs: no certificate in FILE"},
		"text only":       {data: []byte("hello\n"), wantErr: certs.ErrNoCertificate, wantMsg: "certs: no certificate in FILE"},
		"key only":        {data: b.KeyPEM, wantErr: certs.ErrNoCertificate, wantMsg: "certs: no certificate in FILE"},
		"bad certificate": {data: slices.Concat(b.CAPEM, badCert), wantMsg: "certificate 2 in FILE"},
		"missing file":    {wantErr: fs.ErrNotExist, wantMsg: "FILE"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "ca.pem")
			if tt.data != nil {
				writeFile(t, file, tt.data)
			}
			pool, err := certs.LoadPool(file)
			if err == nil {
				t.Fatalf("LoadPool got pool %v, want an error", pool)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error got %v, want %v", err, tt.wantErr)
			}
			if want := strings.ReplaceAll(tt.wantMsg, "FILE", file); !strings.Contains(err.Error(), want) {
				t.Errorf("error got %q, want it to contain %q", err, want)
			}
		})
	}
}
