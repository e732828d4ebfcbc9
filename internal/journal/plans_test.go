package journal

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestStateReadsUseTheirIndexes: the statements that run periodically
// over a subscription's unfinished deliveries (the metrics' backlog
// counts every few seconds, a replay's bound at every step, the deleted
// subscriptions' sweep and cancel) read them through the partial indexes
// on state, not through the history the retention period keeps. With
// the states listed with IN they scanned the table, or a subscription's
// whole history (PostgreSQL proves a partial index's predicate from an
// equality, not from an IN list): 56 ms per metrics refresh at 600,000
// rows, 1.4 ms ORed (found by a review, 2026-12-06). The plans are read
// on 40,000 delivered rows and a few unfinished ones, analyzed.
func TestStateReadsUseTheirIndexes(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	for _, q := range []string{
		`INSERT INTO {{schema}}.events (id, type, body, occurred_at)
		   SELECT 'whk_' || lpad(i::text, 26, '0'), 'request.created', '\x00', now() FROM generate_series(1, 20000) i`,
		`INSERT INTO {{schema}}.deliveries (id, event_id, subscription_id, event_type, state, attempts, created_at, updated_at, position)
		   SELECT 'dlv_' || lpad(i::text, 26, '0') || '_' || sub, 'whk_' || lpad(i::text, 26, '0'), sub, 'request.created',
		          CASE WHEN i % 1000 = 0 THEN 'pending' WHEN i % 1000 = 1 THEN 'held' WHEN i % 1000 = 2 THEN 'failed' ELSE 'delivered' END,
		          1, now(), now(), i
		     FROM generate_series(1, 20000) i, (VALUES ('erp'), ('crm')) v(sub)`,
		`ANALYZE {{schema}}.deliveries`,
	} {
		if _, err := s.pool.Exec(ctx, s.q(q)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		sql  string
		args []any
	}{
		{"Backlogs", backlogsSQL, nil},
		{"StepReplay's backlog", replayBacklogSQL, []any{"erp"}},
		{"DeletedRuntime", deletedRuntimeSQL, nil},
		{"a deleted subscription's cancel", cancelSQL, []any{"erp", 30.0}},
	} {
		rows, err := s.pool.Query(ctx, "EXPLAIN (COSTS OFF) "+s.q(c.sql), c.args...)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		p := strings.Join(plan, "\n")
		if strings.Contains(p, "Seq Scan on deliveries") || strings.Contains(p, "deliveries_sub_history") || !strings.Contains(p, "deliveries_held") {
			t.Errorf("%s does not read the unfinished deliveries through their indexes:\n%s", c.name, p)
		}
	}
}

// TestHistoryReadsUseTheirIndexes: the history of one ordering key
// (ListDeliveries with OrderingKey), with or without a subscription,
// takes each subscription's rows of the key from deliveries_key_history
// (or deliveries_order, for its unfinished ones), not from the subscription's whole history (deliveries_sub_history: the
// retention period's rows, read to find a key's few), nor from the
// table. Also as a generic plan, which a prepared statement comes to
// (pgx prepares its statements; PostgreSQL may plan them generically
// after five runs): there a "$10 IS NULL OR" condition cannot use the
// index. So does the count of blocked keys (Backlogs), from the pending
// rows. The plans are read on 40,000 ordered rows of 2,000 keys per
// subscription, analyzed.
func TestHistoryReadsUseTheirIndexes(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	for _, q := range []string{
		`INSERT INTO {{schema}}.events (id, type, body, occurred_at)
		   SELECT 'whk_' || lpad(i::text, 26, '0'), 'request.created', '\x00', now() FROM generate_series(1, 20000) i`,
		`INSERT INTO {{schema}}.deliveries (id, event_id, subscription_id, event_type, state, attempts, created_at, updated_at, ordering_key, position)
		   SELECT 'dlv_' || lpad(i::text, 26, '0') || '_' || sub, 'whk_' || lpad(i::text, 26, '0'), sub, 'request.created',
		          CASE WHEN i % 1000 = 0 THEN 'pending' ELSE 'delivered' END,
		          1, now() - make_interval(secs => 20000 - i), now(), 'req_' || (i % 2000), i
		     FROM generate_series(1, 20000) i, (VALUES ('erp'), ('crm')) v(sub)`,
		`ANALYZE {{schema}}.deliveries`,
	} {
		if _, err := s.pool.Exec(ctx, s.q(q)); err != nil {
			t.Fatal(err)
		}
	}
	// The blocked keys' count reads the pending deliveries and asks
	// deliveries_order whether each is its key's head, one probe each: a
	// hash join read every unfinished ordered delivery.
	rows, err := s.pool.Query(ctx, "EXPLAIN (COSTS OFF) "+s.q(blockedKeysSQL))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if p := strings.Join(plan, "\n"); strings.Contains(p, "Seq Scan on deliveries") || strings.Contains(p, "history") || strings.Contains(p, "Hash") ||
		!strings.Contains(p, "using deliveries_order on deliveries x") {
		t.Errorf("the blocked keys' count does not read the unfinished deliveries through their indexes:\n%s", p)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `PREPARE list_key (text[], text, text, timestamptz, timestamptz, timestamptz, text, int, bool, text) AS `+
		s.q(listDeliveriesSQL(true))); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = conn.Exec(ctx, "DEALLOCATE list_key; RESET plan_cache_mode") }()
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct{ name, args string }{
			{"one subscription's key", `'{erp}', NULL, NULL, NULL, NULL, NULL, NULL, 51, false, 'req_7'`},
			{"a key of every subscription", `'{erp,crm}', NULL, NULL, NULL, NULL, NULL, NULL, 51, true, 'req_7'`},
			{"a key's pending deliveries, a page on", `'{erp}', 'pending', NULL, NULL, NULL, now(), 'dlv_9', 51, false, 'req_7'`},
		} {
			rows, err := conn.Query(ctx, "EXPLAIN (COSTS OFF) EXECUTE list_key("+c.args+")")
			if err != nil {
				t.Fatalf("%s (%s): %v", c.name, mode, err)
			}
			plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatalf("%s (%s): %v", c.name, mode, err)
			}
			// The key in an index's condition: deliveries_key_history,
			// or deliveries_order for unfinished states.
			byKey := slices.ContainsFunc(plan, func(l string) bool {
				return strings.Contains(l, "Index Cond: ") && strings.Contains(l, "ordering_key = ")
			})
			if p := strings.Join(plan, "\n"); strings.Contains(p, "Seq Scan on deliveries") || !byKey {
				t.Errorf("%s (%s) does not read the key's rows through an index on the key:\n%s", c.name, mode, p)
			}
		}
	}
}
