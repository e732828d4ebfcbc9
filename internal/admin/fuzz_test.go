package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
)

// fuzzSubscriptions are the subscriptions the fakes know.
var fuzzSubscriptions = []string{"crm", "slack-alerts"}

// checkedDeliverer is a Deliverer that fails the test when the server
// calls it with input the handlers should have refused.
type checkedDeliverer struct {
	t   *testing.T
	cat *catalog.Catalog
}

func (d checkedDeliverer) known(method, id string) {
	if !slices.Contains(fuzzSubscriptions, id) {
		d.t.Errorf("%s called with subscription %q, not one of %q", method, id, fuzzSubscriptions)
	}
}

func (d checkedDeliverer) Subscriptions() []fanout.SubscriptionStatus {
	var out []fanout.SubscriptionStatus
	for _, id := range fuzzSubscriptions {
		out = append(out, fanout.SubscriptionStatus{ID: id, URL: "https://example.com/" + id, Events: []string{"*"}, Active: true, State: journal.Healthy})
	}
	return out
}

func (d checkedDeliverer) SubscriptionIDs() []string { return slices.Clone(fuzzSubscriptions) }

func (d checkedDeliverer) HasSubscription(id string) bool {
	return slices.Contains(fuzzSubscriptions, id)
}

func (d checkedDeliverer) RetryNow(_ context.Context, id string) (fanout.AttemptReport, error) {
	if !ids.IsDeliveryID(id) {
		d.t.Errorf("RetryNow called with malformed delivery id %q", id)
	}
	if id == "dlv_busy" { // only an attempt is refused as busy (journal.Claim)
		return fanout.AttemptReport{}, journal.ErrBusy
	}
	return fanout.AttemptReport{DeliveryID: id, StatusCode: 200, Delivered: true}, nil
}

func (d checkedDeliverer) RetryFailed(_ context.Context, sub string, since, until *time.Time) (int, error) {
	d.known("RetryFailed", sub)
	if since != nil && until != nil && !since.Before(*until) {
		d.t.Errorf("RetryFailed called with since %v not before until %v", since, until)
	}
	return 3, nil
}

func (d checkedDeliverer) SendTest(_ context.Context, sub string, ev fanout.Event) (fanout.AttemptReport, error) {
	d.known("SendTest", sub)
	if !d.cat.Has(ev.Type) {
		d.t.Errorf("SendTest called with event %q, not in the catalog", ev.Type)
	}
	return fanout.AttemptReport{DeliveryID: "dlv_test", EventID: ev.ID, StatusCode: 500, ResponseBody: "\xff not utf-8", ErrorClass: "http", Error: "HTTP 500"}, nil
}

func (d checkedDeliverer) Pause(_ context.Context, sub string) error {
	d.known("Pause", sub)
	return nil
}

func (d checkedDeliverer) Resume(_ context.Context, sub string) (int, error) {
	d.known("Resume", sub)
	return 0, nil
}

// checkedHistory is a History that fails the test on unvalidated input,
// and answers the way the journal does (not found, bad cursor, outages).
type checkedHistory struct {
	t   *testing.T
	cat *catalog.Catalog
}

