package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/api/apitest"
	"github.com/dzdesk/dzhook/internal/admin"
	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

// fakeSubs is the admin API's dispatcher, journal and Manager in memory:
// crm from config.yaml, and the runtime subscriptions created through it.
type fakeSubs struct {
	mu      sync.Mutex
	subs    []fanout.SubscriptionStatus
	inputs  []api.SubscriptionInput // of create and update, in order
	rotated api.SecretRotation
	audit   []api.AuditEntry
}

func newFakeSubs() *fakeSubs {
	return &fakeSubs{subs: []fanout.SubscriptionStatus{{ID: "crm", URL: "https://crm.example.com/hook", Events: []string{"request.*"},
		Active: true, State: journal.Healthy, Ordering: fanout.OrderNone, Source: "config"}}}
}

func (f *fakeSubs) Subscriptions() []fanout.SubscriptionStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.subs)
}

func (f *fakeSubs) SubscriptionIDs() []string {
	var ids []string
	for _, s := range f.Subscriptions() {
		ids = append(ids, s.ID)
	}
	return ids
}

func (f *fakeSubs) HasSubscription(id string) bool { return slices.Contains(f.SubscriptionIDs(), id) }

func (f *fakeSubs) RetryNow(context.Context, string) (fanout.AttemptReport, error) {
	return fanout.AttemptReport{}, nil
}

func (f *fakeSubs) RetryFailed(context.Context, string, *time.Time, *time.Time) (int, error) {
	return 0, nil
}

func (f *fakeSubs) SendTest(context.Context, string, fanout.Event) (fanout.AttemptReport, error) {
	return fanout.AttemptReport{}, nil
}

func (f *fakeSubs) Pause(context.Context, string) error { return nil }

func (f *fakeSubs) Resume(context.Context, string) (int, error) { return 0, nil }

func (f *fakeSubs) ListDeliveries(context.Context, journal.DeliveryFilter) ([]journal.Delivery, string, error) {
	return nil, "", nil
}

func (f *fakeSubs) GetDelivery(context.Context, string) (journal.Delivery, []byte, []journal.Attempt, error) {
	return journal.Delivery{}, nil, nil, journal.ErrNotFound
}

func (f *fakeSubs) Backlogs(context.Context) (map[string]journal.Backlog, error) { return nil, nil }

func (f *fakeSubs) WaitedBehind(context.Context, string, int) ([]string, error) { return nil, nil }

func (f *fakeSubs) index(id string) int {
	return slices.IndexFunc(f.subs, func(s fanout.SubscriptionStatus) bool { return s.ID == id })
}

func (f *fakeSubs) record(action, id, client string, fields ...string) {
	f.audit = append([]api.AuditEntry{{ID: int64(len(f.audit) + 1), At: time.Now(), Action: action, Subscription: id, Fields: fields, Client: client}}, f.audit...)
}

const fakeSecret = "whsec_ZmFrZS1zZWNyZXQtMDEyMzQ1Njc4OWFiY2RlZmdoaWo="

func (f *fakeSubs) CreateSubscription(_ context.Context, in api.SubscriptionInput, client string) (api.CreatedSubscription, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inputs = append(f.inputs, in)
	var ps []api.FieldProblem
	if in.URL != nil && strings.HasPrefix(*in.URL, "http://") {
		ps = append(ps, api.FieldProblem{Field: "url", Problem: "must be https"})
	}
	if in.Events != nil {
		for i, e := range *in.Events {
			if e == "nope" {
				ps = append(ps, api.FieldProblem{Field: fmt.Sprintf("events[%d]", i), Problem: `"nope" is not an event of the catalog`})
			}
		}
	}
	if len(ps) > 0 {
		return api.CreatedSubscription{}, &admin.ValidationError{Problems: ps}
	}
	id := "wh_abc"
	if in.ID != nil {
		id = *in.ID
	}
	if f.index(id) >= 0 {
		return api.CreatedSubscription{}, &admin.ConflictError{Message: fmt.Sprintf("a subscription with id %q exists", id)}
	}
	st := fanout.SubscriptionStatus{ID: id, URL: *in.URL, Events: *in.Events, Active: true, State: journal.Healthy, Ordering: fanout.OrderNone, Source: "runtime"}
	if in.Description != nil {
		st.Description = *in.Description
	}
	if err := applyBody(&st, in); err != nil {
		return api.CreatedSubscription{}, err
	}
	f.subs = append(f.subs, st)
	f.record("create", id, client, "url", "events")
	secret := fakeSecret
	if in.Secret != nil {
		secret = *in.Secret // "" with a connector format: none
	}
	return api.CreatedSubscription{Subscription: admin.SubscriptionOf(st), Secret: secret}, nil
}

