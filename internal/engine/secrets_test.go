package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestSecretsNeverLeak runs dzhook with one known secret in every place a
// secret goes (webhook secret, header value, admin token, notify URL and
// secret, DSN password) through deliveries, failures, a notification, a
// test send and every API endpoint, then looks for it in the logs (debug
// level), the API's answers, /metrics and every journal table.
func TestSecretsNeverLeak(t *testing.T) {
	const known = "Kn0wnS3cretValue-0123456789"
	db := newDB(t)
	rc, admin := testutil.NewReceiver(t), testutil.NewReceiver(t)
	// The receiver quotes the request back, as echo services, a 401's
	// "invalid key …" and proxies' error pages do: the history, the API
	// and notify.url get the answer without the credentials in it.
	rc.SetRespond(func(n int, r *http.Request, _ []byte) (int, http.Header, string) {
		echo := fmt.Sprintf(`{"url":%q,"headers":{"authorization":%q,"x-api-key":%q}}`, r.URL.String(), r.Header.Get("Authorization"), r.Header.Get("X-Api-Key"))
		if n <= 2 {
			return 503, nil, echo
		}
		return 200, nil, echo
	})
	admin.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		if n == 1 {
			return 500, nil, "notify failed once"
		}
		return 200, nil, "ok"
	})
	yaml := fmt.Sprintf(`
source:
  dsn: "%s&password=%s"
journal: {heartbeat: 200ms}
delivery:
  allow_insecure_http: true
  retry_schedule: [0s, 100ms]
admin: {listen: "127.0.0.1:0", token: "%s"}
notify: {url: "%s/hooks/%s?token=%s", secret: "%s"}
log: {level: debug}
secrets: {key: %s}
subscriptions:
  - id: crm
    url: "%s/in?key=%s"
    events: ["*"]
    secret: "%s"
    headers: {Authorization: "Bearer %s"}
`, db.DSN, known, known, admin.URL, known, known, known, secretsKey, rc.URL, known, known, known)
	var logs testutil.SyncBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := configFrom(t, yaml)
	ctx, cancel := context.WithCancel(context.Background())
	e, err := New(ctx, cfg, Options{Logger: logger, Version: "test", PollInterval: 50 * time.Millisecond})
	if err != nil {
		cancel()
		t.Fatalf("engine: %v", err) // an error here must not show the secret either
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()

	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'x', 1)`)
	admin.Wait(t, 2, 30*time.Second) // failing: the first try fails, the second arrives
	for _, r := range rc.Requests() {
		if r.Header.Get("Authorization") != "Bearer "+known {
			t.Fatal("the static header did not reach the receiver")
		}
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (2, 'y', 1)`)
	rc.Wait(t, 3, 30*time.Second)

	a := &adminClient{t: t, base: "http://" + e.AdminAddr()}
	var answers strings.Builder
	get := func(path string) {
		code, raw := a.call("GET", path, known, nil)
		fmt.Fprintf(&answers, "%d %s\n", code, raw)
	}
	get("/v1/subscriptions")
	get("/v1/subscriptions/crm")
	get("/v1/events")
	_, raw := a.call("GET", "/v1/deliveries", known, nil)
	fmt.Fprintf(&answers, "%s\n", raw)
	var list api.DeliveryList
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatalf("GET /v1/deliveries: %v in %s", err, raw)
	}
	for _, d := range list.Deliveries {
		get("/v1/deliveries/" + d.ID)
	}
	_, raw = a.call("POST", "/v1/subscriptions/crm/test", known, api.TestRequest{Event: "user.created"})
	fmt.Fprintf(&answers, "%s\n", raw)
	_, raw = a.call("GET", "/v1/subscriptions", "wrong-"+known, nil)
	fmt.Fprintf(&answers, "%s\n", raw)

	// A runtime subscription whose secret and header carry the secret:
	// shown once at creation (and the rotated one once), never after.
	code, created := a.call("POST", "/v1/subscriptions", known, map[string]any{
		"id": "rt", "url": rc.URL + "/rt?key=" + known, "events": []string{"request.created"}, "secret": known + "-rt",
		"headers": map[string]string{"X-Api-Key": known},
	})
	if code != http.StatusCreated || !strings.Contains(string(created), known+"-rt") {
		t.Fatalf("create a runtime subscription: %d %s", code, created)
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (3, 'z', 1)`)
	testutil.Eventually(t, 30*time.Second, "a delivery to the runtime subscription", func() bool {
		for _, r := range rc.Requests() {
			if r.Header.Get("X-Api-Key") == known {
				return true
			}
		}
		return false
	})
	for _, step := range []struct{ method, path string }{
		{"PATCH", "/v1/subscriptions/rt"}, {"POST", "/v1/subscriptions/rt/pause"}, {"POST", "/v1/subscriptions/rt/resume"},
	} {
		var body any
		if step.method == "PATCH" {
			body = map[string]any{"description": "changed", "headers": map[string]string{"X-Api-Key": known}}
		}
		code, raw := a.call(step.method, step.path, known, body)
		fmt.Fprintf(&answers, "%d %s\n", code, raw)
	}
	code, rotated := a.call("POST", "/v1/subscriptions/rt/secret", known, map[string]any{"secret": known + "-rotated"})
	if code != http.StatusOK {
		t.Fatalf("rotate: %d %s", code, rotated)
	}
	get("/v1/subscriptions/rt")
	get("/v1/audit")
	code, raw = a.call("POST", "/v1/subscriptions", known, map[string]any{"id": "Bad", "url": "ftp://x?k=" + known, "events": []string{"nope"}, "secret": known})
	fmt.Fprintf(&answers, "%d %s\n", code, raw)
	code, raw = a.call("DELETE", "/v1/subscriptions/rt", known, nil)
	fmt.Fprintf(&answers, "%d %s\n", code, raw)
	resp, err := http.Get("http://" + e.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	var journal strings.Builder
	conn := db.Connect(t)
	for _, table := range []string{"events", "deliveries", "attempts", "subscriptions", "notifications", "checkpoints", "instances", "rejections", "sla_timers", "runtime_subscriptions", "audit", "replays", "gaps", "sources"} {
		rows, err := conn.Query(context.Background(), fmt.Sprintf(`SELECT t::text FROM dzhook.%s t`, table))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var s string
			_ = rows.Scan(&s)
			journal.WriteString(table + ": " + s + "\n")
		}
		rows.Close()
	}
	var notes strings.Builder
	for _, r := range admin.Requests() {
		notes.Write(r.Body)
	}
	for name, text := range map[string]string{
		"logs": logs.String(), "API answers": answers.String(), "/metrics": string(metrics),
		"journal": journal.String(), "notification bodies": notes.String(),
	} {
		if len(text) == 0 {
			t.Errorf("%s: nothing collected", name)
		}
		for _, line := range strings.Split(text, "\n") {
			if strings.Contains(line, known) {
				t.Logf("%s: %s", name, line)
			}
		}
		if i := strings.Index(text, known); i >= 0 {
			lo := max(0, i-300)
			t.Errorf("the secret appears in the %s: …%s…", name, text[lo:min(len(text), i+80)])
		}
	}
	if !strings.Contains(logs.String(), "admin notification failed") {
		t.Errorf("the notification failure was not logged (the test would not cover its message)")
	}
}
