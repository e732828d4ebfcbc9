package journal

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestMoveKeepsTimersDueBeforeIt: an SLA's target moved (Keep: the new
// target, Due: the change's commit) cancels the old target's timers due
// after the move and keeps, marked superseded at the move, those due
// before: the SLA was breached first, and the clock fires that breach.
// Later changes of the SLA keep it, the first start's scan too, and so
// does a move within the same batch as the arming; a deletion of the SLA
// cancels it. Changes of an SLA in one batch are applied in order. The move used to delete every unfired timer of the old
// target, due or not: a breach before an extension was lost when the
// clock had not fired it yet (found by a review).
func TestMoveKeepsTimersDueBeforeIt(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	old, moved, moveAt := now.Add(-2*time.Minute), now.Add(time.Hour), now.Add(-time.Minute)
	timer := func(sla, kind string, target, fire time.Time) TimerRow {
		return TimerRow{SLAID: sla, Kind: kind, TargetAt: target, FireAt: fire, RequestID: sla, StartedAt: now.Add(-time.Hour)}
	}
	write := func(changes ...TimerChange) {
		t.Helper()
		if err := s.Write(ctx, &Batch{Timers: changes}); err != nil {
			t.Fatal(err)
		}
	}
	timers := func() map[string]time.Time { // "sla kind target" → superseded_at
		t.Helper()
		rows, err := s.pool.Query(ctx, s.q(`SELECT sla_id, kind, target_at, coalesce(superseded_at, '0001-01-01 00:00:00+00') FROM {{schema}}.sla_timers WHERE fired_at IS NULL`))
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		out := map[string]time.Time{}
		for rows.Next() {
			var id, kind string
			var target, sup time.Time
			if err := rows.Scan(&id, &kind, &target, &sup); err != nil {
				t.Fatal(err)
			}
			if sup.Year() == 1 {
				sup = time.Time{}
			}
			out[id+" "+kind+" "+target.UTC().Format(time.RFC3339)] = sup
		}
		return out
	}
	key := func(sla, kind string, target time.Time) string {
		return sla + " " + kind + " " + target.Format(time.RFC3339)
	}

	// SLA 7 armed for old (breach due, a warning at 90% not yet), then
	// moved; SLA 8 armed and moved in one batch.
	write(TimerChange{SLAID: "7", Keep: old, Arm: []TimerRow{timer("7", "breach", old, old), timer("7", "warning:90", old, moveAt.Add(time.Second))}})
	write(TimerChange{SLAID: "7", Keep: moved, Due: moveAt, Arm: []TimerRow{timer("7", "breach", moved, moved)}})
	// Two changes of an SLA in one batch, applied in order.
	write(TimerChange{SLAID: "8", Keep: old, Arm: []TimerRow{timer("8", "breach", old, old), timer("8", "warning:90", old, moveAt.Add(time.Second))}},
		TimerChange{SLAID: "8", Keep: moved, Due: moveAt, Arm: []TimerRow{timer("8", "breach", moved, moved)}})
	// SLA 9's target extended before its breach was due, then touched
	// after it, both in one batch: the first change cancels the breach, and
	// the second's later time must not keep it (merged into one change, the
	// second's time kept it, and a breach that never happened fired).
	extendAt := old.Add(-time.Second)
	write(TimerChange{SLAID: "9", Keep: old, Arm: []TimerRow{timer("9", "breach", old, old)}})
	write(TimerChange{SLAID: "9", Keep: moved, Due: extendAt, Arm: []TimerRow{timer("9", "breach", moved, moved)}},
		TimerChange{SLAID: "9", Keep: moved, Due: moveAt, Arm: []TimerRow{timer("9", "breach", moved, moved)}})
	if _, ok := timers()[key("9", "breach", old)]; ok {
		t.Errorf("SLA 9: the breach of a target extended before it was due was kept by a later change of the same batch")
	}
	got := timers()
	for _, sla := range []string{"7", "8"} {
		if sup, ok := got[key(sla, "breach", old)]; !ok || !sup.Equal(moveAt) {
			t.Errorf("SLA %s: the old target's breach, due before the move: kept %v, superseded at %v; want kept, superseded at %v", sla, ok, sup, moveAt)
		}
		if _, ok := got[key(sla, "warning:90", old)]; ok {
			t.Errorf("SLA %s: the old target's warning due after the move was kept", sla)
		}
		if sup, ok := got[key(sla, "breach", moved)]; !ok || !sup.IsZero() {
			t.Errorf("SLA %s: the new target's breach: armed %v, superseded at %v; want armed, not superseded", sla, ok, sup)
		}
	}

	// A later change of SLA 7 and the first start's scan keep the kept
	// breach and its first supersession.
	write(TimerChange{SLAID: "7", Keep: moved, Due: now, Arm: []TimerRow{timer("7", "breach", moved, moved)}})
	mark, err := s.TimerMark(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ArmBootstrap(ctx, "dzhook", []TimerChange{{SLAID: "7", Keep: moved, Arm: []TimerRow{timer("7", "breach", moved, moved)}}}, true, mark, mark); err != nil {
		t.Fatal(err)
	}
	if sup, ok := timers()[key("7", "breach", old)]; !ok || !sup.Equal(moveAt) {
		t.Errorf("after a later change and the scan: the kept breach kept %v, superseded at %v; want kept, at %v", ok, sup, moveAt)
	}
	due, err := s.ClaimTimers(ctx, 10, time.Minute)
	if err != nil || len(due) != 2 {
		t.Fatalf("claimed %+v (%v), want the two kept breaches", due, err)
	}
	for _, d := range due {
		if !d.TargetAt.Equal(old) || !d.SupersededAt.Equal(moveAt) {
			t.Errorf("claimed %+v, want the breach of %v superseded at %v", d, old, moveAt)
		}
	}

	// SLA 10 armed for old by the stream running beside the scan, its
	// breach due; moved since, but the scan reads the move before the
	// stream does: it leaves the due breach to the stream's change, which
	// keeps it. (SLA 11's due timer of another target, armed before the
	// scan began, an earlier slot's, goes.)
	write(TimerChange{SLAID: "11", Keep: old, Arm: []TimerRow{timer("11", "breach", old, old)}})
	start, err := s.TimerMark(ctx)
	if err != nil {
		t.Fatal(err)
	}
	write(TimerChange{SLAID: "10", Keep: old, Arm: []TimerRow{timer("10", "breach", old, old)}})
	mark, err = s.TimerMark(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ArmBootstrap(ctx, "dzhook", []TimerChange{{SLAID: "10", Keep: moved, Arm: []TimerRow{timer("10", "breach", moved, moved)}},
		{SLAID: "11", Keep: moved, Arm: []TimerRow{timer("11", "breach", moved, moved)}}}, true, mark, start); err != nil {
		t.Fatal(err)
	}
	if _, ok := timers()[key("10", "breach", old)]; !ok {
		t.Error("the first start's scan deleted a due breach of a target it read as moved, before the stream read the move")
	}
	if _, ok := timers()[key("11", "breach", old)]; ok {
		t.Error("the first start's scan kept a due timer of another target armed before it began")
	}
	write(TimerChange{SLAID: "10", Keep: moved, Due: moveAt, Arm: []TimerRow{timer("10", "breach", moved, moved)}})
	if sup, ok := timers()[key("10", "breach", old)]; !ok || !sup.Equal(moveAt) {
		t.Errorf("SLA 10 after the stream's move: the old breach kept %v, superseded at %v; want kept, at %v", ok, sup, moveAt)
	}

	// Deleted: nothing of the SLA is left to fire.
	write(TimerChange{SLAID: "8"})
	for k := range timers() {
		if k[:2] == "8 " {
			t.Errorf("timer %s left after the SLA's deletion", k)
		}
	}
}

// TestCoalescedTouchesOneRound: changes of an SLA that keep its target
// are one change (two statements a change made a catch-up batch of a
// much-touched SLA take seconds); a move between them stays its own,
// and the timers are as the changes applied in order leave them.
func TestCoalescedTouchesOneRound(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	first, second := now.Add(time.Hour), now.Add(2*time.Hour)
	breach := func(target time.Time) TimerRow {
		return TimerRow{SLAID: "12", Kind: "breach", TargetAt: target, FireAt: target, RequestID: "12", StartedAt: now}
	}
	warning := breach(first)
	warning.Kind, warning.FireAt = "warning:75", now.Add(45*time.Minute)
	var changes []TimerChange
	changes = append(changes, TimerChange{SLAID: "12", Keep: first, Arm: []TimerRow{breach(first), warning}})
	for i := range 100 {
		changes = append(changes, TimerChange{SLAID: "12", Keep: first, Due: now.Add(time.Duration(i) * time.Second), Arm: []TimerRow{breach(first)}})
	}
	changes = append(changes, TimerChange{SLAID: "12", Keep: second, Due: now.Add(10 * time.Minute), Arm: []TimerRow{breach(second)}})
	changes = append(changes, TimerChange{SLAID: "12", Keep: second, Due: now.Add(11 * time.Minute), Arm: []TimerRow{breach(second)}})
	if got := coalesceTimers(changes); len(got) != 2 || !got[0].Keep.Equal(first) || len(got[0].Arm) != 2 || !got[0].Due.IsZero() || !got[1].Keep.Equal(second) {
		t.Fatalf("coalesced to %d changes %+v, want the first target's (its two timers, the first's Due) and the move's", len(got), got)
	}
	if len(changes) != 103 || len(changes[0].Arm) != 2 {
		t.Fatal("coalesceTimers changed its argument")
	}
	if err := s.Write(ctx, &Batch{Timers: changes}); err != nil {
		t.Fatal(err)
	}
	var targets []time.Time
	rows, err := s.pool.Query(ctx, s.q(`SELECT target_at FROM {{schema}}.sla_timers WHERE sla_id = '12' ORDER BY target_at`))
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var at time.Time
		if err := rows.Scan(&at); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, at.UTC())
	}
	if len(targets) != 1 || !targets[0].Equal(second) {
		t.Errorf("timers of SLA 12: %v, want the moved target's breach only (the first target's were due after the move)", targets)
	}
}

