package journal

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// RuntimeSubscription is a subscription managed through the admin API, as
// the journal keeps it: Spec holds every field but the secrets (JSON);
// the secrets are sealed (internal/secretbox).
type RuntimeSubscription struct {
	ID     string
	Spec   []byte
	Secret string
	// PreviousSecret stays valid until PreviousUntil after a rotation;
	// SwitchAt is when X-DZDESK-Signature moves to Secret.
	PreviousSecret string
	PreviousUntil  *time.Time
	SwitchAt       *time.Time
	Rev            int64
	CreatedAt      time.Time
	UpdatedAt      time.Time
}

// AuditRow is one change to the subscriptions.
type AuditRow struct {
	ID           int64
	At           time.Time
	Action       string
	Subscription string
	Fields       []string
	Client       string
}

// ErrExists: a runtime subscription has that id already.
var ErrExists = errors.New("a subscription with this id exists")

// ErrNoSubscription: no runtime subscription has that id.
var ErrNoSubscription = errors.New("no such runtime subscription")

// RuntimeRev is the highest revision of the runtime subscriptions (0 when
// none ever existed): it moves on every change, deletes included.
func (s *Store) RuntimeRev(ctx context.Context) (int64, error) {
	var rev int64
	if err := s.pool.QueryRow(ctx, s.q(`SELECT rev FROM {{schema}}.runtime_meta`)).Scan(&rev); err != nil {
		return 0, fmt.Errorf("read the runtime subscriptions' revision: %w", err)
	}
	return rev, nil
}

