package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
)

// orderingKeys is how many requests the ordering workload's updates
// spread over: the distinct keys of ordering: entity.
const orderingKeys = 1000

// orderingRun is one catch-up of the ordering workload.
type orderingRun struct {
	mode       string
	deliveries int
	took       time.Duration
	cpu        float64 // dzhook's CPU seconds
	misordered int     // arrivals before a later delivery of their request
	journal    journalWrites
}

func (r orderingRun) rate() float64 { return float64(r.deliveries) / r.took.Seconds() }

// journalWrites are the rows written to the journal's deliveries table
// during a run (pg_stat_user_tables): on the fast path a delivery is one
// insert with its outcome; a delivery that went through the journal
// (spilled, waiting for its key there) is also updated when claimed and
// when its outcome is written.
type journalWrites struct {
	inserts, updates int64
	// claimed: deliveries the scheduler took from the journal; claims:
	// the claims that took at least one (distinct claim tokens).
	claimed, claims int64
}

// ordering runs the same catch-up twice, with ordering: none and then
// ordering: entity: 1,000 requests created, then updates spread at random
// over them (100 per transaction, each a request.updated), all committed
// before dzhook starts. Deliveries/s of each, and entity's share of none's.
func (b *bench) ordering(ctx context.Context) error {
	updates := b.rows / 2 / 100 * 100 // whole 100-row transactions
	var runs []orderingRun
	for _, mode := range []string{"none", "entity"} {
		r, err := b.orderingOnce(ctx, mode, updates)
		if err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		runs = append(runs, r)
	}
	label := fmt.Sprintf("%d keys x %d updates", orderingKeys, updates)
	for _, r := range runs {
		b.add(Result{Scenario: "ordering", Metric: fmt.Sprintf("%s, %s: deliveries", r.mode, label), Value: r.rate(), Unit: "deliveries/s",
			Note: fmt.Sprintf("%d deliveries in %.1f s", r.deliveries, r.took.Seconds())})
	}
	none, entity := runs[0], runs[1]
	b.goal("ordering", "entity / none deliveries/s", entity.rate()/none.rate()*100, "%", 80, true, "")
	b.add(Result{Scenario: "ordering", Metric: "none: arrivals out of their request's commit order", Value: float64(none.misordered), Unit: "deliveries"})
	b.goal("ordering", "entity: arrivals out of their request's commit order", float64(entity.misordered), "deliveries", 1, false, "")
	for _, r := range runs {
		b.add(Result{Scenario: "ordering", Metric: r.mode + ": CPU per 10,000 deliveries", Value: r.cpu / float64(r.deliveries) * 10000, Unit: "s"})
		b.add(Result{Scenario: "ordering", Metric: r.mode + ": journal row updates per delivery", Value: float64(r.journal.updates) / float64(r.deliveries), Unit: "updates",
			Note: fmt.Sprintf("deliveries table: %d inserts, %d updates", r.journal.inserts, r.journal.updates)})
		b.add(Result{Scenario: "ordering", Metric: r.mode + ": deliveries claimed from the journal", Value: float64(r.journal.claimed) / float64(r.deliveries) * 100, Unit: "%",
			Note: fmt.Sprintf("%d in %d claims", r.journal.claimed, r.journal.claims)})
	}
	// A backlog in the journal, after a pause.
	n := b.rows / 10
	rate, took, err := b.orderingDrain(ctx, n)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	b.add(Result{Scenario: "ordering", Metric: "subscription, resumed after a pause: backlog drained", Value: rate, Unit: "deliveries/s",
		Note: fmt.Sprintf("%d deliveries held in the journal, drained in %.1f s", n, took.Seconds())})
	return nil
}

