package quicutil

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// # TCP transport: QUIC packets in WebSocket frames
//
// Where UDP does not get through (a firewall that allows only outbound TCP,
// an HTTP proxy, an HTTP load balancer or Kubernetes Ingress in front of the
// edge), an agent link runs over one TCP connection instead. The link is
// still the same QUIC connection: its packets travel in WebSocket binary
// frames (RFC 6455), one packet per frame, so streams, error codes, auth,
// goaway and QUIC's own TLS work as over UDP, and stay end to end through a
// balancer that terminates the outer TLS.
//
//	agent                                        edge (TLS or plain front door,
//	  |                                           or TCP on the agent port)
//	  |-- GET /_pico/agent HTTP/1.1 ------------->|
//	  |   Upgrade: websocket, Connection: Upgrade |
//	  |   Sec-WebSocket-Key, -Version: 13         |
//	  |   Sec-WebSocket-Protocol: pico-agent/1    |
//	  |<-- 101 Switching Protocols ---------------|
//	  |   Sec-WebSocket-Accept                    |
//	  |== binary frame (masked): QUIC packet ====>|  one packet per frame,
//	  |<= binary frame: QUIC packet ==============|  at most MaxFramePayload
//	  |<-> ping / pong / close                    |
//
// A frame (RFC 6455 section 5.2):
//
//	byte 0   FIN(1) RSV1-3(3, zero) opcode(4): 0 continuation, 2 binary,
//	         8 close, 9 ping, 10 pong (1 text is refused)
//	byte 1   MASK(1) len7(7): 0..125 the length; 126: uint16 follows;
//	         127: uint64 follows (top bit zero); the shortest form only
//	mask     [4] when MASK: set on every frame the agent sends, never on
//	         the edge's
//	payload  [length], XORed with the mask key
//
// Control frames carry at most 125 bytes and are never fragmented. A
// message (a frame and its continuations) longer than MaxFramePayload
// closes the connection with code 1009.

// WebSocket opcodes.
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xa
)

// WebSocket close codes (RFC 6455 section 7.4.1).
const (
	closeNormal      = 1000
	closeGoingAway   = 1001
	closeProtocol    = 1002
	closeUnsupported = 1003
	closeTooBig      = 1009
)

// MaxFramePayload is the largest message either side accepts: well above
// the largest QUIC packet quic-go sends (1452 bytes), and small enough that
// a peer cannot make the other buffer much.
const MaxFramePayload = 16 << 10

// maxFrameHeader is the longest frame header: 2 + 8 length + 4 mask.
const maxFrameHeader = 14

// frameHeader is a parsed WebSocket frame header.
type frameHeader struct {
	fin    bool
	op     byte
	masked bool
	key    [4]byte
	length uint64
}

// FrameError is a frame that breaks RFC 6455 or this transport's limits:
// the connection closes with Code.
type FrameError struct {
	Code   uint16 // WebSocket close code
	Reason string
}

func (e *FrameError) Error() string {
	return fmt.Sprintf("websocket frame: %s (close %d)", e.Reason, e.Code)
}

// errShortFrame: the bytes end before the frame header does.
var errShortFrame = errors.New("websocket frame: header incomplete")

// frameHeaderLen returns the length of the header that b starts with,
// which needs only its first two bytes.
func frameHeaderLen(b0, b1 byte) int {
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4
	}
	return n
}

// parseFrameHeader parses the frame header at the start of b. It returns
// errShortFrame when b ends first, and a *FrameError for a header no peer
// of this transport may send; the payload length is checked against
// MaxFramePayload here, before anything is read.
func parseFrameHeader(b []byte) (frameHeader, int, error) {
	if len(b) < 2 {
		return frameHeader{}, 0, errShortFrame
	}
	n := frameHeaderLen(b[0], b[1])
	if len(b) < n {
		return frameHeader{}, 0, errShortFrame
	}
	h := frameHeader{fin: b[0]&0x80 != 0, op: b[0] & 0x0f, masked: b[1]&0x80 != 0}
	if b[0]&0x70 != 0 {
		return frameHeader{}, 0, &FrameError{closeProtocol, "reserved bits set"}
	}
	i := 2
	switch l := b[1] & 0x7f; l {
	case 126:
		h.length = uint64(binary.BigEndian.Uint16(b[2:]))
		i += 2
		if h.length < 126 {
			return frameHeader{}, 0, &FrameError{closeProtocol, "length not in its shortest form"}
		}
	case 127:
		h.length = binary.BigEndian.Uint64(b[2:])
		i += 8
		if h.length>>63 != 0 {
			return frameHeader{}, 0, &FrameError{closeProtocol, "length has its top bit set"}
		}
		if h.length <= 0xffff {
			return frameHeader{}, 0, &FrameError{closeProtocol, "length not in its shortest form"}
		}
	default:
		h.length = uint64(l)
	}
	if h.masked {
		copy(h.key[:], b[i:i+4])
	}
	switch h.op {
	case opContinuation, opBinary:
	case opText:
		return frameHeader{}, 0, &FrameError{closeUnsupported, "text frame (this transport carries binary frames only)"}
	case opClose, opPing, opPong:
		if !h.fin {
			return frameHeader{}, 0, &FrameError{closeProtocol, "fragmented control frame"}
		}
		if h.length > 125 {
			return frameHeader{}, 0, &FrameError{closeProtocol, "control frame longer than 125 bytes"}
		}
	default:
		return frameHeader{}, 0, &FrameError{closeProtocol, fmt.Sprintf("unknown opcode %#x", h.op)}
	}
	if h.length > MaxFramePayload {
		return frameHeader{}, 0, &FrameError{closeTooBig, fmt.Sprintf("frame of %d bytes (at most %d)", h.length, MaxFramePayload)}
	}
	return h, n, nil
}

// appendFrameHeader appends the header of h to b, in the shortest form.
func appendFrameHeader(b []byte, h frameHeader) []byte {
	b0 := h.op
	if h.fin {
		b0 |= 0x80
	}
	var m byte
	if h.masked {
		m = 0x80
	}
	switch {
	case h.length < 126:
		b = append(b, b0, m|byte(h.length))
	case h.length <= 0xffff:
		b = append(b, b0, m|126)
		b = binary.BigEndian.AppendUint16(b, uint16(h.length))
	default:
		b = append(b, b0, m|127)
		b = binary.BigEndian.AppendUint64(b, h.length)
	}
	if h.masked {
		b = append(b, h.key[:]...)
	}
	return b
}

// maskBytes XORs b with key, as the payload of a frame starting at
// payload offset 0, eight bytes at a time: two copies of the key in one
// word keep the key's phase, since 8 is a multiple of 4.
func maskBytes(key [4]byte, b []byte) {
	k := uint64(binary.LittleEndian.Uint32(key[:]))
	k |= k << 32
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^k)
		b = b[8:]
	}
	for i := range b {
		b[i] ^= key[i&3]
	}
}
