package frontdoor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// The TLS passthrough door reads a client's ClientHello, only as far as
// its server_name extension (RFC 6066 §3), and never answers it: the
// connection's bytes, those read included, go to the upstream that holds
// the certificate. This file parses; passthrough.go serves.

// Limits of the ClientHello reader (docs/limits.md).
const (
	// MaxClientHello is the longest ClientHello handshake message taken
	// (a post-quantum key share makes one of about 1.8 KiB).
	MaxClientHello = 16 << 10
	// maxHelloRead bounds the bytes read for it, record headers included:
	// a hello cut into records of a few bytes each is refused.
	maxHelloRead = MaxClientHello + 4<<10
	// HelloTimeout bounds reading the ClientHello.
	HelloTimeout = 10 * time.Second
)

// TLS alert descriptions the passthrough door sends (RFC 8446 §6).
const (
	AlertHandshakeFailure  uint8 = 40
	AlertDecodeError       uint8 = 50
	AlertInternalError     uint8 = 80
	AlertUnrecognizedName  uint8 = 112
	AlertUnexpectedMessage uint8 = 10
)

const (
	recordHandshake    = 22
	recordHeaderLen    = 5
	maxRecordLen       = 1 << 14 // a plaintext record's fragment (RFC 8446 §5.1)
	handshakeHello     = 1
	extServerName      = 0
	serverNameHostName = 0
)

// A HelloError says why a ClientHello was refused, and the alert that
// tells the client.
type HelloError struct {
	Alert  uint8
	Reason string
}

func (e *HelloError) Error() string { return "TLS ClientHello: " + e.Reason }

func helloErr(alert uint8, format string, args ...any) *HelloError {
	return &HelloError{Alert: alert, Reason: fmt.Sprintf(format, args...)}
}

// ErrHelloShort means that b holds the start of a ClientHello, not all of
// it: read more.
var ErrHelloShort = errors.New("TLS ClientHello: incomplete")

// ParseClientHello parses the ClientHello at the start of b, which may be
// cut into several handshake records, and returns the host name of its
// server_name extension, lower-cased ("" when it has none). It returns
// ErrHelloShort when b ends before the hello does, and a *HelloError when
// b is not a ClientHello or a malformed one. Bytes after the hello are
// not looked at.
func ParseClientHello(b []byte) (string, error) {
	msg, err := helloMessage(b)
	if err != nil {
		return "", err
	}
	return parseHelloBody(msg)
}

// helloMessage joins the fragments of the first handshake message of b's
// records, and checks that it is a ClientHello within the limit.
func helloMessage(b []byte) ([]byte, error) {
	var msg []byte
	want := -1 // the message's length with its 4-byte header, once known
	for {
		if len(b) < recordHeaderLen {
			return nil, ErrHelloShort
		}
		typ, major, n := b[0], b[1], int(binary.BigEndian.Uint16(b[3:5]))
		switch {
		case typ != recordHandshake:
			if msg == nil {
				return nil, helloErr(AlertUnexpectedMessage, "the connection does not start with a TLS handshake record (first byte %#02x); is the client speaking TLS?", typ)
			}
			return nil, helloErr(AlertUnexpectedMessage, "a record of type %d in the middle of the ClientHello", typ)
		case major != 3:
			return nil, helloErr(AlertDecodeError, "record version %d.%d is not TLS", major, b[2])
		case n == 0 || n > maxRecordLen:
			return nil, helloErr(AlertDecodeError, "record of %d bytes (want 1 to %d)", n, maxRecordLen)
		}
		if len(b) < recordHeaderLen+n {
			frag := b[recordHeaderLen:]
			// Check what arrived of the message's header before waiting.
			if _, err := checkHelloHeader(append(msg[:len(msg):len(msg)], frag...)); err != nil && err != ErrHelloShort {
				return nil, err
			}
			return nil, ErrHelloShort
		}
		msg = append(msg, b[recordHeaderLen:recordHeaderLen+n]...)
		b = b[recordHeaderLen+n:]
		if want < 0 {
			w, err := checkHelloHeader(msg)
			if err == ErrHelloShort {
				continue
			}
			if err != nil {
				return nil, err
			}
			want = w
		}
		if len(msg) >= want {
			return msg[4:want], nil
		}
	}
}

// checkHelloHeader checks the handshake header at the start of msg and
// returns the message's length with it.
func checkHelloHeader(msg []byte) (int, error) {
	if len(msg) >= 1 && msg[0] != handshakeHello {
		return 0, helloErr(AlertUnexpectedMessage, "handshake message of type %d, not a ClientHello (1)", msg[0])
	}
	if len(msg) < 4 {
		return 0, ErrHelloShort
	}
	n := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
	if n > MaxClientHello {
		return 0, helloErr(AlertHandshakeFailure, "ClientHello of %d bytes (the limit is %d)", n, MaxClientHello)
	}
	return 4 + n, nil
}

// parseHelloBody reads a ClientHello's body (RFC 8446 §4.1.2) as far as
// the server_name extension.
func parseHelloBody(b []byte) (string, error) {
	r := helloReader{b: b}
	r.skip(2 + 32)                 // legacy_version, random
	r.vector(1)                    // legacy_session_id
	r.vector(2)                    // cipher_suites
	r.vector(1)                    // legacy_compression_methods
	if r.err == nil && r.empty() { // an old hello without extensions
		return "", nil
	}
	exts := helloReader{b: r.vector(2)}
	if r.err == nil && !r.empty() {
		r.fail("%d bytes after the extensions", len(r.b))
	}
	name, seen := "", false
	for r.err == nil && exts.err == nil && !exts.empty() {
		typ := exts.u16()
		data := exts.vector(2)
		if exts.err != nil || typ != extServerName {
			continue
		}
		if seen {
			return "", helloErr(AlertDecodeError, "two server_name extensions")
		}
		seen = true
		var err error
		if name, err = parseServerName(data); err != nil {
			return "", err
		}
	}
	if r.err == nil {
		r.err = exts.err
	}
	if r.err != nil {
		return "", r.err
	}
	return name, nil
}