// applyBody lays a request's format, transform, method and rate limit
// over st, as the engine does.
func applyBody(st *fanout.SubscriptionStatus, in api.SubscriptionInput) error {
	if in.Format != nil {
		st.Format = *in.Format
	}
	if in.Transform != nil {
		st.Transform = *in.Transform
	}
	if in.Method != nil {
		st.Method = strings.ToUpper(*in.Method)
	}
	if in.StandardWebhooks != nil {
		st.StandardWebhooks = *in.StandardWebhooks
	}
	if in.RateLimit != nil {
		st.RateLimit = fanout.Rate{}
		if *in.RateLimit != "" {
			r, err := fanout.ParseRate(*in.RateLimit)
			if err != nil {
				return &admin.ValidationError{Problems: []api.FieldProblem{{Field: "rate_limit", Problem: err.Error()}}}
			}
			st.RateLimit = r
		}
	}
	return nil
}

func (f *fakeSubs) UpdateSubscription(_ context.Context, id string, in api.SubscriptionInput, client string) (api.Subscription, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inputs = append(f.inputs, in)
	i := f.index(id)
	switch {
	case i < 0:
		return api.Subscription{}, admin.ErrNotFound
	case f.subs[i].Source == "config":
		return api.Subscription{}, &admin.ConflictError{Message: fmt.Sprintf("subscription %q is defined in config.yaml: change or delete it there", id)}
	}
	if in.Active != nil {
		f.subs[i].Active = *in.Active
	}
	if in.Events != nil {
		f.subs[i].Events = *in.Events
	}
	if err := applyBody(&f.subs[i], in); err != nil {
		return api.Subscription{}, err
	}
	f.record("update", id, client)
	return admin.SubscriptionOf(f.subs[i]), nil
}

func (f *fakeSubs) DeleteSubscription(_ context.Context, id, client string) (api.Deleted, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.index(id)
	if i < 0 {
		return api.Deleted{}, admin.ErrNotFound
	}
	f.subs = slices.Delete(f.subs, i, i+1)
	f.record("delete", id, client)
	return api.Deleted{ID: id, Cancelled: 2}, nil
}

func (f *fakeSubs) RotateSecret(_ context.Context, id string, in api.SecretRotation, client string) (api.RotatedSecret, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rotated = in
	i := f.index(id)
	if i < 0 {
		return api.RotatedSecret{}, admin.ErrNotFound
	}
	f.record("rotate", id, client, "secret")
	until := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	f.subs[i].PreviousUntil, f.subs[i].SwitchAt = until, until
	return api.RotatedSecret{Secret: "new-" + fakeSecret, PreviousValidUntil: until, SignatureSwitchAt: until}, nil
}

func (f *fakeSubs) CanCreate() error { return nil }

func (f *fakeSubs) Record(_ context.Context, action, id, client string, fields []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(action, id, client, fields...)
	return nil
}

func (f *fakeSubs) Audit(_ context.Context, limit int, _ string) (api.AuditPage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	page := api.AuditPage{Entries: slices.Clone(f.audit)}
	if len(page.Entries) > limit {
		page.Entries, page.NextCursor = page.Entries[:limit], "more"
	}
	return page, nil
}

// startFakeAPI serves the admin API over fakeSubs.
func startFakeAPI(t *testing.T) (*fakeSubs, string) {
	t.Helper()
	cat, err := catalog.New()
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeSubs()
	// The CLI's requests and the answers are held to api/openapi.yaml.
	srv := httptest.NewServer(apitest.Handler(t, admin.New(admin.Config{Token: cliToken, Deliverer: f, History: f, Manager: f, Catalog: cat,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})))
	t.Cleanup(srv.Close)
	return f, srv.URL
}

