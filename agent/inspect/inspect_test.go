package inspect_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/agent/inspect"
	"github.com/pico-edge/pico/edge/edgetest"
	"github.com/pico-edge/pico/quicutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// setup runs an edge, an agent with an inspector of cfg, and endpoint
// "web" served by h. The inspector closes after the agent.
func setup(t testing.TB, cfg inspect.Config, h http.Handler) (*edgetest.Node, *inspect.Inspector, string) {
	t.Helper()
	in, err := inspect.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() }) // runs after the agent's cleanup, registered below
	up := edgetest.Upstream(t, h)
	n := edgetest.NewNode(t)
	a := n.NewAgent(t, func(c *agent.Config) { c.Inspector = in })
	if err := a.ServeUpstream(t.Context(), "web", quicutil.KindHTTP, up); err != nil {
		t.Fatal(err)
	}
	return n, in, up
}

// waitExchanges waits until the inspector keeps n complete exchanges.
func waitExchanges(t testing.TB, in *inspect.Inspector, n int) []*inspect.Exchange {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		ch := in.Changed()
		got := in.Exchanges(func(e *inspect.Exchange) bool { return e.State != "open" })
		if len(got) >= n {
			return got
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("the inspector keeps %d exchanges, want %d: %+v", len(got), n, got)
		}
	}
}

func do(t testing.TB, c *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// Requests on one keep-alive connection through the edge are captured as
// one exchange each, with method, URL, headers, bodies, status, client
// address and trailers; redacted headers are masked.
func TestCaptureKeepAlive(t *testing.T) {
	n, in, _ := setup(t, inspect.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Set-Cookie", "session=secret")
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "got %s %s %q", r.Method, r.URL.Path, b)
		w.Header().Set("X-Sum", "42")
	}))
	c := edgetest.Client(t)
	for i := range 3 {
		req := n.Request(t, "POST", "web", fmt.Sprintf("/k/%d?q=%d", i, i), strings.NewReader(fmt.Sprintf(`{"n":%d}`, i)))
		req.Header.Set("Authorization", "Bearer top-secret")
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		if code, _ := do(t, c, req); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	got := waitExchanges(t, in, 3)
	for i, e := range got {
		if e.Request == nil || e.Response == nil {
			t.Fatalf("exchange %d: %+v", i, e)
		}
		if want := fmt.Sprintf("/k/%d?q=%d", i, i); e.Request.URL != want || e.Request.Method != "POST" {
			t.Errorf("exchange %d: %s %s, want POST %s", i, e.Request.Method, e.Request.URL, want)
		}
		if string(e.Request.Body) != fmt.Sprintf(`{"n":%d}`, i) || e.Request.BodySize != 7 {
			t.Errorf("exchange %d: request body %q (%d)", i, e.Request.Body, e.Request.BodySize)
		}
		if want := fmt.Sprintf(`got POST /k/%d "{\"n\":%d}"`, i, i); string(e.Response.Body) != want || e.Response.Status != 200 {
			t.Errorf("exchange %d: response %d %q, want 200 %q", i, e.Response.Status, e.Response.Body, want)
		}
		if got := e.Request.Header.Get("Authorization"); got != inspect.Redacted {
			t.Errorf("Authorization kept as %q, want %q", got, inspect.Redacted)
		}
		if got := e.Response.Header.Get("Set-Cookie"); got != inspect.Redacted {
			t.Errorf("Set-Cookie kept as %q, want %q", got, inspect.Redacted)
		}
		if got := e.Response.Trailer.Get("X-Sum"); got != "42" {
			t.Errorf("trailer X-Sum = %q, want 42", got)
		}
		// The edge appends the address it saw to X-Forwarded-For.
		if e.ClientAddr != "127.0.0.1" {
			t.Errorf("client address %q, want 127.0.0.1 (the edge's last X-Forwarded-For entry)", e.ClientAddr)
		}
		if e.Duration <= 0 || e.Endpoint != "web" || e.State != "complete" {
			t.Errorf("exchange %d: duration %v endpoint %q state %q", i, e.Duration, e.Endpoint, e.State)
		}
	}
}

