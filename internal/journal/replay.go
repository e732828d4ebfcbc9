package journal

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ReplayState is a replay's state (the replays table's state).
type ReplayState string

// Replay states.
//
//	running ──every event of the window looked at──▶ done
//	   ├──cancel──▶ cancelled
//	   └──its subscription is gone──▶ failed
const (
	// ReplayRunning: deliveries are still being made.
	ReplayRunning ReplayState = "running"
	// ReplayDone: every event of the window has its delivery (they may
	// still be pending: Replay.Deliveries says how far they got).
	ReplayDone ReplayState = "done"
	// ReplayCancelled: an operator stopped it.
	ReplayCancelled ReplayState = "cancelled"
	// ReplayFailed: it cannot go on (Replay.Reason says why). The
	// deliveries it made stay, and go out if its subscription comes
	// back; a cancel stops them.
	ReplayFailed ReplayState = "failed"
)

// Errors of the replay operations.
var (
	// ErrReplayFinished: the replay has nothing left to stop.
	ErrReplayFinished = errors.New("the replay is no longer running")
	// ErrReplayOverlaps: a replay of the subscription still going covers
	// part of the window and types asked for (ReplayOverlapError says
	// which).
	ErrReplayOverlaps = errors.New("a replay of the subscription still going covers part of this window")
)

// Replay is a replay of journaled events to one subscription.
type Replay struct {
	ID, Subscription string
	Since, Until     time.Time
	// Patterns are the event globs asked for; Types the event types they
	// select within the subscription's.
	Patterns, Types []string
	State           ReplayState
	// Matched counts the events of the window and types when the replay
	// was asked for; Scanned those looked at so far; Created the
	// deliveries made (the subscription's filter may leave some out).
	Matched, Scanned, Created int
	RequestedBy               string
	Reason                    string
	CreatedAt, UpdatedAt      time.Time
	FinishedAt                *time.Time
	// Deliveries counts the replay's deliveries by state (filled by
	// GetReplay and ListReplays).
	Deliveries map[State]int
}

// ReplayRequest asks for a replay.
type ReplayRequest struct {
	ID, Subscription string
	Since, Until     time.Time
	Patterns, Types  []string
	RequestedBy      string
}

// ReplayWindow is what the journal holds of a window.
type ReplayWindow struct {
	// Matched counts its events of the types.
	Matched int
	// Oldest is the oldest event the journal keeps at all (nil: none):
	// a window that starts before it lost what retention pruned.
	Oldest *time.Time
}

const replayColumns = `r.id, r.subscription_id, r.since, r.until, r.patterns, r.types, r.state, r.matched, r.scanned, r.created,
	r.requested_by, coalesce(r.reason, ''), r.created_at, r.updated_at, r.finished_at`

func scanReplay(row pgx.Row) (Replay, error) {
	var r Replay
	err := row.Scan(&r.ID, &r.Subscription, &r.Since, &r.Until, &r.Patterns, &r.Types, &r.State, &r.Matched, &r.Scanned, &r.Created,
		&r.RequestedBy, &r.Reason, &r.CreatedAt, &r.UpdatedAt, &r.FinishedAt)
	return r, err
}

// CountWindow counts the events of [since, until) of the types.
func (s *Store) CountWindow(ctx context.Context, since, until time.Time, types []string) (ReplayWindow, error) {
	var w ReplayWindow
	err := s.pool.QueryRow(ctx, s.q(`SELECT
		(SELECT count(*) FROM {{schema}}.events WHERE occurred_at >= $1 AND occurred_at < $2 AND type = ANY($3) AND id NOT LIKE 'whk\_test\_%'),
		(SELECT min(occurred_at) FROM {{schema}}.events)`), since, until, types).Scan(&w.Matched, &w.Oldest)
	if err != nil {
		return w, fmt.Errorf("count the events of a replay's window: %w", err)
	}
	return w, nil
}

// replayGoing holds for a replay r still going: running, or done making
// its deliveries (or failed) with some still to send (a cancel stops
// those; a replay overlapping it would send them twice). A failed
// replay's deliveries stay pending: sent if its subscription comes back.
const replayGoing = `(r.state = 'running' OR r.state IN ('done', 'failed') AND EXISTS (
	SELECT 1 FROM {{schema}}.deliveries x WHERE x.replay_id = r.id AND x.state IN ('pending', 'held')))`

