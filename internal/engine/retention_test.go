package engine

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestRetentionUnderLoad fills the journal with old delivered history
// (DZHOOK_RETENTION_ROWS, 100,000 by default; make chaos: 1,000,000) and
// lets retention prune it while new events are delivered: the history
// goes, in batches, and deliveries never wait for it.
func TestRetentionUnderLoad(t *testing.T) {
	rows := 100_000
	if v, err := strconv.Atoi(os.Getenv("DZHOOK_RETENTION_ROWS")); err == nil && v > 0 {
		rows = v
	}
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := testConfig(t, db, "", sub("crm", rc.URL, "request.created"))
	if _, err := Setup(context.Background(), cfg, SetupOptions{}); err != nil {
		t.Fatal(err)
	}
	fill := time.Now()
	// A statement each: make chaos's million rows took more than the
	// minute an Exec has for all three on a loaded host.
	db.Exec(t, fmt.Sprintf(`INSERT INTO dzhook.events (id, type, body, occurred_at, created_at)
			SELECT 'whk_old' || lpad(g::text, 22, '0'), 'request.created', convert_to(repeat('x', 500), 'UTF8'), now() - interval '40 days', now() - interval '40 days'
			  FROM generate_series(1, %d) g`, rows))
	db.Exec(t, fmt.Sprintf(`INSERT INTO dzhook.deliveries (id, event_id, subscription_id, event_type, state, attempts, created_at, updated_at)
			SELECT 'dlv_old' || lpad(g::text, 22, '0') || '2222222222222', 'whk_old' || lpad(g::text, 22, '0'), 'crm', 'request.created',
			       'delivered', 1, now() - interval '40 days', now() - interval '40 days'
			  FROM generate_series(1, %d) g`, rows))
	db.Exec(t, fmt.Sprintf(`INSERT INTO dzhook.attempts (delivery_id, attempt, at, trigger, status_code, duration_ms)
			SELECT 'dlv_old' || lpad(g::text, 22, '0') || '2222222222222', 1, now() - interval '40 days', 'auto', 200, 1
			  FROM generate_series(1, %d) g`, rows))
	db.Exec(t, `ANALYZE dzhook.deliveries`, `ANALYZE dzhook.events`)
	t.Logf("journal filled with %d old deliveries in %s", rows, time.Since(fill).Round(time.Millisecond))

	ctx, cancel := context.WithCancel(context.Background())
	e, err := New(ctx, cfg, Options{Logger: testutil.Logger(t), Version: "test", PollInterval: 50 * time.Millisecond, RetentionInterval: time.Second})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Deliveries while retention works: commit→received latency, from the
	// first delivery on (the stream's start-up is not retention's).
	conn := db.Connect(t)
	if _, err := conn.Exec(context.Background(), `INSERT INTO requests (title, requester_id) VALUES ('warm-up', 1)`); err != nil {
		t.Fatal(err)
	}
	// The slot was made before the fill: the stream first reads past the
	// fill's WAL (three tables of rows rows, ~1 GB at make chaos's size),
	// which pgoutput decodes and drops, before it reaches the warm-up.
	warm := time.Now()
	rc.Wait(t, 1, 30*time.Second+time.Duration(rows/10_000)*time.Second)
	t.Logf("first delivery %s after the engine started (the stream read past the fill's WAL)", time.Since(warm).Round(time.Millisecond))
	pruneStart := time.Now()
	var lat []time.Duration
	sent := 1
	// sample commits one request and returns its commit→received latency.
	sample := func(title string) time.Duration {
		before := time.Now()
		if _, err := conn.Exec(context.Background(), `INSERT INTO requests (title, requester_id) VALUES ($1, 1)`, title); err != nil {
			t.Fatal(err)
		}
		sent++
		got := rc.Wait(t, sent, 30*time.Second)
		return got[sent-1].At.Sub(before)
	}
	for {
		lat = append(lat, sample("during retention"))
		if queryInt(t, db, `SELECT count(*) FROM (SELECT 1 FROM dzhook.deliveries WHERE id >= 'dlv_old' AND id < 'dlv_olf' LIMIT 1) x`) == 0 {
			break
		}
		if time.Since(pruneStart) > 10*time.Minute {
			t.Fatal("retention did not finish within 10 minutes")
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(pruneStart)
	for _, q := range []string{`SELECT count(*) FROM dzhook.events WHERE id LIKE 'whk_old%'`, `SELECT count(*) FROM dzhook.attempts WHERE delivery_id LIKE 'dlv_old%'`} {
		if n := queryInt(t, db, q); n != 0 {
			t.Errorf("%s = %d after retention", q, n)
		}
	}
	// The last outcomes reach the journal a linger after their receiver
	// had them.
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("the %d deliveries of this test left, and delivered", sent), func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`) == sent
	})
	// The baseline: as many deliveries again (20 to 200), the same way,
	// now that retention has nothing left to delete; whatever else loads
	// the machine (-race, the other packages' tests) weighs on both.
	base := make([]time.Duration, 0, max(20, min(len(lat), 200)))
	for range cap(base) {
		base = append(base, sample("after retention"))
		time.Sleep(5 * time.Millisecond)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	sort.Slice(base, func(i, j int) bool { return base[i] < base[j] })
	p95, p99 := lat[len(lat)*95/100], lat[len(lat)*99/100]
	baseP95 := base[len(base)*95/100]
	t.Logf("retention pruned %d old deliveries (+ attempts, events) in %s while %d events were delivered: latency p50 %s, p95 %s, p99 %s, max %s; without retention: p50 %s, p95 %s",
		rows, took.Round(time.Millisecond), len(lat)+1, lat[len(lat)/2], p95, p99, lat[len(lat)-1], base[len(base)/2], baseP95)
	// p95: at make test's size there are a few dozen samples, so p99 is the
	// single worst one, which the other test packages running beside this
	// one on two cores can delay on their own. The bound is relative to
	// the same test's latency without retention (3× its p95 + 250 ms), so
	// a loaded machine slows both sides alike; capped at 5 s so that
	// deliveries waiting for retention's deletes (seconds per batch) fail
	// however slow the baseline. Not under 1 s: the two phases do not
	// share every burst of the other packages' tests, and a few dozen
	// samples' p95 moves with one.
	if bound := min(max(3*baseP95+250*time.Millisecond, time.Second), 5*time.Second); p95 > bound {
		t.Errorf("deliveries waited for retention: p95 %s, want at most %s (3× the p95 without retention, %s, + 250ms; 1s at least)", p95, bound, baseP95)
	}
}
