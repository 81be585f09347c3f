package certs_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pico-edge/pico/certs"
)

// pairFiles returns a certificate and a key path in a new directory.
func pairFiles(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	return filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
}

// writePair overwrites certFile and keyFile in place with b's pair,
// certificate first, as a careless deploy script would.
func writePair(t testing.TB, certFile, keyFile string, b *certs.Bundle) {
	t.Helper()
	writeFile(t, certFile, b.CertPEM)
	writeFile(t, keyFile, b.KeyPEM)
}

// runReloader runs r.Run in a goroutine and returns a channel of the errors
// it reports. Run is stopped and waited for when the test ends; stop does
// the same earlier and may be called again.
func runReloader(t testing.TB, r *certs.Reloader) (events <-chan error, stop func()) {
	t.Helper()
	ch := make(chan error)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, 20*time.Millisecond, func(err error) {
			select {
			case ch <- err:
			case <-ctx.Done():
			}
		})
	}()
	stop = func() {
		t.Helper()
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return after its context was cancelled")
		}
	}
	t.Cleanup(stop)
	return ch, stop
}

// waitReloaded waits for Run to report a successful reload, skipping the
// errors it may report while a pair is half-written.
func waitReloaded(t testing.TB, events <-chan error) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case err := <-events:
			if err == nil {
				return
			}
		case <-timeout:
			t.Fatal("no successful reload within 5s")
		}
	}
}

// waitFailed waits for Run to report a failed reload and returns the error.
func waitFailed(t testing.TB, events <-chan error) error {
	t.Helper()
	select {
	case err := <-events:
		if err == nil {
			t.Fatal("reload got nil error, want one")
		}
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("no failed reload within 5s")
	}
	return nil
}

// served returns the certificate r serves now.
func served(t testing.TB, r *certs.Reloader) *x509.Certificate {
	t.Helper()
	cert, err := r.GetCertificate(nil)
	if err != nil || cert == nil || cert.Leaf == nil {
		t.Fatalf("GetCertificate got %v, %v, want a certificate with Leaf", cert, err)
	}
	return cert.Leaf
}

func TestReloaderSwapsPairWithoutDroppingConnections(t *testing.T) {
	a, b := mustGenerate(t), mustGenerate(t)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(a.CAPEM)
	pool.AppendCertsFromPEM(b.CAPEM)
	client := certs.ClientTLSConfig(pool, "localhost")

	certFile, keyFile := pairFiles(t)
	writePair(t, certFile, keyFile, a)
	r, err := certs.NewReloader(certFile, keyFile)
	if err != nil {
		t.Fatalf("NewReloader: %v", err)
	}
	addr := startTLSServer(t, certs.ServerTLSConfig(r.GetCertificate))
	events, stop := runReloader(t, r)

	old := mustHandshake(t, addr, client)
	if !peerLeaf(t, old).Equal(a.Cert.Leaf) {
		t.Fatal("first handshake did not see pair A")
	}
	echo(t, old, 'a')

	writePair(t, certFile, keyFile, b)
	waitReloaded(t, events)
	if !peerLeaf(t, mustHandshake(t, addr, client)).Equal(b.Cert.Leaf) {
		t.Error("handshake after reload did not see pair B")
	}
	echo(t, old, 'b')

	writeFile(t, keyFile, a.KeyPEM[:len(a.KeyPEM)/2])
	err = waitFailed(t, events)
	if !errors.Is(err, certs.ErrNoPrivateKey) || !strings.Contains(err.Error(), keyFile) {
		t.Errorf("reload error got %q, want %v naming %s", err, certs.ErrNoPrivateKey, keyFile)
	}
	if !peerLeaf(t, mustHandshake(t, addr, client)).Equal(b.Cert.Leaf) {
		t.Error("handshake after failed reload did not see pair B")
	}
	echo(t, old, 'c')

	// The broken pair is retried until it loads.
	writePair(t, certFile, keyFile, a)
	waitReloaded(t, events)
	if !peerLeaf(t, mustHandshake(t, addr, client)).Equal(a.Cert.Leaf) {
		t.Error("handshake after repair did not see pair A")
	}
	echo(t, old, 'd')

	stop()
}

