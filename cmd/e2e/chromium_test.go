//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// chromiumPath is where Debian's chromium package installs the browser.
const chromiumPath = "/usr/bin/chromium"

// chromiumTimeout bounds one headless Chromium run.
const chromiumTimeout = 60 * time.Second

// TestChromiumHTTP3 has a real browser, headless Chromium, load a page
// through the edge's HTTPS front door over HTTP/3: it forces QUIC for the
// origin, trusts the edge's development certificate by its public key, and
// prints the DOM. The test checks the page came through and that the edge's
// access log saw the request as HTTP/3.
func TestChromiumHTTP3(t *testing.T) {
	e2e(t)
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s not found (install Debian's chromium package to run this test): %v", chromiumPath, err)
	}
	e := startEdge(t)

	var nonce [8]byte
	rand.Read(nonce[:])
	marker := "pico-h3-marker-" + hex.EncodeToString(nonce[:])
	port := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<!doctype html><html><head><title>pico</title></head><body><p id=\"m\">%s</p></body></html>\n", marker)
	}))
	e.serve(t, "http", "foo", port)
	e.waitRoute(t, "foo")

	origin := "foo.pico.localhost:" + portOf(e.tls)
	from := e.mark()
	start := time.Now()
	dom, stderr := runChromium(t,
		"--enable-quic",
		"--origin-to-force-quic-on="+origin,
		"--ignore-certificate-errors-spki-list="+leafSPKIHash(t, filepath.Join(e.dataDir, "server.pem")),
		// Only the edge resolves; every other name fails, so the browser
		// reaches nothing but 127.0.0.1.
		"--host-resolver-rules=MAP foo.pico.localhost 127.0.0.1, MAP * ~NOTFOUND",
		"--dump-dom", "https://"+origin+"/",
	)
	t.Logf("chromium fetched and dumped the page in %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(dom, marker) {
		t.Fatalf("the DOM chromium dumped lacks the marker %q:\n%s\nchromium stderr:\n%s", marker, dom, stderr)
	}

	line := e.waitLine(t, from, "an access log line for GET / on endpoint foo", func(line string) bool {
		l, ok := parseLog(line)
		return ok && l.str("msg") == "request" && l.str("endpoint_id") == "foo" && l.str("path") == "/"
	})
	l, _ := parseLog(line)
	if proto, status := l.str("proto"), fmt.Sprint(l["status"]); proto != "HTTP/3.0" || status != "200" {
		t.Fatalf("the edge saw chromium's request as %s with status %s, want HTTP/3.0 and 200: %s\nchromium stderr:\n%s", proto, status, line, stderr)
	}
}

// leafSPKIHash returns base64(sha256(SubjectPublicKeyInfo)) of the first
// certificate in the PEM file path, as --ignore-certificate-errors-spki-list
// takes it.
func leafSPKIHash(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("server certificate: %v", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// runChromium runs headless Chromium with a fresh profile and args after
// the common flags, at most chromiumTimeout, and returns its stdout and
// stderr. Chromium runs in its own process group and with its own HOME;
// cleanup SIGKILLs whatever still runs of either (the crash handler leaves
// the group but names HOME on its command line) and waits until it is gone,
// so no renderer or helper outlives the test or writes into its temporary
// directories.
func runChromium(t testing.TB, args ...string) (stdout, stderr string) {
	t.Helper()
	home := t.TempDir() // before the cleanup below, so removed after it
	ctx, cancel := context.WithTimeout(context.Background(), chromiumTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromiumPath, append([]string{
		"--headless",
		"--no-sandbox",
		"--disable-gpu",
		"--disable-dev-shm-usage",
		"--no-first-run",
		"--no-default-browser-check",
		"--disable-background-networking",
		"--disable-component-update",
		"--disable-sync",
		"--disable-extensions",
		"--no-proxy-server",
		"--user-data-dir=" + filepath.Join(home, "profile"),
	}, args...)...)
	cmd.Env = append(cleanEnv(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second // children holding the output pipes
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		syscall.Kill(-pgid, syscall.SIGKILL)
		poll(t, waitTimeout, "chromium's processes to end", func() bool {
			left := chromiumProcs(pgid, home)
			for _, pid := range left {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			return len(left) == 0
		})
	})
	err := cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("chromium timed out after %s\nstdout:\n%s\nstderr:\n%s", chromiumTimeout, out.String(), errOut.String())
	}
	if err != nil {
		t.Fatalf("chromium: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	return out.String(), errOut.String()
}

// chromiumProcs returns the PIDs of the live (not zombie) processes in
// process group pgid or whose command line names a file under dir.
func chromiumProcs(pgid int, dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + ent.Name() + "/stat")
		if err != nil {
			continue // gone
		}
		// pid (comm) state ppid pgrp ...; comm may contain spaces.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if f[2] == strconv.Itoa(pgid) {
			pids = append(pids, pid)
			continue
		}
		if cmdline, err := os.ReadFile("/proc/" + ent.Name() + "/cmdline"); err == nil && bytes.Contains(cmdline, []byte(dir+"/")) {
			pids = append(pids, pid)
		}
	}
	return pids
}
