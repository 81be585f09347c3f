package quicutil_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/pico-edge/pico/quicutil"
)

// Hand-written seeds live in testdata/fuzz/FuzzX/ and run as regular tests.
// Run a fuzzer with:
//
//	go test -run=^$ -fuzz=FuzzParseStreamHeader -fuzztime=60s ./quicutil

func FuzzParseStreamHeader(f *testing.F) {
	for name, h := range sampleHeaders {
		if name == "max token" {
			continue // 2 KB: slow to mutate and minimize; "long token" covers long headers
		}
		f.Add(h.Append(nil))
		f.Add(h.Append(nil)[:len(h.Append(nil))-1])
		f.Add(append(h.Append(nil), "payload"...))
	}
	f.Add(hdrFrame(hdrBody(byte(quicutil.KindHTTP), 0, "web", "", ext(200, "future"), ext(quicutil.ExtToken, "tok"))))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := quicutil.ParseStreamHeader(b)
		var he *quicutil.HeaderError
		if err != nil {
			if err != io.ErrUnexpectedEOF && !errors.As(err, &he) {
				t.Fatalf("error %v (%T) is neither io.ErrUnexpectedEOF nor a *HeaderError", err, err)
			}
			if n != 0 || h != (quicutil.StreamHeader{}) {
				t.Fatalf("error %v came with %+v, %d", err, h, n)
			}
		} else {
			if n > len(b) || n < 7 {
				t.Fatalf("used %d of %d bytes", n, len(b))
			}
			if len(h.Endpoint) > quicutil.MaxEndpointLen || len(h.ClientAddr) > quicutil.MaxAddrLen || len(h.Token) > quicutil.MaxExtensionLen {
				t.Fatalf("field too long: endpoint %d, addr %d, token %d bytes", len(h.Endpoint), len(h.ClientAddr), len(h.Token))
			}
			if err := h.Validate(); err != nil {
				t.Fatalf("accepted %+v, which Validate refuses: %v", h, err)
			}
			enc := h.Append(nil)
			if len(enc) > n {
				t.Fatalf("re-encoded to %d bytes, more than the %d it was parsed from", len(enc), n)
			}
			h2, n2, err := quicutil.ParseStreamHeader(enc)
			if err != nil || n2 != len(enc) || h2 != h {
				t.Fatalf("round trip: %+v -> %+v, %d, %v", h, h2, n2, err)
			}
		}

		// ReadStreamHeader agrees with ParseStreamHeader and reads exactly n bytes.
		r := bytes.NewReader(b)
		rh, rerr := quicutil.ReadStreamHeader(r)
		switch {
		case err == nil:
			if rerr != nil || rh != h || r.Len() != len(b)-n {
				t.Fatalf("ReadStreamHeader = %+v, %v with %d bytes left; want %+v, nil with %d", rh, rerr, r.Len(), h, len(b)-n)
			}
		case errors.As(err, &he):
			if !errors.As(rerr, &he) {
				t.Fatalf("ReadStreamHeader = %+v, %v; ParseStreamHeader refused it with %v", rh, rerr, err)
			}
		default: // truncated
			if !errors.Is(rerr, io.ErrUnexpectedEOF) && !errors.Is(rerr, io.EOF) {
				t.Fatalf("ReadStreamHeader = %+v, %v; want an EOF error like ParseStreamHeader's %v", rh, rerr, err)
			}
		}
	})
}

func FuzzParseMessage(f *testing.F) {
	for name, m := range sampleMessages() {
		if name == "register max" {
			continue // 65 KB: too slow to mutate
		}
		b, err := quicutil.AppendMessage(nil, m)
		if err != nil {
			f.Fatalf("%s: %v", name, err)
		}
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	f.Add(ctrlFrame(typeRegister, cbody(1, uint64(1)<<40)))
	f.Add(ctrlFrame(typeGoAway, cbody("bye", byte(0))))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := quicutil.ParseMessage(b)
		rm, rerr := quicutil.ReadMessage(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			var ce *quicutil.ControlError
			if err != io.ErrUnexpectedEOF && !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is neither io.ErrUnexpectedEOF nor a *ControlError", err, err)
			}
			if m != nil || n != 0 {
				t.Fatalf("error %v came with %#v, %d", err, m, n)
			}
			if rerr == nil {
				t.Fatalf("ReadMessage accepted %#v, which ParseMessage refused: %v", rm, err)
			}
			return
		}
		if n > len(b) || n < 2 {
			t.Fatalf("used %d of %d bytes", n, len(b))
		}
		if rerr != nil || !reflect.DeepEqual(rm, m) {
			t.Fatalf("ReadMessage = %#v, %v; ParseMessage = %#v", rm, rerr, m)
		}
		enc, err := quicutil.AppendMessage(nil, m)
		if err != nil {
			t.Fatalf("AppendMessage(%#v) of an accepted message: %v", m, err)
		}
		if len(enc) > n {
			t.Fatalf("re-encoded to %d bytes, more than the %d it was parsed from", len(enc), n)
		}
		m2, n2, err := quicutil.ParseMessage(enc)
		if err != nil || n2 != len(enc) || !reflect.DeepEqual(m2, m) {
			t.Fatalf("round trip: %#v -> %#v, %d, %v", m, m2, n2, err)
		}
	})
}

func FuzzReadAnswer(f *testing.F) {
	for _, a := range []struct {
		code quicutil.Status
		msg  string
	}{
		{quicutil.StatusOK, ""},
		{quicutil.StatusOK, "served"},
		{quicutil.StatusNoRoute, "no agent"},
		{quicutil.StatusInternal, ""},
		{255, "x"},
	} {
		b := quicutil.AppendAnswer(nil, a.code, a.msg)
		f.Add(b)
		f.Add(b[:len(b)-1])
		f.Add(append(b, "HTTP/1.1 200 OK\r\n"...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		err := quicutil.ReadAnswer(r)
		if len(b) < 2 || len(b) < 2+int(b[1]) {
			if !errors.Is(err, quicutil.ErrNoAnswer) {
				t.Fatalf("truncated answer: got %v, want ErrNoAnswer", err)
			}
			return
		}
		n := 2 + int(b[1])
		if r.Len() != len(b)-n {
			t.Fatalf("read %d bytes, want the %d of the answer", len(b)-r.Len(), n)
		}
		if b[0] == byte(quicutil.StatusOK) {
			if err != nil {
				t.Fatalf("StatusOK answer: got %v, want nil", err)
			}
			return
		}
		var se *quicutil.StatusError
		if !errors.As(err, &se) || se.Code != quicutil.Status(b[0]) || se.Message != string(b[2:n]) {
			t.Fatalf("got %v, want a *StatusError with code %d and message %q", err, b[0], b[2:n])
		}
		if enc := quicutil.AppendAnswer(nil, se.Code, se.Message); !bytes.Equal(enc, b[:n]) {
			t.Fatalf("re-encoded to %q, want %q", enc, b[:n])
		}
	})
}
