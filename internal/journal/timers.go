package journal

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// TimerRow is an SLA timer.
type TimerRow struct {
	SLAID, Kind string
	TargetAt    time.Time
	FireAt      time.Time
	RequestID   string
	SLAType     string
	StartedAt   time.Time
	// Generation identifies the arming a claim returned (new at every
	// arming, including an upsert of the same timer).
	Generation int64
	// SupersededAt, when not zero, is the commit time of the change that
	// moved the SLA off this timer's target or completed it, the timer
	// being due before then: it was breached (or warned) first, and the
	// clock fires it whatever the SLA says now. Zero: the timer is of the
	// SLA's current target, as far as the stream has read.
	SupersededAt time.Time
}

// TimerChange arms an SLA's timers for its current target and cancels
// the unfired ones of any other target (Keep zero: all of them), except
// those due before Due: the change's commit time for a moved target, the
// completion for a completed SLA. Those are kept, marked as superseded at
// Due (TimerRow.SupersededAt), and fire: the SLA was breached (or warned)
// before it moved or completed. A later change keeps them too (they are
// due before its Due as well); only a deletion of the SLA (Keep and Due
// zero) cancels them.
type TimerChange struct {
	SLAID string
	Keep  time.Time
	Due   time.Time
	Arm   []TimerRow
	// CommitLSN is the commit of the transaction that changed the SLA
	// (0: unknown): a batch that carries it reaches that position
	// (Batch.Fence).
	CommitLSN pglogrepl.LSN
}

// queueTimers adds the statements of the batch's timer changes: first the
// cancellations (and the marks of the timers a change keeps), then the
// arming (one change per SLA: the batch keeps the
// latest). since, for the first start's scan of open SLAs (ArmBootstrap),
// is the timers' generation read before the scan's page (TimerMark): an
// SLA with a timer armed after it is left as it is, since that timer came
// from the stream's change, newer than the scan's read. Written like the
// others, the scan's page deleted a target the stream had just moved and
// armed the old one again, which the clock then cancelled: the SLA's
// warning and breach were lost (found by a review, 2026-12-06). nil: the
// stream's changes, written whatever is there.
func (s *Store) queueTimers(batch *statements, changes []TimerChange, since *scanMarks) {
	// An SLA changed several times in the batch (a catch-up) has its
	// changes applied in order, in rounds: the first change of each SLA,
	// then the second, and so on. Merged into one, the last change's
	// commit time judged timers an earlier change had already moved off:
	// a target extended before it was due, then touched after it, fired
	// a breach that never happened (found by a review, 2026-12-07).
	changes = coalesceTimers(changes)
	seen := make(map[string]int, len(changes))
	var rounds [][]TimerChange
	for _, c := range changes {
		r := seen[c.SLAID]
		seen[c.SLAID] = r + 1
		if r == len(rounds) {
			rounds = append(rounds, nil)
		}
		rounds[r] = append(rounds[r], c)
	}
	for _, round := range rounds {
		s.queueTimerRound(batch, round, since)
	}
}

// breachKind is the kind of an SLA's breach timer (mapping.SLATimers).
const breachKind = "breach"

// coalesceTimers joins each change of an SLA to the one before it of the
// same SLA when both keep the same target: applied in order, the second
// finds no unfired timer of another target left unmarked by the first
// (its cancel matches nothing) and only arms that target again, so one
// change with the first's Due and both's timers (the later's winning) is
// the same. An SLA touched at every activity of its request made a
// round, two statements, per change of a catch-up batch; a move still
// makes its own. changes is not modified (a failed batch is written
// again from it).
func coalesceTimers(changes []TimerChange) []TimerChange {
	out := make([]TimerChange, 0, len(changes))
	last := make(map[string]int, len(changes)) // SLA → its last change in out
	for _, c := range changes {
		i, ok := last[c.SLAID]
		if !ok || c.Keep.IsZero() || !out[i].Keep.Equal(c.Keep) {
			last[c.SLAID] = len(out)
			out = append(out, c)
			continue
		}
		merged := out[i]
		arm := make([]TimerRow, 0, len(merged.Arm)+len(c.Arm))
		later := slices.Clone(c.Arm)
		for _, t := range merged.Arm {
			j := slices.IndexFunc(later, func(n TimerRow) bool { return n.Kind == t.Kind && n.TargetAt.Equal(t.TargetAt) })
			switch {
			case j < 0:
				arm = append(arm, t)
			case t.Kind == breachKind && t.FireAt.After(later[j].FireAt):
				later[j].FireAt = t.FireAt // as the upsert does (queueTimerRound)
			}
		}
		merged.Arm = append(arm, later...)
		out[i] = merged
	}
	return out
}

// scanMarks are the first start's scan's timer generations: page, read
// before the page (an SLA with a timer armed after it is left alone), and
// start, read before the scan's first page (a timer armed after it came
// from the stream running beside the scan).
type scanMarks struct{ page, start int64 }

