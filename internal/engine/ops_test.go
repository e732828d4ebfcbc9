package engine

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/admin"
	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
	"github.com/dzdesk/dzhook/schemas"
	"github.com/dzdesk/dzhook/signer"
)

const adminToken = "admin-token-for-tests-0123456789"

const adminSection = "admin:\n  listen: 127.0.0.1:0\n  token: " + adminToken + "\n"

// adminClient calls the admin API of an engine.
type adminClient struct {
	t    *testing.T
	base string
}

func newAdminClient(t *testing.T, e *Engine) *adminClient {
	return &adminClient{t: t, base: "http://" + e.AdminAddr()}
}

// call returns the status and the raw answer. A string body is sent as
// it is, anything else as JSON.
func (a *adminClient) call(method, path, token string, body any) (int, []byte) {
	a.t.Helper()
	var rd io.Reader
	if s, ok := body.(string); ok {
		rd = strings.NewReader(s)
	} else if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.base+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if strings.Contains(resp.Header.Get("Content-Type"), "json") && !json.Valid(raw) {
		a.t.Fatalf("%s %s: answer is not JSON: %s", method, path, raw)
	}
	return resp.StatusCode, raw
}

// callError returns the status and the error body of an answer (an empty
// api.Error when it has none).
func (a *adminClient) callError(method, path, token string, body any) (int, api.Error, []byte) {
	a.t.Helper()
	code, raw := a.call(method, path, token, body)
	var e api.Error
	_ = json.Unmarshal(raw, &e)
	return code, e, raw
}

// answer makes a call with the right token that must answer 200, and
// decodes its answer into the api type T, refusing keys T lacks.
func answer[T any](a *adminClient, method, path string, body any) T {
	a.t.Helper()
	code, raw := a.call(method, path, adminToken, body)
	if code != http.StatusOK {
		a.t.Fatalf("%s %s: %d %s", method, path, code, raw)
	}
	var out T
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		a.t.Fatalf("%s %s: decoding into %T: %v in %s", method, path, out, err, raw)
	}
	return out
}

func TestAdminAuthAndHealth(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	e := start(t, testConfigWith(t, db, adminSection+"  metrics_public: false\n", "", sub("crm", rc.URL, "request.created")))
	a := newAdminClient(t, e)
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/v1/subscriptions", "", 401},
		{"/v1/subscriptions", "wrong", 401},
		{"/v1/subscriptions", adminToken + "x", 401},
		{"/v1/deliveries", "", 401},
		{"/metrics", "", 401},
		{"/v1/subscriptions", adminToken, 200},
		{"/metrics", adminToken, 200},
		{"/healthz", "", 200},
	} {
		if code, raw := a.call("GET", tc.path, tc.token, nil); code != tc.want {
			t.Errorf("GET %s with token %q: %d %s, want %d", tc.path, tc.token, code, raw, tc.want)
		}
	}
	testutil.Eventually(t, 10*time.Second, "/readyz 200", func() bool {
		code, _ := a.call("GET", "/readyz", "", nil)
		return code == 200
	})
	if code, e, raw := a.callError("POST", "/v1/subscriptions/crm/pause", "", nil); code != 401 || !strings.Contains(e.Message, "bearer token") {
		t.Errorf("POST without token: %d %s", code, raw)
	}
}

// cursorOf is a delivery-list cursor made as the journal makes one, with
// id as its delivery id.
func cursorOf(id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte("2024-01-01T00:00:00Z|" + id))
}

