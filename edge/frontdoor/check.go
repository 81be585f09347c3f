package frontdoor

import (
	"fmt"
	"net/http"
	"strings"
)

// Request limits of docs/limits.md that net/http does not enforce itself.
const (
	maxRequestURI   = 8 << 10 // 414 beyond
	maxHeaderFields = 100     // 431 beyond
)

// CheckRequest enforces the request limits net/http leaves to the edge: the
// URI length, the number of header fields, header names with underscores
// (unless allowed), and the exact header size (net/http lets
// MaxHeaderBytes + 4 KiB through). It returns 0 for a request within them,
// else the status to refuse it with and why.
func CheckRequest(r *http.Request, maxHeaderBytes int, allowUnderscores bool) (int, string) {
	if len(r.RequestURI) > maxRequestURI {
		return http.StatusRequestURITooLong, fmt.Sprintf("request URI of %d bytes (max %d)", len(r.RequestURI), maxRequestURI)
	}
	fields := 0
	size := len(r.Method) + len(r.RequestURI) + len(r.Proto) + 4 + len("Host: \r\n") + len(r.Host)
	for k, vs := range r.Header {
		if !allowUnderscores && strings.IndexByte(k, '_') >= 0 {
			return http.StatusBadRequest, fmt.Sprintf("header name %q has an underscore: use '-', or start the edge with --allow-underscores-in-headers", k)
		}
		for _, v := range vs {
			fields++
			size += len(k) + len(v) + 4
		}
	}
	if fields > maxHeaderFields {
		return http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("%d header fields (max %d)", fields, maxHeaderFields)
	}
	if size > maxHeaderBytes {
		return http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request header of %d bytes (max %d)", size, maxHeaderBytes)
	}
	return 0, ""
}
