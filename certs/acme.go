package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// LetsEncrypt is the default ACME directory (--acme-directory).
const LetsEncrypt = acme.LetsEncryptURL

// DefaultACMERenewBefore is how long before expiry an ACME certificate is
// renewed when ACMEConfig.RenewBefore is not positive.
const DefaultACMERenewBefore = 30 * 24 * time.Hour

// acmeLogEvery is how often a failure for one name is logged at most.
const acmeLogEvery = time.Minute

// ACMEConfig configures an ACME client (RFC 8555) that obtains certificates
// on demand for the endpoints a cluster serves.
type ACMEConfig struct {
	Email     string         // contact address given to the CA (may be empty)
	Directory string         // the CA's directory URL; LetsEncrypt when empty
	Roots     *x509.CertPool // roots for the directory's TLS; nil: the system's
	// Domain is the base domain: endpoint foo gets the name foo.Domain.
	Domain string
	// CacheDir keeps the account key, the certificates and the challenge
	// answers (created 0700). Nodes given one shared directory share them.
	CacheDir string
	// RenewBefore is how long before expiry a certificate is renewed
	// (DefaultACMERenewBefore when not positive; autocert caps it at 30 days).
	RenewBefore time.Duration
	// Serves reports whether endpoint id is registered anywhere in the
	// cluster. Only names it accepts are ever ordered.
	Serves func(id string) bool
	// Fallback serves every handshake that gets no ACME certificate: other
	// names, no name, a CA that cannot issue (required).
	Fallback func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	Log      *slog.Logger // nil: discarded
	// Metrics receives pico_acme_* counters; nil: a private set.
	Metrics *metrics.Set
}

// ACME serves certificates from an ACME CA for names endpoint.Domain whose
// endpoint the cluster serves, answering the CA's TLS-ALPN-01 challenges in
// GetCertificate and its HTTP-01 challenges in HTTPHandler. Certificates are
// kept in CacheDir and renewed RenewBefore their expiry (at most 30 days);
// a failed order is tried again on a handshake a minute later at the
// earliest, a failed renewal 30 to 60 minutes later, while a certificate
// still valid keeps being served.
type ACME struct {
	cfg  ACMEConfig
	m    *autocert.Manager
	http http.Handler
	log  *slog.Logger

	obtained  *metrics.Counter // certificates written to the cache
	caErrors  *metrics.Counter // requests to the CA that failed
	failures  *metrics.Counter // handshakes of a served name that got the fallback
	refused   *metrics.Counter // handshakes of names no endpoint has
	mu        sync.Mutex
	loggedAt  map[string]time.Time         // name -> last failure logged
	certs     map[string]*x509.Certificate // name -> leaf in the cache
	lastError atomic.Pointer[string]
}

// NewACME checks cfg and makes the client; it contacts the CA only when a
// certificate is needed.
func NewACME(cfg ACMEConfig) (*ACME, error) {
	if cfg.Fallback == nil || cfg.Serves == nil {
		return nil, errors.New("certs: acme: Fallback and Serves are required")
	}
	cfg.Domain = strings.ToLower(strings.Trim(cfg.Domain, "."))
	if cfg.Domain == "" || !strings.Contains(cfg.Domain, ".") || strings.ContainsAny(cfg.Domain, "*:/ ") {
		return nil, fmt.Errorf("certs: acme: base domain %q: want a DNS name such as tunnels.example.com", cfg.Domain)
	}
	if cfg.CacheDir == "" {
		return nil, fmt.Errorf("certs: acme: %w for the cache", ErrNoDir)
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("certs: acme: cache: %w", err)
	}
	if cfg.Directory == "" {
		cfg.Directory = LetsEncrypt
	}
	if cfg.RenewBefore <= 0 {
		cfg.RenewBefore = DefaultACMERenewBefore
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	a := &ACME{
		cfg:      cfg,
		log:      cfg.Log,
		obtained: cfg.Metrics.NewCounter("pico_acme_certificates_obtained_total"),
		caErrors: cfg.Metrics.NewCounter("pico_acme_ca_errors_total"),
		failures: cfg.Metrics.NewCounter("pico_acme_handshake_fallbacks_total"),
		refused:  cfg.Metrics.NewCounter("pico_acme_unknown_names_total"),
		loggedAt: make(map[string]time.Time),
		certs:    make(map[string]*x509.Certificate),
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.Roots != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: cfg.Roots, MinVersion: tls.VersionTLS12}
	}
	a.m = &autocert.Manager{
		Prompt:      autocert.AcceptTOS,
		Cache:       &acmeCache{dir: autocert.DirCache(cfg.CacheDir), a: a},
		HostPolicy:  a.policy,
		RenewBefore: cfg.RenewBefore,
		Email:       cfg.Email,
		Client: &acme.Client{
			DirectoryURL: cfg.Directory,
			HTTPClient:   &http.Client{Transport: &caTransport{rt: tr, a: a}, Timeout: time.Minute},
			UserAgent:    "pico-edge",
			// A CA answering 5xx or 429 is asked again twice, not until
			// the order's 5 minutes are over: a handshake waits for it.
			RetryBackoff: caRetry,
		},
	}
	cfg.Metrics.NewGauge("pico_acme_certificates", func() float64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		return float64(len(a.certs))
	})
	return a, nil
}