func (h checkedHistory) ListDeliveries(_ context.Context, f journal.DeliveryFilter) ([]journal.Delivery, string, error) {
	t := h.t
	if f.Limit < 1 || f.Limit > maxLimit {
		t.Errorf("ListDeliveries called with limit %d, outside 1..%d", f.Limit, maxLimit)
	}
	if f.State != "" && !f.State.Valid() {
		t.Errorf("ListDeliveries called with state %q, not one of %q", f.State, states)
	}
	if f.Departed != (f.Subscription != "" && !slices.Contains(fuzzSubscriptions, f.Subscription)) {
		t.Errorf("ListDeliveries called with subscription %q, departed %v", f.Subscription, f.Departed)
	}
	if f.Departed {
		return nil, "", journal.ErrNoHistory // no history of it in this journal
	}
	if !slices.Equal(f.Subscriptions, fuzzSubscriptions) {
		t.Errorf("ListDeliveries called with subscriptions %q, want %q", f.Subscriptions, fuzzSubscriptions)
	}
	if f.Event != "" && !h.cat.Has(f.Event) {
		t.Errorf("ListDeliveries called with event %q, not in the catalog", f.Event)
	}
	if f.Since != nil && f.Until != nil && !f.Since.Before(*f.Until) {
		t.Errorf("ListDeliveries called with since %v not before until %v", f.Since, f.Until)
	}
	if len(f.Cursor) > 512 {
		t.Errorf("ListDeliveries called with a %d-byte cursor", len(f.Cursor))
	}
	switch f.Cursor {
	case "bad":
		return nil, "", journal.ErrBadCursor
	case "down":
		return nil, "", io.ErrUnexpectedEOF // an outage: 503
	case "empty":
		return nil, "", nil
	}
	status := 200
	return []journal.Delivery{{ID: "dlv_1", EventID: "whk_1", Event: "request.created", Subscription: "crm", State: "delivered", LastStatus: &status}}, "next", nil
}

func (h checkedHistory) GetDelivery(_ context.Context, id string) (journal.Delivery, []byte, []journal.Attempt, error) {
	if !ids.IsDeliveryID(id) {
		h.t.Errorf("GetDelivery called with malformed delivery id %q", id)
	}
	switch id {
	case "dlv_missing":
		return journal.Delivery{}, nil, nil, journal.ErrNotFound
	}
	status, class, msg := 500, "http", "HTTP 500"
	attempts := []journal.Attempt{
		{Attempt: 1, Trigger: "auto", StatusCode: &status, ResponseBody: []byte("\xff\xfe ok"), ErrorClass: &class, Error: &msg},
		{Attempt: 2, Trigger: "manual", ResponseBody: []byte("plain")},
	}
	body := []byte(`{"id":"whk_1","event":"request.created","timestamp":"2024-01-15T14:30:00Z","data":{}}`)
	if strings.HasSuffix(id, "_raw") {
		body = []byte("not json \xff")
	}
	key := "req_1" // ordered, so the server asks WaitedBehind too
	return journal.Delivery{ID: id, EventID: "whk_1", Event: "request.created", Subscription: "crm", State: "failed", OrderingKey: &key}, body, attempts, nil
}

func (h checkedHistory) WaitedBehind(_ context.Context, id string, limit int) ([]string, error) {
	if !ids.IsDeliveryID(id) {
		h.t.Errorf("WaitedBehind called with malformed delivery id %q", id)
	}
	if limit < 1 || limit > maxWaitedBehind+1 {
		h.t.Errorf("WaitedBehind called with limit %d", limit)
	}
	return []string{"dlv_2"}, nil
}

func (h checkedHistory) Backlogs(context.Context) (map[string]journal.Backlog, error) {
	return map[string]journal.Backlog{"crm": {Pending: 2, Failed: 1}}, nil
}

// checkedManager is a Manager that fails the test when the server calls
// it with input the handlers should have refused.
type checkedManager struct{ t *testing.T }

func (m checkedManager) id(method, id string) {
	if !subscriptionIDPattern.MatchString(id) {
		m.t.Errorf("%s called with malformed subscription id %q", method, id)
	}
}

func (m checkedManager) CreateSubscription(_ context.Context, in api.SubscriptionInput, _ string) (api.CreatedSubscription, error) {
	if in.URL == nil {
		return api.CreatedSubscription{}, &ValidationError{Problems: []api.FieldProblem{{Field: "url", Problem: "is required"}, {Field: "events", Problem: "is required"}}}
	}
	return api.CreatedSubscription{Subscription: runtimeSubscription("wh_1"), Secret: "s"}, nil
}

func (m checkedManager) UpdateSubscription(_ context.Context, id string, in api.SubscriptionInput, _ string) (api.Subscription, error) {
	m.id("UpdateSubscription", id)
	if in.ID != nil || in.Secret != nil {
		m.t.Errorf("UpdateSubscription called with an id or a secret: %+v", in)
	}
	if id == "crm" {
		return api.Subscription{}, &ConflictError{Message: "crm is config.yaml's"}
	}
	return runtimeSubscription(id), nil
}