// TestCLISubscriptions walks create → list → show → update → rotate →
// delete → audit, with the exit codes and outputs scripts rely on.
func TestCLISubscriptions(t *testing.T) {
	f, url := startFakeAPI(t)

	code, out, errOut := cliRun(t, url, cliToken, "subscriptions", "create", "--id", "billing", "--url", "https://billing.example.com/hook",
		"--events", "request.created, request.updated", "--header", "X-Team=billing", "--header", "X-Env=prod", "--inactive",
		"--ordering", "entity", "--description", "Billing's mirror")
	if code != exitOK || !strings.Contains(out, "created billing") || !strings.Contains(out, "secret: "+fakeSecret) ||
		!strings.Contains(out, "shown only now") || !strings.Contains(out, "source:") {
		t.Fatalf("create: exit %d\n%s%s", code, out, errOut)
	}
	want := api.SubscriptionInput{ID: ptr("billing"), URL: ptr("https://billing.example.com/hook"),
		Events: ptr([]string{"request.created", "request.updated"}), Active: ptr(false),
		Headers: ptr(map[string]string{"X-Team": "billing", "X-Env": "prod"}), Ordering: ptr("entity"), Description: ptr("Billing's mirror")}
	if !reflect.DeepEqual(f.inputs[0], want) {
		t.Errorf("create sent %s, want %s", jsonOf(f.inputs[0]), jsonOf(want))
	}

	// --json prints the API's answer.
	code, out, _ = cliRun(t, url, cliToken, "subscriptions", "create", "--url", "https://x.example.com", "--events", "*", "--json")
	var created api.CreatedSubscription
	if code != exitOK || json.Unmarshal([]byte(out), &created) != nil || created.ID != "wh_abc" || created.Secret != fakeSecret {
		t.Errorf("create --json: exit %d %q", code, out)
	}

	// Problems, one a line; exit 2. A conflict: exit 1.
	code, _, errOut = cliRun(t, url, cliToken, "subscriptions", "create", "--url", "http://x.example.com", "--events", "request.created,nope")
	if code != exitUsage || !strings.Contains(errOut, "\n  url: must be https\n  events[1]: \"nope\" is not an event of the catalog\n") {
		t.Errorf("create with problems: exit %d %q, want 2 and one problem a line", code, errOut)
	}
	code, _, errOut = cliRun(t, url, cliToken, "subscriptions", "create", "--id", "billing", "--url", "https://b.example.com", "--events", "*")
	if code != exitFailure || !strings.Contains(errOut, `a subscription with id "billing" exists (HTTP 409)`) {
		t.Errorf("create of an id in use: exit %d %q, want 1", code, errOut)
	}
	for _, args := range [][]string{
		{"subscriptions", "create", "--events", "*"},
		{"subscriptions", "create", "billing", "--url", "https://x.example.com", "--events", "*"},
		{"subscriptions", "create", "--header", "novalue", "--url", "https://x.example.com", "--events", "*"},
		{"subscriptions", "update", "billing"},
		{"subscriptions", "update", "billing", "--active", "--inactive"},
		{"subscriptions", "update"},
		{"subscriptions", "show"},
		{"subscriptions", "delete"},
		{"subscriptions", "rotate-secret"},
		{"subscriptions", "frobnicate"},
		{"subscriptions"},
		{"audit", "extra"},
	} {
		if code, _, _ := cliRun(t, url, cliToken, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}

	code, out, _ = cliRun(t, url, cliToken, "subscriptions", "list")
	if code != exitOK || !strings.Contains(out, "SOURCE") || !regexpMatch(out, `(?m)^crm +config `) || !regexpMatch(out, `(?m)^billing +runtime `) ||
		strings.Contains(out, fakeSecret) {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	code, out, _ = cliRun(t, url, cliToken, "subscriptions", "show", "billing")
	if code != exitOK || !strings.Contains(out, "Billing's mirror") || !strings.Contains(out, "request.created, request.updated") || strings.Contains(out, fakeSecret) {
		t.Errorf("show: exit %d\n%s", code, out)
	}
	if code, _, errOut := cliRun(t, url, cliToken, "subscriptions", "show", "ghost"); code != exitFailure || !strings.Contains(errOut, "no such subscription") {
		t.Errorf("show ghost: exit %d %q", code, errOut)
	}

	// update sends only the fields given.
	code, out, errOut = cliRun(t, url, cliToken, "subscriptions", "update", "billing", "--active", "--events", "request.*")
	if code != exitOK || !strings.Contains(out, "updated billing") {
		t.Errorf("update: exit %d\n%s%s", code, out, errOut)
	}
	if got := jsonOf(f.inputs[len(f.inputs)-1]); got != `{"events":["request.*"],"active":true}` {
		t.Errorf("update sent %s, want only events and active", got)
	}
	if code, _, errOut := cliRun(t, url, cliToken, "subscriptions", "update", "crm", "--inactive"); code != exitFailure || !strings.Contains(errOut, "config.yaml") {
		t.Errorf("update of config.yaml's crm: exit %d %q, want 1 naming the file", code, errOut)
	}

	code, out, _ = cliRun(t, url, cliToken, "subscriptions", "rotate-secret", "billing", "--overlap", "1h", "--activate", "now")
	if code != exitOK || !strings.Contains(out, "new-"+fakeSecret) || !strings.Contains(out, "shown only now") || !strings.Contains(out, "X-DZDESK-Signature") {
		t.Errorf("rotate-secret: exit %d\n%s", code, out)
	}
	if got := jsonOf(f.rotated); got != `{"overlap":"1h","activate":"now"}` {
		t.Errorf("rotate-secret sent %s", got)
	}
	if code, _, _ := cliRun(t, url, cliToken, "subscriptions", "rotate-secret", "billing"); code != exitOK || jsonOf(f.rotated) != `{}` {
		t.Errorf("rotate-secret without flags: exit %d, sent %s; want {}", code, jsonOf(f.rotated))
	}

	code, out, _ = cliRun(t, url, cliToken, "subscriptions", "delete", "billing")
	if code != exitOK || !strings.Contains(out, "deleted billing (2 pending and held deliveries cancelled)") {
		t.Errorf("delete: exit %d %q", code, out)
	}
	if code, _, _ := cliRun(t, url, cliToken, "subscriptions", "delete", "billing"); code != exitFailure {
		t.Errorf("delete again: exit %d, want 1", code)
	}

	code, out, _ = cliRun(t, url, cliToken, "audit", "--limit", "3")
	if code != exitOK || !regexpMatch(out, `(?m)^\S+ \S+ +delete +billing +- +127\.0\.0\.1`) || !strings.Contains(out, "more: --cursor more") {
		t.Errorf("audit: exit %d\n%s", code, out)
	}
	var page api.AuditPage
	if code, out, _ := cliRun(t, url, cliToken, "audit", "--json"); code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Entries) != 6 {
		t.Errorf("audit --json: exit %d %q", code, out)
	}
}

// TestCLISubscriptionBody: create and update take the body's format, the
// transform, the method and the rate limit; list and show print them,
// the transform last, as it was written.
func TestCLISubscriptionBody(t *testing.T) {
	f, url := startFakeAPI(t)
	const transform = "event == \"user.updated\"\n  ? skip\n  : {\"text\": \"New user: \" + data.name}"
	code, out, errOut := cliRun(t, url, cliToken, "subscriptions", "create", "--id", "team-chat", "--url", "https://hooks.slack.example/T0/B0/X",
		"--events", "user.*", "--format", "slack", "--transform", transform, "--method", "put", "--rate-limit", "50/s", "--secret", "")
	if code != exitOK {
		t.Fatalf("create: exit %d\n%s%s", code, out, errOut)
	}
	want := api.SubscriptionInput{ID: ptr("team-chat"), URL: ptr("https://hooks.slack.example/T0/B0/X"), Events: ptr([]string{"user.*"}),
		Secret: ptr(""), Format: ptr("slack"), Transform: ptr(transform), Method: ptr("put"), RateLimit: ptr("50/s")}
	if got := f.inputs[0]; !reflect.DeepEqual(got, want) {
		t.Errorf("create sent %s, want %s", jsonOf(got), jsonOf(want))
	}
	for _, line := range []string{
		"\nformat: +slack \\(the transform below makes the body\\)\n",
		"\nmethod: +PUT\n",
		"\nrate limit: +50/s\n",
		"\ntransform:\n  event == \"user.updated\"\n    \\? skip\n    : \\{\"text\": \"New user: \" \\+ data.name\\}\n",
		"\nno secret: its receiver \\(format slack\\) checks no signature",
	} {
		if !regexpMatch(out, line) {
			t.Errorf("create's output does not match %q:\n%s", line, out)
		}
	}
	if strings.Contains(out, "\nsecret: ") {
		t.Errorf("create without a secret prints one:\n%s", out)
	}

	code, out, _ = cliRun(t, url, cliToken, "subscriptions", "list")
	if code != exitOK || !regexpMatch(out, `(?m)^SUBSCRIPTION +SOURCE +ACTIVE +STATE +FORMAT +METHOD +RATE LIMIT +EVENTS`) ||
		!regexpMatch(out, `(?m)^crm +config +true +healthy +dzdesk +POST +- +request\.\*`) ||
		!regexpMatch(out, `(?m)^team-chat +runtime +true +healthy +slack\+transform +PUT +50/s +user\.\*`) {
		t.Errorf("list: exit %d\n%s", code, out)
	}

	// update sends the fields given; '' removes the transform and the
	// rate limit.
	code, out, errOut = cliRun(t, url, cliToken, "subscriptions", "update", "team-chat", "--transform", "", "--rate-limit", "", "--method", "POST")
	if code != exitOK {
		t.Fatalf("update: exit %d\n%s%s", code, out, errOut)
	}
	if got := jsonOf(f.inputs[len(f.inputs)-1]); got != `{"transform":"","method":"POST","rate_limit":""}` {
		t.Errorf("update sent %s", got)
	}
	if !regexpMatch(out, "\nformat: +slack\n") || !regexpMatch(out, "\nrate limit: +-\n") || strings.Contains(out, "transform") {
		t.Errorf("update's output:\n%s", out)
	}
	code, _, errOut = cliRun(t, url, cliToken, "subscriptions", "update", "team-chat", "--rate-limit", "fast")
	if code != exitUsage || !strings.Contains(errOut, "\n  rate_limit: ") {
		t.Errorf("update --rate-limit fast: exit %d %q, want 2 and the problem", code, errOut)
	}
}

func TestRateLimitOf(t *testing.T) {
	until := time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		s    api.Subscription
		want string
	}{
		{api.Subscription{}, "-"},
		{api.Subscription{RateLimit: "50/s", PacePerSecond: 50}, "50/s"},
		{api.Subscription{RateLimit: "50/s", PacePerSecond: 25}, "50/s (pace 25/s)"},
		{api.Subscription{RateLimit: "600/m", PacePerSecond: 10}, "600/m"},
		{api.Subscription{RateLimit: "600/m", PacePerSecond: 2.5}, "600/m (pace 150/m)"},
		{api.Subscription{RateLimit: "7/m", PacePerSecond: 0.058}, "7/m (pace 3.48/m)"},
		{api.Subscription{RateLimit: "50/s", PacePerSecond: 25, PausedUntil: &until}, "50/s (pace 25/s, paused until " + when(&until) + ")"},
		{api.Subscription{RateLimit: "50/s", PausedUntil: &until}, "50/s (paused until " + when(&until) + ")"},
	} {
		if got := rateLimitOf(tc.s); got != tc.want {
			t.Errorf("rateLimitOf(%+v) = %q, want %q", tc.s, got, tc.want)
		}
	}
}

