package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"slices"
	"time"
)

// LoadPool reads a PEM bundle of one or more CA certificates. Blocks of other
// types are skipped; a file without any certificate is an error.
func LoadPool(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("certs: read CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		n++
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certs: parse certificate %d in %s: %w", n, file, err)
		}
		pool.AddCert(cert)
	}
	if n == 0 {
		return nil, fmt.Errorf("%w in %s", ErrNoCertificate, file)
	}
	return pool, nil
}

// Bundle is an in-memory CA and a server certificate it signed.
type Bundle struct {
	CAPEM   []byte          // CA certificate
	CAPool  *x509.CertPool  // pool holding only the CA
	Cert    tls.Certificate // server leaf and key, Leaf set
	CertPEM []byte          // server leaf, as written to a --tls-cert file
	KeyPEM  []byte          // server key, as written to a --tls-key file
}

// Generate makes an in-memory CA and a server certificate for hosts, or for
// DefaultHosts if none are given. It is meant for tests and in-process
// clusters.
func Generate(hosts ...string) (*Bundle, error) {
	if len(hosts) == 0 {
		hosts = DefaultHosts()
	}
	hs, err := parseHosts(hosts)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	ca, caKey, err := newCA(now)
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := issueLeaf(ca, caKey, hs, now)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certs: load generated key pair: %w", err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certs: parse generated certificate: %w", err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &Bundle{
		CAPEM:   encodeCert(ca.Raw),
		CAPool:  pool,
		Cert:    cert,
		CertPEM: certPEM,
		KeyPEM:  keyPEM,
	}, nil
}

// ServerTLSConfig returns a server configuration that takes its certificate
// from getCert (a Reloader's GetCertificate, or a fixed pair) and offers
// nextProtos for ALPN. It allows TLS 1.2, because it also serves HTTPS over
// TCP; quic-go raises the minimum to TLS 1.3 by itself.
func ServerTLSConfig(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: getCert,
		NextProtos:     slices.Clone(nextProtos),
	}
}

// ClientTLSConfig returns a TLS 1.3 client configuration, as QUIC requires,
// that verifies the server as serverName against pool (the system roots if
// pool is nil) and offers nextProtos for ALPN.
func ClientTLSConfig(pool *x509.CertPool, serverName string, nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		ServerName: serverName,
		NextProtos: slices.Clone(nextProtos),
	}
}
