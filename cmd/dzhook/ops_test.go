package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/engine"
	"github.com/dzdesk/dzhook/internal/enginetest"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
	"github.com/dzdesk/dzhook/signer"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const cliToken = "cli-admin-token-0123456789"

// startEngine runs dzhook in-process with its admin API and returns the
// API's URL. extra is added to the crm subscription's keys
// (", ordering: entity").
func startTestEngine(t *testing.T, receiver, extra string) (*pgtest.DB, string) {
	t.Helper()
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema, `INSERT INTO users (id, email) VALUES (1, 'john@company.com')`)
	yaml := fmt.Sprintf(`
source: {dsn: "%s"}
journal: {heartbeat: 200ms}
delivery: {allow_insecure_http: true, retry_schedule: [0s, 1h]}
admin: {listen: "127.0.0.1:0", token: %s}
subscriptions:
  - {id: crm, url: "%s", events: ["request.*"], secret: cli-test-secret-0123456789%s}
`, db.DSN, cliToken, receiver, extra)
	e := enginetest.Start(t, yaml, engine.Options{PollInterval: 50 * time.Millisecond})
	return db, "http://" + e.AdminAddr()
}

// cliRun runs a dzhook command against the API with the token in the
// environment.
func cliRun(t *testing.T, url string, token string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := []string{"DZHOOK_ADMIN_URL=" + url, "DZHOOK_CONFIG=/nonexistent.yaml"}
	if token != "" {
		env = append(env, "DZHOOK_ADMIN_TOKEN="+token)
	}
	code := runEnv(context.Background(), append([]string{"dzhook"}, args...), &out, &errb, env)
	return code, out.String(), errb.String()
}

