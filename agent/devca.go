package agent

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"

	"github.com/pico-edge/pico/certs"
)

// localDevCA returns the development CA file that pico-edge keeps in dir
// when every edge address is on this machine (localhost or a loopback
// IP), else "": then an agent with no roots of its own (Config.RootCAs)
// and a pico-edge started with no flags work together. An edge elsewhere
// is never verified with it.
func localDevCA(edges []string, dir string) string {
	if len(edges) == 0 {
		return ""
	}
	for _, e := range edges {
		host, _, err := net.SplitHostPort(e)
		if u, uerr := url.Parse(e); uerr == nil && (u.Scheme == "http" || u.Scheme == "https") {
			host, err = u.Hostname(), nil // the TCP transport's URL
		}
		if err != nil {
			return ""
		}
		if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
			continue
		}
		if !strings.EqualFold(host, "localhost") {
			return ""
		}
	}
	return certs.DevCAFile(dir)
}

// devCA is the development CA the agent trusts beside the system roots,
// read again at every connection attempt: pico-edge creates it at its
// first start, which may come after the agent's, and a new data
// directory gives it a new one.
type devCA struct {
	file string
	pem  []byte // the file's bytes when pool was made
	pool *x509.CertPool
}

// rootCAs returns the roots that verify the edges: Config.RootCAs, else
// the system roots with the development CA when the agent uses one and
// its file exists (nil: the system roots).
func (a *Agent) rootCAs() (*x509.CertPool, error) {
	if a.cfg.RootCAs != nil || a.dev == nil {
		return a.cfg.RootCAs, nil
	}
	d := a.dev
	data, err := os.ReadFile(d.file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // no pico-edge has run here (yet): the system roots
	}
	if err != nil {
		return nil, fmt.Errorf("the development CA of pico-edge (%s): %w", d.file, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if d.pool != nil && bytes.Equal(data, d.pem) {
		return d.pool, nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("the development CA of pico-edge (%s): no certificate in it", d.file)
	}
	if d.pool == nil {
		a.log.Info("no roots given: trusting the system roots and the development CA of pico-edge on this machine", "ca", d.file)
	} else {
		a.log.Info("the development CA of pico-edge changed: trusting the new one", "ca", d.file)
	}
	d.pem, d.pool = data, pool
	return pool, nil
}
