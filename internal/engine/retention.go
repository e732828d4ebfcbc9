package engine

import (
	"context"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
)

// DefaultRetentionInterval is how often old history is pruned.
const DefaultRetentionInterval = time.Hour

// runRetention deletes history older than journal.retention, in small
// batches (short transactions, a pause between them) so deliveries never
// wait on it. Every instance may run it: batches of different instances
// simply delete different rows.
func (e *Engine) runRetention(ctx context.Context, interval time.Duration) error {
	first := time.NewTimer(time.Minute)
	if interval < time.Minute {
		first.Reset(interval)
	}
	defer first.Stop()
	select {
	case <-ctx.Done():
		return nil
	case <-first.C:
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		e.prune(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// prune runs retention steps until nothing old is left.
func (e *Engine) prune(ctx context.Context) journal.Pruned {
	cutoff := time.Now().Add(-e.cfg.Journal.Retention)
	var total journal.Pruned
	start := time.Now()
	for ctx.Err() == nil {
		p, err := e.journal.PruneStep(ctx, cutoff, journal.PruneBatch)
		if err != nil {
			if ctx.Err() == nil {
				e.log.Warn("retention: pruning old history failed; retrying at the next run", "err", err)
			}
			break
		}
		total.Deliveries += p.Deliveries
		total.Events += p.Events
		total.Other += p.Other
		if p.Deliveries < journal.PruneBatch {
			break
		}
		select { // let deliveries have the journal between batches
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	if total.Deliveries+total.Events+total.Other > 0 {
		e.log.Info("retention: pruned old history", "deliveries", total.Deliveries, "events", total.Events, "other_rows", total.Other,
			"older_than", cutoff.UTC().Format(time.RFC3339), "took", time.Since(start).Round(time.Millisecond).String())
	}
	return total
}
