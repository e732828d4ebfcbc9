package fanout

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestNotificationsSentOnceAcrossProcesses: two processes sharing the
// journal, and a notify.url slow to answer (within the timeout), send
// each notification once. Claimed 20 at a time with a lease of two
// timeouts, those a process reached after its first few were claimed by
// the other again (10 POSTs for 6 notifications in the review's run).
func TestNotificationsSentOnceAcrossProcesses(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	admin := testutil.NewReceiver(t)
	admin.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) {
		time.Sleep(700 * time.Millisecond) // slow, well within the 2 s timeout even on a loaded machine
		return http.StatusOK, nil, "ok"
	})
	const n = 10
	b := &journal.Batch{}
	for i := range n {
		b.Notifications = append(b.Notifications, journal.NotificationRow{Kind: "stream.stalled", Body: fmt.Appendf(nil, `{"text":"n%d"}`, i)})
	}
	if err := store.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	cfg := func(inst string) Config {
		return Config{Journal: store, Instance: inst, PollInterval: 50 * time.Millisecond, Timeout: 2 * time.Second, Notify: NotifyConfig{URL: admin.URL}}
	}
	d1, d2 := start(t, store, cfg("i1")), start(t, store, cfg("i2"))
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, d := range []*Dispatcher{d1, d2} {
		wg.Go(func() { _ = d.Notifier().Run(rctx) })
	}
	testutil.Eventually(t, 30*time.Second, "every notification sent", func() bool {
		var left int
		_ = store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.notifications WHERE sent_at IS NULL`).Scan(&left)
		return left == 0
	})
	cancel()
	wg.Wait()
	seen := map[string]int{}
	for _, r := range admin.Requests() {
		seen[r.Header.Get("X-DZDESK-Delivery")]++
	}
	if len(seen) != n {
		t.Errorf("%d notifications reached notify.url, want %d: %v", len(seen), n, seen)
	}
	for id, c := range seen {
		if c > 1 {
			t.Errorf("notification %s reached notify.url %d times, want once", id, c)
		}
	}
}

// refusingReceiver answers 401 (a wrong secret's answer, not retried)
// while refuse is set, 200 otherwise.
func refusingReceiver(t *testing.T) (*testutil.Receiver, *atomic.Bool) {
	refuse := new(atomic.Bool)
	rc := testutil.NewReceiver(t)
	rc.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) {
		if refuse.Load() {
			return http.StatusUnauthorized, nil, "invalid signature"
		}
		return http.StatusOK, nil, "ok"
	})
	return rc, refuse
}

// stateOf is subscription crm's health as d sees it.
func stateOf(d *Dispatcher) string {
	for _, s := range d.Subscriptions() {
		if s.ID == "crm" {
			return string(s.State)
		}
	}
	return ""
}

// TestRefusedDeliveriesMakeItFailing: a receiver that refuses every
// delivery with an answer not retried (a wrong secret's 401) makes the
// subscription failing after five in a row, and the admin is told once,
// saying why; four refusals, or refusals broken by a success, do not. It
// stayed healthy whatever it refused, every event lost without a word.
func TestRefusedDeliveriesMakeItFailing(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc, refuse := refusingReceiver(t)
	d := start(t, store, Config{Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		Journal: store, Instance: "a", PollInterval: 50 * time.Millisecond, Notify: NotifyConfig{URL: "http://127.0.0.1:9/notify"}})
	evs := orderEvents([]string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"})
	send := func(from, to int) {
		t.Helper()
		for _, ev := range evs[from:to] {
			if err := d.Dispatch(ctx, ev); err != nil {
				t.Fatal(err)
			}
			// One at a time, until its outcome is journaled (after the
			// health it changed): "in a row" is the order the workers
			// take the answers in, which the receiver's need not be.
			testutil.Eventually(t, 10*time.Second, "delivery "+ev.Key+" settled", func() bool {
				var n int
				_ = store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE event_id = $1 AND state IN ('delivered', 'failed')`, ev.ID).Scan(&n)
				return n == 1
			})
		}
	}
	state := func() string { return stateOf(d) }
	refuse.Store(true)
	send(0, 4)
	refuse.Store(false)
	send(4, 5)
	refuse.Store(true)
	send(5, 9)
	if got := state(); got != "healthy" {
		t.Fatalf("after 4 refusals, a success and 4 more: %s, want healthy", got)
	}
	send(9, 10)
	testutil.Eventually(t, 10*time.Second, "failing", func() bool { return state() == "failing" })
	var texts []string
	testutil.Eventually(t, 10*time.Second, "the failing notification journaled", func() bool {
		texts = texts[:0]
		rows, err := store.Pool().Query(ctx, `SELECT convert_from(body, 'UTF8')::jsonb->>'text' FROM dzhook.notifications WHERE kind = 'failing'`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			texts = append(texts, s)
		}
		return len(texts) > 0
	})
	if len(texts) != 1 || !strings.Contains(texts[0], "refused 5 deliveries in a row") || !strings.Contains(texts[0], "HTTP 401") {
		t.Errorf("failing notifications %q, want one naming the refusals and the answer", texts)
	}
}

