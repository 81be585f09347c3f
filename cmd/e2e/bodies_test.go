package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// generator returns n deterministic pseudo-random bytes for seed, made as
// they are read: nothing is held in memory.
func generator(seed uint64, n int64) io.Reader {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return io.LimitReader(rand.NewChaCha8(s), n)
}

// uploadResult is what the upstream of TestLargeBodies saw of an upload.
type uploadResult struct {
	Bytes            int64    `json:"bytes"`
	SHA256           string   `json:"sha256"`
	ContentLength    int64    `json:"content_length"`
	TransferEncoding []string `json:"transfer_encoding"`
	Err              string   `json:"err,omitempty"`
}

// TestLargeBodies streams 1 GiB down and 1 GiB up through the tunnel and
// compares SHA-256 sums on both ends, with a chunked upload and download
// of unknown length besides. The edge and the agent must stream in
// constant memory: their peak RSS stays under maxRSS. The sizes stay at
// 1 GiB under -race too: the generator and SHA-256 are assembly, which the
// race detector does not slow, and the binaries are built without it, so
// the test takes about 20s either way on 2 cores.
func TestLargeBodies(t *testing.T) {
	e2e(t)
	forEachTransport(t, testLargeBodies)
}

func testLargeBodies(t *testing.T, tr transport) {
	const (
		size        = 1 << 30
		chunkedSize = 16 << 20
		maxRSS      = 200 << 20
	)
	e := startEdge(t, "--no-access-log").over(t, tr)
	sent := make(chan [32]byte, 1) // sum of what the upstream wrote on /download
	mux := http.NewServeMux()
	mux.HandleFunc("GET /download", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		seed, _ := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
		if r.URL.Query().Get("chunked") == "" {
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(w, h), generator(seed, n)); err != nil {
			return // the test fails on its side
		}
		var sum [32]byte
		h.Sum(sum[:0])
		sent <- sum
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		res := uploadResult{Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil)),
			ContentLength: r.ContentLength, TransferEncoding: r.TransferEncoding}
		if err != nil {
			res.Err = err.Error()
		}
		json.NewEncoder(w).Encode(res)
	})
	up := serveHTTP(t, mux)
	agent := e.serve(t, "http", "big", "127.0.0.1:"+up)
	c := newClient(t, 0) // bounded by the per-transfer context below
	before := vmHWM(t, e.pid())

	download := func(t *testing.T, n int64, seed uint64, chunked bool) {
		url := fmt.Sprintf("http://%s/download?n=%d&seed=%d", e.proxy, n, seed)
		if chunked {
			url += "&chunked=1"
		}
		ctx, cancel := transferContext(t, n)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		req.Header.Set("X-Pico-Endpoint", "big")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		wantLen := n
		if chunked {
			wantLen = -1
		}
		if resp.ContentLength != wantLen {
			t.Errorf("Content-Length = %d, want %d", resp.ContentLength, wantLen)
		}
		h := sha256.New()
		got, err := io.Copy(h, resp.Body)
		if err != nil || got != n {
			t.Fatalf("read %d bytes, %v; want %d bytes", got, err, n)
		}
		var sum [32]byte
		h.Sum(sum[:0])
		select {
		case want := <-sent:
			if sum != want {
				t.Fatalf("sha256 received %x, upstream sent %x", sum, want)
			}
		case <-time.After(waitTimeout):
			t.Fatal("upstream did not report its sum")
		}
	}
	upload := func(t *testing.T, n int64, seed uint64, chunked bool) {
		ctx, cancel := transferContext(t, n)
		defer cancel()
		h := sha256.New()
		body := io.TeeReader(generator(seed, n), h)
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+e.proxy+"/upload", struct{ io.Reader }{body})
		req.Header.Set("X-Pico-Endpoint", "big")
		req.Header.Set("Content-Type", "application/octet-stream")
		req.ContentLength = n
		if chunked {
			req.ContentLength = -1
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		var res uploadResult
		if err := json.Unmarshal(b, &res); err != nil {
			t.Fatalf("upstream answer %q: %v", b, err)
		}
		if want := hex.EncodeToString(h.Sum(nil)); res.Bytes != n || res.SHA256 != want || res.Err != "" {
			t.Fatalf("upstream got %d bytes sha256 %s (err %q), client sent %d bytes sha256 %s", res.Bytes, res.SHA256, res.Err, n, want)
		}
		if chunked {
			if res.ContentLength != -1 || len(res.TransferEncoding) != 1 || res.TransferEncoding[0] != "chunked" {
				t.Errorf("upstream saw Content-Length %d, Transfer-Encoding %q; want -1, [chunked]", res.ContentLength, res.TransferEncoding)
			}
		} else if res.ContentLength != n {
			t.Errorf("upstream saw Content-Length %d, want %d", res.ContentLength, n)
		}
	}

	t.Run(fmt.Sprintf("download %d MiB", size>>20), func(t *testing.T) { download(t, size, 1, false) })
	t.Run(fmt.Sprintf("upload %d MiB", size>>20), func(t *testing.T) { upload(t, size, 2, false) })
	t.Run("download chunked", func(t *testing.T) { download(t, chunkedSize, 3, true) })
	t.Run("upload chunked", func(t *testing.T) { upload(t, chunkedSize, 4, true) })
	t.Run("curl upload with Expect: 100-continue", func(t *testing.T) {
		// curl sends Expect: 100-continue for bodies over 1 MiB and waits
		// for the 100 that must cross the tunnel.
		f := filepath.Join(t.TempDir(), "body")
		fh, err := os.Create(f)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(io.MultiWriter(fh, h), generator(5, chunkedSize))
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
		body, status := curl(t, "-H", "x-pico-endpoint: big", "-H", "Content-Type: application/octet-stream",
			"--data-binary", "@"+f, "http://"+e.proxy+"/upload")
		var res uploadResult
		if err := json.Unmarshal([]byte(body), &res); status != http.StatusOK || err != nil {
			t.Fatalf("curl: %d %q (%v)", status, body, err)
		}
		if want := hex.EncodeToString(h.Sum(nil)); res.Bytes != chunkedSize || res.SHA256 != want {
			t.Fatalf("upstream got %d bytes sha256 %s, curl sent %d bytes sha256 %s", res.Bytes, res.SHA256, chunkedSize, want)
		}
	})

	after, agentRSS := vmHWM(t, e.pid()), vmHWM(t, agent.pid())
	t.Logf("edge peak RSS: %d MiB before, %d MiB after; agent peak RSS %d MiB", before>>20, after>>20, agentRSS>>20)
	for name, rss := range map[string]int64{"edge": after, "agent": agentRSS} {
		if rss > maxRSS {
			t.Errorf("%s peak RSS = %d MiB after moving %d MiB each way, want under %d MiB: bodies must stream, not buffer",
				name, rss>>20, size>>20, maxRSS>>20)
		}
	}
}

// transferContext bounds a transfer of n bytes generously: at least a
// minute, plus a minute per GiB. It is a failure ceiling, not a speed test.
func transferContext(t *testing.T, n int64) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), time.Minute+time.Duration(n>>30)*time.Minute)
}
