// Package certs holds the TLS material of a Pico edge and its agents.
//
// With no certificate flags, pico-edge keeps a development CA and a server
// certificate in its data directory (LoadOrCreateDev):
//
//	ca.pem          development CA certificate (0644); agents trust it with --ca
//	ca-key.pem      development CA private key (0600); never leaves the edge
//	server.pem      server certificate signed by the CA, leaf only (0644)
//	server-key.pem  server private key (0600)
//
// The directory itself is created 0700. All keys are ECDSA P-256 in PKCS #8.
// The CA is valid for ten years and is never replaced while it is valid,
// because agents trust it; removing ca.pem and ca-key.pem makes the next start
// create a new one. The server certificate is valid for 397 days and is
// re-issued from the same CA when it expires within 30 days, when a requested
// host is not covered, or when its files are missing, damaged or do not
// belong together. Files are written to a temporary name and renamed, so a
// crash never leaves a half-written file behind.
//
// With --tls-cert and --tls-key, a Reloader serves the given pair and picks up
// changes by polling the files. Agents read their --ca bundle with LoadPool.
// Generate makes throwaway in-memory material for tests and in-process
// clusters.
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Errors.
var (
	ErrNoCertificate = errors.New("certs: no certificate")
	ErrNoPrivateKey  = errors.New("certs: no private key")
	ErrKeyMismatch   = errors.New("certs: private key does not match certificate")
	ErrNotCA         = errors.New("certs: not a CA certificate")
	ErrCAKeyMissing  = errors.New("certs: development CA key missing")
	ErrCAExpired     = errors.New("certs: development CA expired")
	ErrInvalidHost   = errors.New("certs: invalid host")
	ErrNoDir         = errors.New("certs: no directory")
)

// Validity periods.
const (
	caYears      = 10                   // development CA lifetime
	leafValidity = 397 * 24 * time.Hour // server certificate lifetime
	renewBefore  = 30 * 24 * time.Hour  // re-issue a server certificate this close to expiry
	backdate     = time.Hour            // NotBefore is this far in the past, for clock skew
)

// DefaultHosts returns the names every development certificate covers.
// It returns a new slice on each call. curl and browsers do not accept a
// wildcard directly under a top-level name ("*.localhost"), so
// "*.pico.localhost" gives every endpoint a name they accept:
// https://foo.pico.localhost reaches endpoint foo.
func DefaultHosts() []string {
	return []string{"localhost", "*.localhost", "*.pico.localhost", "127.0.0.1", "::1"}
}

// hostSet is a normalised, de-duplicated list of names a certificate covers.
type hostSet struct {
	dns []string
	ips []net.IP
}

// parseHosts normalises hosts: blanks are skipped, IPv6 brackets and trailing
// dots are removed, DNS names are lower-cased, and IPv4-mapped IPv6
// addresses become IPv4.
func parseHosts(hosts []string) (hostSet, error) {
	var hs hostSet
	seen := make(map[string]bool)
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			h = h[1 : len(h)-1]
		}
		if addr, err := netip.ParseAddr(h); err == nil {
			if addr.Zone() != "" {
				return hostSet{}, fmt.Errorf("%w %q: IP address has a zone", ErrInvalidHost, h)
			}
			addr = addr.Unmap()
			if key := addr.String(); !seen[key] {
				seen[key] = true
				hs.ips = append(hs.ips, net.IP(addr.AsSlice()))
			}
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(h, "."))
		if err := validDNSName(name); err != nil {
			return hostSet{}, fmt.Errorf("%w %q: %v", ErrInvalidHost, h, err)
		}
		if !seen[name] {
			seen[name] = true
			hs.dns = append(hs.dns, name)
		}
	}
	return hs, nil
}

// validDNSName checks a lower-case DNS name, allowing "*" as the whole
// leftmost label of a name with at least two labels.
func validDNSName(name string) error {
	if len(name) > 253 {
		return fmt.Errorf("name is %d characters (max 253)", len(name))
	}
	labels := strings.Split(name, ".")
	for i, l := range labels {
		if l == "*" && i == 0 && len(labels) > 1 {
			continue
		}
		if l == "" || len(l) > 63 {
			return fmt.Errorf("label %q is empty or longer than 63 characters", l)
		}
		for j := 0; j < len(l); j++ {
			c := l[j]
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
			case c == '-':
				if j == 0 || j == len(l)-1 {
					return fmt.Errorf("label %q starts or ends with '-'", l)
				}
			default:
				return fmt.Errorf("label %q has %q (allowed: a-z, 0-9, '-', '_', leading '*.')", l, l[j:j+1])
			}
		}
	}
	return nil
}

