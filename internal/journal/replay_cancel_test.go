package journal

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestCancelledReplayStopsWhatProcessesHeld: a cancel stops a replay's
// deliveries that processes held at that moment, once nobody is sending
// them. One a live process was attempting finishes its attempt; when the
// attempt fails, its retry is cancelled by the sweep (it used to go
// through the whole retry schedule: a second cancel only answers that
// the replay is finished). One a dead process held is cancelled at once
// (it used to be taken over and sent). Found by a review, 2026-12-06.
func TestCancelledReplayStopsWhatProcessesHeld(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, batchOf(0, 2)); err != nil {
		t.Fatal(err)
	}
	for _, i := range []string{"live", "dead"} {
		if err := s.Register(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	r, _, err := s.CreateReplay(ctx, ReplayRequest{ID: "rpl_1", Subscription: "erp", Since: time.Now().Add(-time.Hour), Until: time.Now().Add(time.Minute),
		Patterns: []string{"request.created"}, Types: []string{"request.created"}, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.StepReplay(ctx, r.ID, 10, 100, func(_ Replay, _ int, events []ReplayEvent) ([]DeliveryRow, int) {
		var rows []DeliveryRow
		for _, e := range events {
			rows = append(rows, DeliveryRow{ID: "dlv_" + e.ID[4:] + "_erp", EventID: e.ID, SubscriptionID: "erp", EventType: e.Type, NextAttemptAt: time.Now().Add(-time.Second)})
		}
		return rows, len(events)
	}); err != nil {
		t.Fatal(err)
	}
	live, err := s.Claim(ctx, []ClaimWant{{Subscription: "erp", Limit: 1}}, "live", "tok1", 30*time.Second)
	if err != nil || len(live) != 1 {
		t.Fatalf("claim by live: %v %v", live, err)
	}
	dead, err := s.Claim(ctx, []ClaimWant{{Subscription: "erp", Limit: 1}}, "dead", "tok2", 30*time.Second)
	if err != nil || len(dead) != 1 {
		t.Fatalf("claim by dead: %v %v", dead, err)
	}
	if _, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.instances SET heartbeat_at = now() - interval '1 hour' WHERE id = 'dead'`)); err != nil {
		t.Fatal(err)
	}
	_, n, err := s.CancelReplay(ctx, "erp", r.ID, "stop", 30*time.Second)
	if err != nil || n != 1 {
		t.Fatalf("CancelReplay cancelled %d (%v), want 1: the dead process's delivery", n, err)
	}
	// The live process's attempt in flight at the cancel fails: a retry.
	if err := s.Write(ctx, &Batch{Updates: []DeliveryUpdate{{ID: live[0].ID, State: Pending, Attempts: 1, NextAttemptAt: time.Now().Add(-time.Second), LastStatus: 500}}}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SweepCancelledReplays(ctx, 30*time.Second); err != nil || n != 1 {
		t.Fatalf("SweepCancelledReplays = %d, %v; want the failed attempt's retry cancelled", n, err)
	}
	if again, err := s.Claim(ctx, []ClaimWant{{Subscription: "erp", Limit: 10}}, "other", "tok3", 30*time.Second); err != nil || len(again) != 0 {
		t.Fatalf("claimed after the cancel: %v (%v)", again, err)
	}
	var waiting int
	if err := s.pool.QueryRow(ctx, s.q(`SELECT count(*) FROM {{schema}}.deliveries WHERE replay_id = 'rpl_1' AND state <> 'cancelled'`)).Scan(&waiting); err != nil || waiting != 0 {
		t.Fatalf("%d of the replay's deliveries not cancelled (%v)", waiting, err)
	}
	if n, err := s.SweepCancelledReplays(ctx, 30*time.Second); err != nil || n != 0 {
		t.Fatalf("a second sweep = %d, %v; want nothing", n, err)
	}
	// An operator's retry-failed after the cancel is theirs: the sweep
	// leaves it (a review of the sweep, 2026-12-06).
	if _, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.deliveries SET state = 'failed' WHERE id = $1`), live[0].ID); err != nil {
		t.Fatal(err)
	}
	if n, err := s.RetryFailed(ctx, "erp", nil, nil, "other", 30*time.Second); err != nil || n != 1 {
		t.Fatalf("RetryFailed = %d, %v; want 1", n, err)
	}
	if n, err := s.SweepCancelledReplays(ctx, 30*time.Second); err != nil || n != 0 {
		t.Fatalf("the sweep cancelled %d (%v) of the operator's retries", n, err)
	}
	if got, err := s.Claim(ctx, []ClaimWant{{Subscription: "erp", Limit: 10}}, "other", "tok4", 30*time.Second); err != nil || len(got) != 1 {
		t.Fatalf("the operator's retry claimed: %v (%v), want it", got, err)
	}
}

// TestOverlappingReplayRefused: while a replay of a subscription runs, a
// second one of part of its window and types is refused, naming it (a
// double click re-sent every event of the window twice: found by a
// review), also when both are asked for at once; a window or types beside
// it, another subscription's, or one asked for after it was cancelled,
// is recorded.
func TestOverlappingReplayRefused(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now()
	ask := func(id, sub string, since, until time.Time, types ...string) error {
		_, _, err := s.CreateReplay(ctx, ReplayRequest{ID: id, Subscription: sub, Since: since, Until: until, Types: types, RequestedBy: "test"})
		return err
	}
	if err := ask("rpl_1", "erp", now.Add(-2*time.Hour), now, "request.created", "request.updated"); err != nil {
		t.Fatal(err)
	}
	var oe *ReplayOverlapError
	if err := ask("rpl_2", "erp", now.Add(-time.Hour), now.Add(time.Hour), "request.updated"); !errors.As(err, &oe) || oe.Running.ID != "rpl_1" || !errors.Is(err, ErrReplayOverlaps) {
		t.Errorf("an overlapping replay: %v, want refused naming rpl_1", err)
	}
	for _, tc := range []struct {
		id, sub      string
		since, until time.Time
		types        []string
	}{
		{"rpl_3", "erp", now, now.Add(time.Hour), []string{"request.created"}},      // after the window (until excluded)
		{"rpl_4", "erp", now.Add(-time.Hour), now, []string{"user.deactivated"}},    // other types
		{"rpl_5", "crm", now.Add(-2 * time.Hour), now, []string{"request.created"}}, // another subscription
	} {
		if err := ask(tc.id, tc.sub, tc.since, tc.until, tc.types...); err != nil {
			t.Errorf("%s: %v, want recorded", tc.id, err)
		}
	}
	// Done making its deliveries (a small window is, at its first step),
	// some still to send: still going.
	if _, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.replays SET state = 'done' WHERE id = 'rpl_1'`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, &Batch{Deliveries: []DeliveryRow{{ID: "dlv_r1", EventID: "whk_r1", SubscriptionID: "erp", EventType: "request.created",
		State: Pending, NextAttemptAt: now.Add(time.Hour), CreatedAt: now}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.deliveries SET replay_id = 'rpl_1' WHERE id = 'dlv_r1'`)); err != nil {
		t.Fatal(err)
	}
	if err := ask("rpl_2b", "erp", now.Add(-time.Hour), now, "request.updated"); !errors.As(err, &oe) || oe.Running.ID != "rpl_1" {
		t.Errorf("overlapping a done replay with a delivery still to send: %v, want refused naming rpl_1", err)
	}
	if _, _, err := s.CancelReplay(ctx, "erp", "rpl_1", "stop", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := ask("rpl_6", "erp", now.Add(-time.Hour), now, "request.created"); err != nil {
		t.Errorf("after the cancel: %v, want recorded", err)
	}
	// Asked for while another request holds the lock, its replay not yet
	// committed: it waits, then sees that replay.
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := s.lockReplays(ctx, tx, "ops"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, s.q(`INSERT INTO {{schema}}.replays (id, subscription_id, since, until, patterns, types, matched)
		VALUES ('rpl_first', 'ops', $1, $2, '{}', '{request.created}', 0)`), now.Add(-time.Hour), now); err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() { second <- ask("rpl_second", "ops", now.Add(-time.Hour), now, "request.created") }()
	testutil.Eventually(t, 10*time.Second, "the second request waiting for the lock", func() bool {
		var n int
		_ = s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`).Scan(&n)
		return n == 1
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-second; !errors.As(err, &oe) || oe.Running.ID != "rpl_first" {
		t.Errorf("a replay asked for while another was being recorded: %v, want refused naming rpl_first", err)
	}
}

// replayOfEvents writes n events and records rpl_1, a replay of erp's
// request.created events over the last hour; it returns the replay and
// its request.
func replayOfEvents(t *testing.T, s *Store, n int) (Replay, ReplayRequest) {
	t.Helper()
	if err := s.Write(context.Background(), batchOf(0, n)); err != nil {
		t.Fatal(err)
	}
	req := ReplayRequest{ID: "rpl_1", Subscription: "erp", Since: time.Now().Add(-time.Hour), Until: time.Now().Add(time.Minute),
		Types: []string{"request.created"}, RequestedBy: "test"}
	r, _, err := s.CreateReplay(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return r, req
}

// replayTo is a ReplayPlan making a delivery of each event to erp, due
// at due.
func replayTo(due time.Time) ReplayPlan {
	return func(_ Replay, _ int, events []ReplayEvent) ([]DeliveryRow, int) {
		var rows []DeliveryRow
		for _, e := range events {
			rows = append(rows, DeliveryRow{ID: "dlv_" + e.ID[4:] + "_erp", EventID: e.ID, SubscriptionID: "erp", EventType: e.Type, NextAttemptAt: due})
		}
		return rows, len(events)
	}
}

// TestCancelDuringTheLastStep: a cancel that comes while a replay's last
// step (the one that makes it done) is in progress waits for the step,
// then cancels the deliveries it made. It used to check "done with
// deliveries still waiting" in the snapshot of the statement that waited,
// from before the step committed: it answered that the replay was
// finished, and every delivery went out. Found by a review.
func TestCancelDuringTheLastStep(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	r, _ := replayOfEvents(t, s, 3)
	release, inPlan := make(chan struct{}), make(chan struct{})
	stepped := make(chan error, 1)
	go func() {
		plan := replayTo(time.Now().Add(time.Hour))
		_, err := s.StepReplay(ctx, r.ID, 10, 100, func(r Replay, scanned int, events []ReplayEvent) ([]DeliveryRow, int) {
			close(inPlan) // a filter evaluating, say
			<-release
			return plan(r, scanned, events)
		})
		stepped <- err
	}()
	<-inPlan
	type result struct {
		n   int
		err error
	}
	cancelled, cancelDone := make(chan result, 1), make(chan error, 1)
	go func() {
		_, n, err := s.CancelReplay(ctx, "erp", "rpl_1", "stop", 30*time.Second)
		cancelled <- result{n, err}
		cancelDone <- err
	}()
	if finished, _ := waitLockedOrDone(t, db, "transactionid", cancelDone); finished {
		t.Fatal("the cancel did not wait for the step")
	}
	close(release)
	if err := <-stepped; err != nil {
		t.Fatal(err)
	}
	got := <-cancelled
	if got.err != nil || got.n != 3 {
		t.Errorf("CancelReplay during the last step = %d, %v; want the step's 3 deliveries cancelled", got.n, got.err)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE replay_id = 'rpl_1' AND state = 'pending'`); n != 0 {
		t.Errorf("%d of the replay's deliveries still pending after its cancel", n)
	}
}

// TestFailedReplayWithDeliveriesWaiting: a replay failed (its
// subscription missing for a minute: config.yaml edited) keeps the
// deliveries it made pending, sent if the subscription comes back. It is
// still going: a cancel stops them, and a replay of the same window is
// refused until then (it answered "nothing to cancel", and a second
// replay sent each event twice). Found by a review.
func TestFailedReplayWithDeliveriesWaiting(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	r, req := replayOfEvents(t, s, 3)
	// The bound lets two through; then the subscription disappears.
	if _, err := s.StepReplay(ctx, r.ID, 10, 2, replayTo(time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if err := s.FailReplay(ctx, r.ID, `subscription "erp" no longer exists`); err != nil {
		t.Fatal(err)
	}
	req.ID = "rpl_2"
	var oe *ReplayOverlapError
	if _, _, err := s.CreateReplay(ctx, req); !errors.As(err, &oe) || oe.Running.ID != "rpl_1" {
		t.Errorf("a replay overlapping a failed one with deliveries waiting: %v, want refused naming rpl_1", err)
	}
	if got, n, err := s.CancelReplay(ctx, "erp", r.ID, "stop", 30*time.Second); err != nil || n != 2 || got.State != ReplayCancelled {
		t.Errorf("CancelReplay of the failed replay = %s, %d, %v; want cancelled, its 2 deliveries with it", got.State, n, err)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE replay_id = 'rpl_1' AND state = 'pending'`); n != 0 {
		t.Errorf("%d of the failed replay's deliveries still pending after its cancel", n)
	}
	if _, _, err := s.CreateReplay(ctx, req); err != nil {
		t.Errorf("a replay of the window once the failed one is cancelled: %v, want recorded", err)
	}
	// Failed with nothing waiting: finished.
	if err := s.FailReplay(ctx, "rpl_2", "gone"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CancelReplay(ctx, "erp", "rpl_2", "stop", 30*time.Second); !errors.Is(err, ErrReplayFinished) {
		t.Errorf("cancel of a failed replay with nothing waiting: %v, want ErrReplayFinished", err)
	}
}

// TestReplayStepEndsWithTheEventsItsPlanLookedAt: a plan that looked at
// fewer events than it was given (its time for a step spent) ends the
// step with those: the cursor moves past them only, the replay is not
// done, and the next step gives the plan the rest, scanned counting on.
func TestReplayStepEndsWithTheEventsItsPlanLookedAt(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	r, _ := replayOfEvents(t, s, 5)
	var given [][]string
	var scannedAt []int
	plan := func(limit int) ReplayPlan {
		return func(r Replay, scanned int, events []ReplayEvent) ([]DeliveryRow, int) {
			var ids []string
			for _, e := range events {
				ids = append(ids, e.ID)
			}
			given, scannedAt = append(given, ids), append(scannedAt, scanned)
			rows, _ := replayTo(time.Now().Add(time.Hour))(r, scanned, events[:min(limit, len(events))])
			return rows, min(limit, len(events))
		}
	}
	st, err := s.StepReplay(ctx, r.ID, 10, 100, plan(2))
	if err != nil || st.Done || st.Scanned != 2 || st.Created != 2 {
		t.Fatalf("first step: %+v, %v; want 2 scanned, 2 created, not done", st, err)
	}
	st, err = s.StepReplay(ctx, r.ID, 10, 100, plan(10))
	if err != nil || !st.Done || st.Scanned != 3 || st.Created != 3 {
		t.Fatalf("second step: %+v, %v; want the other 3, done", st, err)
	}
	if len(given) != 2 || len(given[0]) != 5 || len(given[1]) != 3 || given[1][0] != given[0][2] || scannedAt[1] != 2 {
		t.Errorf("plans given %v (scanned %v); want all 5, then the 3 after the first two, scanned 2", given, scannedAt)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE replay_id = 'rpl_1'`); n != 5 {
		t.Errorf("%d deliveries made, want 5", n)
	}
}

// TestCancelReplayBesideDeleteOfItsSubscription: a replay's cancel and
// the delete of its runtime subscription, at once, both finish: the
// replay cancelled, its deliveries with it. The delete used to cancel
// the subscription's deliveries and then stop its replays, the cancel
// to lock the replay and then cancel its deliveries: with the replay's
// row held a moment (a step in progress), the two waited on each other
// and the delete failed with "deadlock detected" (40P01). Found by a
// review. A done replay whose deliveries still wait is cancelled the
// same way: the delete locked only running replays, and went on to its
// deliveries beside the cancel's (found by a later review).
func TestCancelReplayBesideDeleteOfItsSubscription(t *testing.T) {
	for _, done := range []bool{false, true} {
		t.Run(fmt.Sprintf("done=%v", done), func(t *testing.T) { cancelReplayBesideDelete(t, done) })
	}
}

func cancelReplayBesideDelete(t *testing.T, done bool) {
	s, db := newStore(t)
	ctx := context.Background()
	if err := s.CreateRuntime(ctx, RuntimeSubscription{ID: "erp", Spec: []byte(`{}`), Secret: "sealed"}, AuditRow{Action: "create", Subscription: "erp"}); err != nil {
		t.Fatal(err)
	}
	r, _ := replayOfEvents(t, s, 3)
	// Two of three events: the replay is still running, 2 deliveries
	// wait. All three: it is done, and its 3 deliveries wait.
	events := 2
	if done {
		events = 3
	}
	if st, err := s.StepReplay(ctx, r.ID, events, 100, replayTo(time.Now().Add(time.Hour))); err != nil || st.Done || st.Created != events {
		t.Fatalf("step: %+v, %v; want %d deliveries, still running", st, err, events)
	}
	if done {
		if st, err := s.StepReplay(ctx, r.ID, events, 100, replayTo(time.Now().Add(time.Hour))); err != nil || !st.Done || st.Created != 0 {
			t.Fatalf("last step: %+v, %v; want none made, done", st, err)
		}
	}
	// The replay's row held, as a step holds it.
	holder, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, s.q(`SELECT 1 FROM {{schema}}.replays WHERE id = 'rpl_1' FOR UPDATE`)); err != nil {
		t.Fatal(err)
	}
	cancelled := make(chan error, 1)
	go func() {
		_, _, err := s.CancelReplay(ctx, "erp", r.ID, "stop", 30*time.Second)
		cancelled <- err
	}()
	if finished, err := waitLockedOrDone(t, db, "transactionid", cancelled); finished {
		t.Fatalf("the cancel did not wait for the replay's row: %v", err)
	}
	deleted := make(chan error, 1)
	go func() {
		_, err := s.DeleteRuntime(ctx, "erp", AuditRow{Action: "delete", Subscription: "erp"})
		deleted <- err
	}()
	// The delete queues behind the cancel for the replay's row.
	if finished, err := waitLockedOrDone(t, db, "tuple", deleted); finished {
		t.Fatalf("the delete did not wait for the replay's row: %v", err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-cancelled; err != nil {
		t.Errorf("CancelReplay beside the delete: %v", err)
	}
	if err := <-deleted; err != nil {
		t.Errorf("DeleteRuntime beside the cancel: %v", err)
	}
	got, err := s.GetReplay(ctx, "erp", r.ID)
	if err != nil || got.State != ReplayCancelled {
		t.Errorf("the replay: %s, %v; want cancelled", got.State, err)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE replay_id = 'rpl_1' AND state <> 'cancelled'`); n != 0 {
		t.Errorf("%d of the replay's deliveries not cancelled", n)
	}
}
