package quicutil

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// sampleFrames are frames a peer of the TCP transport sends, built with the
// encoder: the seeds of FuzzReadFrames (with testdata/fuzz/FuzzReadFrames).
func sampleFrames() [][]byte {
	frame := func(op byte, fin bool, payload []byte, key [4]byte) []byte {
		h := frameHeader{fin: fin, op: op, masked: true, key: key, length: uint64(len(payload))}
		b := appendFrameHeader(nil, h)
		p := bytes.Clone(payload)
		maskBytes(key, p)
		return append(b, p...)
	}
	k := [4]byte{0xde, 0xad, 0xbe, 0xef}
	return [][]byte{
		frame(opBinary, true, []byte("a QUIC packet"), k),
		frame(opBinary, true, bytes.Repeat([]byte{7}, 1452), k),
		frame(opBinary, true, bytes.Repeat([]byte{7}, 70000), k)[:100],
		append(frame(opBinary, false, []byte("first "), k), frame(opContinuation, true, []byte("second"), k)...),
		append(frame(opPing, true, []byte("ping"), k), frame(opBinary, true, []byte("after ping"), k)...),
		frame(opPong, true, nil, k),
		frame(opClose, true, []byte{0x03, 0xe8, 'b', 'y', 'e'}, k),
		frame(opBinary, true, nil, k),
	}
}

// FuzzReadFrames feeds bytes from the network to the edge's frame reader:
// it must never panic, never return more than the buffer holds, and fail
// only with a *FrameError, a *CloseError or a truncation.
func FuzzReadFrames(f *testing.F) {
	for _, b := range sampleFrames() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, n, err := parseFrameHeader(b); err == nil {
			if n > len(b) || n > maxFrameHeader || h.length > MaxFramePayload {
				t.Fatalf("parse: n=%d length=%d", n, h.length)
			}
			if re := appendFrameHeader(nil, h); !bytes.Equal(re, b[:n]) {
				t.Fatalf("round trip: %x -> %+v -> %x", b[:n], h, re)
			}
		}
		c := &frameConn{br: bufio.NewReader(bytes.NewReader(b)), control: make(chan []byte, 64)}
		p := make([]byte, 1500)
		for range 1000 {
			n, err := c.readPacket(p)
			if n > len(p) || n < 0 {
				t.Fatalf("readPacket returned %d for a %d-byte buffer", n, len(p))
			}
			if err == nil {
				continue
			}
			var fe *FrameError
			var ce *CloseError
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.As(err, &fe) && !errors.As(err, &ce) {
				t.Fatalf("readPacket error %v (%T)", err, err)
			}
			if _, err2 := c.readPacket(p); err2 == nil && !errors.Is(err, io.EOF) {
				t.Fatalf("readPacket after %v succeeded", err)
			}
			return
		}
	})
}

func TestMaskBytes(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	for n := range 40 {
		b := bytes.Repeat([]byte{0xaa}, n)
		maskBytes(key, b)
		for i := range b {
			if b[i] != 0xaa^key[i%4] {
				t.Fatalf("n=%d: byte %d = %#x, want %#x", n, i, b[i], 0xaa^key[i%4])
			}
		}
	}
}