func TestAdminBadInput(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	e := start(t, testConfigWith(t, db, adminSection, "", sub("crm", rc.URL, "request.created")))
	a := newAdminClient(t, e)
	for _, tc := range []struct {
		method, path string
		body         any
		want         int
		msg          string
	}{
		{"GET", "/v1/deliveries?limit=0", nil, 400, "limit"},
		{"GET", "/v1/deliveries?limit=abc", nil, 400, "limit"},
		{"GET", "/v1/deliveries?limit=100000", nil, 400, "limit"},
		{"GET", "/v1/deliveries?status=lost", nil, 400, "status"},
		{"GET", "/v1/deliveries?event=nope.event", nil, 400, "event"},
		{"GET", "/v1/deliveries?subscription=ghost", nil, 400, "subscription"},
		{"GET", "/v1/deliveries?since=yesterday", nil, 400, "since"},
		{"GET", "/v1/deliveries?since=1h&until=2h", nil, 400, "since must be before until"},
		{"GET", "/v1/deliveries?cursor=%25%25%25", nil, 400, "cursor"},
		{"GET", "/v1/deliveries?cursor=bm90LWEtY3Vyc29y", nil, 400, "cursor"},
		// A cursor whose id is no delivery id: PostgreSQL refuses a NUL or
		// invalid UTF-8 in text, which must not make it a 503.
		{"GET", "/v1/deliveries?cursor=" + cursorOf("dlv_\x00"), nil, 400, "cursor"},
		{"GET", "/v1/deliveries?cursor=" + cursorOf("dlv_\xff\xfe"), nil, 400, "cursor"},
		{"GET", "/v1/deliveries?cursor=" + cursorOf("dlv_a\x01b"), nil, 400, "cursor"},
		{"GET", "/v1/deliveries?cursor=" + cursorOf("dlv_"), nil, 400, "cursor"},
		{"GET", "/v1/deliveries?cursor=" + cursorOf("dlv_ABC"), nil, 400, "cursor"},
		{"GET", "/v1/deliveries?bogus=1", nil, 400, "unknown parameter"},
		{"GET", "/v1/deliveries/not-an-id", nil, 400, "malformed"},
		{"GET", "/v1/deliveries/dlv_doesnotexist", nil, 404, "no such delivery"},
		{"POST", "/v1/deliveries/dlv_doesnotexist/retry", nil, 404, "no such delivery"},
		{"POST", "/v1/subscriptions/ghost/pause", nil, 404, "no such subscription"},
		{"POST", "/v1/subscriptions/Bad%20Id/pause", nil, 400, "malformed"},
		{"POST", "/v1/subscriptions/crm/test", "{not json", 400, "body"},
		{"POST", "/v1/subscriptions/crm/test", `{"event":"request.created","extra":1}`, 400, "body"},
		{"POST", "/v1/subscriptions/crm/test", `{"event":"order.lost"}`, 400, "event"},
		{"POST", "/v1/subscriptions/crm/retry-failed?since=bad", nil, 400, "since"},
		{"GET", "/v1/nothing-here", nil, 404, "no such endpoint"},
		{"DELETE", "/v1/subscriptions", nil, 405, ""},
	} {
		code, e, raw := a.callError(tc.method, tc.path, adminToken, tc.body)
		if code != tc.want || e.Message == "" || !strings.Contains(e.Message, tc.msg) {
			t.Errorf("%s %s: %d %s; want %d with %q", tc.method, tc.path, code, raw, tc.want, tc.msg)
		}
	}
}

// TestHistoryAndManualRetry: the history lists deliveries newest first
// with cursors; a delivery shows its attempts; a manual retry makes one
// attempt with trigger manual.
func TestHistoryAndManualRetry(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	up := rc.FailUntilUp(500, "down")
	e := start(t, testConfigWith(t, db, adminSection, "  retry_schedule: [0s, 1h]", sub("crm", rc.URL, "request.created")))
	a := newAdminClient(t, e)
	for i := 1; i <= 3; i++ {
		db.Exec(t, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) VALUES (%d, 'r%d', 1)`, i, i))
	}
	rc.Wait(t, 3, 20*time.Second)
	testutil.Eventually(t, 10*time.Second, "three deliveries in the history", func() bool {
		return len(answer[api.DeliveryList](a, "GET", "/v1/deliveries?subscription=crm", nil).Deliveries) == 3
	})
	page1 := answer[api.DeliveryList](a, "GET", "/v1/deliveries?limit=2", nil)
	if len(page1.Deliveries) != 2 || page1.NextCursor == "" {
		t.Fatalf("first page: %d deliveries, cursor %q", len(page1.Deliveries), page1.NextCursor)
	}
	page2 := answer[api.DeliveryList](a, "GET", "/v1/deliveries?limit=2&cursor="+page1.NextCursor, nil)
	if len(page2.Deliveries) != 1 || page2.NextCursor != "" {
		t.Fatalf("second page: %+v", page2)
	}
	newest, oldest := page1.Deliveries[0], page2.Deliveries[0]
	if newest.CreatedAt.Before(oldest.CreatedAt) {
		t.Errorf("history not newest first: %s before %s", newest.CreatedAt, oldest.CreatedAt)
	}
	if newest.State != "pending" || newest.NextAttemptAt == nil {
		t.Errorf("a failed first attempt with an hour to wait: %+v", newest)
	}
	id := newest.ID
	if got := answer[api.DeliveryList](a, "GET", "/v1/deliveries?status=pending&event=request.created&since=1h", nil).Deliveries; len(got) != 3 {
		t.Errorf("filtered list has %d deliveries, want 3", len(got))
	}

	up.Store(true)
	rep := answer[api.AttemptReport](a, "POST", "/v1/deliveries/"+id+"/retry", nil)
	if !rep.Delivered || rep.StatusCode != 200 || rep.Attempt != 2 || rep.ResponseBody != "ok" {
		t.Errorf("retry report: %+v", rep)
	}
	var detail api.DeliveryDetail
	testutil.Eventually(t, 10*time.Second, "the manual attempt in the history", func() bool {
		detail = answer[api.DeliveryDetail](a, "GET", "/v1/deliveries/"+id, nil)
		return len(detail.Attempts) == 2
	})
	first, second := detail.Attempts[0], detail.Attempts[1]
	if first.Trigger != "auto" || first.StatusCode == nil || *first.StatusCode != 500 || first.ResponseBody != "down" ||
		first.ErrorClass == nil || *first.ErrorClass != "http" {
		t.Errorf("first attempt: %+v", first)
	}
	if second.Trigger != "manual" || second.StatusCode == nil || *second.StatusCode != 200 {
		t.Errorf("second attempt: %+v", second)
	}
	// Each attempt names the instance that made it, on the wire too.
	for _, at := range detail.Attempts {
		if at.Instance != e.instance {
			t.Errorf("attempt %d made by instance %q, want %q", at.Attempt, at.Instance, e.instance)
		}
	}
	if _, raw := a.call("GET", "/v1/deliveries/"+id, adminToken, nil); !bytes.Contains(raw, []byte(`"instance":"`+e.instance+`"`)) {
		t.Errorf("the delivery's answer does not name the instance %q: %s", e.instance, raw)
	}
	if detail.Delivery.State != "delivered" {
		t.Errorf("after a successful manual retry the state is %v", detail.Delivery.State)
	}
	var payload struct {
		Event string `json:"event"`
	}
	if err := json.Unmarshal(detail.Payload, &payload); err != nil || payload.Event != "request.created" {
		t.Errorf("payload: %s", detail.Payload)
	}
}

func TestRetryFailed(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	up := rc.FailUntilUp(400, "rejected")
	e := start(t, testConfigWith(t, db, adminSection, "", sub("crm", rc.URL, "request.created")))
	a := newAdminClient(t, e)
	db.Exec(t, `INSERT INTO requests (title, requester_id) VALUES ('a', 1)`, `INSERT INTO requests (title, requester_id) VALUES ('b', 1)`)
	rc.Wait(t, 2, 20*time.Second)
	testutil.Eventually(t, 10*time.Second, "two failed deliveries", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'failed'`) == 2
	})
	up.Store(true)
	if out := answer[api.RetryFailedResponse](a, "POST", "/v1/subscriptions/crm/retry-failed?since=1h", nil); out.Scheduled != 2 || out.Held != "" {
		t.Fatalf("scheduled %v, held %q; want 2, going out now", out.Scheduled, out.Held)
	}
	if n := answer[api.RetryFailedResponse](a, "POST", "/v1/subscriptions/crm/retry-failed", nil).Scheduled; n != 0 {
		t.Errorf("a second retry-failed scheduled %v, want 0: those deliveries are already on their way", n)
	}
	rc.Wait(t, 4, 20*time.Second)
	testutil.Eventually(t, 10*time.Second, "both delivered", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`) == 2
	})
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.attempts WHERE trigger = 'manual' AND status_code = 200`); n != 2 {
		t.Errorf("%d manual attempts, want 2", n)
	}
	if n := len(rc.Requests()); n != 4 {
		t.Errorf("receiver got %d requests, want 4 (nothing sent twice)", n)
	}
}

