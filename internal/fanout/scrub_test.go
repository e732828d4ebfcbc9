package fanout

import "testing"

func TestScrubber(t *testing.T) {
	s := newScrubber(map[string]string{"Authorization": "Bearer Kn0wn/S3cret<Value>", "X-Short": "1234567"},
		"https://hooks.example.com/catch/123456/abcdefghijkl/?key=q-S3cretQuery&x=1", true)
	for body, want := range map[string]string{
		`{"headers":{"authorization":"Bearer Kn0wn/S3cret<Value>"}}`:      `{"headers":{"authorization":"REDACTED"}}`,
		`{"authorization":"Bearer Kn0wn\/S3cret\u003cValue\u003e"}`:       `{"authorization":"REDACTED"}`,
		`invalid key Kn0wn/S3cret<Value>`:                                 `invalid key REDACTED`,
		`GET /catch/123456/abcdefghijkl/?key=q-S3cretQuery&x=1 not found`: `GET /catch/123456/REDACTED/?REDACTED not found`,
		`{"args":{"key":"q-S3cretQuery","x":"1"}}`:                        `{"args":{"key":"REDACTED","x":"1"}}`,
		`X-Short: 1234567, nothing else`:                                  `X-Short: 1234567, nothing else`,
	} {
		if got := string(s.scrub([]byte(body))); got != want {
			t.Errorf("scrub(%s) = %s, want %s", body, got, want)
		}
	}
	if s := newScrubber(nil, "https://crm.example.com/hooks/dzdesk", false); len(s) != 0 {
		t.Errorf("a URL without a query, path shown: %q to scrub", s)
	}
}
