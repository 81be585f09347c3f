package quicutil_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pico-edge/pico/quicutil"
)

// Control message types on the wire (unexported in quicutil; doc.go).
const (
	typeHello      = 1
	typeWelcome    = 2
	typeRegister   = 3
	typeDeregister = 4
	typeResult     = 5
	typeGoAway     = 6
)

// Per-field string limits of the parser.
const (
	maxTokenLen   = 8 << 10
	maxNameLen    = 256  // Hello.Agent, Hello.AgentID, Welcome.*
	maxMessageLen = 1024 // EndpointResult.Message, GoAway.Reason
)

// manyEndpoints returns n distinct endpoints with IDs of MaxEndpointLen.
func manyEndpoints(n int) []quicutil.Endpoint {
	eps := make([]quicutil.Endpoint, n)
	for i := range eps {
		id := fmt.Sprintf("e%d-", i)
		eps[i] = quicutil.Endpoint{ID: id + strings.Repeat("x", quicutil.MaxEndpointLen-len(id)), Kind: quicutil.Kind(1 + i%2)}
	}
	return eps
}

// sampleMessages holds every message type. Empty lists are non-nil: the
// parser returns empty slices, and the wire does not tell nil from empty.
func sampleMessages() map[string]quicutil.Message {
	return map[string]quicutil.Message{
		"hello":       &quicutil.Hello{Token: "tok", Agent: "pico-agent/0.1.0", AgentID: "9f86d081"},
		"hello empty": &quicutil.Hello{},
		"hello max": &quicutil.Hello{
			Token:   strings.Repeat("t", maxTokenLen),
			Agent:   strings.Repeat("a", maxNameLen),
			AgentID: strings.Repeat("i", maxNameLen),
		},
		"welcome":       &quicutil.Welcome{NodeID: "edge-1", Version: "0.1.0"},
		"welcome empty": &quicutil.Welcome{},
		"welcome peers": &quicutil.Welcome{NodeID: "edge-1", Version: "0.1.0", Peers: []quicutil.NodeAddr{
			{NodeID: "edge-2", Addr: "10.0.0.2:8001"}, {NodeID: "edge-3", Addr: "[fd00::3]:8001"}}},
		"register":        &quicutil.Register{Seq: 1, Endpoints: []quicutil.Endpoint{{ID: "web", Kind: quicutil.KindHTTP}, {ID: "db", Kind: quicutil.KindTCP}}},
		"register empty":  &quicutil.Register{Seq: 1<<64 - 1, Endpoints: []quicutil.Endpoint{}},
		"register max":    &quicutil.Register{Seq: 1 << 40, Endpoints: manyEndpoints(quicutil.MaxEndpointsPerMsg)},
		"deregister":      &quicutil.Deregister{Seq: 2, IDs: []string{"web", "db"}},
		"deregister none": &quicutil.Deregister{IDs: []string{}},
		"result": &quicutil.Result{Seq: 3, Results: []quicutil.EndpointResult{
			{ID: "web", Code: quicutil.StatusOK},
			{ID: "db", Code: quicutil.StatusConflict, Message: "db is served as http"},
			{ID: "Bad_ID", Code: quicutil.StatusInvalidEndpoint, Message: strings.Repeat("m", maxMessageLen)},
		}},
		"result none":   &quicutil.Result{Seq: 4, Results: []quicutil.EndpointResult{}},
		"goaway":        &quicutil.GoAway{Reason: "node draining"},
		"goaway empty":  &quicutil.GoAway{},
		"peer hello":    &quicutil.PeerHello{NodeID: "edge-2", Proof: bytes.Repeat([]byte{0xab}, 32)},
		"peer ready":    &quicutil.PeerReady{NodeID: "edge-1", Proof: bytes.Repeat([]byte{0xcd}, quicutil.MaxProofLen)},
		"goaway max":    &quicutil.GoAway{Reason: strings.Repeat("r", maxMessageLen)},
		"refresh":       &quicutil.Refresh{Seq: 5, Token: "eyJhbGciOiJIUzI1NiJ9.e30.sig"},
		"refresh empty": &quicutil.Refresh{},
		"refresh max":   &quicutil.Refresh{Seq: 1<<64 - 1, Token: strings.Repeat("t", maxTokenLen)},
		"result refused refresh": &quicutil.Result{Seq: 5, Results: []quicutil.EndpointResult{
			{Code: quicutil.StatusUnauthorized, Message: "token expired at 2026-01-02T03:04:05Z"}}},
	}
}

