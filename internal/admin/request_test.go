package admin

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

// spy records every call the server makes to its Deliverer and History,
// so a test can assert that a refused request acted on nothing and read
// nothing. It answers like checkedDeliverer and checkedHistory.
type spy struct {
	calls []string
	// since and until are the bounds of the last RetryFailed or
	// ListDeliveries.
	since, until *time.Time
	// key is the ordering key filter of the last ListDeliveries.
	key string
	// listErr, when set, is ListDeliveries' answer.
	listErr error
	// The Manager's side (manage_test.go): what it was called with, and
	// the errors it answers.
	m spyManagerState
}

type spyDeliverer struct {
	checkedDeliverer
	s *spy
}

func (d spyDeliverer) RetryNow(ctx context.Context, id string) (fanout.AttemptReport, error) {
	d.s.calls = append(d.s.calls, "RetryNow")
	return d.checkedDeliverer.RetryNow(ctx, id)
}

func (d spyDeliverer) RetryFailed(ctx context.Context, sub string, since, until *time.Time) (int, error) {
	d.s.calls = append(d.s.calls, "RetryFailed")
	d.s.since, d.s.until = since, until
	return d.checkedDeliverer.RetryFailed(ctx, sub, since, until)
}

func (d spyDeliverer) SendTest(ctx context.Context, sub string, ev fanout.Event) (fanout.AttemptReport, error) {
	d.s.calls = append(d.s.calls, "SendTest")
	return d.checkedDeliverer.SendTest(ctx, sub, ev)
}

func (d spyDeliverer) Pause(ctx context.Context, sub string) error {
	d.s.calls = append(d.s.calls, "Pause")
	return d.checkedDeliverer.Pause(ctx, sub)
}

func (d spyDeliverer) Resume(ctx context.Context, sub string) (int, error) {
	d.s.calls = append(d.s.calls, "Resume")
	return d.checkedDeliverer.Resume(ctx, sub)
}

type spyHistory struct {
	checkedHistory
	s *spy
}

func (h spyHistory) ListDeliveries(ctx context.Context, f journal.DeliveryFilter) ([]journal.Delivery, string, error) {
	h.s.calls = append(h.s.calls, "ListDeliveries")
	h.s.since, h.s.until, h.s.key = f.Since, f.Until, f.OrderingKey
	if h.s.listErr != nil {
		return nil, "", h.s.listErr
	}
	return h.checkedHistory.ListDeliveries(ctx, f)
}

func (h spyHistory) GetDelivery(ctx context.Context, id string) (journal.Delivery, []byte, []journal.Attempt, error) {
	h.s.calls = append(h.s.calls, "GetDelivery")
	return h.checkedHistory.GetDelivery(ctx, id)
}

func (h spyHistory) Backlogs(ctx context.Context) (map[string]journal.Backlog, error) {
	h.s.calls = append(h.s.calls, "Backlogs")
	return h.checkedHistory.Backlogs(ctx)
}