// caRetries is how often a request the CA failed (5xx, 429, badNonce) is
// sent again.
const caRetries = 2

// caRetry is acme.Client.RetryBackoff: 1 s, then 2 s (or the CA's
// Retry-After up to 10 s), then no more.
func caRetry(n int, _ *http.Request, resp *http.Response) time.Duration {
	if n > caRetries {
		return -1
	}
	if resp != nil {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			return min(time.Duration(s)*time.Second, 10*time.Second)
		}
	}
	return time.Duration(n) * time.Second
}

// Domain returns the base domain.
func (a *ACME) Domain() string { return a.cfg.Domain }

// endpoint returns the endpoint of name, a normalised server name, and
// whether name is ENDPOINT.Domain with a single label before the domain.
func (a *ACME) endpoint(name string) (string, bool) {
	id, ok := strings.CutSuffix(name, "."+a.cfg.Domain)
	if !ok || id == "" || strings.Contains(id, ".") {
		return "", false
	}
	return id, true
}

// policy is autocert's HostPolicy: only names the cluster serves.
func (a *ACME) policy(_ context.Context, host string) error {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h // HTTP-01 requests name the port in Host
	}
	id, ok := a.endpoint(strings.ToLower(strings.TrimSuffix(host, ".")))
	if !ok || !a.cfg.Serves(id) {
		return fmt.Errorf("certs: acme: no endpoint serves %q", host)
	}
	return nil
}

// GetCertificate fits tls.Config.GetCertificate. A CA's TLS-ALPN-01
// handshake gets its challenge certificate; a name ENDPOINT.Domain whose
// endpoint is registered gets its ACME certificate (obtained now if there
// is none, which holds this handshake until the CA answers); everything
// else, and a name whose certificate cannot be had, gets Fallback. It never
// contacts the CA for a name no endpoint has.
func (a *ACME) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if slices.Equal(hello.SupportedProtos, []string{acme.ALPNProto}) {
		if _, ok := a.endpoint(name); !ok {
			return nil, fmt.Errorf("certs: acme: no challenge for %q", name)
		}
		c, err := a.m.GetCertificate(hello)
		if err != nil {
			a.log.Warn("acme: no answer for a TLS-ALPN-01 challenge", "name", name, "err", err)
		}
		return c, err
	}
	id, ok := a.endpoint(name)
	if !ok {
		return a.cfg.Fallback(hello)
	}
	if !a.cfg.Serves(id) {
		a.refused.Inc()
		return a.cfg.Fallback(hello)
	}
	cert, err := a.m.GetCertificate(hello)
	if err != nil {
		a.failures.Inc()
		a.logFailure(name, err)
		return a.cfg.Fallback(hello)
	}
	return cert, nil
}

// logFailure logs a name's failure once per acmeLogEvery.
func (a *ACME) logFailure(name string, err error) {
	a.mu.Lock()
	last := a.loggedAt[name]
	now := time.Now()
	log := now.Sub(last) >= acmeLogEvery
	if log {
		a.loggedAt[name] = now
	}
	a.mu.Unlock()
	if log {
		a.log.Warn("acme: no certificate for this name; serving the fallback certificate (tried again in a minute)", "name", name, "err", err)
	}
}

// HTTPHandler serves the CA's HTTP-01 requests (GET
// /.well-known/acme-challenge/TOKEN) and passes every other request to next.
func (a *ACME) HTTPHandler(next http.Handler) http.Handler {
	return a.m.HTTPHandler(next)
}

