package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/journal"
)

// spyManagerState is what spyManager was called with, and what it
// answers: err for every call but Record, recordErr for Record.
type spyManagerState struct {
	err, recordErr error
	createErr      error // CanCreate's answer
	id, client     string
	input          api.SubscriptionInput
	rotation       api.SecretRotation
	limit          int
	cursor         string
	records        []string // "action subscription client fields"
}

// spyManager is a Manager that records its calls in the spy.
type spyManager struct{ s *spy }

const spySecret = "whsec_c3B5LXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm"

func (m spyManager) call(name, id, client string) error {
	m.s.calls = append(m.s.calls, name)
	m.s.m.id, m.s.m.client = id, client
	return m.s.m.err
}

func (m spyManager) CanCreate() error { return m.s.m.createErr }

func (m spyManager) CreateSubscription(_ context.Context, in api.SubscriptionInput, client string) (api.CreatedSubscription, error) {
	m.s.m.input = in
	id := "wh_generated1"
	if in.ID != nil {
		id = *in.ID
	}
	if err := m.call("CreateSubscription", id, client); err != nil {
		return api.CreatedSubscription{}, err
	}
	return api.CreatedSubscription{Subscription: runtimeSubscription(id), Secret: spySecret}, nil
}

func (m spyManager) UpdateSubscription(_ context.Context, id string, in api.SubscriptionInput, client string) (api.Subscription, error) {
	m.s.m.input = in
	if err := m.call("UpdateSubscription", id, client); err != nil {
		return api.Subscription{}, err
	}
	return runtimeSubscription(id), nil
}

func (m spyManager) DeleteSubscription(_ context.Context, id, client string) (api.Deleted, error) {
	if err := m.call("DeleteSubscription", id, client); err != nil {
		return api.Deleted{}, err
	}
	return api.Deleted{ID: id, Cancelled: 3}, nil
}

func (m spyManager) RotateSecret(_ context.Context, id string, in api.SecretRotation, client string) (api.RotatedSecret, error) {
	m.s.m.rotation = in
	if err := m.call("RotateSecret", id, client); err != nil {
		return api.RotatedSecret{}, err
	}
	return api.RotatedSecret{Secret: spySecret, PreviousValidUntil: goldenTime, SignatureSwitchAt: goldenTime}, nil
}

func (m spyManager) Record(_ context.Context, action, subscription, client string, fields []string) error {
	m.s.calls = append(m.s.calls, "Record")
	m.s.m.records = append(m.s.m.records, fmt.Sprintf("%s %s %s %v", action, subscription, client, fields))
	return m.s.m.recordErr
}

func (m spyManager) Audit(_ context.Context, limit int, cursor string) (api.AuditPage, error) {
	m.s.m.limit, m.s.m.cursor = limit, cursor
	if err := m.call("Audit", "", ""); err != nil {
		return api.AuditPage{}, err
	}
	if cursor == "empty" {
		return api.AuditPage{}, nil
	}
	return api.AuditPage{Entries: []api.AuditEntry{{ID: 7, At: goldenTime, Action: "create", Subscription: "crm", Fields: []string{"events", "url"}, Client: "192.0.2.1"}}, NextCursor: "7"}, nil
}

// send sends a request with the token from the address 192.0.2.1 (and an
// X-Forwarded-For that must be ignored), and returns the recorder.
func send(t *testing.T, srv http.Handler, method, target, body string) *httptest.ResponseRecorder {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	req.RemoteAddr = "192.0.2.1:51234"
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	req.Header.Set("Authorization", "Bearer t")
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	checkAnswer(t, method+" "+target, rec)
	return rec
}

// decodeStrict decodes an answer into its api type, refusing keys the
// type lacks.
func decodeStrict(t *testing.T, rec *httptest.ResponseRecorder, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decoding %s into %T: %v", rec.Body, v, err)
	}
}

func ptr[T any](v T) *T { return &v }