func TestCLIOperations(t *testing.T) {
	rc := testutil.NewReceiver(t)
	// A receiver's answer may try to drive the operator's terminal
	// (clear the screen, set the clipboard): the CLI shows it escaped.
	up := rc.FailUntilUp(400, "no thanks\x1b[2J\x1b]52;c;ZXZpbA==\x07")
	db, url := startTestEngine(t, rc.URL, "")
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (7, 'seven', 1)`)
	rc.Wait(t, 1, 20*time.Second)

	// The probe needs no token.
	if code, out, _ := cliRun(t, url, "", "health"); code != exitOK || !strings.Contains(out, `"ok"`) {
		t.Errorf("health: exit %d %q", code, out)
	}
	if code, out, _ := cliRun(t, url, "", "health", "--ready"); code != exitOK || !strings.Contains(out, "ready") {
		t.Errorf("health --ready: exit %d %q", code, out)
	}
	if code, _, _ := cliRun(t, "http://127.0.0.1:1", "", "health"); code != exitFailure {
		t.Errorf("health against nothing: exit %d, want 1", code)
	}

	// Without the token: a clear message and exit 1.
	if code, _, errOut := cliRun(t, url, "", "status"); code != exitFailure || !strings.Contains(errOut, "DZHOOK_ADMIN_TOKEN") {
		t.Errorf("status without token: exit %d, %q", code, errOut)
	}
	// Nothing listening: exit 1 and a hint.
	if code, _, errOut := cliRun(t, "http://127.0.0.1:1", cliToken, "status"); code != exitFailure || !strings.Contains(errOut, "cannot reach") {
		t.Errorf("status against nothing: exit %d, %q", code, errOut)
	}

	var id string
	testutil.Eventually(t, 10*time.Second, "a failed delivery", func() bool {
		code, out, _ := cliRun(t, url, cliToken, "deliveries", "--status", "failed", "--json")
		var list api.DeliveryList
		if code != exitOK || json.Unmarshal([]byte(out), &list) != nil || len(list.Deliveries) != 1 {
			return false
		}
		id = list.Deliveries[0].ID
		return true
	})

	code, out, errOut := cliRun(t, url, cliToken, "status")
	if code != exitOK || !strings.Contains(out, "SUBSCRIPTION") || !strings.Contains(out, "crm") || !strings.Contains(out, "healthy") ||
		!strings.Contains(out, "ORDERING") || !strings.Contains(out, " none ") {
		t.Errorf("status: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = cliRun(t, url, cliToken, "deliveries", "--subscription", "crm", "--limit", "10")
	if code != exitOK || !strings.Contains(out, id) || !strings.Contains(out, "failed") {
		t.Errorf("deliveries: exit %d\n%s", code, out)
	}
	code, out, _ = cliRun(t, url, cliToken, "deliveries", "show", id)
	if code != exitOK || !strings.Contains(out, "no thanks") || !strings.Contains(out, `"id": "req_7"`) ||
		!strings.Contains(out, "(unordered)") || strings.Contains(out, "waited behind it") {
		t.Errorf("deliveries show: exit %d\n%s", code, out)
	}
	if strings.ContainsAny(out, "\x1b\x07") || !strings.Contains(out, `no thanks\x1b[2J`) {
		t.Errorf("deliveries show passes control characters through, or does not show them escaped:\n%q", out)
	}
	// The attempt names the instance that made it, in the JSON and in
	// the table.
	var detail api.DeliveryDetail
	if code, raw, _ := cliRun(t, url, cliToken, "deliveries", "show", id, "--json"); code != exitOK || json.Unmarshal([]byte(raw), &detail) != nil ||
		len(detail.Attempts) != 1 || detail.Attempts[0].Instance == "" || !strings.Contains(raw, `"instance":"`) {
		t.Errorf("deliveries show --json: exit %d, want one attempt with its instance\n%s", code, raw)
	} else if !strings.Contains(out, "INSTANCE") || !strings.Contains(out, " "+detail.Attempts[0].Instance+" ") {
		t.Errorf("deliveries show does not name the attempt's instance %q:\n%s", detail.Attempts[0].Instance, out)
	}
	if code, _, errOut := cliRun(t, url, cliToken, "deliveries", "--status", "lost"); code != exitUsage || !strings.Contains(errOut, "status") {
		t.Errorf("deliveries --status lost: exit %d %q, want 2 and the reason", code, errOut)
	}

	// A retry that fails again exits 1; after the receiver recovers, 0.
	if code, out, _ := cliRun(t, url, cliToken, "retry", id); code != exitFailure || !strings.Contains(out, "NOT delivered") ||
		strings.ContainsAny(out, "\x1b\x07") || !strings.Contains(out, `\x1b]52;c;ZXZpbA==\x07`) {
		t.Errorf("retry while the receiver refuses: exit %d\n%q", code, out)
	}
	up.Store(true)
	if code, out, _ := cliRun(t, url, cliToken, "retry", id, "--json"); code != exitOK || !strings.Contains(out, `"delivered":true`) {
		t.Errorf("retry --json: exit %d\n%s", code, out)
	}
	if code, out, _ := cliRun(t, url, cliToken, "retry", "--subscription", "crm", "--failed", "--since", "2h"); code != exitOK || !strings.Contains(out, "0 failed deliveries") {
		t.Errorf("retry --failed: exit %d\n%s", code, out)
	}
	if code, _, _ := cliRun(t, url, cliToken, "retry"); code != exitUsage {
		t.Errorf("retry without arguments: exit %d, want 2", code)
	}
	// A flag the command's form does not read is refused, naming it (it
	// used to be ignored: the retry went out, unfiltered).
	if code, _, errOut := cliRun(t, url, cliToken, "retry", id, "--since", "2h"); code != exitUsage || !strings.Contains(errOut, "--since") {
		t.Errorf("retry ID --since: exit %d %q, want 2 naming --since", code, errOut)
	}
	if code, _, errOut := cliRun(t, url, cliToken, "deliveries", "show", id, "--status", "failed"); code != exitUsage || !strings.Contains(errOut, "--status") {
		t.Errorf("deliveries show ID --status: exit %d %q, want 2 naming --status", code, errOut)
	}
	if code, out, _ := cliRun(t, url, cliToken, "test", "crm", "--event", "request.assigned"); code != exitOK || !strings.Contains(out, "HTTP 200") {
		t.Errorf("test: exit %d\n%s", code, out)
	}
	if code, _, errOut := cliRun(t, url, cliToken, "test", "ghost"); code != exitFailure || !strings.Contains(errOut, "no such subscription") {
		t.Errorf("test ghost: exit %d %q", code, errOut)
	}
	if code, out, _ := cliRun(t, url, cliToken, "pause", "crm"); code != exitOK || !strings.Contains(out, "paused") {
		t.Errorf("pause: exit %d %q", code, out)
	}
	var status api.SubscriptionList
	if code, out, _ := cliRun(t, url, cliToken, "status", "--json"); code != exitOK || json.Unmarshal([]byte(out), &status) != nil ||
		len(status.Subscriptions) != 1 || !status.Subscriptions[0].Paused || !strings.Contains(out, `"paused":true`) {
		t.Errorf("status --json after pause: %q", out)
	}
	if code, out, _ := cliRun(t, url, cliToken, "resume", "crm"); code != exitOK || !strings.Contains(out, "resumed") {
		t.Errorf("resume: exit %d %q", code, out)
	}
}