func appendMessage(t testing.TB, b []byte, m quicutil.Message) []byte {
	t.Helper()
	b, err := quicutil.AppendMessage(b, m)
	if err != nil {
		t.Fatalf("AppendMessage(%T): %v", m, err)
	}
	return b
}

// ctrlFrame builds a control frame by hand.
func ctrlFrame(typ byte, body []byte) []byte {
	b := binary.AppendUvarint([]byte{typ}, uint64(len(body)))
	return append(b, body...)
}

// cbody builds a control message body by hand: string fields are
// length-prefixed, uint64s are uvarints, bytes and []bytes are raw.
func cbody(fields ...any) []byte {
	var b []byte
	for _, f := range fields {
		switch f := f.(type) {
		case string:
			b = binary.AppendUvarint(b, uint64(len(f)))
			b = append(b, f...)
		case uint64:
			b = binary.AppendUvarint(b, f)
		case int:
			b = binary.AppendUvarint(b, uint64(f))
		case byte:
			b = append(b, f)
		case []byte:
			b = append(b, f...)
		default:
			panic(fmt.Sprintf("cbody: %T", f))
		}
	}
	return b
}

func TestMessageRoundTrip(t *testing.T) {
	for name, m := range sampleMessages() {
		t.Run(name, func(t *testing.T) {
			enc := appendMessage(t, []byte("pre"), m)
			if string(enc[:3]) != "pre" {
				t.Fatalf("AppendMessage changed the bytes before it: %q", enc[:3])
			}
			enc = enc[3:]
			got, n, err := quicutil.ParseMessage(append(bytes.Clone(enc), "next frame"...))
			if err != nil || n != len(enc) || !reflect.DeepEqual(got, m) {
				t.Fatalf("ParseMessage = %#v, %d, %v; want %#v, %d, nil", got, n, err, m, len(enc))
			}

			var buf bytes.Buffer
			if err := quicutil.WriteMessage(&buf, m); err != nil {
				t.Fatalf("WriteMessage: %v", err)
			}
			if !bytes.Equal(buf.Bytes(), enc) {
				t.Fatalf("WriteMessage wrote %d bytes, want the %d of AppendMessage", buf.Len(), len(enc))
			}
			for rname, newReader := range messageReaders {
				got, err = quicutil.ReadMessage(newReader(iotest.HalfReader(bytes.NewReader(enc))))
				if err != nil || !reflect.DeepEqual(got, m) {
					t.Fatalf("ReadMessage(%s) = %#v, %v; want %#v, nil", rname, got, err, m)
				}
			}
		})
	}
}

// messageReaders are the MessageReaders ReadMessage is tested with.
var messageReaders = map[string]func(io.Reader) quicutil.MessageReader{
	"bufio":      func(r io.Reader) quicutil.MessageReader { return bufio.NewReader(r) },
	"unbuffered": quicutil.NewUnbufferedReader,
}