// TestCreateSubscription: POST /v1/subscriptions hands the body to the
// Manager with the connection's address (not X-Forwarded-For) and answers
// 201 with the subscription, its secret and its Location.
func TestCreateSubscription(t *testing.T) {
	srv, s := newSpyServer(t)
	rec := send(t, srv, "POST", "/v1/subscriptions", `{"id":"billing","url":"https://billing.example.com/hook","events":["request.*"],
		"active":false,"queue_while_inactive":true,"filter":"true","headers":{"X-Team":"billing"},"standard_webhooks":true,
		"ordering":"entity","description":"Billing's mirror"}`)
	if rec.Code != http.StatusCreated || rec.Header().Get("Location") != "/v1/subscriptions/billing" {
		t.Fatalf("create: %d, Location %q, want 201 and /v1/subscriptions/billing: %s", rec.Code, rec.Header().Get("Location"), rec.Body)
	}
	var out api.CreatedSubscription
	decodeStrict(t, rec, &out)
	if out.ID != "billing" || out.Secret != spySecret || out.Source != "runtime" {
		t.Errorf("create answered %+v, want billing with its secret", out)
	}
	want := api.SubscriptionInput{ID: ptr("billing"), URL: ptr("https://billing.example.com/hook"), Events: ptr([]string{"request.*"}),
		Active: ptr(false), QueueWhileInactive: ptr(true), Filter: ptr("true"), Headers: ptr(map[string]string{"X-Team": "billing"}),
		StandardWebhooks: ptr(true), Ordering: ptr("entity"), Description: ptr("Billing's mirror")}
	if !reflect.DeepEqual(s.m.input, want) {
		t.Errorf("the Manager got %+v, want %+v", s.m.input, want)
	}
	if s.m.client != "192.0.2.1" {
		t.Errorf("client %q, want the connection's host 192.0.2.1 (X-Forwarded-For is not trusted)", s.m.client)
	}

	// Without an id, the Manager's is in the Location.
	srv, _ = newSpyServer(t)
	rec = send(t, srv, "POST", "/v1/subscriptions", `{"url":"https://x.example.com","events":["*"]}`)
	if rec.Code != http.StatusCreated || rec.Header().Get("Location") != "/v1/subscriptions/wh_generated1" {
		t.Errorf("create without id: %d, Location %q", rec.Code, rec.Header().Get("Location"))
	}
}

// TestUpdateSubscription: PATCH hands the fields given to the Manager;
// a body with id or secret is a 400 naming each (the secret changes by
// rotation), as are a body without fields and a field given as null, and
// none reaches the Manager.
func TestUpdateSubscription(t *testing.T) {
	srv, s := newSpyServer(t)
	rec := send(t, srv, "PATCH", "/v1/subscriptions/billing", `{"events":["request.created"],"active":false}`)
	var out api.Subscription
	if rec.Code != http.StatusOK {
		t.Fatalf("patch: %d %s", rec.Code, rec.Body)
	}
	decodeStrict(t, rec, &out)
	want := api.SubscriptionInput{Events: ptr([]string{"request.created"}), Active: ptr(false)}
	if out.ID != "billing" || s.m.id != "billing" || s.m.client != "192.0.2.1" || !reflect.DeepEqual(s.m.input, want) {
		t.Errorf("patch: answered %+v; the Manager got %q %q %+v", out, s.m.id, s.m.client, s.m.input)
	}

	for _, tc := range []struct {
		body   string
		fields []string
	}{
		{`{"id":"other"}`, []string{"id"}},
		{`{"id":"billing","url":"https://x.example.com"}`, []string{"id"}}, // even its own
		{`{"secret":"` + spySecret + `"}`, []string{"secret"}},
		{`{"secret":"` + spySecret + `","id":"x","active":true}`, []string{"id", "secret"}},
	} {
		srv, s := newSpyServer(t)
		rec := send(t, srv, "PATCH", "/v1/subscriptions/billing", tc.body)
		var got api.ValidationErrors
		if rec.Code != http.StatusBadRequest {
			t.Errorf("PATCH %s: %d %s, want 400", tc.body, rec.Code, rec.Body)
			continue
		}
		decodeStrict(t, rec, &got)
		var fields []string
		for _, p := range got.Errors {
			fields = append(fields, p.Field)
		}
		if !reflect.DeepEqual(fields, tc.fields) || len(s.calls) != 0 {
			t.Errorf("PATCH %s: fields %v, calls %v; want %v and nothing called", tc.body, fields, s.calls, tc.fields)
		}
		if strings.Contains(rec.Body.String(), spySecret) {
			t.Errorf("PATCH %s: the answer shows the secret: %s", tc.body, rec.Body)
		}
	}
	for body, names := range map[string]string{`{}`: "no field to change", `{"filter":null}`: `"filter" is null`} {
		srv, s := newSpyServer(t)
		if code, msg := do(t, srv, "PATCH", "/v1/subscriptions/billing", strings.NewReader(body)); code != 400 || !strings.Contains(msg, names) || len(s.calls) != 0 {
			t.Errorf("PATCH %s: %d %q, calls %v; want 400 naming %q", body, code, msg, s.calls, names)
		}
	}
}

