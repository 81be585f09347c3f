package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// passName is the host name of the passthrough endpoint "sec": its first
// label names the endpoint, and the upstream's own certificate is for it.
const passName = "sec.pico.test"

// startSServer runs `openssl s_server -www` on 127.0.0.1 with a new
// self-signed certificate for passName, and returns its port and the
// certificate's file (the client's --cacert).
func startSServer(t *testing.T) (port, certFile string) {
	t.Helper()
	openssl := needCommand(t, "openssl", "CI installs openssl from Debian")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if out, code := runCmd(t, nil, openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
		"-nodes", "-keyout", keyFile, "-out", certFile, "-days", "1", "-subj", "/CN=upstream's own "+passName,
		"-addext", "subjectAltName=DNS:"+passName); code != 0 {
		t.Fatalf("openssl req: exit %d: %s", code, out)
	}
	for range 5 { // the port may be taken between freePort and the bind
		port = freePort(t)
		p := startProc(t, "openssl s_server", openssl, "s_server", "-accept", "127.0.0.1:"+port,
			"-cert", certFile, "-key", keyFile, "-www")
		if _, ok := p.tryWaitLine(t, 0, "ACCEPT", startTimeout, contains("ACCEPT")); ok {
			return port, certFile
		}
	}
	t.Fatal("openssl s_server did not start in 5 attempts")
	return "", ""
}

// curlPassthrough fetches path from the s_server behind the passthrough
// door at addr, verifying the upstream's certificate with certFile.
func curlPassthrough(t *testing.T, addr, certFile, path string) string {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	out, code := runCmd(t, nil, "curl", "-sS", "--max-time", "20", "--cacert", certFile,
		"--resolve", passName+":"+port+":127.0.0.1", "https://"+passName+":"+port+path)
	if code != 0 {
		t.Fatalf("curl through the passthrough door %s: exit %d: %s", addr, code, out)
	}
	return out
}

// TestTLSPassthrough serves openssl s_server, with its own certificate,
// behind `pico-agent tls` on node 1 of two, and fetches from it with curl
// --cacert of that certificate through each node's passthrough door: on
// node 1 directly, on node 2 relayed. The edges' memory holds none of the
// plaintext; a bad or absent SNI gets an alert at once.
func TestTLSPassthrough(t *testing.T) {
	e2e(t)
	needCommand(t, "curl", "CI installs curl from Debian")
	port, certFile := startSServer(t)
	c := newCluster(t, 2, clusterOpts{extra: func(int) []string { return []string{"--passthrough-addr", "127.0.0.1:0"} }})
	n1, n2 := c.nodes[0], c.nodes[1]
	if n1.pass == "" || n2.pass == "" {
		t.Fatalf("a node's ready line lacks passthrough_addr: %q %q", n1.pass, n2.pass)
	}
	c.serve(t, c.edges(0), 1, "tls", "sec", port)
	// A canary that the edges do hold: an HTTP endpoint's ID in their tables.
	canary := "canary-" + randomHex(t, 6)
	c.serve(t, c.edges(0), 1, "http", canary, freePort(t))
	n2.waitOwners(t, "sec", waitTimeout, n1.id)
	n2.waitOwners(t, canary, waitTimeout, n1.id)

	secret := "/pico-plaintext-" + randomHex(t, 12)
	var psks [][]byte // the sessions' resumption secrets, which never travel
	for _, nd := range []*clusterNode{n1, n2} {
		out := curlPassthrough(t, nd.pass, certFile, secret)
		// s_server -www answers with the session it holds with curl.
		_, psk, ok := strings.Cut(out, "Resumption PSK: ")
		psk, _, _ = strings.Cut(psk, "\n")
		b, err := hex.DecodeString(strings.TrimSpace(psk))
		if !ok || err != nil || len(b) < 32 || !strings.Contains(out, "s_server") || !strings.Contains(out, "Cipher    : TLS_") {
			t.Fatalf("%s: not s_server's page of a TLS 1.3 session:\n%s", nd.id, out)
		}
		psks = append(psks, b)
	}
	for _, nd := range []*clusterNode{n1, n2} {
		mem := processMemory(t, nd.pid())
		if !bytes.Contains(mem, []byte(canary)) {
			t.Fatalf("%s: the memory read (%d bytes) lacks the canary %q: the scan sees nothing", nd.id, len(mem), canary)
		}
		if bytes.Contains(mem, []byte(secret)) {
			t.Fatalf("%s holds the request's plaintext %q: it terminated TLS", nd.id, secret)
		}
		for _, psk := range psks {
			if bytes.Contains(mem, psk) {
				t.Fatalf("%s holds a session's resumption secret: it has the TLS session", nd.id)
			}
		}
	}

	// A bad or absent SNI: an alert, at once.
	openssl := needCommand(t, "openssl", "")
	for name, args := range map[string][]string{
		"no SNI":           {"-noservername"},
		"unknown endpoint": {"-servername", "nope.pico.test"},
		"an HTTP endpoint": {"-servername", canary + ".pico.test"},
	} {
		for _, nd := range []*clusterNode{n1, n2} {
			start := time.Now()
			out, code := runCmd(t, strings.NewReader(""), openssl, append([]string{"s_client", "-connect", nd.pass}, args...)...)
			if code == 0 || !strings.Contains(out, "alert number 112") {
				t.Fatalf("%s on %s: exit %d, want alert 112 (unrecognized_name):\n%s", name, nd.id, code, out)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("%s on %s: the alert took %s", name, nd.id, d)
			}
		}
	}
	conn, err := net.DialTimeout("tcp", n2.pass, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", passName)
	if got, err := io.ReadAll(conn); err != nil || !bytes.Equal(got, []byte{21, 3, 3, 0, 2, 2, 10}) {
		t.Fatalf("plain HTTP on the passthrough port: %x, %v; want an unexpected_message alert and EOF", got, err)
	}
	resp, err := n2.admc.Get("http://" + n2.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	metrics := string(body)
	for _, want := range []string{`pico_passthrough_refused_total{reason="no_sni"} 1`,
		`pico_passthrough_refused_total{reason="unknown_endpoint"} 2`, `pico_passthrough_refused_total{reason="malformed"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("node 2's metrics lack %s", want)
		}
	}
}

// processMemory reads every readable mapping of process pid (a child of
// the test, which may read it).
func processMemory(t *testing.T, pid int) []byte {
	t.Helper()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Skipf("cannot read the edge's memory maps: %v", err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Skipf("cannot read the edge's memory: %v", err)
	}
	defer f.Close()
	var out []byte
	for _, line := range strings.Split(strings.TrimSpace(string(maps)), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || !strings.HasPrefix(fields[1], "r") {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || b-a > 1<<30 {
			continue
		}
		buf := make([]byte, b-a)
		if n, _ := f.ReadAt(buf, int64(a)); n > 0 {
			out = append(out, buf[:n]...)
		}
	}
	return out
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
