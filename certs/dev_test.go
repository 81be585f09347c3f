package certs_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pico-edge/pico/certs"
)

// mustDev calls LoadOrCreateDev and fails the test on error.
func mustDev(t testing.TB, dir string, extra ...string) *certs.Dev {
	t.Helper()
	d, err := certs.LoadOrCreateDev(dir, dir, extra)
	if err != nil {
		t.Fatalf("LoadOrCreateDev(%q, %q): %v", dir, extra, err)
	}
	return d
}

// devFiles returns the contents of the four files of d.
func devFiles(t testing.TB, d *certs.Dev) map[string][]byte {
	t.Helper()
	out := make(map[string][]byte)
	for _, f := range []string{d.CAFile, d.CAKeyFile, d.CertFile, d.KeyFile} {
		out[f] = readFile(t, f)
	}
	return out
}

// devServer serves d's server certificate over TLS and returns its address
// and a pool holding d's CA read back with LoadPool.
func devServer(t testing.TB, d *certs.Dev) (string, *x509.CertPool) {
	t.Helper()
	cert, err := d.TLSCertificate()
	if err != nil {
		t.Fatalf("TLSCertificate: %v", err)
	}
	pool, err := certs.LoadPool(d.CAFile)
	if err != nil {
		t.Fatalf("LoadPool(%s): %v", d.CAFile, err)
	}
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }
	return startTLSServer(t, certs.ServerTLSConfig(getCert)), pool
}

func TestLoadOrCreateDevCreatesThenReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := mustDev(t, dir)
	if !d.CACreated || !d.CertIssued {
		t.Errorf("first load CACreated, CertIssued got %v, %v, want true, true", d.CACreated, d.CertIssued)
	}
	if want := certs.DefaultHosts(); !slices.Equal(d.Hosts, want) {
		t.Errorf("Hosts got %q, want %q", d.Hosts, want)
	}

	files := map[string]struct {
		path string
		want string
		mode fs.FileMode
	}{
		"dir":     {d.Dir, dir, fs.ModeDir | 0o700},
		"CA cert": {d.CAFile, filepath.Join(dir, "ca.pem"), 0o644},
		"CA key":  {d.CAKeyFile, filepath.Join(dir, "ca-key.pem"), 0o600},
		"cert":    {d.CertFile, filepath.Join(dir, "server.pem"), 0o644},
		"key":     {d.KeyFile, filepath.Join(dir, "server-key.pem"), 0o600},
	}
	for name, f := range files {
		t.Run(name, func(t *testing.T) {
			if f.path != f.want {
				t.Errorf("path got %q, want %q", f.path, f.want)
			}
			fi, err := os.Stat(f.want)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode(); got != f.mode {
				t.Errorf("mode got %v, want %v", got, f.mode)
			}
		})
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 4 {
		t.Errorf("directory holds %d entries, want 4 (no temporary files left)", len(entries))
	}

	before := devFiles(t, d)
	again := mustDev(t, dir)
	if again.CACreated || again.CertIssued {
		t.Errorf("second load CACreated, CertIssued got %v, %v, want false, false", again.CACreated, again.CertIssued)
	}
	for f, data := range devFiles(t, again) {
		if !bytes.Equal(data, before[f]) {
			t.Errorf("%s changed on reload", f)
		}
	}
	if !slices.Equal(again.Hosts, d.Hosts) {
		t.Errorf("Hosts after reload got %q, want %q", again.Hosts, d.Hosts)
	}
}