// parseServerName reads a server_name extension's ServerNameList and
// returns its host_name, checked and lower-cased.
func parseServerName(b []byte) (string, error) {
	r := helloReader{b: b}
	list := helloReader{b: r.vector(2)}
	if r.err == nil && !r.empty() {
		return "", helloErr(AlertDecodeError, "%d bytes after the server_name list", len(r.b))
	}
	if r.err != nil {
		return "", r.err
	}
	name := ""
	for list.err == nil && !list.empty() {
		typ := list.u8()
		v := list.vector(2)
		if list.err != nil {
			break
		}
		if typ != serverNameHostName {
			continue // an unknown name type: RFC 6066 lets it be skipped
		}
		if name != "" {
			return "", helloErr(AlertDecodeError, "two host names in server_name")
		}
		if err := checkHostName(v); err != nil {
			return "", err
		}
		name = strings.ToLower(string(v))
	}
	if list.err != nil {
		return "", list.err
	}
	if name == "" {
		return "", helloErr(AlertDecodeError, "server_name extension without a host name")
	}
	return name, nil
}

// checkHostName checks that b is a DNS name as SNI carries it: ASCII
// letters, digits, '-' and '.', labels of 1 to 63, no trailing dot, at
// most 253 bytes, and not an IP address.
func checkHostName(b []byte) error {
	if len(b) == 0 || len(b) > 253 {
		return helloErr(AlertDecodeError, "server_name host name of %d bytes (want 1 to 253)", len(b))
	}
	label := 0
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			label++
		case c == '.':
			if label == 0 {
				return helloErr(AlertDecodeError, "server_name host name %q has an empty label", b)
			}
			label = 0
		default:
			return helloErr(AlertDecodeError, "server_name host name %q has byte %#02x at %d", b, c, i)
		}
		if label > 63 {
			return helloErr(AlertDecodeError, "server_name host name %q has a label over 63 bytes", b)
		}
	}
	if label == 0 {
		return helloErr(AlertDecodeError, "server_name host name %q ends with a dot", b)
	}
	if net.ParseIP(string(b)) != nil {
		return helloErr(AlertDecodeError, "server_name host name %q is an IP address", b)
	}
	return nil
}

// helloReader reads big-endian fields and length-prefixed vectors; the
// first shortfall sets err and every later read returns nothing.
type helloReader struct {
	b   []byte
	err error
}

func (r *helloReader) empty() bool { return len(r.b) == 0 }

func (r *helloReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = helloErr(AlertDecodeError, format, args...)
	}
}

func (r *helloReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.fail("a field of %d bytes runs past the end (%d left)", n, len(r.b))
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *helloReader) skip(n int) { r.take(n) }

func (r *helloReader) u8() int {
	if v := r.take(1); v != nil {
		return int(v[0])
	}
	return 0
}

func (r *helloReader) u16() int {
	if v := r.take(2); v != nil {
		return int(binary.BigEndian.Uint16(v))
	}
	return 0
}

// vector reads a vector whose length takes lenBytes (1 or 2).
func (r *helloReader) vector(lenBytes int) []byte {
	n := r.u8()
	if lenBytes == 2 {
		n = n<<8 | r.u8()
	}
	return r.take(n)
}

// ReadClientHello reads c until the ClientHello is whole, within
// HelloTimeout (or until deadline if sooner) and maxHelloRead bytes, and
// returns its host name and every byte read: the upstream gets them
// first. A hello without server_name gives "" and no error.
func ReadClientHello(c net.Conn, deadline time.Time) (name string, raw []byte, err error) {
	if d := time.Now().Add(HelloTimeout); deadline.IsZero() || d.Before(deadline) {
		deadline = d
	}
	c.SetReadDeadline(deadline)
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, 2048)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, rerr := c.Read(buf[len(buf):min(cap(buf), maxHelloRead)])
		buf = buf[:len(buf)+n]
		name, err = ParseClientHello(buf)
		if err != ErrHelloShort {
			return name, buf, err
		}
		switch {
		case rerr == io.EOF:
			return "", buf, fmt.Errorf("TLS ClientHello: the client closed the connection after %d bytes", len(buf))
		case rerr != nil:
			var ne net.Error
			if errors.As(rerr, &ne) && ne.Timeout() {
				return "", buf, fmt.Errorf("TLS ClientHello: incomplete after %d bytes within %s", len(buf), HelloTimeout)
			}
			return "", buf, fmt.Errorf("TLS ClientHello: %w", rerr)
		case len(buf) >= maxHelloRead:
			return "", buf, helloErr(AlertHandshakeFailure, "ClientHello not whole after %d bytes (its records are too small)", len(buf))
		}
	}
}

// WriteAlert sends a fatal TLS alert, within a second, as a server that
// has not answered the hello does: in a plaintext record.
func WriteAlert(c net.Conn, alert uint8) error {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := c.Write([]byte{21, 3, 3, 0, 2, 2, alert})
	return err
}