// RuntimeSubscriptions lists the runtime subscriptions not deleted, with
// the revision they are as of, and the ids of those deleted.
func (s *Store) RuntimeSubscriptions(ctx context.Context) (subs []RuntimeSubscription, deleted []string, rev int64, err error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT id, spec, secret, coalesce(previous_secret, ''), previous_until, switch_at, rev, created_at, updated_at, deleted_at IS NOT NULL
		FROM {{schema}}.runtime_subscriptions ORDER BY created_at, id`))
	if err != nil {
		return nil, nil, 0, fmt.Errorf("read the runtime subscriptions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r RuntimeSubscription
		var gone bool
		if err := rows.Scan(&r.ID, &r.Spec, &r.Secret, &r.PreviousSecret, &r.PreviousUntil, &r.SwitchAt, &r.Rev, &r.CreatedAt, &r.UpdatedAt, &gone); err != nil {
			return nil, nil, 0, fmt.Errorf("read the runtime subscriptions: %w", err)
		}
		rev = max(rev, r.Rev)
		if gone {
			deleted = append(deleted, r.ID)
		} else {
			subs = append(subs, r)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, 0, fmt.Errorf("read the runtime subscriptions: %w", err)
	}
	return subs, deleted, rev, nil
}

// RecreateAfter is how long after a runtime subscription's delete its id
// may be created again: several of the processes' polls of the runtime
// subscriptions (a second apart), so that every process sharing the
// journal has stopped the deleted one and journaled what it held.
const RecreateAfter = 5 * time.Second

// StillStoppingError: a runtime subscription's id was deleted moments
// ago, or deliveries of the deleted subscription still wait, which the
// processes sharing the journal cancel as they stop it. Created again
// now, a process that has not yet seen the delete would take the new
// subscription for an edit of the old one and hand it the old one's
// queue: events the delete was meant to stop would go to the new URL.
type StillStoppingError struct {
	ID         string
	DeletedAgo time.Duration
	Waiting    int
}

func (e *StillStoppingError) Error() string {
	return fmt.Sprintf("subscription %q was deleted %s ago and %d of its deliveries still wait to be cancelled by the processes sharing the journal: create it again once they are (seconds; half a minute at most), or choose another id",
		e.ID, max(e.DeletedAgo, 0).Round(100*time.Millisecond), e.Waiting)
}

// CreateRuntime stores a new runtime subscription (or one whose id was
// deleted before, once that one is stopped everywhere: StillStoppingError)
// and its audit entry, in one transaction.
func (s *Store) CreateRuntime(ctx context.Context, r RuntimeSubscription, a AuditRow) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rev, err := s.nextRev(ctx, tx)
		if err != nil {
			return err
		}
		var ago float64
		var waiting int
		err = tx.QueryRow(ctx, s.q(`SELECT extract(epoch FROM now() - r.deleted_at)::float8,
				(SELECT count(*) FROM {{schema}}.deliveries d WHERE d.subscription_id = r.id AND (d.state = 'pending' OR d.state = 'held'))
			FROM {{schema}}.runtime_subscriptions r WHERE r.id = $1 AND r.deleted_at IS NOT NULL FOR UPDATE`), r.ID).Scan(&ago, &waiting)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return fmt.Errorf("read the deleted subscription: %w", err)
		case waiting > 0 || ago < RecreateAfter.Seconds():
			return &StillStoppingError{ID: r.ID, DeletedAgo: time.Duration(ago * float64(time.Second)), Waiting: waiting}
		default:
			// The new subscription starts unpaused and healthy: the
			// deleted one's pause and state are not its (a process that
			// ran the deleted one may have written its state after the
			// delete).
			if _, err := tx.Exec(ctx, s.q(`DELETE FROM {{schema}}.subscriptions WHERE id = $1`), r.ID); err != nil {
				return fmt.Errorf("forget the deleted subscription's state: %w", err)
			}
		}
		tag, err := tx.Exec(ctx, s.q(`INSERT INTO {{schema}}.runtime_subscriptions AS r (id, spec, secret, rev)
			VALUES ($1, $2, $3, $4)
			ON CONFLICT (id) DO UPDATE SET spec = EXCLUDED.spec, secret = EXCLUDED.secret, previous_secret = NULL,
				previous_until = NULL, switch_at = NULL, rev = EXCLUDED.rev, created_at = now(), updated_at = now(), deleted_at = NULL
			WHERE r.deleted_at IS NOT NULL`), r.ID, r.Spec, r.Secret, rev)
		if err != nil {
			return fmt.Errorf("store the subscription: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return ErrExists
		}
		return s.audit(ctx, tx, a)
	})
}

// UpdateRuntime replaces a runtime subscription's spec, if it is still at
// revision expected (else ErrChanged: another change came first).
func (s *Store) UpdateRuntime(ctx context.Context, id string, expected int64, spec []byte, a AuditRow) error {
	return s.changeRuntime(ctx, a, id, expected, `UPDATE {{schema}}.runtime_subscriptions SET spec = $3, rev = $2, updated_at = now()
		WHERE id = $1 AND deleted_at IS NULL AND rev = $4`, spec)
}

// RotateRuntime sets a new secret, keeping the previous one until until;
// X-DZDESK-Signature switches at switchAt.
func (s *Store) RotateRuntime(ctx context.Context, id string, expected int64, secret, previous string, until, switchAt time.Time, a AuditRow) error {
	return s.changeRuntime(ctx, a, id, expected, `UPDATE {{schema}}.runtime_subscriptions SET secret = $3, previous_secret = $5, previous_until = $6, switch_at = $7,
			rev = $2, updated_at = now()
		WHERE id = $1 AND deleted_at IS NULL AND rev = $4`, secret, previous, until, switchAt)
}

// ResealRuntime writes a runtime subscription's sealed values again, as
// sealed with the current secrets key (previous "" leaves the previous
// secret as it is), if still at revision expected: what they seal is
// unchanged, so a key dropped from secrets.keys afterwards is not missed.
func (s *Store) ResealRuntime(ctx context.Context, id string, expected int64, secret, previous string, a AuditRow) error {
	return s.changeRuntime(ctx, a, id, expected, `UPDATE {{schema}}.runtime_subscriptions SET secret = $3,
			previous_secret = CASE WHEN $5 = '' THEN previous_secret ELSE $5 END, rev = $2, updated_at = now()
		WHERE id = $1 AND deleted_at IS NULL AND rev = $4`, secret, previous)
}

// DeleteRuntime marks a runtime subscription deleted, cancels its running
// replays and its pending and held deliveries (CancelDeliveries), with
// its audit entry.
func (s *Store) DeleteRuntime(ctx context.Context, id string, a AuditRow) (int, error) {
	var n int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rev, err := s.nextRev(ctx, tx)
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, s.q(`UPDATE {{schema}}.runtime_subscriptions SET deleted_at = now(), rev = $2, updated_at = now()
			WHERE id = $1 AND deleted_at IS NULL`), id, rev)
		if err != nil {
			return fmt.Errorf("delete the subscription: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return ErrNoSubscription
		}
		// Its replays stop: nobody will run the subscription. Before its
		// deliveries, in CancelReplay's order (the replay's row, then its
		// deliveries): the other way round, a cancel of one of them at
		// the same moment deadlocked with the delete. Every replay whose
		// deliveries still wait is cancelled (its row locked), not only
		// running ones: a cancel of a done replay whose deliveries still
		// go out takes its row too (found by a review).
		if _, err := tx.Exec(ctx, s.q(`UPDATE {{schema}}.replays r SET state = 'cancelled', reason = 'the subscription was deleted', finished_at = now(), updated_at = now()
			WHERE r.subscription_id = $1 AND `+replayGoing), id); err != nil {
			return fmt.Errorf("stop the subscription's replays: %w", err)
		}
		if n, err = s.cancel(ctx, tx, id, 0); err != nil {
			return err
		}
		// Its pause and state go with it: a subscription created again
		// with its id starts afresh.
		if _, err := tx.Exec(ctx, s.q(`DELETE FROM {{schema}}.subscriptions WHERE id = $1`), id); err != nil {
			return fmt.Errorf("forget the subscription's state: %w", err)
		}
		return s.audit(ctx, tx, a)
	})
	return n, err
}

// CancelDeliveries cancels the pending and held deliveries of a deleted
// subscription that no live process holds: unowned, or owned by an
// instance whose heartbeat is older than staleAfter (a crashed one; zero:
// unowned only). Each process runs it again once it stopped the
// subscription, for those its attempts in flight left pending.
func (s *Store) CancelDeliveries(ctx context.Context, subscription string, staleAfter time.Duration) (int, error) {
	var n int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		n, err = s.cancel(ctx, tx, subscription, staleAfter)
		return err
	})
	return n, err
}

// deletedRuntimeSQL and cancelSQL read a subscription's pending and held
// deliveries through the partial indexes (the states ORed: backlogsSQL).
var (
	deletedRuntimeSQL = `SELECT r.id FROM {{schema}}.runtime_subscriptions r
		WHERE r.deleted_at IS NOT NULL AND EXISTS (SELECT 1 FROM {{schema}}.deliveries d
			WHERE d.subscription_id = r.id AND (d.state = 'pending' OR d.state = 'held'))`
	cancelSQL = `UPDATE {{schema}}.deliveries SET state = 'cancelled', next_attempt_at = NULL,
			last_error = 'cancelled: the subscription was deleted', updated_at = now()
		WHERE subscription_id = $1 AND (state = 'pending' OR state = 'held')
		  AND (owner IS NULL OR ($2 > 0 AND owner NOT IN (` + liveInstances("make_interval(secs => $2)") + `)))`
)

// DeletedRuntime lists the ids of deleted runtime subscriptions that
// still have pending or held deliveries.
func (s *Store) DeletedRuntime(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, s.q(deletedRuntimeSQL))
	if err != nil {
		return nil, fmt.Errorf("list deleted subscriptions: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func (s *Store) cancel(ctx context.Context, tx pgx.Tx, subscription string, staleAfter time.Duration) (int, error) {
	tag, err := tx.Exec(ctx, s.q(cancelSQL), subscription, staleAfter.Seconds())
	if err != nil {
		return 0, fmt.Errorf("cancel the subscription's deliveries: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Audit adds an entry to the audit trail (pause, resume).
func (s *Store) Audit(ctx context.Context, a AuditRow) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error { return s.audit(ctx, tx, a) })
}

func (s *Store) audit(ctx context.Context, tx pgx.Tx, a AuditRow) error {
	_, err := tx.Exec(ctx, s.q(`INSERT INTO {{schema}}.audit (action, subscription_id, fields, client) VALUES ($1, $2, $3, $4)`),
		a.Action, a.Subscription, a.Fields, a.Client)
	if err != nil {
		return fmt.Errorf("record the change in the audit trail: %w", err)
	}
	return nil
}

// AuditTrail lists the audit trail, newest first, limit entries before
// cursor (an entry's id; "" for the newest), and the next cursor.
func (s *Store) AuditTrail(ctx context.Context, limit int, cursor string) ([]AuditRow, string, error) {
	before := int64(1<<63 - 1)
	if cursor != "" {
		v, err := strconv.ParseInt(cursor, 10, 64)
		if err != nil || v <= 0 {
			return nil, "", ErrBadCursor
		}
		before = v
	}
	rows, err := s.pool.Query(ctx, s.q(`SELECT id, at, action, subscription_id, coalesce(fields, '{}'), client
		FROM {{schema}}.audit WHERE id < $1 ORDER BY id DESC LIMIT $2`), before, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("read the audit trail: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditRow, error) {
		var a AuditRow
		err := r.Scan(&a.ID, &a.At, &a.Action, &a.Subscription, &a.Fields, &a.Client)
		return a, err
	})
	if err != nil {
		return nil, "", fmt.Errorf("read the audit trail: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = strconv.FormatInt(out[limit-1].ID, 10)
	}
	return out, next, nil
}

// changeRuntime runs sql ($1 id, $2 the new revision, $3… more, $4 the
// expected revision after the first of more) and the audit entry.
func (s *Store) changeRuntime(ctx context.Context, a AuditRow, id string, expected int64, sql string, more ...any) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rev, err := s.nextRev(ctx, tx)
		if err != nil {
			return err
		}
		args := append([]any{id, rev, more[0], expected}, more[1:]...)
		var tag pgconn.CommandTag
		tag, err = tx.Exec(ctx, s.q(sql), args...)
		if err != nil {
			return fmt.Errorf("change the subscription: %w", err)
		}
		if tag.RowsAffected() == 0 {
			var exists bool
			if err := tx.QueryRow(ctx, s.q(`SELECT EXISTS (SELECT 1 FROM {{schema}}.runtime_subscriptions WHERE id = $1 AND deleted_at IS NULL)`), id).Scan(&exists); err != nil {
				return err
			}
			if exists {
				return ErrChanged
			}
			return ErrNoSubscription
		}
		return s.audit(ctx, tx, a)
	})
}

// UpdateRuntimeSealed replaces a runtime subscription's spec and its
// sealed part (the secret, URL and headers), if still at revision
// expected.
func (s *Store) UpdateRuntimeSealed(ctx context.Context, id string, expected int64, spec []byte, sealed string, a AuditRow) error {
	return s.changeRuntime(ctx, a, id, expected, `UPDATE {{schema}}.runtime_subscriptions SET spec = $3, secret = $5, rev = $2, updated_at = now()
		WHERE id = $1 AND deleted_at IS NULL AND rev = $4`, spec, sealed)
}

// ErrChanged: the runtime subscription changed since it was read.
var ErrChanged = errors.New("the subscription was changed meanwhile")

// nextRev takes the next revision; the row stays locked until the
// transaction ends, so revisions commit in order.
func (s *Store) nextRev(ctx context.Context, tx pgx.Tx) (int64, error) {
	var rev int64
	if err := tx.QueryRow(ctx, s.q(`UPDATE {{schema}}.runtime_meta SET rev = rev + 1 RETURNING rev`)).Scan(&rev); err != nil {
		return 0, fmt.Errorf("take a revision: %w", err)
	}
	return rev, nil
}
