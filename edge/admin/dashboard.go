package admin

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"strings"
)

// dashboardHTML is the admin port's web page: one file with inline CSS and
// JavaScript, no build step. It polls /status/members, /status/endpoints,
// /status/traffic, /status/agents, /status/node and /readyz every 2 s and renders them with textContent
// only, never as HTML.
//
//go:embed dashboard.html
var dashboardHTML []byte

// dashboardCSP lets the page run its own inline script and style (allowed
// by their hashes) and fetch from this origin; nothing else loads.
var dashboardCSP = "default-src 'none'; connect-src 'self'; script-src " + inlineHash(dashboardHTML, "script") +
	"; style-src " + inlineHash(dashboardHTML, "style") + "; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

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

func serveDashboard(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", dashboardCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	w.Write(dashboardHTML)
}
