package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// goldenTime is the fixed time of every field the fakes below fill.
var goldenTime = time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)

// fullDeliverer answers with every field of its answers set, so that the
// golden file shows each field's name and shape on the wire.
type fullDeliverer struct{}

func (fullDeliverer) Subscriptions() []fanout.SubscriptionStatus {
	ok, bad := goldenTime, goldenTime.Add(time.Minute)
	return []fanout.SubscriptionStatus{
		{
			ID: "crm", URL: "https://crm.example.com/hook", Events: []string{"request.*"}, Active: true, Paused: true, Held: fanout.HeldPaused,
			QueueWhileInactive: true, Filter: `data.priority == "high"`, State: journal.Failing,
			LastSuccessAt: &ok, LastFailureAt: &bad, LastStatus: 503, LastError: "HTTP 503", QueueDepth: 4,
			Stats: fanout.Stats{Delivered: 10, Failed: 2, Retried: 3, SuccessRate: 0.75, P50MS: 12.5, P99MS: 250,
				PerMinute: []fanout.MinuteCount{{Minute: goldenTime, Delivered: 3, Failed: 1}, {Minute: goldenTime.Add(time.Minute)}}},
			Ordering: fanout.OrderEntity, Order: fanout.OrderStatus{Keys: 5, Waiting: 7, JournalKeys: 2}, Source: "config",
			StandardWebhooks: true, PreviousUntil: goldenTime.Add(24 * time.Hour), SwitchAt: goldenTime.Add(24 * time.Hour),
		},
		{ID: "slack-alerts", URL: "https://hooks.example.com/x", Events: []string{"sla.*"}, Held: fanout.HeldInactive, State: journal.Healthy, Stats: fanout.Stats{SuccessRate: -1},
			Source: "runtime", Description: "Alerts to the on-call channel"},
	}
}

func (fullDeliverer) SubscriptionIDs() []string { return []string{"crm", "slack-alerts"} }

func (fullDeliverer) HasSubscription(id string) bool { return id == "crm" || id == "slack-alerts" }

func (fullDeliverer) RetryNow(_ context.Context, id string) (fanout.AttemptReport, error) {
	return fanout.AttemptReport{DeliveryID: id, EventID: "whk_1", Attempt: 3, StatusCode: 200, Delivered: true, DurationMS: 12.5, ResponseBody: "ok"}, nil
}

func (fullDeliverer) RetryFailed(context.Context, string, *time.Time, *time.Time) (int, error) {
	return 7, nil
}

func (fullDeliverer) SendTest(_ context.Context, _ string, ev fanout.Event) (fanout.AttemptReport, error) {
	return fanout.AttemptReport{DeliveryID: "dlv_test_1", EventID: ev.ID, Attempt: 1, DurationMS: 3000, ErrorClass: "timeout", Error: "no answer within 3s"}, nil
}

func (fullDeliverer) Pause(context.Context, string) error { return nil }

func (fullDeliverer) Resume(context.Context, string) (int, error) { return 5, nil }

// fullHistory is fullDeliverer's journal.
type fullHistory struct{}

func (fullHistory) ListDeliveries(_ context.Context, f journal.DeliveryFilter) ([]journal.Delivery, string, error) {
	if f.Cursor == "last" {
		return nil, "", nil
	}
	status, msg, next, last, key := 500, "HTTP 500", goldenTime.Add(time.Hour), goldenTime.Add(-time.Minute), "req_1"
	return []journal.Delivery{
		{ID: "dlv_2", EventID: "whk_2", Event: "request.updated", Subscription: "crm", State: "pending", Attempts: 1,
			NextAttemptAt: &next, InFlight: true, Test: true, LastStatus: &status, LastError: &msg, LastAttemptAt: &last,
			CreatedAt: goldenTime, UpdatedAt: goldenTime.Add(time.Second), OrderingKey: &key},
		{ID: "dlv_1", EventID: "whk_1", Event: "request.created", Subscription: "crm", State: "delivered", CreatedAt: goldenTime, UpdatedAt: goldenTime},
	}, "next-page", nil
}

