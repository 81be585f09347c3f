package certs

import (
	"bytes"
	"errors"
	"os"
	"slices"
	"testing"
	"time"
)

// leafOf returns the server certificate in d.CertFile.
func leafOf(t testing.TB, d *Dev) []byte {
	t.Helper()
	data, err := os.ReadFile(d.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestLoadOrCreateDevValidity(t *testing.T) {
	created := time.Now()
	caExpiry := created.AddDate(caYears, 0, 0)
	tests := map[string]struct {
		at           time.Time
		wantIssued   bool
		wantNotAfter time.Time // zero: at + leafValidity
	}{
		"same day":                       {at: created.Add(time.Minute)},
		"31 days before server expiry":   {at: created.Add(leafValidity - 31*24*time.Hour)},
		"29 days before server expiry":   {at: created.Add(leafValidity - 29*24*time.Hour), wantIssued: true},
		"after server expiry":            {at: created.Add(leafValidity + time.Hour), wantIssued: true},
		"server capped to CA lifetime":   {at: caExpiry.Add(-100 * 24 * time.Hour), wantIssued: true, wantNotAfter: caExpiry},
		"before server notBefore (skew)": {at: created.Add(-2 * backdate), wantIssued: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			first, err := loadOrCreateDev(dir, dir, nil, created)
			if err != nil {
				t.Fatal(err)
			}
			ca := readCA(t, first)
			oldLeaf := leafOf(t, first)

			d, err := loadOrCreateDev(dir, dir, nil, tt.at)
			if err != nil {
				t.Fatalf("load at %s: %v", tt.at, err)
			}
			if d.CertIssued != tt.wantIssued {
				t.Errorf("CertIssued got %v, want %v", d.CertIssued, tt.wantIssued)
			}
			if d.CACreated {
				t.Error("CACreated got true, want false")
			}
			if got := readCA(t, d); !bytes.Equal(got, ca) {
				t.Error("CA changed, want it kept")
			}
			if changed := !bytes.Equal(leafOf(t, d), oldLeaf); changed != tt.wantIssued {
				t.Errorf("server.pem changed got %v, want %v", changed, tt.wantIssued)
			}
			if !tt.wantIssued {
				return
			}
			leaf, err := decodeCert(leafOf(t, d))
			if err != nil {
				t.Fatal(err)
			}
			want := tt.wantNotAfter
			if want.IsZero() {
				want = tt.at.Add(leafValidity)
			}
			if got := leaf.NotAfter; !got.Equal(want.UTC().Truncate(time.Second)) {
				t.Errorf("NotAfter got %s, want %s", got, want.UTC().Truncate(time.Second))
			}
		})
	}
}

func TestLoadOrCreateDevExpiredCA(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if _, err := loadOrCreateDev(dir, dir, nil, now); err != nil {
		t.Fatal(err)
	}
	_, err := loadOrCreateDev(dir, dir, nil, now.AddDate(caYears, 0, 1))
	if !errors.Is(err, ErrCAExpired) {
		t.Fatalf("load after CA expiry got error %v, want %v", err, ErrCAExpired)
	}
}

// readCA returns the contents of d.CAFile and d.CAKeyFile.
func readCA(t testing.TB, d *Dev) []byte {
	t.Helper()
	var out []byte
	for _, f := range []string{d.CAFile, d.CAKeyFile} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, data...)
	}
	return out
}

func TestParseHosts(t *testing.T) {
	tests := map[string]struct {
		hosts   []string
		wantDNS []string
		wantIPs []string
	}{
		"defaults":           {hosts: DefaultHosts(), wantDNS: []string{"localhost", "*.localhost", "*.pico.localhost"}, wantIPs: []string{"127.0.0.1", "::1"}},
		"case and dot":       {hosts: []string{"Edge.EXAMPLE.", "edge.example"}, wantDNS: []string{"edge.example"}},
		"bracketed IPv6":     {hosts: []string{"[fd00::1]", "fd00:0:0::1"}, wantIPs: []string{"fd00::1"}},
		"IPv4-mapped":        {hosts: []string{"::ffff:10.0.0.1", "10.0.0.1"}, wantIPs: []string{"10.0.0.1"}},
		"blanks skipped":     {hosts: []string{"", "  ", " a.example "}, wantDNS: []string{"a.example"}},
		"underscore allowed": {hosts: []string{"_acme.example"}, wantDNS: []string{"_acme.example"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			hs, err := parseHosts(tt.hosts)
			if err != nil {
				t.Fatalf("parseHosts(%q): %v", tt.hosts, err)
			}
			if !slices.Equal(hs.dns, tt.wantDNS) {
				t.Errorf("DNS names got %q, want %q", hs.dns, tt.wantDNS)
			}
			var ips []string
			for _, ip := range hs.ips {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tt.wantIPs) {
				t.Errorf("IPs got %q, want %q", ips, tt.wantIPs)
			}
		})
	}
}