// CertInfo describes one certificate the ACME client holds.
type CertInfo struct {
	Name     string    `json:"name"`
	Issuer   string    `json:"issuer"`
	NotAfter time.Time `json:"not_after"`
}

// Certificates returns the certificates in the cache this process has read
// or written, sorted by name.
func (a *ACME) Certificates() []CertInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]CertInfo, 0, len(a.certs))
	for name, leaf := range a.certs {
		out = append(out, CertInfo{Name: name, Issuer: leaf.Issuer.CommonName, NotAfter: leaf.NotAfter})
	}
	slices.SortFunc(out, func(x, y CertInfo) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// note records a certificate read from or written to the cache.
func (a *ACME) note(key string, data []byte, put bool) {
	name, _ := strings.CutSuffix(key, "+rsa")
	if strings.Contains(name, "+") || strings.HasPrefix(name, "acme_account") {
		return // the account key, a challenge answer
	}
	leaf := cacheLeaf(data)
	if leaf == nil {
		return
	}
	a.mu.Lock()
	prev := a.certs[name]
	a.certs[name] = leaf
	a.mu.Unlock()
	if put {
		a.obtained.Inc()
		a.log.Info("acme: certificate obtained", "name", name, "issuer", leaf.Issuer.CommonName, "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	} else if prev == nil {
		a.log.Info("acme: certificate loaded from the cache", "name", name, "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
}

// cacheLeaf returns the first certificate of a cache entry (a private key
// block, then the chain), or nil.
func cacheLeaf(data []byte) *x509.Certificate {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil
		}
		if block.Type == "CERTIFICATE" {
			leaf, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil
			}
			return leaf
		}
	}
}

// acmeCache is autocert's directory cache, telling the ACME client what it
// holds.
type acmeCache struct {
	dir autocert.DirCache
	a   *ACME
}

func (c *acmeCache) Get(ctx context.Context, key string) ([]byte, error) {
	data, err := c.dir.Get(ctx, key)
	if err == nil {
		c.a.note(key, data, false)
	}
	return data, err
}

func (c *acmeCache) Put(ctx context.Context, key string, data []byte) error {
	err := c.dir.Put(ctx, key, data)
	if err == nil {
		c.a.note(key, data, true)
	}
	return err
}

func (c *acmeCache) Delete(ctx context.Context, key string) error { return c.dir.Delete(ctx, key) }

// caTransport counts and logs the requests to the CA that fail: no answer,
// or a server error. It also gives a finalize answer without a Location
// header the order's URL: RFC 8555 (section 7.4) does not require one,
// some CAs (Pebble since 2.10) send none, and x/crypto/acme needs it to
// wait for a certificate still being processed.
type caTransport struct {
	rt http.RoundTripper
	a  *ACME

	mu     sync.Mutex
	orders map[string]string // finalize URL -> order URL
}

func (t *caTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	switch {
	case err != nil:
		t.a.caErrors.Inc()
		t.a.log.Warn("acme: the CA did not answer; certificates still valid are served, orders and renewals are retried later", "url", r.URL.String(), "err", err)
		return nil, err
	case resp.StatusCode >= 500:
		t.a.caErrors.Inc()
		t.a.log.Warn("acme: the CA failed", "url", r.URL.String(), "status", resp.StatusCode)
		return resp, nil
	}
	if r.Method != http.MethodPost || resp.StatusCode >= 300 || !strings.Contains(resp.Header.Get("Content-Type"), "json") {
		return resp, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return resp, nil // the client sees the cut body
	}
	var order struct {
		Finalize string `json:"finalize"`
	}
	if json.Unmarshal(body, &order) != nil || order.Finalize == "" {
		return resp, nil
	}
	url := r.URL.String()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.orders == nil {
		t.orders = make(map[string]string)
	}
	switch loc := resp.Header.Get("Location"); {
	case url == order.Finalize && loc == "":
		if o := t.orders[url]; o != "" {
			resp.Header.Set("Location", o)
		}
		delete(t.orders, url)
	case url != order.Finalize:
		if loc == "" {
			loc = url // an order fetched at its own URL
		}
		if len(t.orders) >= 1024 { // orders never finalized
			clear(t.orders)
		}
		t.orders[order.Finalize] = loc
	}
	return resp, nil
}
