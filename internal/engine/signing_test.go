package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/api/apitest"
	"github.com/dzdesk/dzhook/internal/admin"
	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/testutil"
	"github.com/dzdesk/dzhook/signer"
)

const apiToken = "tok-0123456789abcdef"

// apiServer serves e's admin API held to api/openapi.yaml (package
// apitest): every answer these tests read is checked against the
// description too.
func apiServer(t *testing.T, e *Engine, cfg *config.Config) string {
	t.Helper()
	cat, err := cfg.Catalog()
	if err != nil {
		t.Fatal(err)
	}
	set, err := cfg.Schemas()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(apitest.Handler(t, admin.New(admin.Config{Token: apiToken, Deliverer: e.dispatcher, History: e.journal,
		Catalog: cat, Sample: e.sample, Replays: e.dispatcher, Ready: e.Ready, Registry: e.metrics.Registry,
		Logger: testutil.Logger(t), Schemas: set, Manager: e.Manager()})))
	t.Cleanup(srv.Close)
	return srv.URL
}

// call sends method path with body (JSON unless nil) to the API at base
// and returns the status and the answer.
func call(t *testing.T, base, method, path string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, base+path, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, out
}

// TestEmptySecretThroughTheAPI: a secret given as "" on create or on
// rotation is refused with a message that speaks of the API ("leave it
// out"), not the configuration file's ${NAME} advice, which a JSON body
// has no use for (found by a review).
func TestEmptySecretThroughTheAPI(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := runtimeConfig(t, db)
	e := start(t, cfg)
	base := apiServer(t, e, cfg)
	const want = "secret: must not be empty; leave it out to have one generated"

	code, body := call(t, base, "POST", "/v1/subscriptions", map[string]any{"url": rc.URL, "events": []string{"request.created"}, "secret": ""})
	if code != http.StatusBadRequest || !strings.Contains(string(body), want) || strings.Contains(string(body), "${NAME}") {
		t.Errorf("create with secret \"\": %d %s, want 400 saying %q", code, body, want)
	}
	code, body = call(t, base, "POST", "/v1/subscriptions", map[string]any{"url": rc.URL, "events": []string{"request.created"}})
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	var created api.CreatedSubscription
	if err := json.Unmarshal(body, &created); err != nil {
		t.Fatal(err)
	}
	code, body = call(t, base, "POST", "/v1/subscriptions/"+created.ID+"/secret", map[string]any{"secret": ""})
	if code != http.StatusBadRequest || !strings.Contains(string(body), want) || strings.Contains(string(body), "${NAME}") {
		t.Errorf("rotation to secret \"\": %d %s, want 400 saying %q", code, body, want)
	}
}

// getSubscription reads GET /v1/subscriptions/{id}: the answer decoded,
// and as it came.
func getSubscription(t *testing.T, base, id string) (api.Subscription, string) {
	t.Helper()
	code, body := call(t, base, "GET", "/v1/subscriptions/"+id, nil)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/subscriptions/%s: %d %s", id, code, body)
	}
	var s api.Subscription
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatal(err)
	}
	return s, string(body)
}

// near: got is want, give or take the journal's microseconds.
func near(got *time.Time, want time.Time) bool {
	return got != nil && got.Sub(want).Abs() < time.Millisecond
}

// TestSigningSettingsReadBack: a subscription's standard_webhooks and, while
// a rotation's overlap runs, when its previous secret stops being valid
// and when X-DZDESK-Signature switches are in its answers (the create's,
// GET's), for runtime and config.yaml subscriptions alike, never the
// secrets. Before, neither was shown anywhere after the rotation's own
// answer (found by a review).
func TestSigningSettingsReadBack(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	const prev, cur = "whsec_b2xkLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm", "whsec_bmV3LXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm"
	until := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	rotated := fmt.Sprintf("  - id: rotated\n    url: %s\n    events: [request.created]\n    standard_webhooks: true\n    secret: %s\n    previous_secret: %s\n    previous_secret_until: %s\n",
		rc.URL, cur, prev, until.Format(time.RFC3339))
	cfg := runtimeConfig(t, db, sub("crm", rc.URL, "request.*"), rotated)
	e := start(t, cfg)
	base := apiServer(t, e, cfg)

	s, raw := getSubscription(t, base, "crm")
	if s.StandardWebhooks || s.PreviousSecretValidUntil != nil || s.SignatureSwitchAt != nil || !strings.Contains(raw, `"standard_webhooks":false`) {
		t.Errorf("config.yaml's crm: %s, want standard_webhooks false and no overlap", raw)
	}
	s, raw = getSubscription(t, base, "rotated")
	if !s.StandardWebhooks || !near(s.PreviousSecretValidUntil, until) || !near(s.SignatureSwitchAt, until) {
		t.Errorf("config.yaml's rotated: %s, want standard_webhooks true and the overlap until %s", raw, until.Format(time.RFC3339))
	}
	if strings.Contains(raw, "whsec_") {
		t.Errorf("config.yaml's rotated: a secret is in the answer: %s", raw)
	}

	code, body := call(t, base, "POST", "/v1/subscriptions", map[string]any{"url": rc.URL, "events": []string{"request.created"}, "standard_webhooks": true})
	var created api.CreatedSubscription
	if code != http.StatusCreated || json.Unmarshal(body, &created) != nil || !created.StandardWebhooks || created.PreviousSecretValidUntil != nil {
		t.Fatalf("create with standard_webhooks: %d %s, want 201 with standard_webhooks true and no overlap", code, body)
	}
	if s, raw = getSubscription(t, base, created.ID); !s.StandardWebhooks || s.PreviousSecretValidUntil != nil || s.SignatureSwitchAt != nil {
		t.Errorf("GET of the created subscription: %s, want standard_webhooks true and no overlap", raw)
	}

	code, body = call(t, base, "POST", "/v1/subscriptions/"+created.ID+"/secret", map[string]any{"overlap": "2h", "activate": "now"})
	var rot api.RotatedSecret
	if code != http.StatusOK || json.Unmarshal(body, &rot) != nil {
		t.Fatalf("rotation: %d %s", code, body)
	}
	s, raw = getSubscription(t, base, created.ID)
	if !s.StandardWebhooks || !near(s.PreviousSecretValidUntil, rot.PreviousValidUntil) || !near(s.SignatureSwitchAt, rot.SignatureSwitchAt) {
		t.Errorf("GET after the rotation: %s, want previous_secret_valid_until %s and signature_switch_at %s", raw,
			rot.PreviousValidUntil.Format(time.RFC3339Nano), rot.SignatureSwitchAt.Format(time.RFC3339Nano))
	}
	if strings.Contains(raw, created.Secret) || strings.Contains(raw, rot.Secret) {
		t.Errorf("GET after the rotation shows a secret: %s", raw)
	}
	code, body = call(t, base, "GET", "/v1/subscriptions", nil)
	if code != http.StatusOK || !strings.Contains(string(body), `"previous_secret_valid_until"`) {
		t.Errorf("the list: %d %s, want the overlaps in it too", code, body)
	}
}