// lockReplays takes the subscription's replay lock until tx ends.
func (s *Store) lockReplays(ctx context.Context, tx pgx.Tx, subscription string) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('dzhook replay ' || $1 || ' ' || $2, 0))`, s.raw, subscription)
	return err
}

// ReplayOverlapError is ErrReplayOverlaps with the running replay.
type ReplayOverlapError struct{ Running Replay }

func (e *ReplayOverlapError) Error() string {
	return fmt.Sprintf("%v: %s (%s to %s)", ErrReplayOverlaps, e.Running.ID,
		e.Running.Since.UTC().Format(time.RFC3339), e.Running.Until.UTC().Format(time.RFC3339))
}

func (e *ReplayOverlapError) Unwrap() error { return ErrReplayOverlaps }

// CreateReplay records a replay, running, with the count of its window,
// and returns it with what the journal holds of the window. While a
// replay of the subscription still going (running, or done making its
// deliveries or failed with some still to send, as CancelReplay counts
// it; a small window is done at its first step) covers part of the
// window and types, it records nothing: *ReplayOverlapError (a double
// click, or a retried call, re-sent every event of the window twice:
// found by a review). The check and the insert hold the subscription's
// replay lock (a transaction advisory lock), so two requests at once do
// not both pass.
func (s *Store) CreateReplay(ctx context.Context, req ReplayRequest) (Replay, ReplayWindow, error) {
	w, err := s.CountWindow(ctx, req.Since, req.Until, req.Types)
	if err != nil {
		return Replay{}, w, err
	}
	var r Replay
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := s.lockReplays(ctx, tx, req.Subscription); err != nil {
			return err
		}
		// A retention step keeps the windows of the replays running when
		// it starts (PruneStep): one recorded while it runs waits for it,
		// or it waits for this one.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock_shared(hashtext($1))", s.replayLock()); err != nil {
			return fmt.Errorf("wait for retention: %w", err)
		}
		running, err := scanReplay(tx.QueryRow(ctx, s.q(`SELECT `+replayColumns+` FROM {{schema}}.replays r
			WHERE r.subscription_id = $1 AND r.since < $3 AND $2 < r.until AND r.types && $4 AND `+replayGoing+`
			ORDER BY r.created_at LIMIT 1`), req.Subscription, req.Since, req.Until, nonNil(req.Types)))
		if err == nil {
			return &ReplayOverlapError{Running: running}
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		r, err = scanReplay(tx.QueryRow(ctx, s.q(`INSERT INTO {{schema}}.replays AS r (id, subscription_id, since, until, patterns, types, matched, requested_by)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING `+replayColumns),
			req.ID, req.Subscription, req.Since, req.Until, nonNil(req.Patterns), nonNil(req.Types), w.Matched, req.RequestedBy))
		return err
	})
	if errors.Is(err, ErrReplayOverlaps) {
		return Replay{}, w, err
	}
	if err != nil {
		return Replay{}, w, fmt.Errorf("record replay: %w", err)
	}
	r.Deliveries = map[State]int{}
	return r, w, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// GetReplay returns a replay of a subscription with its deliveries
// counted by state; ErrNotFound when there is none.
func (s *Store) GetReplay(ctx context.Context, subscription, id string) (Replay, error) {
	r, err := scanReplay(s.pool.QueryRow(ctx, s.q(`SELECT `+replayColumns+` FROM {{schema}}.replays r WHERE r.id = $1 AND r.subscription_id = $2`), id, subscription))
	if errors.Is(err, pgx.ErrNoRows) {
		return Replay{}, ErrNotFound
	}
	if err != nil {
		return Replay{}, fmt.Errorf("read replay: %w", err)
	}
	counts, err := s.replayCounts(ctx, []string{id})
	r.Deliveries = counts[id]
	return r, err
}

// ListReplays returns a subscription's latest replays, newest first.
func (s *Store) ListReplays(ctx context.Context, subscription string, limit int) ([]Replay, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+replayColumns+` FROM {{schema}}.replays r WHERE r.subscription_id = $1
		ORDER BY r.created_at DESC, r.id DESC LIMIT $2`), subscription, limit)
	if err != nil {
		return nil, fmt.Errorf("list replays: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Replay, error) { return scanReplay(r) })
	if err != nil {
		return nil, fmt.Errorf("list replays: %w", err)
	}
	ids := make([]string, len(list))
	for i, r := range list {
		ids[i] = r.ID
	}
	counts, err := s.replayCounts(ctx, ids)
	for i := range list {
		list[i].Deliveries = counts[list[i].ID]
	}
	return list, err
}

// replayCounts counts the replays' deliveries by state.
func (s *Store) replayCounts(ctx context.Context, ids []string) (map[string]map[State]int, error) {
	out := map[string]map[State]int{}
	for _, id := range ids {
		out[id] = map[State]int{}
	}
	rows, err := s.pool.Query(ctx, s.q(`SELECT replay_id, state, count(*) FROM {{schema}}.deliveries WHERE replay_id = ANY($1) GROUP BY 1, 2`), ids)
	if err != nil {
		return out, fmt.Errorf("count replay deliveries: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var st State
		var n int
		if err := rows.Scan(&id, &st, &n); err != nil {
			return out, fmt.Errorf("count replay deliveries: %w", err)
		}
		out[id][st] = n
	}
	return out, rows.Err()
}

// RunningReplays lists the replays still making deliveries, oldest first.
func (s *Store) RunningReplays(ctx context.Context) ([]Replay, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+replayColumns+` FROM {{schema}}.replays r WHERE r.state = 'running' ORDER BY r.created_at, r.id`))
	if err != nil {
		return nil, fmt.Errorf("list running replays: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Replay, error) { return scanReplay(r) })
	if err != nil {
		return nil, fmt.Errorf("list running replays: %w", err)
	}
	return list, nil
}

// CancelReplay stops a replay that is running, or done making its
// deliveries (or failed) while some still wait: it makes no more
// deliveries, and those it made that wait in the journal (pending and
// owned by no process, or held) are cancelled with the reason, whether
// never attempted or waiting for a retry: a cancel means "stop
// sending". Attempts in flight, and deliveries a process already took
// into its queue, finish. It returns the replay as it now is and how
// many deliveries it cancelled; ErrReplayFinished (with the replay) when
// there was nothing to stop.
//
// The cancel first locks the replay's row, in a statement of its own,
// waiting for a StepReplay in progress (it holds the row); then, in a
// fresh statement, it checks whether the replay is still going. The
// deliveries that step made are then committed: seen by the check, and
// cancelled here too. (Checked in the UPDATE that waited, the
// "deliveries still waiting" test ran in the statement's snapshot, from
// before the step committed: a cancel during a replay's last step
// answered that it was finished, and its deliveries went out. Found by
// a review.)
func (s *Store) CancelReplay(ctx context.Context, subscription, id, reason string, staleAfter time.Duration) (Replay, int, error) {
	// (Deliveries of a process that died, no heartbeat within staleAfter,
	// count as waiting: nobody is sending them. What a live process holds
	// finishes its attempt; if it fails, SweepCancelledReplays cancels its
	// retry.)
	// READ COMMITTED whatever the server's default: each statement below
	// must see what committed before it began.
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return Replay{}, 0, fmt.Errorf("cancel replay: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, s.q(`SELECT 1 FROM {{schema}}.replays WHERE id = $1 AND subscription_id = $2 FOR UPDATE`), id, subscription); err != nil {
		return Replay{}, 0, fmt.Errorf("cancel replay: lock it: %w", err)
	}
	// A fresh statement, with the row held: its snapshot has what the
	// step committed.
	r, err := scanReplay(tx.QueryRow(ctx, s.q(`UPDATE {{schema}}.replays r SET state = 'cancelled', reason = $3, finished_at = now(), updated_at = now()
		WHERE r.id = $1 AND r.subscription_id = $2 AND `+replayGoing+`
		RETURNING `+replayColumns), id, subscription, reason))
	if errors.Is(err, pgx.ErrNoRows) {
		r, err := s.GetReplay(ctx, subscription, id)
		if err != nil {
			return Replay{}, 0, err
		}
		return r, 0, ErrReplayFinished
	}
	if err != nil {
		return Replay{}, 0, fmt.Errorf("cancel replay: %w", err)
	}
	tag, err := tx.Exec(ctx, s.q(cancelReplayDeliveriesSQL+` AND replay_id = $3`), "replay cancelled: "+reason, staleAfter.Seconds(), id)
	if err != nil {
		return Replay{}, 0, fmt.Errorf("skip a cancelled replay's deliveries: %w", err)
	}
	// What was parked behind a cancelled delivery (Store.Park) no longer
	// waits for it.
	if _, err := tx.Exec(ctx, s.q(`UPDATE {{schema}}.deliveries f SET next_attempt_at = now(), parked_behind = NULL
		  FROM {{schema}}.deliveries h
		 WHERE h.replay_id = $1 AND h.state = 'cancelled' AND f.parked_behind = h.id AND f.state = 'pending'`), id); err != nil {
		return Replay{}, 0, fmt.Errorf("cancel replay: bring back what waited behind its deliveries: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Replay{}, 0, fmt.Errorf("cancel replay: %w", err)
	}
	counts, err := s.replayCounts(ctx, []string{id})
	r.Deliveries = counts[id]
	return r, int(tag.RowsAffected()), err
}

// FailReplay ends a running replay that cannot go on, with the reason.
func (s *Store) FailReplay(ctx context.Context, id, reason string) error {
	_, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.replays SET state = 'failed', reason = $2, finished_at = now(), updated_at = now()
		WHERE id = $1 AND state = 'running'`), id, reason)
	if err != nil {
		return fmt.Errorf("fail replay: %w", err)
	}
	return nil
}

