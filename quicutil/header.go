package quicutil

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// ALPN protocol names.
const (
	ALPNAgent = "pico-agent/1" // agents and forwarders
	ALPNPeer  = "pico-peer/1"  // node-to-node relay
)

// Header limits.
const (
	HeaderVersion   = 1
	MaxHeaderLen    = 4096 // bytes after the version and length fields
	MaxEndpointLen  = 63
	MaxAddrLen      = 64
	MaxExtensionLen = 2048
	maxExtensions   = 16
)

// Kind says what a stream carries.
type Kind uint8

const (
	KindControl Kind = 0
	KindHTTP    Kind = 1 // HTTP/1.1 on the stream
	KindTCP     Kind = 2 // raw bytes
	KindHTTP2   Kind = 3 // HTTP/2 with prior knowledge (h2c) on the stream
	// KindTLS is raw bytes too, a TLS connection the edge passes through
	// by its SNI without terminating it: an endpoint of this kind is
	// reached only on the edge's passthrough listener, never by the HTTP
	// doors or pico-agent forward.
	KindTLS Kind = 4
)

// IsHTTP reports whether k carries HTTP (of any version).
func (k Kind) IsHTTP() bool { return k == KindHTTP || k == KindHTTP2 }

func (k Kind) String() string {
	switch k {
	case KindControl:
		return "control"
	case KindHTTP:
		return "http"
	case KindTCP:
		return "tcp"
	case KindHTTP2:
		return "http2"
	case KindTLS:
		return "tls"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// IsRaw reports whether k carries raw bytes (TCP or TLS passthrough).
func (k Kind) IsRaw() bool { return k == KindTCP || k == KindTLS }

// ParseKind parses "http", "tcp" or "tls".
func ParseKind(s string) (Kind, error) {
	switch s {
	case "http":
		return KindHTTP, nil
	case "tcp":
		return KindTCP, nil
	case "tls":
		return KindTLS, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want http, tcp or tls)", s)
}

// Header flags.
const (
	FlagRelayed uint8 = 1 << 0 // the stream was relayed by an edge node; never relay it again
	knownFlags        = FlagRelayed
)

// Extension keys. Unknown keys are skipped by the parser.
const (
	ExtToken uint8 = 1 // bearer token of the opener (client auth on Dial streams, checked when the edge has proxy auth on)
)

// StreamHeader opens every bidirectional stream.
type StreamHeader struct {
	Kind       Kind
	Flags      uint8
	Endpoint   string
	ClientAddr string // "ip:port" or empty
	Token      string // ExtToken, or empty
}

// HeaderError says why a stream header was rejected.
type HeaderError struct{ Reason string }

func (e *HeaderError) Error() string { return "quicutil: bad stream header: " + e.Reason }

func headerErr(format string, args ...any) error {
	return &HeaderError{Reason: fmt.Sprintf(format, args...)}
}

// Validate checks the fields that the parser checks, so that an encoder
// never writes a header its peer rejects.
func (h *StreamHeader) Validate() error {
	switch h.Kind {
	case KindControl:
		if h.Endpoint != "" {
			return headerErr("control stream names endpoint %q", h.Endpoint)
		}
	case KindHTTP, KindTCP, KindHTTP2, KindTLS:
		if err := ValidateEndpointID(h.Endpoint); err != nil {
			return &HeaderError{Reason: err.Error()}
		}
	default:
		return headerErr("unknown kind %d", h.Kind)
	}
	if h.Flags&^knownFlags != 0 {
		return headerErr("unknown flags %#x", h.Flags)
	}
	if len(h.ClientAddr) > MaxAddrLen {
		return headerErr("client address of %d bytes (max %d)", len(h.ClientAddr), MaxAddrLen)
	}
	if h.ClientAddr != "" {
		if _, err := netip.ParseAddrPort(h.ClientAddr); err != nil {
			return headerErr("client address %q is not ip:port", h.ClientAddr)
		}
	}
	if len(h.Token) > MaxExtensionLen {
		return headerErr("token of %d bytes (max %d)", len(h.Token), MaxExtensionLen)
	}
	return nil
}

// Append encodes h after b. h must be valid (see Validate).
func (h *StreamHeader) Append(b []byte) []byte {
	start := len(b)
	b = append(b, HeaderVersion, 0, 0, byte(h.Kind), h.Flags, byte(len(h.Endpoint)))
	b = append(b, h.Endpoint...)
	b = append(b, byte(len(h.ClientAddr)))
	b = append(b, h.ClientAddr...)
	if h.Token != "" {
		b = append(b, ExtToken)
		b = binary.AppendUvarint(b, uint64(len(h.Token)))
		b = append(b, h.Token...)
	}
	binary.BigEndian.PutUint16(b[start+1:], uint16(len(b)-start-3))
	return b
}

// ParseStreamHeader decodes a header from the start of b and returns it with
// the number of bytes it used. It returns io.ErrUnexpectedEOF when b holds
// only part of a header.
func ParseStreamHeader(b []byte) (StreamHeader, int, error) {
	if len(b) < 3 {
		return StreamHeader{}, 0, io.ErrUnexpectedEOF
	}
	if b[0] != HeaderVersion {
		return StreamHeader{}, 0, headerErr("version %d (want %d)", b[0], HeaderVersion)
	}
	n := int(binary.BigEndian.Uint16(b[1:3]))
	if n > MaxHeaderLen {
		return StreamHeader{}, 0, headerErr("length %d (max %d)", n, MaxHeaderLen)
	}
	if len(b) < 3+n {
		return StreamHeader{}, 0, io.ErrUnexpectedEOF
	}
	h, err := parseHeaderBody(b[3 : 3+n])
	if err != nil {
		return StreamHeader{}, 0, err
	}
	return h, 3 + n, nil
}

func parseHeaderBody(b []byte) (StreamHeader, error) {
	var h StreamHeader
	if len(b) < 3 {
		return h, headerErr("length %d too short", len(b))
	}
	h.Kind, h.Flags = Kind(b[0]), b[1]
	b = b[2:]
	id, b, ok := cutShort(b)
	if !ok {
		return h, headerErr("endpoint ID runs past the header")
	}
	addr, b, ok := cutShort(b)
	if !ok {
		return h, headerErr("client address runs past the header")
	}
	h.Endpoint, h.ClientAddr = string(id), string(addr)
	for i := 0; len(b) > 0; i++ {
		if i == maxExtensions {
			return h, headerErr("more than %d extensions", maxExtensions)
		}
		key := b[0]
		l, m := binary.Uvarint(b[1:])
		if m <= 0 || l > MaxExtensionLen || l > uint64(len(b)-1-m) {
			return h, headerErr("extension %d: bad length", key)
		}
		val := b[1+m : 1+m+int(l)]
		b = b[1+m+int(l):]
		if key == ExtToken {
			h.Token = string(val)
		}
	}
	if err := h.Validate(); err != nil {
		return StreamHeader{}, err
	}
	return h, nil
}

// cutShort splits a uint8-length-prefixed field off b.
func cutShort(b []byte) (field, rest []byte, ok bool) {
	if len(b) < 1 || int(b[0]) > len(b)-1 {
		return nil, nil, false
	}
	n := 1 + int(b[0]) // not 1+b[0]: that is a uint8 and wraps at 255
	return b[1:n], b[n:], true
}

// ReadStreamHeader reads one header from r, reading no byte past it.
func ReadStreamHeader(r io.Reader) (StreamHeader, error) {
	var buf [3 + 256]byte
	if _, err := io.ReadFull(r, buf[:3]); err != nil {
		return StreamHeader{}, fmt.Errorf("read stream header: %w", err)
	}
	if buf[0] != HeaderVersion {
		return StreamHeader{}, headerErr("version %d (want %d)", buf[0], HeaderVersion)
	}
	n := int(binary.BigEndian.Uint16(buf[1:3]))
	if n > MaxHeaderLen {
		return StreamHeader{}, headerErr("length %d (max %d)", n, MaxHeaderLen)
	}
	var b []byte
	if 3+n <= len(buf) {
		b = buf[: 3+n : 3+n]
	} else {
		b = make([]byte, 3+n)
		copy(b, buf[:3])
	}
	if _, err := io.ReadFull(r, b[3:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the version and length were read
		}
		return StreamHeader{}, fmt.Errorf("read stream header: %w", err)
	}
	return parseHeaderBody(b[3:])
}

// Status is the first thing the accepting side of a stream writes, and the
// outcome of each endpoint in a registration Result.
type Status uint8

const (
	StatusOK                  Status = 0  // upstream reached / endpoint registered
	StatusNoRoute             Status = 1  // no upstream for this endpoint here
	StatusUpstreamUnreachable Status = 2  // the agent could not connect to its upstream
	StatusUpstreamTimeout     Status = 3  // the agent's connect to its upstream timed out
	StatusBadHeader           Status = 4  // the stream header was malformed
	StatusShuttingDown        Status = 5  // the node or agent is draining
	StatusOverloaded          Status = 6  // a limit on streams or requests was reached
	StatusInvalidEndpoint     Status = 7  // the endpoint ID is not a DNS label
	StatusForbidden           Status = 8  // the token is valid but does not allow this endpoint
	StatusConflict            Status = 9  // the endpoint is served with another protocol
	StatusLimit               Status = 10 // too many endpoints on this agent
	StatusInternal            Status = 11 // a bug or an unexpected failure
	StatusUnauthorized        Status = 12 // no token, or the token was refused (bad signature, expired, ...)
)

var statusNames = [...]string{
	StatusOK:                  "ok",
	StatusNoRoute:             "no route",
	StatusUpstreamUnreachable: "upstream unreachable",
	StatusUpstreamTimeout:     "upstream timeout",
	StatusBadHeader:           "bad header",
	StatusShuttingDown:        "shutting down",
	StatusOverloaded:          "overloaded",
	StatusInvalidEndpoint:     "invalid endpoint",
	StatusForbidden:           "forbidden",
	StatusConflict:            "conflict",
	StatusLimit:               "limit reached",
	StatusInternal:            "internal error",
	StatusUnauthorized:        "unauthorized",
}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// StatusError is a non-OK answer to a stream, or a failed registration.
type StatusError struct {
	Code    Status
	Message string
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return e.Code.String()
	}
	return e.Code.String() + ": " + e.Message
}

// ErrNoAnswer is returned when a stream ended before its answer arrived.
var ErrNoAnswer = errors.New("quicutil: stream ended before the answer")

// MaxAnswerMessage is the longest reason an answer carries.
const MaxAnswerMessage = 255

// AppendAnswer encodes an answer after b, cutting msg to MaxAnswerMessage bytes.
func AppendAnswer(b []byte, code Status, msg string) []byte {
	if len(msg) > MaxAnswerMessage {
		msg = msg[:MaxAnswerMessage]
	}
	b = append(b, byte(code), byte(len(msg)))
	return append(b, msg...)
}

// ReadAnswer reads an answer from r. It returns nil for StatusOK, a
// *StatusError for any other code, and ErrNoAnswer (wrapping the cause) when
// the stream ended first.
func ReadAnswer(r io.Reader) error {
	var buf [2 + MaxAnswerMessage]byte
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return fmt.Errorf("%w: %w", ErrNoAnswer, err)
	}
	n := int(buf[1])
	if _, err := io.ReadFull(r, buf[2:2+n]); err != nil {
		return fmt.Errorf("%w: %w", ErrNoAnswer, err)
	}
	if Status(buf[0]) == StatusOK {
		return nil
	}
	return &StatusError{Code: Status(buf[0]), Message: string(buf[2 : 2+n])}
}