// delivered waits for the delivery of event id at rc and returns it.
func delivered(t *testing.T, rc *testutil.Receiver, id string) testutil.Request {
	t.Helper()
	var got testutil.Request
	testutil.Eventually(t, 20*time.Second, "the delivery of "+id, func() bool {
		for _, r := range rc.Requests() {
			if strings.Contains(string(r.Body), `"id":"`+id+`"`) {
				got = r
				return true
			}
		}
		return false
	})
	return got
}

// TestSwitchStandardWebhooks: PATCH standard_webhooks on a runtime
// subscription is refused while its secret is not a whsec_ one, with a
// message that says to rotate to one first; after that rotation it is
// taken, and deliveries carry webhook-signature (with the new secret;
// X-DZDESK-Signature keeps the old one until the switch the rotation
// announced); switching off takes webhook-signature away again. Before,
// every such PATCH was refused, also after the rotation its message
// advised (found by a review).
func TestSwitchStandardWebhooks(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := runtimeConfig(t, db)
	e := start(t, cfg)
	base := apiServer(t, e, cfg)

	code, body := call(t, base, "POST", "/v1/subscriptions", map[string]any{"url": rc.URL, "events": []string{"request.created"}})
	var created api.CreatedSubscription
	if code != http.StatusCreated || json.Unmarshal(body, &created) != nil {
		t.Fatalf("create: %d %s", code, body)
	}
	path := "/v1/subscriptions/" + created.ID
	code, body = call(t, base, "PATCH", path, map[string]any{"standard_webhooks": true})
	var refused api.ValidationErrors
	// The CLI's way is named too: a user of subscriptions update
	// --standard-webhooks needs rotate-secret, not the HTTP route.
	want := "standard_webhooks: needs a whsec_<base64> secret and the current secret is not one: rotate to a whsec_… secret first (POST " + path + "/secret" +
		` with {"secret": "whsec_…"}, or dzhook subscriptions rotate-secret ` + created.ID + " --secret whsec_…;"
	if code != http.StatusBadRequest || json.Unmarshal(body, &refused) != nil || !strings.HasPrefix(refused.Message, want) || strings.Contains(string(body), created.Secret) {
		t.Errorf("switching on with a secret that is not whsec_: %d %s, want 400 saying %q…", code, body, want)
	}

	const whsec = "whsec_c3dpdGNoZWQtc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY="
	if code, body = call(t, base, "POST", path+"/secret", map[string]any{"secret": whsec, "overlap": "1h"}); code != http.StatusOK {
		t.Fatalf("rotation to a whsec_ secret: %d %s", code, body)
	}
	code, body = call(t, base, "PATCH", path, map[string]any{"standard_webhooks": true})
	var s api.Subscription
	if code != http.StatusOK || json.Unmarshal(body, &s) != nil || !s.StandardWebhooks {
		t.Fatalf("switching on after the rotation: %d %s, want 200 with standard_webhooks true", code, body)
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'one', 1)`)
	r := delivered(t, rc, "req_1")
	key, _ := signer.StandardKey(whsec)
	if err := signer.VerifyStandard(r.Header, r.Body, time.Now(), key); err != nil {
		t.Errorf("after switching on, webhook-signature %q does not verify with the whsec_ secret: %v", r.Header.Get(signer.HeaderWebhookSignature), err)
	}
	if err := signer.Verify(r.Header.Get(signer.HeaderSignature), r.Body, []byte(created.Secret)); err != nil {
		t.Errorf("after switching on, X-DZDESK-Signature left the old secret before the switch the rotation announced: %v", err)
	}

	code, body = call(t, base, "PATCH", path, map[string]any{"standard_webhooks": false})
	if code != http.StatusOK || json.Unmarshal(body, &s) != nil || s.StandardWebhooks {
		t.Fatalf("switching off: %d %s, want 200 with standard_webhooks false", code, body)
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (2, 'two', 1)`)
	r = delivered(t, rc, "req_2")
	if got := r.Header.Get(signer.HeaderWebhookSignature); got != "" || r.Header.Get(signer.HeaderSignature) == "" {
		t.Errorf("after switching off: webhook-signature %q, X-DZDESK-Signature %q; want none and one", got, r.Header.Get(signer.HeaderSignature))
	}
}
