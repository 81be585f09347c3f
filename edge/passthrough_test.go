package edge_test

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

// tlsUpstream is a TLS echo server with a self-signed certificate of its
// own for *.example.com; it returns its address, its certificate and a
// pool that trusts it.
func tlsUpstream(t *testing.T) (string, *x509.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "upstream's own"},
		DNSNames: []string{"*.example.com"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	serveConns(t, ln, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			name := c.(*tls.Conn).ConnectionState().ServerName
			fmt.Fprintf(c, "%s says %s", name, line)
		}
	})
	return ln.Addr().String(), cert, pool
}

// dialPassthrough opens a TLS connection through the passthrough door.
func dialPassthrough(addr, sni string, pool *x509.CertPool) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conf := &tls.Config{ServerName: sni, RootCAs: pool}
	if sni == "" {
		conf.InsecureSkipVerify = true
	}
	c, err := tls.DialWithDialer(d, "tcp", addr, conf)
	return c, err
}

// checkPassthrough talks to the upstream through addr as sni and checks
// that the certificate is the upstream's.
func checkPassthrough(t *testing.T, addr, sni string, cert *x509.Certificate, pool *x509.CertPool) {
	t.Helper()
	c, err := dialPassthrough(addr, sni, pool)
	if err != nil {
		t.Fatalf("TLS through the passthrough door as %s: %v", sni, err)
	}
	defer c.Close()
	if got := c.ConnectionState().PeerCertificates[0]; !got.Equal(cert) {
		t.Fatalf("the client saw the certificate of %q, not the upstream's", got.Subject.CommonName)
	}
	for i := range 3 {
		fmt.Fprintf(c, "ping %d\n", i)
		line, err := bufio.NewReader(c).ReadString('\n')
		if want := fmt.Sprintf("%s says ping %d\n", sni, i); err != nil || line != want {
			t.Fatalf("echo: %q, %v; want %q", line, err, want)
		}
	}
}

