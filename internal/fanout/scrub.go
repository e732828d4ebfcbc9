package fanout

import (
	"bytes"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
)

// minScrubbed is the shortest value scrubbed from answers: shorter ones
// (an account number, "1") would blank ordinary text and hide little.
const minScrubbed = 8

// scrubber removes from a receiver's answer what the subscription sent
// that may be a credential: its headers' values, its URL's query values
// and, where dzhook hides it, its path's segments. Receivers that quote
// the request back are common (echo services, a 401 saying "invalid key
// X", a proxy's error page); the answer is kept in the history, shown by
// the API and the dashboard, and quoted to notify.url.
type scrubber [][]byte

// newScrubber lists the values of headers and of u (hidden path: the
// path is shown as /REDACTED), in their plain and JSON-escaped forms,
// longest first (one that contains another goes first).
func newScrubber(headers map[string]string, rawURL string, hiddenPath bool) scrubber {
	var vals []string
	for _, v := range headers {
		vals = append(vals, strings.TrimPrefix(strings.TrimPrefix(v, "Bearer "), "Basic "), v)
	}
	if u, err := url.Parse(rawURL); err == nil {
		if u.RawQuery != "" {
			vals = append(vals, u.RawQuery)
			for _, vs := range u.Query() {
				vals = append(vals, vs...)
			}
		}
		if hiddenPath {
			vals = append(vals, strings.Split(u.EscapedPath(), "/")...)
			vals = append(vals, strings.Split(u.Path, "/")...)
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

// scrub returns body with each listed value replaced by REDACTED: a copy
// when it holds one, body itself when not.
func (s scrubber) scrub(body []byte) []byte {
	for _, v := range s {
		if bytes.Contains(body, v) {
			body = bytes.ReplaceAll(body, v, []byte("REDACTED"))
		}
	}
	return body
}
