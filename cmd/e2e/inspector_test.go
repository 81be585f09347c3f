//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

var writeInspectorShot = flag.Bool("inspector-screenshot", false, "TestInspectorChromium writes its screenshot to docs/inspector.png")

// TestInspectorChromium drives the agent's inspector in headless Chromium
// over the DevTools protocol: the page is open before any request; a
// request made through a real edge appears without a reload; a path
// filter hides another; the detail shows the JSON body pretty-printed;
// Replay and Edit-and-replay reach a recording upstream, marked with
// X-Pico-Replay; and a screenshot of the page is taken (written to
// docs/inspector.png with -inspector-screenshot).
func TestInspectorChromium(t *testing.T) {
	e2e(t)
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s not found (install Debian's chromium package to run this test): %v", chromiumPath, err)
	}
	e := startEdge(t)
	type seen struct{ method, uri, body, replay string }
	var mu sync.Mutex
	var got []seen
	port := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, seen{r.Method, r.URL.RequestURI(), string(b), r.Header.Get("X-Pico-Replay")})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"ok":true,"path":%q}`, r.URL.Path)
	}))
	a := e.startAgent(t, "--admin-addr", "127.0.0.1:0", "http", "insp", "127.0.0.1:"+port)
	a.waitLineFor(t, 0, "the endpoint registered", startTimeout, contains("endpoint insp (http) is registered"))
	line := a.waitLineFor(t, 0, "the inspector's address", startTimeout, func(l string) bool { return strings.HasPrefix(l, "inspector on http://") })
	ui := strings.TrimPrefix(line, "inspector on ")
	e.waitRoute(t, "insp")

	page := openPage(t, ui)
	page.waitFor(t, "the empty list", `document.getElementById("none") && !document.getElementById("none").hidden`)

	hc := newClient(t, waitTimeout)
	post := func(path, body string) {
		t.Helper()
		req, err := http.NewRequest("POST", "http://"+e.proxy+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Pico-Endpoint", "insp")
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer not-for-the-page")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	post("/api/orders?id=7", `{"item":"tea","qty":2}`)
	page.waitFor(t, "the request's row, without a reload", `[...document.querySelectorAll("#rows tr")].some(r => r.textContent.includes("/api/orders?id=7"))`)
	if resp, body := e.request(t, hc, "GET", "insp", "/health", nil); resp.StatusCode != 200 {
		t.Fatalf("GET /health: %d %s", resp.StatusCode, body)
	}
	page.waitFor(t, "two rows", `document.querySelectorAll("#rows tr").length === 2`)

	page.eval(t, `(() => { const f = document.getElementById("f-path"); f.value = "orders"; f.dispatchEvent(new Event("input", {bubbles: true})); return true })()`)
	page.waitFor(t, "the filter keeping the orders row only", `document.querySelectorAll("#rows tr").length === 1 && document.querySelector("#rows tr").textContent.includes("/api/orders")`)

	page.eval(t, `(() => { document.querySelector("#rows tr").click(); return true })()`)
	page.waitFor(t, "the detail view", `document.getElementById("detail-title") && document.getElementById("detail-title").textContent === "POST /api/orders?id=7"`)
	body := page.evalString(t, `document.getElementById("request-body").textContent`)
	if body != "{\n  \"item\": \"tea\",\n  \"qty\": 2\n}" {
		t.Errorf("request body shown as %q, want it pretty-printed", body)
	}
	if txt := page.evalString(t, `document.getElementById("detail").textContent`); strings.Contains(txt, "not-for-the-page") || !strings.Contains(txt, "[redacted]") {
		t.Errorf("the detail shows the Authorization value, or no [redacted]: %.500s", txt)
	}
	if curl := page.evalString(t, `document.getElementById("curl").textContent`); !strings.Contains(curl, `--data-raw '{"item":"tea","qty":2}'`) {
		t.Errorf("curl command: %s", curl)
	}

	page.eval(t, `(() => { document.getElementById("replay").click(); return true })()`)
	page.waitFor(t, "the replay's result", `/replayed as #\d+: 200/.test(document.getElementById("replay-result").textContent)`)
	page.waitFor(t, "the replay in the list", `[...document.querySelectorAll("#rows tr")].some(r => r.textContent.includes("replay of #"))`)

	page.eval(t, `(() => { document.getElementById("edit-replay").click(); return true })()`)
	page.eval(t, `(() => {
		document.getElementById("edit-path").value = "/api/orders?id=8";
		document.getElementById("edit-body").value = '{"item":"coffee","qty":1}';
		document.getElementById("edit-send").click(); return true })()`)
	page.waitFor(t, "the edited replay's result", `/replayed as #\d+: 200/.test(document.getElementById("replay-result").textContent) && document.querySelectorAll("#rows tr").length === 3`)

	mu.Lock()
	want := []seen{
		{"POST", "/api/orders?id=7", `{"item":"tea","qty":2}`, ""},
		{"GET", "/health", "", ""},
		{"POST", "/api/orders?id=7", `{"item":"tea","qty":2}`, "1"},
		{"POST", "/api/orders?id=8", `{"item":"coffee","qty":1}`, "1"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("the upstream saw\n%v\nwant\n%v", got, want)
	}
	mu.Unlock()

	// Show the first exchange again for the picture.
	page.eval(t, `(() => { const f = document.getElementById("f-path"); f.value = ""; f.dispatchEvent(new Event("input", {bubbles: true})); return true })()`)
	page.waitFor(t, "all four rows", `document.querySelectorAll("#rows tr").length === 4`)
	page.eval(t, `(() => { document.querySelector('#rows tr[data-id="1"]').click(); return true })()`)
	page.waitFor(t, "the detail of #1", `document.getElementById("detail-title") && document.getElementById("detail-title").textContent === "POST /api/orders?id=7"`)
	shot := page.screenshot(t)
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot (%d bytes) is no PNG: %v", len(shot), err)
	}
	if sz := img.Bounds().Size(); sz != image.Pt(1280, 800) {
		t.Errorf("screenshot is %v, want 1280x800", sz)
	}
	if n := colours(img); n < 8 {
		t.Errorf("screenshot has %d colours: the page drew nothing", n)
	}
	if *writeInspectorShot {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "inspector.png"), shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote docs/inspector.png (%d bytes)", len(shot))
	}
}