// TestRetryFailedSaysWhatHoldsIt: a retry-failed of a subscription that
// holds its deliveries (paused by an operator, or disabled by a 410
// answer, the retry made once the receiver is fixed) answers what it
// scheduled and why it waits for the resume ("held"); it said
// "scheduled" alone while nothing went out (found by reviews). The
// resume sends them.
func TestRetryFailedSaysWhatHoldsIt(t *testing.T) {
	for _, c := range []struct {
		held   string
		status int  // the receiver's answer to the first attempt
		pause  bool // paused before the retry
	}{{"paused", 400, true}, {"disabled", 410, false}} {
		t.Run(c.held, func(t *testing.T) {
			db := newDB(t)
			rc := testutil.NewReceiver(t)
			up := rc.FailUntilUp(c.status, "no")
			e := start(t, testConfigWith(t, db, adminSection, "", sub("crm", rc.URL, "request.created")))
			a := newAdminClient(t, e)
			db.Exec(t, `INSERT INTO requests (title, requester_id) VALUES ('a', 1)`)
			rc.Wait(t, 1, 20*time.Second)
			testutil.Eventually(t, 10*time.Second, "a failed delivery", func() bool {
				return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'failed'`) == 1
			})
			up.Store(true)
			if c.pause {
				answer[api.PauseResponse](a, "POST", "/v1/subscriptions/crm/pause", nil)
			}
			if out := answer[api.RetryFailedResponse](a, "POST", "/v1/subscriptions/crm/retry-failed", nil); out.Scheduled != 1 || out.Held != c.held {
				t.Fatalf("retry-failed: scheduled %v, held %q; want 1, held %s", out.Scheduled, out.Held, c.held)
			}
			answer[api.ResumeResponse](a, "POST", "/v1/subscriptions/crm/resume", nil)
			rc.Wait(t, 2, 20*time.Second)
			testutil.Eventually(t, 10*time.Second, "delivered after the resume", func() bool {
				return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`) == 1
			})
		})
	}
}

