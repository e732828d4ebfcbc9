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