// TestReadMessageStream reads several frames from one stream, then a
// clean EOF; the unbuffered reader leaves the bytes after them unread.
func TestReadMessageStream(t *testing.T) {
	msgs := []quicutil.Message{
		&quicutil.Hello{Token: "tok", Agent: "a", AgentID: "id"},
		&quicutil.Register{Seq: 1, Endpoints: []quicutil.Endpoint{{ID: "web", Kind: quicutil.KindHTTP}}},
		&quicutil.GoAway{Reason: "bye"},
		&quicutil.Deregister{Seq: 2, IDs: []string{"web"}},
	}
	var buf bytes.Buffer
	for _, m := range msgs {
		if err := quicutil.WriteMessage(&buf, m); err != nil {
			t.Fatalf("WriteMessage(%T): %v", m, err)
		}
	}
	enc := buf.Bytes()
	for name, newReader := range messageReaders {
		t.Run(name, func(t *testing.T) {
			r := newReader(iotest.OneByteReader(bytes.NewReader(enc)))
			for i, want := range msgs {
				got, err := quicutil.ReadMessage(r)
				if err != nil || !reflect.DeepEqual(got, want) {
					t.Fatalf("message %d: got %#v, %v; want %#v, nil", i, got, err, want)
				}
			}
			if m, err := quicutil.ReadMessage(r); err != io.EOF {
				t.Fatalf("after the last frame: got %#v, %v; want io.EOF", m, err)
			}
		})
	}
	// Unbuffered, reading one frame consumes that frame and nothing more.
	rest := bytes.NewReader(append(bytes.Clone(enc), "after"...))
	for range msgs {
		if _, err := quicutil.ReadMessage(quicutil.NewUnbufferedReader(rest)); err != nil {
			t.Fatalf("unbuffered ReadMessage: %v", err)
		}
	}
	if b, _ := io.ReadAll(rest); string(b) != "after" {
		t.Fatalf("left after the frames: %q, want %q", b, "after")
	}
}

func TestEndpointResultErr(t *testing.T) {
	if err := (quicutil.EndpointResult{ID: "web", Code: quicutil.StatusOK, Message: "ignored"}).Err(); err != nil {
		t.Fatalf("Err() of StatusOK = %v, want nil", err)
	}
	err := quicutil.EndpointResult{ID: "web", Code: quicutil.StatusLimit, Message: "100 endpoints max"}.Err()
	var se *quicutil.StatusError
	if !errors.As(err, &se) || se.Code != quicutil.StatusLimit || se.Message != "100 endpoints max" {
		t.Fatalf("Err() = %v, want a *StatusError with code %v and the message", err, quicutil.StatusLimit)
	}
}

// TestParseMessageTruncated parses every strict prefix of every message.
func TestParseMessageTruncated(t *testing.T) {
	for name, m := range sampleMessages() {
		t.Run(name, func(t *testing.T) {
			enc := appendMessage(t, nil, m)
			for k := range len(enc) {
				if got, n, err := quicutil.ParseMessage(enc[:k]); err != io.ErrUnexpectedEOF {
					t.Fatalf("ParseMessage(%d of %d bytes) = %#v, %d, %v; want io.ErrUnexpectedEOF", k, len(enc), got, n, err)
				}
			}
		})
	}
}

// TestReadMessageTruncated reads prefixes of every message: nothing is a
// clean io.EOF, anything else an error wrapping io.ErrUnexpectedEOF.
func TestReadMessageTruncated(t *testing.T) {
	for name, m := range sampleMessages() {
		t.Run(name, func(t *testing.T) {
			enc := appendMessage(t, nil, m)
			_, hdrLen := binary.Uvarint(enc[1:])
			hdrLen++ // the type byte
			ks := []int{0, 1, hdrLen, hdrLen + 1, len(enc) - 1}
			if len(enc) <= 512 {
				ks = ks[:0]
				for k := range len(enc) {
					ks = append(ks, k)
				}
			}
			for _, k := range ks {
				if k >= len(enc) {
					continue
				}
				want := io.ErrUnexpectedEOF
				if k == 0 {
					want = io.EOF
				}
				for rname, newReader := range messageReaders {
					got, err := quicutil.ReadMessage(newReader(bytes.NewReader(enc[:k])))
					if !errors.Is(err, want) {
						t.Fatalf("ReadMessage(%s, %d of %d bytes) = %#v, %v; want an error wrapping %v", rname, k, len(enc), got, err, want)
					}
				}
			}
		})
	}
}