// newSpyServer returns a server over spies, and the spy.
func newSpyServer(t *testing.T) (http.Handler, *spy) {
	t.Helper()
	cat, err := catalog.New()
	if err != nil {
		t.Fatal(err)
	}
	s := &spy{}
	srv := newChecked(t, Config{
		Token:     "t",
		Deliverer: spyDeliverer{checkedDeliverer{t: t, cat: cat}, s},
		History:   spyHistory{checkedHistory{t: t, cat: cat}, s},
		Manager:   spyManager{s},
		Catalog:   cat,
		Sample: func(eventType string) (fanout.Event, error) {
			return fanout.Event{ID: "whk_sample", Type: eventType, Body: []byte(`{}`)}, nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	return srv, s
}

// do sends a request with the token; target is the path and raw query,
// sent byte for byte. It returns the status and the error message (""
// for a 2xx).
func do(t *testing.T, srv http.Handler, method, target string, body io.Reader) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, target, body)
	req.Header.Set("Authorization", "Bearer t")
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	checkAnswer(t, method+" "+target, rec)
	if rec.Code < 300 {
		return rec.Code, ""
	}
	var e api.Error
	_ = json.Unmarshal(rec.Body.Bytes(), &e) // checkAnswer checked it
	return rec.Code, e.Message
}

// TestRetryFailedRefusesUnreadableFilter: a since or until that Go's
// query parser would drop (a ';', a bad escape) or that is given twice,
// misspelt or empty makes retry-failed answer 400 naming the parameter,
// and retry nothing: an unreadable filter must never widen the retry to
// every failed delivery.
func TestRetryFailedRefusesUnreadableFilter(t *testing.T) {
	for _, tc := range []struct {
		query, param string
	}{
		{"since=2099-01-01T00:00:00Z;", "since"},                           // the hostile sweep's case: 525 retried
		{"since=2099-01-01T00:00:00Z%3", "since"},                          // a bad escape
		{"until=2000-01-01T00:00:00Z;&since=1h", "until"},                  // dropped, the other kept
		{"since=2099-01-01T00:00:00Z&since=1h", "since"},                   // repeated
		{"sinse=2099-01-01T00:00:00Z", "sinse"},                            // misspelt
		{"since=", "since"},                                                // empty
		{"since", "since"},                                                 // no value
		{"since=2099-01-01T00:00:00Z;until=2100-01-01T00:00:00Z", "since"}, // ';' as a separator
	} {
		srv, s := newSpyServer(t)
		target := "/v1/subscriptions/crm/retry-failed?" + tc.query
		code, msg := do(t, srv, http.MethodPost, target, nil)
		if code != http.StatusBadRequest || !strings.Contains(msg, `"`+tc.param+`"`) {
			t.Errorf("POST %s: %d %q, want 400 naming %q", target, code, msg, tc.param)
		}
		if len(s.calls) != 0 {
			t.Errorf("POST %s: the server called %v, want nothing", target, s.calls)
		}
	}
}

// TestDeliveriesRefusesUnreadableFilter: GET /v1/deliveries?status=failed;
// answered delivered rows (the status filter dropped); it must be a 400
// naming status, without reading the journal.
func TestDeliveriesRefusesUnreadableFilter(t *testing.T) {
	for _, tc := range []struct {
		query, param string
	}{
		{"status=failed;", "status"},
		{"status=failed%", "status"},
		{"limit=5&status=failed;", "status"},
		{"status=failed&status=delivered", "status"},
		{"subscription=crm&subscription=slack-alerts", "subscription"},
		{"state=failed", "state"},
		{"event=", "event"},
		{"a;b=1", "a;b"},
		{"%zz=1", "%zz"},
	} {
		srv, s := newSpyServer(t)
		target := "/v1/deliveries?" + tc.query
		code, msg := do(t, srv, http.MethodGet, target, nil)
		if code != http.StatusBadRequest || !strings.Contains(msg, `"`+tc.param+`"`) {
			t.Errorf("GET %s: %d %q, want 400 naming %q", target, code, msg, tc.param)
		}
		if len(s.calls) != 0 {
			t.Errorf("GET %s: the server called %v, want nothing", target, s.calls)
		}
	}
}

// TestReadQuery: a query string is read whole or refused with the
// parameter named; a long query stops at its first problem.
func TestReadQuery(t *testing.T) {
	accepts := []string{"since", "until"}
	for _, tc := range []struct {
		raw       string
		want      query
		wantParam string
	}{
		{"", query{}, ""},
		{"since=2h&until=1h", query{"since": "2h", "until": "1h"}, ""},
		{"since=2024-01-15T14%3A30%3A00Z&", query{"since": "2024-01-15T14:30:00Z"}, ""},
		{"&&since=2h", query{"since": "2h"}, ""},
		{"since=a%3Bb", query{"since": "a;b"}, ""}, // an escaped ';' is a value like any other
		{"since=2h;", nil, "since"},
		{"since=%", nil, "since"},
		{"since=2h&since=2h", nil, "since"},
		{"until=1h&limit=5", nil, "limit"},
		{"since=&until=1h", nil, "since"},
		{"=1", nil, ""},
		{"since=2h&" + strings.Repeat("x=1&", 20000), nil, "x"}, // past url.ParseQuery's 10,000 pairs
	} {
		got, err := readQuery("POST /x", tc.raw, accepts)
		if tc.want != nil {
			if err != nil || len(got) != len(tc.want) {
				t.Errorf("readQuery(%q) = %v, %v; want %v", clip(tc.raw), got, err, tc.want)
				continue
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("readQuery(%q)[%q] = %q, want %q", clip(tc.raw), k, got[k], v)
				}
			}
			continue
		}
		pe, ok := err.(*paramError)
		if !ok || pe.Param != tc.wantParam {
			t.Errorf("readQuery(%q) = %v, %v; want an error about %q", clip(tc.raw), got, err, tc.wantParam)
		}
	}
}

