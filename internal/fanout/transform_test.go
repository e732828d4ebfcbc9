package fanout

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
	"github.com/dzdesk/dzhook/signer"
)

// slackTransform is the seed's Slack use case as a transform.
const slackTransform = `{"text": "⚠️ SLA at risk: " + data.requestId + " (" + data.slaType + ", " + data.timeRemaining + " left)"}`

// envelopes builds events from (type, data) pairs, in stream order.
func envelopes(pairs ...string) []Event {
	src := ids.NewSource("transform-test")
	var evs []Event
	for i := 0; i+1 < len(pairs); i += 2 {
		id := src.NewID(pglogrepl.LSN(2000+i), 0, 0)
		body := fmt.Sprintf(`{"id":%q,"event":%q,"timestamp":"2024-01-15T14:30:00Z","data":%s}`, id, pairs[i], pairs[i+1])
		evs = append(evs, Event{ID: id, Type: pairs[i], Timestamp: time.Now(), Body: []byte(body), CommitLSN: pglogrepl.LSN(2000 + i), Key: "req_1"})
	}
	return evs
}

const slaWarning = `{"requestId":"req_123","slaType":"resolution","targetTime":"2024-01-15T18:00:00Z","percentElapsed":75,"timeRemaining":"2h 30m"}`

func dispatchAll(t *testing.T, d *Dispatcher, evs []Event) {
	t.Helper()
	for _, ev := range evs {
		if err := d.Dispatch(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
}

// waitState waits until a delivery is journaled in state and returns it
// with its event's body and attempts.
func waitState(t *testing.T, store *journal.Store, id string, state journal.State) (journal.Delivery, []byte, []journal.Attempt) {
	t.Helper()
	var d journal.Delivery
	var body []byte
	var attempts []journal.Attempt
	testutil.Eventually(t, 20*time.Second, "delivery "+id+" "+string(state), func() bool {
		var err error
		d, body, attempts, err = store.GetDelivery(context.Background(), id)
		return err == nil && d.State == state
	})
	return d, body, attempts
}

// TestTransformedBodyIsSignedAndKept: the seed's Slack message, made by
// a transform, is what the receiver gets, signed over those bytes; the
// first two attempts fail, and the retries send the same bytes even
// though the transform changed meanwhile (a reload): the body is made
// once per delivery and kept in the journal, which shows both the event
// and what was sent.
func TestTransformedBodyIsSignedAndKept(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	rc.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		if n <= 2 {
			return http.StatusServiceUnavailable, nil, "down"
		}
		return http.StatusOK, nil, "ok"
	})
	secret := []byte("transform-secret-0123456789")
	sub := Subscription{ID: "slack", URL: rc.URL, Events: []string{"sla.*"}, Secret: secret, Active: true, Transform: slackTransform}
	d := start(t, store, Config{
		Subscriptions: []Subscription{sub}, Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second,
		RetrySchedule: []time.Duration{0, 500 * time.Millisecond, 500 * time.Millisecond}, Logger: testutil.Logger(t),
	})
	evs := envelopes("sla.warning", slaWarning)
	dispatchAll(t, d, evs)
	rc.Wait(t, 1, 10*time.Second)
	// A new transform from now on: the delivery keeps the body it has.
	sub.Transform = `{"text": "changed"}`
	if err := d.Reload(context.Background(), []Subscription{sub}); err != nil {
		t.Fatal(err)
	}
	reqs := rc.Wait(t, 3, 20*time.Second)
	want := `{"text":"⚠️ SLA at risk: req_123 (resolution, 2h 30m left)"}`
	for i, r := range reqs {
		if string(r.Body) != want {
			t.Errorf("attempt %d sent %s, want %s", i+1, r.Body, want)
		}
		if err := signer.Verify(r.Header.Get(signer.HeaderSignature), r.Body, secret); err != nil {
			t.Errorf("attempt %d: the signature does not cover the bytes sent: %v", i+1, err)
		}
		if got := r.Header.Get("Content-Type"); got != "application/json" {
			t.Errorf("attempt %d: Content-Type %q", i+1, got)
		}
	}
	dl, event, attempts := waitState(t, store, ids.DeliveryID(evs[0].ID, "slack"), journal.Delivered)
	if string(dl.Sent) != want {
		t.Errorf("journal: sent %q, want %q", dl.Sent, want)
	}
	if !bytes.Equal(event, evs[0].Body) {
		t.Errorf("journal: the event's body is %s, want the envelope %s", event, evs[0].Body)
	}
	if len(attempts) != 3 {
		t.Errorf("%d attempts journaled, want 3", len(attempts))
	}
}