// missing returns the hosts of hs that leaf does not cover. A wildcard host
// must appear literally; any other host must pass leaf.VerifyHostname, so a
// name under a wildcard the certificate already has counts as covered.
func (hs hostSet) missing(leaf *x509.Certificate) []string {
	var out []string
	for _, name := range hs.dns {
		if strings.HasPrefix(name, "*.") {
			if !slices.ContainsFunc(leaf.DNSNames, func(n string) bool { return strings.EqualFold(n, name) }) {
				out = append(out, name)
			}
			continue
		}
		if leaf.VerifyHostname(name) != nil {
			out = append(out, name)
		}
	}
	for _, ip := range hs.ips {
		if !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
			out = append(out, ip.String())
		}
	}
	return out
}

// certHosts lists the names in a certificate: DNS names, then IP addresses.
func certHosts(leaf *x509.Certificate) []string {
	out := slices.Clone(leaf.DNSNames)
	for _, ip := range leaf.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

// newKey makes an ECDSA P-256 private key.
func newKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: generate key: %w", err)
	}
	return key, nil
}

// newSerial makes a random 128-bit certificate serial number.
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("certs: generate serial number: %w", err)
	}
	return n, nil
}

// newCA makes a self-signed development CA valid from now for caYears.
func newCA(now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return nil, nil, fmt.Errorf("certs: generate CA name: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"Pico"},
			CommonName:   "Pico Development CA " + hex.EncodeToString(suffix),
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.AddDate(caYears, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: parse CA certificate: %w", err)
	}
	return cert, key, nil
}

// issueLeaf makes a server certificate for hs signed by ca, valid from now
// for leafValidity but never past the CA's own expiry.
func issueLeaf(ca *x509.Certificate, caKey crypto.Signer, hs hostSet, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(leafValidity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"Pico"},
			CommonName:   "Pico Development Server",
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              hs.dns,
		IPAddresses:           hs.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: create server certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// encodeCert returns a DER certificate as PEM.
func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// encodeKey returns a private key as PKCS #8 PEM.
func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("certs: encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// decodeCert parses the first CERTIFICATE block in data.
func decodeCert(data []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, ErrNoCertificate
		}
		if block.Type == "CERTIFICATE" {
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certs: parse certificate: %w", err)
			}
			return cert, nil
		}
	}
}

// decodeKey parses the first private key block in data: PKCS #8, SEC 1 or
// PKCS #1.
func decodeKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, ErrNoPrivateKey
		}
		if block.Type != "PRIVATE KEY" && !strings.HasSuffix(block.Type, " PRIVATE KEY") {
			continue
		}
		var key any
		var err error
		switch block.Type {
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		}
		if err != nil {
			return nil, fmt.Errorf("certs: parse private key: %w", err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("certs: parse private key: unsupported type %T", key)
		}
		return signer, nil
	}
}

// keyMatches reports whether key is the private half of cert's public key.
func keyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
}

// hasBlock reports whether data holds a PEM block whose type is typ or,
// with suffix set, ends in " "+typ.
func hasBlock(data []byte, typ string, suffix bool) bool {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return false
		}
		if block.Type == typ || suffix && strings.HasSuffix(block.Type, " "+typ) {
			return true
		}
	}
}

// parsePair checks and parses a PEM certificate chain and private key read
// from certFile and keyFile, naming the file at fault in errors.
func parsePair(certFile, keyFile string, certPEM, keyPEM []byte) (*tls.Certificate, error) {
	if !hasBlock(certPEM, "CERTIFICATE", false) {
		return nil, fmt.Errorf("%w in %s", ErrNoCertificate, certFile)
	}
	if !hasBlock(keyPEM, "PRIVATE KEY", true) {
		return nil, fmt.Errorf("%w in %s", ErrNoPrivateKey, keyFile)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certs: load key pair %s and %s: %w", certFile, keyFile, err)
	}
	return &cert, nil
}

// writeFile replaces path with data and mode atomically: it writes a
// temporary file in the same directory, syncs it and renames it over path.
func writeFile(path string, data []byte, mode os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	return nil
}