// queueTimerRound is queueTimers for changes of distinct SLAs.
func (s *Store) queueTimerRound(batch *statements, changes []TimerChange, scan *scanMarks) {
	var since, streamed *int64
	if scan != nil {
		since, streamed = &scan.page, &scan.start
	}
	ids := make([]string, len(changes))
	keep, due := make([]*time.Time, len(changes)), make([]*time.Time, len(changes))
	var arm []TimerRow
	for i, c := range changes {
		ids[i] = c.SLAID
		keep[i], due[i] = nullTime(c.Keep), nullTime(c.Due)
		arm = append(arm, c.Arm...)
	}
	untouched := func(sla, since string) string {
		return `(` + since + `::bigint IS NULL OR NOT EXISTS (SELECT 1 FROM {{schema}}.sla_timers n WHERE n.sla_id = ` + sla + ` AND n.generation > ` + since + `))`
	}
	// The timers of another target (or of a completed SLA) due before the
	// change are kept and marked superseded there, the earliest such
	// change's time staying; the others go. A kept timer is deleted only
	// by a change that keeps nothing (the SLA deleted): the first start's
	// scan (Due zero) must not cancel one the stream kept, nor one already
	// due of another target that the stream armed beside it: the scan
	// reads the SLA as it is now, and a move the stream has not read yet
	// may have come after that timer's moment (the breach happened; the
	// stream's change of the move keeps or cancels it, and the clock waits
	// for it). One armed before the scan began (an earlier slot's) goes. Both parts see
	// the table as it was, and touch different rows.
	batch.Queue(s.q(`WITH kept AS (
		UPDATE {{schema}}.sla_timers t SET superseded_at = c.due FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS c(id, keep, due)
		 WHERE t.sla_id = c.id AND t.fired_at IS NULL AND t.superseded_at IS NULL AND (c.keep IS NULL OR t.target_at <> c.keep)
		   AND t.fire_at < c.due AND `+untouched("c.id", "$4")+`)
		DELETE FROM {{schema}}.sla_timers t USING unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS c(id, keep, due)
		WHERE t.sla_id = c.id AND t.fired_at IS NULL AND (c.keep IS NULL OR t.target_at <> c.keep)
		  AND (c.due IS NULL OR t.fire_at >= c.due) AND (t.superseded_at IS NULL OR (c.keep IS NULL AND c.due IS NULL))
		  AND ($4::bigint IS NULL OR t.fire_at > now() OR t.generation <= $5::bigint)
		  AND `+untouched("c.id", "$4")), ids, keep, due, since, streamed)
	if len(arm) == 0 {
		return
	}
	n := len(arm)
	sla, kind, req, typ := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	target, fire, started := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
	superseded := make([]*time.Time, n)
	for i, t := range arm {
		sla[i], kind[i], req[i], typ[i] = t.SLAID, t.Kind, t.RequestID, t.SLAType
		target[i], fire[i], started[i], superseded[i] = t.TargetAt, t.FireAt, t.StartedAt, nullTime(t.SupersededAt)
	}
	// Armed again for the SLA's target, a timer kept from an earlier
	// change is the target's again (superseded_at NULL). An unfired
	// breach is never moved earlier: one dated at the change that made
	// the SLA breached (reopened after its target, or its target moved
	// into the past: mapping's breachedHere) is armed again at the target
	// by any later change of the SLA, which cannot tell, and was then
	// sent dated at a moment the SLA was met (found by a review).
	batch.Queue(s.q(`INSERT INTO {{schema}}.sla_timers (sla_id, kind, target_at, fire_at, request_id, sla_type, started_at, superseded_at)
		SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[], $6::text[], $7::timestamptz[], $9::timestamptz[]) AS u(sla_id)
		 WHERE `+untouched("u.sla_id", "$8")+`
		ON CONFLICT (sla_id, kind, target_at) DO UPDATE SET fire_at = CASE WHEN EXCLUDED.kind = '`+breachKind+`'
				THEN greatest({{schema}}.sla_timers.fire_at, EXCLUDED.fire_at) ELSE EXCLUDED.fire_at END, request_id = EXCLUDED.request_id,
			sla_type = EXCLUDED.sla_type, started_at = EXCLUDED.started_at, superseded_at = EXCLUDED.superseded_at,
			generation = nextval('{{schema}}.sla_timer_generation')
		WHERE {{schema}}.sla_timers.fired_at IS NULL`), sla, kind, target, fire, req, typ, started, since, superseded)
}

// TimerMark is the last arming generation given to a timer: the first
// start's scan reads it before each page (queueTimers).
func (s *Store) TimerMark(ctx context.Context) (int64, error) {
	var mark int64
	err := s.pool.QueryRow(ctx, s.q(`SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {{schema}}.sla_timer_generation`)).Scan(&mark)
	if err != nil {
		return 0, fmt.Errorf("read the SLA timers' generation: %w", err)
	}
	return mark, nil
}

