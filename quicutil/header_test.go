package quicutil_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pico-edge/pico/quicutil"
)

// hdrBody encodes a header body field by field, without validation, so that
// tests can build what Append refuses to write.
func hdrBody(kind, flags byte, id, addr string, exts ...[]byte) []byte {
	b := []byte{kind, flags, byte(len(id))}
	b = append(b, id...)
	b = append(b, byte(len(addr)))
	b = append(b, addr...)
	for _, e := range exts {
		b = append(b, e...)
	}
	return b
}

// hdrFrame prefixes body with the version and its length.
func hdrFrame(body []byte) []byte {
	b := []byte{quicutil.HeaderVersion, 0, 0}
	binary.BigEndian.PutUint16(b[1:], uint16(len(body)))
	return append(b, body...)
}

// ext encodes one header extension.
func ext(key byte, val string) []byte {
	b := binary.AppendUvarint([]byte{key}, uint64(len(val)))
	return append(b, val...)
}

// zoneAddr returns an "[fe80::1%zone]:1" address of exactly n bytes.
func zoneAddr(n int) string {
	const pre, post = "[fe80::1%", "]:1"
	return pre + strings.Repeat("z", n-len(pre)-len(post)) + post
}

// sampleHeaders are valid headers; the fuzzers are seeded with them too.
var sampleHeaders = map[string]quicutil.StreamHeader{
	"control":         {Kind: quicutil.KindControl},
	"control relayed": {Kind: quicutil.KindControl, Flags: quicutil.FlagRelayed},
	"http":            {Kind: quicutil.KindHTTP, Endpoint: "web"},
	"http2":           {Kind: quicutil.KindHTTP2, Endpoint: "grpc", ClientAddr: "127.0.0.1:9"},
	"http relayed v4": {Kind: quicutil.KindHTTP, Flags: quicutil.FlagRelayed, Endpoint: "web", ClientAddr: "203.0.113.7:51234"},
	"tcp v6":          {Kind: quicutil.KindTCP, Endpoint: "db-1", ClientAddr: "[2001:db8::1]:443"},
	"tcp token":       {Kind: quicutil.KindTCP, Endpoint: "ssh", Token: "secret-token"},
	"tcp all fields":  {Kind: quicutil.KindTCP, Flags: quicutil.FlagRelayed, Endpoint: "a-b", ClientAddr: "127.0.0.1:1", Token: "t"},
	"max endpoint":    {Kind: quicutil.KindHTTP, Endpoint: strings.Repeat("a", quicutil.MaxEndpointLen)},
	"max addr":        {Kind: quicutil.KindHTTP, Endpoint: "x", ClientAddr: zoneAddr(quicutil.MaxAddrLen)},
	"max token":       {Kind: quicutil.KindTCP, Endpoint: "x", Token: strings.Repeat("k", quicutil.MaxExtensionLen)},
	"long token":      {Kind: quicutil.KindTCP, Endpoint: "x", Token: strings.Repeat("k", 300)},
}

func TestStreamHeaderRoundTrip(t *testing.T) {
	payload := []byte("GET / HTTP/1.1\r\n\r\n")
	for name, h := range sampleHeaders {
		t.Run(name, func(t *testing.T) {
			if err := h.Validate(); err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			prefix := []byte("prefix")
			enc := h.Append(bytes.Clone(prefix))
			if !bytes.HasPrefix(enc, prefix) {
				t.Fatalf("Append changed the bytes before it: got %q", enc[:len(prefix)])
			}
			enc = enc[len(prefix):]

			got, n, err := quicutil.ParseStreamHeader(enc)
			if err != nil || n != len(enc) || got != h {
				t.Fatalf("ParseStreamHeader = %+v, %d, %v; want %+v, %d, nil", got, n, err, h, len(enc))
			}
			withPayload := append(bytes.Clone(enc), payload...)
			got, n, err = quicutil.ParseStreamHeader(withPayload)
			if err != nil || n != len(enc) || got != h {
				t.Fatalf("ParseStreamHeader(header+payload) = %+v, %d, %v; want %+v, %d, nil", got, n, err, h, len(enc))
			}

			readers := map[string]func(io.Reader) io.Reader{
				"whole":    func(r io.Reader) io.Reader { return r },
				"one byte": iotest.OneByteReader,
			}
			for rname, wrap := range readers {
				t.Run("ReadStreamHeader "+rname, func(t *testing.T) {
					r := bytes.NewReader(withPayload)
					got, err := quicutil.ReadStreamHeader(wrap(r))
					if err != nil || got != h {
						t.Fatalf("got %+v, %v; want %+v, nil", got, err, h)
					}
					rest, _ := io.ReadAll(r)
					if !bytes.Equal(rest, payload) {
						t.Fatalf("bytes after the header: got %q, want %q", rest, payload)
					}
				})
			}
		})
	}
}