// TestCLIOrdering: under ordering: entity, a request.created that waits
// for its retry holds back the request's update. status shows the
// blocked key; deliveries --ordering-key lists the key's deliveries;
// deliveries show shows the key, what waited behind it, and for the
// update, the head it waits behind.
func TestCLIOrdering(t *testing.T) {
	rc := testutil.NewReceiver(t)
	rc.SetRespond(func(_ int, r *http.Request, _ []byte) (int, http.Header, string) {
		if r.Header.Get(signer.HeaderEvent) == "request.created" && r.Header.Get(signer.HeaderAttempt) == "1" {
			return 500, nil, "down"
		}
		return 200, nil, "fine"
	})
	db, url := startTestEngine(t, rc.URL, ", ordering: entity")
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (7, 'seven', 1)`)
	rc.Wait(t, 1, 20*time.Second)
	db.Exec(t, `UPDATE requests SET title = 'seven, again' WHERE id = 7`)

	// The update waits behind the created's retry (due in an hour).
	var head, behind string
	testutil.Eventually(t, 10*time.Second, "the created pending with its update behind it", func() bool {
		code, out, _ := cliRun(t, url, cliToken, "deliveries", "--subscription", "crm", "--status", "pending", "--json")
		var list api.DeliveryList
		if code != exitOK || json.Unmarshal([]byte(out), &list) != nil {
			return false
		}
		head, behind = "", ""
		for _, d := range list.Deliveries {
			if d.OrderingKey == nil || *d.OrderingKey != "req_7" {
				t.Fatalf("delivery %s: ordering key %v, want req_7", d.ID, d.OrderingKey)
			}
			switch d.Event {
			case "request.created":
				head = d.ID
			case "request.updated":
				behind = d.ID
			}
		}
		return head != "" && behind != ""
	})
	if n := len(rc.Requests()); n != 1 {
		t.Errorf("the receiver got %d requests, want only the created's first attempt: the update must wait", n)
	}

	// The key's history, finished or not, is one filter away; another
	// key's is not in it.
	for key, want := range map[string][]string{"req_7": {behind, head}, "req_8": nil} {
		code, out, errOut := cliRun(t, url, cliToken, "deliveries", "--ordering-key", key, "--json")
		var list api.DeliveryList
		if code != exitOK || json.Unmarshal([]byte(out), &list) != nil {
			t.Fatalf("deliveries --ordering-key %s: exit %d\n%s%s", key, code, out, errOut)
		}
		var got []string
		for _, d := range list.Deliveries {
			got = append(got, d.ID)
		}
		if !slices.Equal(got, want) {
			t.Errorf("deliveries --ordering-key %s: %v, want %v (newest first)", key, got, want)
		}
	}
	if code, _, errOut := cliRun(t, url, cliToken, "deliveries", "show", head, "--ordering-key", "req_7"); code != exitUsage || !strings.Contains(errOut, "--ordering-key") {
		t.Errorf("deliveries show ID --ordering-key: exit %d %q, want 2 naming --ordering-key", code, errOut)
	}

	code, out, errOut := cliRun(t, url, cliToken, "status")
	if code != exitOK || !strings.Contains(out, "BLOCKED KEYS") || !strings.Contains(out, " entity ") || !regexpMatch(out, `1 \(oldest \w+: req_7\)`) {
		t.Errorf("status: exit %d, want the ordering and 1 blocked key\n%s%s", code, out, errOut)
	}
	code, out, errOut = cliRun(t, url, cliToken, "deliveries", "show", head)
	if code != exitOK || !strings.Contains(out, "ordering key:") || !strings.Contains(out, "req_7") ||
		!strings.Contains(out, "waited behind it (oldest first):\n  "+behind+"\n") {
		t.Errorf("deliveries show %s: exit %d, want the key and %s waiting behind it\n%s%s", head, code, behind, out, errOut)
	}
	if strings.Contains(out, "waits behind:") {
		t.Errorf("deliveries show %s: the head waits behind nothing\n%s", head, out)
	}
	code, out, _ = cliRun(t, url, cliToken, "deliveries", "show", behind)
	if code != exitOK || !strings.Contains(out, "waited behind it: none") {
		t.Errorf("deliveries show %s: exit %d, want nothing waiting behind it\n%s", behind, code, out)
	}
	if !strings.Contains(out, "waits behind:") || !strings.Contains(out, head+" (deliveries show it)") {
		t.Errorf("deliveries show %s: want it waiting behind %s\n%s", behind, head, out)
	}
}

// TestCLITransform: a subscription whose transform makes its bodies.
// deliveries show prints the body sent after the event's payload, and
// reads a skip and a failed transform as attempts that sent nothing;
// status and subscriptions show name the rate limit, format and method.
func TestCLITransform(t *testing.T) {
	rc := testutil.NewReceiver(t)
	const transform = `event == "request.updated" ? skip : {"text": data.title + " for " + data.assignedTo.email}`
	db, url := startTestEngine(t, rc.URL, ", transform: '"+transform+"', method: PUT, rate_limit: 600/m")
	db.Exec(t, `INSERT INTO requests (id, title, requester_id, assigned_to_id) VALUES (7, 'Printer', 1, 1)`)
	db.Exec(t, `UPDATE requests SET title = 'Printer on fire' WHERE id = 7`)
	// Nobody is assigned: data.assignedTo is null, and the transform fails.
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (8, 'Nobody', 1)`)

	// sent is request 7's creation, skipped its update, failed request
	// 8's creation.
	var sent, skipped, failed string
	testutil.Eventually(t, 20*time.Second, "a delivery sent, one skipped and one failed", func() bool {
		code, out, _ := cliRun(t, url, cliToken, "deliveries", "--subscription", "crm", "--json")
		var list api.DeliveryList
		if code != exitOK || json.Unmarshal([]byte(out), &list) != nil {
			return false
		}
		for _, d := range list.Deliveries {
			switch {
			case d.Event == "request.created" && d.State == "delivered":
				sent = d.ID
			case d.Event == "request.updated" && d.State == "skipped":
				skipped = d.ID
			case d.Event == "request.created" && d.State == "failed":
				failed = d.ID
			}
		}
		return sent != "" && skipped != "" && failed != ""
	})

	code, out, errOut := cliRun(t, url, cliToken, "deliveries", "show", sent)
	payload, body, ok := strings.Cut(out, "\nsent (transformed):\n")
	if code != exitOK || !ok || body != "{\n  \"text\": \"Printer for john@company.com\"\n}\n" ||
		!strings.Contains(payload, "\npayload:\n{\n") || !strings.Contains(payload, `"title": "Printer"`) {
		t.Errorf("deliveries show %s: exit %d, want the payload, then the body sent\n%s%s", sent, code, out, errOut)
	}
	if reqs := rc.Requests(); len(reqs) != 1 || string(reqs[0].Body) != `{"text":"Printer for john@company.com"}` {
		t.Errorf("the receiver got %d requests, want the one body shown as sent", len(reqs))
	}
	code, out, _ = cliRun(t, url, cliToken, "deliveries", "show", skipped)
	if code != exitOK || !regexpMatch(out, `(?m)^1 .* auto .* - +0 +skipped: the transform gave null: not sent +-$`) ||
		strings.Contains(out, "sent (transformed)") {
		t.Errorf("deliveries show %s: exit %d, want an attempt that sent nothing, skipped\n%s", skipped, code, out)
	}
	code, out, _ = cliRun(t, url, cliToken, "deliveries", "show", failed)
	if code != exitOK || !regexpMatch(out, `(?m)^1 .* auto .* - +0 +transform: the transform failed on this event: `) ||
		strings.Contains(out, "sent (transformed)") {
		t.Errorf("deliveries show %s: exit %d, want an attempt that sent nothing, class transform (named once)\n%s", failed, code, out)
	}

	code, out, _ = cliRun(t, url, cliToken, "status")
	if code != exitOK || !regexpMatch(out, `(?m)^SUBSCRIPTION +STATE +ACTIVE +ORDERING +RATE LIMIT +QUEUE`) || !regexpMatch(out, `(?m)^crm +\S+ +true +none +600/m +\d`) {
		t.Errorf("status: exit %d, want the rate limit\n%s", code, out)
	}
	code, out, _ = cliRun(t, url, cliToken, "subscriptions", "show", "crm")
	if code != exitOK || !regexpMatch(out, "\nformat: +dzdesk \\(the transform below makes the body\\)\nmethod: +PUT\nrate limit: +600/m\n") ||
		!strings.HasSuffix(out, "\ntransform:\n  "+transform+"\n") {
		t.Errorf("subscriptions show crm: exit %d\n%s", code, out)
	}
}

