package fanout

import (
	"bytes"
	"encoding/json"
	"net/url"
	"slices"
	"strings"

	"github.com/dzdesk/dzhook/internal/transform"
)

// minScrubbed is the shortest value scrubbed from answers: shorter ones
// (an account number, "1") would blank ordinary text and hide little.
const minScrubbed = 8

// scrubber removes from a receiver's answer (and from an attempt's error,
// which may quote a redirect's Location) what the subscription sent that
// may be a credential: the values of its credential-like headers, its
// URL's query values and, where dzhook hides the path, the path's
// random-looking segments. Receivers that quote the request back are
// common (echo services, a 401 saying "invalid key X", a proxy's error
// page); the answer is kept in the history, shown by the API and the
// dashboard, and quoted to notify.url.
type scrubber [][]byte

// newScrubber lists what sub's headers and URL may hold of a credential,
// in the plain and JSON-escaped forms, longest first (one that contains
// another goes first).
func newScrubber(cfg Subscription) scrubber {
	var vals []string
	for name, v := range cfg.Headers {
		if !credentialHeader(name) {
			continue // Accept: application/json hides nothing
		}
		vals = append(vals, v)
		if _, token, ok := strings.Cut(v, " "); ok {
			vals = append(vals, strings.TrimSpace(token)) // Bearer, Basic, Splunk, Token, …
		}
	}
	if u, err := url.Parse(cfg.URL); err == nil {
		if u.RawQuery != "" {
			vals = append(vals, u.RawQuery)
			for _, vs := range u.Query() {
				vals = append(vals, vs...)
			}
		}
		if pathHidden(u, cfg.Format, cfg.Transform) {
			for _, seg := range append(strings.Split(u.EscapedPath(), "/"), strings.Split(u.Path, "/")...) {
				if randomLooking(seg) {
					vals = append(vals, seg)
				}
			}
		}
	}
	var s scrubber
	for _, v := range vals {
		if len(v) < minScrubbed {
			continue
		}
		s = append(s, []byte(v))
		// As JSON quotes it: Go's encoder (\u003c for <), PHP's (\/).
		if q, err := json.Marshal(v); err == nil {
			q = q[1 : len(q)-1]
			s = append(s, q, bytes.ReplaceAll(q, []byte("/"), []byte(`\/`)))
		}
	}
	slices.SortFunc(s, func(a, b []byte) int { return len(b) - len(a) })
	return slices.CompactFunc(s, bytes.Equal)
}

// credentialHeader reports whether a header's name says its value is a
// credential.
func credentialHeader(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "authorization", "proxy-authorization", "cookie":
		return true
	}
	for _, w := range []string{"key", "token", "secret", "signature", "auth", "pass", "session", "credential"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}

// randomLooking reports whether a path segment looks like a token rather
// than a word (Slack's services, Teams' IncomingWebhook): 16 characters
// or more, or 8 with a digit.
func randomLooking(seg string) bool {
	return len(seg) >= 16 || (len(seg) >= minScrubbed && strings.ContainsAny(seg, "0123456789"))
}

// pathHidden reports whether dzhook shows u's path as /REDACTED (see
// ShownURL).
func pathHidden(u *url.URL, format, transformExpr string) bool {
	return (format != "" && format != transform.FormatDZDESK) || transformExpr != "" || tokenInPath(u)
}

// scrub returns b with each listed value replaced by REDACTED: a copy
// when it holds one, b itself when not. cut says b was cut short (the
// response body limit): a value the cut split leaves a prefix at its end,
// which is replaced too (4 bytes of it or more).
func (s scrubber) scrub(b []byte, cut bool) []byte {
	for _, v := range s {
		if bytes.Contains(b, v) {
			b = bytes.ReplaceAll(b, v, []byte("REDACTED"))
		}
	}
	if cut {
		for _, v := range s {
			for k := len(v) - 1; k >= 4; k-- {
				if bytes.HasSuffix(b, v[:k]) {
					return append(b[:len(b)-k:len(b)-k], "REDACTED"...)
				}
			}
		}
	}
	return b
}