// TestTransformNullSkips: a transform that gives null (skip) records the
// delivery as skipped, with the reason, and sends nothing; the others
// go out. A PUT subscription sends PUT.
func TestTransformNullSkips(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	methods := make(chan string, 10)
	rc.SetRespond(func(_ int, r *http.Request, _ []byte) (int, http.Header, string) {
		methods <- r.Method
		return http.StatusOK, nil, "ok"
	})
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "alerts", URL: rc.URL, Events: []string{"*"}, Secret: []byte("transform-secret-0123456789"), Active: true,
			Method: http.MethodPut, Transform: `event == "sla.warning" ? {"text": "at risk: " + data.requestId} : skip`}},
		Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second, Logger: testutil.Logger(t),
	})
	evs := envelopes("request.created", `{"id":"req_1","title":"x"}`, "sla.warning", slaWarning, "request.updated", `{"id":"req_1"}`)
	dispatchAll(t, d, evs)
	reqs := rc.Wait(t, 1, 10*time.Second)
	if string(reqs[0].Body) != `{"text":"at risk: req_123"}` {
		t.Errorf("sent %s", reqs[0].Body)
	}
	if m := <-methods; m != http.MethodPut {
		t.Errorf("method %s, want PUT", m)
	}
	for _, ev := range []Event{evs[0], evs[2]} {
		dl, _, _ := waitState(t, store, ids.DeliveryID(ev.ID, "alerts"), journal.Skipped)
		if dl.LastError == nil || !strings.Contains(*dl.LastError, "null") {
			t.Errorf("%s: skipped without the reason: %v", ev.Type, dl.LastError)
		}
		if dl.Sent != nil {
			t.Errorf("%s: skipped, yet a body was kept: %s", ev.Type, dl.Sent)
		}
	}
	waitState(t, store, ids.DeliveryID(evs[1].ID, "alerts"), journal.Delivered)
	if n := len(rc.Requests()); n != 1 {
		t.Errorf("%d requests, want 1 (the others are skipped)", n)
	}
}

// TestTransformOverBudgetFails: a transform that would run for long is
// stopped at its cost budget; the delivery fails at once with class
// transform and nothing sent, the subscription is failing (the admin is
// told), and the process goes on: the next event is delivered.
func TestTransformOverBudgetFails(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("transform-secret-0123456789"), Active: true,
			// Each step looks for a 2,000-byte string in another (CEL
			// counts 200 × 200 units): over the budget at the 25th, in
			// milliseconds. Pairs of 3,000 items (x + y) took 0.9 s to
			// it under the race detector, and on a loaded machine ran
			// past the transform's second first (stopped all the same,
			// but not at its cost budget).
			Transform: `{"found": data.items.map(x, data.s.contains(data.s + x))}`}},
		Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second, Logger: testutil.Logger(t),
	})
	items := make([]string, 3000)
	for i := range items {
		items[i] = fmt.Sprintf("%q", fmt.Sprint(i))
	}
	evs := envelopes("request.updated", `{"s":"`+strings.Repeat("y", 2000)+`","items":[`+strings.Join(items, ",")+`]}`,
		"request.updated", `{"s":"ab","items":["","c"]}`)
	start := time.Now()
	dispatchAll(t, d, evs)
	dl, _, attempts := waitState(t, store, ids.DeliveryID(evs[0].ID, "crm"), journal.Failed)
	if len(attempts) != 1 || attempts[0].ErrorClass == nil || *attempts[0].ErrorClass != ClassTransform {
		t.Fatalf("attempts %+v, want one of class transform", attempts)
	}
	if attempts[0].StatusCode != nil || !strings.Contains(*attempts[0].Error, "cost budget") {
		t.Errorf("attempt: status %v, error %q", attempts[0].StatusCode, *attempts[0].Error)
	}
	if dl.Sent != nil {
		t.Errorf("a failed transform kept a body: %s", dl.Sent)
	}
	reqs := rc.Wait(t, 1, 10*time.Second)
	if string(reqs[0].Body) != `{"found":[true,false]}` {
		t.Errorf("the next event sent %s", reqs[0].Body)
	}
	t.Logf("both events handled in %s", time.Since(start).Round(time.Millisecond))
	var st SubscriptionStatus
	for _, s := range d.Subscriptions() {
		st = s
	}
	if st.Stats.Failed != 1 {
		t.Errorf("stats: %d failed, want 1", st.Stats.Failed)
	}
}

// TestHeadersSameNameDifferentCase: a subscription whose headers differ
// only in case (configuration refuses it now; a runtime subscription
// stored before may have one) sends the same one every time it is
// compiled: it was the map's order, at random.
func TestHeadersSameNameDifferentCase(t *testing.T) {
	seen := map[string]int{}
	for range 50 {
		s, err := compile(Subscription{ID: "s", URL: "http://127.0.0.1:1/", Events: []string{"*"}, Active: true,
			Headers: map[string]string{"X-Api-Key": "first", "x-api-key": "second"}},
			&Config{QueueSize: 4, Concurrency: 1}, func() int64 { return 1 })
		if err != nil {
			t.Fatal(err)
		}
		seen[s.headers.Get("X-Api-Key")]++
	}
	if len(seen) != 1 || seen["first"] != 50 {
		t.Errorf("X-Api-Key sent over 50 compiles: %v, want first every time", seen)
	}
}

// TestTransformFailuresSaidOnce: a transform failing on one kind of event
// fails each delivery of it, and says so once, with the count since, not
// a WARN per delivery (1,000 a second at 1,000 events a second).
func TestTransformFailuresSaidOnce(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	var logs testutil.SyncBuffer
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("transform-secret-0123456789"), Active: true,
			Transform: `{"title": data.title}`}},
		Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	var pairs []string
	for i := range 6 {
		pairs = append(pairs, "request.updated", fmt.Sprintf(`{"id":"req_%d"}`, i)) // no title
	}
	evs := envelopes(pairs...)
	dispatchAll(t, d, evs)
	for _, ev := range evs {
		waitState(t, store, ids.DeliveryID(ev.ID, "crm"), journal.Failed)
	}
	if n := strings.Count(logs.String(), "transform failed"); n != 1 {
		t.Errorf("%d WARN lines for 6 failed deliveries, want 1:\n%s", n, logs.String())
	}
}