// TestReadMessageTruncatedAfterLength: a stream that ends right after a
// frame's type and length, before its body, ended inside the frame.
func TestReadMessageTruncatedAfterLength(t *testing.T) {
	enc := appendMessage(t, nil, &quicutil.GoAway{Reason: "bye"})
	_, err := quicutil.ReadMessage(bufio.NewReader(bytes.NewReader(enc[:2])))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want an error wrapping io.ErrUnexpectedEOF", err)
	}
}

func TestMessageMalformed(t *testing.T) {
	long := func(n int) string { return strings.Repeat("s", n) }
	var countOverflow []byte
	countOverflow = binary.AppendUvarint(countOverflow, 1)
	countOverflow = append(countOverflow, bytes.Repeat([]byte{0xff}, 10)...)
	tests := map[string][]byte{
		"unknown type 0":          ctrlFrame(0, nil),
		"unknown type 9":          ctrlFrame(9, cbody("x")),
		"unknown type 255":        ctrlFrame(255, nil),
		"hello trailing byte":     ctrlFrame(typeHello, cbody("tok", "agent", "id", byte(0))),
		"hello missing field":     ctrlFrame(typeHello, cbody("tok", "agent")),
		"hello token too long":    ctrlFrame(typeHello, cbody(long(maxTokenLen+1), "agent", "id")),
		"hello agent too long":    ctrlFrame(typeHello, cbody("tok", long(maxNameLen+1), "id")),
		"hello id too long":       ctrlFrame(typeHello, cbody("tok", "agent", long(maxNameLen+1))),
		"welcome node too long":   ctrlFrame(typeWelcome, cbody(long(maxNameLen+1), "v")),
		"welcome trailing":        ctrlFrame(typeWelcome, cbody("n", "v", 0, "extra")),
		"welcome no peer count":   ctrlFrame(typeWelcome, cbody("n", "v")),
		"welcome too many peers":  ctrlFrame(typeWelcome, cbody("n", "v", quicutil.MaxPeerHints+1, strings.Repeat("\x00", 200))),
		"welcome peer truncated":  ctrlFrame(typeWelcome, cbody("n", "v", 1, "edge-2")),
		"string past body":        ctrlFrame(typeGoAway, cbody(10, "ab")),
		"string length overflow":  ctrlFrame(typeGoAway, bytes.Repeat([]byte{0xff}, 10)),
		"goaway empty body":       ctrlFrame(typeGoAway, nil),
		"goaway reason too long":  ctrlFrame(typeGoAway, cbody(long(maxMessageLen+1))),
		"goaway trailing":         ctrlFrame(typeGoAway, cbody("bye", byte(1))),
		"register empty body":     ctrlFrame(typeRegister, nil),
		"register truncated seq":  ctrlFrame(typeRegister, []byte{0x80}),
		"register count 1<<40":    ctrlFrame(typeRegister, cbody(1, uint64(1)<<40)),
		"register count max u64":  ctrlFrame(typeRegister, cbody(1, uint64(1<<64-1))),
		"register count overflow": ctrlFrame(typeRegister, countOverflow),
		"register count > bytes":  ctrlFrame(typeRegister, cbody(1, 3, byte(1), "web")),
		"register count > max": ctrlFrame(typeRegister, cbody(1, quicutil.MaxEndpointsPerMsg+1,
			bytes.Repeat(cbody(byte(1), "a"), quicutil.MaxEndpointsPerMsg+1))),
		"register id too long":   ctrlFrame(typeRegister, cbody(1, 1, byte(1), long(quicutil.MaxEndpointLen+1))),
		"register trailing":      ctrlFrame(typeRegister, cbody(1, 1, byte(1), "web", byte(0))),
		"deregister count 1<<40": ctrlFrame(typeDeregister, cbody(1, uint64(1)<<40)),
		"deregister id too long": ctrlFrame(typeDeregister, cbody(1, 1, long(quicutil.MaxEndpointLen+1))),
		"deregister count > max": ctrlFrame(typeDeregister, cbody(1, quicutil.MaxEndpointsPerMsg+1,
			bytes.Repeat(cbody("a"), quicutil.MaxEndpointsPerMsg+1))),
		"result count 1<<40":       ctrlFrame(typeResult, cbody(1, uint64(1)<<40)),
		"result id too long":       ctrlFrame(typeResult, cbody(1, 1, long(quicutil.MaxEndpointLen+1), byte(0), "")),
		"result message too long":  ctrlFrame(typeResult, cbody(1, 1, "web", byte(0), long(maxMessageLen+1))),
		"result missing code":      ctrlFrame(typeResult, cbody(1, 1, "web")),
		"frame over max":           ctrlFrame(typeGoAway, cbody(long(quicutil.MaxControlFrameLen))),
		"frame length over max":    binary.AppendUvarint([]byte{typeGoAway}, quicutil.MaxControlFrameLen+1),
		"frame length 1<<62":       binary.AppendUvarint([]byte{typeGoAway}, 1<<62),
		"frame length max uint64":  binary.AppendUvarint([]byte{typeGoAway}, 1<<64-1),
		"unknown type over length": binary.AppendUvarint([]byte{99}, quicutil.MaxControlFrameLen+1),
	}
	for name, enc := range tests {
		t.Run(name, func(t *testing.T) {
			var ce *quicutil.ControlError
			m, n, err := quicutil.ParseMessage(enc)
			if !errors.As(err, &ce) {
				t.Fatalf("ParseMessage = %#v, %d, %v; want a *ControlError", m, n, err)
			}
			if m != nil || n != 0 {
				t.Errorf("ParseMessage returned %#v, %d with its error; want nil, 0", m, n)
			}
			m, err = quicutil.ReadMessage(bufio.NewReader(bytes.NewReader(enc)))
			if !errors.As(err, &ce) {
				t.Fatalf("ReadMessage = %#v, %v; want a *ControlError", m, err)
			}
		})
	}
}