// TestAdminUnreadableFilterActsOnNothing: against a real journal, a
// retry-failed whose filter Go's query parser would drop (a ';', a bad
// escape) or that is given twice answers 400 and changes no delivery;
// deliveries?status=failed; is a 400, not a list with delivered rows; and
// an explicit until of the zero time is a bound (it retried everything).
func TestAdminUnreadableFilterActsOnNothing(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	rc.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		if n == 1 {
			return 200, nil, "ok"
		}
		return 400, nil, "rejected"
	})
	e := start(t, testConfigWith(t, db, adminSection, "", sub("crm", rc.URL, "request.created")))
	a := newAdminClient(t, e)
	for _, title := range []string{"a", "b", "c"} {
		db.Exec(t, `INSERT INTO requests (title, requester_id) VALUES ('`+title+`', 1)`)
	}
	rc.Wait(t, 3, 20*time.Second)
	testutil.Eventually(t, 10*time.Second, "one delivered and two failed deliveries", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'failed'`) == 2 &&
			queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`) == 1
	})
	conn := db.Connect(t)
	snapshot := func() string { // every delivery's id, state and last change
		t.Helper()
		var s string
		if err := conn.QueryRow(context.Background(), `SELECT string_agg(id || ' ' || state || ' ' || updated_at::text, ', ' ORDER BY id) FROM dzhook.deliveries`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := snapshot()
	for _, tc := range []struct{ query, param string }{
		{"since=2099-01-01T00:00:00Z;", "since"},
		{"since=2099-01-01T00:00:00Z%zz", "since"},
		{"since=2099-01-01T00:00:00Z&since=1h", "since"},
		{"sinse=2099-01-01T00:00:00Z", "sinse"},
	} {
		code, e, raw := a.callError("POST", "/v1/subscriptions/crm/retry-failed?"+tc.query, adminToken, nil)
		if code != 400 || !strings.Contains(e.Message, `"`+tc.param+`"`) {
			t.Errorf("retry-failed?%s: %d %s, want 400 naming %q", tc.query, code, raw, tc.param)
		}
		if after := snapshot(); after != before {
			t.Fatalf("retry-failed?%s changed deliveries:\nbefore %s\nafter  %s", tc.query, before, after)
		}
	}
	// The same filter, readable: nothing failed after 2099.
	if n := answer[api.RetryFailedResponse](a, "POST", "/v1/subscriptions/crm/retry-failed?since=2099-01-01T00:00:00Z", nil).Scheduled; n != 0 {
		t.Errorf("retry-failed?since=2099-01-01T00:00:00Z scheduled %d, want 0", n)
	}
	// The zero time as until: nothing was created before it.
	if n := answer[api.RetryFailedResponse](a, "POST", "/v1/subscriptions/crm/retry-failed?until=0001-01-01T00:00:00Z", nil).Scheduled; n != 0 {
		t.Errorf("retry-failed?until=0001-01-01T00:00:00Z scheduled %d, want 0", n)
	}
	if after := snapshot(); after != before {
		t.Fatalf("retry-failed with readable filters that match nothing changed deliveries:\nbefore %s\nafter  %s", before, after)
	}
	if got := answer[api.DeliveryList](a, "GET", "/v1/deliveries?until=0001-01-01T00:00:00Z", nil).Deliveries; len(got) != 0 {
		t.Errorf("deliveries?until=0001-01-01T00:00:00Z listed %d deliveries, want 0", len(got))
	}
	if code, e, raw := a.callError("GET", "/v1/deliveries?status=failed;", adminToken, nil); code != 400 || !strings.Contains(e.Message, `"status"`) {
		t.Errorf("deliveries?status=failed;: %d %s, want 400 naming status", code, raw)
	}
	failed := answer[api.DeliveryList](a, "GET", "/v1/deliveries?status=failed", nil).Deliveries
	if len(failed) != 2 {
		t.Errorf("deliveries?status=failed listed %d deliveries, want the 2 failed ones", len(failed))
	}
	for _, d := range failed {
		if d.State != "failed" {
			t.Errorf("deliveries?status=failed listed a %s delivery", d.State)
		}
	}
	if n := len(rc.Requests()); n != 3 {
		t.Errorf("receiver got %d requests, want 3: nothing retried", n)
	}
}

func TestSendTest(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	rc.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		if n == 1 {
			return 200, nil, "got the test"
		}
		return 503, nil, "down"
	})
	e := start(t, testConfigWith(t, db, adminSection, "", sub("crm", rc.URL, "request.*")))
	a := newAdminClient(t, e)
	rep := answer[api.AttemptReport](a, "POST", "/v1/subscriptions/crm/test", api.TestRequest{Event: "sla.warning"})
	if !rep.Delivered || rep.ResponseBody != "got the test" {
		t.Fatalf("test report: %+v", rep)
	}
	r := rc.Requests()[0]
	if err := signer.Verify(r.Header.Get(signer.HeaderSignature), r.Body, []byte(secret)); err != nil {
		t.Errorf("the test event is not signed with the subscription's secret: %v", err)
	}
	if !strings.Contains(string(r.Body), `"event":"sla.warning"`) || !strings.Contains(string(r.Body), `"timeRemaining":"2h 30m"`) {
		t.Errorf("test body: %s", r.Body)
	}
	// A failing test leaves health alone.
	if rep := answer[api.AttemptReport](a, "POST", "/v1/subscriptions/crm/test", api.TestRequest{Event: "request.created"}); rep.Delivered || rep.StatusCode != 503 {
		t.Errorf("second test report: %+v", rep)
	}
	testutil.Eventually(t, 10*time.Second, "two test deliveries journaled", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries d JOIN dzhook.attempts a ON a.delivery_id = d.id WHERE d.test AND a.trigger = 'test'`) == 2
	})
	subs := answer[api.SubscriptionList](a, "GET", "/v1/subscriptions", nil).Subscriptions
	if len(subs) != 1 {
		t.Fatalf("%d subscriptions, want 1", len(subs))
	}
	if st := subs[0]; st.State != "healthy" || st.LastFailureAt != nil {
		t.Errorf("a test send changed the subscription's health: %+v", st)
	}
}

// TestSendTestOfCustomEvents: a custom event's test carries its
// declaration's example, else the first of its schema's examples the
// schema accepts, else {"sample": true}; an event whose schema refuses
// all of them is refused (422, naming the setting to give) and nothing
// is sent: a receiver that validates was handed data the event never
// carries.
func TestSendTestOfCustomEvents(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	custom := `custom_events:
  - name: order.shipped
    schema:
      type: object
      required: [order]
      properties: {order: {type: string, pattern: "^ord_"}, weight: {type: number}}
    example: {order: ord_1, weight: 12.50}
  - name: order.paid
    schema:
      type: object
      required: [amount]
      properties: {amount: {type: number}}
      examples: [{amount: "12"}, 7, {amount: 12}]
  - name: order.lost
    schema: {type: object, required: [order]}
  - name: order.noted
`
	cfg := testConfigWith(t, db, adminSection+custom, "", sub("crm", rc.URL, "order.*"))
	set, err := cfg.Schemas()
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, cfg)
	a := newAdminClient(t, e)
	for event, want := range map[string]string{
		"order.shipped": `{"order":"ord_1","weight":12.50}`,
		"order.paid":    `{"amount":12}`,
		"order.noted":   `{"sample":true}`,
	} {
		rep := answer[api.AttemptReport](a, "POST", "/v1/subscriptions/crm/test", api.TestRequest{Event: event})
		if !rep.Delivered {
			t.Fatalf("%s: %+v", event, rep)
		}
		var body struct {
			ID   string          `json:"id"`
			Data json.RawMessage `json:"data"`
		}
		got := rc.Requests()[len(rc.Requests())-1].Body
		if err := json.Unmarshal(got, &body); err != nil || body.ID != rep.EventID {
			t.Fatalf("%s: the last arrival is not the test's: %s (%v)", event, got, err)
		}
		if string(body.Data) != want {
			t.Errorf("%s: data %s, want %s", event, body.Data, want)
		}
		if err := set.Validate(got); err != nil && !errors.Is(err, schemas.ErrNoSchema) {
			t.Errorf("%s: the test breaks the event's schema: %v", event, err)
		}
	}
	code, apiErr, raw := a.callError("POST", "/v1/subscriptions/crm/test", adminToken, api.TestRequest{Event: "order.lost"})
	if code != http.StatusUnprocessableEntity || !strings.Contains(apiErr.Message, "order.lost") || !strings.Contains(apiErr.Message, "custom_events[2].example") {
		t.Errorf("test of order.lost: %d %s, want 422 naming custom_events[2].example", code, raw)
	}
	if n := len(rc.Requests()); n != 3 {
		t.Errorf("%d arrivals, want the 3 tests that had data", n)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE test AND event_type = 'order.lost'`); n != 0 {
		t.Errorf("the refused test was journaled: %d deliveries", n)
	}
}