func (fullHistory) GetDelivery(_ context.Context, id string) (journal.Delivery, []byte, []journal.Attempt, error) {
	if id == "dlv_missing" {
		return journal.Delivery{}, nil, nil, journal.ErrNotFound
	}
	status, class, msg, instance := 500, "http", "HTTP 500", "dzhook-1-4242-0a1b2c3d"
	d := journal.Delivery{ID: id, EventID: "whk_1", Event: "request.created", Subscription: "crm", State: "delivered", Attempts: 2,
		LastStatus: &status, CreatedAt: goldenTime, UpdatedAt: goldenTime}
	if !strings.HasSuffix(id, "_raw") { // the _raw one is unordered
		key := "req_1"
		d.OrderingKey = &key
	} else { // and sends a body of its own (a transform's)
		d.Sent = []byte(`{"text":"New request req_1"}`)
	}
	if strings.HasSuffix(id, "_waiting") { // parked behind its key's head, dlv_1
		next, head := goldenTime.Add(time.Hour), "dlv_1"
		d.State, d.Attempts, d.LastStatus, d.NextAttemptAt, d.WaitingBehind = "pending", 0, nil, &next, &head
		return d, []byte(`{"id":"whk_1","event":"request.created","timestamp":"2024-01-15T14:30:00Z","data":{"id":"req_1"}}`), nil, nil
	}
	attempts := []journal.Attempt{
		{Attempt: 1, At: goldenTime, Trigger: "auto", StatusCode: &status, DurationMS: 40, ResponseBody: []byte("\xff\xfe down"), ErrorClass: &class, Error: &msg,
			Instance: &instance},
		{Attempt: 2, At: goldenTime.Add(time.Minute), Trigger: "manual", DurationMS: 7, ResponseBody: []byte(`{"ok":true}`)},
	}
	body := []byte(`{"id":"whk_1","event":"request.created","timestamp":"2024-01-15T14:30:00Z","data":{"id":"req_1"}}`)
	if strings.HasSuffix(id, "_raw") {
		body = []byte("not json \xff")
	}
	if strings.HasSuffix(id, "_exact") { // TestPayloadAsSent
		body, d.Sent = []byte(exactBody), []byte(exactBody)
	}
	return d, body, attempts, nil
}

func (fullHistory) Backlogs(context.Context) (map[string]journal.Backlog, error) {
	return map[string]journal.Backlog{"crm": {Pending: 2, Failed: 1, Held: 3, BlockedKeys: 2, OldestBlocked: goldenTime.Add(-time.Hour),
		OldestBlockedKey: "req_1", OldestBlockedHead: "dlv_1"}}, nil
}

// WaitedBehind answers one more id than the API shows, so the golden
// file shows a cut list.
func (fullHistory) WaitedBehind(_ context.Context, id string, limit int) ([]string, error) {
	var ids []string
	for i := range limit {
		ids = append(ids, fmt.Sprintf("dlv_%d", i+3))
	}
	return ids, nil
}

// fullManager answers the runtime subscriptions' endpoints with every
// field set; crm is config.yaml's (409), a url starting with http:// has
// problems.
type fullManager struct{}

func (fullManager) sub(id string) api.Subscription {
	return api.Subscription{ID: id, URL: "https://billing.example.com/hook", Events: []string{"request.*"}, Active: true, State: "healthy", Format: "dzdesk", Method: "POST", Traceparent: true,
		Stats: api.Stats{SuccessRate: -1}, Ordering: "none", Source: "runtime", Description: "Billing's mirror"}
}

func (m fullManager) CreateSubscription(_ context.Context, in api.SubscriptionInput, _ string) (api.CreatedSubscription, error) {
	if in.URL != nil && strings.HasPrefix(*in.URL, "http://") {
		return api.CreatedSubscription{}, &ValidationError{Problems: []api.FieldProblem{
			{Field: "url", Problem: "must be https (delivery.allow_insecure_http is false)"},
			{Field: "events[1]", Problem: `"nope.nope" is not an event of the catalog`}}}
	}
	return api.CreatedSubscription{Subscription: m.sub(*in.ID), Secret: "whsec_Z29sZGVuLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVmZ2g="}, nil
}

func (m fullManager) UpdateSubscription(_ context.Context, id string, _ api.SubscriptionInput, _ string) (api.Subscription, error) {
	if id == "crm" {
		return api.Subscription{}, &ConflictError{Message: `subscription "crm" is defined in config.yaml: change or delete it there`}
	}
	return m.sub(id), nil
}

func (fullManager) DeleteSubscription(_ context.Context, id, _ string) (api.Deleted, error) {
	if id == "ghost" {
		return api.Deleted{}, ErrNotFound
	}
	return api.Deleted{ID: id, Cancelled: 4}, nil
}

func (fullManager) RotateSecret(context.Context, string, api.SecretRotation, string) (api.RotatedSecret, error) {
	return api.RotatedSecret{Secret: "whsec_bmV3LWdvbGRlbi1zZWNyZXQtMDEyMzQ1Njc4OWFiY2Q=", PreviousValidUntil: goldenTime.Add(24 * time.Hour),
		SignatureSwitchAt: goldenTime.Add(24 * time.Hour)}, nil
}

func (fullManager) Record(context.Context, string, string, string, []string) error { return nil }
func (fullManager) CanCreate() error                                               { return nil }

func (fullManager) Audit(context.Context, int, string) (api.AuditPage, error) {
	return api.AuditPage{Entries: []api.AuditEntry{
		{ID: 8, At: goldenTime.Add(time.Minute), Action: "rotate", Subscription: "billing", Fields: []string{"secret"}, Client: "192.0.2.1"},
		{ID: 7, At: goldenTime, Action: "pause", Subscription: "crm", Client: "2001:db8::1"},
	}, NextCursor: "7"}, nil
}