func TestHelpListsSubscriptions(t *testing.T) {
	code, out, _ := runCmd(t, "help")
	if code != exitOK || !strings.Contains(out, "  subscriptions ") || !strings.Contains(out, "  audit ") {
		t.Errorf("help: exit %d\n%s", code, out)
	}
}

func ptr[T any](v T) *T { return &v }

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func regexpMatch(s, re string) bool { return regexp.MustCompile(re).MatchString(s) }

// A header's value may come from the environment (--header-env), so that
// a credential is not on the command line; an unset variable is bad usage.
func TestCLIHeaderFromTheEnvironment(t *testing.T) {
	f, url := startFakeAPI(t)
	run := func(extra []string, args ...string) (int, string) {
		var out, errb bytes.Buffer
		env := append([]string{"DZHOOK_ADMIN_URL=" + url, "DZHOOK_CONFIG=/nonexistent.yaml", "DZHOOK_ADMIN_TOKEN=" + cliToken}, extra...)
		code := runEnv(context.Background(), append([]string{"dzhook"}, args...), &out, &errb, env)
		return code, errb.String()
	}
	code, errOut := run([]string{"CRM_KEY=Kn0wn-key-value"}, "subscriptions", "create", "--id", "crmkey", "--url", "https://crm.example.com/hook",
		"--events", "*", "--header", "X-Team=billing", "--header-env", "X-Api-Key=CRM_KEY")
	if code != exitOK {
		t.Fatalf("create: exit %d %s", code, errOut)
	}
	if got := f.inputs[len(f.inputs)-1].Headers; got == nil || !reflect.DeepEqual(*got, map[string]string{"X-Team": "billing", "X-Api-Key": "Kn0wn-key-value"}) {
		t.Errorf("headers sent %v", got)
	}
	code, errOut = run(nil, "subscriptions", "create", "--url", "https://crm.example.com/hook", "--events", "*", "--header-env", "X-Api-Key=CRM_KEY")
	if code != exitUsage || !strings.Contains(errOut, "CRM_KEY is not set") {
		t.Errorf("an unset variable: exit %d %q, want 2 naming it", code, errOut)
	}
}

