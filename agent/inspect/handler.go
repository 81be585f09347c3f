package inspect

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// uiHTML is the inspector's web page: one file with inline CSS and
// JavaScript, no build step, nothing loaded from elsewhere. It polls
// /api/requests every second (an unchanged list answers 304) and renders
// with textContent only, never as HTML.
//
//go:embed ui.html
var uiHTML []byte

// uiCSP lets the page run its own inline script and style (allowed by
// their hashes) and fetch from this origin; nothing else loads.
var uiCSP = "default-src 'none'; connect-src 'self'; img-src 'none'; script-src " + inlineHash(uiHTML, "script") +
	"; style-src " + inlineHash(uiHTML, "style") + "; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// inlineHash returns the CSP source ('sha256-...') of the first <tag>
// element's text in page, or 'none' when page has no such element.
func inlineHash(page []byte, tag string) string {
	_, rest, ok := strings.Cut(string(page), "<"+tag+">")
	body, _, closed := strings.Cut(rest, "</"+tag+">")
	if !ok || !closed {
		return "'none'"
	}
	sum := sha256.Sum256([]byte(body))
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// maxEditBytes bounds the JSON of an edit.
const maxEditBytes = 8 << 20

// Handler serves the web UI at / and the JSON API under /api/:
//
//	GET    /api/requests              the exchanges, newest first, without bodies; filters in the query
//	GET    /api/requests/{id}         one exchange with its bodies, rendered, and a curl command
//	POST   /api/requests/{id}/replay  replay it, with an optional Edit as the JSON body
//	DELETE /api/requests              drop every exchange
//
// It answers only requests from a loopback address naming a loopback host
// (no DNS rebinding), and refuses cross-origin writes: serve it on a
// loopback address, or use HandlerWithToken.
func (in *Inspector) Handler() http.Handler { return in.HandlerWithToken("") }

// tokenCookie holds the token in a browser that opened /?token=TOKEN.
const tokenCookie = "pico_inspector"

// HandlerWithToken is Handler for any address when token is not empty:
// every request must carry it, as "Authorization: Bearer TOKEN" or in the
// cookie that opening /?token=TOKEN sets (HttpOnly, SameSite=Strict); 401
// otherwise. Cross-origin writes are still refused.
func (in *Inspector) HandlerWithToken(token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", serveUI)
	mux.HandleFunc("GET /api/requests", in.serveList)
	mux.HandleFunc("DELETE /api/requests", func(w http.ResponseWriter, r *http.Request) {
		in.Clear()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /api/requests/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := parseID(w, r)
		if !ok {
			return
		}
		e := in.Exchange(id)
		if e == nil {
			writeError(w, http.StatusNotFound, fmt.Sprintf("no exchange %d (it may have been dropped: the inspector keeps the last %d)", id, in.cfg.MaxExchanges))
			return
		}
		writeJSON(w, http.StatusOK, detail(e))
	})
	mux.HandleFunc("POST /api/requests/{id}/replay", in.serveReplay)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such API path: "+r.Method+" "+r.URL.Path)
	})
	return guard(mux, token)
}

func serveUI(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	w.Write(uiHTML)
}