// TestAPIGolden pins every answer of the admin API, byte for byte, in
// testdata/api.golden: the CLI, the dashboard's JavaScript and scripts
// of operators read these names and shapes. go test -update rewrites it.
func TestAPIGolden(t *testing.T) {
	cat, err := catalog.New(catalog.Event{Name: "order.shipped", Description: "An order left the warehouse."})
	if err != nil {
		t.Fatal(err)
	}
	srv := newChecked(t, Config{
		Token: "t", Deliverer: fullDeliverer{}, History: fullHistory{}, Manager: fullManager{}, Catalog: cat,
		Sample: func(eventType string) (fanout.Event, error) {
			return fanout.Event{ID: "whk_test_1", Type: eventType, Body: []byte(`{}`)}, nil
		},
		Ready:  func(context.Context) error { return errors.New("the journal is not reachable") },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	var got bytes.Buffer
	for _, tc := range []struct {
		method, path, token, body string
		into                      any // the api type of the answer
	}{
		{"GET", "/healthz", "", "", &api.Health{}},
		{"GET", "/readyz", "", "", &api.Health{}},
		{"GET", "/v1/events", "t", "", &api.EventList{}},
		{"GET", "/v1/subscriptions", "t", "", &api.SubscriptionList{}},
		{"GET", "/v1/subscriptions/crm", "t", "", &api.Subscription{}},
		{"GET", "/v1/deliveries?limit=2", "t", "", &api.DeliveryList{}},
		{"GET", "/v1/deliveries?cursor=last", "t", "", &api.DeliveryList{}},
		{"GET", "/v1/deliveries/dlv_1", "t", "", &api.DeliveryDetail{}},
		{"GET", "/v1/deliveries/dlv_1_raw", "t", "", &api.DeliveryDetail{}},
		{"GET", "/v1/deliveries/dlv_3_waiting", "t", "", &api.DeliveryDetail{}},
		{"POST", "/v1/deliveries/dlv_1/retry", "t", "", &api.AttemptReport{}},
		{"POST", "/v1/subscriptions/crm/retry-failed?since=2h", "t", "", &api.RetryFailedResponse{}},
		{"POST", "/v1/subscriptions/crm/test", "t", `{"event":"order.shipped"}`, &api.AttemptReport{}},
		{"POST", "/v1/subscriptions/crm/pause", "t", "", &api.PauseResponse{}},
		{"POST", "/v1/subscriptions/crm/resume", "t", "", &api.ResumeResponse{}},
		{"POST", "/v1/subscriptions", "t", `{"id":"billing","url":"https://billing.example.com/hook","events":["request.*"]}`, &api.CreatedSubscription{}},
		{"POST", "/v1/subscriptions", "t", `{"url":"http://billing.example.com/hook","events":["request.*","nope.nope"]}`, &api.ValidationErrors{}},
		{"PATCH", "/v1/subscriptions/billing", "t", `{"description":"Billing's mirror"}`, &api.Subscription{}},
		{"PATCH", "/v1/subscriptions/billing", "t", `{"id":"b2","secret":"x"}`, &api.ValidationErrors{}},
		{"PATCH", "/v1/subscriptions/crm", "t", `{"active":false}`, &api.Error{}},
		{"POST", "/v1/subscriptions/billing/secret", "t", `{"overlap":"24h"}`, &api.RotatedSecret{}},
		{"DELETE", "/v1/subscriptions/billing", "t", "", &api.Deleted{}},
		{"DELETE", "/v1/subscriptions/ghost", "t", "", &api.Error{}},
		{"GET", "/v1/audit?limit=2", "t", "", &api.AuditPage{}},
		{"GET", "/v1/deliveries/dlv_missing", "t", "", &api.Error{}},
		{"GET", "/v1/deliveries?limit=0", "t", "", &api.Error{}},
		{"GET", "/v1/subscriptions", "", "", &api.Error{}},
		{"DELETE", "/v1/subscriptions", "t", "", &api.Error{}},
		{"PUT", "/v1/subscriptions/crm", "t", "", &api.Error{}},
	} {
		req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		fmt.Fprintf(&got, "%s %s\n%d %s\n%s\n", tc.method, tc.path, rec.Code, rec.Header().Get("Content-Type"), rec.Body)

		// A client decoding into the api type loses nothing: every key
		// is a field of the type, and encoding it again gives the same
		// bytes.
		dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(tc.into); err != nil {
			t.Errorf("%s %s: decoding into %T: %v", tc.method, tc.path, tc.into, err)
			continue
		}
		var again bytes.Buffer
		enc := json.NewEncoder(&again)
		enc.SetEscapeHTML(false) // as writeJSON
		_ = enc.Encode(tc.into)
		if again.String() != rec.Body.String() {
			t.Errorf("%s %s: %T encodes as\n%s, the server answered\n%s", tc.method, tc.path, tc.into, again.Bytes(), rec.Body)
		}
	}
	golden := filepath.Join("testdata", "api.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("the API's answers differ from %s (go test -update rewrites it, if the change is meant):\n%s", golden, got.Bytes())
	}
}
