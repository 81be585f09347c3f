package certs

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// File names in a development directory.
const (
	caFileName    = "ca.pem"
	caKeyFileName = "ca-key.pem"
	certFileName  = "server.pem"
	keyFileName   = "server-key.pem"
)

// DevCAFile is the development CA certificate's file in dir.
func DevCAFile(dir string) string { return filepath.Join(dir, caFileName) }

// DefaultDir is where pico-edge keeps its development CA by default (its
// --data-dir): $XDG_DATA_HOME/pico, else ~/.local/share/pico, else
// pico-data in the working directory. The agent looks there for that CA
// when it dials an edge on this machine without roots of its own.
func DefaultDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "pico")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "pico")
	}
	return "pico-data"
}

// Dev is a development CA and a server certificate kept in a directory.
type Dev struct {
	Dir       string
	CAFile    string   // <dir>/ca.pem, the CA certificate (0644)
	CAKeyFile string   // <dir>/ca-key.pem, the CA private key (0600)
	CertFile  string   // <dir>/server.pem, the server certificate, leaf only (0644)
	KeyFile   string   // <dir>/server-key.pem, the server private key (0600)
	Hosts     []string // names in the server certificate: DNS names, then IP addresses

	// CACreated is set when this load created a new CA, so agents need the
	// new CAFile. CertIssued is set when it issued a new server certificate.
	CACreated  bool
	CertIssued bool
}

// LoadOrCreateDev loads the development CA from caDir and the server
// certificate from dir (the same directory, or one CA for several nodes:
// each node's certificate in its own dir), creating what is missing: the
// directories (0700), a CA valid for ten years, and a server certificate for
// DefaultHosts plus extraHosts (DNS names or IP addresses) valid for 397 days.
// Nodes that start at once with one caDir create one CA between them: the
// creation holds a lock in caDir.
//
// On later calls it reuses both. It issues a new server certificate, signed by
// the existing CA, when the current one does not cover every host, expires
// within 30 days, or cannot be loaded, verified or matched with its key. It
// never replaces an existing CA: if ca.pem exists but ca-key.pem does not, or
// the CA is damaged or expired, it returns an error that says which file to
// restore or remove. A ca-key.pem without ca.pem (left by a crash during
// creation) is replaced by a new CA.
func LoadOrCreateDev(caDir, dir string, extraHosts []string) (*Dev, error) {
	return loadOrCreateDev(caDir, dir, extraHosts, time.Now())
}

func loadOrCreateDev(caDir, dir string, extraHosts []string, now time.Time) (*Dev, error) {
	if dir == "" || caDir == "" {
		return nil, ErrNoDir
	}
	hs, err := parseHosts(append(DefaultHosts(), extraHosts...))
	if err != nil {
		return nil, err
	}
	for _, d := range []string{caDir, dir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("certs: create directory: %w", err)
		}
	}
	d := &Dev{
		Dir:       dir,
		CAFile:    filepath.Join(caDir, caFileName),
		CAKeyFile: filepath.Join(caDir, caKeyFileName),
		CertFile:  filepath.Join(dir, certFileName),
		KeyFile:   filepath.Join(dir, keyFileName),
	}
	ca, caKey, err := d.loadOrCreateCA(now)
	if err != nil {
		return nil, err
	}
	leaf := d.loadLeaf(ca, hs, now)
	if leaf == nil {
		certPEM, keyPEM, err := issueLeaf(ca, caKey, hs, now)
		if err != nil {
			return nil, err
		}
		// Key first: a crash between the writes leaves a mismatched pair,
		// which the next start re-issues.
		if err := writeFile(d.KeyFile, keyPEM, 0o600); err != nil {
			return nil, err
		}
		if err := writeFile(d.CertFile, certPEM, 0o644); err != nil {
			return nil, err
		}
		if leaf, err = decodeCert(certPEM); err != nil {
			return nil, err
		}
		d.CertIssued = true
	}
	d.Hosts = certHosts(leaf)
	return d, nil
}

