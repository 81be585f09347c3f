package edge

import (
	"crypto/tls"
	"net/http"
	"net/netip"
	"testing"
)

// A link over TCP takes the client's address from X-Forwarded-For only
// when the TCP peer is a trusted proxy: the rightmost hop that is not one.
func TestAgentTCPClientAddr(t *testing.T) {
	s, err := New(Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil },
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		peer, xff, want string
	}{
		"direct":                {"203.0.113.7:4000", "", "203.0.113.7:4000"},
		"untrusted peer's XFF":  {"203.0.113.7:4000", "198.51.100.1", "203.0.113.7:4000"},
		"trusted proxy":         {"10.1.2.3:5000", "198.51.100.1", "198.51.100.1:0"},
		"chain of proxies":      {"10.1.2.3:5000", "198.51.100.1, 10.9.9.9", "198.51.100.1:0"},
		"spoofed left of chain": {"10.1.2.3:5000", "1.1.1.1, 198.51.100.1", "198.51.100.1:0"},
		"trusted, no XFF":       {"10.1.2.3:5000", "", "10.1.2.3:5000"},
		"garbage XFF":           {"10.1.2.3:5000", "not-an-ip", "10.1.2.3:5000"},
		"IPv4-mapped peer":      {"[::ffff:203.0.113.7]:4000", "", "203.0.113.7:4000"},
	}
	for name, tc := range tests {
		r := &http.Request{RemoteAddr: tc.peer, Header: http.Header{}}
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := s.agentTCP.clientAddr(r).String(); got != tc.want {
			t.Errorf("%s: clientAddr = %s, want %s", name, got, tc.want)
		}
	}
}