// Bodies over BodyBytes keep their first bytes and are marked; binary
// bodies render as a hex dump; the API shows them.
func TestBodiesTruncatedAndHex(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), 1000) // 10000 bytes
	bin := []byte{0, 1, 2, 0xff, 0xfe, 'A', '\n'}
	n, in, _ := setup(t, inspect.Config{BodyBytes: 1000}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/bin" {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(bin)
			return
		}
		w.Write(big)
	}))
	c := edgetest.Client(t)
	do(t, c, n.Request(t, "PUT", "web", "/big", bytes.NewReader(big)))
	do(t, c, n.Request(t, "GET", "web", "/bin", nil))
	got := waitExchanges(t, in, 2)
	e := got[0]
	if len(e.Request.Body) != 1000 || e.Request.BodySize != 10000 || !e.Request.BodyTruncated {
		t.Errorf("request body: kept %d of %d, truncated %v; want 1000 of 10000, true", len(e.Request.Body), e.Request.BodySize, e.Request.BodyTruncated)
	}
	if len(e.Response.Body) != 1000 || e.Response.BodySize != 10000 || !e.Response.BodyTruncated {
		t.Errorf("response body: kept %d of %d, truncated %v", len(e.Response.Body), e.Response.BodySize, e.Response.BodyTruncated)
	}
	// A replay of a body kept in part needs an edit.
	if _, err := in.Replay(t.Context(), e.ID, nil); err == nil || !strings.Contains(err.Error(), "captured in part (1000 of 10000 bytes)") {
		t.Errorf("replay of a truncated body: %v, want an edit error", err)
	}

	srv := httptest.NewServer(in.Handler())
	defer srv.Close()
	var d struct {
		ResponseBody struct {
			Text   *string `json:"text"`
			Hex    string  `json:"hex"`
			Binary bool    `json:"binary"`
		} `json:"response_body"`
	}
	getJSON(t, srv.URL+fmt.Sprintf("/api/requests/%d", got[1].ID), 200, &d)
	if !d.ResponseBody.Binary || d.ResponseBody.Text != nil {
		t.Errorf("binary body: binary %v text %v, want binary and no text", d.ResponseBody.Binary, d.ResponseBody.Text)
	}
	if want := "00000000  00 01 02 ff fe 41 0a                              |.....A.|\n"; d.ResponseBody.Hex != want {
		t.Errorf("hex dump:\n%q\nwant\n%q", d.ResponseBody.Hex, want)
	}
}

