package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultReloadInterval is how often Run polls when its interval is not positive.
const DefaultReloadInterval = time.Second

// racyWindow is how long after its modification time a file is re-read on
// every poll. File-system timestamps can be coarse (a few milliseconds, or
// two seconds on FAT), so a file rewritten in place with the same size soon
// after it was read can keep its size and modification time.
const racyWindow = 2 * time.Second

// Reloader serves a certificate and key from files and reloads them when
// either file changes. Run polls the files' modification time, size and
// identity (so an atomic rename is seen too); no file-system notifications
// are used. A failed reload, such as a half-written file or a mismatched
// pair, keeps the certificate being served.
type Reloader struct {
	certFile string
	keyFile  string
	cert     atomic.Pointer[tls.Certificate]

	mu       sync.Mutex  // serialises loads; guards the fields below
	certInfo os.FileInfo // certFile at the last attempt
	keyInfo  os.FileInfo // keyFile at the last attempt
	statAt   time.Time   // when certInfo and keyInfo were taken
	certPEM  []byte      // contents of the pair being served
	keyPEM   []byte
	failed   bool // the last attempt failed
}

// NewReloader loads the pair in certFile and keyFile. The error names the
// file at fault.
func NewReloader(certFile, keyFile string) (*Reloader, error) {
	r := &Reloader{certFile: certFile, keyFile: keyFile}
	if _, err := r.load(true); err != nil {
		return nil, err
	}
	return r, nil
}

// GetCertificate returns the certificate being served. It fits
// tls.Config.GetCertificate and never blocks.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// Reload loads the files now, whether or not they changed. On error the
// certificate being served is kept.
func (r *Reloader) Reload() error {
	_, err := r.load(true)
	return err
}

// Run polls the files every interval (DefaultReloadInterval if not
// positive) and reloads them when they change, until ctx is done.
//
// After a reload it calls onReload, if not nil, with nil on success or the
// error on failure. A failed reload is retried on every poll; a failure with
// the same message as the previous one is not reported again. Run calls
// onReload synchronously, so a slow callback delays the next poll.
func (r *Reloader) Run(ctx context.Context, interval time.Duration, onReload func(err error)) {
	if interval <= 0 {
		interval = DefaultReloadInterval
	}
	notify := func(err error) {
		if onReload != nil {
			onReload(err)
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		reloaded, err := r.load(false)
		switch {
		case err != nil:
			if msg := err.Error(); msg != lastErr {
				lastErr = msg
				notify(err)
			}
		case reloaded:
			lastErr = ""
			notify(nil)
		}
	}
}

// load reads and installs the pair. Unless force is set, it does nothing
// when the files look unchanged since the last successful attempt, and it
// reports reloaded only when their contents changed.
func (r *Reloader) load(force bool) (reloaded bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer func() { r.failed = err != nil }()

	now := time.Now()
	certInfo, err := os.Stat(r.certFile)
	if err != nil {
		return false, fmt.Errorf("certs: stat certificate: %w", err)
	}
	keyInfo, err := os.Stat(r.keyFile)
	if err != nil {
		return false, fmt.Errorf("certs: stat key: %w", err)
	}
	if !force && !r.failed && r.unchanged(r.certInfo, certInfo) && r.unchanged(r.keyInfo, keyInfo) {
		return false, nil
	}
	r.certInfo, r.keyInfo, r.statAt = certInfo, keyInfo, now

	certPEM, err := os.ReadFile(r.certFile)
	if err != nil {
		return false, fmt.Errorf("certs: read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(r.keyFile)
	if err != nil {
		return false, fmt.Errorf("certs: read key: %w", err)
	}
	if !force && !r.failed && bytes.Equal(certPEM, r.certPEM) && bytes.Equal(keyPEM, r.keyPEM) {
		return false, nil
	}
	cert, err := parsePair(r.certFile, r.keyFile, certPEM, keyPEM)
	if err != nil {
		return false, err
	}
	r.cert.Store(cert)
	r.certPEM, r.keyPEM = certPEM, keyPEM
	return true, nil
}

// unchanged reports whether a file, stat'ed as cur, is certainly the one
// stat'ed as prev at r.statAt: same identity, size and modification time,
// and modified long enough before r.statAt that a same-size rewrite within
// the file system's timestamp granularity is ruled out.
func (r *Reloader) unchanged(prev, cur os.FileInfo) bool {
	return prev != nil &&
		os.SameFile(prev, cur) &&
		prev.Size() == cur.Size() &&
		prev.ModTime().Equal(cur.ModTime()) &&
		r.statAt.Sub(cur.ModTime()) >= racyWindow
}
