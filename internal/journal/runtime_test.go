package journal

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRecreateWaitsUntilTheDeletedIsStopped: a deleted runtime
// subscription's id is refused (StillStoppingError) while its delete is
// fresh and while deliveries of the deleted one still wait: a process
// that had not seen the delete took the new subscription for an edit of
// the old and handed it the old one's queue, so events the delete was
// to stop went to the new URL (found by a review, 2026-12-06: 28 of 60).
func TestRecreateWaitsUntilTheDeletedIsStopped(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	sub := RuntimeSubscription{ID: "x", Spec: []byte(`{}`), Secret: "sealed"}
	if err := s.CreateRuntime(ctx, sub, AuditRow{Action: "create", Subscription: "x"}); err != nil {
		t.Fatal(err)
	}
	// A delivery another process holds for it (owned by a live instance:
	// the delete does not cancel it; that process does once it stops x).
	if err := s.Register(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	b := batchOf(0, 1)
	b.Attempts = nil
	for i := range b.Deliveries {
		d := &b.Deliveries[i]
		d.SubscriptionID, d.Owner, d.State, d.Attempts, d.LastStatus = "x", "other", Pending, 0, 0
		d.NextAttemptAt = time.Now().Add(time.Hour)
	}
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteRuntime(ctx, "x", AuditRow{Action: "delete", Subscription: "x"}); err != nil {
		t.Fatal(err)
	}
	var stopping *StillStoppingError
	if err := s.CreateRuntime(ctx, sub, AuditRow{Action: "create", Subscription: "x"}); !errors.As(err, &stopping) || stopping.Waiting != 1 {
		t.Fatalf("created again at once: %v, want StillStoppingError with 1 waiting", err)
	}
	// Long after the delete, with the delivery still waiting: refused.
	if _, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.runtime_subscriptions SET deleted_at = now() - interval '1 hour' WHERE id = 'x'`)); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateRuntime(ctx, sub, AuditRow{Action: "create", Subscription: "x"}); !errors.As(err, &stopping) {
		t.Fatalf("created again with a delivery of the deleted one waiting: %v", err)
	}
	// The process stopped it: nothing waits; created again.
	if n, err := s.CancelDeliveries(ctx, "x", 0); err != nil || n != 0 {
		t.Fatalf("CancelDeliveries = %d, %v (the owner is alive: its own stop cancels)", n, err)
	}
	if err := s.Unregister(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.CancelDeliveries(ctx, "x", 0); err != nil || n != 1 {
		t.Fatalf("CancelDeliveries after the owner stopped = %d, %v; want 1", n, err)
	}
	if err := s.CreateRuntime(ctx, sub, AuditRow{Action: "create", Subscription: "x"}); err != nil {
		t.Fatalf("created again once the deleted one stopped: %v", err)
	}
	if _, err := s.DeleteRuntime(ctx, "x", AuditRow{Action: "delete", Subscription: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateRuntime(ctx, sub, AuditRow{Action: "create", Subscription: "x"}); !errors.As(err, &stopping) || stopping.Waiting != 0 || stopping.DeletedAgo >= RecreateAfter {
		t.Fatalf("created again within %s of its delete: %v", RecreateAfter, err)
	}
}

// TestRecreatedSubscriptionStartsAfresh: a runtime subscription created
// again with a deleted one's id takes neither its pause (which a restart
// or another process read from the journal: its events recorded skipped)
// nor its failed deliveries: retry-failed and a single retry left them
// to the deleted one and went to the new URL with the new secret (found
// by a review, 2026-12-06). The new one's own failures are retried.
func TestRecreatedSubscriptionStartsAfresh(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	sub := RuntimeSubscription{ID: "x", Spec: []byte(`{}`), Secret: "sealed"}
	if err := s.CreateRuntime(ctx, sub, AuditRow{Action: "create", Subscription: "x"}); err != nil {
		t.Fatal(err)
	}
	failed := func(from int) string {
		t.Helper()
		b := batchOf(from, 1)
		b.Attempts = nil
		b.Deliveries[0].SubscriptionID, b.Deliveries[0].State, b.Deliveries[0].LastStatus = "x", Failed, 400
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
		return b.Deliveries[0].ID
	}
	old := failed(0)
	if err := s.SetPaused(ctx, "x", true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteRuntime(ctx, "x", AuditRow{Action: "delete", Subscription: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.runtime_subscriptions SET deleted_at = now() - interval '1 minute' WHERE id = 'x'`)); err != nil {
		t.Fatal(err)
	}
	// The deleted one's created_at and deliveries are older than the
	// delete; in the test they are seconds old, so move them back.
	if _, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.deliveries SET created_at = now() - interval '2 minutes'`)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPaused(ctx, "x", true); err != nil { // a process that ran it, late
		t.Fatal(err)
	}
	if err := s.CreateRuntime(ctx, sub, AuditRow{Action: "create", Subscription: "x"}); err != nil {
		t.Fatal(err)
	}
	states, err := s.SubscriptionStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range states {
		if st.ID == "x" && (st.Paused || st.State != Healthy) {
			t.Fatalf("the new subscription starts %+v: the deleted one's", st)
		}
	}
	if n, err := s.RetryFailed(ctx, "x", nil, nil, "i1", 30*time.Second); err != nil || n != 0 {
		t.Fatalf("retry-failed took %d of the deleted one's deliveries (%v)", n, err)
	}
	if _, err := s.ClaimForRetry(ctx, old, "i1", "tok", 30*time.Second); !errors.Is(err, ErrEarlierSubscription) {
		t.Fatalf("a retry of the deleted one's delivery: %v, want ErrEarlierSubscription", err)
	}
	mine := failed(1)
	if n, err := s.RetryFailed(ctx, "x", nil, nil, "i1", 30*time.Second); err != nil || n != 1 {
		t.Fatalf("retry-failed of the new one's failure = %d, %v; want 1", n, err)
	}
	if _, err := s.ClaimForRetry(ctx, mine, "i1", "tok", 30*time.Second); err != nil {
		t.Fatalf("a retry of the new one's delivery: %v", err)
	}
}