// TestRefusalsCountAgainFromARecoveryElsewhere: five refusals through
// one process make the subscription failing, another process's 2xx makes
// it healthy again and the first adopts that; the first's next refusal is
// one, not a sixth in a row (it made the subscription failing again, with
// a notification, at every refusal after each recovery).
//
// Each attempt must be made by the process the step names, or the counts
// are not those the test reads. So p1 refuses its five alone (with p2
// running, p1 gives queued deliveries back to the journal for p2 when it
// first sees it, and p2 takes over p1's when p1's 200 ms heartbeat falls
// behind: under load p2 made one of the five and neither counted five),
// and the later attempts are operators' retries, which the process asked
// makes itself.
func TestRefusalsCountAgainFromARecoveryElsewhere(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc, refuse := refusingReceiver(t)
	cfg := func(inst string) Config {
		return Config{Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
			Journal: store, Instance: inst, PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond, Notify: NotifyConfig{URL: "http://127.0.0.1:9/notify"}}
	}
	d1 := start(t, store, cfg("p1"))
	evs := orderEvents([]string{"a", "b", "c", "d", "e"})
	refuse.Store(true)
	for _, ev := range evs {
		if err := d1.Dispatch(ctx, ev); err != nil {
			t.Fatal(err)
		}
		// Its outcome journaled: the health it changed is decided.
		testutil.Eventually(t, 10*time.Second, "delivery "+ev.Key+" failed", func() bool {
			var n int
			_ = store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE event_id = $1 AND state = 'failed'`, ev.ID).Scan(&n)
			return n == 1
		})
	}
	testutil.Eventually(t, 10*time.Second, "p1 failing", func() bool { return stateOf(d1) == "failing" })
	d2 := start(t, store, cfg("p2"))
	testutil.Eventually(t, 10*time.Second, "p2 adopts failing", func() bool { return stateOf(d2) == "failing" })
	retry := func(d *Dispatcher, ev Event, status int) {
		t.Helper()
		if rep, err := d.RetryNow(ctx, deliveryID(ev)); err != nil || rep.StatusCode != status {
			t.Fatalf("RetryNow of %s: %+v, %v; want HTTP %d", ev.Key, rep, err, status)
		}
	}
	refuse.Store(false)
	retry(d2, evs[0], http.StatusOK)
	testutil.Eventually(t, 10*time.Second, "p2 healthy", func() bool { return stateOf(d2) == "healthy" })
	testutil.Eventually(t, 10*time.Second, "p1 adopts healthy", func() bool { return stateOf(d1) == "healthy" })
	refuse.Store(true)
	retry(d1, evs[1], http.StatusUnauthorized)
	if got := stateOf(d1); got != "healthy" {
		t.Errorf("one refusal after a recovery: %s, want healthy", got)
	}
}

// TestFailingNotificationQuotesNoTransformError: a subscription failing
// on a transform's error is said to notify.url (a chat channel) without
// the error's text, which CEL makes quoting the event's values (found by
// a review); an HTTP failure's text is said as ever.
func TestFailingNotificationQuotesNoTransformError(t *testing.T) {
	n := &Notifier{cfg: NotifyConfig{URL: "https://hooks.example.com/admin"}}
	const value = "secret-customer-email@corp.com"
	row := n.message("crm", journal.Healthy, journal.Failing, "a delivery used up its retry schedule",
		attemptResult{ErrorClass: ClassTransform, Error: `invalid RFC 3339 timestamp "` + value + `"`})
	if row == nil || strings.Contains(string(row.Body), value) || !strings.Contains(string(row.Body), "the transform failed") {
		t.Errorf("notification of a transform failure: %s", row.Body)
	}
	row = n.message("crm", journal.Healthy, journal.Failing, "a delivery used up its retry schedule",
		attemptResult{Status: 503, ErrorClass: ClassHTTP, Error: "HTTP 503"})
	if row == nil || !strings.Contains(string(row.Body), `"HTTP 503"`) {
		t.Errorf("notification of an HTTP failure: %s", row.Body)
	}
}

// TestAdoptedFailingIsExplained: a process that takes "failing" from
// another's deliveries shows that one's last answer (status, error, when)
// in its API and dashboard, not its own last 200 with no error (found by
// a review: behind a Service with two replicas, half the answers said
// failing without saying why).
func TestAdoptedFailingIsExplained(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	var fail atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	cfg := func(instance string) Config {
		return Config{
			Subscriptions: []Subscription{{ID: "crm", URL: srv.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
			Journal:       store, Instance: instance, PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond,
			RetrySchedule: []time.Duration{0},
		}
	}
	d1, d2 := start(t, store, cfg("i1")), start(t, store, cfg("i2"))
	testutil.Eventually(t, 10*time.Second, "the two processes see each other", func() bool { return d1.Peers() == 1 && d2.Peers() == 1 })
	evs := orderEvents([]string{"a", "b"})
	if err := d2.Dispatch(ctx, evs[0]); err != nil { // i2's last answer: a 200
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "i2's delivery made", func() bool { return d2.Subscriptions()[0].LastStatus == http.StatusOK })
	fail.Store(true)
	if err := d1.Dispatch(ctx, evs[1]); err != nil { // i1's delivery uses up its schedule: failing
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "i2 takes failing, with i1's answer", func() bool {
		st := d2.Subscriptions()[0]
		return st.State == "failing" && st.LastStatus == http.StatusServiceUnavailable && st.LastError == "HTTP 503" && st.LastFailureAt != nil
	})
}
