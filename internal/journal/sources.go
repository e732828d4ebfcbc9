package journal

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/dzdesk/dzhook/internal/ids"
)

// Source is the slot that feeds the journal from one source database.
type Source struct {
	SystemID, Database, Slot string
	RegisteredAt             time.Time
}

// Sources returns the source registered for (systemID, database), and
// whether there is one.
func (s *Store) Source(ctx context.Context, systemID, database string) (Source, bool, error) {
	src := Source{SystemID: systemID, Database: database}
	err := s.pool.QueryRow(ctx, s.q(`SELECT slot, registered_at FROM {{schema}}.sources WHERE system_id = $1 AND database = $2`),
		systemID, database).Scan(&src.Slot, &src.RegisteredAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return src, false, nil
	}
	if err != nil {
		return src, false, fmt.Errorf("read the journal's source: %w", err)
	}
	return src, true, nil
}

// RegisterSource records slot as the one feeding the journal from
// (systemID, database), replacing the slot registered before (the caller
// checked that it no longer exists). It returns false when another
// process registered a different slot meanwhile.
func (s *Store) RegisterSource(ctx context.Context, src Source, replacing string) (bool, error) {
	tag, err := s.pool.Exec(ctx, s.q(`INSERT INTO {{schema}}.sources AS s (system_id, database, slot) VALUES ($1, $2, $3)
		ON CONFLICT (system_id, database) DO UPDATE SET slot = EXCLUDED.slot,
			registered_at = CASE WHEN s.slot = EXCLUDED.slot THEN s.registered_at ELSE now() END
		WHERE s.slot = $4 OR s.slot = EXCLUDED.slot`), src.SystemID, src.Database, src.Slot, replacing)
	if err != nil {
		return false, fmt.Errorf("register the journal's source: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// Gap is a stretch of WAL the slot never read: from the journal's
// checkpoint to where the slot starts.
type Gap struct {
	ID         int64
	Slot       string
	SystemID   string
	From, To   pglogrepl.LSN
	DetectedAt time.Time
	AcceptedAt *time.Time
	AcceptedBy string
}

// RecordGap keeps g (once) as detected and not accepted, with notify (when
// not nil) the first time: it reports whether g is new.
func (s *Store) RecordGap(ctx context.Context, g Gap, notify *NotificationRow) (bool, error) {
	var isNew bool
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, s.q(`INSERT INTO {{schema}}.gaps (slot, system_id, from_lsn, to_lsn) VALUES ($1, $2, $3, $4)
			ON CONFLICT (slot, system_id, from_lsn, to_lsn) DO NOTHING`), g.Slot, g.SystemID, int64(g.From), int64(g.To))
		if err != nil {
			return err
		}
		isNew = tag.RowsAffected() == 1
		if isNew && notify != nil {
			_, err = tx.Exec(ctx, s.q(`INSERT INTO {{schema}}.notifications (subscription_id, kind, body) VALUES ($1, $2, $3)`),
				notify.SubscriptionID, notify.Kind, notify.Body)
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("record the gap: %w", err)
	}
	return isNew, nil
}

// AcceptGap records that an operator (by) accepted g, and moves the
// slot's checkpoint to its end, on timeline (the server's, where the
// slot is; 0: unknown), in one transaction: from then on the slot's
// start is the journal's position.
func (s *Store) AcceptGap(ctx context.Context, g Gap, timeline int32, by string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, s.q(`INSERT INTO {{schema}}.gaps AS g (slot, system_id, from_lsn, to_lsn, accepted_at, accepted_by) VALUES ($1, $2, $3, $4, now(), $5)
			ON CONFLICT (slot, system_id, from_lsn, to_lsn) DO UPDATE SET accepted_at = coalesce(g.accepted_at, now()), accepted_by = coalesce(g.accepted_by, EXCLUDED.accepted_by)`),
			g.Slot, g.SystemID, int64(g.From), int64(g.To), by); err != nil {
			return fmt.Errorf("record the accepted gap: %w", err)
		}
		return s.advanceCheckpoint(ctx, tx, g.Slot, g.SystemID, timeline, g.To)
	})
}

