package certs_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pico-edge/pico/certs"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// mustGenerate returns a fresh in-memory CA and server certificate.
func mustGenerate(t testing.TB, hosts ...string) *certs.Bundle {
	t.Helper()
	b, err := certs.Generate(hosts...)
	if err != nil {
		t.Fatalf("Generate(%q): %v", hosts, err)
	}
	return b
}

// staticCert returns a GetCertificate function that serves b.Cert.
func staticCert(b *certs.Bundle) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &b.Cert, nil }
}

// readFile returns the contents of path.
func readFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// writeFile writes data to path in place, as an editor or cp would.
func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startTLSServer serves cfg on a 127.0.0.1 TCP port and echoes every byte
// it receives. The server and its connections stop when the test ends.
func startTLSServer(t testing.TB, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		closed bool
		conns  []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conns = append(conns, c)
			wg.Add(1)
			mu.Unlock()
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c) // the first Read runs the server handshake
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// handshake connects to addr with cfg and completes the TLS handshake. The
// connection is closed when the test ends.
func handshake(t testing.TB, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c.(*tls.Conn), nil
}

// mustHandshake is handshake that fails the test on error.
func mustHandshake(t testing.TB, addr string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	c, err := handshake(t, addr, cfg)
	if err != nil {
		t.Fatalf("handshake with %s as %q: %v", addr, cfg.ServerName, err)
	}
	return c
}

// peerLeaf returns the certificate the server presented on c.
func peerLeaf(t testing.TB, c *tls.Conn) *x509.Certificate {
	t.Helper()
	certs := c.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		t.Fatal("server presented no certificate")
	}
	return certs[0]
}

// echo writes b over c and reads it back from the echo server.
func echo(t testing.TB, c net.Conn, b byte) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte{b}); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, 1)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if got[0] != b {
		t.Fatalf("echo got %q, want %q", got[0], b)
	}
}

func TestGenerate(t *testing.T) {
	tests := map[string]struct {
		hosts   []string
		wantDNS []string
		wantIPs []string
	}{
		"default hosts": {
			wantDNS: []string{"localhost", "*.localhost", "*.pico.localhost"},
			wantIPs: []string{"127.0.0.1", "::1"},
		},
		"given hosts": {
			hosts:   []string{"Edge.Example.", "10.0.0.1", "[fd00::2]", "edge.example"},
			wantDNS: []string{"edge.example"},
			wantIPs: []string{"10.0.0.1", "fd00::2"},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			b := mustGenerate(t, tt.hosts...)
			leaf := b.Cert.Leaf
			if leaf == nil {
				t.Fatal("Cert.Leaf is nil")
			}
			if got := leaf.DNSNames; !slices.Equal(got, tt.wantDNS) {
				t.Errorf("DNSNames got %q, want %q", got, tt.wantDNS)
			}
			var ips []string
			for _, ip := range leaf.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tt.wantIPs) {
				t.Errorf("IPAddresses got %q, want %q", ips, tt.wantIPs)
			}
			for _, h := range append(tt.wantDNS[:1:1], tt.wantIPs...) {
				opts := x509.VerifyOptions{Roots: b.CAPool, DNSName: h}
				if _, err := leaf.Verify(opts); err != nil {
					t.Errorf("verify %q against CAPool: %v", h, err)
				}
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(b.CAPEM) {
				t.Fatal("CAPEM holds no certificate")
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
				t.Errorf("verify against CAPEM: %v", err)
			}
			pair, err := tls.X509KeyPair(b.CertPEM, b.KeyPEM)
			if err != nil {
				t.Fatalf("X509KeyPair(CertPEM, KeyPEM): %v", err)
			}
			if !bytes.Equal(pair.Certificate[0], b.Cert.Certificate[0]) {
				t.Error("CertPEM is not Cert")
			}
		})
	}
}

func TestGenerateInvalidHost(t *testing.T) {
	if _, err := certs.Generate("bad host"); err == nil {
		t.Fatal("Generate(\"bad host\") got nil error, want one")
	}
}

func TestDefaultHosts(t *testing.T) {
	want := []string{"localhost", "*.localhost", "*.pico.localhost", "127.0.0.1", "::1"}
	got := certs.DefaultHosts()
	if !slices.Equal(got, want) {
		t.Fatalf("DefaultHosts() got %q, want %q", got, want)
	}
	got[0] = "changed"
	if got := certs.DefaultHosts(); got[0] != "localhost" {
		t.Fatalf("DefaultHosts()[0] after changing a returned slice got %q, want %q", got[0], "localhost")
	}
}

func TestTLSConfigs(t *testing.T) {
	b := mustGenerate(t)
	protos := []string{"pico-agent/1"}
	srv := certs.ServerTLSConfig(staticCert(b), protos...)
	cli := certs.ClientTLSConfig(b.CAPool, "localhost", protos...)
	protos[0] = "changed"

	if srv.MinVersion != tls.VersionTLS12 {
		t.Errorf("server MinVersion got %#x, want %#x", srv.MinVersion, tls.VersionTLS12)
	}
	if cli.MinVersion != tls.VersionTLS13 {
		t.Errorf("client MinVersion got %#x, want %#x", cli.MinVersion, tls.VersionTLS13)
	}
	addr := startTLSServer(t, srv)

	tests := map[string]struct {
		cfg       *tls.Config
		wantVer   uint16
		wantProto string
	}{
		"TLS 1.3 with ALPN": {cfg: cli, wantVer: tls.VersionTLS13, wantProto: "pico-agent/1"},
		"TLS 1.2 client": {
			cfg:     &tls.Config{RootCAs: b.CAPool, ServerName: "localhost", MaxVersion: tls.VersionTLS12},
			wantVer: tls.VersionTLS12,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c := mustHandshake(t, addr, tt.cfg)
			st := c.ConnectionState()
			if st.Version != tt.wantVer {
				t.Errorf("version got %#x, want %#x", st.Version, tt.wantVer)
			}
			if st.NegotiatedProtocol != tt.wantProto {
				t.Errorf("ALPN got %q, want %q", st.NegotiatedProtocol, tt.wantProto)
			}
			echo(t, c, 'x')
		})
	}
}