func TestDeleteSubscription(t *testing.T) {
	srv, s := newSpyServer(t)
	rec := send(t, srv, "DELETE", "/v1/subscriptions/billing", "")
	var out api.Deleted
	if rec.Code != http.StatusOK {
		t.Fatalf("delete: %d %s", rec.Code, rec.Body)
	}
	decodeStrict(t, rec, &out)
	if out != (api.Deleted{ID: "billing", Cancelled: 3}) || s.m.id != "billing" || s.m.client != "192.0.2.1" {
		t.Errorf("delete: %+v; the Manager got %q from %q", out, s.m.id, s.m.client)
	}
}

// TestRotateSecret: no body is every default; a body's fields reach the
// Manager as given.
func TestRotateSecret(t *testing.T) {
	for body, want := range map[string]api.SecretRotation{
		"":   {},
		"\n": {},
		"{}": {},
		`{"secret":"new-secret-0123456789abcdef","overlap":"1h","activate":"now"}`: {Secret: ptr("new-secret-0123456789abcdef"), Overlap: ptr("1h"), Activate: ptr("now")},
	} {
		srv, s := newSpyServer(t)
		rec := send(t, srv, "POST", "/v1/subscriptions/billing/secret", body)
		if rec.Code != http.StatusOK {
			t.Errorf("rotate with %q: %d %s", body, rec.Code, rec.Body)
			continue
		}
		var out api.RotatedSecret
		decodeStrict(t, rec, &out)
		if out.Secret != spySecret || !out.SignatureSwitchAt.Equal(goldenTime) || !reflect.DeepEqual(s.m.rotation, want) || s.m.id != "billing" {
			t.Errorf("rotate with %q: %+v; the Manager got %+v for %q", body, out, s.m.rotation, s.m.id)
		}
	}
}

func TestAudit(t *testing.T) {
	for _, tc := range []struct {
		query  string
		limit  int
		cursor string
		n      int
	}{
		{"", defaultLimit, "", 1},
		{"?limit=5&cursor=7", 5, "7", 1},
		{"?cursor=empty", defaultLimit, "empty", 0},
	} {
		srv, s := newSpyServer(t)
		rec := send(t, srv, "GET", "/v1/audit"+tc.query, "")
		var out api.AuditPage
		if rec.Code != http.StatusOK {
			t.Fatalf("audit%s: %d %s", tc.query, rec.Code, rec.Body)
		}
		decodeStrict(t, rec, &out)
		if s.m.limit != tc.limit || s.m.cursor != tc.cursor || len(out.Entries) != tc.n || !strings.Contains(rec.Body.String(), `"entries":[`) {
			t.Errorf("audit%s: the Manager got limit %d cursor %q, answered %s", tc.query, s.m.limit, s.m.cursor, rec.Body)
		}
	}
}

