package journal

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dzdesk/dzhook/internal/pgtest"
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
		`VACUUM ANALYZE {{schema}}.deliveries`,
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
		p := explain(t, s, c.name, c.sql, c.args...)
		if strings.Contains(p, "Seq Scan on deliveries") || strings.Contains(p, "deliveries_sub_history") || !strings.Contains(p, "deliveries_held") {
			t.Errorf("%s does not read the unfinished deliveries through their indexes:\n%s", c.name, p)
		}
	}
	// The failed deliveries, kept for the retention period, are counted
	// from deliveries_failed alone (its predicate leaves test sends
	// out): "NOT test" and min(next_attempt_at) read each one's row in
	// the table at every poll of GET /v1/subscriptions. RetryFailed
	// reads the same rows through it.
	for _, c := range []struct {
		name, sql, want string
		args            []any
	}{
		{"Backlogs", backlogsSQL, "Index Only Scan using deliveries_failed", nil},
		{"RetryFailed", retryFailedSQL, "using deliveries_failed", []any{"erp", nil, nil, 30.0, "self"}},
	} {
		if p := explain(t, s, c.name, c.sql, c.args...); !strings.Contains(p, c.want) {
			t.Errorf("%s does not read the failed deliveries from deliveries_failed (%s):\n%s", c.name, c.want, p)
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
	if p := explain(t, s, "the blocked keys' count", blockedKeysSQL); strings.Contains(p, "Seq Scan on deliveries") || strings.Contains(p, "history") || strings.Contains(p, "Hash") ||
		!strings.Contains(p, "using deliveries_order on deliveries x") {
		t.Errorf("the blocked keys' count does not read the unfinished deliveries through their indexes:\n%s", p)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	page, after := time.Now(), "dlv_9"
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		for _, c := range []struct {
			name  string
			f     DeliveryFilter
			curAt *time.Time
			curID *string
		}{
			{"one subscription's key", DeliveryFilter{Subscription: "erp", OrderingKey: "req_7", Limit: 50}, nil, nil},
			{"a key of every subscription", DeliveryFilter{Subscriptions: []string{"erp", "crm"}, OrderingKey: "req_7", Limit: 50}, nil, nil},
			{"a key's pending deliveries, a page on", DeliveryFilter{Subscription: "erp", State: Pending, OrderingKey: "req_7", Limit: 50}, &page, &after},
		} {
			plan := explainListing(t, conn.Conn(), s, mode, c.f, c.curAt, c.curID)
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

// explain returns the plan of sql (the journal's, with its schema) for
// args, one line after another; name says which in a failure.
func explain(t *testing.T, s *Store, name, sql string, args ...any) string {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), "EXPLAIN (COSTS OFF) "+s.q(sql), args...)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return strings.Join(plan, "\n")
}

// explainListing returns the plan of ListDeliveries' statement for f,
// prepared on conn as pgx prepares it and planned as mode says
// (plan_cache_mode: force_generic_plan is the plan a prepared statement
// may come to after five runs).
func explainListing(t *testing.T, conn *pgx.Conn, s *Store, mode string, f DeliveryFilter, curAt *time.Time, curID *string) []string {
	t.Helper()
	ctx := context.Background()
	sql, args, err := listDeliveriesQuery(f, curAt, curID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Prepare(ctx, "explained_listing", s.q(sql)); err != nil {
		t.Fatal(err)
	}
	defer func() {
		// Through pgx, which knows its prepared statements by name.
		_ = conn.Deallocate(ctx, "explained_listing")
		_, _ = conn.Exec(ctx, "RESET plan_cache_mode")
	}()
	if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode); err != nil {
		t.Fatal(err)
	}
	params := make([]string, len(args))
	for i := range args {
		params[i] = "$" + strconv.Itoa(i+1)
	}
	// EXECUTE takes no parameters of the extended protocol: pgx writes
	// the arguments in (the simple protocol).
	rows, err := conn.Query(ctx, "EXPLAIN (COSTS OFF) EXECUTE explained_listing("+strings.Join(params, ", ")+")",
		append([]any{pgx.QueryExecModeSimpleProtocol}, args...)...)
	if err != nil {
		t.Fatalf("%+v (%s): %v", f, mode, err)
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%+v (%s): %v", f, mode, err)
	}
	return plan
}

// listingJournal fills s with the history ListDeliveries' plan tests read:
// 20,000 deliveries of each of two subscriptions over 20,000 seconds, a
// few of them pending, failed, skipped or cancelled, a few of a rare event
// type, and an operator's failed test sends; vacuumed and analyzed.
func listingJournal(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	for _, q := range []string{
		`INSERT INTO {{schema}}.events (id, type, body, occurred_at)
		   SELECT 'whk_' || lpad(i::text, 26, '0'), 'request.created', '\x00', now() FROM generate_series(1, 20000) i`,
		`INSERT INTO {{schema}}.deliveries (id, event_id, subscription_id, event_type, state, attempts, test, created_at, updated_at)
		   SELECT 'dlv_' || lpad(i::text, 26, '0') || '_' || sub, 'whk_' || lpad(i::text, 26, '0'), sub,
		          CASE WHEN i % 997 = 0 THEN 'sla.breached' ELSE 'request.created' END,
		          CASE i % 1000 WHEN 0 THEN 'pending' WHEN 1 THEN 'cancelled' WHEN 2 THEN 'skipped' WHEN 3 THEN 'failed' ELSE 'delivered' END,
		          1, i % 5000 = 3, now() - make_interval(secs => 20000 - i), now()
		     FROM generate_series(1, 20000) i, (VALUES ('erp'), ('crm')) v(sub)`,
		`VACUUM ANALYZE {{schema}}.deliveries`,
	} {
		if _, err := s.pool.Exec(ctx, s.q(q)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestListingPlansAreBoundedByTheirFilters: each filter of the history
// (ListDeliveries) bounds the index scan of each subscription's rows, in
// the plan made for its values and in the generic plan a prepared
// statement comes to (pgx prepares it once per connection; PostgreSQL
// may plan it generically after five runs). Written as "$2 IS NULL OR
// x.state = $2", the generic plan was bounded by none of them, and read
// every subscription's whole history for the last hour (found by a
// review: 0.2–0.9 s instead of 5 ms on a million deliveries). A status of
// failed, skipped or cancelled is read from deliveries_state_history,
// not picked out of the history; one subscription is read without the
// skip scan of every subscription's (its estimate made the statement
// costly enough for JIT compilation: 415 ms instead of 7).
func TestListingPlansAreBoundedByTheirFilters(t *testing.T) {
	s, _ := newStore(t)
	listingJournal(t, s)
	ctx := context.Background()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	hour, page, after := time.Now().Add(-time.Hour), time.Now().Add(-2*time.Hour), "dlv_9"
	both := []string{"erp", "crm"}
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		for _, c := range []struct {
			name  string
			f     DeliveryFilter
			curAt *time.Time
			curID *string
			cond  string // in the Index Cond of the subscriptions' rows
			index string
		}{
			{"the last hour of every subscription", DeliveryFilter{Subscriptions: both, Since: &hour, Limit: 50}, nil, nil, "created_at >= ", "deliveries_sub_history"},
			{"the last hour of one subscription", DeliveryFilter{Subscription: "erp", Since: &hour, Limit: 50}, nil, nil, "created_at >= ", "deliveries_sub_history"},
			{"until an hour ago, every subscription", DeliveryFilter{Subscriptions: both, Until: &hour, Limit: 50}, nil, nil, "created_at < ", "deliveries_sub_history"},
			{"a page on, every subscription", DeliveryFilter{Subscriptions: both, Limit: 50}, &page, &after, "ROW(created_at, id) < ", "deliveries_sub_history"},
			{"cancelled, every subscription", DeliveryFilter{Subscriptions: both, State: Cancelled, Limit: 50}, nil, nil, "state = 'cancelled'", "deliveries_state_history"},
			{"skipped, one subscription", DeliveryFilter{Subscription: "crm", State: Skipped, Limit: 50}, nil, nil, "state = 'skipped'", "deliveries_state_history"},
			{"failed, every subscription", DeliveryFilter{Subscriptions: both, State: Failed, Limit: 50}, nil, nil, "state = 'failed'", "deliveries_state_history"},
		} {
			plan := explainListing(t, conn.Conn(), s, mode, c.f, c.curAt, c.curID)
			p := strings.Join(plan, "\n")
			bounded := slices.ContainsFunc(plan, func(l string) bool { return strings.Contains(l, "Index Cond: ") && strings.Contains(l, c.cond) })
			if !bounded || !strings.Contains(p, "using "+c.index+" on deliveries x") || strings.Contains(p, "Seq Scan on deliveries") {
				t.Errorf("%s (%s): not read from %s bounded by %q:\n%s", c.name, mode, c.index, c.cond, p)
			}
			if c.f.Subscription != "" && strings.Contains(p, "Recursive Union") {
				t.Errorf("%s (%s): one subscription is read with the skip scan of every subscription:\n%s", c.name, mode, p)
			}
		}
	}
}

// TestListingPlanSurvivesARareFilter: on one connection, a listing of a
// rare event type (the dashboard's filter, polled every 3 s) six times,
// then the last hour's: the last hour's prepared statement is still
// planned bounded by its time (in a statement shared by every filter,
// the rare filter's costly runs made PostgreSQL plan it generically, and
// the last hour read every subscription's whole history on that
// connection from then on).
func TestListingPlanSurvivesARareFilter(t *testing.T) {
	db := pgtest.NewDB(t)
	s := newStoreOn(t, db.DSN, 1) // one connection: every listing on it
	listingJournal(t, s)
	ctx := context.Background()
	rare := DeliveryFilter{Subscriptions: []string{"erp", "crm"}, Event: "sla.breached", Limit: 50}
	for range 6 {
		if _, _, err := s.ListDeliveries(ctx, rare); err != nil {
			t.Fatal(err)
		}
	}
	hour := time.Now().Add(-time.Hour)
	cheap := DeliveryFilter{Subscriptions: []string{"erp", "crm"}, Since: &hour, Limit: 50}
	for range 6 {
		if _, _, err := s.ListDeliveries(ctx, cheap); err != nil {
			t.Fatal(err)
		}
	}
	sql, args, err := listDeliveriesQuery(cheap, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var name string
	var generic, custom int
	if err := conn.QueryRow(ctx, `SELECT name, generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1`, s.q(sql)).Scan(&name, &generic, &custom); err != nil {
		t.Fatalf("the last hour's listing is not prepared on the connection: %v", err)
	}
	params := make([]string, len(args))
	for i := range args {
		params[i] = "$" + strconv.Itoa(i+1)
	}
	rows, err := conn.Query(ctx, "EXPLAIN (COSTS OFF) EXECUTE "+pgx.Identifier{name}.Sanitize()+"("+strings.Join(params, ", ")+")",
		append([]any{pgx.QueryExecModeSimpleProtocol}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(plan, func(l string) bool {
		return strings.Contains(l, "Index Cond: ") && strings.Contains(l, "created_at >= ")
	}) {
		t.Errorf("after a rare filter's listings, the last hour's is not bounded by its time (generic plans %d, custom %d):\n%s",
			generic, custom, strings.Join(plan, "\n"))
	}
}
