package fanout

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

func deliveryState(t *testing.T, store *journal.Store, id string) (state string, attempts int, owned bool) {
	t.Helper()
	var owner *string
	err := store.Pool().QueryRow(context.Background(),
		`SELECT state, attempts, owner FROM dzhook.deliveries WHERE id = $1`, id).Scan(&state, &attempts, &owner)
	if err != nil {
		return "", 0, false
	}
	return state, attempts, owner != nil
}

// deliveredOrder lists the receiver's successful deliveries of evs, in
// arrival order, as E0, E1, ….
func deliveredOrder(rc *testutil.OrderReceiver, evs []Event) string {
	var order []string
	for _, a := range rc.Attempts() {
		if a.Status != http.StatusOK {
			continue
		}
		for i, ev := range evs {
			if ev.ID == a.EventID {
				order = append(order, fmt.Sprintf("E%d", i))
			}
		}
	}
	return fmt.Sprint(order)
}

// A manual retry of an ordered delivery waiting behind its key's first
// delivery (which waits for its retry) is refused, naming that one: sent,
// it reached the receiver before the events it follows. Retrying the
// first one instead lets the key go on in order.
func TestRetryNowKeepsItsKeysOrder(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	evs := orderEvents([]string{"req_X", "req_X", "req_X"})
	rc := testutil.NewOrderReceiver(t, failFirst(1, evs[0]))
	d := start(t, store, ordered(store, rc.URL, OrderEntity, 0, time.Hour))
	if err := d.SyncOrder(ctx); err != nil {
		t.Fatal(err)
	}
	dispatchAll(t, d, evs)
	testutil.Eventually(t, 20*time.Second, "E0 waits for its retry, E2 behind it in the journal", func() bool {
		s0, a0, o0 := deliveryState(t, store, deliveryID(evs[0]))
		s2, _, o2 := deliveryState(t, store, deliveryID(evs[2]))
		return s0 == "pending" && a0 == 1 && !o0 && s2 == "pending" && !o2
	})
	_, err := d.RetryNow(ctx, deliveryID(evs[2]))
	var behind *journal.BehindError
	if !errors.As(err, &behind) || behind.Head != deliveryID(evs[0]) {
		t.Fatalf("RetryNow(E2) = %v, want it refused behind %s", err, deliveryID(evs[0]))
	}
	if s, a, o := deliveryState(t, store, deliveryID(evs[2])); s != "pending" || a != 0 || o {
		t.Errorf("E2 after the refusal: %s, %d attempts, owned %v; want pending, untouched", s, a, o)
	}
	if _, err := d.RetryNow(ctx, deliveryID(evs[0])); err != nil {
		t.Fatalf("RetryNow(E0): %v", err)
	}
	rc.WaitDelivered(t, 3, 20*time.Second)
	if got := deliveredOrder(rc, evs); got != "[E0 E1 E2]" {
		t.Errorf("delivered %s, want [E0 E1 E2]", got)
	}
}