// loadOrCreateCA loads the CA, or creates it when ca.pem does not exist.
func (d *Dev) loadOrCreateCA(now time.Time) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(d.CAFile)
	if errors.Is(err, fs.ErrNotExist) {
		// Another node sharing the directory may be creating it now.
		unlock, lerr := lockDir(filepath.Dir(d.CAFile))
		if lerr != nil {
			return nil, nil, lerr
		}
		defer unlock()
		certPEM, err = os.ReadFile(d.CAFile)
	}
	if errors.Is(err, fs.ErrNotExist) {
		// No CA certificate, so no agent can trust this CA yet: create it,
		// replacing any ca-key.pem left by a crash between the two writes.
		ca, key, err := newCA(now)
		if err != nil {
			return nil, nil, err
		}
		keyPEM, err := encodeKey(key)
		if err != nil {
			return nil, nil, err
		}
		if err := writeFile(d.CAKeyFile, keyPEM, 0o600); err != nil {
			return nil, nil, err
		}
		if err := writeFile(d.CAFile, encodeCert(ca.Raw), 0o644); err != nil {
			return nil, nil, err
		}
		d.CACreated = true
		return ca, key, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("certs: read development CA: %w", err)
	}
	ca, err := decodeCert(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: load development CA %s: %w", d.CAFile, err)
	}
	if !ca.IsCA || !ca.BasicConstraintsValid {
		return nil, nil, fmt.Errorf("certs: load development CA %s: %w", d.CAFile, ErrNotCA)
	}
	keyPEM, err := os.ReadFile(d.CAKeyFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w: %s exists but %s does not; restore the key, or remove %s to create a new CA (agents must then trust the new one)",
			ErrCAKeyMissing, d.CAFile, d.CAKeyFile, d.CAFile)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("certs: read development CA key: %w", err)
	}
	key, err := decodeKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: load development CA key %s: %w", d.CAKeyFile, err)
	}
	if !keyMatches(ca, key) {
		return nil, nil, fmt.Errorf("certs: load development CA %s: %w %s", d.CAFile, ErrKeyMismatch, d.CAKeyFile)
	}
	if !now.Before(ca.NotAfter) {
		return nil, nil, fmt.Errorf("%w: %s expired on %s; remove %s and %s to create a new CA (agents must then trust the new one)",
			ErrCAExpired, d.CAFile, ca.NotAfter.UTC().Format(time.DateOnly), d.CAFile, d.CAKeyFile)
	}
	return ca, key, nil
}

// loadLeaf returns the server certificate if it can be reused: its files
// load as a matching pair, it chains to ca for server auth at now, it does
// not expire within renewBefore, and it covers hs. Otherwise it returns nil.
func (d *Dev) loadLeaf(ca *x509.Certificate, hs hostSet, now time.Time) *x509.Certificate {
	pair, err := tls.LoadX509KeyPair(d.CertFile, d.KeyFile)
	if err != nil {
		return nil
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	opts := x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if _, err := leaf.Verify(opts); err != nil {
		return nil
	}
	if leaf.NotAfter.Sub(now) < renewBefore {
		return nil
	}
	if len(hs.missing(leaf)) > 0 {
		return nil
	}
	return leaf
}

// TLSCertificate loads the server key pair from CertFile and KeyFile.
func (d *Dev) TLSCertificate() (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(d.CertFile, d.KeyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: load server key pair: %w", err)
	}
	return cert, nil
}

// CAPool loads CAFile as a certificate pool, for clients of this edge.
func (d *Dev) CAPool() (*x509.CertPool, error) {
	return LoadPool(d.CAFile)
}

// lockName is the lock directory that CA creation holds in the CA's
// directory; a lock older than staleLock was left by a process that died
// holding it.
const (
	lockName  = ".ca-lock"
	staleLock = 10 * time.Second
)

// lockDir takes dir's CA lock, waiting while another process holds it
// (creating a CA takes milliseconds), and returns its release. A directory
// is the lock because creating one is atomic on every system.
func lockDir(dir string) (func(), error) {
	lock := filepath.Join(dir, lockName)
	deadline := time.Now().Add(2 * staleLock)
	for {
		err := os.Mkdir(lock, 0o700)
		if err == nil {
			return func() { os.Remove(lock) }, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("certs: lock %s: %w", dir, err)
		}
		if st, err := os.Stat(lock); err == nil && time.Since(st.ModTime()) > staleLock {
			os.Remove(lock) // left by a crash; the next Mkdir decides who has it
			continue
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("certs: %s is held by another process for over %v; remove it if no pico-edge is starting", lock, 2*staleLock)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