// TestTestBody: POST …/test reads one JSON object of at most 16 KiB. A
// larger body is a 413 (it was a 400); null, a value that is not an
// object, and anything after the object are 400s naming the body (null
// and trailing data were accepted and sent a request.created test). A
// refused body sends nothing.
func TestTestBody(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       int
		msg        string
	}{
		{"10 MB", `{"event":"` + strings.Repeat("x", 10<<20) + `"}`, http.StatusRequestEntityTooLarge, "too large"},
		{"one byte over", `{"event":"` + strings.Repeat("x", maxBody-11) + `"}`, http.StatusRequestEntityTooLarge, "too large"},
		{"null", `null`, http.StatusBadRequest, "not a JSON object"},
		{"null padded", " \n null \n", http.StatusBadRequest, "not a JSON object"},
		{"two objects", `{"a":1} {"b":2}`, http.StatusBadRequest, `unknown field "a"`},
		{"a second object", `{"event":"request.created"} {"b":2}`, http.StatusBadRequest, "more after the JSON object"},
		{"trailing text", `{}x`, http.StatusBadRequest, "more after the JSON object"},
		{"trailing null", `{"event":"request.created"}null`, http.StatusBadRequest, "more after the JSON object"},
		{"array", `[]`, http.StatusBadRequest, "not a JSON object"},
		{"string", `"request.created"`, http.StatusBadRequest, "not a JSON object"},
		{"empty", ``, http.StatusBadRequest, "empty"},
		{"unknown field", `{"event":"request.created","extra":1}`, http.StatusBadRequest, `"extra"`},
		{"unfinished", `{"event":"request.created"`, http.StatusBadRequest, "body"},
	} {
		srv, s := newSpyServer(t)
		code, msg := do(t, srv, http.MethodPost, "/v1/subscriptions/crm/test", strings.NewReader(tc.body))
		if code != tc.want || !strings.Contains(msg, "body") || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: %d %q, want %d with %q", tc.name, code, clip(msg), tc.want, tc.msg)
		}
		if len(s.calls) != 0 {
			t.Errorf("%s: the server called %v, want nothing", tc.name, s.calls)
		}
	}
	// Whitespace after the object is fine, and a body of exactly the
	// limit is read whole.
	exact := `{"event":"request.created"}` + strings.Repeat(" ", maxBody-27)
	for _, body := range []string{`{}`, "{\"event\":\"sla.warning\"}\n", exact} {
		srv, s := newSpyServer(t)
		code, msg := do(t, srv, http.MethodPost, "/v1/subscriptions/crm/test", strings.NewReader(body))
		if code != http.StatusOK || len(s.calls) != 1 || s.calls[0] != "SendTest" {
			t.Errorf("a %d-byte body %q: %d %q, calls %v; want 200 and one SendTest", len(body), clip(body), code, msg, s.calls)
		}
	}
}