// TestNotificationsOncePerTransition: failing once (however many
// deliveries fail), then recovered once.
func TestNotificationsOncePerTransition(t *testing.T) {
	db := newDB(t)
	rc, admin := testutil.NewReceiver(t), testutil.NewReceiver(t)
	up := rc.FailUntilUp(503, "maintenance")
	notify := fmt.Sprintf("notify:\n  url: %s\n  secret: notify-secret-0123456789\n", admin.URL)
	start(t, testConfigWith(t, db, adminSection+notify, "  retry_schedule: [0s, 100ms]", sub("crm", rc.URL, "request.created")))
	for i := range 3 {
		db.Exec(t, fmt.Sprintf(`INSERT INTO requests (title, requester_id) VALUES ('fail %d', 1)`, i))
	}
	testutil.Eventually(t, 20*time.Second, "three exhausted deliveries", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'failed'`) == 3
	})
	admin.Wait(t, 1, 20*time.Second)
	up.Store(true)
	db.Exec(t, `INSERT INTO requests (title, requester_id) VALUES ('works again', 1)`)
	got := admin.Wait(t, 2, 20*time.Second)
	// Nothing more comes: give a third notification the time to arrive.
	time.Sleep(500 * time.Millisecond)
	got = admin.Requests()
	if len(got) != 2 {
		t.Fatalf("admin got %d notifications, want 2 (failing, recovered)", len(got))
	}
	for i, want := range []string{"subscription.failing", "subscription.recovered"} {
		var n map[string]any
		if err := json.Unmarshal(got[i].Body, &n); err != nil {
			t.Fatal(err)
		}
		if n["type"] != want || n["subscription"] != "crm" || !strings.Contains(fmt.Sprint(n["text"]), "crm") {
			t.Errorf("notification %d: %s", i, got[i].Body)
		}
		if err := signer.Verify(got[i].Header.Get(signer.HeaderSignature), got[i].Body, []byte("notify-secret-0123456789")); err != nil {
			t.Errorf("notification %d is not signed: %v", i, err)
		}
	}
	if n := map[string]any{}; json.Unmarshal(got[0].Body, &n) == nil && (n["last_status_code"] != 503.0 || n["response_excerpt"] != "maintenance") {
		t.Errorf("failing notification lacks the last status or excerpt: %s", got[0].Body)
	}
}

// TestPauseWithQueueing: a paused subscription with queue_while_inactive
// receives nothing, then its held deliveries after resume, oldest first
// (with one attempt at a time, so the order shows at the receiver). The
// pause's answer says they are held (TestPauseSurvivesRestart: skipped).
func TestPauseWithQueueing(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	e := start(t, testConfigWith(t, db, adminSection, "  concurrency: 1", sub("crm", rc.URL, "request.created", "queue_while_inactive: true")))
	a := newAdminClient(t, e)
	if out := answer[api.PauseResponse](a, "POST", "/v1/subscriptions/crm/pause", nil); !out.Paused || out.Subscription != "crm" || out.NewDeliveries != api.NewHeld {
		t.Errorf("pause: %+v", out)
	}
	for i := 1; i <= 3; i++ {
		db.Exec(t, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) VALUES (%d, 'r', 1)`, i))
	}
	testutil.Eventually(t, 10*time.Second, "three held deliveries", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'held'`) == 3
	})
	if n := len(rc.Requests()); n != 0 {
		t.Fatalf("a paused subscription received %d requests", n)
	}
	if st := answer[api.Subscription](a, "GET", "/v1/subscriptions/crm", nil); !st.Paused || st.Held != 3 {
		t.Errorf("status while paused: %+v", st)
	}
	if out := answer[api.ResumeResponse](a, "POST", "/v1/subscriptions/crm/resume", nil); out.Released != 3 || out.Paused {
		t.Errorf("resume: %+v", out)
	}
	reqs := rc.Wait(t, 3, 20*time.Second)
	for i, r := range reqs {
		if want := fmt.Sprintf(`"id":"req_%d"`, i+1); !strings.Contains(string(r.Body), want) {
			t.Errorf("held delivery %d out of order: %s", i, r.Body)
		}
	}
}

// TestPauseSurvivesRestart: pause is persisted in the journal.
func TestPauseSurvivesRestart(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := testConfigWith(t, db, adminSection, "", sub("crm", rc.URL, "request.created"))
	ctx, cancel := context.WithCancel(context.Background())
	e, err := New(ctx, cfg, Options{Logger: testutil.Logger(t), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	// Without queue_while_inactive the pause says what the journal shows
	// below: the events that arrive meanwhile are skipped.
	if out := answer[api.PauseResponse](newAdminClient(t, e), "POST", "/v1/subscriptions/crm/pause", nil); out.NewDeliveries != api.NewSkipped {
		t.Errorf("pause without queue_while_inactive: %+v, want new_deliveries %q", out, api.NewSkipped)
	}
	cancel()
	<-done
	e2 := start(t, cfg)
	if st := answer[api.Subscription](newAdminClient(t, e2), "GET", "/v1/subscriptions/crm", nil); !st.Paused {
		t.Errorf("after a restart the subscription is not paused: %+v", st)
	}
	db.Exec(t, `INSERT INTO requests (title, requester_id) VALUES ('while paused', 1)`)
	testutil.Eventually(t, 10*time.Second, "a skipped delivery", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'skipped'`) == 1
	})
}