func TestBlockedAndAge(t *testing.T) {
	now := time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)
	ago := func(d time.Duration) *time.Time { t := now.Add(-d); return &t }
	key := func(k string) *string { return &k }
	for _, tc := range []struct {
		s    api.Subscription
		want string
	}{
		{api.Subscription{Ordering: "none"}, "-"},
		{api.Subscription{Ordering: "entity"}, "0"},
		{api.Subscription{Ordering: "entity", BlockedKeys: 2, OldestBlockedAt: ago(45 * time.Second)}, "2 (oldest 45s)"},
		{api.Subscription{Ordering: "subscription", BlockedKeys: 1, OldestBlockedAt: ago(12*time.Minute + 30*time.Second)}, "1 (oldest 12m)"},
		{api.Subscription{Ordering: "entity", BlockedKeys: 3, OldestBlockedAt: ago(3*time.Hour + 5*time.Minute)}, "3 (oldest 3h05m)"},
		{api.Subscription{Ordering: "entity", BlockedKeys: 1, OldestBlockedAt: ago(52 * time.Hour)}, "1 (oldest 2d04h)"},
		// Made under an earlier ordering, still blocked after a reload to none.
		{api.Subscription{Ordering: "none", BlockedKeys: 1, OldestBlockedAt: ago(time.Minute)}, "1 (oldest 1m)"},
		{api.Subscription{Ordering: "entity", BlockedKeys: 1, OldestBlockedAt: ago(-time.Minute)}, "1 (oldest 0s)"}, // clocks apart
		// The oldest blocked key, as stored; the key of ordering: subscription is "".
		{api.Subscription{Ordering: "entity", BlockedKeys: 2, OldestBlockedAt: ago(45 * time.Second), OldestBlockedKey: key("req_7"), OldestBlockedHead: "dlv_1"},
			"2 (oldest 45s: req_7)"},
		{api.Subscription{Ordering: "subscription", BlockedKeys: 1, OldestBlockedAt: ago(time.Minute), OldestBlockedKey: key(""), OldestBlockedHead: "dlv_1"},
			"1 (oldest 1m: (whole subscription))"},
		{api.Subscription{Ordering: "entity", BlockedKeys: 1, OldestBlockedAt: ago(time.Minute), OldestBlockedKey: key("req\x1b[2J")}, `1 (oldest 1m: req\x1b[2J)`},
	} {
		if got := blocked(tc.s, now); got != tc.want {
			t.Errorf("blocked(%+v) = %q, want %q", tc.s, got, tc.want)
		}
	}
}

