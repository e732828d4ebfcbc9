package admin

import (
	"net/http"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/internal/api"
)

// TestStrictBodies: what encoding/json takes without a word is refused,
// naming the field: a member given twice, a name in another case, a null
// in a map or a list, an unpaired surrogate escape; and a value of the
// wrong type names its field whole.
func TestStrictBodies(t *testing.T) {
	for body, want := range map[string]string{
		`{"url":"https://a.example/h","url":"https://b.example/h"}`: "url: given twice",
		`{"active":true,"events":["*"],"active":false}`:             "active: given twice",
		`{"headers":{"X-A":"1","X-A":"2"}}`:                         "headers.X-A: given twice",
		`{"URL":"https://a.example/h"}`:                             `URL: unknown field (names are case-sensitive: "url")`,
		`{"Secret":"0123456789abcdef0123"}`:                         `Secret: unknown field (names are case-sensitive: "secret")`,
		`{"headers":{"X-Null":null}}`:                               "headers.X-Null: null",
		`{"events":["request.created",null]}`:                       "events[1]: null",
		`{"secret":"0123456789abcdefghij\ud800"}`:                   "unpaired UTF-16 surrogate escape at offset 31",
		`{"headers":{"X-Token":"abc\udfffdef"}}`:                    "unpaired UTF-16 surrogate escape",
		`{"secret":"\ud800\ud800"}`:                                 "unpaired UTF-16 surrogate escape at offset 11",
		`{"queue_while_inactive":"yes"}`:                            "queue_while_inactive: must be a boolean, not a string",
		`{"standard_webhooks":1}`:                                   "standard_webhooks: must be a boolean, not a number",
		`{"events":"request.*"}`:                                    "events: must be a list, not a string",
	} {
		var in api.SubscriptionInput
		if err := decodeObject([]byte(body), &in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
	for _, body := range []string{
		`{"secret":"pair \ud83d\ude00 and a backslash \\ud800 as text"}`,
		`{"headers":{"X-A":"1","x-b":"2"},"events":["*"],"url":"https://a.example/h"}`,
	} {
		var in api.SubscriptionInput
		if err := decodeObject([]byte(body), &in); err != nil {
			t.Errorf("%s: %v", body, err)
		}
	}
}

// An empty event name is a mistake, not the default (it sent
// request.created).
func TestTestEventEmpty(t *testing.T) {
	srv, s := newSpyServer(t)
	code, msg := do(t, srv, http.MethodPost, "/v1/subscriptions/crm/test", strings.NewReader(`{"event":""}`))
	if code != http.StatusBadRequest || !strings.Contains(msg, "event") || len(s.calls) != 0 {
		t.Errorf("an empty event: %d %q, calls %v; want 400 naming event, nothing sent", code, msg, s.calls)
	}
}