// ReplayEvent is a journaled event a replay looks at.
type ReplayEvent struct {
	ID, Type   string
	Body       []byte
	OccurredAt time.Time
}

// ReplayPlan turns a batch of a replay's events, in order, into its
// deliveries (ID, EventID, EventType and the ordering fields; the rest
// StepReplay sets). scanned is how many events the replay looked at
// before the batch, so positions scanned+1, scanned+2, … keep the
// events' order across batches. used is how many of the events, from the
// first, it looked at (all of them, or fewer once its time for a step
// ran out: the rest are the next step's); at least one.
type ReplayPlan func(r Replay, scanned int, events []ReplayEvent) (deliveries []DeliveryRow, used int)

// ReplayStep says what one StepReplay did.
type ReplayStep struct {
	// Busy: another process is stepping the replay, or it is not running.
	Busy bool
	// Waiting: the subscription's backlog is at the bound; nothing done.
	Waiting bool
	// Scanned events and Created deliveries in this step.
	Scanned, Created int
	// Done: the window is exhausted; the replay is done.
	Done bool
}

// replayBacklogSQL counts a subscription's deliveries not yet done, which
// bound a replay's steps; ORed for the partial indexes (backlogsSQL).
const replayBacklogSQL = `SELECT count(*) FROM {{schema}}.deliveries WHERE subscription_id = $1 AND (state = 'pending' OR state = 'held')`