func TestStreamHeaderUnknownExtensionsSkipped(t *testing.T) {
	tests := map[string]struct {
		exts      [][]byte
		wantToken string
	}{
		"unknown only":           {exts: [][]byte{ext(200, "future field")}},
		"unknown empty":          {exts: [][]byte{ext(0, "")}},
		"unknown before token":   {exts: [][]byte{ext(7, "x"), ext(quicutil.ExtToken, "tok")}, wantToken: "tok"},
		"unknown after token":    {exts: [][]byte{ext(quicutil.ExtToken, "tok"), ext(255, strings.Repeat("v", 300))}, wantToken: "tok"},
		"empty token":            {exts: [][]byte{ext(quicutil.ExtToken, "")}},
		"max size unknown value": {exts: [][]byte{ext(9, strings.Repeat("v", quicutil.MaxExtensionLen))}},
		"16 extensions": {exts: func() [][]byte {
			var e [][]byte
			for i := range 15 {
				e = append(e, ext(byte(100+i), ""))
			}
			return append(e, ext(quicutil.ExtToken, "last"))
		}(), wantToken: "last"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			enc := hdrFrame(hdrBody(byte(quicutil.KindHTTP), 0, "web", "", tt.exts...))
			want := quicutil.StreamHeader{Kind: quicutil.KindHTTP, Endpoint: "web", Token: tt.wantToken}
			got, n, err := quicutil.ParseStreamHeader(enc)
			if err != nil || n != len(enc) || got != want {
				t.Fatalf("ParseStreamHeader = %+v, %d, %v; want %+v, %d, nil", got, n, err, want, len(enc))
			}
		})
	}
}

func TestStreamHeaderMalformed(t *testing.T) {
	valid := hdrFrame(hdrBody(byte(quicutil.KindHTTP), 0, "web", ""))
	withVersion := func(v byte) []byte { b := bytes.Clone(valid); b[0] = v; return b }
	many := func(n int) [][]byte {
		var e [][]byte
		for i := range n {
			e = append(e, ext(byte(100+i), ""))
		}
		return e
	}
	http := byte(quicutil.KindHTTP)
	tests := map[string][]byte{
		"version 0":                 withVersion(0),
		"version 2":                 withVersion(2),
		"length over max":           {quicutil.HeaderVersion, byte((quicutil.MaxHeaderLen + 1) >> 8), byte((quicutil.MaxHeaderLen + 1) & 0xff)},
		"length 0xffff":             {quicutil.HeaderVersion, 0xff, 0xff},
		"empty body":                hdrFrame(nil),
		"body of 3 bytes":           hdrFrame([]byte{http, 0, 0}),
		"unknown kind":              hdrFrame(hdrBody(5, 0, "web", "")),
		"unknown kind 255":          hdrFrame(hdrBody(255, 0, "web", "")),
		"unknown flag bit 1":        hdrFrame(hdrBody(http, 2, "web", "")),
		"unknown flag bit 7":        hdrFrame(hdrBody(http, 0x81, "web", "")),
		"empty endpoint":            hdrFrame(hdrBody(http, 0, "", "")),
		"tcp empty endpoint":        hdrFrame(hdrBody(byte(quicutil.KindTCP), 0, "", "")),
		"uppercase endpoint":        hdrFrame(hdrBody(http, 0, "Web", "")),
		"endpoint starts with dash": hdrFrame(hdrBody(http, 0, "-web", "")),
		"endpoint with dot":         hdrFrame(hdrBody(http, 0, "a.b", "")),
		"64-char endpoint":          hdrFrame(hdrBody(http, 0, strings.Repeat("a", 64), "")),
		"control with endpoint":     hdrFrame(hdrBody(byte(quicutil.KindControl), 0, "web", "")),
		"endpoint past header":      hdrFrame([]byte{http, 0, 10, 'w', 'e', 'b'}),
		"addr past header":          hdrFrame([]byte{http, 0, 1, 'w', 5, '1'}),
		"addr without port":         hdrFrame(hdrBody(http, 0, "web", "192.0.2.1")),
		"addr hostname":             hdrFrame(hdrBody(http, 0, "web", "localhost:80")),
		"addr port out of range":    hdrFrame(hdrBody(http, 0, "web", "192.0.2.1:65536")),
		"addr v6 without brackets":  hdrFrame(hdrBody(http, 0, "web", "2001:db8::1:80")),
		"addr of 65 bytes":          hdrFrame(hdrBody(http, 0, "web", zoneAddr(quicutil.MaxAddrLen+1))),
		"extension key only":        hdrFrame(hdrBody(http, 0, "web", "", []byte{quicutil.ExtToken})),
		"extension past header":     hdrFrame(hdrBody(http, 0, "web", "", []byte{9, 5, 'a', 'b'})),
		"extension varint overflow": hdrFrame(hdrBody(http, 0, "web", "", append([]byte{9}, bytes.Repeat([]byte{0xff}, 10)...))),
		"extension over max":        hdrFrame(hdrBody(http, 0, "web", "", ext(9, strings.Repeat("v", quicutil.MaxExtensionLen+1)))),
		"token over max":            hdrFrame(hdrBody(http, 0, "web", "", ext(quicutil.ExtToken, strings.Repeat("v", quicutil.MaxExtensionLen+1)))),
		"17 extensions":             hdrFrame(hdrBody(http, 0, "web", "", many(17)...)),
	}
	for name, enc := range tests {
		t.Run(name, func(t *testing.T) {
			h, n, err := quicutil.ParseStreamHeader(enc)
			var he *quicutil.HeaderError
			if !errors.As(err, &he) {
				t.Fatalf("ParseStreamHeader = %+v, %d, %v; want a *HeaderError", h, n, err)
			}
			if n != 0 || h != (quicutil.StreamHeader{}) {
				t.Errorf("ParseStreamHeader returned %+v, %d with its error; want zero values", h, n)
			}
			h, err = quicutil.ReadStreamHeader(bytes.NewReader(enc))
			if !errors.As(err, &he) {
				t.Fatalf("ReadStreamHeader = %+v, %v; want a *HeaderError", h, err)
			}
		})
	}
}

