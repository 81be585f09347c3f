package frontdoor

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// clientHello returns the first flight of a crypto/tls client with conf:
// its ClientHello records, as they would reach the edge.
func clientHello(t testing.TB, conf *tls.Config) []byte {
	t.Helper()
	c, s := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tls.Client(c, conf).Handshake() // fails once s closes
	}()
	defer func() { s.Close(); c.Close(); <-done }()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	var out []byte
	for {
		hdr := make([]byte, recordHeaderLen)
		if _, err := io.ReadFull(s, hdr); err != nil {
			t.Fatal(err)
		}
		body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
		if _, err := io.ReadFull(s, body); err != nil {
			t.Fatal(err)
		}
		out = append(append(out, hdr...), body...)
		if _, err := ParseClientHello(out); err != ErrHelloShort {
			return out
		}
	}
}

// reframe cuts the handshake bytes of the records in b into records of at
// most size bytes each.
func reframe(b []byte, size int) []byte {
	var payload []byte
	for len(b) >= recordHeaderLen {
		n := int(binary.BigEndian.Uint16(b[3:]))
		payload = append(payload, b[recordHeaderLen:recordHeaderLen+n]...)
		b = b[recordHeaderLen+n:]
	}
	var out []byte
	for len(payload) > 0 {
		n := min(size, len(payload))
		out = append(out, recordHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, payload[:n]...)
		payload = payload[n:]
	}
	return out
}

func TestParseClientHelloRealClients(t *testing.T) {
	tests := map[string]struct {
		conf *tls.Config
		want string
	}{
		"TLS 1.3":            {&tls.Config{ServerName: "web.example.com"}, "web.example.com"},
		"TLS 1.2 only":       {&tls.Config{ServerName: "db.example.com", MaxVersion: tls.VersionTLS12}, "db.example.com"},
		"upper case":         {&tls.Config{ServerName: "Web.Example.COM"}, "web.example.com"},
		"one label":          {&tls.Config{ServerName: "localhost"}, "localhost"},
		"no server name":     {&tls.Config{InsecureSkipVerify: true}, ""},
		"an IP: no SNI sent": {&tls.Config{ServerName: "127.0.0.1"}, ""},
		"with ALPN":          {&tls.Config{ServerName: "a.b", NextProtos: []string{"h2", "http/1.1"}}, "a.b"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			raw := clientHello(t, tt.conf)
			for _, size := range []int{maxRecordLen, 300, 7, 1} {
				b := raw
				if size != maxRecordLen {
					b = reframe(raw, size)
				}
				got, err := ParseClientHello(b)
				if err != nil || got != tt.want {
					t.Fatalf("records of %d: ParseClientHello = %q, %v; want %q", size, got, err, tt.want)
				}
				// Every prefix asks for more; bytes after the hello change nothing.
				for i := range len(b) {
					if _, err := ParseClientHello(b[:i]); err != ErrHelloShort {
						t.Fatalf("records of %d: prefix of %d of %d bytes: %v, want ErrHelloShort", size, i, len(b), err)
					}
				}
				if got, err := ParseClientHello(append(b[:len(b):len(b)], 23, 3, 3, 0, 1, 'x')); err != nil || got != tt.want {
					t.Fatalf("with a record after it: %q, %v", got, err)
				}
			}
		})
	}
}

