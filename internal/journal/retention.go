package journal

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"time"
)

// DefaultRetentionInterval is how often Retention prunes old history.
const DefaultRetentionInterval = time.Hour

// Retention deletes history older than MaxAge, in small batches (short
// transactions, a pause between them) so deliveries never wait on it.
// Every dzhook process may run it: batches of different processes simply
// delete different rows.
type Retention struct {
	// Store is the journal to prune. Required.
	Store *Store
	// MaxAge is how long finished deliveries, their attempts and events,
	// fired timers, notifications, rejections and stale instances are
	// kept (journal.retention). Required.
	MaxAge time.Duration
	// Interval is the time between two runs; the first run comes after a
	// minute, or after Interval when it is shorter. Defaults to
	// DefaultRetentionInterval.
	Interval time.Duration
	// Logger; defaults to slog.Default().
	Logger *slog.Logger
}

// Run prunes every Interval until ctx ends, then returns nil. A prune in
// progress stops between two statements: what its finished batches
// deleted stays deleted, the rest waits for the next run. A failed prune
// is logged and retried at the next run; Run itself never fails.
func (r Retention) Run(ctx context.Context) error {
	interval := cmp.Or(r.Interval, DefaultRetentionInterval)
	first := time.NewTimer(min(interval, time.Minute))
	defer first.Stop()
	select {
	case <-ctx.Done():
		return nil
	case <-first.C:
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		r.Prune(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Prune runs retention steps until nothing older than MaxAge is left, or
// ctx ends, and returns what it deleted. A failed step is logged and ends
// this prune.
func (r Retention) Prune(ctx context.Context) Pruned {
	log := cmp.Or(r.Logger, slog.Default())
	cutoff := time.Now().Add(-r.MaxAge)
	var total Pruned
	start := time.Now()
	for ctx.Err() == nil {
		p, err := r.Store.PruneStep(ctx, cutoff, PruneBatch)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("retention: pruning old history failed; retrying at the next run", "err", err)
			}
			break
		}
		total.Deliveries += p.Deliveries
		total.Events += p.Events
		total.Other += p.Other
		if p.Deliveries < PruneBatch {
			break
		}
		select { // let deliveries have the journal between batches
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	if total.Deliveries+total.Events+total.Other > 0 {
		log.Info("retention: pruned old history", "deliveries", total.Deliveries, "events", total.Events, "other_rows", total.Other,
			"older_than", cutoff.UTC().Format(time.RFC3339), "took", time.Since(start).Round(time.Millisecond).String())
	}
	return total
}

// PruneBatch is how many deliveries one retention step deletes: small
// enough that each step's transaction is short and deliveries go on.
const PruneBatch = 5000

// Pruned counts what a retention step deleted.
type Pruned struct {
	Deliveries, Events, Other int
}

// notHeldByALiveInstance keeps from a prune step a finished delivery an
// operator's retry has claimed (ClaimForRetry sets the owner and leaves
// the state): deleted under the attempt, its attempt's row stayed for
// ever without it (found by a review, 2026-12-06). An owner whose
// heartbeat is a minute old, or three of its own intervals, is gone.
var notHeldByALiveInstance = `(owner IS NULL OR owner NOT IN (` + liveInstances("interval '1 minute'") + `))`

// lastTouchedBefore keeps from a prune step a delivery attempted since the
// cutoff: an old failed delivery an operator retried by hand yesterday
// keeps that attempt's history for the whole retention, as one held for
// weeks and sent after a resume does (pruned by creation alone, both went
// at the next hourly run, and the history of the attempt with them).
// Retention still finds its rows by creation, through the BRIN index.
const lastTouchedBefore = `(last_attempt_at IS NULL OR last_attempt_at < $1)`

// outsideRunningReplays holds for an event (alias ev) outside the rest
// of every running replay's window: from and until name the arrays of
// their bounds, [cursor or since, until), read once per step. The
// running replays are few: each event is compared with a handful.
func outsideRunningReplays(ev, from, until string) string {
	return `NOT EXISTS (SELECT 1 FROM unnest(` + from + `::timestamptz[], ` + until + `::timestamptz[]) AS w(lo, hi)
		WHERE ` + ev + `.occurred_at >= w.lo AND ` + ev + `.occurred_at < w.hi)`
}

// PruneStep deletes up to limit finished deliveries (delivered, failed,
// skipped, cancelled) created and last attempted before cutoff, with
// their attempts, and the events
// left without deliveries. Pending and held deliveries are never pruned,
// whatever their age, nor the events a running replay has yet to read.
// Call it until it deletes fewer than limit.
//
// The deliveries' state is checked again on the rows deleted, not only
// where they are chosen: a row another transaction changes while the
// step waits for it (RetryFailed making a failed delivery pending) is
// checked as it is then, and kept. (Locking the rows chosen, to skip
// those being changed, costs a WAL record per row, which the stream then
// reads past: retention slowed the deliveries beside it.) And the step
// excludes replay steps (replayLock): a replay
// reads events in its own snapshot and inserts their deliveries, which a
// step running beside it would not see, deleting their event and leaving
// them pending with nothing to send, for ever.
func (s *Store) PruneStep(ctx context.Context, cutoff time.Time, limit int) (Pruned, error) {
	var p Pruned
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return p, fmt.Errorf("prune deliveries: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// Its own statement: the deletion's snapshot is taken once the lock
	// is held, after any replay step it waited for has committed.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", s.replayLock()); err != nil {
		return p, fmt.Errorf("prune deliveries: wait for replays: %w", err)
	}
	// What running replays have yet to read stays: a replay held at its
	// bound across a prune (a slow receiver, a paused subscription) found
	// the rest of its window gone and ended done, having skipped it
	// (found by a review). Read once, under the lock: replay steps and
	// new replays wait for this step, so the cursors stay where they are.
	var from, until []time.Time
	if err := tx.QueryRow(ctx, s.q(`SELECT coalesce(array_agg(coalesce(cursor_at, since)), '{}'), coalesce(array_agg(until), '{}')
		FROM {{schema}}.replays WHERE state = 'running'`)).Scan(&from, &until); err != nil {
		return p, fmt.Errorf("prune deliveries: read the running replays: %w", err)
	}
	err = tx.QueryRow(ctx, s.q(`
		WITH d AS (
			DELETE FROM {{schema}}.deliveries WHERE id IN (
				SELECT id FROM {{schema}}.deliveries
				 WHERE created_at < $1 AND state IN ('delivered', 'failed', 'skipped', 'cancelled') AND `+notHeldByALiveInstance+`
				   AND `+lastTouchedBefore+` LIMIT $2)
			  AND created_at < $1 AND state IN ('delivered', 'failed', 'skipped', 'cancelled') AND `+notHeldByALiveInstance+`
			  AND `+lastTouchedBefore+`
			RETURNING id, event_id),
		a AS (DELETE FROM {{schema}}.attempts WHERE delivery_id IN (SELECT id FROM d)),
		e AS (
			-- An event goes with its last delivery: its deliveries' ids are
			-- dlv_ + the event's part + a tag, a range of the primary key.
			DELETE FROM {{schema}}.events ev WHERE ev.id IN (SELECT DISTINCT event_id FROM d)
			   AND NOT EXISTS (SELECT 1 FROM {{schema}}.deliveries x
			                    WHERE x.id >= 'dlv_' || substr(ev.id, 5) AND x.id < 'dlv_' || substr(ev.id, 5) || '~'
			                      AND x.id NOT IN (SELECT id FROM d))
			   AND `+outsideRunningReplays("ev", "$3", "$4")+`
			RETURNING 1)
		SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM e)`), cutoff, limit, from, until).Scan(&p.Deliveries, &p.Events)
	if err != nil {
		return p, fmt.Errorf("prune deliveries: %w", err)
	}
	if p.Deliveries < limit {
		// The small tables, once the big ones are done; first the events
		// left without deliveries (under the lock too), a replay's left
		// out of the batch chosen, so they do not fill it every time.
		tag, err := tx.Exec(ctx, s.q(`DELETE FROM {{schema}}.events ev WHERE ev.created_at < $1 AND NOT EXISTS (SELECT 1 FROM {{schema}}.deliveries x
				WHERE x.id >= 'dlv_' || substr(ev.id, 5) AND x.id < 'dlv_' || substr(ev.id, 5) || '~')
				AND ev.id IN (SELECT o.id FROM {{schema}}.events o WHERE o.created_at < $1 AND `+outsideRunningReplays("o", "$2", "$3")+` LIMIT 1000)`),
			cutoff, from, until)
		if err != nil {
			return p, fmt.Errorf("prune events: %w", err)
		}
		p.Other += int(tag.RowsAffected())
		for _, stmt := range []string{
			`DELETE FROM {{schema}}.sla_timers WHERE fired_at < $1`,
			`DELETE FROM {{schema}}.notifications WHERE sent_at < $1 OR (sent_at IS NULL AND created_at < $1 AND next_attempt_at > now() + interval '` + notificationGivenUp + `')`,
			`DELETE FROM {{schema}}.rejections WHERE created_at < $1`,
			// A replay goes once none of its deliveries waits: kept, it is
			// shown, cancelled (and swept), and refuses a replay of its
			// window that would send them twice (replayGoing).
			`DELETE FROM {{schema}}.replays r WHERE r.finished_at < $1 AND NOT EXISTS (
				SELECT 1 FROM {{schema}}.deliveries x WHERE x.replay_id = r.id AND x.state IN ('pending', 'held'))`,
			// A live instance writes its row every 2 s at most: whatever
			// the retention, a row younger than an hour is never pruned
			// (gone, the instance would look dead until its next write).
			`DELETE FROM {{schema}}.instances WHERE heartbeat_at < $1 AND heartbeat_at < now() - interval '1 hour'`,
		} {
			tag, err := tx.Exec(ctx, s.q(stmt), cutoff)
			if err != nil {
				return p, fmt.Errorf("prune: %w", err)
			}
			p.Other += int(tag.RowsAffected())
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return p, fmt.Errorf("prune deliveries: %w", err)
	}
	return p, nil
}