// TestMessageFrameLengthOverflow: a frame length that is no uvarint at all
// is refused by both decoders.
func TestMessageFrameLengthOverflow(t *testing.T) {
	enc := append([]byte{typeGoAway}, bytes.Repeat([]byte{0xff}, 11)...)
	var ce *quicutil.ControlError
	if m, _, err := quicutil.ParseMessage(enc); !errors.As(err, &ce) {
		t.Fatalf("ParseMessage = %#v, %v; want a *ControlError", m, err)
	}
	m, err := quicutil.ReadMessage(bufio.NewReader(bytes.NewReader(enc)))
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadMessage = %#v, %v; want an error that is not EOF", m, err)
	}
}

// TestMessageHugeCountDoesNotAllocate checks that a list count the body
// cannot hold is refused before anything is allocated for it: not 1<<40
// elements (which would panic), and not even the 1000 the limit allows.
func TestMessageHugeCountDoesNotAllocate(t *testing.T) {
	for _, typ := range []byte{typeRegister, typeDeregister, typeResult} {
		for _, count := range []uint64{1 << 40, quicutil.MaxEndpointsPerMsg} {
			enc := ctrlFrame(typ, cbody(1, count))
			perRun := bytesPerRun(1000, func() {
				if _, _, err := quicutil.ParseMessage(enc); err == nil {
					panic("accepted")
				}
			})
			// A 1000-element list is at least 16 KiB; the error alone is well under 1 KiB.
			if perRun > 1024 {
				t.Errorf("type %d, count %d: %d bytes allocated per parse, want < 1024", typ, count, perRun)
			}
		}
	}
}

// bytesPerRun returns the average number of bytes f allocates, like
// testing.AllocsPerRun counts allocations.
func bytesPerRun(runs int, f func()) uint64 {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	f() // warm up
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / uint64(runs)
}