// TestNoBodyEndpointsRefuseABody: an endpoint that reads no body refuses
// one rather than ignore it, and does nothing.
func TestNoBodyEndpointsRefuseABody(t *testing.T) {
	for _, target := range []string{
		"/v1/subscriptions/crm/pause", "/v1/subscriptions/crm/resume",
		"/v1/subscriptions/crm/retry-failed", "/v1/deliveries/dlv_1/retry",
	} {
		srv, s := newSpyServer(t)
		code, msg := do(t, srv, http.MethodPost, target, strings.NewReader(`{}`))
		if code != http.StatusBadRequest || !strings.Contains(msg, "takes no body") {
			t.Errorf("POST %s with a body: %d %q, want 400 saying it takes no body", target, code, msg)
		}
		if len(s.calls) != 0 {
			t.Errorf("POST %s with a body: the server called %v, want nothing", target, s.calls)
		}
	}
}

// TestZeroTimeIsABound: until=0001-01-01T00:00:00Z was taken for "no
// until" (the zero time meant unset), so it retried and listed
// everything. A parameter given is a bound, the zero time too; only an
// absent one is no bound.
func TestZeroTimeIsABound(t *testing.T) {
	zero := "0001-01-01T00:00:00Z"
	for _, target := range []string{
		"POST /v1/subscriptions/crm/retry-failed?until=" + zero,
		"GET /v1/deliveries?until=" + zero,
		"GET /v1/deliveries?until=0001-01-01T01:00:00%2B01:00", // the same instant
	} {
		method, path, _ := strings.Cut(target, " ")
		srv, s := newSpyServer(t)
		if code, msg := do(t, srv, method, path, nil); code != http.StatusOK {
			t.Fatalf("%s: %d %q", target, code, msg)
		}
		if s.since != nil || s.until == nil || !s.until.IsZero() {
			t.Errorf("%s: bounds since %v, until %v; want no since and until the zero time", target, s.since, s.until)
		}
	}
	for _, target := range []string{"POST /v1/subscriptions/crm/retry-failed", "GET /v1/deliveries"} {
		method, path, _ := strings.Cut(target, " ")
		srv, s := newSpyServer(t)
		if code, msg := do(t, srv, method, path, nil); code != http.StatusOK || s.since != nil || s.until != nil {
			t.Errorf("%s without since and until: %d %q, bounds %v, %v; want 200 and no bounds", target, code, msg, s.since, s.until)
		}
	}
	// Both the zero time: an empty range, refused as any since ≥ until is
	// (it was "no bounds at all").
	srv, s := newSpyServer(t)
	code, msg := do(t, srv, http.MethodPost, "/v1/subscriptions/crm/retry-failed?since="+zero+"&until="+zero, nil)
	if code != http.StatusBadRequest || !strings.Contains(msg, "since must be before until") || len(s.calls) != 0 {
		t.Errorf("since = until = the zero time: %d %q, calls %v; want 400 and nothing done", code, msg, s.calls)
	}
}