func TestReloaderSeesSameSizeRewrite(t *testing.T) {
	a, b := mustGenerate(t), mustGenerate(t)
	if len(a.KeyPEM) != len(b.KeyPEM) {
		t.Skipf("keys differ in size (%d, %d)", len(a.KeyPEM), len(b.KeyPEM))
	}
	certFile, keyFile := pairFiles(t)
	writePair(t, certFile, keyFile, a)
	r, err := certs.NewReloader(certFile, keyFile)
	if err != nil {
		t.Fatalf("NewReloader: %v", err)
	}
	events, _ := runReloader(t, r)

	// Same inode, same size, same modification time: only the contents
	// differ, as after a rewrite within a coarse timestamp's granularity.
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, keyFile, b.KeyPEM)
	if err := os.Chtimes(keyFile, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := waitFailed(t, events); !strings.Contains(err.Error(), "does not match") {
		t.Errorf("reload error got %q, want a key mismatch", err)
	}
	writeFile(t, certFile, b.CertPEM)
	waitReloaded(t, events)
	if !served(t, r).Equal(b.Cert.Leaf) {
		t.Error("served certificate is not pair B")
	}
}

func TestReloaderReload(t *testing.T) {
	a, b := mustGenerate(t), mustGenerate(t)
	certFile, keyFile := pairFiles(t)
	writePair(t, certFile, keyFile, a)
	r, err := certs.NewReloader(certFile, keyFile)
	if err != nil {
		t.Fatalf("NewReloader: %v", err)
	}
	if !served(t, r).Equal(a.Cert.Leaf) {
		t.Fatal("served certificate is not pair A")
	}

	writePair(t, certFile, keyFile, b)
	if err := r.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if !served(t, r).Equal(b.Cert.Leaf) {
		t.Fatal("served certificate after Reload is not pair B")
	}

	writeFile(t, certFile, a.CertPEM)
	if err := r.Reload(); err == nil {
		t.Fatal("Reload of a mismatched pair got nil error, want one")
	}
	if !served(t, r).Equal(b.Cert.Leaf) {
		t.Fatal("served certificate after failed Reload is not pair B")
	}
}

func TestReloaderRunStops(t *testing.T) {
	a, b := mustGenerate(t), mustGenerate(t)
	certFile, keyFile := pairFiles(t)
	writePair(t, certFile, keyFile, a)
	r, err := certs.NewReloader(certFile, keyFile)
	if err != nil {
		t.Fatalf("NewReloader: %v", err)
	}
	tests := map[string]struct {
		interval time.Duration
	}{
		"short interval":   {interval: time.Millisecond},
		"default interval": {interval: 0},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				r.Run(ctx, tt.interval, nil) // a nil callback is allowed
			}()
			writePair(t, certFile, keyFile, b)
			time.Sleep(10 * time.Millisecond) // let a poll or two happen, if any
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return after its context was cancelled")
			}
		})
	}
}

func TestNewReloaderErrors(t *testing.T) {
	a, b := mustGenerate(t), mustGenerate(t)
	tests := map[string]struct {
		certPEM  []byte // nil: no file
		keyPEM   []byte // nil: no file
		wantErr  error  // nil: any error
		wantFile []string
	}{
		"cert missing":      {keyPEM: a.KeyPEM, wantErr: fs.ErrNotExist, wantFile: []string{"cert"}},
		"key missing":       {certPEM: a.CertPEM, wantErr: fs.ErrNotExist, wantFile: []string{"key"}},
		"cert not PEM":      {certPEM: []byte("junk"), keyPEM: a.KeyPEM, wantErr: certs.ErrNoCertificate, wantFile: []string{"cert"}},
		"key is a cert":     {certPEM: a.CertPEM, keyPEM: a.CertPEM, wantErr: certs.ErrNoPrivateKey, wantFile: []string{"key"}},
		"key half-written":  {certPEM: a.CertPEM, keyPEM: a.KeyPEM[:len(a.KeyPEM)-10], wantErr: certs.ErrNoPrivateKey, wantFile: []string{"key"}},
		"mismatched pair":   {certPEM: a.CertPEM, keyPEM: b.KeyPEM, wantFile: []string{"cert", "key"}},
		"cert body corrupt": {certPEM: bytes.Replace(a.CertPEM, []byte("M"), []byte("A"), 5), keyPEM: a.KeyPEM, wantFile: []string{"cert"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			certFile, keyFile := pairFiles(t)
			if tt.certPEM != nil {
				writeFile(t, certFile, tt.certPEM)
			}
			if tt.keyPEM != nil {
				writeFile(t, keyFile, tt.keyPEM)
			}
			r, err := certs.NewReloader(certFile, keyFile)
			if err == nil {
				t.Fatalf("NewReloader got %v, want an error", r)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error got %v, want %v", err, tt.wantErr)
			}
			files := map[string]string{"cert": certFile, "key": keyFile}
			for _, f := range tt.wantFile {
				if !strings.Contains(err.Error(), files[f]) {
					t.Errorf("error %q does not name %s", err, files[f])
				}
			}
		})
	}
}