// StepReplay makes the next deliveries of a running replay: it looks at
// up to batch events of its window and types after its cursor, in order
// (occurred_at, then id: commit order, and within a transaction stream
// order), asks plan for their deliveries, inserts them pending and
// unowned (the scheduler claims them like any due work), and moves the
// cursor, all in one transaction. It makes none while the subscription
// has bound or more deliveries pending or held (its own included), and
// fewer when it is close: a replay never floods the journal or the
// subscription's queue, and it waits while the receiver is slow, failing
// or paused.
//
// The transaction holds the replay's row (FOR UPDATE SKIP LOCKED): two
// processes never step one replay at once, and a crash rolls the step
// back whole, so whoever steps it next starts at the same cursor. That
// is the lease: nothing outlives the transaction, so nothing expires.
// Delivery ids derive from (event, subscription, replay) and are inserted
// ON CONFLICT DO NOTHING besides.
func (s *Store) StepReplay(ctx context.Context, id string, batch, bound int, plan ReplayPlan) (ReplayStep, error) {
	var step ReplayStep
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return step, fmt.Errorf("step replay: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var cursorAt *time.Time
	var cursorID *string
	var r Replay
	err = tx.QueryRow(ctx, s.q(`SELECT r.id, r.subscription_id, r.since, r.until, r.types, r.scanned, r.cursor_at, r.cursor_id
		FROM {{schema}}.replays r WHERE r.id = $1 AND r.state = 'running' FOR UPDATE SKIP LOCKED`), id).
		Scan(&r.ID, &r.Subscription, &r.Since, &r.Until, &r.Types, &r.Scanned, &cursorAt, &cursorID)
	if errors.Is(err, pgx.ErrNoRows) {
		step.Busy = true
		return step, nil
	}
	if err != nil {
		return step, fmt.Errorf("step replay: %w", err)
	}
	// Retention's steps wait while replay steps run (PruneStep says why),
	// and a replay step waits for the retention step in progress: the
	// events it reads below are then those that step left.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock_shared(hashtext($1))", s.replayLock()); err != nil {
		return step, fmt.Errorf("step replay: wait for retention: %w", err)
	}
	var backlog int
	if err := tx.QueryRow(ctx, s.q(replayBacklogSQL), r.Subscription).Scan(&backlog); err != nil {
		return step, fmt.Errorf("step replay: count the backlog: %w", err)
	}
	room := min(batch, bound-backlog)
	if room <= 0 {
		step.Waiting = true
		return step, nil
	}
	rows, err := tx.Query(ctx, s.q(`SELECT id, type, body, occurred_at FROM {{schema}}.events
		WHERE occurred_at < $2 AND type = ANY($3)
		  AND id NOT LIKE 'whk\_test\_%' -- an operator's test sends are samples, not events to send again
		  AND (CASE WHEN $4::timestamptz IS NULL THEN occurred_at >= $1 ELSE (occurred_at, id) > ($4, $5::text) END)
		ORDER BY occurred_at, id LIMIT $6`), r.Since, r.Until, r.Types, cursorAt, cursorID, room)
	if err != nil {
		return step, fmt.Errorf("step replay: read events: %w", err)
	}
	events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ReplayEvent, error) {
		var e ReplayEvent
		err := row.Scan(&e.ID, &e.Type, &e.Body, &e.OccurredAt)
		return e, err
	})
	if err != nil {
		return step, fmt.Errorf("step replay: read events: %w", err)
	}
	step.Done = len(events) < room
	if len(events) > 0 {
		deliveries, used := plan(r, r.Scanned, events)
		if used >= 1 && used < len(events) {
			// The plan's time ran out (a costly filter): the step ends
			// with the events it looked at, its transaction short.
			events, step.Done = events[:used], false
		}
		if n := len(deliveries); n > 0 {
			ids, evs, types, next := make([]string, n), make([]string, n), make([]string, n), make([]time.Time, n)
			keys, positions := make([]*string, n), make([]*int64, n)
			for i, d := range deliveries {
				ids[i], evs[i], types[i], next[i] = d.ID, d.EventID, d.EventType, d.NextAttemptAt
				if d.Ordered {
					keys[i], positions[i] = &d.OrderingKey, &d.Position
				}
			}
			tag, err := tx.Exec(ctx, s.q(`INSERT INTO {{schema}}.deliveries (id, event_id, subscription_id, event_type, state,
					next_attempt_at, ordering_key, position, replay_id, created_at, updated_at)
				SELECT u.id, u.ev, $1, u.typ, 'pending', u.next, u.key, u.pos, $2, now(), now()
				  FROM unnest($3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::bigint[]) AS u(id, ev, typ, next, key, pos)
				ON CONFLICT (id) DO NOTHING`), r.Subscription, r.ID, ids, evs, types, next, keys, positions)
			if err != nil {
				return step, fmt.Errorf("step replay: insert deliveries: %w", err)
			}
			step.Created = int(tag.RowsAffected())
		}
		last := events[len(events)-1]
		cursorAt, cursorID = &last.OccurredAt, &last.ID
	}
	step.Scanned = len(events)
	state := ReplayRunning
	if step.Done {
		state = ReplayDone
	}
	if _, err := tx.Exec(ctx, s.q(`UPDATE {{schema}}.replays SET scanned = scanned + $2, created = created + $3, cursor_at = $4, cursor_id = $5,
			state = $6, finished_at = CASE WHEN $6 = 'running' THEN NULL ELSE now() END, updated_at = now()
		WHERE id = $1`), r.ID, step.Scanned, step.Created, cursorAt, cursorID, state); err != nil {
		return step, fmt.Errorf("step replay: move the cursor: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return step, fmt.Errorf("step replay: %w", err)
	}
	return step, nil
}