// TestManagerErrors maps the Manager's errors, on every route that calls
// it: a *ValidationError is a 400 listing every problem with its field,
// a *ConflictError a 409 with its message, ErrNotFound a 404 naming the
// id, a bad cursor a 400, a timeout or an unreachable journal a 503.
func TestManagerErrors(t *testing.T) {
	routes := []struct{ method, target, body string }{
		{"POST", "/v1/subscriptions", `{"url":"http://x","events":["nope"]}`},
		{"PATCH", "/v1/subscriptions/billing", `{"url":"http://x"}`},
		{"DELETE", "/v1/subscriptions/billing", ""},
		{"POST", "/v1/subscriptions/billing/secret", `{"overlap":"forever"}`},
		{"GET", "/v1/audit", ""},
	}
	problems := []api.FieldProblem{
		{Field: "url", Problem: "must be https (delivery.allow_insecure_http is false)"},
		{Field: "events[0]", Problem: `"nope" is not an event of the catalog`},
		{Field: "filter", Problem: "does not compile: undeclared reference to 'x'"},
	}
	for _, r := range routes {
		what := r.method + " " + r.target
		// Several problems: every one, with its field.
		srv, s := newSpyServer(t)
		s.m.err = fmt.Errorf("validate: %w", &ValidationError{Problems: problems})
		rec := send(t, srv, r.method, r.target, r.body)
		var ve api.ValidationErrors
		if rec.Code != http.StatusBadRequest {
			t.Errorf("%s with a ValidationError: %d %s, want 400", what, rec.Code, rec.Body)
		} else if decodeStrict(t, rec, &ve); !reflect.DeepEqual(ve.Errors, problems) || !strings.HasPrefix(ve.Message, "3 problems: url: must be https") {
			t.Errorf("%s with a ValidationError: %s", what, rec.Body)
		}

		for _, tc := range []struct {
			err  error
			code int
			msg  string
		}{
			{&ConflictError{Message: `subscription "billing" is defined in config.yaml`}, 409, `"billing" is defined in config.yaml`},
			{fmt.Errorf("update: %w", ErrNotFound), 404, "no such subscription"},
			{io.ErrUnexpectedEOF, 503, "could not be reached"},
		} {
			srv, s := newSpyServer(t)
			s.m.err = tc.err
			rec := send(t, srv, r.method, r.target, r.body)
			var e api.Error
			decodeStrict(t, rec, &e)
			if rec.Code != tc.code || !strings.Contains(e.Message, tc.msg) {
				t.Errorf("%s with %v: %d %q, want %d with %q", what, tc.err, rec.Code, e.Message, tc.code, tc.msg)
			}
			if tc.code == 404 && strings.Contains(r.target, "billing") && !strings.Contains(e.Message, `"billing"`) {
				t.Errorf("%s: 404 %q does not name the subscription", what, e.Message)
			}
		}
		// A timeout: 503; a change may have been made.
		srv, s = newSpyServer(t)
		s.m.err = fmt.Errorf("write: %w", context.DeadlineExceeded)
		req := httptest.NewRequest(r.method, r.target, strings.NewReader(r.body))
		req.Header.Set("Authorization", "Bearer t")
		rec = httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "timed out") {
			t.Errorf("%s timing out: %d %s, want 503 timed out", what, rec.Code, rec.Body)
		}
	}
	srv, s := newSpyServer(t)
	s.m.err = journal.ErrBadCursor
	if code, msg := do(t, srv, "GET", "/v1/audit?cursor=zz", nil); code != 400 || !strings.Contains(msg, "cursor") {
		t.Errorf("audit with a bad cursor: %d %q, want 400 naming cursor", code, msg)
	}
}

// TestBodiesOfChanges: the bodies of create, change and rotate are read
// as /test's is: at most 16 KiB (413), one object of UTF-8 text, no
// unknown field, no null; and none of them reaches the Manager.
func TestBodiesOfChanges(t *testing.T) {
	big := `{"secret":"` + strings.Repeat("x", maxBody) + `"}`
	for target, field := range map[string]string{
		"POST /v1/subscriptions":                "filter",
		"PATCH /v1/subscriptions/billing":       "filter",
		"POST /v1/subscriptions/billing/secret": "overlap",
	} {
		method, path, _ := strings.Cut(target, " ")
		for _, tc := range []struct {
			body  string
			code  int
			names string
		}{
			{big, 413, "too large"},
			{`null`, 400, "not a JSON object"},
			{`[]`, 400, "not a JSON object"},
			{`{"` + field + `":"1h"} {}`, 400, "more after the JSON object"},
			{`{"` + field + `":"1h","colour":"red"}`, 400, `unknown field "colour"`},
			{`{"` + field + `":1}`, 400, field},
			{`{"` + field + "\":\"1h\xff\xfe\"}", 400, "not valid UTF-8 at offset"},
		} {
			srv, s := newSpyServer(t)
			code, msg := do(t, srv, method, path, strings.NewReader(tc.body))
			if code != tc.code || !strings.Contains(msg, "body") || !strings.Contains(msg, tc.names) || len(s.calls) != 0 {
				t.Errorf("%s %s: %d %q, calls %v; want %d naming %q and nothing called", target, clip(tc.body), code, clip(msg), s.calls, tc.code, tc.names)
			}
		}
	}
	// create needs a body; rotate does not.
	srv, s := newSpyServer(t)
	if code, msg := do(t, srv, "POST", "/v1/subscriptions", nil); code != 400 || !strings.Contains(msg, "body") || len(s.calls) != 0 {
		t.Errorf("create without a body: %d %q", code, msg)
	}
}