func getJSON(t testing.TB, url string, code int, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != code {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s, want %d", url, resp.StatusCode, b, code)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// The API: list with filters, detail, replay (with and without an edit) to
// a recording upstream, precise errors, clear.
func TestAPIReplay(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	n, in, _ := setup(t, inspect.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s %s %s replay=%s auth=%q", r.Method, r.URL.RequestURI(), b, r.Header.Get(inspect.ReplayHeader), r.Header.Get("Authorization")))
		mu.Unlock()
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "ok")
	}))
	c := edgetest.Client(t)
	req := n.Request(t, "POST", "web", "/orders?x=1", strings.NewReader("a=1&b=2"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer s")
	do(t, c, req)
	do(t, c, n.Request(t, "GET", "web", "/missing", nil))
	waitExchanges(t, in, 2)
	srv := httptest.NewServer(in.Handler())
	defer srv.Close()

	var list inspect.List
	getJSON(t, srv.URL+"/api/requests?status=4xx", 200, &list)
	if len(list.Requests) != 1 || list.Requests[0].URL != "/missing" {
		t.Fatalf("status=4xx: %+v", list.Requests)
	}
	getJSON(t, srv.URL+"/api/requests?path=orders&method=post&header=Content-Type:+form", 200, &list)
	if len(list.Requests) != 1 || list.Requests[0].Method != "POST" {
		t.Fatalf("path, method, header filters: %+v", list.Requests)
	}
	id := list.Requests[0].ID
	var d struct {
		RequestBody struct{ Pretty string } `json:"request_body"`
		Curl        string                  `json:"curl"`
	}
	getJSON(t, fmt.Sprintf("%s/api/requests/%d", srv.URL, id), 200, &d)
	if d.RequestBody.Pretty != "a = 1\nb = 2\n" {
		t.Errorf("form pretty: %q", d.RequestBody.Pretty)
	}
	if !strings.Contains(d.Curl, "--data-raw 'a=1&b=2'") || strings.Contains(d.Curl, "Bearer") || !strings.Contains(d.Curl, "redacted, not shown: Authorization") {
		t.Errorf("curl: %s", d.Curl)
	}

	post := func(path, body string) (int, string) {
		t.Helper()
		resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post(fmt.Sprintf("/api/requests/%d/replay", id), ""); code != 200 || !strings.Contains(body, `"replay_of": `+fmt.Sprint(id)) {
		t.Fatalf("replay: %d %s", code, body)
	}
	if code, body := post(fmt.Sprintf("/api/requests/%d/replay", id), `{"method":"PUT","path":"/edited","header":{"Authorization":["Bearer new"]},"body":"z=9"}`); code != 200 {
		t.Fatalf("edited replay: %d %s", code, body)
	}
	mu.Lock()
	want := []string{
		`POST /orders?x=1 a=1&b=2 replay= auth="Bearer s"`,
		`GET /missing  replay= auth=""`,
		fmt.Sprintf(`POST /orders?x=1 a=1&b=2 replay=%d auth=""`, id),
		fmt.Sprintf(`PUT /edited z=9 replay=%d auth="Bearer new"`, id),
	}
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Errorf("the upstream saw:\n%s\nwant:\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
	mu.Unlock()

	for name, tc := range map[string]struct {
		path, body string
		code       int
		msg        string
	}{
		"unknown id":   {"/api/requests/999/replay", "", 404, "no exchange 999"},
		"bad id":       {"/api/requests/x/replay", "", 400, `exchange ID \"x\" is not a positive integer`},
		"bad method":   {fmt.Sprintf("/api/requests/%d/replay", id), `{"method":"G T"}`, 400, `method \"G T\" is not a token`},
		"bad path":     {fmt.Sprintf("/api/requests/%d/replay", id), `{"path":"x"}`, 400, `does not start with /`},
		"bad header":   {fmt.Sprintf("/api/requests/%d/replay", id), `{"header":{"X":["a\nb"]}}`, 400, "CR, LF or NUL"},
		"unknown key":  {fmt.Sprintf("/api/requests/%d/replay", id), `{"bodyy":"x"}`, 400, `unknown field \"bodyy\"`},
		"not json":     {fmt.Sprintf("/api/requests/%d/replay", id), `{`, 400, "bad edit"},
		"bad filter":   {"/api/requests?status=77", "", 400, "want a code"},
		"unknown path": {"/api/nope", "", 404, "no such API path"},
	} {
		t.Run(name, func(t *testing.T) {
			var code int
			var body string
			if strings.Contains(tc.path, "/replay") {
				code, body = post(tc.path, tc.body)
			} else {
				resp, err := http.Get(srv.URL + tc.path)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				code, body = resp.StatusCode, string(b)
			}
			if code != tc.code || !strings.Contains(body, tc.msg) {
				t.Errorf("got %d %s, want %d with %q", code, body, tc.code, tc.msg)
			}
		})
	}

	r, _ := http.NewRequest("DELETE", srv.URL+"/api/requests", nil)
	if resp, err := http.DefaultClient.Do(r); err != nil || resp.StatusCode != 204 {
		t.Fatalf("DELETE: %v %v", resp, err)
	}
	if st := in.Stats(); st.Exchanges != 0 {
		t.Errorf("after DELETE %d exchanges", st.Exchanges)
	}
}

// A replay to an upstream that is down answers 502 with the reason, and
// the failed replay is kept with its error. A request while the upstream
// is down is kept as refused.
func TestReplayUpstreamDown(t *testing.T) {
	in, err := inspect.New(inspect.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "up") })}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	n := edgetest.NewNode(t)
	a := n.NewAgent(t, func(c *agent.Config) { c.Inspector = in })
	if err := a.ServeUpstream(t.Context(), "web", quicutil.KindHTTP, ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	c := edgetest.Client(t)
	do(t, c, n.Request(t, "GET", "web", "/x", nil))
	id := waitExchanges(t, in, 1)[0].ID
	c.CloseIdleConnections()
	srv.Close()
	<-served

	h := httptest.NewServer(in.Handler())
	defer h.Close()
	resp, err := http.Post(fmt.Sprintf("%s/api/requests/%d/replay", h.URL, id), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(string(b), "connection refused") || !strings.Contains(string(b), ln.Addr().String()) {
		t.Fatalf("replay to a down upstream: %d %s, want 502 naming the upstream and connection refused", resp.StatusCode, b)
	}
	var ue *inspect.UpstreamError
	if _, err := in.Replay(t.Context(), id, nil); !errors.As(err, &ue) {
		t.Fatalf("Replay: %v, want an *UpstreamError", err)
	}
	kept := in.Exchanges(func(e *inspect.Exchange) bool { return e.ReplayOf == id })
	if len(kept) != 2 || !strings.Contains(kept[0].Error, "connection refused") || kept[0].State != "error" {
		t.Fatalf("failed replays kept: %+v", kept)
	}
	// Through the edge now: the agent refuses the stream, the inspector says why.
	do(t, c, n.Request(t, "GET", "web", "/y", nil))
	refused := in.Exchanges(func(e *inspect.Exchange) bool { return e.Request == nil })
	if len(refused) == 0 || !strings.Contains(refused[0].Error, "could not reach upstream") {
		t.Fatalf("refused stream: %+v", refused)
	}
}

// Many requests with bodies larger than kept: the exchanges kept and the
// memory stay within the limits, and what was dropped is counted.
func TestMemoryWithinBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 600 requests of 256 KiB")
	}
	const budget = 16 << 20
	payload := bytes.Repeat([]byte("x"), 256<<10)
	n, in, _ := setup(t, inspect.Config{MaxBytes: budget, MaxExchanges: 100_000, BodyBytes: 64 << 10},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Write(payload)
		}))
	c := edgetest.Client(t)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	const requests, workers = 600 / raceScale, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < requests; i += workers {
				resp, err := c.Do(n.Request(t, "POST", "web", fmt.Sprintf("/m/%d", i), bytes.NewReader(payload)))
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Wait for the parsers to catch up: nothing changes for 200ms.
	deadline := time.Now().Add(20 * time.Second)
	var st inspect.Stats
	for time.Now().Before(deadline) {
		st = in.Stats()
		select {
		case <-in.Changed():
			continue
		case <-time.After(200 * time.Millisecond):
		}
		break
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	t.Logf("%d requests of 256 KiB each way: %d exchanges kept in %d bytes (budget %d), %d evicted, %d truncated, %d stream directions dropped; heap %d MiB before, %d MiB after",
		requests, st.Exchanges, st.Bytes, budget, st.Evicted, st.Truncated, st.Dropped, before.HeapAlloc>>20, after.HeapAlloc>>20)
	if st.Bytes > budget {
		t.Errorf("exchanges kept use %d bytes, over the budget of %d", st.Bytes, budget)
	}
	if st.Evicted == 0 {
		t.Errorf("nothing evicted: the budget did not bite")
	}
	var total int64
	for _, e := range in.Exchanges(nil) {
		for _, m := range []*inspect.Message{e.Request, e.Response} {
			if m != nil {
				total += int64(len(m.Body))
			}
		}
	}
	if total > budget {
		t.Errorf("bodies kept: %d bytes, over the budget", total)
	}
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 3*budget+8<<20 {
		t.Errorf("heap grew by %d MiB with a %d MiB budget", grew>>20, budget>>20)
	}
}

// Close is safe twice, and a closed inspector captures nothing new.
func TestCloseTwice(t *testing.T) {
	in, err := inspect.New(inspect.Config{})
	if err != nil {
		t.Fatal(err)
	}
	in.Close()
	in.Close()
	if s := in.Stream(inspect.StreamInfo{Endpoint: "x"}); s != nil {
		t.Fatal("Stream after Close is not nil")
	}
	var nilIn *inspect.Inspector
	nilIn.Close()
	if _, err := in.Replay(context.Background(), 1, nil); !errors.Is(err, inspect.ErrNotFound) {
		t.Fatalf("Replay of nothing: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg inspect.Config
		msg string
	}{
		"small budget": {inspect.Config{MaxBytes: 1000}, "below 1 MiB"},
		"big bodies":   {inspect.Config{MaxBytes: 1 << 20, BodyBytes: 1 << 20}, "over a quarter"},
		"bad redact":   {inspect.Config{Redact: []string{"X Y"}}, `"X Y" is not a header name`},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := inspect.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("got %v, want %q", err, tc.msg)
			}
		})
	}
}

