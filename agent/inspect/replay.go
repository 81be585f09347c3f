package inspect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ErrNotFound is returned for an exchange ID that is not kept.
var ErrNotFound = errors.New("inspect: no such exchange")

// ErrClosed is returned by Replay after Close.
var ErrClosed = errors.New("inspect: inspector closed")

// ReplayHeader marks a replayed request; its value is the ID of the
// exchange replayed.
const ReplayHeader = "X-Pico-Replay"

// An Edit changes a request before it is replayed. Nil fields keep the
// original's.
type Edit struct {
	Method *string     `json:"method,omitempty"`
	Path   *string     `json:"path,omitempty"` // the request target: /path?query
	Header http.Header `json:"header,omitempty"`
	Body   *string     `json:"body,omitempty"` // the whole body, as text
}

// An EditError says what is wrong with an Edit.
type EditError struct{ Msg string }

func (e *EditError) Error() string { return "inspect: bad edit: " + e.Msg }

// An UpstreamError is a replay that did not get a response from the
// upstream.
type UpstreamError struct {
	Addr string
	Err  error
}

func (e *UpstreamError) Error() string {
	return fmt.Sprintf("upstream %s: %v", e.Addr, e.Err)
}

func (e *UpstreamError) Unwrap() error { return e.Err }

type replayClients struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func newReplayClients() *replayClients {
	ctx, cancel := context.WithCancel(context.Background())
	return &replayClients{ctx: ctx, cancel: cancel}
}

func (c *replayClients) close() { c.cancel() }

// Replay sends exchange id's request again, changed by edit (may be nil),
// straight to its endpoint's upstream, and keeps the result as a new
// exchange marked as a replay, which it returns. A body that was not
// captured whole cannot be replayed unedited. Redacted headers are not
// sent; an edit may set them. The error is ErrNotFound, an *EditError, an
// *UpstreamError (the exchange kept says it too) or ErrClosed.
func (in *Inspector) Replay(ctx context.Context, id uint64, edit *Edit) (*Exchange, error) {
	orig := in.Exchange(id)
	if orig == nil {
		return nil, ErrNotFound
	}
	if orig.Request == nil {
		return nil, &EditError{"exchange " + strconv.FormatUint(id, 10) + " has no request to replay (the upstream was refused before it was read)"}
	}
	in.mu.Lock()
	up, ok := in.upstreams[orig.Endpoint]
	closed := in.closed
	if !closed {
		in.wg.Add(1) // under in.mu: Close waits for it
	}
	in.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	defer in.wg.Done()
	if !ok {
		return nil, &EditError{"no upstream known for endpoint " + quote(orig.Endpoint)}
	}
	req, body, err := in.replayRequest(orig, edit, up)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, in.cfg.ReplayTimeout)
	defer cancel()
	stop := context.AfterFunc(in.client.ctx, cancel)
	defer stop()
	req = req.WithContext(ctx)

	ex := &Exchange{Time: time.Now(), Endpoint: orig.Endpoint, Upstream: up.Addr, ClientAddr: "agent (replay)", ReplayOf: id}
	proto := "HTTP/1.1"
	if up.HTTP2 {
		proto = "HTTP/2.0"
	}
	ex.Request = &Message{Method: req.Method, URL: req.URL.RequestURI(), Host: req.Host, Proto: proto,
		Header: in.redactHeader(req.Header)}
	ex.Request.Header.Set("Host", req.Host)
	in.keepBody(ex.Request, body)

	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSClientConfig:       up.TLS,
		DisableKeepAlives:     true,
		DisableCompression:    true,
		ResponseHeaderTimeout: in.cfg.ReplayTimeout,
	}
	if up.HTTP2 {
		var protos http.Protocols
		if up.TLS != nil {
			protos.SetHTTP2(true)
		} else {
			protos.SetUnencryptedHTTP2(true)
		}
		tr.Protocols = &protos
	}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		ex.Duration = time.Since(ex.Time)
		ex.State, ex.Error = "error", unwrapURL(err).Error()
		if closed := in.client.ctx.Err() != nil; closed {
			return nil, ErrClosed
		}
		kept := in.keep(ex)
		return kept, &UpstreamError{Addr: up.Addr, Err: unwrapURL(err)}
	}
	defer resp.Body.Close()
	ex.Response = &Message{Status: resp.StatusCode, Proto: resp.Proto, Header: in.redactHeader(resp.Header)}
	p := &parser{in: in}
	err = p.readAll(ex.Response, resp.Body)
	ex.Response.Trailer = in.redactHeader(resp.Trailer)
	ex.Duration = time.Since(ex.Time)
	ex.State = "complete"
	if err != nil {
		ex.State, ex.Error = "error", "response body: "+err.Error()
	}
	return in.keep(ex), nil
}

