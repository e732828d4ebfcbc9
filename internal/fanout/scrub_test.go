package fanout

import "testing"

func TestScrubber(t *testing.T) {
	s := newScrubber(Subscription{
		Headers: map[string]string{"Authorization": "Splunk Kn0wn/S3cret<Value>", "X-Api-Key": "k3y-0123456789", "Accept": "application/json",
			"X-Tenant": "production", "X-Short-Token": "1234567"},
		URL:    "https://relay.example.com/slack/T0/B0/abcdefghijkl0123/?wait=true&key=q-S3cretQuery",
		Format: "slack",
	})
	for body, want := range map[string]string{
		`{"headers":{"authorization":"Splunk Kn0wn/S3cret<Value>"}}`: `{"headers":{"authorization":"REDACTED"}}`,
		`{"authorization":"Splunk Kn0wn\/S3cret\u003cValue\u003e"}`:  `{"authorization":"REDACTED"}`,
		`invalid token Kn0wn/S3cret<Value>`:                          `invalid token REDACTED`,
		`invalid key k3y-0123456789`:                                 `invalid key REDACTED`,
		`POST /slack/T0/B0/abcdefghijkl0123/ not found`:              `POST /slack/T0/B0/REDACTED/ not found`,
		`{"args":{"key":"q-S3cretQuery","wait":"true"}}`:             `{"args":{"key":"REDACTED","wait":"true"}}`,
		`expected application/json for tenant production`:            `expected application/json for tenant production`,
		`X-Short-Token: 1234567, nothing else`:                       `X-Short-Token: 1234567, nothing else`,
	} {
		if got := string(s.scrub([]byte(body), false)); got != want {
			t.Errorf("scrub(%s) = %s, want %s", body, got, want)
		}
	}
	// Cut short by the body limit in the middle of a key: its prefix goes.
	if got := string(s.scrub([]byte(`invalid key k3y-01234`), true)); got != `invalid key REDACTED` {
		t.Errorf("a cut answer: %s", got)
	}
	if got := string(s.scrub([]byte(`invalid key k3y-01234`), false)); got != `invalid key k3y-01234` {
		t.Errorf("an answer not cut: %s", got)
	}
	// A plain subscription's path is shown, and not scrubbed.
	if s := newScrubber(Subscription{URL: "https://crm.example.com/hooks/dzdesk0123456789abcdef"}); len(s) != 0 {
		t.Errorf("a URL without a query, path shown: %q to scrub", s)
	}
}