// orderingDrain measures how fast an ordered subscription's backlog in
// the journal drains: a subscription with ordering: subscription (one
// key, one delivery at a time) is paused through the admin API while n
// request creations are committed, so they wait in the journal, held;
// then resumed. Deliveries/s from the resume to the last first arrival.
// Each delivery of the key can start only once the one before it
// finished: from the journal, a claim takes the key's head and the run
// behind it (journal.Store.Claim).
func (b *bench) orderingDrain(ctx context.Context, n int) (float64, time.Duration, error) {
	db, dsn, err := b.newDB(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer b.cluster.DropDatabase(ctx, db)
	rc, err := newReceiver()
	if err != nil {
		return 0, 0, err
	}
	defer rc.close()
	admin, err := freeAddr()
	if err != nil {
		return 0, 0, err
	}
	config, err := b.writeConfig(dsn, []subSpec{{id: "bench", path: "/bench", ordering: "subscription", holdPaused: true}}, rc.url, admin)
	if err != nil {
		return 0, 0, err
	}
	if err := b.setup(config); err != nil {
		return 0, 0, err
	}
	d, err := b.start(config)
	if err != nil {
		return 0, 0, err
	}
	defer d.stop()
	adm := &adminAPI{base: "http://" + admin}
	if err := adm.waitSubscription(ctx, "bench", 30*time.Second); err != nil {
		return 0, 0, err
	}
	if code, raw, err := adm.call(ctx, http.MethodPost, "/v1/subscriptions/bench/pause", ""); err != nil || code != http.StatusOK {
		return 0, 0, fmt.Errorf("pause: %d %s %v", code, raw, err)
	}
	if err := b.load(ctx, db, 0, n, 100); err != nil {
		return 0, 0, err
	}
	if err := waitHeld(ctx, b.cluster.DSN(db), n); err != nil {
		return 0, 0, err
	}
	reached := rc.expect(n)
	start := time.Now()
	if code, raw, err := adm.call(ctx, http.MethodPost, "/v1/subscriptions/bench/resume", ""); err != nil || code != http.StatusOK {
		return 0, 0, fmt.Errorf("resume: %d %s %v", code, raw, err)
	}
	select {
	case <-reached:
	case err := <-d.done:
		return 0, 0, fmt.Errorf("dzhook exited: %v", err)
	case <-time.After(5 * time.Minute):
		first, _ := rc.arrivals()
		return 0, 0, fmt.Errorf("the backlog did not drain in 5 minutes (%d of %d)", len(first), n)
	}
	took := time.Since(start)
	return float64(n) / took.Seconds(), took, nil
}

// waitHeld waits until the journal holds n held deliveries.
func waitHeld(ctx context.Context, dsn string, n int) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(60 * time.Second)
	var got int
	for time.Now().Before(deadline) {
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'held'`).Scan(&got); err != nil {
			return err
		}
		if got >= n {
			return nil
		}
		time.Sleep(100 * time.Millisecond) // polled: the journal has no notification for this
	}
	var states string
	_ = conn.QueryRow(ctx, `SELECT coalesce(string_agg(state || ': ' || n, ', '), 'none') FROM (SELECT state, count(*) n FROM dzhook.deliveries GROUP BY 1) s`).Scan(&states)
	return fmt.Errorf("the journal holds %d of %d deliveries held after 60 s (deliveries: %s)", got, n, states)
}

func (b *bench) orderingOnce(ctx context.Context, mode string, updates int) (orderingRun, error) {
	run := orderingRun{mode: mode, deliveries: orderingKeys + updates}
	w, cleanup, err := b.prepare(ctx, []subSpec{{id: "bench", path: "/bench", events: []string{"request.created", "request.updated"}, ordering: mode}})
	if err != nil {
		return run, err
	}
	defer cleanup()
	if err := b.loadOrdering(ctx, w.db, updates); err != nil {
		return run, err
	}
	reached := w.rc.expectOrdered(run.deliveries)
	start := time.Now()
	d, err := b.start(w.config)
	if err != nil {
		return run, err
	}
	select {
	case <-reached:
	case err := <-d.done:
		return run, fmt.Errorf("dzhook exited: %v", err)
	case <-time.After(5 * time.Minute):
		first, _ := w.rc.arrivals()
		_ = d.stop()
		return run, fmt.Errorf("catch-up did not finish in 5 minutes (%d of %d)", len(first), run.deliveries)
	}
	run.took = time.Since(start)
	run.cpu, _ = d.usage()
	run.misordered = w.rc.misordered()
	if err := d.stop(); err != nil {
		return run, err
	}
	run.journal = b.journalWrites(ctx, w.db)
	return run, nil
}

// loadOrdering creates the workload's requests (titled "#0") and commits
// updates of them, 100 per transaction, each of a request drawn at random
// (the same sequence every run) and titled "#<n>", n counting the updates:
// the receiver reads n to check each request's order.
func (b *bench) loadOrdering(ctx context.Context, db string, updates int) error {
	return b.cluster.Exec(ctx, db, "SET synchronous_commit = off",
		fmt.Sprintf(`INSERT INTO requests (id, title, description, priority, requester_id)
			SELECT g, '#0', 'It shows error E-42 and the tray light blinks.', 'high', 1 FROM generate_series(1, %d) g`, orderingKeys),
		// The id is drawn before the UPDATE: random() in its WHERE clause
		// would be drawn again for every row.
		fmt.Sprintf(`DO $$ DECLARE n int := 0; k int; BEGIN
			PERFORM setseed(0.42);
			FOR t IN 1..%d LOOP
				FOR j IN 1..100 LOOP
					n := n + 1;
					k := 1 + floor(random() * %d)::int;
					UPDATE requests SET title = '#' || n WHERE id = k;
				END LOOP;
				COMMIT;
			END LOOP; END $$`, updates/100, orderingKeys))
}

// journalWrites reads the rows written to the journal's deliveries table,
// once dzhook's sessions have ended (they report their statistics then).
func (b *bench) journalWrites(ctx context.Context, db string) journalWrites {
	var jw journalWrites
	conn, err := pgx.Connect(ctx, b.cluster.DSN(db))
	if err != nil {
		return journalWrites{-1, -1, -1, -1}
	}
	defer conn.Close(ctx)
	for range 20 {
		var sessions int
		_ = conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&sessions)
		if sessions == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, _ = conn.Exec(ctx, `SELECT pg_stat_clear_snapshot()`)
	if err := conn.QueryRow(ctx, `SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE schemaname = 'dzhook' AND relname = 'deliveries'`).
		Scan(&jw.inserts, &jw.updates); err != nil {
		return journalWrites{-1, -1, -1, -1}
	}
	if err := conn.QueryRow(ctx, `SELECT count(claim), count(DISTINCT claim) FROM dzhook.deliveries`).Scan(&jw.claimed, &jw.claims); err != nil {
		jw.claimed, jw.claims = -1, -1
	}
	return jw
}