// AdoptSlotPosition moves the slot's checkpoint to lsn, on timeline (the
// server's, where the slot is; 0: unknown), without recording a gap: the
// slot's position is trusted as it is (the first start of a journal that
// predates source registration, whose slot may have been acknowledged
// past the checkpoint while idle).
func (s *Store) AdoptSlotPosition(ctx context.Context, slot, systemID string, timeline int32, lsn pglogrepl.LSN) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return s.advanceCheckpoint(ctx, tx, slot, systemID, timeline, lsn)
	})
}

// advanceCheckpoint moves the checkpoint to a slot's position lsn: it
// ends there, and covers the commits before it (lsn-1), not one that
// starts at it, which the slot still sends (Writer.Idle says why). The
// checkpoint keeps the timeline of the position it keeps.
func (s *Store) advanceCheckpoint(ctx context.Context, tx pgx.Tx, slot, systemID string, timeline int32, lsn pglogrepl.LSN) error {
	_, err := tx.Exec(ctx, s.q(`INSERT INTO {{schema}}.checkpoints AS c (slot, lsn, end_lsn, system_id, timeline, updated_at) VALUES ($1, $2, $3, $4, $5, now())
		ON CONFLICT (slot) DO UPDATE SET lsn = greatest(c.lsn, EXCLUDED.lsn), end_lsn = greatest(c.end_lsn, EXCLUDED.end_lsn),
			timeline = CASE WHEN c.lsn > EXCLUDED.lsn THEN c.timeline ELSE EXCLUDED.timeline END,
			rewound_timeline = CASE WHEN c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id THEN c.rewound_timeline END,
			rewound_at = CASE WHEN c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id THEN c.rewound_at END,
			rewinds_timeline = CASE WHEN c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id THEN c.rewinds_timeline END,
			rewinds_at = CASE WHEN c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id THEN c.rewinds_at END,
			system_id = EXCLUDED.system_id, updated_at = now()`),
		slot, int64(max(lsn, 1)-1), int64(lsn), systemID, nullTimeline(timeline))
	if err != nil {
		return fmt.Errorf("move the checkpoint: %w", err)
	}
	return nil
}

// Gaps lists the gaps recorded for slot, newest first.
func (s *Store) Gaps(ctx context.Context, slot string) ([]Gap, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT id, slot, system_id, from_lsn, to_lsn, detected_at, accepted_at, coalesce(accepted_by, '')
		FROM {{schema}}.gaps WHERE slot = $1 ORDER BY id DESC`), slot)
	if err != nil {
		return nil, fmt.Errorf("list gaps: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Gap, error) {
		var g Gap
		var from, to int64
		err := r.Scan(&g.ID, &g.Slot, &g.SystemID, &from, &to, &g.DetectedAt, &g.AcceptedAt, &g.AcceptedBy)
		g.From, g.To = pglogrepl.LSN(from), pglogrepl.LSN(to)
		return g, err
	})
}

// Schema is the journal's schema name, as configured.
func (s *Store) Schema() string { return s.raw }

// keptMappings is how many mappings a slot keeps (RecordMapping).
const keptMappings = 3

// RecordMapping records that slot's changes are mapped with config (a
// mapping.Config as JSON) from now on, unless it is the newest recorded
// already, and forgets all but the newest keptMappings.
func (s *Store) RecordMapping(ctx context.Context, slot string, config []byte) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, s.q(`INSERT INTO {{schema}}.mappings (slot, config)
			SELECT $1, $2::jsonb WHERE NOT EXISTS (
				SELECT 1 FROM (SELECT config FROM {{schema}}.mappings WHERE slot = $1 ORDER BY id DESC LIMIT 1) newest
				 WHERE newest.config = $2::jsonb)`), slot, config); err != nil {
			return fmt.Errorf("record the mapping: %w", err)
		}
		if _, err := tx.Exec(ctx, s.q(`DELETE FROM {{schema}}.mappings WHERE slot = $1 AND id NOT IN (
				SELECT id FROM {{schema}}.mappings WHERE slot = $1 ORDER BY id DESC LIMIT $2)`), slot, keptMappings); err != nil {
			return fmt.Errorf("forget older mappings: %w", err)
		}
		return nil
	})
}

// RecentMappings returns the mappings slot's changes were last mapped
// with (RecordMapping), the newest first.
func (s *Store) RecentMappings(ctx context.Context, slot string) ([][]byte, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT config::text FROM {{schema}}.mappings WHERE slot = $1 ORDER BY id DESC LIMIT $2`), slot, keptMappings)
	if err != nil {
		return nil, fmt.Errorf("read the recorded mappings: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]byte, error) {
		var b string
		err := r.Scan(&b)
		return []byte(b), err
	})
}