// ClaimTimers leases up to limit due timers for lease: no other instance
// fires them meanwhile (FOR UPDATE SKIP LOCKED, then the lease).
func (s *Store) ClaimTimers(ctx context.Context, limit int, lease time.Duration) ([]TimerRow, error) {
	rows, err := s.pool.Query(ctx, s.q(`
		WITH due AS (
			SELECT sla_id, kind, target_at FROM {{schema}}.sla_timers
			 WHERE fired_at IS NULL AND fire_at <= now() AND (leased_until IS NULL OR leased_until < now())
			 ORDER BY fire_at LIMIT $1 FOR UPDATE SKIP LOCKED)
		UPDATE {{schema}}.sla_timers t SET leased_until = now() + $2 * interval '1 second'
		  FROM due WHERE t.sla_id = due.sla_id AND t.kind = due.kind AND t.target_at = due.target_at
		RETURNING t.sla_id, t.kind, t.target_at, t.fire_at, t.request_id, t.sla_type, t.started_at, t.generation, t.superseded_at`), limit, lease.Seconds())
	if err != nil {
		return nil, fmt.Errorf("claim SLA timers: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TimerRow, error) {
		var t TimerRow
		var superseded *time.Time
		err := r.Scan(&t.SLAID, &t.Kind, &t.TargetAt, &t.FireAt, &t.RequestID, &t.SLAType, &t.StartedAt, &t.Generation, &superseded)
		if superseded != nil {
			t.SupersededAt = *superseded
		}
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("claim SLA timers: %w", err)
	}
	return list, nil
}

// TimerDone records a timer's outcome ("fired"; "late": a warning found
// due later than the clock's allowance, not sent): the row stays, so the
// timer is never fired twice.
func (s *Store) TimerDone(ctx context.Context, t TimerRow, outcome string) error {
	_, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.sla_timers SET fired_at = now(), outcome = $4, leased_until = NULL
		WHERE sla_id = $1 AND kind = $2 AND target_at = $3`), t.SLAID, t.Kind, t.TargetAt, outcome)
	return err
}

// TimerCancelled forgets a claimed timer that is no longer due (its SLA
// completed, deleted or moved, or its kind no longer configured). The row
// goes rather than being marked: should the SLA come back to that target,
// the stream arms it afresh. A timer armed again since the claim (another
// generation) is left alone: the SLA came back while the clock looked.
func (s *Store) TimerCancelled(ctx context.Context, t TimerRow) error {
	_, err := s.pool.Exec(ctx, s.q(`DELETE FROM {{schema}}.sla_timers
		WHERE sla_id = $1 AND kind = $2 AND target_at = $3 AND fired_at IS NULL AND generation = $4`), t.SLAID, t.Kind, t.TargetAt, t.Generation)
	if err != nil {
		return fmt.Errorf("cancel SLA timer: %w", err)
	}
	return nil
}

// TimerDeferred leaves a claimed timer for d instead of the rest of its
// lease: the clock cannot tell yet whether it fires (its SLA moved or
// completed, and the stream has not yet read the change, which cancels
// it or keeps it), and looks again then. A timer armed again since the
// claim is left alone.
func (s *Store) TimerDeferred(ctx context.Context, t TimerRow, d time.Duration) error {
	_, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.sla_timers SET leased_until = now() + $5 * interval '1 second'
		WHERE sla_id = $1 AND kind = $2 AND target_at = $3 AND fired_at IS NULL AND generation = $4`), t.SLAID, t.Kind, t.TargetAt, t.Generation, d.Seconds())
	if err != nil {
		return fmt.Errorf("defer SLA timer: %w", err)
	}
	return nil
}

// EventExists reports whether an event is journaled.
func (s *Store) EventExists(ctx context.Context, id string) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, s.q(`SELECT EXISTS (SELECT 1 FROM {{schema}}.events WHERE id = $1)`), id).Scan(&ok)
	return ok, err
}