func TestLoadOrCreateDevExtraHosts(t *testing.T) {
	dir := t.TempDir()
	first := devFiles(t, mustDev(t, dir))

	extra := []string{"pico.example.test", "10.1.2.3", "[fd00::1]"}
	d := mustDev(t, dir, extra...)
	if d.CACreated || !d.CertIssued {
		t.Errorf("CACreated, CertIssued got %v, %v, want false, true", d.CACreated, d.CertIssued)
	}
	after := devFiles(t, d)
	for _, f := range []string{d.CAFile, d.CAKeyFile} {
		if !bytes.Equal(after[f], first[f]) {
			t.Errorf("%s changed, want it kept", f)
		}
	}
	if bytes.Equal(after[d.CertFile], first[d.CertFile]) {
		t.Errorf("%s unchanged, want a new certificate", d.CertFile)
	}
	wantHosts := []string{"localhost", "*.localhost", "*.pico.localhost", "pico.example.test", "127.0.0.1", "::1", "10.1.2.3", "fd00::1"}
	if !slices.Equal(d.Hosts, wantHosts) {
		t.Errorf("Hosts got %q, want %q", d.Hosts, wantHosts)
	}

	addr, pool := devServer(t, d)
	handshakes := map[string]struct {
		serverName string
		wantErr    bool
	}{
		"localhost":            {serverName: "localhost"},
		"under localhost":      {serverName: "foo.localhost"},
		"IPv4 loopback":        {serverName: "127.0.0.1"},
		"IPv6 loopback":        {serverName: "::1"},
		"extra name":           {serverName: "pico.example.test"},
		"extra IPv4":           {serverName: "10.1.2.3"},
		"extra IPv6":           {serverName: "fd00::1"},
		"other name":           {serverName: "example.com", wantErr: true},
		"two labels deep":      {serverName: "a.b.localhost", wantErr: true},
		"other IP":             {serverName: "10.9.9.9", wantErr: true},
		"under extra name":     {serverName: "x.pico.example.test", wantErr: true},
		"truncated extra name": {serverName: "pico.example.tes", wantErr: true},
	}
	for name, tt := range handshakes {
		t.Run(name, func(t *testing.T) {
			c, err := handshake(t, addr, certs.ClientTLSConfig(pool, tt.serverName))
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("handshake as %q got error %v, want error %v", tt.serverName, err, tt.wantErr)
			}
			if err == nil {
				echo(t, c, 'h')
			}
		})
	}

	covered := map[string]struct {
		extra []string
	}{
		"same hosts":            {extra: extra},
		"fewer hosts":           {extra: nil},
		"host under a wildcard": {extra: []string{"bar.localhost"}},
		"same hosts, respelled": {extra: []string{"PICO.example.test.", "fd00:0::1"}},
	}
	for name, tt := range covered {
		t.Run(name, func(t *testing.T) {
			again := mustDev(t, dir, tt.extra...)
			if again.CertIssued {
				t.Errorf("CertIssued got true, want false")
			}
			if got := readFile(t, again.CertFile); !bytes.Equal(got, after[d.CertFile]) {
				t.Errorf("%s changed, want it kept", again.CertFile)
			}
		})
	}
}

func TestLoadOrCreateDevReissuesBadServerCert(t *testing.T) {
	other := mustDev(t, t.TempDir())
	tests := map[string]struct {
		damage func(t *testing.T, d *certs.Dev)
	}{
		"cert missing": {func(t *testing.T, d *certs.Dev) {
			os.Remove(d.CertFile)
		}},
		"key missing": {func(t *testing.T, d *certs.Dev) {
			os.Remove(d.KeyFile)
		}},
		"cert not PEM": {func(t *testing.T, d *certs.Dev) {
			writeFile(t, d.CertFile, []byte("not a certificate\n"))
		}},
		"key half-written": {func(t *testing.T, d *certs.Dev) {
			key := readFile(t, d.KeyFile)
			writeFile(t, d.KeyFile, key[:len(key)/2])
		}},
		"key of another pair": {func(t *testing.T, d *certs.Dev) {
			writeFile(t, d.KeyFile, readFile(t, other.KeyFile))
		}},
		"pair from another CA": {func(t *testing.T, d *certs.Dev) {
			writeFile(t, d.CertFile, readFile(t, other.CertFile))
			writeFile(t, d.KeyFile, readFile(t, other.KeyFile))
		}},
		"CA certificate as server cert": {func(t *testing.T, d *certs.Dev) {
			writeFile(t, d.CertFile, readFile(t, d.CAFile))
			writeFile(t, d.KeyFile, readFile(t, d.CAKeyFile))
		}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			first := mustDev(t, dir)
			before := devFiles(t, first)
			tt.damage(t, first)

			d := mustDev(t, dir)
			if d.CACreated || !d.CertIssued {
				t.Errorf("CACreated, CertIssued got %v, %v, want false, true", d.CACreated, d.CertIssued)
			}
			for _, f := range []string{d.CAFile, d.CAKeyFile} {
				if !bytes.Equal(readFile(t, f), before[f]) {
					t.Errorf("%s changed, want it kept", f)
				}
			}
			cert, err := d.TLSCertificate()
			if err != nil {
				t.Fatalf("TLSCertificate: %v", err)
			}
			pool, err := d.CAPool()
			if err != nil {
				t.Fatalf("CAPool: %v", err)
			}
			if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost"}); err != nil {
				t.Errorf("verify new certificate against %s: %v", d.CAFile, err)
			}
		})
	}
}

func TestLoadOrCreateDevCAErrors(t *testing.T) {
	tests := map[string]struct {
		damage  func(t *testing.T, d *certs.Dev)
		wantErr error
		wantMsg []string // substrings of the error message
	}{
		"CA key missing": {
			damage:  func(t *testing.T, d *certs.Dev) { os.Remove(d.CAKeyFile) },
			wantErr: certs.ErrCAKeyMissing,
			wantMsg: []string{"ca.pem", "ca-key.pem"},
		},
		"CA not PEM": {
			damage:  func(t *testing.T, d *certs.Dev) { writeFile(t, d.CAFile, []byte("junk")) },
			wantErr: certs.ErrNoCertificate,
			wantMsg: []string{"ca.pem"},
		},
		"CA is a server certificate": {
			damage:  func(t *testing.T, d *certs.Dev) { writeFile(t, d.CAFile, readFile(t, d.CertFile)) },
			wantErr: certs.ErrNotCA,
			wantMsg: []string{"ca.pem"},
		},
		"CA key of another pair": {
			damage:  func(t *testing.T, d *certs.Dev) { writeFile(t, d.CAKeyFile, readFile(t, d.KeyFile)) },
			wantErr: certs.ErrKeyMismatch,
			wantMsg: []string{"ca.pem", "ca-key.pem"},
		},
		"CA key not PEM": {
			damage:  func(t *testing.T, d *certs.Dev) { writeFile(t, d.CAKeyFile, []byte("junk")) },
			wantErr: certs.ErrNoPrivateKey,
			wantMsg: []string{"ca-key.pem"},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			d := mustDev(t, dir)
			tt.damage(t, d)
			before := readFile(t, d.CAFile)

			_, err := certs.LoadOrCreateDev(dir, dir, nil)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("LoadOrCreateDev got error %v, want %v", err, tt.wantErr)
			}
			for _, s := range tt.wantMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if got := readFile(t, d.CAFile); !bytes.Equal(got, before) {
				t.Errorf("%s changed, want it kept", d.CAFile)
			}
		})
	}
}

