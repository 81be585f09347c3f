package edge_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

type h3Vector struct {
	Name   string      `json:"name"`
	Expect string      `json:"expect"` // reject | one | reject-or-one
	Fields [][2]string `json:"fields"`
	Body   string      `json:"body"`
}

// TestHTTP3SmugglingVectors sends the raw HTTP/3 requests of
// testdata/smuggling/http3.json, encoded by hand so that a client library
// cannot tidy them: each is refused (an error status or a reset stream) or
// reaches the upstream as at most one request, never the smuggled one.
func TestHTTP3SmugglingVectors(t *testing.T) {
	b, err := os.ReadFile("../testdata/smuggling/http3.json")
	if err != nil {
		t.Fatal(err)
	}
	var vectors []h3Vector
	if err := json.Unmarshal(b, &vectors); err != nil {
		t.Fatalf("corpus: %v", err)
	}
	// Each vector reaches its own endpoint and upstream, so that a request
	// of one vector still on its way cannot be taken for another's.
	n := edgetest.NewNode(t)
	a := n.NewAgent(t)
	var mu sync.Mutex
	seen := make([][]string, len(vectors))
	for i := range vectors {
		up := edgetest.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			mu.Lock()
			seen[i] = append(seen[i], r.URL.Path+" "+string(body)+" "+r.Header.Get("X-Smuggled"))
			mu.Unlock()
		}))
		if err := a.ServeUpstream(t.Context(), fmt.Sprintf("v%d", i), quicutil.KindHTTP, up); err != nil {
			t.Fatal(err)
		}
		for j, f := range vectors[i].Fields {
			vectors[i].Fields[j][1] = strings.ReplaceAll(f[1], "web.pico.localhost", fmt.Sprintf("v%d.pico.localhost", i))
		}
	}
	addr := strings.TrimPrefix(n.TLSURL, "https://")
	conn, err := quic.DialAddr(t.Context(), addr, &tls.Config{RootCAs: n.CAPool, ServerName: "localhost", NextProtos: []string{"h3"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	ctrl, err := conn.OpenUniStream()
	if err != nil {
		t.Fatal(err)
	}
	ctrl.Write([]byte{0x00, 0x04, 0x00}) // control stream type, empty SETTINGS

	for i, v := range vectors {
		t.Run(v.Name, func(t *testing.T) {
			status := sendH3(t, conn, v)
			mu.Lock()
			got := append([]string(nil), seen[i]...)
			mu.Unlock()
			for _, s := range got {
				if strings.Contains(s, "/smuggled") || strings.HasSuffix(s, " 1") {
					t.Fatalf("the upstream received smuggled content: %q (status %d)", got, status)
				}
			}
			refused := status == 0 || status >= 400
			switch {
			case v.Expect == "reject" && (!refused || len(got) != 0):
				t.Fatalf("status %d, upstream saw %q; want a refusal that reaches nobody", status, got)
			case v.Expect == "one" && (status != 200 || len(got) != 1):
				t.Fatalf("status %d, upstream saw %q; want 200 and exactly one request", status, got)
			case len(got) > 1:
				t.Fatalf("upstream saw %d requests %q", len(got), got)
			}
		})
	}
}

// sendH3 sends one request on a new stream and returns the response
// status, or 0 when the stream was reset or ended without one.
func sendH3(t *testing.T, conn *quic.Conn, v h3Vector) int {
	t.Helper()
	var block bytes.Buffer
	enc := qpack.NewEncoder(&block)
	for _, f := range v.Fields {
		enc.WriteField(qpack.HeaderField{Name: f[0], Value: f[1]})
	}
	frame := func(b []byte, typ uint64, payload []byte) []byte {
		b = quicvarint.Append(b, typ)
		b = quicvarint.Append(b, uint64(len(payload)))
		return append(b, payload...)
	}
	msg := frame(nil, 0x01, block.Bytes())
	if v.Body != "" {
		msg = frame(msg, 0x00, []byte(v.Body))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second) // a ceiling for failure only
	defer cancel()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer str.CancelRead(0)
	str.SetDeadline(time.Now().Add(20 * time.Second))
	str.Write(msg)
	str.Close()
	resp, err := io.ReadAll(str)
	if err != nil && len(resp) == 0 {
		return 0 // reset: refused
	}
	r := quicvarint.NewReader(bytes.NewReader(resp))
	for {
		typ, err := quicvarint.Read(r)
		if err != nil {
			return 0
		}
		l, err := quicvarint.Read(r)
		if err != nil {
			return 0
		}
		payload := make([]byte, l)
		if _, err := io.ReadFull(r, payload); err != nil {
			return 0
		}
		if typ != 0x01 {
			continue
		}
		next := qpack.NewDecoder().Decode(payload)
		for {
			f, err := next()
			if err != nil {
				return 0
			}
			if f.Name == ":status" {
				s, _ := strconv.Atoi(f.Value)
				return s
			}
		}
	}
}