// runtimeSubscription is a runtime subscription with its defaults, as a
// Manager answers it.
func runtimeSubscription(id string) api.Subscription {
	return api.Subscription{ID: id, URL: "https://example.com/hook", Events: []string{"request.*"}, Active: true, State: "healthy",
		Stats: api.Stats{SuccessRate: -1}, Ordering: "none", Format: "dzdesk", Method: "POST", Source: "runtime"}
}

func (m checkedManager) DeleteSubscription(_ context.Context, id, _ string) (api.Deleted, error) {
	m.id("DeleteSubscription", id)
	return api.Deleted{}, ErrNotFound
}

func (m checkedManager) RotateSecret(_ context.Context, id string, _ api.SecretRotation, _ string) (api.RotatedSecret, error) {
	m.id("RotateSecret", id)
	return api.RotatedSecret{Secret: "s"}, nil
}

func (checkedManager) CanCreate() error { return nil }

func (m checkedManager) Record(_ context.Context, _, id, _ string, _ []string) error {
	m.id("Record", id)
	return nil
}

func (m checkedManager) Audit(_ context.Context, limit int, cursor string) (api.AuditPage, error) {
	if limit < 1 || limit > maxLimit || len(cursor) > 512 {
		m.t.Errorf("Audit called with limit %d and a %d-byte cursor", limit, len(cursor))
	}
	if cursor == "bad" {
		return api.AuditPage{}, journal.ErrBadCursor
	}
	return api.AuditPage{}, nil
}