// SLABootstrapped reports whether a slot's pre-existing SLAs were armed.
func (s *Store) SLABootstrapped(ctx context.Context, slot string) (bool, error) {
	var at time.Time
	err := s.pool.QueryRow(ctx, s.q(`SELECT done_at FROM {{schema}}.sla_bootstrap WHERE slot = $1`), slot).Scan(&at)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// ArmBootstrap arms timers of pre-existing SLAs directly (not through a
// batch), and, with done, records that the slot's bootstrap is complete.
// mark is the timers' generation read before this page, start before the
// scan's first (scanMarks).
func (s *Store) ArmBootstrap(ctx context.Context, slot string, changes []TimerChange, done bool, mark, start int64) error {
	var batch statements
	s.queueTimers(&batch, changes, &scanMarks{page: mark, start: start})
	if done {
		batch.Queue(s.q(`INSERT INTO {{schema}}.sla_bootstrap (slot) VALUES ($1) ON CONFLICT (slot) DO NOTHING`), slot)
	}
	if len(batch.list) == 0 {
		return nil
	}
	return s.run(ctx, batch.list)
}

// ArmThresholds arms warning timers of open SLAs that lack them (a
// threshold added to sla.warning_percent since their last change) and
// returns how many it armed. A timer is armed only where none is for its
// SLA, kind and target (fired or not), and only beside a live breach
// timer of the same target, start, request and SLA type (unfired, not
// superseded; a start moved earlier by a change that kept the target
// arms no warning it has passed: found by a review): the journal's
// view of the SLA, as far as the stream has read, is that target. A
// move, completion or deletion the stream journaled since the caller
// read the SLA took that breach away, and one it has not read yet will
// cancel what is armed here as it cancels the rest. The breach row is
// locked (FOR SHARE), so a change being written to it is waited for and
// its outcome seen (READ COMMITTED); the slot's checkpoint row first, as
// every batch of the stream locks it first: the two then take turns
// whole, where locking breach rows in another order than a batch's
// changes could deadlock with it. Without that row (of systemID, as the
// stream's batches lock it) there is no turn to take: ErrNoCheckpoint,
// nothing armed, to try again once the stream has journaled (armed
// beside a batch that locked nothing, a warning of a target the SLA was
// leaving was left, and fired at its next change: found by a review).
func (s *Store) ArmThresholds(ctx context.Context, slot, systemID string, timers []TimerRow) (int, error) {
	if len(timers) == 0 {
		return 0, nil
	}
	n := len(timers)
	sla, kind, req, typ := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	target, fire, started := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
	for i, t := range timers {
		sla[i], kind[i], req[i], typ[i] = t.SLAID, t.Kind, t.RequestID, t.SLAType
		target[i], fire[i], started[i] = t.TargetAt, t.FireAt, t.StartedAt
	}
	// Only those no timer of the same SLA, kind and target has yet, read
	// without locks: locking every open SLA's breach to find nothing
	// missing wrote WAL for each and held the stream's batches at every
	// start (found by a review).
	rows, err := s.pool.Query(ctx, s.q(`SELECT i::int FROM unnest($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS u(sla_id, kind, target_at, i)
		 WHERE NOT EXISTS (SELECT 1 FROM {{schema}}.sla_timers x WHERE x.sla_id = u.sla_id AND x.kind = u.kind AND x.target_at = u.target_at)`), sla, kind, target)
	if err != nil {
		return 0, fmt.Errorf("arm the SLAs' missing warning timers: %w", err)
	}
	missing, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil || len(missing) == 0 {
		if err != nil {
			err = fmt.Errorf("arm the SLAs' missing warning timers: %w", err)
		}
		return 0, err
	}
	sla, kind, req, typ = picked(sla, missing), picked(kind, missing), picked(req, missing), picked(typ, missing)
	target, fire, started = picked(target, missing), picked(fire, missing), picked(started, missing)
	var armed int64
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, s.q(`SELECT 1 FROM {{schema}}.checkpoints WHERE slot = $1 AND system_id = $2 FOR SHARE`), slot, systemID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNoCheckpoint
		}
		tag, err = tx.Exec(ctx, s.q(`INSERT INTO {{schema}}.sla_timers (sla_id, kind, target_at, fire_at, request_id, sla_type, started_at)
			SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[], $6::text[], $7::timestamptz[]) AS u(sla_id, kind, target_at, fire_at, request_id, sla_type, started_at)
			 WHERE EXISTS (SELECT 1 FROM {{schema}}.sla_timers b WHERE b.sla_id = u.sla_id AND b.kind = 'breach' AND b.target_at = u.target_at
			                  AND b.started_at = u.started_at AND b.request_id = u.request_id AND b.sla_type = u.sla_type
			                  AND b.fired_at IS NULL AND b.superseded_at IS NULL FOR SHARE)
			ON CONFLICT (sla_id, kind, target_at) DO NOTHING`), sla, kind, target, fire, req, typ, started)
		armed = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("arm the SLAs' missing warning timers: %w", err)
	}
	return int(armed), nil
}

// picked is xs at the 1-based positions at, in their order.
func picked[T any](xs []T, at []int32) []T {
	out := make([]T, len(at))
	for j, i := range at {
		out[j] = xs[i-1]
	}
	return out
}

// ErrNoCheckpoint: the slot has no checkpoint of the cluster yet (the
// stream has journaled nothing since its start, or since a checkpoint it
// did not trust was dropped).
var ErrNoCheckpoint = errors.New("the slot has no checkpoint of this cluster yet")