func TestTLSPassthrough(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.MaxConnsPerEndpoint = 2 })
	addr, cert, pool := tlsUpstream(t)
	a := n.NewAgent(t, singleLink)
	if err := a.ServeUpstream(t.Context(), "sec", quicutil.KindTLS, addr); err != nil {
		t.Fatal(err)
	}
	if err := a.ServeUpstream(t.Context(), "web", quicutil.KindHTTP, edgetest.Upstream(t, echoHeaders())); err != nil {
		t.Fatal(err)
	}
	checkPassthrough(t, n.PassthroughAddr, "sec.example.com", cert, pool)

	t.Run("refused with an alert", func(t *testing.T) {
		for sni, want := range map[string]string{
			"":                 "unrecognized name", // no SNI
			"nope.example.com": "unrecognized name", // no such endpoint
			"web.example.com":  "unrecognized name", // an HTTP endpoint
			"-x.example.com":   "unrecognized name", // not an endpoint ID
		} {
			start := time.Now()
			c, err := dialPassthrough(n.PassthroughAddr, sni, pool)
			if err == nil {
				c.Close()
				t.Fatalf("SNI %q: handshake succeeded", sni)
			}
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("SNI %q: %v; want an alert %q", sni, err, want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("SNI %q: the alert took %s", sni, d)
			}
		}
		// Not TLS at all: an unexpected_message alert, then EOF.
		c, err := net.Dial("tcp", n.PassthroughAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: sec.example.com\r\n\r\n")
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, []byte{21, 3, 3, 0, 2, 2, 10}) {
			t.Fatalf("plain HTTP on the passthrough port: %v, %v; want a fatal unexpected_message alert", got, err)
		}
	})

	t.Run("the connection limit", func(t *testing.T) {
		var held []*tls.Conn
		for range 2 {
			c, err := dialPassthrough(n.PassthroughAddr, "sec.example.com", pool)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			held = append(held, c)
		}
		if c, err := dialPassthrough(n.PassthroughAddr, "sec.example.com", pool); err == nil || !strings.Contains(err.Error(), "internal error") {
			if c != nil {
				c.Close()
			}
			t.Fatalf("a third connection with MaxConnsPerEndpoint 2: %v; want an internal_error alert", err)
		}
		held[0].Close()
		waitFor(t, "a place freed", func() bool {
			c, err := dialPassthrough(n.PassthroughAddr, "sec.example.com", pool)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	})

	t.Run("only the passthrough door reaches it", func(t *testing.T) {
		req, _ := http.NewRequest("GET", n.ProxyURL, nil)
		req.Host = "sec.example.com"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "TLS passthrough endpoint") {
			t.Fatalf("HTTP door: %d %s", resp.StatusCode, body)
		}
		fwd := n.NewAgent(t, singleLink)
		if c, err := fwd.Dial(t.Context(), "sec"); err == nil || !strings.Contains(err.Error(), "passthrough") {
			if c != nil {
				c.Close()
			}
			t.Fatalf("pico-agent forward to a tls endpoint: %v; want a refusal naming the passthrough port", err)
		}
		other := n.NewAgent(t, singleLink)
		if err := other.ServeUpstream(t.Context(), "sec", quicutil.KindTCP, addr); err == nil || !strings.Contains(err.Error(), "served as tls") {
			t.Fatalf("registering sec as tcp too: %v; want a conflict", err)
		}
	})

	resp, err := http.Get(n.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`pico_passthrough_refused_total{reason="no_sni"} 1`, `pico_passthrough_refused_total{reason="unknown_endpoint"} 3`,
		`pico_passthrough_refused_total{reason="malformed"} 1`, `pico_passthrough_connections_total `} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s:\n%s", want, metrics)
		}
	}
	// The limit's refusal, and maybe more while the freed place comes back.
	if strings.Contains(string(metrics), `pico_passthrough_refused_total{reason="overloaded"} 0`) {
		t.Error("no overloaded refusal counted")
	}
}

func TestClusterRelaysTLSPassthrough(t *testing.T) {
	cl := edgetest.NewCluster(t, 2)
	n0, n1 := cl.Nodes[0], cl.Nodes[1]
	addr, cert, pool := tlsUpstream(t)
	a := n0.NewAgent(t, singleLink)
	if err := a.ServeUpstream(t.Context(), "sec", quicutil.KindTLS, addr); err != nil {
		t.Fatal(err)
	}
	n1.WaitRemote(t, "sec", 1)
	checkPassthrough(t, n1.PassthroughAddr, "sec.example.com", cert, pool)
	checkPassthrough(t, n0.PassthroughAddr, "sec.example.com", cert, pool)
}

// A passthrough connection open when its node stops is drained like a TCP
// forward: it may go on for the grace, then both ends see a clean end,
// and the node stops with no goroutine left (goleak in TestMain).
func TestTLSPassthroughDrain(t *testing.T) {
	n := edgetest.NewNode(t, func(c *edge.Config) { c.ShutdownGrace = 300 * time.Millisecond })
	addr, cert, pool := tlsUpstream(t)
	a := n.NewAgent(t, singleLink)
	if err := a.ServeUpstream(t.Context(), "sec", quicutil.KindTLS, addr); err != nil {
		t.Fatal(err)
	}
	checkPassthrough(t, n.PassthroughAddr, "sec.example.com", cert, pool)
	c, err := dialPassthrough(n.PassthroughAddr, "sec.example.com", pool)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stopped := make(chan struct{})
	go func() { n.Stop(t); close(stopped) }()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a passthrough connection of a stopping node: %v; want its end within the grace", err)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the node did not stop within 10 s with a passthrough connection open")
	}
	if c, err := net.DialTimeout("tcp", n.PassthroughAddr, time.Second); err == nil {
		c.Close()
		t.Fatal("the stopped node's passthrough port still takes connections")
	}
}