// cancelReplayDeliveriesSQL cancels deliveries of a replay that wait
// (pending or held) and that no live process holds: $1 is the reason, $2
// how old a heartbeat says its process is gone (seconds), as for claims.
var cancelReplayDeliveriesSQL = `UPDATE {{schema}}.deliveries SET state = 'cancelled', next_attempt_at = NULL, last_error = $1, updated_at = now()
		WHERE (state = 'pending' OR state = 'held') AND (owner IS NULL OR owner NOT IN (` + liveInstances("make_interval(secs => $2)") + `))`

// SweepCancelledReplays cancels what cancelled replays left waiting: a
// delivery a live process held at the cancel (in its queue or in flight)
// whose attempt then failed is pending again, for a retry; one a process
// held when it died is no longer held. Without the sweep they went
// through the whole retry schedule after the operator had said stop. An
// operator's retry made after the cancel (retry-failed: manual) is theirs
// and goes out.
// The engine runs it every half minute, before the first retry (a
// minute after a failed first attempt) is due.
func (s *Store) SweepCancelledReplays(ctx context.Context, staleAfter time.Duration) (int, error) {
	tag, err := s.pool.Exec(ctx, s.q(cancelReplayDeliveriesSQL+` AND NOT manual AND replay_id IN (SELECT id FROM {{schema}}.replays WHERE state = 'cancelled')`),
		"replay cancelled", staleAfter.Seconds())
	if err != nil {
		return 0, fmt.Errorf("cancel what cancelled replays left: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