// FuzzQueryParams sends the admin API fuzzed query strings, path ids and
// test bodies. The server must never panic or answer 500, must answer
// every error (status ≥ 400) as JSON with a non-empty "error", and may
// only call its Deliverer and History with input it validated.
func FuzzQueryParams(f *testing.F) {
	for _, seed := range []struct {
		query, id string
		body      []byte
	}{
		{"", "crm", []byte(`{"event":"request.created"}`)},
		{"limit=10&status=failed&subscription=crm&event=request.created", "dlv_abc", []byte(`{}`)},
		{"limit=0", "dlv_", nil},
		{"limit=501", "", []byte(``)},
		{"limit=-1&limit=5", "CRM", []byte(`{"event":"nope.nope"}`)},
		{"limit=1e3", "slack-alerts", []byte(`{"event":1}`)},
		{"limit=%20%2010", "dlv_missing", []byte(`{"evnt":"request.created"}`)},
		{"status=FAILED", "dlv_busy", []byte(`[]`)},
		{"status=&status=bogus", "dlv_x_raw", []byte(`null`)},
		{"subscription=../crm", "..", []byte(`{"event":"request.created"} trailing`)},
		{"subscription=nope", "../../v1/deliveries", []byte(`{"event":"request.created","event":"sla.breach"}`)},
		{"event=request.*", "a/b", []byte(`{"event":"\ud800"}`)},
		{"since=2h", "%", []byte("{\"event\":\"\xff\"}")},
		{"since=2024-01-15T14:30:00Z&until=2024-01-15T14:00:00Z", "\xff\xfe", []byte(`{"event":"request.created"`)},
		{"since=-2h&until=soon", strings.Repeat("a", 200), bytes.Repeat([]byte(" "), 20<<10)},
		{"since=2562047h47m16.854775807s&until=0s", "dlv_" + strings.Repeat("z", 121), []byte(`{"event":"` + strings.Repeat("x", 20<<10) + `"}`)},
		{"until=9999-12-31T23:59:59Z&since=0000-01-01T00:00:00Z", "dlv_ok", nil},
		{"cursor=" + strings.Repeat("c", 600), "dlv_1", nil},
		{"cursor=bad", "dlv_1", nil},
		{"cursor=down", "dlv_1", nil},
		{"cursor=empty&limit=500", "dlv_1", nil},
		{"foo=bar", "crm", nil},
		{"%zz&limit=5;status=failed", "crm?x=1", nil},
		{"status=%ff%fe&event=%00", "crm#frag", nil},
		{"limit=5&cursor=bad", "billing", []byte(`{"url":"https://x.example.com","events":["*"],"secret":"s","id":"x"}`)},
		{"", "wh_1", []byte(`{"overlap":"1h","activate":"now","url":null}`)},
	} {
		f.Add(seed.query, seed.id, seed.body)
	}
	cat, err := catalog.New(catalog.Event{Name: "order.shipped"})
	if err != nil {
		f.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, rawQuery, id string, body []byte) {
		srv := newChecked(t, Config{
			Token:     "t",
			Deliverer: checkedDeliverer{t: t, cat: cat},
			History:   checkedHistory{t: t, cat: cat},
			Manager:   checkedManager{t: t},
			Catalog:   cat,
			Sample: func(eventType string) (fanout.Event, error) {
				return fanout.Event{ID: "whk_sample", Type: eventType, Body: []byte(`{}`)}, nil
			},
			Logger: quiet,
		})
		call := func(method, path, rawPath, query string, body []byte) {
			t.Helper()
			req := httptest.NewRequest(method, "/", bytes.NewReader(body))
			req.URL = &url.URL{Path: path, RawPath: rawPath, RawQuery: query}
			req.RequestURI = req.URL.RequestURI()
			req.Header.Set("Authorization", "Bearer t")
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			checkAnswer(t, method+" "+req.URL.String(), rec)
		}
		call(http.MethodGet, "/v1/deliveries", "", rawQuery, nil)
		// The id as one path segment, and as whatever path it makes.
		call(http.MethodGet, "/v1/deliveries/"+id, "/v1/deliveries/"+url.PathEscape(id), "", nil)
		call(http.MethodGet, "/v1/deliveries/"+id, "", "", nil)
		call(http.MethodPost, "/v1/deliveries/"+id+"/retry", "/v1/deliveries/"+url.PathEscape(id)+"/retry", rawQuery, nil)
		call(http.MethodPost, "/v1/subscriptions/"+id+"/retry-failed", "/v1/subscriptions/"+url.PathEscape(id)+"/retry-failed", rawQuery, nil)
		call(http.MethodPost, "/v1/subscriptions/crm/retry-failed", "", rawQuery, nil)
		call(http.MethodPost, "/v1/subscriptions/crm/test", "", "", body)
		call(http.MethodPost, "/v1/subscriptions/"+id+"/test", "/v1/subscriptions/"+url.PathEscape(id)+"/test", rawQuery, body)
		call(http.MethodGet, "/v1/audit", "", rawQuery, nil)
		call(http.MethodPost, "/v1/subscriptions", "", "", body)
		call(http.MethodPatch, "/v1/subscriptions/"+id, "/v1/subscriptions/"+url.PathEscape(id), "", body)
		call(http.MethodDelete, "/v1/subscriptions/"+id, "/v1/subscriptions/"+url.PathEscape(id), rawQuery, nil)
		call(http.MethodPost, "/v1/subscriptions/"+id+"/secret", "/v1/subscriptions/"+url.PathEscape(id)+"/secret", "", body)
	})
}

// checkAnswer checks one answer of the API: never a 500, and every error
// a JSON object with a non-empty "error".
func checkAnswer(t *testing.T, what string, rec *httptest.ResponseRecorder) {
	t.Helper()
	if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("%s: %d %s", what, rec.Code, rec.Body)
	}
	if rec.Code == http.StatusServiceUnavailable && !strings.Contains(rec.Body.String(), "could not be reached") {
		t.Fatalf("%s: 503 without a journal outage: %s", what, rec.Body)
	}
	if rec.Code < 400 {
		if rec.Code == http.StatusOK && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s: 200 with a body that is not JSON: %q", what, rec.Body)
		}
		return
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s: %d with Content-Type %q, want application/json (body %q)", what, rec.Code, ct, rec.Body)
	}
	var e api.Error
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Message == "" {
		t.Fatalf("%s: %d with body %q, want {\"error\": \"…\"}", what, rec.Code, rec.Body)
	}
}
