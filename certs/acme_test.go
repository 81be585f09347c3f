package certs

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

// fallbackFor returns a Fallback serving one generated certificate.
func fallbackFor(t *testing.T) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), *tls.Certificate) {
	t.Helper()
	b, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &b.Cert, nil }, &b.Cert
}

func TestNewACMEErrors(t *testing.T) {
	fb, _ := fallbackFor(t)
	serves := func(string) bool { return true }
	for name, cfg := range map[string]ACMEConfig{
		"no fallback":     {Domain: "t.example.com", CacheDir: t.TempDir(), Serves: serves},
		"no serves":       {Domain: "t.example.com", CacheDir: t.TempDir(), Fallback: fb},
		"wildcard domain": {Domain: "*.example.com", CacheDir: t.TempDir(), Serves: serves, Fallback: fb},
		"one label":       {Domain: "example", CacheDir: t.TempDir(), Serves: serves, Fallback: fb},
		"no cache":        {Domain: "t.example.com", Serves: serves, Fallback: fb},
	} {
		if _, err := NewACME(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestACMEOnlyServedNames checks that no name but ENDPOINT.DOMAIN of a
// served endpoint reaches the CA (a real HTTP server counting requests),
// that those get the fallback at once, and that a served name whose CA
// fails gets the fallback, logged and counted.
func TestACMEOnlyServedNames(t *testing.T) {
	var requests atomic.Int64
	ca := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.Error(w, "down for the test", http.StatusServiceUnavailable)
	}))
	defer ca.Close()
	fb, fbCert := fallbackFor(t)
	set := metrics.NewSet()
	var logged bytes.Buffer
	a, err := NewACME(ACMEConfig{
		Directory: ca.URL + "/dir",
		Domain:    "T.Example.com.",
		CacheDir:  t.TempDir(),
		Serves:    func(id string) bool { return id == "foo" },
		Fallback:  fb,
		Metrics:   set,
		Log:       newTextLog(&logged),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "nobody.t.example.com", "a.foo.t.example.com", "foo.example.com", "t.example.com", "127.0.0.1"} {
		c, err := a.GetCertificate(&tls.ClientHelloInfo{ServerName: name})
		if err != nil || c != fbCert {
			t.Errorf("%q: %v, fallback %v", name, err, c == fbCert)
		}
	}
	if _, err := a.GetCertificate(&tls.ClientHelloInfo{ServerName: "other.org", SupportedProtos: []string{"acme-tls/1"}}); err == nil {
		t.Error("a TLS-ALPN-01 hello outside the domain got a certificate")
	}
	if n := requests.Load(); n != 0 {
		t.Fatalf("%d requests reached the CA for names no endpoint has", n)
	}
	// The CA is asked three times (two retries), then the handshake goes on.
	c, err := a.GetCertificate(&tls.ClientHelloInfo{ServerName: "FOO.t.example.com"})
	if err != nil || c != fbCert {
		t.Fatalf("served name with the CA failing: %v, fallback %v", err, c == fbCert)
	}
	if requests.Load() == 0 {
		t.Fatal("the served name did not reach the CA")
	}
	var out bytes.Buffer
	set.WritePrometheus(&out)
	for _, want := range []string{"pico_acme_unknown_names_total 1", "pico_acme_handshake_fallbacks_total 1", "pico_acme_ca_errors_total 3"} {
		if !strings.Contains(out.String(), want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, out.String())
		}
	}
	for _, want := range []string{"acme: the CA failed", "acme: no certificate for this name", "name=foo.t.example.com"} {
		if !strings.Contains(logged.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logged.String())
		}
	}
}

// TestCATransportLocation checks that a finalize answer without a Location
// header gets the URL of its order, learnt from the order's earlier answer.
func TestCATransportLocation(t *testing.T) {
	var base string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/new-order":
			w.Header().Set("Location", base+"/order/1")
			w.WriteHeader(http.StatusCreated)
		case "/finalize/1": // no Location, as Pebble 2.10
		case "/finalize/2":
			w.Header().Set("Location", base+"/elsewhere")
		}
		fmt.Fprintf(w, `{"status":"processing","finalize":%q}`, base+strings.Replace(r.URL.Path, "new-order", "finalize/1", 1))
	}))
	defer srv.Close()
	base = srv.URL
	tr := &caTransport{rt: http.DefaultTransport, a: &ACME{log: newTextLog(io.Discard), caErrors: metrics.NewSet().NewCounter("x")}}
	post := func(path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader("{}"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), `"finalize"`) {
			t.Fatalf("%s: body cut: %q", path, body)
		}
		return resp
	}
	post("/new-order")
	if got := post("/finalize/1").Header.Get("Location"); got != base+"/order/1" {
		t.Fatalf("finalize Location = %q, want the order's %s/order/1", got, base)
	}
	if got := post("/finalize/2").Header.Get("Location"); got != base+"/elsewhere" {
		t.Fatalf("a CA's own Location was replaced: %q", got)
	}
}

func TestACMEPolicyStripsPort(t *testing.T) {
	fb, _ := fallbackFor(t)
	a, err := NewACME(ACMEConfig{Domain: "t.example.com", CacheDir: t.TempDir(), Fallback: fb,
		Serves: func(id string) bool { return id == "foo" }})
	if err != nil {
		t.Fatal(err)
	}
	for host, ok := range map[string]bool{"foo.t.example.com:80": true, "foo.t.example.com": true, "FOO.t.example.com.": true,
		"bar.t.example.com:80": false, net.JoinHostPort("foo.t.example.com", "x"): true, "t.example.com": false} {
		if err := a.policy(t.Context(), host); (err == nil) != ok {
			t.Errorf("policy(%q) = %v, want allowed %v", host, err, ok)
		}
	}
}

// lockedWriter is an io.Writer safe for the goroutines that log.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func newTextLog(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(&lockedWriter{w: w}, nil))
}