// An h2c upstream: the edge speaks HTTP/2 to the agent, and the inspector
// parses the frames: several requests on the connection, bodies,
// trailers, redaction; a replay goes to the upstream over HTTP/2.
func TestCaptureHTTP2(t *testing.T) {
	in, err := inspect.New(inspect.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	var mu sync.Mutex
	var seen []string
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s %s %s %s replay=%s", r.Proto, r.Method, r.URL.RequestURI(), b, r.Header.Get(inspect.ReplayHeader)))
		mu.Unlock()
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Set-Cookie", "s=1")
		fmt.Fprintf(w, "h2 %s", b)
		w.Header().Set("Grpc-Status", "0")
	}))
	up.Config.Protocols = new(http.Protocols)
	up.Config.Protocols.SetUnencryptedHTTP2(true)
	up.Start()
	t.Cleanup(up.Close)
	n := edgetest.NewNode(t)
	a := n.NewAgent(t, func(c *agent.Config) { c.Inspector = in })
	if err := a.ServeHTTPUpstream(t.Context(), "h2", agent.Upstream{Addr: strings.TrimPrefix(up.URL, "http://"), HTTP2: true}); err != nil {
		t.Fatal(err)
	}
	c := edgetest.Client(t)
	for i := range 3 {
		req := n.Request(t, "POST", "h2", fmt.Sprintf("/g/%d", i), strings.NewReader(fmt.Sprintf("body-%d", i)))
		req.Header.Set("Authorization", "Bearer x")
		if code, body := do(t, c, req); code != 200 || body != fmt.Sprintf("h2 body-%d", i) {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	got := waitExchanges(t, in, 3)
	for i, e := range got {
		if e.Request == nil || e.Response == nil || e.Request.Proto != "HTTP/2.0" {
			t.Fatalf("exchange %d: %+v", i, e)
		}
		if e.Request.Method != "POST" || e.Request.URL != fmt.Sprintf("/g/%d", i) || string(e.Request.Body) != fmt.Sprintf("body-%d", i) {
			t.Errorf("exchange %d request: %s %s %q", i, e.Request.Method, e.Request.URL, e.Request.Body)
		}
		if e.Response.Status != 200 || string(e.Response.Body) != fmt.Sprintf("h2 body-%d", i) || e.Response.Trailer.Get("Grpc-Status") != "0" {
			t.Errorf("exchange %d response: %d %q trailer %v", i, e.Response.Status, e.Response.Body, e.Response.Trailer)
		}
		if e.Request.Header.Get("Authorization") != inspect.Redacted || e.Response.Header.Get("Set-Cookie") != inspect.Redacted {
			t.Errorf("exchange %d: not redacted: %v %v", i, e.Request.Header, e.Response.Header)
		}
		if e.State != "complete" || e.ClientAddr != "127.0.0.1" {
			t.Errorf("exchange %d: state %q client %q", i, e.State, e.ClientAddr)
		}
	}
	r, err := in.Replay(t.Context(), got[1].ID, nil)
	if err != nil || r.Response == nil || string(r.Response.Body) != "h2 body-1" || r.Response.Proto != "HTTP/2.0" {
		t.Fatalf("replay: %+v %v", r, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if last := seen[len(seen)-1]; last != fmt.Sprintf("HTTP/2.0 POST /g/1 body-1 replay=%d", got[1].ID) {
		t.Errorf("the upstream saw the replay as %q", last)
	}
}

// Through a real edge: a WebSocket exchange keeps its handshake and counts
// the messages each way; an event stream counts its events.
func TestCaptureWebSocketAndSSE(t *testing.T) {
	n, in, _ := setup(t, inspect.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/events" {
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 3 {
				fmt.Fprintf(w, "data: %d\n\n", i)
				w.(http.Flusher).Flush()
			}
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, b); err != nil {
				return
			}
		}
	}))
	c := edgetest.Client(t)
	if code, body := do(t, c, n.Request(t, "GET", "web", "/events", nil)); code != 200 || strings.Count(body, "data:") != 3 {
		t.Fatalf("events: %d %q", code, body)
	}
	ctx := t.Context()
	ws, _, err := websocket.Dial(ctx, strings.Replace(n.ProxyURL, "http", "ws", 1)+"/ws", &websocket.DialOptions{
		HTTPClient: c, HTTPHeader: http.Header{"X-Pico-Endpoint": {"web"}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := ws.Write(ctx, websocket.MessageText, fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ws.Read(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")
	got := waitExchanges(t, in, 2)
	sse, wsx := got[0], got[1]
	if sse.Events != 3 || sse.State != "complete" {
		t.Errorf("event stream: %d events, state %s; want 3, complete", sse.Events, sse.State)
	}
	// 4 messages each way, and the close frames are control frames, not messages.
	if wsx.Upgrade != "websocket" || wsx.Response.Status != 101 || wsx.MessagesIn != 4 || wsx.MessagesOut != 4 {
		t.Errorf("websocket: upgrade %q status %d messages %d in, %d out; want websocket 101 4 4 (%+v)",
			wsx.Upgrade, wsx.Response.Status, wsx.MessagesIn, wsx.MessagesOut, wsx)
	}
}

// Without a token the handler answers loopback names only (DNS
// rebinding) and refuses cross-origin writes; with one it asks for it, as
// a bearer token or the cookie /?token= sets.
func TestHandlerGuard(t *testing.T) {
	in, err := inspect.New(inspect.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	const token = "0123456789abcdef0123"
	open := httptest.NewServer(in.Handler())
	defer open.Close()
	guarded := httptest.NewServer(in.HandlerWithToken(token))
	defer guarded.Close()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for name, tc := range map[string]struct {
		srv                *httptest.Server
		method, path, host string
		header             http.Header
		code               int
		msg                string
	}{
		"loopback":             {open, "GET", "/api/requests", "", nil, 200, ""},
		"rebound name":         {open, "GET", "/api/requests", "evil.example:4040", nil, 403, "evil.example:4040"},
		"localhost":            {open, "GET", "/", "localhost:4040", nil, 200, ""},
		"cross-origin write":   {open, "DELETE", "/api/requests", "", http.Header{"Origin": {"http://evil.example"}}, 403, "cross-origin"},
		"no token":             {guarded, "GET", "/api/requests", "", nil, 401, "needs its token"},
		"wrong token":          {guarded, "GET", "/api/requests", "", http.Header{"Authorization": {"Bearer nope"}}, 401, "needs its token"},
		"bearer":               {guarded, "GET", "/api/requests", "any.example", http.Header{"Authorization": {"Bearer " + token}}, 200, ""},
		"cookie":               {guarded, "GET", "/api/requests", "", http.Header{"Cookie": {"pico_inspector=" + token}}, 200, ""},
		"token in the address": {guarded, "GET", "/?token=" + token, "", nil, 303, ""},
		"wrong in the address": {guarded, "GET", "/?token=x", "", nil, 401, "wrong token"},
	} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, tc.srv.URL+tc.path, nil)
			if tc.host != "" {
				req.Host = tc.host
			}
			for k, v := range tc.header {
				req.Header[k] = v
			}
			resp, err := noRedirect.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code && !(tc.code == 200 && resp.StatusCode == 204) || !strings.Contains(string(b), tc.msg) {
				t.Fatalf("got %d %s, want %d with %q", resp.StatusCode, b, tc.code, tc.msg)
			}
			if tc.code == 303 && !strings.Contains(resp.Header.Get("Set-Cookie"), "pico_inspector="+token) {
				t.Errorf("no cookie set: %v", resp.Header)
			}
		})
	}
}