// TestReload adds a subscription that then receives events and removes
// one that then receives none.
func TestReload(t *testing.T) {
	db := newDB(t)
	a, b := testutil.NewReceiver(t), testutil.NewReceiver(t)
	e := start(t, testConfig(t, db, "", sub("alpha", a.URL, "request.created")))
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'one', 1)`)
	a.Wait(t, 1, 20*time.Second)

	if err := e.Reload(context.Background(), testConfig(t, db, "", sub("alpha", a.URL, "request.created"), sub("beta", b.URL, "request.created"))); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (2, 'two', 1)`)
	a.Wait(t, 2, 20*time.Second)
	if reqs := b.Wait(t, 1, 20*time.Second); !strings.Contains(string(reqs[0].Body), `"id":"req_2"`) {
		t.Errorf("the added subscription got %s", reqs[0].Body)
	}

	if err := e.Reload(context.Background(), testConfig(t, db, "", sub("beta", b.URL, "request.created"))); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (3, 'three', 1)`)
	b.Wait(t, 2, 20*time.Second)
	if n := len(a.Requests()); n != 2 {
		t.Errorf("the removed subscription got %d requests, want 2 (none after its removal)", n)
	}
}

// TestReloadWholeOrNothing: a file whose mapping does not fit the source
// tables is refused whole: its new subscription does not go live, and a
// later file with the subscription and a mapping that fits applies both.
// (The subscriptions went live while the mapping was rejected, and the
// log then said the mapping took effect at the next restart, which
// refused it.)
func TestReloadWholeOrNothing(t *testing.T) {
	db := newDB(t)
	a, b := testutil.NewReceiver(t), testutil.NewReceiver(t)
	e := start(t, testConfig(t, db, "", sub("alpha", a.URL, "request.created")))
	next := testConfig(t, db, "mapping:\n  requests:\n    columns:\n      status: no_such_column\n", sub("alpha", a.URL, "request.created"), sub("beta", b.URL, "request.created"))
	err := e.Reload(context.Background(), next)
	if err == nil || !strings.Contains(err.Error(), `column "no_such_column" not found`) || !strings.Contains(err.Error(), "nothing in the file was applied") {
		t.Errorf("reload with a mapping that does not fit: %v, want it refused whole", err)
	}
	if e.dispatcher.HasSubscription("beta") {
		t.Error("the refused file's subscription went live")
	}
	db.Exec(t, `ALTER TABLE requests ADD COLUMN no_such_column text`)
	if err := e.Reload(context.Background(), next); err != nil {
		t.Fatalf("the same file once the column exists: %v", err)
	}
	if !e.dispatcher.HasSubscription("beta") {
		t.Error("the applied file's subscription is not live")
	}
}

func TestMetrics(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	e := start(t, testConfigWith(t, db, adminSection, "", sub("crm", rc.URL, "request.created")))
	db.Exec(t, `INSERT INTO requests (title, requester_id) VALUES ('x', 1)`)
	rc.Wait(t, 1, 20*time.Second)
	var body []byte
	scrape := func() {
		resp, err := http.Get("http://" + e.AdminAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	wants := []string{
		`dzhook_events_total{event="request.created"} 1`,
		`dzhook_deliveries_total{outcome="delivered",subscription="crm"} 1`,
		`dzhook_attempt_duration_seconds_count{subscription="crm"} 1`,
		`dzhook_subscription_state{state="healthy",subscription="crm"} 1`,
		`dzhook_queue_depth{subscription="crm"}`,
		`dzhook_oldest_pending_seconds{subscription="crm"}`,
		`dzhook_ordered_blocked_keys{subscription="crm"} 0`,
		`dzhook_replication_lag_bytes`,
		`dzhook_replication_durable_lsn`,
	}
	// The attempt is counted once its response is read, a moment after
	// the receiver saw the request (its series are updated one by one).
	missing := wants
	deadline := time.Now().Add(10 * time.Second)
	for len(missing) > 0 && time.Now().Before(deadline) {
		scrape()
		missing = nil
		for _, want := range wants {
			if !strings.Contains(string(body), want) {
				missing = append(missing, want)
			}
		}
		if len(missing) > 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, want := range missing {
		t.Errorf("/metrics lacks %s", want)
	}
	if strings.Contains(string(body), secret) {
		t.Error("/metrics shows the subscription secret")
	}
	// An operator's test send is no delivery of the subscription's.
	a := newAdminClient(t, e)
	if code, raw := a.call("POST", "/v1/subscriptions/crm/test", adminToken, `{"event":"request.created"}`); code != http.StatusOK {
		t.Fatalf("test send: %d %s", code, raw)
	}
	scrape()
	if want := `dzhook_attempt_duration_seconds_count{subscription="crm"} 1`; !strings.Contains(string(body), want) {
		t.Errorf("after a test send, /metrics lacks %s (the test counted as an attempt)", want)
	}
	_ = pgtest.InstallHint
}

// TestReloadChangedSubscriptionWithQueue: a subscription changed while
// deliveries wait in its queue and new ones arrive for its new self. What
// waited goes back to the journal and out once; what the new self took is
// not released from under it (which would send it twice).
func TestReloadChangedSubscriptionWithQueue(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	rc.SetRespond(func(n int, r *http.Request, body []byte) (int, http.Header, string) {
		switch {
		case n == 1:
			time.Sleep(1500 * time.Millisecond) // the old self's attempt in flight during the reload
		case strings.Contains(string(body), `"title":"new"`):
			time.Sleep(500 * time.Millisecond) // the new self's queue still full when the old one stops
		default:
			time.Sleep(50 * time.Millisecond)
		}
		return 200, nil, "ok"
	})
	delivery := "  concurrency: 1"
	cfg := testConfig(t, db, delivery, sub("alpha", rc.URL, "request.created"))
	e := start(t, cfg)
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) SELECT g, 'old', 1 FROM generate_series(1, 10) g`)
	rc.Wait(t, 1, 20*time.Second)
	reloaded := make(chan error, 1)
	go func() {
		reloaded <- e.Reload(context.Background(), testConfig(t, db, delivery, sub("alpha", rc.URL, "request.created", "headers: {X-Version: '2'}")))
	}()
	// While the old self finishes its attempt, the new self takes events.
	testutil.Eventually(t, 10*time.Second, "the new subscription running", func() bool {
		for _, s := range e.dispatcher.Subscriptions() {
			if s.ID == "alpha" {
				return true
			}
		}
		return false
	})
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) SELECT g, 'new', 1 FROM generate_series(11, 15) g`)
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
	rc.Wait(t, 15, 30*time.Second)
	testutil.Eventually(t, 20*time.Second, "every delivery journaled as delivered", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`) == 15
	})
	seen := map[string]int{}
	for _, r := range rc.Requests() {
		seen[r.Header.Get(signer.HeaderDelivery)]++
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("delivery %s sent %d times, want once", id, n)
		}
	}
	if len(seen) != 15 {
		t.Errorf("%d deliveries sent, want 15", len(seen))
	}
}