// TestCLIURLAndSecretFromTheEnvironment: a Slack webhook URL is the
// credential, and so is a secret chosen to keep a receiver's; both may
// come from the environment, so that neither is on the command line,
// which other users of the machine can read (found by a review).
func TestCLIURLAndSecretFromTheEnvironment(t *testing.T) {
	f, url := startFakeAPI(t)
	run := func(extra []string, args ...string) (int, string) {
		var out, errb bytes.Buffer
		env := append([]string{"DZHOOK_ADMIN_URL=" + url, "DZHOOK_CONFIG=/nonexistent.yaml", "DZHOOK_ADMIN_TOKEN=" + cliToken}, extra...)
		code := runEnv(context.Background(), append([]string{"dzhook"}, args...), &out, &errb, env)
		return code, out.String() + errb.String()
	}
	hook := "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"
	code, out := run([]string{"SLACK_HOOK=" + hook, "CRM_SECRET=kept-secret-0123456789"}, "subscriptions", "create", "--id", "alerts",
		"--url-env", "SLACK_HOOK", "--events", "*", "--secret-env", "CRM_SECRET")
	if code != exitOK {
		t.Fatalf("create: exit %d %s", code, out)
	}
	if in := f.inputs[len(f.inputs)-1]; in.URL == nil || *in.URL != hook || in.Secret == nil || *in.Secret != "kept-secret-0123456789" {
		t.Errorf("create sent url %v, secret %v; want the variables' values", in.URL, in.Secret)
	}
	code, out = run([]string{"CRM_SECRET=next-secret-0123456789"}, "subscriptions", "rotate-secret", "alerts", "--secret-env", "CRM_SECRET")
	if code != exitOK {
		t.Fatalf("rotate-secret: exit %d %s", code, out)
	}
	if in := f.rotated; in.Secret == nil || *in.Secret != "next-secret-0123456789" {
		t.Errorf("rotate-secret sent %v, want the variable's value", in.Secret)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"subscriptions", "create", "--url-env", "SLACK_HOOK_UNSET", "--events", "*"}, "--url-env: the variable SLACK_HOOK_UNSET is not set or empty"},
		{[]string{"subscriptions", "create", "--url-env", hook, "--events", "*"}, "--url-env takes the NAME of an environment variable"},
		{[]string{"subscriptions", "create", "--url", "https://crm.example.com/hook", "--url-env", "SLACK_HOOK", "--events", "*"}, "give --url or --url-env, not both"},
		{[]string{"subscriptions", "update", "alerts", "--url-env", hook}, "--url-env takes the NAME"},
		{[]string{"subscriptions", "rotate-secret", "alerts", "--secret-env", "kept-secret 0123456789"}, "--secret-env takes the NAME"},
	} {
		code, out := run([]string{"SLACK_HOOK=" + hook}, c.args...)
		if code != exitUsage || !strings.Contains(out, c.want) || strings.Contains(out, "XXXXSECRETXXXX") || strings.Contains(out, "kept-secret") {
			t.Errorf("%v: exit %d %q, want 2 saying %q and no value", c.args, code, out, c.want)
		}
	}
}