// A cdpPage is a browser tab driven over the DevTools protocol.
type cdpPage struct {
	c    *websocket.Conn
	next int
}

// openPage starts headless Chromium with remote debugging on an ephemeral
// loopback port, opens url in a 1280x800 tab and returns it. Cleanup ends
// the browser as runChromium does.
func openPage(t testing.TB, url string) *cdpPage {
	t.Helper()
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*chromiumTimeout)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, chromiumPath,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
		"--disable-sync", "--disable-extensions", "--no-proxy-server", "--hide-scrollbars",
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
		"--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
		"--window-size=1280,800", "--user-data-dir="+filepath.Join(home, "profile"), "about:blank")
	cmd.Env = append(cleanEnv(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	pgid := cmd.Process.Pid
	wsURL := make(chan string, 1)
	var logMu sync.Mutex
	var log strings.Builder
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			log.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if u, ok := strings.CutPrefix(sc.Text(), "DevTools listening on "); ok {
				wsURL <- u
			}
		}
	}()
	t.Cleanup(func() {
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-read
		cmd.Wait()
		poll(t, waitTimeout, "chromium's processes to end", func() bool {
			left := chromiumProcs(pgid, home)
			for _, pid := range left {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			return len(left) == 0
		})
	})
	var browser string
	select {
	case browser = <-wsURL:
	case <-time.After(chromiumTimeout):
		logMu.Lock()
		defer logMu.Unlock()
		t.Fatalf("chromium printed no DevTools address in %s:\n%s", chromiumTimeout, log.String())
	}
	// http://127.0.0.1:PORT/json/new?URL opens a tab and names its socket.
	host := regexp.MustCompile(`^ws://([^/]+)/`).FindStringSubmatch(browser)
	if host == nil {
		t.Fatalf("DevTools address %q", browser)
	}
	req, _ := http.NewRequest("PUT", "http://"+host[1]+"/json/new?"+url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	var tab struct {
		WebSocketDebuggerURL string `json:"webSocketDebuggerUrl"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tab)
	resp.Body.Close()
	if err != nil || tab.WebSocketDebuggerURL == "" {
		t.Fatalf("open a tab: %v %+v", err, tab)
	}
	c, _, err := websocket.Dial(ctx, tab.WebSocketDebuggerURL, nil)
	if err != nil {
		t.Fatalf("DevTools socket: %v", err)
	}
	c.SetReadLimit(64 << 20)
	t.Cleanup(func() { c.CloseNow() })
	p := &cdpPage{c: c}
	p.call(t, "Emulation.setDeviceMetricsOverride", map[string]any{"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false})
	return p
}

// call sends one DevTools command and returns its result, skipping events.
func (p *cdpPage) call(t testing.TB, method string, params any) json.RawMessage {
	t.Helper()
	p.next++
	id := p.next
	msg, _ := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := p.c.Write(ctx, websocket.MessageText, msg); err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	for {
		_, b, err := p.c.Read(ctx)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		var r struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(b, &r) != nil || r.ID != id {
			continue
		}
		if r.Error != nil {
			t.Fatalf("%s: %s", method, r.Error.Message)
		}
		return r.Result
	}
}

// eval evaluates a JavaScript expression in the page and returns its
// value as JSON; an exception fails the test.
func (p *cdpPage) eval(t testing.TB, expr string) json.RawMessage {
	t.Helper()
	res := p.call(t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true})
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	if r.Exception != nil {
		t.Fatalf("evaluate %s: %s %s", expr, r.Exception.Text, r.Exception.Exception.Description)
	}
	return r.Result.Value
}

func (p *cdpPage) evalString(t testing.TB, expr string) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(p.eval(t, expr), &s); err != nil {
		t.Fatalf("evaluate %s: not a string: %v", expr, err)
	}
	return s
}

// waitFor evaluates cond in the page until it is true. The page's own
// polling is what changes it; this loop only looks.
func (p *cdpPage) waitFor(t testing.TB, what, cond string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		if string(p.eval(t, "!!("+cond+")")) == "true" {
			return
		}
		if time.Now().After(deadline) {
			dom := p.evalString(t, "document.body.innerText")
			t.Fatalf("timed out after %s waiting for %s; the page shows:\n%s", waitTimeout, what, dom)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// screenshot returns a PNG of the page.
func (p *cdpPage) screenshot(t testing.TB) []byte {
	t.Helper()
	var r struct {
		Data string `json:"data"`
	}
	if err := json.Unmarshal(p.call(t, "Page.captureScreenshot", map[string]any{"format": "png"}), &r); err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
