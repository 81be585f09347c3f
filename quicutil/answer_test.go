package quicutil_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pico-edge/pico/quicutil"
)

func TestAnswerRoundTrip(t *testing.T) {
	tests := map[string]struct {
		code    quicutil.Status
		msg     string
		wantErr string // "" for StatusOK
	}{
		"ok":                  {code: quicutil.StatusOK},
		"ok with message":     {code: quicutil.StatusOK, msg: "served"},
		"no route":            {code: quicutil.StatusNoRoute, msg: `agent does not serve "web"`, wantErr: `no route: agent does not serve "web"`},
		"unreachable":         {code: quicutil.StatusUpstreamUnreachable, msg: "connection refused", wantErr: "upstream unreachable: connection refused"},
		"internal no message": {code: quicutil.StatusInternal, wantErr: "internal error"},
		"unknown code":        {code: 200, msg: "future", wantErr: "status(200): future"},
		"max message":         {code: quicutil.StatusForbidden, msg: strings.Repeat("m", quicutil.MaxAnswerMessage), wantErr: "forbidden: " + strings.Repeat("m", quicutil.MaxAnswerMessage)},
		"UTF-8 message":       {code: quicutil.StatusConflict, msg: "déjà servi en http", wantErr: "conflict: déjà servi en http"},
	}
	payload := []byte("HTTP/1.1 200 OK\r\n")
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			enc := quicutil.AppendAnswer([]byte("pre"), tt.code, tt.msg)
			if !bytes.HasPrefix(enc, []byte("pre")) || len(enc) != 3+2+len(tt.msg) {
				t.Fatalf("AppendAnswer = %q, want %q then %d bytes", enc, "pre", 2+len(tt.msg))
			}
			enc = append(enc[3:], payload...)
			for rname, wrap := range map[string]func(io.Reader) io.Reader{
				"whole":    func(r io.Reader) io.Reader { return r },
				"one byte": iotest.OneByteReader,
			} {
				r := bytes.NewReader(enc)
				err := quicutil.ReadAnswer(wrap(r))
				if tt.wantErr == "" {
					if err != nil {
						t.Fatalf("%s: ReadAnswer = %v, want nil", rname, err)
					}
				} else {
					var se *quicutil.StatusError
					if !errors.As(err, &se) {
						t.Fatalf("%s: ReadAnswer = %v, want a *StatusError", rname, err)
					}
					if se.Code != tt.code || se.Message != tt.msg || se.Error() != tt.wantErr {
						t.Fatalf("%s: got %+v (%q), want code %v, message %q (%q)", rname, se, se.Error(), tt.code, tt.msg, tt.wantErr)
					}
				}
				if rest, _ := io.ReadAll(r); !bytes.Equal(rest, payload) {
					t.Fatalf("%s: bytes after the answer: got %q, want %q", rname, rest, payload)
				}
			}
		})
	}
}

func TestAnswerMessageCut(t *testing.T) {
	msg := strings.Repeat("0123456789", 30) // 300 bytes
	enc := quicutil.AppendAnswer(nil, quicutil.StatusNoRoute, msg)
	if len(enc) != 2+quicutil.MaxAnswerMessage {
		t.Fatalf("len(AppendAnswer) = %d, want %d", len(enc), 2+quicutil.MaxAnswerMessage)
	}
	var se *quicutil.StatusError
	if err := quicutil.ReadAnswer(bytes.NewReader(enc)); !errors.As(err, &se) {
		t.Fatalf("ReadAnswer = %v, want a *StatusError", err)
	}
	if want := msg[:quicutil.MaxAnswerMessage]; se.Message != want {
		t.Fatalf("message: got %d bytes %q, want the first %d bytes", len(se.Message), se.Message, len(want))
	}
}

func TestAnswerTruncated(t *testing.T) {
	for _, msg := range []string{"", "no agent here"} {
		enc := quicutil.AppendAnswer(nil, quicutil.StatusNoRoute, msg)
		for k := range len(enc) {
			err := quicutil.ReadAnswer(bytes.NewReader(enc[:k]))
			if !errors.Is(err, quicutil.ErrNoAnswer) {
				t.Fatalf("%d of %d bytes: got %v, want an error wrapping ErrNoAnswer", k, len(enc), err)
			}
			if k == 0 && !errors.Is(err, io.EOF) {
				t.Fatalf("no bytes: got %v, want it to wrap io.EOF too", err)
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("%d of %d bytes: got %v, want it to wrap io.ErrUnexpectedEOF or io.EOF too", k, len(enc), err)
			}
			var se *quicutil.StatusError
			if errors.As(err, &se) {
				t.Fatalf("%d of %d bytes: got a *StatusError %v for a missing answer", k, len(enc), se)
			}
		}
	}
	// The cause of a failed read is kept (a stream reset, say).
	reset := errors.New("stream reset")
	err := quicutil.ReadAnswer(io.MultiReader(bytes.NewReader([]byte{0}), iotest.ErrReader(reset)))
	if !errors.Is(err, quicutil.ErrNoAnswer) || !errors.Is(err, reset) {
		t.Fatalf("got %v, want an error wrapping ErrNoAnswer and %v", err, reset)
	}
}

func TestStatusString(t *testing.T) {
	seen := map[string]quicutil.Status{}
	for s := quicutil.StatusOK; s <= quicutil.StatusUnauthorized; s++ {
		name := s.String()
		if name == "" || strings.HasPrefix(name, "status(") {
			t.Errorf("Status(%d).String() = %q, want a name", s, name)
		}
		if prev, dup := seen[name]; dup {
			t.Errorf("Status(%d) and Status(%d) are both %q", prev, s, name)
		}
		seen[name] = s
	}
	if got := quicutil.Status(99).String(); got != "status(99)" {
		t.Errorf("Status(99).String() = %q, want %q", got, "status(99)")
	}
}