// JournaledFrom reports whether the journal holds an event of a
// transaction of source src committed at or after lsn. An event's id is
// its position (ids.NewID), so those of src at or after lsn are one range
// of the primary key; an SLA's or a test's id (a hash) that falls in it
// by chance is told apart by its commit_lsn (NULL).
func (s *Store) JournaledFrom(ctx context.Context, src ids.Source, lsn pglogrepl.LSN) (bool, error) {
	return s.journaledFrom(ctx, s.pool, src, lsn)
}

func (s *Store) journaledFrom(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, src ids.Source, lsn pglogrepl.LSN) (bool, error) {
	var found bool
	err := q.QueryRow(ctx, s.q(`SELECT EXISTS (SELECT 1 FROM {{schema}}.events WHERE id >= $1 AND id <= $2 AND commit_lsn >= $3)`),
		src.NewID(lsn, 0, 0), src.NewID(pglogrepl.LSN(math.MaxUint64), math.MaxUint32, math.MaxUint8), int64(lsn)).Scan(&found)
	if err != nil {
		return false, fmt.Errorf("look for events past %s: %w", lsn, err)
	}
	return found, nil
}

// RecordFork records that the slot's server, of cluster systemID, moved
// to timeline, which left the timeline read so far at fork and carries
// on everything read (a failover that needed no rewind): a process still
// reading the old timeline (its primary left up behind a partition) is
// then fenced past the fork as after a rewind (Batch.Fence), instead of
// journaling the lost branch's events with the ids the new timeline's
// transactions take, which the journal would then drop as known (found
// by a review). Appended to the rewinds' arrays (the last 16 kept), once.
// It is made with the checkpoint's row locked, as the batches take it,
// and only while the checkpoint carries on too: false when it is past
// the fork on an older timeline (a process on the old primary journaled
// there meanwhile), for the caller to judge the server again. Without a
// checkpoint of the cluster there is nothing to fence: true.
func (s *Store) RecordFork(ctx context.Context, slot, systemID string, timeline int32, fork pglogrepl.LSN) (recorded bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var lsn, end int64
		var system string
		var tli *int32
		err := tx.QueryRow(ctx, s.q(`SELECT lsn, coalesce(end_lsn, lsn), coalesce(system_id, ''), timeline FROM {{schema}}.checkpoints WHERE slot = $1 FOR UPDATE`), slot).Scan(&lsn, &end, &system, &tli)
		if errors.Is(err, pgx.ErrNoRows) || err == nil && system != systemID {
			recorded = true
			return nil
		}
		if err != nil {
			return err
		}
		// Read to the end of its last commit, as the stream judges it
		// (cdc.Resume.readTo): one that ends past the fork is the lost
		// branch's.
		if (tli == nil || *tli < timeline) && pglogrepl.LSN(max(lsn, end)) > fork {
			return nil
		}
		recorded = true
		_, err = tx.Exec(ctx, s.q(`UPDATE {{schema}}.checkpoints SET
				rewinds_timeline = (coalesce(rewinds_timeline, '{}') || $2::integer)[greatest(1, coalesce(array_length(rewinds_timeline, 1), 0) - 14):],
				rewinds_at = (coalesce(rewinds_at, '{}') || $3::bigint)[greatest(1, coalesce(array_length(rewinds_at, 1), 0) - 14):]
			WHERE slot = $1 AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(rewinds_timeline, '{}'), coalesce(rewinds_at, '{}')) AS r (t, a) WHERE t = $2 AND a = $3)`),
			slot, timeline, int64(fork))
		return err
	})
	if err != nil {
		return false, fmt.Errorf("record the fork of timeline %d: %w", timeline, err)
	}
	return recorded, nil
}