// TestArmThresholds: warning timers an open SLA lacks are armed only
// beside a live breach of the same target, never over a timer of the
// same SLA, kind and target; a move the stream is writing meanwhile
// (its batch holding the checkpoint's row, as every batch of the stream
// does) is waited for, and its SLA's old target gets nothing (the first
// version checked a generation mark, which could not see that batch, and
// armed a warning of the target the SLA had left: found by a review).
func TestArmThresholds(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	t1, t2 := now.Add(time.Hour), now.Add(3*time.Hour)
	timer := func(sla, kind string, target, fire time.Time) TimerRow {
		return TimerRow{SLAID: sla, Kind: kind, TargetAt: target, FireAt: fire, RequestID: sla, StartedAt: now.Add(-time.Hour)}
	}
	for _, sla := range []string{"7", "8", "9"} {
		if err := s.Write(ctx, &Batch{Timers: []TimerChange{{SLAID: sla, Keep: t1, Arm: []TimerRow{timer(sla, "breach", t1, t1), timer(sla, "warning:50", t1, now.Add(time.Minute))}}}}); err != nil {
			t.Fatal(err)
		}
	}
	// 8 moved to t2 (its t1 timers gone), 9 completed (all gone).
	if err := s.Write(ctx, &Batch{Timers: []TimerChange{{SLAID: "8", Keep: t2, Due: now, Arm: []TimerRow{timer("8", "breach", t2, t2)}}, {SLAID: "9"}}}); err != nil {
		t.Fatal(err)
	}
	// Nothing missing: nothing locked, so no checkpoint needed (every
	// start's pass locked each open SLA's breach to find nothing: found
	// by a review).
	if n, err := s.ArmThresholds(ctx, "dzhook", "sys", []TimerRow{timer("7", "warning:50", t1, now.Add(time.Minute))}); n != 0 || err != nil {
		t.Fatalf("with nothing missing: armed %d (%v), want 0 and no lock", n, err)
	}
	arm := []TimerRow{timer("7", "warning:90", t1, now.Add(50*time.Minute))}
	// No checkpoint of the cluster yet: no turn to take with the stream.
	if _, err := s.ArmThresholds(ctx, "dzhook", "sys", arm); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("without a checkpoint: %v, want ErrNoCheckpoint", err)
	}
	if _, err := s.pool.Exec(ctx, s.q(`INSERT INTO {{schema}}.checkpoints (slot, lsn, system_id) VALUES ('dzhook', 1, 'other')`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ArmThresholds(ctx, "dzhook", "sys", arm); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("beside another cluster's checkpoint: %v, want ErrNoCheckpoint", err)
	}
	if _, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.checkpoints SET system_id = 'sys'`)); err != nil {
		t.Fatal(err)
	}
	n, err := s.ArmThresholds(ctx, "dzhook", "sys", []TimerRow{
		timer("7", "warning:90", t1, now.Add(50*time.Minute)),
		timer("7", "warning:50", t1, now.Add(2*time.Minute)),  // there already
		timer("8", "warning:90", t1, now.Add(50*time.Minute)), // the target it left
		timer("9", "warning:90", t1, now.Add(50*time.Minute)), // completed
	})
	if err != nil || n != 1 {
		t.Fatalf("armed %d (%v), want 1", n, err)
	}
	fireOf := func(sla, kind string, target time.Time) (fire time.Time, ok bool) {
		t.Helper()
		err := s.pool.QueryRow(ctx, s.q(`SELECT fire_at FROM {{schema}}.sla_timers WHERE sla_id = $1 AND kind = $2 AND target_at = $3`), sla, kind, target).Scan(&fire)
		return fire, err == nil
	}
	if _, ok := fireOf("7", "warning:90", t1); !ok {
		t.Error("SLA 7's warning:90 not armed")
	}
	if fire, _ := fireOf("7", "warning:50", t1); !fire.Equal(now.Add(time.Minute)) {
		t.Errorf("SLA 7's warning:50 fires at %v, want left at %v", fire, now.Add(time.Minute))
	}
	for _, sla := range []string{"8", "9"} {
		if _, ok := fireOf(sla, "warning:90", t1); ok {
			t.Errorf("SLA %s armed a warning for a target it left", sla)
		}
	}

	// SLA 7 moves to t2 in a stream batch still being written.
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, s.q(`SELECT 1 FROM {{schema}}.checkpoints WHERE slot = 'dzhook' AND system_id = 'sys' FOR NO KEY UPDATE`)); err != nil {
		t.Fatal(err)
	}
	var move statements
	s.queueTimers(&move, []TimerChange{{SLAID: "7", Keep: t2, Due: now, Arm: []TimerRow{timer("7", "breach", t2, t2)}}}, nil)
	for _, st := range move.list {
		if _, err := tx.Exec(ctx, st.sql, st.args...); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.ArmThresholds(ctx, "dzhook", "sys", []TimerRow{timer("7", "warning:75", t1, now.Add(30*time.Minute))})
		done <- err
	}()
	testutil.Eventually(t, 10*time.Second, "ArmThresholds waiting for the stream's batch at the checkpoint's row", func() bool {
		var waiting int
		err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
			AND query LIKE '%checkpoints%FOR SHARE%'`).Scan(&waiting)
		return err == nil && waiting == 1
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, ok := fireOf("7", "warning:75", t1); ok {
		t.Error("a warning armed for the target SLA 7 was moving off, beside the stream's batch")
	}
}

