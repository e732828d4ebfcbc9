package journal

import (
	"context"
	"fmt"
	"time"
)

// PruneBatch is how many deliveries one retention step deletes: small
// enough that each step's transaction is short and deliveries go on.
const PruneBatch = 5000

// Pruned counts what a retention step deleted.
type Pruned struct {
	Deliveries, Events, Other int
}

// PruneStep deletes up to limit finished deliveries (delivered, failed,
// skipped) created before cutoff, with their attempts, and the events
// left without deliveries. Pending and held deliveries are never pruned,
// whatever their age. Call it until it deletes fewer than limit.
func (s *Store) PruneStep(ctx context.Context, cutoff time.Time, limit int) (Pruned, error) {
	var p Pruned
	err := s.pool.QueryRow(ctx, s.q(`
		WITH d AS (
			DELETE FROM {{schema}}.deliveries WHERE id IN (
				SELECT id FROM {{schema}}.deliveries
				 WHERE created_at < $1 AND state IN ('delivered', 'failed', 'skipped') LIMIT $2)
			RETURNING id, event_id),
		a AS (DELETE FROM {{schema}}.attempts WHERE delivery_id IN (SELECT id FROM d)),
		e AS (
			-- An event goes with its last delivery: its deliveries' ids are
			-- dlv_ + the event's part + a tag, a range of the primary key.
			DELETE FROM {{schema}}.events ev WHERE ev.id IN (SELECT DISTINCT event_id FROM d)
			   AND NOT EXISTS (SELECT 1 FROM {{schema}}.deliveries x
			                    WHERE x.id >= 'dlv_' || substr(ev.id, 5) AND x.id < 'dlv_' || substr(ev.id, 5) || '~'
			                      AND x.id NOT IN (SELECT id FROM d))
			RETURNING 1)
		SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM e)`), cutoff, limit).Scan(&p.Deliveries, &p.Events)
	if err != nil {
		return p, fmt.Errorf("prune deliveries: %w", err)
	}
	if p.Deliveries < limit {
		// The small tables, once the big ones are done.
		for _, stmt := range []string{
			`DELETE FROM {{schema}}.events ev WHERE ev.created_at < $1 AND NOT EXISTS (SELECT 1 FROM {{schema}}.deliveries x
				WHERE x.id >= 'dlv_' || substr(ev.id, 5) AND x.id < 'dlv_' || substr(ev.id, 5) || '~')
				AND ev.id IN (SELECT id FROM {{schema}}.events WHERE created_at < $1 LIMIT 1000)`,
			`DELETE FROM {{schema}}.sla_timers WHERE fired_at < $1`,
			`DELETE FROM {{schema}}.notifications WHERE sent_at < $1`,
			`DELETE FROM {{schema}}.rejections WHERE created_at < $1`,
			`DELETE FROM {{schema}}.instances WHERE heartbeat_at < $1`,
		} {
			tag, err := s.pool.Exec(ctx, s.q(stmt), cutoff)
			if err != nil {
				return p, fmt.Errorf("prune: %w", err)
			}
			p.Other += int(tag.RowsAffected())
		}
	}
	return p, nil
}