// TestStandardWebhooksHelp: --standard-webhooks is told as what it does,
// signing also as Standard Webhooks, with X-DZDESK-Signature still sent
// (internal/fanout sets it on every signed attempt); the help said
// "rather than X-DZDESK-Signature" (found by a review).
func TestStandardWebhooksHelp(t *testing.T) {
	for _, verb := range []string{"create", "update"} {
		code, _, help := runCmd(t, "subscriptions", verb, "-h")
		if code != exitOK {
			t.Fatalf("subscriptions %s -h: exit %d", verb, code)
		}
		_, flagHelp, _ := strings.Cut(help, "\n  -standard-webhooks")
		flagHelp, _, _ = strings.Cut(flagHelp, "\n  -")
		for _, want := range []string{"also sign as Standard Webhooks", "webhook-signature", "X-DZDESK-Signature is still sent, keyed with the whole whsec_"} {
			if !strings.Contains(flagHelp, want) {
				t.Errorf("subscriptions %s -h: --standard-webhooks says %q, want it to say %q", verb, flagHelp, want)
			}
		}
		if strings.Contains(flagHelp, "rather than") {
			t.Errorf("subscriptions %s -h: --standard-webhooks says it replaces X-DZDESK-Signature: %q", verb, flagHelp)
		}
		// The API takes the switch once the secret is a whsec_ one.
		if want := "rotate-secret ID --secret whsec_... first"; verb == "update" && !strings.Contains(flagHelp, want) {
			t.Errorf("subscriptions update -h: --standard-webhooks says %q, want it to say %q", flagHelp, want)
		}
	}
}