// guard refuses requests that do not come from this machine to a loopback
// name, and writes from another origin.
func guard(next http.Handler, token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case token != "":
			if q := r.URL.Query().Get("token"); q != "" && r.URL.Path == "/" && r.Method == http.MethodGet {
				if !sameToken(q, token) {
					writeError(w, http.StatusUnauthorized, "wrong token")
					return
				}
				http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
				http.Redirect(w, r, "/", http.StatusSeeOther) // the token leaves the address bar
				return
			}
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok {
				if c, err := r.Cookie(tokenCookie); err == nil {
					got = c.Value
				}
			}
			if !sameToken(got, token) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="pico-agent inspector"`)
				writeError(w, http.StatusUnauthorized, "the inspector needs its token: Authorization: Bearer TOKEN, or open /?token=TOKEN once in the browser")
				return
			}
		case !loopbackAddr(r.RemoteAddr):
			writeError(w, http.StatusForbidden, "the inspector answers only this machine (loopback)")
			return
		case !loopbackHost(r.Host):
			writeError(w, http.StatusForbidden, "the inspector answers only requests to localhost or a loopback address, not "+quote(r.Host))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if o := r.Header.Get("Origin"); o != "" {
				u, err := url.Parse(o)
				if err != nil || u.Host != r.Host {
					writeError(w, http.StatusForbidden, "cross-origin request refused (Origin "+quote(o)+")")
					return
				}
			}
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}

func sameToken(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func loopbackAddr(addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.Unmap().IsLoopback()
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

func parseID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, "exchange ID "+quote(r.PathValue("id"))+" is not a positive integer")
		return 0, false
	}
	return id, true
}

// Summary is an exchange in the list: no headers or bodies.
type Summary struct {
	ID           uint64        `json:"id"`
	Time         time.Time     `json:"time"`
	Duration     time.Duration `json:"duration"`
	Endpoint     string        `json:"endpoint"`
	ClientAddr   string        `json:"client_addr,omitempty"`
	Method       string        `json:"method,omitempty"`
	URL          string        `json:"url,omitempty"`
	Status       int           `json:"status,omitempty"`
	State        string        `json:"state"`
	Error        string        `json:"error,omitempty"`
	Truncated    bool          `json:"truncated,omitempty"`
	ReplayOf     uint64        `json:"replay_of,omitempty"`
	Upgrade      string        `json:"upgrade,omitempty"`
	Events       int64         `json:"events,omitempty"`
	RequestSize  int64         `json:"request_size"`
	ResponseSize int64         `json:"response_size"`
}

func summary(e *Exchange) Summary {
	s := Summary{ID: e.ID, Time: e.Time, Duration: e.Duration, Endpoint: e.Endpoint, ClientAddr: e.ClientAddr,
		State: e.State, Error: e.Error, Truncated: e.Truncated, ReplayOf: e.ReplayOf, Upgrade: e.Upgrade, Events: e.Events}
	if e.State == "open" {
		s.Duration = time.Since(e.Time)
	}
	if m := e.Request; m != nil {
		s.Method, s.URL, s.RequestSize = m.Method, m.URL, m.BodySize
	}
	if m := e.Response; m != nil {
		s.Status, s.ResponseSize = m.Status, m.BodySize
	}
	return s
}

// A Filter selects exchanges; its zero value selects all. The query
// parameters of GET /api/requests set it.
type Filter struct {
	Path        string        // ?path=: a substring of the path
	Method      string        // ?method=: the method, any case
	Status      string        // ?status=: 404, 4xx, or "error" (no response)
	MinDuration time.Duration // ?min_duration=: 250ms
	Header      string        // ?header=: "Name" (present) or "Name: substring", in the request or the response
	Endpoint    string        // ?endpoint=
}

// ParseFilter reads a Filter from a query, with a precise error for a bad
// value.
func ParseFilter(q url.Values) (Filter, error) {
	f := Filter{Path: q.Get("path"), Method: strings.TrimSpace(q.Get("method")), Status: strings.TrimSpace(q.Get("status")),
		Header: strings.TrimSpace(q.Get("header")), Endpoint: q.Get("endpoint")}
	if s := q.Get("min_duration"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			if ms, err2 := strconv.ParseFloat(s, 64); err2 == nil {
				d = time.Duration(ms * float64(time.Millisecond))
			} else {
				return f, fmt.Errorf("min_duration %q: want a duration such as 250ms", s)
			}
		}
		f.MinDuration = d
	}
	switch st := strings.ToLower(f.Status); {
	case st == "", st == "error":
	case len(st) == 3 && st[1:] == "xx" && '1' <= st[0] && st[0] <= '5':
	default:
		if n, err := strconv.Atoi(st); err != nil || n < 100 || n > 999 {
			return f, fmt.Errorf("status %q: want a code (404), a class (4xx) or error", f.Status)
		}
	}
	if f.Header != "" {
		name, _, _ := strings.Cut(f.Header, ":")
		if !validHeaderName(strings.TrimSpace(name)) {
			return f, fmt.Errorf("header %q: want Name or Name: value", f.Header)
		}
	}
	return f, nil
}

// Match reports whether e passes f.
func (f Filter) Match(e *Exchange) bool {
	if f.Endpoint != "" && e.Endpoint != f.Endpoint {
		return false
	}
	if f.Path != "" && !strings.Contains(e.Request.Path(), f.Path) {
		return false
	}
	if f.Method != "" && (e.Request == nil || !strings.EqualFold(e.Request.Method, f.Method)) {
		return false
	}
	if f.Status != "" {
		st := strings.ToLower(f.Status)
		switch {
		case st == "error":
			if e.Response != nil {
				return false
			}
		case e.Response == nil:
			return false
		case strings.HasSuffix(st, "xx"):
			if strconv.Itoa(e.Response.Status)[0] != st[0] {
				return false
			}
		case strconv.Itoa(e.Response.Status) != st:
			return false
		}
	}
	if f.MinDuration > 0 && e.Duration < f.MinDuration && e.State != "open" {
		return false
	}
	if f.Header != "" {
		name, val, hasVal := strings.Cut(f.Header, ":")
		name, val = http.CanonicalHeaderKey(strings.TrimSpace(name)), strings.ToLower(strings.TrimSpace(val))
		found := false
		for _, m := range []*Message{e.Request, e.Response} {
			if m == nil {
				continue
			}
			for _, v := range m.Header[name] {
				if !hasVal || strings.Contains(strings.ToLower(v), val) {
					found = true
				}
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// List is the answer of GET /api/requests.
type List struct {
	Stats    Stats     `json:"stats"`
	Requests []Summary `json:"requests"`
}

func (in *Inspector) serveList(w http.ResponseWriter, r *http.Request) {
	f, err := ParseFilter(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	st := in.Stats()
	etag := fmt.Sprintf(`"%d-%x"`, st.Version, sha256.Sum256([]byte(r.URL.RawQuery)))
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "no-cache")
	if r.Header.Get("If-None-Match") == etag && !hasOpen(in) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	list := in.Exchanges(f.Match)
	out := List{Stats: st, Requests: make([]Summary, 0, len(list))}
	for _, e := range slices.Backward(list) {
		out.Requests = append(out.Requests, summary(e))
	}
	writeJSON(w, http.StatusOK, out)
}

// hasOpen reports whether an exchange is open: its duration changes.
func hasOpen(in *Inspector) bool {
	return len(in.Exchanges(func(e *Exchange) bool { return e.State == "open" })) > 0
}

// Detail is the answer of GET /api/requests/{id}: the exchange, each body
// rendered, and the request as a curl command.
type Detail struct {
	*Exchange
	RequestBody  Rendered `json:"request_body"`
	ResponseBody Rendered `json:"response_body"`
	Curl         string   `json:"curl,omitempty"`
}

// Rendered shows a body: as text when it is text (Pretty when it is JSON
// or a form, indented), and always as a hex dump.
type Rendered struct {
	Text   *string `json:"text,omitempty"`
	Pretty string  `json:"pretty,omitempty"`
	Hex    string  `json:"hex,omitempty"`
	Binary bool    `json:"binary,omitempty"`
}

func detail(e *Exchange) Detail {
	d := Detail{Exchange: e}
	if e.Request != nil {
		d.RequestBody = render(e.Request)
		d.Curl = curl(e)
	}
	if e.Response != nil {
		d.ResponseBody = render(e.Response)
	}
	return d
}

func render(m *Message) Rendered {
	if len(m.Body) == 0 {
		return Rendered{}
	}
	r := Rendered{Hex: hexDump(m.Body)}
	if !isText(m.Body, m.BodyTruncated) {
		r.Binary = true
		return r
	}
	s := string(m.Body)
	r.Text = &s
	ct, _, _ := mime.ParseMediaType(m.Header.Get("Content-Type"))
	switch {
	case !m.BodyTruncated && (ct == "application/json" || strings.HasSuffix(ct, "+json") || json.Valid(m.Body)):
		var b bytes.Buffer
		if json.Indent(&b, m.Body, "", "  ") == nil {
			r.Pretty = b.String()
		}
	case !m.BodyTruncated && ct == "application/x-www-form-urlencoded":
		if q, err := url.ParseQuery(s); err == nil {
			var b strings.Builder
			for _, k := range slices.Sorted(func(yield func(string) bool) {
				for k := range q {
					if !yield(k) {
						return
					}
				}
			}) {
				for _, v := range q[k] {
					fmt.Fprintf(&b, "%s = %s\n", k, v)
				}
			}
			r.Pretty = b.String()
		}
	}
	return r
}

// isText reports whether b is UTF-8 text: no control characters but tab,
// CR, LF and form feed. A prefix may end inside a character.
func isText(b []byte, prefix bool) bool {
	if prefix {
		for i := 0; i < utf8.UTFMax && len(b) > 0 && !utf8.Valid(b); i++ {
			b = b[:len(b)-1]
		}
	}
	if !utf8.Valid(b) {
		return false
	}
	for _, c := range b {
		if c < ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\f' || c == 0x7f {
			return false
		}
	}
	return true
}

// hexDump formats b as hexdump -C does.
func hexDump(b []byte) string {
	var s strings.Builder
	for off := 0; off < len(b); off += 16 {
		line := b[off:min(off+16, len(b))]
		fmt.Fprintf(&s, "%08x ", off)
		for i := range 16 {
			if i == 8 {
				s.WriteByte(' ')
			}
			if i < len(line) {
				fmt.Fprintf(&s, " %02x", line[i])
			} else {
				s.WriteString("   ")
			}
		}
		s.WriteString("  |")
		for _, c := range line {
			if c < ' ' || c > '~' {
				c = '.'
			}
			s.WriteByte(c)
		}
		s.WriteString("|\n")
	}
	return s.String()
}

// curl is the exchange's request as a curl command to the edge's URL
// (scheme from X-Forwarded-Proto). Redacted headers are left out.
func curl(e *Exchange) string {
	m := e.Request
	scheme := "http"
	if p := m.Header.Get("X-Forwarded-Proto"); p == "https" {
		scheme = "https"
	}
	var b strings.Builder
	b.WriteString("curl")
	if !(m.Method == http.MethodGet && len(m.Body) == 0 || m.Method == http.MethodPost && len(m.Body) > 0) {
		b.WriteString(" -X " + shellQuote(m.Method))
	}
	b.WriteString(" " + shellQuote(scheme+"://"+m.Host+m.URL))
	skip := map[string]bool{"Host": true, "Content-Length": true, "Connection": true, "Transfer-Encoding": true,
		"X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true, "Forwarded": true, "Accept-Encoding": true}
	var redacted []string
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range m.Header {
			if !yield(k) {
				return
			}
		}
	}) {
		if skip[k] {
			continue
		}
		for _, v := range m.Header[k] {
			if v == Redacted {
				redacted = append(redacted, k)
				continue
			}
			b.WriteString(" -H " + shellQuote(k+": "+v))
		}
	}
	switch {
	case len(m.Body) == 0:
	case isText(m.Body, false) && !m.BodyTruncated:
		b.WriteString(" --data-raw " + shellQuote(string(m.Body)))
	default:
		b.WriteString(" --data-binary @body.bin")
	}
	if len(redacted) > 0 {
		b.WriteString("  # redacted, not shown: " + strings.Join(slices.Compact(redacted), ", "))
	}
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func (in *Inspector) serveReplay(w http.ResponseWriter, r *http.Request) {
	id, ok := parseID(w, r)
	if !ok {
		return
	}
	var edit *Edit
	body, err := io.ReadAll(io.LimitReader(r.Body, maxEditBytes+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "read the edit: "+err.Error())
		return
	}
	if len(body) > maxEditBytes {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("edit over %d bytes", maxEditBytes))
		return
	}
	if len(bytes.TrimSpace(body)) > 0 {
		if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, "an edit is JSON: Content-Type: application/json")
			return
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		edit = new(Edit)
		if err := dec.Decode(edit); err != nil {
			writeError(w, http.StatusBadRequest, "bad edit: "+err.Error())
			return
		}
	}
	ex, err := in.Replay(r.Context(), id, edit)
	var ee *EditError
	var ue *UpstreamError
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, detail(ex))
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("no exchange %d", id))
	case errors.As(err, &ee):
		writeError(w, http.StatusBadRequest, ee.Msg)
	case errors.As(err, &ue):
		writeJSON(w, http.StatusBadGateway, struct {
			Error  string `json:"error"`
			Replay uint64 `json:"replay"`
		}{ue.Error(), ex.ID})
	default:
		writeError(w, http.StatusServiceUnavailable, err.Error())
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, struct {
		Error string `json:"error"`
	}{msg})
}