// A held delivery (its subscription paused) is not retried by hand: a
// failed attempt made it failed, and the resume then sent its key's later
// deliveries without it.
func TestRetryNowOfAHeldDeliveryRefused(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	var down atomic.Bool
	down.Store(true)
	rc := testutil.NewOrderReceiver(t, func(testutil.Attempt) bool { return down.Load() })
	cfg := ordered(store, rc.URL, OrderEntity, 0, time.Minute)
	cfg.Subscriptions[0].QueueWhileInactive = true
	d := start(t, store, cfg)
	if err := d.SyncOrder(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Pause(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	evs := orderEvents([]string{"req_X", "req_X"})
	dispatchAll(t, d, evs)
	testutil.Eventually(t, 10*time.Second, "both held", func() bool {
		s0, _, _ := deliveryState(t, store, deliveryID(evs[0]))
		s1, _, _ := deliveryState(t, store, deliveryID(evs[1]))
		return s0 == "held" && s1 == "held"
	})
	if _, err := d.RetryNow(ctx, deliveryID(evs[0])); !errors.Is(err, journal.ErrHeld) {
		t.Fatalf("RetryNow(held E0) = %v, want ErrHeld", err)
	}
	if n := len(rc.Attempts()); n != 0 {
		t.Errorf("%d attempts reached the receiver of a paused subscription", n)
	}
	down.Store(false)
	if _, err := d.Resume(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	rc.WaitDelivered(t, 2, 20*time.Second)
	if got := deliveredOrder(rc, evs); got != "[E0 E1]" {
		t.Errorf("delivered %s, want [E0 E1]", got)
	}
}

// A failed manual retry of a delivery that still has automatic retries
// does not use its schedule up: the subscription stays healthy (it was
// marked failing, the admin notified, with a retry still to come).
func TestManualRetryLeavesTheScheduleItsSteps(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	evs := orderEvents([]string{"req_X"})
	rc := testutil.NewOrderReceiver(t, failFirst(2, evs[0]))
	d := start(t, store, ordered(store, rc.URL, OrderNone, 0, time.Hour))
	dispatchAll(t, d, evs)
	testutil.Eventually(t, 10*time.Second, "E0 waits for its retry", func() bool {
		s, a, o := deliveryState(t, store, deliveryID(evs[0]))
		return s == "pending" && a == 1 && !o
	})
	rep, err := d.RetryNow(ctx, deliveryID(evs[0]))
	if err != nil || rep.Delivered {
		t.Fatalf("RetryNow = %+v, %v; want a failed attempt", rep, err)
	}
	if s, a, _ := deliveryState(t, store, deliveryID(evs[0])); s != "pending" || a != 2 {
		t.Errorf("delivery after the manual retry: %s, %d attempts; want pending (its retry in an hour), 2", s, a)
	}
	if st := d.Subscriptions()[0].State; st != journal.Healthy {
		t.Errorf("subscription %s after a failed manual retry with the schedule's last step to come, want healthy", st)
	}
}

// A replay keys a custom event by the whole replay, even one named
// request.*: its live key was the outbox row's column or the message's
// field, not its data's id, so two of one request went out in parallel.
func TestReplayKeyOfACustomRequestEvent(t *testing.T) {
	s, err := compile(Subscription{ID: "crm", URL: "https://x.example", Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, Ordering: OrderEntity}, &Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	evs := []journal.ReplayEvent{
		{ID: "whk_1", Type: "request.escalated", Body: []byte(`{"id":"whk_1","event":"request.escalated","data":{"id":"esc_1","level":1}}`)},
		{ID: "whk_2", Type: "request.escalated", Body: []byte(`{"id":"whk_2","event":"request.escalated","data":{"id":"esc_2","level":2}}`)},
		{ID: "whk_3", Type: "request.created", Body: []byte(`{"id":"whk_3","event":"request.created","data":{"id":"req_1"}}`)},
	}
	rows, _ := replayPlan(s, time.Now(), func(*sub, Event, error) {})(journal.Replay{ID: "rpl_1"}, 0, evs)
	if len(rows) != 3 || rows[0].OrderingKey != rows[1].OrderingKey || rows[2].OrderingKey != "replay:rpl_1:req_1" {
		t.Errorf("replay keys %q, %q, %q; want the two custom events under one key, request.created under its request's",
			rows[0].OrderingKey, rows[1].OrderingKey, rows[2].OrderingKey)
	}
}

// TestRetryNowOfARetryFailedDelivery: a failed delivery that a retry of
// failed deliveries made pending (the subscription paused, so it waits)
// and that an operator then retries by hand is that retry's attempt:
// failing, the delivery is failed again, not left pending and due for
// the scheduler to take as an automatic attempt on the whole schedule
// again (which also marked the subscription failing: found by a review).
func TestRetryNowOfARetryFailedDelivery(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	var status atomic.Int32
	status.Store(http.StatusBadRequest)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(int(status.Load())) }))
	t.Cleanup(srv.Close)
	d := start(t, store, ordered(store, srv.URL, OrderNone, 0, time.Minute, time.Minute))
	evs := orderEvents([]string{"req_X"})
	dispatchAll(t, d, evs)
	id := deliveryID(evs[0])
	testutil.Eventually(t, 10*time.Second, "the delivery failed by a 400", func() bool { s, _, _ := deliveryState(t, store, id); return s == "failed" })
	if err := d.Pause(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	if n, err := d.RetryFailed(ctx, "crm", nil, nil); err != nil || n != 1 {
		t.Fatalf("RetryFailed = %d, %v; want 1", n, err)
	}
	status.Store(http.StatusInternalServerError)
	if rep, err := d.RetryNow(ctx, id); err != nil || rep.StatusCode != http.StatusInternalServerError {
		t.Fatalf("RetryNow: %+v, %v", rep, err)
	}
	if s, attempts, _ := deliveryState(t, store, id); s != "failed" || attempts != 2 {
		t.Errorf("after a failed Retry now of a retry-failed delivery: %s after %d attempts, want failed after 2", s, attempts)
	}
}

// TestFailedTestSendIsNoFailedDelivery: an operator's test send that
// fails is not counted among the subscription's failed deliveries (the
// API's, the dashboard's and the metric's count), which a retry of
// failed deliveries would then not find (found by a review).
func TestFailedTestSendIsNoFailedDelivery(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	t.Cleanup(srv.Close)
	d := start(t, store, ordered(store, srv.URL, OrderNone, 0, time.Hour))
	ev := orderEvents([]string{"req_T"})[0]
	ev.ID = "whk_test_0011223344556677"
	if rep, err := d.SendTest(ctx, "crm", ev); err != nil || rep.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("SendTest: %+v, %v", rep, err)
	}
	var failed int
	if err := store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE test AND state = 'failed'`).Scan(&failed); err != nil || failed != 1 {
		t.Fatalf("%d failed test sends in the journal (%v), want 1", failed, err)
	}
	b, err := store.Backlogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b["crm"].Failed != 0 || b["crm"].Pending != 0 {
		t.Errorf("backlog %+v counts the test send", b["crm"])
	}
}
