package acmetest

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pico-edge/pico/certs"
)

// base is the --acme-domain of the tests; the DNS server the test runs
// sends Pebble to 127.0.0.1 for every name under it.
const base = "pico.test"

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// pebble is a Pebble CA the test runs on loopback.
type pebble struct {
	*proc
	dir     string // its files: TLS pair, its TLS CA (tls-ca.pem), its issuing root (root.pem)
	port    string // ACME API
	dirURL  string
	rootPEM string // file of the root that signs the certificates it issues
}

// newPebble prepares a Pebble on a free port; start runs it. Its own HTTPS
// certificate is signed by a CA made with certs.Generate, given to the
// edge as --acme-ca-roots.
func newPebble(t *testing.T) *pebble {
	t.Helper()
	p := &pebble{dir: t.TempDir(), port: freePort(t)}
	p.dirURL = "https://127.0.0.1:" + p.port + "/dir"
	b, err := certs.Generate("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"cert.pem": b.CertPEM, "key.pem": b.KeyPEM, "tls-ca.pem": b.CAPEM} {
		if err := os.WriteFile(filepath.Join(p.dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p.rootPEM = filepath.Join(p.dir, "root.pem")
	return p
}

func (p *pebble) tlsCA() string { return filepath.Join(p.dir, "tls-ca.pem") }

// start runs Pebble with real validation: names resolve through dnsAddr,
// HTTP-01 goes to httpPort and TLS-ALPN-01 to tlsPort on 127.0.0.1, and
// certificates are valid for validity (0: Pebble's default, 90 days).
func (p *pebble) start(t *testing.T, dnsAddr, httpPort, tlsPort string, validity time.Duration) {
	t.Helper()
	mgmt := "127.0.0.1:" + freePort(t)
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":           "127.0.0.1:" + p.port,
		"managementListenAddress": mgmt,
		"certificate":             filepath.Join(p.dir, "cert.pem"),
		"privateKey":              filepath.Join(p.dir, "key.pem"),
		"httpPort":                mustAtoi(t, httpPort),
		"tlsPort":                 mustAtoi(t, tlsPort),
		"retryAfter":              map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":            "ecdsa",
		"profiles": map[string]any{"default": map[string]any{
			"description": "test", "validityPeriod": int(validity / time.Second)}},
	}}
	data, _ := json.Marshal(conf)
	file := filepath.Join(p.dir, "pebble.json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	p.proc = start(t, "pebble", []string{
		"PEBBLE_VA_NOSLEEP=1",      // validate at once (the validation itself is real)
		"PEBBLE_WFE_NONCEREJECT=0", // no random badNonce answers
		"PEBBLE_AUTHZREUSE=0",      // every order is validated anew
	}, bin.pebble, "-config", file, "-dnsserver", dnsAddr)
	p.wait(t, 0, "ACME directory available")
	pool, err := certs.LoadPool(p.tlsCA())
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer c.CloseIdleConnections()
	// Pebble says it listens just before it does.
	var resp *http.Response
	for try := 0; ; try++ {
		if resp, err = c.Get("https://" + mgmt + "/roots/0"); err == nil {
			break
		}
		if try == 100 {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer resp.Body.Close()
	root, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("pebble root: %d %v", resp.StatusCode, err)
	}
	if err := os.WriteFile(p.rootPEM, root, 0o600); err != nil {
		t.Fatal(err)
	}
}

// orders is the number of orders Pebble has taken, from its log.
func (p *pebble) orders() int { return p.count("Added order") }

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// edgeNode is a pico-edge the test runs.
type edgeNode struct {
	*proc
	dir                              string
	proxy, tls, agent, admin, gossip string
}

// startEdge runs pico-edge on loopback ports with data directory dir.
func startEdge(t *testing.T, dir string, extra ...string) *edgeNode {
	t.Helper()
	args := []string{"--data-dir", dir, "--log-format", "json",
		"--proxy-addr", "127.0.0.1:0", "--proxy-tls-addr", "127.0.0.1:0",
		"--agent-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}
	p := start(t, "pico-edge", nil, bin.edge, append(args, extra...)...)
	line := p.wait(t, 0, `"edge node ready"`)
	e := &edgeNode{proc: p, dir: dir, proxy: field(t, line, "proxy_addr"), tls: field(t, line, "proxy_tls_addr"),
		agent: field(t, line, "agent_addr"), admin: field(t, line, "admin_addr")}
	if strings.Contains(strings.Join(extra, " "), "--gossip-addr") {
		e.gossip = field(t, p.wait(t, 0, `"cluster member started"`), "gossip_addr")
	}
	return e
}

// serve runs `pico-agent http id upstream` against e and waits until the
// endpoint is registered.
func (e *edgeNode) serve(t *testing.T, id, upstream string) *proc {
	t.Helper()
	a := start(t, "pico-agent "+id, nil, bin.agent, "--edge", e.agent, "--ca", filepath.Join(e.dir, "ca.pem"),
		"--log-format", "json", "http", id, upstream)
	a.wait(t, 0, fmt.Sprintf("endpoint %s (http) is registered", id))
	return a
}

// metric returns the value of a counter on e's /metrics ("" if absent).
func (e *edgeNode) metric(t *testing.T, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + e.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return ""
}

// upstream is an HTTP server on loopback that names the Host it was asked.
func upstream(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.Host)
		fmt.Fprintf(w, "hello from %s", host)
	}))
	t.Cleanup(srv.Close)
	return portOf(t, srv.Listener.Addr().String())
}

