package journal

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestPruneKeepsAReplayStillGoing: retention keeps a replay, however long
// finished, while any of its deliveries waits (a paused subscription, a
// receiver down): pruned, GET and cancel answered 404 and a second replay
// of its window was accepted, sending each event twice. Once none waits,
// it goes. Found by a review.
func TestPruneKeepsAReplayStillGoing(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	r, req := replayOfEvents(t, s, 3)
	if st, err := s.StepReplay(ctx, r.ID, 10, 100, replayTo(time.Now().Add(time.Hour))); err != nil || !st.Done {
		t.Fatalf("StepReplay = %+v, %v; want done", st, err)
	}
	// Its deliveries wait past journal.retention (here an hour; the
	// replay finished two hours ago).
	db.Exec(t, `UPDATE dzhook.replays SET finished_at = now() - interval '2 hours'`)
	if _, err := s.PruneStep(ctx, time.Now().Add(-time.Hour), 100); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetReplay(ctx, "erp", "rpl_1"); err != nil {
		t.Errorf("GetReplay of a replay whose deliveries wait, after a prune: %v", err)
	}
	req.ID = "rpl_2"
	var oe *ReplayOverlapError
	if _, _, err := s.CreateReplay(ctx, req); !errors.As(err, &oe) || oe.Running.ID != "rpl_1" {
		t.Errorf("a replay overlapping one whose deliveries wait, after a prune: %v, want refused naming rpl_1", err)
	}
	// Delivered: nothing waits, and the replay goes with the next prune.
	db.Exec(t, `UPDATE dzhook.deliveries SET state = 'delivered' WHERE replay_id = 'rpl_1'`)
	if _, err := s.PruneStep(ctx, time.Now().Add(-time.Hour), 100); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetReplay(ctx, "erp", "rpl_1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetReplay of a replay finished past the retention, nothing waiting: %v, want ErrNotFound", err)
	}
}

// TestPruneKeepsWhatAReplayHasYetToRead: a replay held at its bound (a
// slow receiver, a paused subscription) across a prune still finds the
// rest of its window: retention deleted those events, old and with their
// deliveries finished, and the replay ended done having skipped them.
// Found by a review.
func TestPruneKeepsWhatAReplayHasYetToRead(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	old := time.Now().Add(-40 * 24 * time.Hour).UTC().Truncate(time.Microsecond)
	b := batchOf(0, 5)
	for i := range b.Deliveries {
		at := old.Add(time.Duration(i) * time.Second)
		b.Deliveries[i].CreatedAt, b.Deliveries[i].LastAttemptAt, b.Events[i].OccurredAt = at, at, at
	}
	// One more event, before the window: retention prunes it as ever.
	before := batchOf(5, 1)
	before.Deliveries[0].CreatedAt, before.Deliveries[0].LastAttemptAt, before.Events[0].OccurredAt = old.Add(-time.Hour), old.Add(-time.Hour), old.Add(-time.Hour)
	for _, b := range []*Batch{b, before} {
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	db.Exec(t, `UPDATE dzhook.events SET created_at = occurred_at`) // also for the prune of events left without deliveries
	r, w, err := s.CreateReplay(ctx, ReplayRequest{ID: "rpl_1", Subscription: "erp", Since: old, Until: time.Now(),
		Types: []string{"request.created"}, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	plan := replayTo(time.Now())
	// The bound lets one delivery through; the prune comes while the
	// replay waits for it.
	if _, err := s.StepReplay(ctx, r.ID, 10, 1, plan); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PruneStep(ctx, time.Now().Add(-30*24*time.Hour), 100); err != nil {
		t.Fatal(err)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.events WHERE id = 'whk_00000000000000000000000005'`); n != 0 {
		t.Errorf("the old event before the replay's window was kept")
	}
	db.Exec(t, `UPDATE dzhook.deliveries SET state = 'delivered' WHERE subscription_id = 'erp'`)
	for range 10 {
		st, err := s.StepReplay(ctx, r.ID, 10, 100, plan)
		if err != nil {
			t.Fatal(err)
		}
		if st.Done {
			break
		}
	}
	got, err := s.GetReplay(ctx, "erp", r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != ReplayDone || got.Created != w.Matched || w.Matched != 5 {
		t.Errorf("replay %s with %d deliveries of the window's %d events, want done with all 5: retention pruned what it had yet to read", got.State, got.Created, w.Matched)
	}
	// Done, the replay keeps nothing: its events go with their deliveries.
	db.Exec(t, `UPDATE dzhook.deliveries SET state = 'delivered', created_at = now() - interval '40 days', last_attempt_at = now() - interval '40 days' WHERE subscription_id = 'erp'`)
	if _, err := s.PruneStep(ctx, time.Now().Add(-30*24*time.Hour), 100); err != nil {
		t.Fatal(err)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.events`); n != 0 {
		t.Errorf("%d old events kept once the replay was done", n)
	}
}

// TestReplayRecordedBesideAPruneWaits: a replay asked for while a
// retention step runs waits for it: the step read the running replays'
// windows at its start, and would prune the new one's events.
func TestReplayRecordedBesideAPruneWaits(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", s.replayLock()); err != nil { // as PruneStep
		t.Fatal(err)
	}
	created := make(chan error, 1)
	go func() {
		_, _, err := s.CreateReplay(ctx, ReplayRequest{ID: "rpl_1", Subscription: "erp", Since: time.Now().Add(-time.Hour), Until: time.Now(),
			Types: []string{"request.created"}, RequestedBy: "test"})
		created <- err
	}()
	testutil.Eventually(t, 10*time.Second, "the replay waiting for the retention step", func() bool {
		select {
		case err := <-created:
			t.Fatalf("the replay was recorded beside a retention step (%v), want it waiting", err)
		default:
		}
		var n int
		_ = s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`).Scan(&n)
		return n == 1
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-created; err != nil {
		t.Fatal(err)
	}
}