// TestMalformedRequests is the admin API's answer to malformed requests,
// route by route: each is a 4xx (never a 500, never a 200) whose message
// names the parameter or the body, and none reaches the dispatcher or the
// journal. RELIABILITY.md cites this list.
func TestMalformedRequests(t *testing.T) {
	const (
		list  = "/v1/deliveries"
		retry = "/v1/subscriptions/crm/retry-failed"
		test  = "/v1/subscriptions/crm/test"
	)
	tenMB := `{"event":"` + strings.Repeat("x", 10<<20) + `"}`
	for _, tc := range []struct {
		method, target, body string
		want                 int
		names                string // what the message must name
	}{
		// Query strings that do not parse whole: Go's parser drops the pair.
		{"GET", list + "?status=failed;", "", 400, `"status"`},
		{"GET", list + "?limit=5;status=failed", "", 400, `"limit"`},
		{"GET", list + "?status=%zz", "", 400, `"status"`},
		{"GET", list + "?%zz=1", "", 400, `"%zz"`},
		{"POST", retry + "?since=2099-01-01T00:00:00Z;", "", 400, `"since"`},
		{"POST", retry + "?until=2099-01-01T00:00:00Z%E", "", 400, `"until"`},
		{"GET", "/v1/events?a;b", "", 400, `"a;b"`},
		// Repeated parameters.
		{"GET", list + "?limit=5&limit=6", "", 400, `"limit"`},
		{"GET", list + "?status=failed&status=delivered", "", 400, `"status"`},
		{"POST", retry + "?until=1h&until=2h", "", 400, `"until"`},
		// Unknown parameters, and a filter retry-failed does not have.
		{"GET", list + "?sort=asc", "", 400, `"sort"`},
		{"POST", retry + "?status=failed", "", 400, `"status"`},
		{"POST", test + "?event=sla.warning", "{}", 400, `"event"`},
		// Parameters on routes that take none.
		{"GET", "/v1/events?x=1", "", 400, `"x"`},
		{"GET", "/v1/subscriptions?x=1", "", 400, `"x"`},
		{"GET", "/v1/subscriptions/crm?x=1", "", 400, `"x"`},
		{"POST", "/v1/subscriptions/crm/pause?x=1", "", 400, `"x"`},
		{"POST", "/v1/subscriptions/crm/resume?x=1", "", 400, `"x"`},
		{"GET", "/v1/deliveries/dlv_1?x=1", "", 400, `"x"`},
		{"POST", "/v1/deliveries/dlv_1/retry?x=1", "", 400, `"x"`},
		{"POST", "/v1/subscriptions?x=1", `{"url":"https://x.example.com"}`, 400, `"x"`},
		{"PATCH", "/v1/subscriptions/crm?x=1", `{"active":false}`, 400, `"x"`},
		{"DELETE", "/v1/subscriptions/crm?x=1", "", 400, `"x"`},
		{"POST", "/v1/subscriptions/crm/secret?overlap=1h", "", 400, `"overlap"`},
		{"GET", "/v1/audit?subscription=crm", "", 400, `"subscription"`},
		{"GET", "/v1/audit?limit=5&limit=6", "", 400, `"limit"`},
		{"GET", "/v1/audit?cursor=7;", "", 400, `"cursor"`},
		// Empty values.
		{"GET", list + "?status=", "", 400, `"status"`},
		{"POST", retry + "?since", "", 400, `"since"`},
		// Wrong types and out-of-range values.
		{"GET", list + "?since=notatime", "", 400, "since"},
		{"POST", retry + "?until=notatime", "", 400, "until"},
		{"POST", retry + "?since=-2h", "", 400, "since"},
		{"GET", list + "?since=1h&until=2h", "", 400, "since must be before until"},
		{"GET", list + "?limit=-1", "", 400, "limit"},
		{"GET", list + "?limit=abc", "", 400, "limit"},
		{"GET", list + "?limit=0", "", 400, "limit"},
		{"GET", list + "?limit=501", "", 400, "limit"},
		{"GET", list + "?limit=99999999999999999999", "", 400, "limit"},
		{"GET", list + "?status=FAILED", "", 400, "status"},
		{"GET", list + "?subscription=ghost", "", 400, "subscription"},
		{"GET", list + "?event=nope.nope", "", 400, "event"},
		{"GET", list + "?cursor=" + strings.Repeat("c", 600), "", 400, "cursor"},
		{"GET", list + "?ordering_key=", "", 400, `"ordering_key"`},
		{"GET", list + "?ordering_key=req_1%FF", "", 400, "ordering_key"},
		{"GET", list + "?ordering_key=req%00", "", 400, "ordering_key"},
		{"GET", list + "?ordering_key=" + strings.Repeat("k", 513), "", 400, "ordering_key: 513 bytes"},
		{"GET", "/v1/audit?limit=0", "", 400, "limit"},
		{"GET", "/v1/audit?limit=501", "", 400, "limit"},
		{"GET", "/v1/audit?limit=ten", "", 400, "limit"},
		{"GET", "/v1/audit?cursor=" + strings.Repeat("c", 600), "", 400, "cursor"},
		// Malformed subscription ids in the path.
		{"PATCH", "/v1/subscriptions/CRM", `{"active":false}`, 400, "malformed"},
		{"DELETE", "/v1/subscriptions/a%20b", "", 400, "malformed"},
		{"POST", "/v1/subscriptions/" + strings.Repeat("a", 64) + "/secret", "", 400, "malformed"},
		// Oversize bodies.
		{"POST", test, tenMB, 413, "body"},
		{"POST", "/v1/subscriptions/crm/pause", tenMB, 400, "body"},
		{"POST", "/v1/subscriptions", tenMB, 413, "body"},
		{"PATCH", "/v1/subscriptions/crm", tenMB, 413, "body"},
		{"POST", "/v1/subscriptions/crm/secret", tenMB, 413, "body"},
		{"DELETE", "/v1/subscriptions/crm", tenMB, 400, "body"},
		// Bodies that are null, not an object, or followed by more.
		{"POST", test, "", 400, "body"},
		{"POST", test, "null", 400, "body"},
		{"POST", test, "[]", 400, "body"},
		{"POST", test, `"request.created"`, 400, "body"},
		{"POST", test, "42", 400, "body"},
		{"POST", test, `{"a":1} {"b":2}`, 400, "body"},
		{"POST", test, `{}x`, 400, "body"},
		{"POST", test, `{"event":"request.created"`, 400, "body"},
		{"POST", "/v1/subscriptions", "", 400, "body"},
		{"POST", "/v1/subscriptions", "null", 400, "body"},
		{"POST", "/v1/subscriptions", `["https://x.example.com"]`, 400, "body"},
		{"POST", "/v1/subscriptions", `{"url":"https://x.example.com"}null`, 400, "body"},
		{"PATCH", "/v1/subscriptions/crm", "null", 400, "body"},
		{"PATCH", "/v1/subscriptions/crm", `{"active":false} {}`, 400, "body"},
		{"POST", "/v1/subscriptions/crm/secret", "null", 400, "body"},
		{"POST", "/v1/subscriptions/crm/secret", `{}x`, 400, "body"},
		// Unknown fields, wrong field types, unknown events in the body.
		{"POST", test, `{"evnt":"request.created"}`, 400, `"evnt"`},
		{"POST", test, `{"event":1}`, 400, "event"},
		{"POST", test, `{"event":"nope.nope"}`, 400, "event"},
		{"POST", "/v1/subscriptions", `{"url":"https://x.example.com","evnts":["*"]}`, 400, `"evnts"`},
		{"POST", "/v1/subscriptions", `{"url":"https://x.example.com","events":"*"}`, 400, "events"},
		{"POST", "/v1/subscriptions", `{"url":null}`, 400, `"url" is null`},
		{"PATCH", "/v1/subscriptions/crm", `{"paused":true}`, 400, `"paused"`},
		{"PATCH", "/v1/subscriptions/crm", `{"id":"crm2"}`, 400, "id: cannot be changed"},
		{"PATCH", "/v1/subscriptions/crm", `{"secret":"0123456789abcdef0123"}`, 400, "secret: is changed by rotation"},
		{"PATCH", "/v1/subscriptions/crm", `{}`, 400, "no field to change"},
		{"POST", "/v1/subscriptions/crm/secret", `{"overlap":"1h","activate_at":"now"}`, 400, `"activate_at"`},
		{"POST", "/v1/subscriptions/crm/secret", `{"overlap":24}`, 400, "overlap"},
		{"POST", "/v1/subscriptions/crm/secret", `{"secret":null}`, 400, "secret: null"},
		{"POST", test, `{"event":null}`, 400, "event: null"},
		// Bodies on routes that take none.
		{"POST", "/v1/subscriptions/crm/resume", "{}", 400, "body"},
		{"POST", "/v1/deliveries/dlv_1/retry", "{}", 400, "body"},
		{"POST", retry + "?since=1h", "{}", 400, "body"},
		{"GET", "/v1/subscriptions", "{}", 400, "body"},
	} {
		srv, s := newSpyServer(t)
		var body io.Reader
		if tc.body != "" {
			body = strings.NewReader(tc.body)
		}
		code, msg := do(t, srv, tc.method, tc.target, body)
		what := clip(tc.method + " " + tc.target + " " + tc.body)
		if code != tc.want || !strings.Contains(msg, tc.names) {
			t.Errorf("%s: %d %q, want %d naming %s", what, code, clip(msg), tc.want, tc.names)
		}
		// A subscription that does not run is looked for in the history
		// (deleted ones stay there); nothing else is called.
		if len(s.calls) != 0 && !(strings.Contains(tc.target, "subscription=ghost") && slices.Equal(s.calls, []string{"ListDeliveries"})) {
			t.Errorf("%s: the server called %v, want nothing", what, s.calls)
		}
	}
}