func (in *Inspector) keep(ex *Exchange) *Exchange {
	in.add(ex)
	return ex
}

func (in *Inspector) keepBody(m *Message, body []byte) {
	m.BodySize = int64(len(body))
	if n := min(len(body), in.cfg.BodyBytes); n > 0 {
		m.Body = bytes.Clone(body[:n])
	}
	m.BodyTruncated = len(body) > len(m.Body)
}

// replayRequest builds the request to replay orig with edit.
func (in *Inspector) replayRequest(orig *Exchange, edit *Edit, up Upstream) (*http.Request, []byte, error) {
	o := orig.Request
	method, target := o.Method, o.URL
	header := o.Header.Clone()
	body := o.Body
	if edit == nil {
		edit = &Edit{}
	}
	if edit.Method != nil {
		method = *edit.Method
		if !validHeaderName(method) { // a method is a token
			return nil, nil, &EditError{"method " + quote(method) + " is not a token"}
		}
	}
	if edit.Path != nil {
		target = *edit.Path
		if !strings.HasPrefix(target, "/") {
			return nil, nil, &EditError{"path " + quote(target) + " does not start with /"}
		}
		for i := 0; i < len(target); i++ {
			if target[i] <= ' ' || target[i] == 0x7f {
				return nil, nil, &EditError{"path " + quote(target) + " has a space or a control character"}
			}
		}
	}
	if edit.Header != nil {
		header = http.Header{}
		for k, vs := range edit.Header {
			if !validHeaderName(k) {
				return nil, nil, &EditError{"header name " + quote(k) + " is not a token"}
			}
			for _, v := range vs {
				if strings.ContainsAny(v, "\r\n\x00") {
					return nil, nil, &EditError{"header " + k + " has a CR, LF or NUL in its value"}
				}
			}
			header[http.CanonicalHeaderKey(k)] = vs
		}
	}
	if edit.Body != nil {
		body = []byte(*edit.Body)
	} else if o.BodyTruncated || o.BodySize < 0 {
		return nil, nil, &EditError{fmt.Sprintf("the request body was captured in part (%d of %d bytes): edit it to replay", len(o.Body), o.BodySize)}
	}
	// Headers still redacted were never captured: leave them out.
	for k, vs := range header {
		if len(vs) > 0 && vs[0] == Redacted {
			delete(header, k)
		}
	}
	host := header.Get("Host")
	if host == "" {
		host = o.Host
	}
	// Hop-by-hop headers were the edge's connection's, not the request's:
	// a replay is a plain request on a connection of its own.
	te := header.Get("Te") // "trailers" is the request's (gRPC needs it)
	for _, h := range []string{"Host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade",
		"Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Expect"} {
		header.Del(h)
	}
	if te == "trailers" {
		header.Set("Te", te)
	}
	scheme := "http"
	if up.TLS != nil {
		scheme = "https"
	}
	req, err := http.NewRequest(method, scheme+"://"+up.Addr+target, bytes.NewReader(body))
	if err != nil {
		return nil, nil, &EditError{err.Error()}
	}
	req.Header = header
	req.Header.Set(ReplayHeader, strconv.FormatUint(orig.ID, 10))
	req.Host = host
	if len(body) == 0 {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	return req, body, nil
}

// unwrapURL drops a *net.OpError's addresses, which the message names
// already: "dial: connect: connection refused".
func unwrapURL(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return fmt.Errorf("%s: %w", op.Op, op.Err)
	}
	return err
}