// TestStreamHeaderTruncated checks every strict prefix of a header.
func TestStreamHeaderTruncated(t *testing.T) {
	for name, h := range sampleHeaders {
		t.Run(name, func(t *testing.T) {
			enc := h.Append(nil)
			for k := range len(enc) {
				if _, _, err := quicutil.ParseStreamHeader(enc[:k]); !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("ParseStreamHeader(%d of %d bytes): got %v, want io.ErrUnexpectedEOF", k, len(enc), err)
				}
				_, err := quicutil.ReadStreamHeader(bytes.NewReader(enc[:k]))
				want := io.ErrUnexpectedEOF
				if k == 0 {
					want = io.EOF // nothing at all: the stream ended cleanly
				}
				if !errors.Is(err, want) {
					t.Fatalf("ReadStreamHeader(%d of %d bytes): got %v, want an error wrapping %v", k, len(enc), err, want)
				}
			}
		})
	}
}

// TestReadStreamHeaderTruncatedAfterLength: a stream that ends right after
// the version and length fields ended in the middle of a header, so the
// error must wrap io.ErrUnexpectedEOF, not io.EOF (a caller would take
// io.EOF for a peer that opened a stream and closed it without a header).
func TestReadStreamHeaderTruncatedAfterLength(t *testing.T) {
	h := sampleHeaders["http"]
	enc := h.Append(nil)
	_, err := quicutil.ReadStreamHeader(bytes.NewReader(enc[:3]))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want an error wrapping io.ErrUnexpectedEOF", err)
	}
}

// TestReadStreamHeaderLong reads a valid header longer than 259 bytes (the
// token extension allows up to MaxExtensionLen).
func TestReadStreamHeaderLong(t *testing.T) {
	for _, name := range []string{"long token", "max token"} {
		h := sampleHeaders[name]
		got, err := quicutil.ReadStreamHeader(bytes.NewReader(h.Append(nil)))
		if err != nil || got != h {
			t.Fatalf("%s: got %+v, %v; want %+v, nil", name, got, err, h)
		}
	}
}