// TestSendTestDuringShutdown: a test send in flight when dzhook is told to
// stop finishes its attempt and journals it before the journal writer
// stops; the operator gets the answer.
func TestSendTestDuringShutdown(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	arrived := make(chan struct{}, 1)
	rc.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) {
		arrived <- struct{}{}
		time.Sleep(time.Second)
		return 200, nil, "ok"
	})
	e, stop := startStoppable(t, testConfig(t, db, "", sub("crm", rc.URL, "request.*")))
	testutil.Eventually(t, 20*time.Second, "dzhook ready and registered", func() bool {
		return e.Ready(context.Background()) == nil && queryInt(t, db, `SELECT count(*) FROM dzhook.instances`) == 1
	})
	type result struct {
		rep fanout.AttemptReport
		err error
	}
	got := make(chan result, 1)
	go func() {
		ev, _ := sampler(mapping.ReferencePrefixes, nil)("request.created")
		rep, err := e.dispatcher.SendTest(context.Background(), "crm", ev)
		got <- result{rep, err}
	}()
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("the test send never arrived")
	}
	stop()
	select {
	case r := <-got:
		if r.err != nil || !r.rep.Delivered {
			t.Errorf("SendTest = %+v, %v; want delivered", r.rep, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("SendTest did not return after the shutdown")
	}
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.attempts WHERE trigger = 'test' AND status_code = 200`); n != 1 {
		t.Errorf("%d test attempts journaled, want 1", n)
	}
}

// TestAPITimesInUTC: the times the API shows are in UTC whatever the
// host's zone: the journal's connections read timestamptz in UTC (pgx
// gives the host's zone, time.Local, which showed as +09:00 on a host in
// Tokyo), and a subscription's times taken from the clock are given in
// UTC. (Checked by location, not by setting time.Local: other goroutines
// read it.)
func TestAPITimesInUTC(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	rc.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) { return 500, nil, "down" })
	e := start(t, testConfigWith(t, db, adminSection, "  retry_schedule: [0s]", sub("crm", rc.URL, "request.created")))
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'one', 1)`)
	testutil.Eventually(t, 20*time.Second, "a failed delivery", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'failed'`) == 1
	})
	list, _, err := e.journal.ListDeliveries(context.Background(), journal.DeliveryFilter{Subscriptions: []string{"crm"}, Limit: 10})
	if err != nil || len(list) != 1 {
		t.Fatalf("ListDeliveries: %v, %d", err, len(list))
	}
	d := list[0]
	for what, at := range map[string]*time.Time{"created_at": &d.CreatedAt, "updated_at": &d.UpdatedAt, "last_attempt_at": d.LastAttemptAt} {
		if at == nil || at.Location() != time.UTC {
			t.Errorf("%s read from the journal: %v, want it in UTC", what, at)
		}
	}
	tokyo := time.Date(2026, 12, 7, 4, 28, 47, 0, time.FixedZone("JST", 9*3600))
	shown := admin.SubscriptionOf(fanout.SubscriptionStatus{ID: "crm", LastSuccessAt: &tokyo, LastFailureAt: &tokyo})
	if shown.LastSuccessAt.Location() != time.UTC || shown.LastFailureAt.Location() != time.UTC || !shown.LastSuccessAt.Equal(tokyo) {
		t.Errorf("a subscription's times taken from the clock: %v, %v, want %v in UTC", shown.LastSuccessAt, shown.LastFailureAt, tokyo)
	}
}

// TestSpilledAndTransformMetrics: a delivery recorded in the journal for
// want of room in memory is counted spilled (the help and the dashboard
// listed the outcome; it was never emitted, counted queued), and a
// transform that failed sent nothing, so it adds no attempt duration (its
// 0 s pulled the latency's quantiles down).
func TestSpilledAndTransformMetrics(t *testing.T) {
	db := newDB(t)
	slow := testutil.NewReceiver(t)
	slow.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) {
		time.Sleep(100 * time.Millisecond)
		return 200, nil, "ok"
	})
	broken := testutil.NewReceiver(t)
	e := start(t, testConfigWith(t, db, adminSection, "  concurrency: 1\n  queue_size: 1",
		sub("crm", slow.URL, "request.created"),
		sub("shaped", broken.URL, "request.created", `transform: '{"x": data.missing}'`)))
	for i := range 8 {
		db.Exec(t, fmt.Sprintf(`INSERT INTO requests (title, requester_id) VALUES ('r%d', 1)`, i))
	}
	slow.Wait(t, 8, 30*time.Second)
	var body string
	testutil.Eventually(t, 20*time.Second, "spilled counted, the transform's failures counted", func() bool {
		body = scrape(t, e)
		return strings.Contains(body, `dzhook_deliveries_total{outcome="spilled",subscription="crm"}`) &&
			strings.Contains(body, `dzhook_attempt_errors_total{class="transform",subscription="shaped"} 8`)
	})
	if strings.Contains(body, `dzhook_attempt_duration_seconds_count{subscription="shaped"} 8`) ||
		strings.Contains(body, `dzhook_attempts_total{code="0",subscription="shaped"}`) {
		t.Errorf("the failed transforms counted as HTTP attempts:\n%s", body)
	}
}