// curl fetches https://name:port/ from 127.0.0.1 with curl, checking the
// server's certificate against caFile.
func curl(t *testing.T, caFile, name, tlsAddr string) (string, error) {
	t.Helper()
	port := portOf(t, tlsAddr)
	out, err := exec.Command("curl", "-sS", "--max-time", "60", "--cacert", caFile,
		"--resolve", name+":"+port+":127.0.0.1", "https://"+name+":"+port+"/").CombinedOutput()
	return string(out), err
}

// served is the leaf certificate a handshake for name at addr gets.
func served(t *testing.T, addr, name string) *x509.Certificate {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Minute}, "tcp", addr,
		&tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatalf("handshake for %s at %s: %v", name, addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func fromPebble(c *x509.Certificate) bool { return strings.HasPrefix(c.Issuer.CommonName, "Pebble") }

func clusterSecret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	file := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(file, []byte(base64.StdEncoding.EncodeToString(b)), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestACME obtains a certificate from a real Pebble on demand, validated
// over TLS-ALPN-01 on the edge's HTTPS door: only for a name whose endpoint
// an agent registered, shared with a second node through one cache
// directory with no second order, and still served when the CA is down,
// also after a restart.
func TestACME(t *testing.T) {
	e2e(t)
	dnsSrv, dnsAddr := startDNS(t)
	pb := newPebble(t)
	secret := clusterSecret(t)
	acmeFlags := []string{"--acme-domain", base, "--acme-directory", pb.dirURL,
		"--acme-ca-roots", pb.tlsCA(), "--acme-email", "ops@" + base, "--cluster-secret-file", secret}
	dir1 := t.TempDir()
	e1 := startEdge(t, dir1, append(acmeFlags, "--node-id", "n1", "--gossip-addr", "127.0.0.1:0")...)
	pb.start(t, dnsAddr, portOf(t, e1.proxy), portOf(t, e1.tls), 0)
	up := upstream(t)
	e1.serve(t, "foo", up)

	foo := "foo." + base
	out, err := curl(t, pb.rootPEM, foo, e1.tls)
	if err != nil || out != "hello from "+foo {
		t.Fatalf("curl https://%s with Pebble's root: %v: %s", foo, err, out)
	}
	leaf := served(t, e1.tls, foo)
	if !fromPebble(leaf) || leaf.Subject.CommonName != foo && (len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != foo) {
		t.Fatalf("certificate for %s: issuer %q, names %v", foo, leaf.Issuer.CommonName, leaf.DNSNames)
	}
	if n := pb.count("set VALID by completed challenge"); n < 1 {
		t.Fatalf("Pebble validated no challenge")
	}
	if dnsSrv.asked(foo) == 0 {
		t.Fatalf("Pebble never resolved %s: the validation was not real", foo)
	}
	if _, err := os.Stat(filepath.Join(dir1, "acme", foo)); err != nil {
		t.Fatalf("certificate not in the data directory: %v", err)
	}
	orders := pb.orders()
	if orders < 1 {
		t.Fatalf("Pebble logged %d orders", orders)
	}

	// pico-edge status certs: the name, Pebble as issuer, 90 days left.
	st, err := exec.Command(bin.edge, "status", "certs", "--admin", "http://"+e1.admin).CombinedOutput()
	for _, want := range []string{"ACME certificates for *." + base + " (1 held)", "NAME", foo + "  ", "Pebble Intermediate CA", "89d\n"} {
		if err != nil || !strings.Contains(string(st), want) {
			t.Fatalf("pico-edge status certs lacks %q (%v):\n%s", want, err, st)
		}
	}

	t.Run("unregistered name gets no order", func(t *testing.T) {
		nobody := "nobody." + base
		for _, name := range []string{nobody, "foo.bar." + base, "elsewhere.example.com"} {
			if c := served(t, e1.tls, name); fromPebble(c) {
				t.Fatalf("%s got a Pebble certificate", name)
			}
		}
		if out, err := curl(t, pb.rootPEM, nobody, e1.tls); err == nil {
			t.Fatalf("curl https://%s passed with Pebble's root: %s", nobody, out)
		}
		if got := pb.orders(); got != orders {
			t.Fatalf("Pebble has %d orders, want still %d", got, orders)
		}
		if n := dnsSrv.asked(nobody); n != 0 {
			t.Fatalf("Pebble resolved %s %d times", nobody, n)
		}
		if v := e1.metric(t, "pico_acme_unknown_names_total"); v != "2" {
			t.Fatalf("pico_acme_unknown_names_total = %q, want 2 (two handshakes for nobody.%s)", v, base)
		}
	})

	t.Run("second node serves it with no second order", func(t *testing.T) {
		e2 := startEdge(t, t.TempDir(), append(acmeFlags, "--node-id", "n2", "--gossip-addr", "127.0.0.1:0",
			"--join", e1.gossip, "--acme-cache-dir", filepath.Join(dir1, "acme"))...)
		// Node 2 learns of foo by gossip; until then foo is no name of its.
		deadline := time.Now().Add(waitTimeout)
		for !fromPebble(served(t, e2.tls, foo)) {
			if time.Now().After(deadline) {
				t.Fatalf("node 2 does not serve Pebble's certificate for %s within %s", foo, waitTimeout)
			}
			time.Sleep(200 * time.Millisecond)
		}
		out, err := curl(t, pb.rootPEM, foo, e2.tls)
		if err != nil || out != "hello from "+foo {
			t.Fatalf("curl node 2: %v: %s", err, out)
		}
		if got := pb.orders(); got != orders {
			t.Fatalf("Pebble has %d orders, want still %d", got, orders)
		}
		e2.wait(t, 0, "acme: certificate loaded from the cache")
	})

	t.Run("CA down", func(t *testing.T) {
		pb.stop()
		if out, err := curl(t, pb.rootPEM, foo, e1.tls); err != nil || out != "hello from "+foo {
			t.Fatalf("curl %s with the CA down: %v: %s", foo, err, out)
		}
		// A new name cannot be had: the handshake gets the fallback, the
		// error is logged and counted.
		e1.serve(t, "bar", up)
		bar := "bar." + base
		from := e1.mark()
		if c := served(t, e1.tls, bar); fromPebble(c) {
			t.Fatalf("%s got a Pebble certificate with Pebble down", bar)
		}
		e1.wait(t, from, "acme: the CA did not answer")
		e1.wait(t, from, "acme: no certificate for this name")
		if v := e1.metric(t, "pico_acme_ca_errors_total"); v == "" || v == "0" {
			t.Fatalf("pico_acme_ca_errors_total = %q", v)
		}
		if v := e1.metric(t, "pico_acme_handshake_fallbacks_total"); v == "" || v == "0" {
			t.Fatalf("pico_acme_handshake_fallbacks_total = %q", v)
		}

		// A restart with the CA still down serves the cached certificate.
		e1.stop()
		e1 = startEdge(t, dir1, append(acmeFlags, "--node-id", "n1")...)
		e1.serve(t, "foo", up)
		if out, err := curl(t, pb.rootPEM, foo, e1.tls); err != nil || out != "hello from "+foo {
			t.Fatalf("curl %s after a restart with the CA down: %v: %s", foo, err, out)
		}
	})
}

// TestACMERenewal has Pebble issue certificates valid for 20 s and the
// edge renew them 15 s ahead, and Pebble's TLS-ALPN-01 port lead nowhere,
// so that every certificate is validated over HTTP-01 on the plain door:
// a renewed certificate (another serial) is served without a restart.
func TestACMERenewal(t *testing.T) {
	e2e(t)
	_, dnsAddr := startDNS(t)
	pb := newPebble(t)
	e := startEdge(t, t.TempDir(), "--acme-domain", base, "--acme-directory", pb.dirURL,
		"--acme-ca-roots", pb.tlsCA(), "--acme-renew-before", "15s")
	pb.start(t, dnsAddr, portOf(t, e.proxy), freePort(t), 20*time.Second)
	e.serve(t, "foo", upstream(t))
	foo := "foo." + base
	out, err := curl(t, pb.rootPEM, foo, e.tls)
	if err != nil || out != "hello from "+foo {
		t.Fatalf("curl: %v: %s", err, out)
	}
	first := served(t, e.tls, foo)
	if !fromPebble(first) {
		t.Fatalf("issuer %q", first.Issuer.CommonName)
	}
	if pb.count("Attempting to validate w/ HTTP") == 0 {
		t.Fatal("Pebble made no HTTP-01 validation")
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		c := served(t, e.tls, foo)
		if c.SerialNumber.Cmp(first.SerialNumber) != 0 {
			if !fromPebble(c) || !c.NotAfter.After(first.NotAfter) {
				t.Fatalf("renewed certificate: issuer %q, not after %s (first: %s)", c.Issuer.CommonName, c.NotAfter, first.NotAfter)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("certificate not renewed within %s (not after %s)", waitTimeout, first.NotAfter)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if out, err := curl(t, pb.rootPEM, foo, e.tls); err != nil || out != "hello from "+foo {
		t.Fatalf("curl after renewal: %v: %s", err, out)
	}
}