// TestParseStreamHeaderField255: an endpoint ID or client address length
// byte of 255 is refused like any other bad length.
func TestParseStreamHeaderField255(t *testing.T) {
	http := byte(quicutil.KindHTTP)
	tests := map[string][]byte{
		"id of 255":    hdrFrame(append([]byte{http, 0, 255}, strings.Repeat("a", 256)...)),
		"addr of 255":  hdrFrame(append([]byte{http, 0, 1, 'a', 255}, strings.Repeat("1", 256)...)),
		"fuzz crasher": []byte("\x01\x01000\x010\xff" + strings.Repeat("0", 299)),
	}
	for name, enc := range tests {
		t.Run(name, func(t *testing.T) {
			var he *quicutil.HeaderError
			if _, _, err := quicutil.ParseStreamHeader(enc); !errors.As(err, &he) {
				t.Fatalf("ParseStreamHeader = %v, want a *HeaderError", err)
			}
			if _, err := quicutil.ReadStreamHeader(bytes.NewReader(enc)); !errors.As(err, &he) {
				t.Fatalf("ReadStreamHeader = %v, want a *HeaderError", err)
			}
		})
	}
}

func TestReadStreamHeaderReaderError(t *testing.T) {
	boom := errors.New("boom")
	h := sampleHeaders["tcp token"]
	enc := h.Append(nil)
	for _, k := range []int{0, 2, 3, len(enc) - 1} {
		r := io.MultiReader(bytes.NewReader(enc[:k]), iotest.ErrReader(boom))
		if _, err := quicutil.ReadStreamHeader(r); !errors.Is(err, boom) {
			t.Fatalf("after %d bytes: got %v, want an error wrapping %v", k, err, boom)
		}
	}
}

func TestStreamHeaderValidate(t *testing.T) {
	tests := map[string]quicutil.StreamHeader{
		"unknown kind":          {Kind: 5, Endpoint: "web"},
		"control with endpoint": {Kind: quicutil.KindControl, Endpoint: "web"},
		"http without endpoint": {Kind: quicutil.KindHTTP},
		"invalid endpoint":      {Kind: quicutil.KindTCP, Endpoint: "a_b"},
		"64-char endpoint":      {Kind: quicutil.KindTCP, Endpoint: strings.Repeat("a", 64)},
		"unknown flags":         {Kind: quicutil.KindHTTP, Endpoint: "web", Flags: 0x02},
		"addr not ip:port":      {Kind: quicutil.KindHTTP, Endpoint: "web", ClientAddr: "example.com:80"},
		"addr of 65 bytes":      {Kind: quicutil.KindHTTP, Endpoint: "web", ClientAddr: zoneAddr(quicutil.MaxAddrLen + 1)},
		"token over max":        {Kind: quicutil.KindHTTP, Endpoint: "web", Token: strings.Repeat("t", quicutil.MaxExtensionLen+1)},
	}
	for name, h := range tests {
		t.Run(name, func(t *testing.T) {
			var he *quicutil.HeaderError
			if err := h.Validate(); !errors.As(err, &he) {
				t.Fatalf("Validate() = %v, want a *HeaderError", err)
			}
			// What Validate refuses, the parser refuses too.
			if _, _, err := quicutil.ParseStreamHeader(h.Append(nil)); !errors.As(err, &he) {
				t.Fatalf("ParseStreamHeader(Append) = %v, want a *HeaderError", err)
			}
		})
	}
}

func TestKind(t *testing.T) {
	tests := map[string]struct {
		kind    quicutil.Kind
		wantErr bool
	}{
		"http":    {kind: quicutil.KindHTTP},
		"tcp":     {kind: quicutil.KindTCP},
		"tls":     {kind: quicutil.KindTLS},
		"control": {wantErr: true}, // not a protocol an endpoint can serve
		"HTTP":    {wantErr: true},
		"":        {wantErr: true},
		"udp":     {wantErr: true},
	}
	for s, tt := range tests {
		t.Run(s, func(t *testing.T) {
			k, err := quicutil.ParseKind(s)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseKind(%q) error = %v, want error %t", s, err, tt.wantErr)
			}
			if err == nil && (k != tt.kind || k.String() != s) {
				t.Fatalf("ParseKind(%q) = %v (%q), want %v", s, k, k.String(), tt.kind)
			}
		})
	}
	if got := quicutil.Kind(9).String(); got != "kind(9)" {
		t.Errorf("Kind(9).String() = %q, want %q", got, "kind(9)")
	}
}