// TestAuthSchemeAnyCase: the Authorization scheme is matched in any case
// (HTTP auth schemes are case-insensitive, RFC 9110 11.1); the token is
// not, and anything else is 401.
func TestAuthSchemeAnyCase(t *testing.T) {
	srv, _ := newSpyServer(t)
	for _, tc := range []struct {
		header string
		want   int
	}{
		{"Bearer t", http.StatusOK},
		{"bearer t", http.StatusOK},
		{"BEARER t", http.StatusOK},
		{"bEaReR t", http.StatusOK},
		{"Bearer T", http.StatusUnauthorized},
		{"bearer wrong", http.StatusUnauthorized},
		{"Basic t", http.StatusUnauthorized},
		{"bearert", http.StatusUnauthorized},
		{"t", http.StatusUnauthorized},
		{"", http.StatusUnauthorized},
	} {
		req := httptest.NewRequest("GET", "/v1/events", nil)
		if tc.header != "" {
			req.Header.Set("Authorization", tc.header)
		}
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("Authorization: %q: %d %s, want %d", tc.header, rec.Code, rec.Body, tc.want)
		}
	}
}

// TestUncleanPathsAreNotRedirected: /v1/…/. and …/.. were redirected
// (307) to another route, whose answer a client following redirects
// took for this one's (a subscription printed as a replay).
func TestUncleanPathsAreNotRedirected(t *testing.T) {
	for _, p := range []string{"/v1/subscriptions/crm/replays/..", "/v1/deliveries/.", "/v1//subscriptions", "/v1/subscriptions/./crm"} {
		srv, _ := newSpyServer(t)
		code, msg := do(t, srv, http.MethodGet, p, nil)
		if code != http.StatusNotFound {
			t.Errorf("GET %s: %d %q, want 404", p, code, msg)
		}
	}
}

// TestDeliveriesOrderingKeyFilter: ordering_key reaches the journal as
// given, a replay's prefixed key too, and is no filter when absent.
func TestDeliveriesOrderingKeyFilter(t *testing.T) {
	for _, tc := range []struct{ query, want string }{
		{"?ordering_key=req_123", "req_123"},
		{"?ordering_key=replay%3Arpl_1%3Areq_123&subscription=crm&status=pending", "replay:rpl_1:req_123"},
		{"?ordering_key=" + strings.Repeat("k", 512), strings.Repeat("k", 512)},
		{"?status=pending", ""},
	} {
		srv, s := newSpyServer(t)
		if code, msg := do(t, srv, "GET", "/v1/deliveries"+tc.query, nil); code != 200 {
			t.Errorf("GET /v1/deliveries%s: %d %s, want 200", clip(tc.query), code, msg)
			continue
		}
		if s.key != tc.want {
			t.Errorf("GET /v1/deliveries%s: the journal was asked for key %q, want %q", clip(tc.query), clip(s.key), clip(tc.want))
		}
	}
}