func TestLoadOrCreateDevCreatesCAWhenCertMissing(t *testing.T) {
	dir := t.TempDir()
	first := mustDev(t, dir)
	oldCA := readFile(t, first.CAFile)
	if err := os.Remove(first.CAFile); err != nil {
		t.Fatal(err)
	}

	d := mustDev(t, dir)
	if !d.CACreated || !d.CertIssued {
		t.Errorf("CACreated, CertIssued got %v, %v, want true, true", d.CACreated, d.CertIssued)
	}
	if bytes.Equal(readFile(t, d.CAFile), oldCA) {
		t.Errorf("%s is the old CA, want a new one", d.CAFile)
	}
	addr, pool := devServer(t, d)
	echo(t, mustHandshake(t, addr, certs.ClientTLSConfig(pool, "localhost")), 'c')
}

func TestLoadOrCreateDevInvalidArgs(t *testing.T) {
	tests := map[string]struct {
		dir     string
		extra   []string
		wantErr error
	}{
		"no directory":        {dir: "", wantErr: certs.ErrNoDir},
		"space in name":       {extra: []string{"foo bar"}, wantErr: certs.ErrInvalidHost},
		"leading hyphen":      {extra: []string{"-x.example"}, wantErr: certs.ErrInvalidHost},
		"empty label":         {extra: []string{"a..b"}, wantErr: certs.ErrInvalidHost},
		"host and port":       {extra: []string{"example.com:443"}, wantErr: certs.ErrInvalidHost},
		"IPv6 zone":           {extra: []string{"fe80::1%eth0"}, wantErr: certs.ErrInvalidHost},
		"wildcard in middle":  {extra: []string{"a.*.example"}, wantErr: certs.ErrInvalidHost},
		"bare wildcard":       {extra: []string{"*"}, wantErr: certs.ErrInvalidHost},
		"label of 64 letters": {extra: []string{strings.Repeat("a", 64) + ".example"}, wantErr: certs.ErrInvalidHost},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			dir := tt.dir
			if name != "no directory" {
				dir = t.TempDir()
			}
			_, err := certs.LoadOrCreateDev(dir, dir, tt.extra)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("LoadOrCreateDev(%q, %q) got error %v, want %v", dir, tt.extra, err, tt.wantErr)
			}
		})
	}
}

// TestSharedCA: nodes that start at once with one CA directory and their
// own data directories create one CA between them, and each its own server
// certificate signed by it.
func TestSharedCA(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	const nodes = 8
	devs := make([]*certs.Dev, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() { devs[i], errs[i] = certs.LoadOrCreateDev(caDir, t.TempDir(), nil) })
	}
	wg.Wait()
	created := 0
	for i, err := range errs {
		if err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		if devs[i].CACreated {
			created++
		}
	}
	if created != 1 {
		t.Fatalf("%d nodes created a CA, want 1", created)
	}
	pool, err := certs.LoadPool(filepath.Join(caDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range devs {
		if d.CAFile != filepath.Join(caDir, "ca.pem") || filepath.Dir(d.CertFile) != d.Dir {
			t.Errorf("node %d: CA %s, certificate %s (dir %s)", i, d.CAFile, d.CertFile, d.Dir)
		}
		cert, err := d.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost"}); err != nil {
			t.Errorf("node %d: its certificate does not verify with the shared CA: %v", i, err)
		}
	}
	if _, err := os.Stat(filepath.Join(caDir, ".ca-lock")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the creation lock is still there: %v", err)
	}
}

// TestSharedCAStaleLock: a lock left by a process that died while creating
// the CA does not stop the next start.
func TestSharedCAStaleLock(t *testing.T) {
	caDir := t.TempDir()
	lock := filepath.Join(caDir, ".ca-lock")
	if err := os.Mkdir(lock, 0o700); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(lock, old, old); err != nil {
		t.Fatal(err)
	}
	d, err := certs.LoadOrCreateDev(caDir, t.TempDir(), nil)
	if err != nil || !d.CACreated {
		t.Fatalf("LoadOrCreateDev with a stale lock: %+v, %v", d, err)
	}
}
