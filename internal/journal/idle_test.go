package journal

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestIdlePositionCheckpointsCommitsBeforeIt: a position the stream was
// idle at (Writer.Idle), a gap an operator accepts and a slot position
// adopted move the checkpoint to end at that position and to cover the
// commits before it only: a transaction whose commit record starts
// exactly there (open while the stream was idle) is still streamed and
// must not be skipped as journaled (the pipeline skips commits at or
// below the checkpoint). Idle acknowledges the position less one. All
// three used to put the checkpoint at the position itself (found by a
// review, 2026-12-06).
func TestIdlePositionCheckpointsCommitsBeforeIt(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	acks := make(chan pglogrepl.LSN, 8)
	w := runWriter(t, WriterConfig{Store: s, Slot: "dzhook", SystemID: "sys", Linger: -1, Ack: func(l pglogrepl.LSN) { acks <- l }})

	const x = pglogrepl.LSN(0x1958F00)
	if err := w.Idle(ctx, x); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-acks:
		if got != x-1 {
			t.Fatalf("Idle(%s) acknowledged %s, want %s", x, got, x-1)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the idle position was never acknowledged")
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.LSN != x-1 || cp.End != x {
		t.Fatalf("checkpoint after Idle(%s) = %+v (%v), want LSN %s, End %s", x, cp, err, x-1, x)
	}
	const to = pglogrepl.LSN(0x2000000)
	if err := s.AcceptGap(ctx, Gap{Slot: "dzhook", SystemID: "sys", From: x, To: to}, 1, "test"); err != nil {
		t.Fatal(err)
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.LSN != to-1 || cp.End != to {
		t.Fatalf("checkpoint after an accepted gap to %s = %+v (%v), want LSN %s, End %s", to, cp, err, to-1, to)
	}
	const adopted = pglogrepl.LSN(0x3000000)
	if err := s.AdoptSlotPosition(ctx, "dzhook", "sys", 1, adopted); err != nil {
		t.Fatal(err)
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.LSN != adopted-1 || cp.End != adopted {
		t.Fatalf("checkpoint after adopting %s = %+v (%v), want LSN %s, End %s", adopted, cp, err, adopted-1, adopted)
	}
}

// TestCheckpointTimeline: a checkpoint keeps the timeline of the position
// it keeps (a stale write below it leaves both), written by a batch, by
// the writer (from WriterConfig.Timeline), by an accepted gap or an
// adopted slot position; 0 is kept as unknown (NULL), as rows of before
// journal version 17 read.
func TestCheckpointTimeline(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	for _, w := range []struct {
		sys       string
		lsn       pglogrepl.LSN
		tli, want int32
	}{{"A", 100, 1, 1}, {"A", 50, 2, 1}, {"A", 100, 2, 2}, {"A", 120, 0, 0}, {"A", 130, 3, 3}, {"B", 7, 1, 1}} {
		if err := s.Write(ctx, &Batch{Slot: "dzhook", Checkpoint: w.lsn, SystemID: w.sys, Timeline: w.tli}); err != nil {
			t.Fatal(err)
		}
		if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.Timeline != w.want {
			t.Errorf("after %s on timeline %d of %s: checkpoint = %+v (err %v), want timeline %d", w.lsn, w.tli, w.sys, cp, err, w.want)
		}
	}
	var null bool
	db.Exec(t, `UPDATE dzhook.checkpoints SET timeline = NULL`)
	if err := db.Connect(t).QueryRow(ctx, `SELECT timeline IS NULL FROM dzhook.checkpoints`).Scan(&null); err != nil || !null {
		t.Fatalf("timeline NULL: %v (err %v)", null, err)
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.Timeline != 0 || cp.LSN != 7 {
		t.Errorf("a checkpoint without a timeline reads %+v (err %v), want LSN 7, timeline 0", cp, err)
	}
	if err := s.AdoptSlotPosition(ctx, "dzhook", "B", 4, 200); err != nil {
		t.Fatal(err)
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.Timeline != 4 {
		t.Errorf("after an adopted slot position on timeline 4: checkpoint = %+v (err %v)", cp, err)
	}
	if err := s.AcceptGap(ctx, Gap{Slot: "dzhook", SystemID: "B", From: 199, To: 300}, 5, "test"); err != nil {
		t.Fatal(err)
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.Timeline != 5 {
		t.Errorf("after an accepted gap on timeline 5: checkpoint = %+v (err %v)", cp, err)
	}

	acks := make(chan pglogrepl.LSN, 8)
	w := runWriter(t, WriterConfig{Store: s, Slot: "dzhook", SystemID: "B", Timeline: func() int32 { return 6 }, Linger: -1, Ack: func(l pglogrepl.LSN) { acks <- l }})
	if err := w.Commit(ctx, 400, 410); err != nil {
		t.Fatal(err)
	}
	select {
	case <-acks:
	case <-time.After(10 * time.Second):
		t.Fatal("the commit was never acknowledged")
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp != (Checkpoint{LSN: 400, SystemID: "B", End: 410, Timeline: 6}) {
		t.Errorf("checkpoint written by the writer = %+v (err %v), want 400 of B on timeline 6", cp, err)
	}
}

// TestCheckpointRewindAndRestore: a rewind to a fork moves the
// checkpoint only while it is the one judged and nothing was journaled
// past the fork, judged in one transaction; a late write of the old
// timeline cannot move it off the new one. A restore recorded in the
// checkpoint (MarkRestored) outlives the writes of its cluster, takes the
// lowest WAL end seen, and goes with a checkpoint of another cluster.
func TestCheckpointRewindAndRestore(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	src := ids.NewSource("A")
	write := func(lsn pglogrepl.LSN, sys string, tli int32) {
		t.Helper()
		if err := s.Write(ctx, &Batch{Slot: "dzhook", Checkpoint: lsn, SystemID: sys, Timeline: tli}); err != nil {
			t.Fatal(err)
		}
	}
	read := func() Checkpoint {
		t.Helper()
		cp, err := s.Checkpoint(ctx, "dzhook")
		if err != nil {
			t.Fatal(err)
		}
		return cp
	}
	write(1000, "A", 1)
	from := read()
	if did, err := s.RewindCheckpoint(ctx, "dzhook", Checkpoint{LSN: 900, SystemID: "A"}, src, 500, 2); err != nil || did != RewindChanged {
		t.Errorf("a rewind from a checkpoint that is not the journal's: %v (err %v), want RewindChanged", did, err)
	}
	if err := s.Write(ctx, &Batch{Events: []EventRow{{ID: src.NewID(700, 0, 0), Type: "request.created", Body: []byte(`{}`), CommitLSN: 700, OccurredAt: time.Now()}}}); err != nil {
		t.Fatal(err)
	}
	if did, err := s.RewindCheckpoint(ctx, "dzhook", from, src, 500, 2); err != nil || did != RewindPast || read() != from {
		t.Errorf("a rewind below a journaled event: %v (err %v), checkpoint %+v; want RewindPast, unchanged", did, err, read())
	}
	if did, err := s.RewindCheckpoint(ctx, "dzhook", from, src, 800, 2); err != nil || did != Rewound {
		t.Fatalf("a rewind with nothing past the fork: %v (err %v), want Rewound", did, err)
	}
	want := Checkpoint{LSN: 799, SystemID: "A", End: 800, Timeline: 2}
	if cp := read(); cp != want {
		t.Errorf("after the rewind: %+v, want %+v", cp, want)
	}
	var fork int
	if err := s.pool.QueryRow(ctx, `SELECT rewound_at FROM dzhook.checkpoints WHERE rewound_timeline = 2`).Scan(&fork); err != nil || fork != 800 {
		t.Errorf("the rewind recorded %d (err %v), want the fork at 800 on timeline 2", fork, err)
	}
	write(1200, "A", 1) // the old primary's process, late
	if cp := read(); cp != want {
		t.Errorf("a late write of timeline 1 moved the rewound checkpoint: %+v, want %+v", cp, want)
	}
	if ok, err := s.MarkRestored(ctx, "dzhook", "A", 2, 900); err != nil || !ok {
		t.Errorf("a restore above the checkpoint (a write still to come may pass it): %v (err %v), want recorded", ok, err)
	}
	write(950, "A", 2) // the refused process's last batch
	if cp := read(); cp.LSN != 950 || cp.RestoredBelow != 900 {
		t.Errorf("a write after the mark: %+v, want 950 with the restore at 900 kept", cp)
	}
	if ok, err := s.MarkRestored(ctx, "dzhook", "A", 3, 300); err != nil || ok {
		t.Errorf("a restore of another timeline was recorded: %v (err %v)", ok, err)
	}
	if ok, err := s.MarkRestored(ctx, "dzhook", "A", 2, 300); err != nil || !ok {
		t.Fatalf("a restore below the checkpoint: %v (err %v), want recorded", ok, err)
	}
	if ok, err := s.MarkRestored(ctx, "dzhook", "A", 2, 400); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if cp := read(); cp.LSN != 950 || cp.RestoredBelow != 300 {
		t.Errorf("after a second restore: %+v, want the lowest, 300, kept", cp)
	}
	write(50, "B", 1)
	if cp := read(); cp.RestoredBelow != 0 || cp.SystemID != "B" {
		t.Errorf("another cluster's checkpoint kept the restore: %+v", cp)
	}
}

// TestStreamBatchFencedByTheCheckpoint: a batch of what the stream read
// and a start's RewindCheckpoint are ordered by the checkpoint's row
// lock, which the batch takes first. A batch mid-write when the rewind
// begins (its events written, its checkpoint not yet: here an event
// whose insert waits) holds the rewind until it committed, and the
// rewind then sees its events past the fork; a batch that comes to the
// row after a rewind committed is refused whole (ErrTimelineMoved)
// instead of journaling the old timeline's events past the fork, whose
// ids the new timeline's transactions take. Before the fence the rewind
// judged the journal while such a batch's events were in flight, and
// moved the checkpoint back below them (found by a review, 2026-12-07).
func TestStreamBatchFencedByTheCheckpoint(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	src := ids.NewSource("A")
	if err := s.Write(ctx, &Batch{Slot: "dzhook", Checkpoint: 1000, SystemID: "A", Timeline: 1}); err != nil {
		t.Fatal(err)
	}
	from, err := s.Checkpoint(ctx, "dzhook")
	if err != nil {
		t.Fatal(err)
	}
	event := func(lsn pglogrepl.LSN) EventRow { return streamEvent(src, lsn) }
	watch := db.Connect(t)
	// waiting waits until n backends of this database wait on a lock, or
	// done has a result (returned, with true).
	waiting := func(n int, done <-chan error) (error, bool) {
		t.Helper()
		var err error
		finished := false
		testutil.Eventually(t, 10*time.Second, fmt.Sprintf("%d backends waiting on a lock", n), func() bool {
			select {
			case err = <-done:
				finished = true
				return true
			default:
			}
			var got int
			if err := watch.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&got); err != nil {
				t.Fatal(err)
			}
			return got >= n
		})
		return err, finished
	}

	// The batch first: an event of the batch waits on the same id's insert
	// in a transaction left open, the batch's other event past the fork.
	blocker := db.Connect(t)
	tx, err := blocker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO dzhook.events (id, type, body, commit_lsn, occurred_at) VALUES ($1, 'request.created', '{}', 1100, now())`, event(1100).ID); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		wrote <- s.Write(ctx, &Batch{Events: []EventRow{event(900), event(1100)}, Fence: "dzhook", SystemID: "A", Timeline: 1})
	}()
	if err, done := waiting(1, wrote); done {
		t.Fatalf("the batch did not wait for the open insert of its event: %v", err)
	}
	rewound := make(chan Rewind, 1)
	rewindErr := make(chan error, 1)
	go func() {
		did, err := s.RewindCheckpoint(ctx, "dzhook", from, src, 800, 2)
		rewound <- did
		rewindErr <- err
	}()
	if err, done := waiting(2, rewindErr); done {
		t.Fatalf("the rewind did not wait for the batch mid-write: %v, %v (the checkpoint moved back below its events)", <-rewound, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("the batch that locked the checkpoint first: %v", err)
	}
	if did, err := <-rewound, <-rewindErr; err != nil || did != RewindPast {
		t.Errorf("the rewind after the batch: %v (err %v), want RewindPast (its event at 900 is past the fork at 800)", did, err)
	}

	// The rewind first, held open by hand (what RewindCheckpoint does):
	// the batch waits for it, then is refused.
	if _, err := s.pool.Exec(ctx, `DELETE FROM dzhook.events`); err != nil {
		t.Fatal(err)
	}
	tx, err = blocker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE dzhook.checkpoints SET lsn = 799, end_lsn = 800, timeline = 2, rewound_timeline = 2, rewound_at = 800, rewinds_timeline = '{2}', rewinds_at = '{800}' WHERE slot = 'dzhook'`); err != nil {
		t.Fatal(err)
	}
	go func() {
		wrote <- s.Write(ctx, &Batch{Events: []EventRow{event(900)}, Fence: "dzhook", SystemID: "A", Timeline: 1})
	}()
	if err, done := waiting(1, wrote); done {
		t.Fatalf("the batch did not wait for the rewind: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; !errors.Is(err, ErrTimelineMoved) {
		t.Errorf("a batch of timeline 1 after the rewind to timeline 2: %v, want ErrTimelineMoved", err)
	}
	for _, b := range []*Batch{
		{Slot: "dzhook", Checkpoint: 1200, Fence: "dzhook", SystemID: "A", Timeline: 1},
		{Rejections: []Rejection{{Source: "outbox", Reason: "late", CommitLSN: 800}}, Fence: "dzhook", SystemID: "A", Timeline: 1},
		// SLA timer changes alone, their commit in a later batch (behind
		// a held delivery): they passed unfenced.
		{Timers: []TimerChange{{SLAID: "sla_1", Keep: time.Now(), Due: time.Now(), CommitLSN: 900}}, Fence: "dzhook", SystemID: "A", Timeline: 1},
	} {
		if err := s.Write(ctx, b); !errors.Is(err, ErrTimelineMoved) {
			t.Errorf("a later batch of timeline 1 (%+v): %v, want ErrTimelineMoved", b, err)
		}
	}
	if past, err := s.JournaledFrom(ctx, src, 800); err != nil || past {
		t.Errorf("events past the fork after the refusals: %v (err %v)", past, err)
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.LSN != 799 || cp.Timeline != 2 {
		t.Errorf("the checkpoint after the refusals: %+v (err %v), want 799 on timeline 2", cp, err)
	}
	// What the old timeline shares with the new one (below the fork), the
	// old timeline's rows without a stream position (retries' outcomes,
	// a test's or the SLA clock's events), the new timeline's batches and
	// another cluster's pass.
	test := EventRow{ID: "evt_test_1", Type: "request.created", Body: []byte(`{}`), OccurredAt: time.Now()}
	for _, b := range []*Batch{
		{Events: []EventRow{event(700)}, Fence: "dzhook", SystemID: "A", Timeline: 1},
		{Events: []EventRow{test}, Updates: []DeliveryUpdate{{ID: "dlv_none", State: Delivered, Attempts: 2}}, Fence: "dzhook", SystemID: "A", Timeline: 1},
		{Events: []EventRow{event(850)}, Slot: "dzhook", Checkpoint: 850, Fence: "dzhook", SystemID: "A", Timeline: 2},
		{Slot: "dzhook", Checkpoint: 10, Fence: "dzhook", SystemID: "B", Timeline: 1},
	} {
		if err := s.Write(ctx, b); err != nil {
			t.Errorf("%+v: %v", b, err)
		}
	}

	// The Writer of a process still on timeline 1, refused, tells
	// OnFenced, drops what the stream read (the event past the fork, its
	// delivery, that delivery's attempt and outcome, held or not), writes
	// the rest (the outcome of a delivery journaled before), says a
	// barrier's records are not durable whole, and acknowledges nothing.
	if _, err := s.pool.Exec(ctx, `UPDATE dzhook.checkpoints SET system_id = 'A', timeline = 2, rewound_timeline = 2, rewound_at = 800, rewinds_timeline = '{2}', rewinds_at = '{800}'`); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	before := DeliveryRow{ID: "dlv_before", EventID: event(700).ID, SubscriptionID: "crm", EventType: "request.created", State: Pending, Owner: "a", CreatedAt: now}
	if err := s.Write(ctx, &Batch{Deliveries: []DeliveryRow{before}}); err != nil {
		t.Fatal(err)
	}
	acked := make(chan pglogrepl.LSN, 1)
	fenced := make(chan error, 1)
	// A linger long enough that a record put right after another joins
	// its batch.
	w, err := NewWriter(WriterConfig{Store: s, Slot: "dzhook", SystemID: "A", Owner: "a", Timeline: func() int32 { return 1 }, Linger: 500 * time.Millisecond,
		Ack: func(l pglogrepl.LSN) { acked <- l }, OnFenced: func(err error) { fenced <- err }})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopWriter := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- w.Run(wctx) }()
	e := event(2000)
	past := DeliveryRow{ID: "dlv_past", EventID: e.ID, SubscriptionID: "crm", EventType: "request.created", State: Pending, Owner: "a", CreatedAt: now}
	for _, r := range []Record{{Event: &e, Deliveries: []DeliveryRow{past}}, {Commit: 2000, CommitEnd: 2001}} {
		if err := w.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-fenced:
		if !errors.Is(err, ErrTimelineMoved) || !strings.Contains(err.Error(), "0/320 on timeline 2") {
			t.Fatalf("OnFenced told %v, want ErrTimelineMoved naming the fork 0/320 on timeline 2", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the writer of timeline 1 was not refused")
	}
	for _, r := range []Record{
		{Update: &DeliveryUpdate{ID: "dlv_past", State: Delivered, Attempts: 1, LastStatus: 200, LastAttemptAt: now}},
		{Attempt: &AttemptRow{DeliveryID: "dlv_past", Attempt: 1, At: now, Trigger: TriggerAuto, StatusCode: 200}},
		{Update: &DeliveryUpdate{ID: "dlv_before", State: Delivered, Attempts: 1, LastStatus: 200, LastAttemptAt: now}},
		{Attempt: &AttemptRow{DeliveryID: "dlv_before", Attempt: 1, At: now, Trigger: TriggerAuto, StatusCode: 200}},
	} {
		if err := w.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// A record whose own rows are dropped is told so; one whose batch
	// lost nothing (an operator's retry, a test send) is durable.
	e2 := event(2100)
	done := make(chan error, 1)
	if err := w.Put(ctx, Record{Event: &e2, Done: done}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrTimelineMoved) {
		t.Errorf("a record of the stream after the refusal: %v, want ErrTimelineMoved", err)
	}
	if err := w.Barrier(ctx); err != nil {
		t.Errorf("a barrier in a batch that lost nothing: %v, want durable", err)
	}
	// An operator's retry in the same batch as an event of the stream,
	// which is dropped: its own rows are written, and it is told so.
	e3 := event(2200)
	retried := make(chan error, 1)
	for _, r := range []Record{
		{Event: &e3},
		{Update: &DeliveryUpdate{ID: "dlv_before", State: Delivered, Attempts: 2, LastStatus: 200, LastAttemptAt: now},
			Attempt: &AttemptRow{DeliveryID: "dlv_before", Attempt: 2, At: now, Trigger: TriggerManual, StatusCode: 200}, Done: retried},
	} {
		if err := w.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-retried; err != nil {
		t.Errorf("an operator's retry written beside a dropped event: %v, want durable", err)
	}
	stopWriter()
	if err := <-ran; err != nil {
		t.Errorf("the refused writer's Run: %v", err)
	}
	select {
	case l := <-acked:
		t.Errorf("the refused writer acknowledged %s", l)
	default:
	}
	if past, err := s.JournaledFrom(ctx, src, 2000); err != nil || past {
		t.Errorf("the refused writer's event was journaled: %v (err %v)", past, err)
	}
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM dzhook.deliveries WHERE id = 'dlv_past') + (SELECT count(*) FROM dzhook.attempts WHERE delivery_id = 'dlv_past')`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d rows of the event past the fork's delivery journaled (err %v)", n, err)
	}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries d JOIN dzhook.attempts a ON a.delivery_id = d.id WHERE d.id = 'dlv_before' AND d.state = 'delivered' AND d.attempts = 2`).Scan(&n); err != nil || n != 2 {
		t.Errorf("the outcomes of a delivery journaled before the refusal: %d attempts (err %v), want both written", n, err)
	}
}

// TestStreamBatchAfterAForwardFailover: a failover whose new timeline
// carries on everything read rewinds nothing: a process on the new
// timeline moves the checkpoint on, and another process's batch still of
// the old timeline (its journal failing over too, say) is journaled, not
// refused (the fence refused any batch of an older timeline than the
// checkpoint's: that process stopped after an ordinary failover, and a
// test sent through one whose stream had not yet reconnected stopped it;
// found by a review).
func TestStreamBatchAfterAForwardFailover(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	src := ids.NewSource("A")
	old := EventRow{ID: src.NewID(1100, 0, 0), Type: "request.created", Body: []byte(`{}`), CommitLSN: 1100, OccurredAt: time.Now()}
	test := EventRow{ID: "evt_test_1", Type: "request.created", Body: []byte(`{}`), OccurredAt: time.Now()}
	for i, b := range []*Batch{
		{Slot: "dzhook", Checkpoint: 1000, Fence: "dzhook", SystemID: "A", Timeline: 1},
		{Slot: "dzhook", Checkpoint: 1200, Fence: "dzhook", SystemID: "A", Timeline: 2},
		{Events: []EventRow{old}, Slot: "dzhook", Checkpoint: 1100, Fence: "dzhook", SystemID: "A", Timeline: 1},
		{Events: []EventRow{test}, Fence: "dzhook", SystemID: "A", Timeline: 1},
	} {
		if err := s.Write(ctx, b); err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.LSN != 1200 || cp.Timeline != 2 {
		t.Errorf("checkpoint %+v (err %v), want 1200 on timeline 2", cp, err)
	}
}

// TestStreamBatchFencedByEveryRewind: two rewinds in a row (timeline 1
// forked at 800 to 2, then 2 at 1200 to 3). A process still reading
// timeline 1 (the first old primary, left up behind a partition) is
// refused between the two forks too: with the last rewind alone
// recorded, its events there passed, with the ids timeline 3's
// transactions take. Timeline 2's process is refused past its own fork
// only; what timeline 3 shares with it below passes. The rewinds kept
// are the last 16.
func TestStreamBatchFencedByEveryRewind(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	src := ids.NewSource("A")
	// rewind moves the checkpoint to at on timeline, then back to fork
	// on the next timeline.
	rewind := func(at, fork pglogrepl.LSN, timeline int32) {
		t.Helper()
		if err := s.Write(ctx, &Batch{Slot: "dzhook", Checkpoint: at, Fence: "dzhook", SystemID: "A", Timeline: timeline}); err != nil {
			t.Fatal(err)
		}
		from, err := s.Checkpoint(ctx, "dzhook")
		if err != nil {
			t.Fatal(err)
		}
		if did, err := s.RewindCheckpoint(ctx, "dzhook", from, src, fork, timeline+1); err != nil || did != Rewound {
			t.Fatalf("rewind from %s on timeline %d to %s: %v (err %v), want Rewound", at, timeline, fork, did, err)
		}
	}
	rewind(1000, 800, 1)
	rewind(1500, 1200, 2)
	for _, err := range fenced(t, s, src, []fenceCase{
		{1, 700, false}, {1, 900, true}, {1, 1300, true},
		{2, 1000, false}, {2, 1300, true},
		{3, 1300, false},
	})[:3] {
		if err != nil && !strings.Contains(err.Error(), "0/320 on timeline 2") {
			t.Errorf("timeline 1's refusal does not name the first rewind (0/320 on timeline 2): %v", err)
		}
	}
	for i := pglogrepl.LSN(0); i < 15; i++ {
		rewind(2000+100*i, 1900+100*i, 3+int32(i))
	}
	var timelines []int32
	var ats []int64
	if err := db.Connect(t).QueryRow(ctx, `SELECT rewinds_timeline, rewinds_at FROM dzhook.checkpoints WHERE slot = 'dzhook'`).Scan(&timelines, &ats); err != nil {
		t.Fatal(err)
	}
	if len(timelines) != 16 || len(ats) != 16 || timelines[0] != 3 || ats[0] != 1200 || timelines[15] != 18 || ats[15] != 3300 {
		t.Errorf("after 17 rewinds: timelines %v at %v, want the last 16 (timeline 3 at 1200 to timeline 18 at 3300)", timelines, ats)
	}
}

// streamEvent is an event of src the stream read, committed at lsn.
func streamEvent(src ids.Source, lsn pglogrepl.LSN) EventRow {
	return EventRow{ID: src.NewID(lsn, 0, 0), Type: "request.created", Body: []byte(`{}`), CommitLSN: lsn, OccurredAt: time.Now()}
}

// fenceCase is a stream batch of one event of src, read on timeline at
// lsn, and whether the journal's fence refuses it.
type fenceCase struct {
	timeline int32
	lsn      pglogrepl.LSN
	refused  bool
}

// fenced writes each case's batch and checks the fence's verdict; it
// returns each write's error.
func fenced(t *testing.T, s *Store, src ids.Source, cases []fenceCase) []error {
	t.Helper()
	errs := make([]error, len(cases))
	for i, c := range cases {
		err := s.Write(context.Background(), &Batch{Events: []EventRow{streamEvent(src, c.lsn)}, Fence: "dzhook", SystemID: "A", Timeline: c.timeline})
		if c.refused && !errors.Is(err, ErrTimelineMoved) || !c.refused && err != nil {
			t.Errorf("a batch of timeline %d at %s: %v, want refused %v", c.timeline, c.lsn, err, c.refused)
		}
		errs[i] = err
	}
	return errs
}

// TestRecordFork: a failover that carries on the checkpoint (no rewind)
// is recorded too, once, and fences a process still on the old timeline
// past the fork; it was let through, its events taking the ids of the
// new timeline's transactions (found by a review). Not while the
// checkpoint is past the fork on the old timeline (judged again), nor
// for another cluster's checkpoint.
func TestRecordFork(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	src := ids.NewSource("A")
	forks := func() (timelines []int32, ats []int64) {
		t.Helper()
		if err := db.Connect(t).QueryRow(ctx, `SELECT coalesce(rewinds_timeline, '{}'), coalesce(rewinds_at, '{}') FROM dzhook.checkpoints WHERE slot = 'dzhook'`).Scan(&timelines, &ats); err != nil {
			t.Fatal(err)
		}
		return timelines, ats
	}
	if ok, err := s.RecordFork(ctx, "dzhook", "A", 2, 1100); err != nil || !ok {
		t.Errorf("with no checkpoint: %v (err %v), want true", ok, err)
	}
	if err := s.Write(ctx, &Batch{Slot: "dzhook", Checkpoint: 1000, Fence: "dzhook", SystemID: "A", Timeline: 1}); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.RecordFork(ctx, "dzhook", "A", 2, 900); err != nil || ok {
		t.Errorf("a fork below the checkpoint on the old timeline: %v (err %v), want false", ok, err)
	}
	if ok, err := s.RecordFork(ctx, "dzhook", "B", 2, 900); err != nil || !ok {
		t.Errorf("another cluster's server: %v (err %v), want true", ok, err)
	}
	if tl, _ := forks(); len(tl) != 0 {
		t.Fatalf("recorded %v, want nothing yet", tl)
	}
	for range 2 {
		if ok, err := s.RecordFork(ctx, "dzhook", "A", 2, 1100); err != nil || !ok {
			t.Errorf("a fork above the checkpoint: %v (err %v), want true", ok, err)
		}
	}
	if tl, at := forks(); len(tl) != 1 || tl[0] != 2 || at[0] != 1100 {
		t.Errorf("recorded %v at %v, want timeline 2 at 1100 once", tl, at)
	}
	fenced(t, s, src, []fenceCase{{1, 1050, false}, {1, 1200, true}, {2, 1200, false}})
	// The checkpoint on the new timeline past the fork carries on.
	if err := s.Write(ctx, &Batch{Slot: "dzhook", Checkpoint: 1300, Fence: "dzhook", SystemID: "A", Timeline: 2}); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.RecordFork(ctx, "dzhook", "A", 2, 1100); err != nil || !ok {
		t.Errorf("the checkpoint on the new timeline: %v (err %v), want true", ok, err)
	}
}

// TestRewindKeptThroughTheUpgradeToVersion20: a rewind version 19
// recorded still fences once the journal is at version 20.
func TestRewindKeptThroughTheUpgradeToVersion20(t *testing.T) {
	s, db := storeAtVersion(t, 19)
	ctx := context.Background()
	db.Exec(t, `INSERT INTO dzhook.checkpoints (slot, lsn, end_lsn, system_id, timeline, rewound_timeline, rewound_at, updated_at)
		VALUES ('dzhook', 799, 800, 'A', 2, 2, 800, now())`)
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	src := ids.NewSource("A")
	late := EventRow{ID: src.NewID(900, 0, 0), Type: "request.created", Body: []byte(`{}`), CommitLSN: 900, OccurredAt: time.Now()}
	if err := s.Write(ctx, &Batch{Events: []EventRow{late}, Fence: "dzhook", SystemID: "A", Timeline: 1}); !errors.Is(err, ErrTimelineMoved) {
		t.Errorf("a batch of timeline 1 past the fork version 19 recorded: %v, want ErrTimelineMoved", err)
	}
	// A version-19 start's rewind after this version's migration: its
	// pair alone, the arrays untouched.
	db.Exec(t, `UPDATE dzhook.checkpoints SET rewinds_timeline = NULL, rewinds_at = NULL`)
	if err := s.Write(ctx, &Batch{Events: []EventRow{late}, Fence: "dzhook", SystemID: "A", Timeline: 1}); !errors.Is(err, ErrTimelineMoved) {
		t.Errorf("a batch of timeline 1 past the fork of a version-19 rewind made after the migration: %v, want ErrTimelineMoved", err)
	}
}

// TestJournaledFrom: the events of one source at or past a position,
// by their ids' range: another source's, and ids without a commit (SLA
// and test events), do not count.
func TestJournaledFrom(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	src, other := ids.NewSource("A"), ids.NewSource("B")
	now := time.Now()
	b := &Batch{}
	for _, e := range []struct {
		id  string
		lsn pglogrepl.LSN
	}{{src.NewID(100, 0, 0), 100}, {src.NewID(200, 3, 2), 200}, {other.NewID(900, 0, 0), 900}, {src.NewTimedID("sla", "1", "breach"), 0}} {
		b.Events = append(b.Events, EventRow{ID: e.id, Type: "request.created", Body: []byte(`{}`), CommitLSN: e.lsn, OccurredAt: now})
	}
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		src  ids.Source
		from pglogrepl.LSN
		want bool
	}{{src, 100, true}, {src, 150, true}, {src, 200, true}, {src, 201, false}, {other, 901, false}, {other, 900, true}, {ids.NewSource("C"), 1, false}} {
		if got, err := s.JournaledFrom(ctx, c.src, c.from); err != nil || got != c.want {
			t.Errorf("JournaledFrom(%v, %s) = %v (err %v), want %v", c.src, c.from, got, err, c.want)
		}
	}
}