// TestCLIShowsSigning: show prints whether a subscription also signs as
// Standard Webhooks and, while a rotation's overlap runs, when the
// previous secret stops being valid and when X-DZDESK-Signature
// switches; never a secret. They were shown nowhere after the rotation's
// answer (found by a review).
func TestCLIShowsSigning(t *testing.T) {
	_, url := startFakeAPI(t)
	if code, out, errOut := cliRun(t, url, cliToken, "subscriptions", "create", "--id", "std", "--url", "https://std.example.com/hook",
		"--events", "request.created", "--standard-webhooks"); code != exitOK {
		t.Fatalf("create: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ := cliRun(t, url, cliToken, "subscriptions", "show", "std")
	if code != exitOK || !regexpMatch(out, `(?m)^standard webhooks: +true$`) || strings.Contains(out, "previous secret") {
		t.Errorf("show before a rotation: exit %d, want standard webhooks: true and no overlap\n%s", code, out)
	}
	if code, out, _ := cliRun(t, url, cliToken, "subscriptions", "rotate-secret", "std"); code != exitOK {
		t.Fatalf("rotate-secret: exit %d\n%s", code, out)
	}
	until := when(ptr(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)))
	code, out, _ = cliRun(t, url, cliToken, "subscriptions", "show", "std")
	if code != exitOK || !regexpMatch(out, `(?m)^previous secret valid until: +`+regexp.QuoteMeta(until)+`$`) ||
		!regexpMatch(out, `(?m)^X-DZDESK-Signature switches at: +`+regexp.QuoteMeta(until)+`$`) || strings.Contains(out, fakeSecret) {
		t.Errorf("show during the overlap: exit %d, want both times at %s and no secret\n%s", code, until, out)
	}
	code, out, _ = cliRun(t, url, cliToken, "subscriptions", "show", "crm")
	if code != exitOK || !regexpMatch(out, `(?m)^standard webhooks: +false$`) {
		t.Errorf("show crm: exit %d, want standard webhooks: false\n%s", code, out)
	}
}