func TestAppendMessageTooLong(t *testing.T) {
	m := &quicutil.GoAway{Reason: strings.Repeat("r", quicutil.MaxControlFrameLen)}
	pre := []byte("pre")
	b, err := quicutil.AppendMessage(pre, m)
	var ce *quicutil.ControlError
	if !errors.As(err, &ce) {
		t.Fatalf("AppendMessage = %v, want a *ControlError", err)
	}
	if !bytes.Equal(b, pre) {
		t.Fatalf("AppendMessage returned %d bytes with its error, want the %d it was given", len(b), len(pre))
	}
	var buf bytes.Buffer
	if err := quicutil.WriteMessage(&buf, m); !errors.As(err, &ce) {
		t.Fatalf("WriteMessage = %v, want a *ControlError", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("WriteMessage wrote %d bytes of a frame it refused", buf.Len())
	}
}

// TestWriteMessageOneWrite: a frame goes out in one Write, so that frames
// written from several goroutines to one stream do not interleave.
func TestWriteMessageOneWrite(t *testing.T) {
	var w countingWriter
	m := &quicutil.Register{Seq: 7, Endpoints: manyEndpoints(10)}
	if err := quicutil.WriteMessage(&w, m); err != nil {
		t.Fatal(err)
	}
	if w.writes != 1 || w.n != len(appendMessage(t, nil, m)) {
		t.Fatalf("got %d writes of %d bytes, want 1 write of the whole frame", w.writes, w.n)
	}
	boom := errors.New("boom")
	if err := quicutil.WriteMessage(iotestErrWriter{boom}, m); !errors.Is(err, boom) {
		t.Fatalf("WriteMessage to a failing writer = %v, want %v", err, boom)
	}
}

type countingWriter struct{ writes, n int }

func (w *countingWriter) Write(p []byte) (int, error) { w.writes++; w.n += len(p); return len(p), nil }

type iotestErrWriter struct{ err error }

func (w iotestErrWriter) Write([]byte) (int, error) { return 0, w.err }

// TestResultFit: a Result for a full Register whose endpoints all carry
// long messages (public URLs, refusals) is shortened to fit one frame,
// refusals keeping a prefix of their reason; a Result that fits is left
// alone.
func TestResultFit(t *testing.T) {
	long := strings.Repeat("u", quicutil.MaxResultMessage)
	small := &quicutil.Result{Seq: 1, Results: []quicutil.EndpointResult{{ID: "a", Code: quicutil.StatusOK, Message: long}}}
	small.Fit()
	if small.Results[0].Message != long {
		t.Fatalf("a Result that fits lost its message")
	}
	for _, code := range []quicutil.Status{quicutil.StatusOK, quicutil.StatusConflict} {
		m := &quicutil.Result{Seq: 2}
		for i := range quicutil.MaxEndpointsPerMsg {
			m.Results = append(m.Results, quicutil.EndpointResult{ID: fmt.Sprintf("endpoint-%05d", i), Code: code, Message: long})
		}
		if _, err := quicutil.AppendMessage(nil, m); err == nil {
			t.Fatalf("code %v: the unshortened Result fits; the test shows nothing", code)
		}
		m.Fit()
		b, err := quicutil.AppendMessage(nil, m)
		if err != nil {
			t.Fatalf("code %v: after Fit: %v", code, err)
		}
		back, _, err := quicutil.ParseMessage(b)
		if err != nil {
			t.Fatal(err)
		}
		got := back.(*quicutil.Result)
		if len(got.Results) != quicutil.MaxEndpointsPerMsg || got.Results[999].ID != "endpoint-00999" || got.Results[999].Code != code {
			t.Fatalf("code %v: results changed: %d, last %+v", code, len(got.Results), got.Results[999])
		}
		if code != quicutil.StatusOK && got.Results[0].Message == "" {
			t.Errorf("refusals lost every reason; the first keeps %q", got.Results[0].Message)
		}
	}
}