// hello builds a ClientHello record around extensions.
func hello(exts []byte) []byte {
	body := append(make([]byte, 2+32), 0)       // version, random, empty session ID
	body = append(body, 0, 2, 0x13, 0x01, 1, 0) // one suite, one compression method
	if exts != nil {
		body = binary.BigEndian.AppendUint16(body, uint16(len(exts)))
		body = append(body, exts...)
	}
	msg := append([]byte{handshakeHello, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	return append([]byte{recordHandshake, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
}

// sniExt is a server_name extension listing names of host_name type.
func sniExt(names ...string) []byte {
	var list []byte
	for _, n := range names {
		list = append(list, serverNameHostName)
		list = binary.BigEndian.AppendUint16(list, uint16(len(n)))
		list = append(list, n...)
	}
	data := binary.BigEndian.AppendUint16(nil, uint16(len(list)))
	data = append(data, list...)
	ext := binary.BigEndian.AppendUint16(nil, extServerName)
	ext = binary.BigEndian.AppendUint16(ext, uint16(len(data)))
	return append(ext, data...)
}

func TestParseClientHelloRefusals(t *testing.T) {
	long := hello(sniExt("a.example"))
	long[5+1], long[5+2], long[5+3] = 0, 0x50, 0 // a 20 KiB message
	tests := map[string]struct {
		in      []byte
		alert   uint8
		reason  string
		wantSNI string
	}{
		"built hello":         {in: hello(sniExt("web.example.com")), wantSNI: "web.example.com"},
		"no extensions":       {in: hello(nil)},
		"plain HTTP":          {in: []byte("GET / HTTP/1.1\r\nHost: web.example.com\r\n\r\n"), alert: AlertUnexpectedMessage, reason: "is the client speaking TLS"},
		"SSL 2":               {in: []byte{22, 2, 0, 0, 5, 1, 0, 0, 1, 0}, alert: AlertDecodeError, reason: "not TLS"},
		"empty record":        {in: []byte{22, 3, 1, 0, 0}, alert: AlertDecodeError, reason: "record of 0 bytes"},
		"record too long":     {in: []byte{22, 3, 1, 0x40, 1}, alert: AlertDecodeError, reason: "record of 16385 bytes"},
		"server hello":        {in: []byte{22, 3, 3, 0, 4, 2, 0, 0, 0}, alert: AlertUnexpectedMessage, reason: "not a ClientHello"},
		"server hello, short": {in: []byte{22, 3, 3, 0, 40, 2}, alert: AlertUnexpectedMessage, reason: "not a ClientHello"},
		"over the limit":      {in: long, alert: AlertHandshakeFailure, reason: "the limit is 16384"},
		"two names":           {in: hello(sniExt("a.b", "c.d")), alert: AlertDecodeError, reason: "two host names"},
		"two extensions":      {in: hello(append(sniExt("a.b"), sniExt("a.b")...)), alert: AlertDecodeError, reason: "two server_name"},
		"trailing dot":        {in: hello(sniExt("a.b.")), alert: AlertDecodeError, reason: "ends with a dot"},
		"empty label":         {in: hello(sniExt("a..b")), alert: AlertDecodeError, reason: "empty label"},
		"space":               {in: hello(sniExt("a b.c")), alert: AlertDecodeError, reason: "byte 0x20"},
		"NUL":                 {in: hello(sniExt("evil.com\x00.good.com")), alert: AlertDecodeError, reason: "byte 0x00"},
		"IP literal":          {in: hello(sniExt("10.0.0.1")), alert: AlertDecodeError, reason: "IP address"},
		"empty name list":     {in: hello(sniExt()), alert: AlertDecodeError, reason: "without a host name"},
		"long label":          {in: hello(sniExt(strings.Repeat("a", 64) + ".b")), alert: AlertDecodeError, reason: "over 63"},
		"extension past end":  {in: hello([]byte{0, 0, 0, 9, 0}), alert: AlertDecodeError, reason: "runs past the end"},
		"alert record first":  {in: []byte{21, 3, 3, 0, 2, 2, 40}, alert: AlertUnexpectedMessage, reason: "does not start with a TLS handshake"},
		"record type changes": {in: append(reframe(hello(sniExt("a.b")), 10)[:15], 23, 3, 3, 0, 1, 0), alert: AlertUnexpectedMessage, reason: "in the middle"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseClientHello(tt.in)
			if tt.reason == "" {
				if err != nil || got != tt.wantSNI {
					t.Fatalf("ParseClientHello = %q, %v; want %q", got, err, tt.wantSNI)
				}
				return
			}
			var he *HelloError
			if !errors.As(err, &he) || he.Alert != tt.alert || !strings.Contains(he.Reason, tt.reason) {
				t.Fatalf("ParseClientHello = %q, %v; want alert %d saying %q", got, err, tt.alert, tt.reason)
			}
		})
	}
}

func TestReadClientHello(t *testing.T) {
	raw := reframe(clientHello(t, &tls.Config{ServerName: "web.example.com"}), 50)
	early := append(raw[:len(raw):len(raw)], 23, 3, 3, 0, 3, 'a', 'b', 'c') // early data after it
	c, s := net.Pipe()
	go func() {
		for b := early; len(b) > 0; { // in pieces that cut records
			n := min(33, len(b))
			c.Write(b[:n])
			b = b[n:]
		}
	}()
	name, got, err := ReadClientHello(s, time.Time{})
	if err != nil || name != "web.example.com" || !bytes.Equal(got, early[:len(got)]) || len(got) < len(raw) {
		t.Fatalf("ReadClientHello = %q, %d bytes, %v; want the name and the %d bytes of the hello at least", name, len(got), err, len(raw))
	}
	c.Close()
	s.Close()

	t.Run("client stops", func(t *testing.T) {
		c, s := net.Pipe()
		defer c.Close()
		go c.Write(raw[:60])
		start := time.Now()
		_, got, err := ReadClientHello(s, time.Now().Add(200*time.Millisecond))
		if err == nil || !strings.Contains(err.Error(), "incomplete after 60 bytes") || len(got) != 60 {
			t.Fatalf("ReadClientHello = %d bytes, %v; want a timeout after 60 bytes", len(got), err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("gave up after %s", d)
		}
	})
	t.Run("client closes", func(t *testing.T) {
		c, s := net.Pipe()
		go func() { c.Write(raw[:10]); c.Close() }()
		if _, _, err := ReadClientHello(s, time.Time{}); err == nil || !strings.Contains(err.Error(), "closed the connection after 10 bytes") {
			t.Fatalf("ReadClientHello = %v", err)
		}
	})
	t.Run("tiny records", func(t *testing.T) {
		c, s := net.Pipe()
		defer c.Close()
		big := reframe(hello(append(sniExt("a.b"), make([]byte, 8<<10)...)), 1) // 6 bytes per byte of hello
		go c.Write(big)
		var he *HelloError
		if _, got, err := ReadClientHello(s, time.Time{}); !errors.As(err, &he) || he.Alert != AlertHandshakeFailure || len(got) > maxHelloRead {
			t.Fatalf("ReadClientHello = %d bytes, %v; want a refusal within %d bytes", len(got), err, maxHelloRead)
		}
	})
}

// FuzzClientHello feeds arbitrary bytes to the ClientHello parser: it
// must not panic, a name it returns must be a checked lower-case host
// name, and once it has an answer, bytes after them do not change it.
func FuzzClientHello(f *testing.F) {
	f.Add(hello(sniExt("web.example.com")))
	f.Add(reframe(hello(sniExt("a.b")), 3))
	f.Add(hello(nil))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		name, err := ParseClientHello(in)
		var he *HelloError
		switch {
		case err == ErrHelloShort:
			return
		case err != nil && !errors.As(err, &he):
			t.Fatalf("error %v is neither ErrHelloShort nor a *HelloError", err)
		case err == nil && name != "":
			if cerr := checkHostName([]byte(name)); cerr != nil || strings.ToLower(name) != name {
				t.Fatalf("returned name %q: %v", name, cerr)
			}
		}
		name2, err2 := ParseClientHello(append(in[:len(in):len(in)], 0xff, 0, 0, 0, 0))
		if name2 != name || (err == nil) != (err2 == nil) {
			t.Fatalf("more bytes changed the answer: %q, %v then %q, %v", name, err, name2, err2)
		}
	})
}