// TestCLISaysItsConfigWasNotRead: a --config that is there but does not
// load (an unset ${VAR}) is said; the CLI used to drop the error, and the
// 401 or refused connection that followed did not say why.
func TestCLISaysItsConfigWasNotRead(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("source:\n  dsn: ${DZHOOK_TEST_UNSET_DSN}\nadmin:\n  listen: 127.0.0.1:1\n  token: ${DZHOOK_TEST_UNSET_TOKEN}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := runEnv(context.Background(), []string{"dzhook", "deliveries", "--config", cfg}, &out, &errb, []string{"DZHOOK_ADMIN_URL=http://127.0.0.1:1"})
	if code == exitOK || !strings.Contains(errb.String(), "warning: "+cfg+" not read") || !strings.Contains(errb.String(), "DZHOOK_TEST_UNSET") {
		t.Errorf("exit %d, stderr %q; want the config's problem said", code, errb.String())
	}
}

// TestCLIPauseSaysWhatBecomesOfNewEvents: `dzhook pause` says, from the
// API's answer, whether the events that arrive while paused are held for
// the resume (queue_while_inactive) or skipped. It said only "paused",
// and the README told a pause as "deliveries wait", wrong by default
// (found by a review).
func TestCLIPauseSaysWhatBecomesOfNewEvents(t *testing.T) {
	f, url := startFakeAPI(t)
	for _, c := range []struct {
		queue bool
		want  string
	}{
		{false, "crm paused: new events are skipped, never sent (set queue_while_inactive: true to hold them)"},
		{true, "crm paused: new events are held and go out on resume, oldest first (queue_while_inactive)"},
	} {
		f.mu.Lock()
		f.subs[0].QueueWhileInactive = c.queue
		f.mu.Unlock()
		code, out, errOut := cliRun(t, url, cliToken, "pause", "crm")
		if code != exitOK || !strings.HasPrefix(out, c.want) || !strings.Contains(out, "deliveries already due wait for the resume") {
			t.Errorf("pause with queue_while_inactive %v: exit %d %q %s, want %q…", c.queue, code, out, errOut, c.want)
		}
	}
}
