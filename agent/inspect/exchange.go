package inspect

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// An Exchange is one request and its response, as captured. Kept
// exchanges are never modified: an update replaces one with a copy.
type Exchange struct {
	ID         uint64        `json:"id"`
	Time       time.Time     `json:"time"`     // when the request arrived at the agent
	Duration   time.Duration `json:"duration"` // until the response's last byte (ns); for an open exchange, until now
	Endpoint   string        `json:"endpoint"`
	ClientAddr string        `json:"client_addr,omitempty"` // from X-Forwarded-For or Forwarded, as the edge set them
	Upstream   string        `json:"upstream,omitempty"`
	Request    *Message      `json:"request,omitempty"` // nil when the request was not read (the upstream was refused)
	Response   *Message      `json:"response,omitempty"`
	// State is "complete", "open" (a WebSocket or event stream still
	// going) or "error".
	State string `json:"state"`
	Error string `json:"error,omitempty"`
	// Truncated is set when the capture fell behind the proxy and dropped
	// bytes: what follows the drop on the stream is not captured.
	Truncated bool `json:"truncated,omitempty"`
	// ReplayOf is the ID of the exchange this one replays; 0 for a
	// request that came through the edge.
	ReplayOf uint64 `json:"replay_of,omitempty"`
	// Upgrade is the protocol a 101 response switched to ("websocket"),
	// with the messages counted each way.
	Upgrade     string `json:"upgrade,omitempty"`
	MessagesIn  int64  `json:"messages_to_upstream,omitempty"`
	MessagesOut int64  `json:"messages_to_client,omitempty"`
	Events      int64  `json:"events,omitempty"` // server-sent events in a text/event-stream response
	size        int64
}

// A Message is the head and the first bytes of a request or a response.
type Message struct {
	Method  string      `json:"method,omitempty"` // requests
	URL     string      `json:"url,omitempty"`    // requests: the request target, as sent
	Host    string      `json:"host,omitempty"`   // requests
	Status  int         `json:"status,omitempty"` // responses
	Proto   string      `json:"proto"`
	Header  http.Header `json:"header"`
	Trailer http.Header `json:"trailer,omitempty"`
	// Body is the first Config.BodyBytes of the body; BodySize counts it
	// all (-1 when the body did not end).
	Body          []byte `json:"body,omitempty"`
	BodySize      int64  `json:"body_size"`
	BodyTruncated bool   `json:"body_truncated,omitempty"` // Body is a prefix
}

// Path is the request target's path, without the query.
func (m *Message) Path() string {
	if m == nil {
		return ""
	}
	p, _, _ := strings.Cut(m.URL, "?")
	return p
}

func (e *Exchange) memSize() int64 {
	n := int64(512)
	for _, m := range []*Message{e.Request, e.Response} {
		if m == nil {
			continue
		}
		n += int64(cap(m.Body)) + int64(len(m.URL)+len(m.Host)) + 128
		for _, h := range []http.Header{m.Header, m.Trailer} {
			for k, vs := range h {
				n += int64(len(k)) + 32
				for _, v := range vs {
					n += int64(len(v)) + 16
				}
			}
		}
	}
	return n + int64(len(e.Error)+len(e.ClientAddr)+len(e.Endpoint))
}

// clientFromHeader is the client's address as the edge recorded it: the
// last X-Forwarded-For entry (the edge appends the address it saw), else
// the last for= of Forwarded.
func clientFromHeader(h http.Header) string {
	if xff := h.Values("X-Forwarded-For"); len(xff) > 0 {
		last := xff[len(xff)-1]
		if i := strings.LastIndexByte(last, ','); i >= 0 {
			last = last[i+1:]
		}
		if s := strings.TrimSpace(last); s != "" {
			return s
		}
	}
	var addr string
	for _, v := range h.Values("Forwarded") {
		for elem := range strings.SplitSeq(v, ",") {
			for pair := range strings.SplitSeq(elem, ";") {
				k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if ok && strings.EqualFold(k, "for") {
					if u, err := strconv.Unquote(val); err == nil {
						val = u
					}
					addr = val
				}
			}
		}
	}
	return addr
}

// redactHeader returns a copy of h with the redacted headers' values
// masked.
func (in *Inspector) redactHeader(h http.Header) http.Header {
	if h == nil {
		return nil
	}
	out := make(http.Header, len(h))
	for k, vs := range h {
		vs = append([]string(nil), vs...)
		if in.redact[k] {
			for i := range vs {
				vs[i] = Redacted
			}
		}
		out[k] = vs
	}
	return out
}

func quote(s string) string { return strconv.Quote(s) }

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