// Rewind is what RewindCheckpoint did.
type Rewind int

const (
	// Rewound: the checkpoint moved back to the fork.
	Rewound Rewind = iota
	// RewindChanged: the checkpoint is no longer the one given (another
	// process moved it): judge it again.
	RewindChanged
	// RewindPast: an event was journaled past the fork; the checkpoint
	// stays.
	RewindPast
)

// RewindCheckpoint moves the slot's checkpoint back to fork, on timeline,
// if it is still from and the journal holds no event of src the stream
// read past the fork (JournaledFrom): the server's timeline left from's
// below it, so the new timeline's transactions from the fork on are the
// ones to read. Both are judged with the checkpoint's row locked, which
// every batch of the stream takes first (Batch.Fence): a batch of the old
// primary's process that took the row first is waited for and its
// events seen, and one after that reaches the fork is refused whole
// (ErrTimelineMoved), its process stopping: the move records the fork
// and the new timeline (rewinds_at, rewinds_timeline), appended to the
// rewinds before it (the last 16 kept), so that a process still reading
// a timeline older than the last rewind's is fenced by the rewind that
// left that timeline (version 19 kept the last alone: a second rewind let
// the first one's straggler through). (The batch took the row last, with
// its checkpoint: one whose events were written when the lock was taken
// was not seen, and they landed past the fork after the move; found by a
// review.)
// Changes of the SLA table past the fork journal no event but armed
// timers, for targets the new server may never have had (the timers of
// its own were deleted by that move): the slot's SLA scan is asked for
// again, in the same transaction, and the SLA clock arms every open SLA
// as the new server holds it (and drops what it does not) at this start.
func (s *Store) RewindCheckpoint(ctx context.Context, slot string, from Checkpoint, src ids.Source, fork pglogrepl.LSN, timeline int32) (did Rewind, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var lsn int64
		var system string
		err := tx.QueryRow(ctx, s.q(`SELECT lsn, coalesce(system_id, '') FROM {{schema}}.checkpoints WHERE slot = $1 FOR UPDATE`), slot).Scan(&lsn, &system)
		if errors.Is(err, pgx.ErrNoRows) || err == nil && (pglogrepl.LSN(lsn) != from.LSN || system != from.SystemID) {
			did = RewindChanged
			return nil
		}
		if err != nil {
			return err
		}
		past, err := s.journaledFrom(ctx, tx, src, fork)
		if err != nil {
			return err
		}
		if past {
			did = RewindPast
			return nil
		}
		if _, err := tx.Exec(ctx, s.q(`UPDATE {{schema}}.checkpoints SET lsn = $2, end_lsn = $3, timeline = $4, restored_below = NULL,
				rewound_timeline = $4, rewound_at = $3,
				rewinds_timeline = (coalesce(rewinds_timeline, '{}') || $4::integer)[greatest(1, coalesce(array_length(rewinds_timeline, 1), 0) - 14):],
				rewinds_at = (coalesce(rewinds_at, '{}') || $3::bigint)[greatest(1, coalesce(array_length(rewinds_at, 1), 0) - 14):],
				updated_at = now() WHERE slot = $1`),
			slot, int64(max(fork, 1)-1), int64(fork), nullTimeline(timeline)); err != nil {
			return err
		}
		did = Rewound
		_, err = tx.Exec(ctx, s.q(`DELETE FROM {{schema}}.sla_bootstrap WHERE slot = $1`), slot)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("move the checkpoint back to the fork: %w", err)
	}
	return did, nil
}