// TestBreachDatedAtItsChangeStaysSo: a breach armed later than its target
// (dated at the change that made the SLA breached) is not moved back to
// the target by a later change of the SLA that arms it again, which
// cannot tell: neither in one batch (coalesced) nor in the next (the
// upsert). A warning is armed as the later change says.
func TestBreachDatedAtItsChangeStaysSo(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	target, reopened := now.Add(-time.Minute), now.Add(-10*time.Second)
	breach := func(sla string, fire time.Time) TimerRow {
		return TimerRow{SLAID: sla, Kind: "breach", TargetAt: target, FireAt: fire, RequestID: sla, StartedAt: now.Add(-time.Hour)}
	}
	// 20: the reopen and a later touch in one batch. 21: the reopen's
	// batch, then the touch's.
	if err := s.Write(ctx, &Batch{Timers: []TimerChange{
		{SLAID: "20", Keep: target, Due: reopened, Arm: []TimerRow{breach("20", reopened)}},
		{SLAID: "20", Keep: target, Due: reopened.Add(time.Second), Arm: []TimerRow{breach("20", target)}},
		{SLAID: "21", Keep: target, Due: reopened, Arm: []TimerRow{breach("21", reopened)}},
	}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, &Batch{Timers: []TimerChange{
		{SLAID: "21", Keep: target, Due: reopened.Add(time.Second), Arm: []TimerRow{breach("21", target)}},
	}}); err != nil {
		t.Fatal(err)
	}
	for _, sla := range []string{"20", "21"} {
		var fire time.Time
		if err := s.pool.QueryRow(ctx, s.q(`SELECT fire_at FROM {{schema}}.sla_timers WHERE sla_id = $1 AND kind = 'breach'`), sla).Scan(&fire); err != nil {
			t.Fatal(err)
		}
		if !fire.Equal(reopened) {
			t.Errorf("SLA %s's breach due %s, want the reopen's %s (not the target's %s)", sla, fire.UTC(), reopened, target)
		}
	}
}