// TestPauseResumeAudited: pause and resume, once done, are in the audit
// trail with the client's address; a trail that cannot be written is
// logged, and the answer is the pause's.
func TestPauseResumeAudited(t *testing.T) {
	srv, s := newSpyServer(t)
	for _, verb := range []string{"pause", "resume"} {
		if rec := send(t, srv, "POST", "/v1/subscriptions/crm/"+verb, ""); rec.Code != 200 {
			t.Fatalf("%s: %d %s", verb, rec.Code, rec.Body)
		}
	}
	want := []string{"pause crm 192.0.2.1 []", "resume crm 192.0.2.1 []"}
	if !reflect.DeepEqual(s.m.records, want) {
		t.Errorf("audit records %q, want %q", s.m.records, want)
	}

	cat, err := catalog.New()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	s = &spy{}
	s.m.recordErr = errors.New("journal down")
	srv = newChecked(t, Config{Token: "t", Deliverer: spyDeliverer{checkedDeliverer{t: t, cat: cat}, s}, History: spyHistory{checkedHistory{t: t, cat: cat}, s},
		Manager: spyManager{s}, Catalog: cat, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if rec := send(t, srv, "POST", "/v1/subscriptions/crm/pause", ""); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"paused":true`) {
		t.Errorf("pause with the trail down: %d %s, want 200", rec.Code, rec.Body)
	}
	if !strings.Contains(logs.String(), "audit trail not written") || !strings.Contains(logs.String(), "journal down") {
		t.Errorf("the failed record is not logged: %q", logs.String())
	}

	// A pause that fails is not recorded.
	srv, s = newSpyServer(t)
	if code, _ := do(t, srv, "POST", "/v1/subscriptions/ghost/pause", nil); code != 404 || len(s.m.records) != 0 {
		t.Errorf("pause of an unknown subscription: %d, records %q", code, s.m.records)
	}
}

// TestNoManager: without a Manager, the endpoints of runtime
// subscriptions answer 501 saying so; pause and resume work, unrecorded.
func TestNoManager(t *testing.T) {
	cat, err := catalog.New()
	if err != nil {
		t.Fatal(err)
	}
	s := &spy{}
	srv := newChecked(t, Config{Token: "t", Deliverer: spyDeliverer{checkedDeliverer{t: t, cat: cat}, s}, History: spyHistory{checkedHistory{t: t, cat: cat}, s},
		Catalog: cat, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	for _, r := range []struct{ method, target, body string }{
		{"POST", "/v1/subscriptions", `{"url":"https://x.example.com","events":["*"]}`},
		{"PATCH", "/v1/subscriptions/crm", `{"active":false}`},
		{"DELETE", "/v1/subscriptions/crm", ""},
		{"POST", "/v1/subscriptions/crm/secret", ""},
		{"GET", "/v1/audit", ""},
	} {
		req := httptest.NewRequest(r.method, r.target, strings.NewReader(r.body))
		req.Header.Set("Authorization", "Bearer t")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code != http.StatusNotImplemented || !strings.Contains(rec.Body.String(), "runtime subscriptions are not available") {
			t.Errorf("%s %s without a Manager: %d %s, want 501", r.method, r.target, rec.Code, rec.Body)
		}
	}
	if code, msg := do(t, srv, "POST", "/v1/subscriptions/crm/pause", nil); code != 200 {
		t.Errorf("pause without a Manager: %d %q", code, msg)
	}
}

// TestCanCreate: GET /v1/subscriptions says whether a subscription can
// be created, and why not (the Manager's refusal, no secrets key; no
// Manager), so the dashboard does not offer a form whose Save is refused.
func TestCanCreate(t *testing.T) {
	refusing := &spy{}
	refusing.m.createErr = &ConflictError{Message: "set secrets.key"}
	for _, tc := range []struct {
		what    string
		manager Manager
		want    string
	}{
		{"a Manager that can", spyManager{&spy{}}, `"can_create":true}`},
		{"a Manager that cannot", spyManager{refusing}, `"can_create":false,"cannot_create":"set secrets.key"}`},
		{"no Manager", nil, `"can_create":false,"cannot_create":"` + errNoManager + `"}`},
	} {
		srv := newChecked(t, Config{Token: "t", Deliverer: fullDeliverer{}, History: fullHistory{}, Manager: tc.manager,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if rec := send(t, srv, "GET", "/v1/subscriptions", ""); rec.Code != 200 || !strings.HasSuffix(strings.TrimSpace(rec.Body.String()), tc.want) {
			t.Errorf("GET /v1/subscriptions with %s: %d %s, want it to end %s", tc.what, rec.Code, rec.Body, tc.want)
		}
	}
}

// TestSecretsNotShown: the secret is in the creation's and the
// rotation's answers only: not in any other answer, nor in the log, even
// when the request that carried it is refused.
func TestSecretsNotShown(t *testing.T) {
	const secret = "my-very-secret-value-0123456789"
	cat, err := catalog.New()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	for _, r := range []struct{ method, target, body string }{
		{"POST", "/v1/subscriptions", `{"url":"https://x.example.com","events":["*"],"secret":"` + secret + `","bogus":1}`},
		{"POST", "/v1/subscriptions", `{"url":"https://x.example.com","events":["*"],"secret":"` + secret + `"`},
		{"POST", "/v1/subscriptions", `{"url":"https://x.example.com","events":["*"],"secret":"` + secret + `"}`},
		{"PATCH", "/v1/subscriptions/billing", `{"secret":"` + secret + `"}`},
		{"POST", "/v1/subscriptions/billing/secret", `{"secret":"` + secret + `"}`},
		{"POST", "/v1/subscriptions/billing/secret", `{"secret":"` + secret + `","overlap":1}`},
	} {
		for _, mErr := range []error{nil, io.ErrUnexpectedEOF, &ValidationError{Problems: []api.FieldProblem{{Field: "secret", Problem: "at least 16 bytes"}}}} {
			s := &spy{}
			s.m.err = mErr
			srv := newChecked(t, Config{Token: "t", Deliverer: spyDeliverer{checkedDeliverer{t: t, cat: cat}, s}, History: spyHistory{checkedHistory{t: t, cat: cat}, s},
				Manager: spyManager{s}, Catalog: cat, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			rec := send(t, srv, r.method, r.target, r.body)
			if strings.Contains(rec.Body.String(), secret) {
				t.Errorf("%s %s: the answer shows the secret sent: %s", r.method, r.target, rec.Body)
			}
		}
	}
	if strings.Contains(logs.String(), secret) || strings.Contains(logs.String(), spySecret) {
		t.Errorf("the log shows a secret:\n%s", logs.String())
	}
}

// TestMethodsOfSubscriptionPaths: a method a path lacks is a 405 naming
// every method it has.
func TestMethodsOfSubscriptionPaths(t *testing.T) {
	srv, _ := newSpyServer(t)
	for target, allow := range map[string]string{
		"PUT /v1/subscriptions/crm":        "GET, PATCH, DELETE",
		"DELETE /v1/subscriptions":         "GET, POST",
		"GET /v1/subscriptions/crm/secret": "POST",
		"POST /v1/audit":                   "GET",
	} {
		method, path, _ := strings.Cut(target, " ")
		req := httptest.NewRequest(method, path, nil)
		req.Header.Set("Authorization", "Bearer t")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != allow {
			t.Errorf("%s: %d, Allow %q, want 405 and %q: %s", target, rec.Code, rec.Header().Get("Allow"), allow, rec.Body)
		}
	}
}
