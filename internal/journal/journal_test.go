package journal

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func newStore(t testing.TB) (*Store, *pgtest.DB) {
	t.Helper()
	db := pgtest.NewDB(t)
	return newStoreOn(t, db.DSN, 0), db
}

// newStoreOn is a Store on dsn's database, migrated, with at most
// maxConns connections (0: the pool's default).
func newStoreOn(t testing.TB, dsn string, maxConns int32) *Store {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := New(pool, "dzhook")
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// batchOf is a batch of n events, each delivered at its first attempt:
// the hot path's journal write.
func batchOf(start, n int) *Batch {
	b := &Batch{Slot: "dzhook", Checkpoint: pglogrepl.LSN(start + n)}
	now := time.Now()
	body := make([]byte, 600)
	for i := start; i < start+n; i++ {
		ev := fmt.Sprintf("whk_%026d", i)
		dlv := fmt.Sprintf("dlv_%026d", i)
		b.Events = append(b.Events, EventRow{ID: ev, Type: "request.created", Body: body, CommitLSN: pglogrepl.LSN(i), OccurredAt: now})
		b.Deliveries = append(b.Deliveries, DeliveryRow{ID: dlv, EventID: ev, SubscriptionID: "crm", EventType: "request.created",
			State: "delivered", Attempts: 1, LastStatus: 200, LastAttemptAt: now, CreatedAt: now})
		b.Attempts = append(b.Attempts, AttemptRow{DeliveryID: dlv, Attempt: 1, At: now, Trigger: "auto", StatusCode: 200, Duration: time.Millisecond, ResponseBody: []byte("ok"),
			Instance: "bench-host-1-0a1b2c3d"})
	}
	return b
}

// BenchmarkWrite measures the journal's hot-path write: events/s of
// batches of 1,000 events each delivered at once.
func BenchmarkWrite(b *testing.B) {
	s, _ := newStore(b)
	ctx := context.Background()
	const n = 1000
	i := 0
	for b.Loop() {
		if err := s.Write(ctx, batchOf(i*n, n)); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(i*n)/b.Elapsed().Seconds(), "events/s")
}

func TestMigrateIsIdempotent(t *testing.T) {
	s, _ := newStore(t) // applied once
	applied, err := s.Migrate(context.Background())
	if err != nil || len(applied) != 0 {
		t.Fatalf("second Migrate applied %v (err %v), want nothing", applied, err)
	}
}

// TestMigrateCompleteTakesNoLock: a journal with every migration is found
// so without the migration lock, which another process starting (or a
// migration in progress elsewhere) may hold; one lacking a migration still
// waits for it.
func TestMigrateCompleteTakesNoLock(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	holder := db.Connect(t)
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock(hashtext($1))", "dzhook-migrate:dzhook"); err != nil {
		t.Fatal(err)
	}
	quick, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if applied, err := s.Migrate(quick); err != nil || len(applied) != 0 {
		t.Fatalf("Migrate of a complete journal while the lock is held: applied %v, err %v; want nothing, at once", applied, err)
	}
	if _, err := holder.Exec(ctx, "DELETE FROM dzhook.schema_migrations WHERE version = (SELECT max(version) FROM dzhook.schema_migrations)"); err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	if applied, err := s.Migrate(short); err == nil {
		t.Fatalf("Migrate of a journal lacking a migration did not wait for the lock: applied %v", applied)
	}
}

// TestWriteIsIdempotent: writing a batch again (a replay after a crash)
// leaves one row of each, and keeps the checkpoint's maximum.
func TestWriteIsIdempotent(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, batchOf(0, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, batchOf(5, 10)); err != nil { // overlaps 5..9
		t.Fatalf("overlapping batch: %v", err)
	}
	conn := db.Connect(t)
	for table, want := range map[string]int{"events": 15, "deliveries": 15, "attempts": 15} {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM dzhook."+table).Scan(&n); err != nil || n != want {
			t.Errorf("%s: %d rows (err %v), want %d", table, n, err, want)
		}
	}
	if err := s.Write(ctx, &Batch{Slot: "dzhook", Checkpoint: 3}); err != nil {
		t.Fatal(err)
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.LSN != 15 {
		t.Errorf("checkpoint = %+v (err %v), want 15: it never moves back", cp, err)
	}
	// Within one cluster the checkpoint never moves back; a checkpoint of
	// another cluster is replaced, not kept as a maximum.
	for _, w := range []struct {
		sys                     string
		lsn, end, want, wantEnd pglogrepl.LSN
	}{{"A", 100, 130, 100, 130}, {"A", 50, 60, 100, 130}, {"A", 101, 0, 101, 130}, {"B", 7, 8, 7, 8}, {"B", 6, 0, 7, 8}, {"B", 9, 10, 9, 10}} {
		if err := s.Write(ctx, &Batch{Slot: "dzhook", Checkpoint: w.lsn, CheckpointEnd: w.end, SystemID: w.sys}); err != nil {
			t.Fatal(err)
		}
		if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp != (Checkpoint{LSN: w.want, SystemID: w.sys, End: w.wantEnd}) {
			t.Errorf("after %d of %s: checkpoint = %+v (err %v), want %d of %s", w.lsn, w.sys, cp, err, w.want, w.sys)
		}
	}
	if err := s.ResetCheckpoint(ctx, "dzhook", Checkpoint{LSN: 8, SystemID: "B"}); err != nil {
		t.Fatal(err)
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.LSN != 9 {
		t.Errorf("reset of a checkpoint read before the last write: checkpoint = %+v (err %v), want 9 kept", cp, err)
	}
	if err := s.ResetCheckpoint(ctx, "dzhook", Checkpoint{LSN: 9, SystemID: "B"}); err != nil {
		t.Fatal(err)
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp != (Checkpoint{}) {
		t.Errorf("after reset: checkpoint = %+v (err %v), want none", cp, err)
	}
	var body []byte
	if err := conn.QueryRow(ctx, `SELECT body FROM dzhook.events LIMIT 1`).Scan(&body); err != nil || len(body) != 600 {
		t.Errorf("body of %d bytes (err %v), want the 600 written", len(body), err)
	}
}

// TestAttemptInstance: an attempt is read back with the instance that
// made it; one journaled before version 10 (when attempts had no
// instance) stays unknown after the migration, as does one written
// without an instance.
func TestAttemptInstance(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	// The journal as version 9 left it, with one attempt made then.
	db.Exec(t, `ALTER TABLE dzhook.attempts DROP COLUMN instance`, `DELETE FROM dzhook.schema_migrations WHERE version = 10`)
	old := batchOf(0, 1)
	old.Attempts = nil
	if err := s.Write(ctx, old); err != nil {
		t.Fatal(err)
	}
	dlv := old.Deliveries[0].ID
	db.Exec(t, fmt.Sprintf(`INSERT INTO dzhook.attempts (delivery_id, attempt, at, trigger, status_code, duration_ms)
		VALUES ('%s', 1, now(), 'auto', 500, 3)`, dlv))
	applied, err := s.Migrate(ctx)
	if err != nil || len(applied) != 1 || applied[0] != "0010_attempt_instance" {
		t.Fatalf("Migrate from version 9 applied %v (err %v), want 0010_attempt_instance", applied, err)
	}

	now := time.Now()
	const instance = "host-a-4242-0a1b2c3d"
	if err := s.Write(ctx, &Batch{Attempts: []AttemptRow{
		{DeliveryID: dlv, Attempt: 2, At: now, Trigger: "auto", StatusCode: 503, Duration: time.Millisecond, Instance: instance},
		{DeliveryID: dlv, Attempt: 3, At: now, Trigger: "manual", StatusCode: 200, Duration: time.Millisecond},
	}}); err != nil {
		t.Fatal(err)
	}
	_, _, attempts, err := s.GetDelivery(ctx, dlv)
	if err != nil || len(attempts) != 3 {
		t.Fatalf("GetDelivery: %d attempts (err %v), want 3", len(attempts), err)
	}
	for i, want := range []*string{nil, ptr(instance), nil} {
		got := attempts[i].Instance
		if (got == nil) != (want == nil) || got != nil && *got != *want {
			t.Errorf("attempt %d: instance %v, want %v", attempts[i].Attempt, deref(got), deref(want))
		}
	}
}

func ptr[T any](v T) *T { return &v }

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%q", *p)
}

// runWriter makes a writer of cfg and runs it until the test ends.
func runWriter(t *testing.T, cfg WriterConfig) *Writer {
	t.Helper()
	w, err := NewWriter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
	return w
}

func pendingBatch(ids ...string) *Batch {
	b := &Batch{}
	now := time.Now().Add(-time.Second)
	for _, id := range ids {
		b.Events = append(b.Events, EventRow{ID: "whk_" + id, Type: "request.created", Body: []byte(`{}`), OccurredAt: now})
		b.Deliveries = append(b.Deliveries, DeliveryRow{ID: "dlv_" + id, EventID: "whk_" + id, SubscriptionID: "crm",
			EventType: "request.created", State: "pending", NextAttemptAt: now, CreatedAt: now})
	}
	return b
}

// crm asks a claim for up to n due deliveries of subscription crm.
func crm(n int) []ClaimWant { return []ClaimWant{{Subscription: "crm", Limit: n, Runs: true}} }

// TestClaimTakesNothingOfAPausedSubscription: a claim asked for a
// subscription the journal says is paused takes none of its due
// deliveries. The claimer chose the subscription by its memory, which a
// pause made meanwhile is behind: under load a claim racing a pause took
// a delivery that a retry of failed deliveries made pending after the
// pause, and an operator's retry of it was refused as busy (fanout's
// TestRetryNowOfARetryFailedDelivery).
func TestClaimTakesNothingOfAPausedSubscription(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, pendingBatch("00")); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPaused(ctx, "crm", true); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Claim(ctx, crm(10), "a", "t1", time.Minute); err != nil || len(got) != 0 {
		t.Fatalf("claim of a paused subscription: %d deliveries (%v), want none", len(got), err)
	}
	if err := s.SetPaused(ctx, "crm", false); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Claim(ctx, crm(10), "a", "t2", time.Minute); err != nil || len(got) != 1 {
		t.Fatalf("claim after the resume: %d deliveries (%v), want 1", len(got), err)
	}
}

// TestClaimSeveralSubscriptions: one claim takes, for each subscription
// it names, at most that subscription's limit, and nothing of the others.
func TestClaimSeveralSubscriptions(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	b := &Batch{}
	now := time.Now().Add(-time.Second)
	for _, sub := range []string{"crm", "erp", "bi", "zero"} {
		for i := range 5 {
			id := fmt.Sprintf("%s_%d", sub, i)
			b.Events = append(b.Events, EventRow{ID: "whk_" + id, Type: "request.created", Body: []byte(`{"s":"` + sub + `"}`), OccurredAt: now})
			b.Deliveries = append(b.Deliveries, DeliveryRow{ID: "dlv_" + id, EventID: "whk_" + id, SubscriptionID: sub,
				EventType: "request.created", State: "pending", NextAttemptAt: now, CreatedAt: now})
		}
	}
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Claim(ctx, []ClaimWant{{Subscription: "crm", Limit: 2}, {Subscription: "erp", Limit: 10}, {Subscription: "zero"}}, "a", "t1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, c := range got {
		count[c.SubscriptionID]++
		if want := `{"s":"` + c.SubscriptionID + `"}`; string(c.Body) != want {
			t.Errorf("%s (subscription %s): body %s, want %s", c.ID, c.SubscriptionID, c.Body, want)
		}
	}
	if want := map[string]int{"crm": 2, "erp": 5}; !maps.Equal(count, want) {
		t.Errorf("claimed per subscription %v, want %v (bi not asked, zero asked for none)", count, want)
	}
	// The rest of crm, and bi, in a second claim; erp has none left.
	got, err = s.Claim(ctx, []ClaimWant{{Subscription: "crm", Limit: 10}, {Subscription: "erp", Limit: 10}, {Subscription: "bi", Limit: 10}}, "a", "t2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	clear(count)
	for _, c := range got {
		count[c.SubscriptionID]++
	}
	if want := map[string]int{"crm": 3, "bi": 5}; !maps.Equal(count, want) {
		t.Errorf("second claim per subscription %v, want %v", count, want)
	}
	if got, err := s.Claim(ctx, nil, "a", "t3", time.Minute); err != nil || len(got) != 0 {
		t.Errorf("a claim asking nothing: %d deliveries, %v", len(got), err)
	}
}

// TestClaim: due work is shared by two instances without overlap, and the
// work of an instance whose heartbeat stopped is taken over.
func TestClaim(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	var ids []string
	for i := range 10 {
		ids = append(ids, fmt.Sprintf("%02d", i))
	}
	if err := s.Write(ctx, pendingBatch(ids...)); err != nil {
		t.Fatal(err)
	}
	for _, inst := range []string{"a", "b"} {
		if err := s.Register(ctx, inst); err != nil {
			t.Fatal(err)
		}
	}
	a, err := s.Claim(ctx, crm(6), "a", "t1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Claim(ctx, crm(6), "b", "t2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 6 || len(b) != 4 {
		t.Fatalf("a claimed %d, b %d; want 6 and 4", len(a), len(b))
	}
	seen := map[string]bool{}
	for _, c := range append(a, b...) {
		if seen[c.ID] {
			t.Errorf("%s claimed twice", c.ID)
		}
		seen[c.ID] = true
		if string(c.Body) != "{}" {
			t.Errorf("%s body %q", c.ID, c.Body)
		}
	}
	// a is alive: nothing more to claim.
	if more, _ := s.Claim(ctx, crm(10), "b", "t3", time.Minute); len(more) != 0 {
		t.Errorf("b claimed %d deliveries owned by a live instance", len(more))
	}
	// a's heartbeat goes stale: b takes a's deliveries over.
	time.Sleep(1100 * time.Millisecond) // let a's heartbeat age past the 1s staleness used below
	// b sees no live peer: a's heartbeat is older than a second.
	if peers, _, err := s.Heartbeat(ctx, "b", time.Second); err != nil || peers != 0 {
		t.Fatalf("Heartbeat: %d live peers, %v; want 0 (a is stale)", peers, err)
	}
	if peers, _, err := s.Heartbeat(ctx, "b", time.Hour); err != nil || peers != 1 {
		t.Fatalf("Heartbeat: %d live peers within an hour, %v; want 1 (a)", peers, err)
	}
	taken, err := s.Claim(ctx, crm(10), "b", "t4", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(taken) != 6 {
		t.Errorf("b took over %d deliveries of the dead instance, want 6", len(taken))
	}
	// Unregister releases at once.
	if err := s.Unregister(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.Claim(ctx, crm(20), "c", "t5", time.Hour); len(again) != 10 {
		t.Errorf("after b left, c claimed %d, want all 10", len(again))
	}
}

// TestClaimSkipsOwnDeliveries: an instance whose own heartbeat looks
// stale (a stalled process or database) takes over nothing of its own: it
// claims, so it runs, and has what it owns in memory. Another instance
// takes it over.
func TestClaimSkipsOwnDeliveries(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, pendingBatch("00", "01", "02")); err != nil {
		t.Fatal(err)
	}
	for _, inst := range []string{"a", "b"} {
		if err := s.Register(ctx, inst); err != nil {
			t.Fatal(err)
		}
	}
	mine, err := s.Claim(ctx, crm(2), "a", "t1", time.Minute)
	if err != nil || len(mine) != 2 {
		t.Fatalf("claim: %d, %v; want 2", len(mine), err)
	}
	db.Exec(t, `UPDATE dzhook.instances SET heartbeat_at = now() - interval '1 hour' WHERE id = 'a'`)
	again, err := s.Claim(ctx, crm(10), "a", "t2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 || again[0].ID != "dlv_02" {
		var got []string
		for _, c := range again {
			got = append(got, c.ID)
		}
		t.Errorf("a, its heartbeat late, claimed %v; want only dlv_02, not what it owns", got)
	}
	taken, err := s.Claim(ctx, crm(10), "b", "t3", time.Minute)
	if err != nil || len(taken) != 3 {
		t.Errorf("b took over %d (%v) deliveries of a, whose heartbeat is late; want 3", len(taken), err)
	}

	// The same for a manual retry a has in flight.
	if err := s.Write(ctx, &Batch{Updates: []DeliveryUpdate{{ID: "dlv_00", State: "failed", Attempts: 5}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimForRetry(ctx, "dlv_00", "a", "m1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimForRetry(ctx, "dlv_00", "a", "m2", time.Minute); !errors.Is(err, ErrBusy) {
		t.Errorf("a's second manual retry of its delivery in flight, its heartbeat late: %v, want ErrBusy", err)
	}
	if n, err := s.RetryFailed(ctx, "crm", nil, nil, "a", time.Minute); err != nil || n != 0 {
		t.Errorf("a's retry-failed, its heartbeat late, took %d (%v) of its own manual retries in flight, want 0", n, err)
	}
	if n, err := s.RetryFailed(ctx, "crm", nil, nil, "b", time.Minute); err != nil || n != 1 {
		t.Errorf("b's retry-failed took %d (%v) of a's, whose heartbeat is late; want 1", n, err)
	}
}

// TestReleaseLost: the deliveries a claim took whose answer was lost go
// back to the pool, and nothing else the instance owns does.
func TestReleaseLost(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	ids := []string{"00", "01", "02", "03", "04", "05"}
	if err := s.Write(ctx, pendingBatch(ids...)); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	kept, err := s.Claim(ctx, crm(2), "a", "kept", time.Minute) // answered: in a's memory
	if err != nil || len(kept) != 2 {
		t.Fatalf("claim: %d, %v", len(kept), err)
	}
	if lost, err := s.Claim(ctx, crm(3), "a", "lost", time.Minute); err != nil || len(lost) != 3 { // its answer "lost"
		t.Fatalf("claim: %d, %v", len(lost), err)
	}
	if n, _, err := s.ReleaseLost(ctx, "b", LostClaim{Subscription: "crm", Tokens: []string{"lost"}}); err != nil || n != 0 {
		t.Errorf("another owner released %d (%v), want 0", n, err)
	}
	if n, _, err := s.ReleaseLost(ctx, "a", LostClaim{Subscription: "crm", Tokens: []string{"lost"}}); err != nil || n != 3 {
		t.Errorf("released %d (%v), want the 3 of the lost claim", n, err)
	}
	again, err := s.Claim(ctx, crm(10), "a", "again", time.Minute)
	if err != nil || len(again) != 4 { // the 3 released and the one never claimed
		t.Fatalf("claim after the release: %d, %v; want 4", len(again), err)
	}
	for _, c := range again {
		for _, k := range kept {
			if c.ID == k.ID {
				t.Errorf("%s was held in memory and was released", c.ID)
			}
		}
	}
	if n, _, _ := s.ReleaseLost(ctx, "a", LostClaim{Subscription: "crm", Tokens: []string{"lost"}}); n != 0 {
		t.Errorf("releasing the lost claim twice released %d, want 0 (they were claimed again)", n)
	}

	// A manual retry's claim, lost: the delivery is free for the next one.
	id := kept[0].ID
	if err := s.Write(ctx, &Batch{Updates: []DeliveryUpdate{{ID: id, State: "failed", Attempts: 5}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimForRetry(ctx, id, "a", "m1", time.Minute); err != nil { // its answer "lost"
		t.Fatal(err)
	}
	if _, err := s.ClaimForRetry(ctx, id, "b", "m2", time.Minute); !errors.Is(err, ErrBusy) {
		t.Fatalf("claim of a delivery a live instance owns: %v, want ErrBusy", err)
	}
	if n, err := s.RetryFailed(ctx, "crm", nil, nil, "b", time.Minute); err != nil || n != 0 {
		t.Errorf("retry-failed took %d (%v) deliveries a live instance is retrying by hand, want 0", n, err)
	}
	if n, _, err := s.ReleaseLost(ctx, "a", LostClaim{Delivery: id, Tokens: []string{"kept"}}); err != nil || n != 0 {
		t.Errorf("a release with another claim's token released %d (%v), want 0", n, err)
	}
	if n, _, err := s.ReleaseLost(ctx, "a", LostClaim{Delivery: id, Tokens: []string{"m1"}}); err != nil || n != 1 {
		t.Fatalf("released %d (%v), want 1", n, err)
	}
	if n, err := s.RetryFailed(ctx, "crm", nil, nil, "b", time.Minute); err != nil || n != 1 {
		t.Errorf("retry-failed after the release took %d (%v), want 1", n, err)
	}
	if _, err := s.ClaimForRetry(ctx, id, "b", "m3", time.Minute); err != nil {
		t.Errorf("claim after the release: %v", err)
	}
}

// TestPrune: finished deliveries older than the cutoff go, with their
// attempts and events; pending and held ones stay whatever their age, and
// so do their events.
func TestPrune(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	old := time.Now().Add(-40 * 24 * time.Hour)
	b := batchOf(0, 3000) // delivered, created now
	for i := range b.Deliveries {
		if i < 2500 {
			b.Deliveries[i].CreatedAt, b.Deliveries[i].LastAttemptAt = old, old
			b.Events[i].OccurredAt = old
		}
	}
	b.Deliveries[0].State, b.Deliveries[1].State = "pending", "held"
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	cutoff := time.Now().Add(-30 * 24 * time.Hour)
	total := Pruned{}
	for {
		p, err := s.PruneStep(ctx, cutoff, 1000)
		if err != nil {
			t.Fatal(err)
		}
		total.Deliveries += p.Deliveries
		total.Events += p.Events
		if p.Deliveries < 1000 {
			break
		}
	}
	if total.Deliveries != 2498 || total.Events != 2498 {
		t.Errorf("pruned %+v, want 2498 deliveries and their events", total)
	}
	conn := db.Connect(t)
	for _, q := range []struct {
		sql  string
		want int
	}{
		{`SELECT count(*) FROM dzhook.deliveries`, 502},
		{`SELECT count(*) FROM dzhook.attempts`, 502},
		{`SELECT count(*) FROM dzhook.events`, 502},
		{`SELECT count(*) FROM dzhook.deliveries WHERE state IN ('pending', 'held')`, 2},
	} {
		var n int
		if err := conn.QueryRow(ctx, q.sql).Scan(&n); err != nil || n != q.want {
			t.Errorf("%s = %d (err %v), want %d", q.sql, n, err, q.want)
		}
	}
}

// TestTimerClaimUsesIndex: with 200,000 armed SLA timers, claiming the due
// ones reads the partial index on fire_at, not the whole table.
func TestTimerClaimUsesIndex(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	db.Exec(t, `INSERT INTO dzhook.sla_timers (sla_id, kind, target_at, fire_at, request_id, sla_type, started_at)
		SELECT g::text, 'breach', now() + g * interval '1 minute', now() + g * interval '1 minute', g::text, 'resolution', now()
		  FROM generate_series(1, 200000) g`,
		`UPDATE dzhook.sla_timers SET fire_at = now() - interval '1 second' WHERE sla_id IN ('1', '2', '3')`,
		`ANALYZE dzhook.sla_timers`)
	conn := db.Connect(t)
	rows, err := conn.Query(ctx, `EXPLAIN SELECT sla_id FROM dzhook.sla_timers
		WHERE fired_at IS NULL AND fire_at <= now() AND (leased_until IS NULL OR leased_until < now())
		ORDER BY fire_at LIMIT 500 FOR UPDATE SKIP LOCKED`)
	if err != nil {
		t.Fatal(err)
	}
	var plan strings.Builder
	for rows.Next() {
		var line string
		_ = rows.Scan(&line)
		plan.WriteString(line + "\n")
	}
	rows.Close()
	if !strings.Contains(plan.String(), "sla_timers_due") || strings.Contains(plan.String(), "Seq Scan") {
		t.Errorf("the due timers are not read through the index:\n%s", plan.String())
	}
	due, err := s.ClaimTimers(ctx, 500, time.Minute)
	if err != nil || len(due) != 3 {
		t.Errorf("claimed %d timers (err %v), want the 3 due", len(due), err)
	}
}

// TestCancelledTimerCanBeArmedAgain: a claimed timer cancelled because its
// SLA moved is forgotten, so the SLA moving back to that target arms it
// again; a timer armed anew since the claim is not cancelled.
func TestCancelledTimerCanBeArmedAgain(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	timer := TimerRow{SLAID: "7", Kind: "breach", TargetAt: now, FireAt: now.Add(-time.Second), RequestID: "7", SLAType: "resolution", StartedAt: now.Add(-time.Hour)}
	arm := func() {
		t.Helper()
		if err := s.Write(ctx, &Batch{Timers: []TimerChange{{SLAID: "7", Keep: now, Arm: []TimerRow{timer}}}}); err != nil {
			t.Fatal(err)
		}
	}
	claim := func(want int) []TimerRow {
		t.Helper()
		due, err := s.ClaimTimers(ctx, 10, time.Minute)
		if err != nil || len(due) != want {
			t.Fatalf("claimed %d timers (err %v), want %d", len(due), err, want)
		}
		return due
	}
	arm()
	due := claim(1)
	if err := s.TimerCancelled(ctx, due[0]); err != nil {
		t.Fatal(err)
	}
	arm() // the SLA came back to the same target
	due = claim(1)
	// Moved away and back while this claim was out: the stream's cancel
	// deletes the claimed row and arms a fresh one, unleased.
	if err := s.Write(ctx, &Batch{Timers: []TimerChange{{SLAID: "7"}}}); err != nil {
		t.Fatal(err)
	}
	arm()
	if err := s.TimerCancelled(ctx, due[0]); err != nil {
		t.Fatal(err)
	}
	due = claim(1)
	// Moved away and back within one batch: the writer keeps the latest
	// change only, an upsert of the claimed row. It is a new arming, which
	// the claim's cancellation must not delete.
	arm()
	if err := s.TimerCancelled(ctx, due[0]); err != nil {
		t.Fatal(err)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.sla_timers WHERE sla_id = '7' AND fired_at IS NULL`); n != 1 {
		t.Errorf("%d armed timers after cancelling a claim of an older arming, want 1", n)
	}
}

func queryCount(t *testing.T, db *pgtest.DB, sql string) int {
	t.Helper()
	var n int
	if err := db.Connect(t).QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// TestRetentionRun: Retention.Run prunes on its interval what is older
// than MaxAge, keeps the rest, and returns nil once ctx ends.
func TestRetentionRun(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	old := time.Now().Add(-40 * 24 * time.Hour)
	b := batchOf(0, 20)
	for i := range 15 {
		b.Deliveries[i].CreatedAt, b.Deliveries[i].LastAttemptAt = old, old
	}
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Retention{Store: s, MaxAge: 30 * 24 * time.Hour, Interval: 10 * time.Millisecond}.Run(rctx)
	}()
	conn := db.Connect(t)
	testutil.Eventually(t, 20*time.Second, "the 15 old deliveries pruned, the 5 recent ones kept", func() bool {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 5
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v on cancellation, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of cancellation")
	}
}

// TestReplayedDeliveryTakesALaterAttemptsOutcome: the stream hands a
// process again a transaction whose delivery a killed process journaled
// and had retried (attempts 1) and then claimed (its retry in flight).
// The replayed copy is held by the writer, owned and not attempted, while
// this process claims the delivery and makes its second attempt. That
// outcome meets the held row and goes to the journal with it, as one
// insert: the insert finds the row there, and the outcome must still
// apply. Dropped with the insert, it left the delivery pending and owned
// by the live process, claimable by nobody and attempted by nobody (the
// replayed copy's own first attempt does not raise the attempt count):
// TestChaos's deliveries stuck in flight.
func TestReplayedDeliveryTakesALaterAttemptsOutcome(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, pendingBatch("00")); err != nil {
		t.Fatal(err)
	}
	// The killed process: first attempt failed, then claimed for a retry.
	if err := s.Write(ctx, &Batch{Updates: []DeliveryUpdate{{ID: "dlv_00", State: Pending, Attempts: 1, NextAttemptAt: time.Now().Add(-time.Second), LastStatus: 500}}}); err != nil {
		t.Fatal(err)
	}
	for _, inst := range []string{"dead", "live"} {
		if err := s.Register(ctx, inst); err != nil {
			t.Fatal(err)
		}
	}
	if c, err := s.Claim(ctx, crm(10), "dead", "t1", time.Minute); err != nil || len(c) != 1 {
		t.Fatalf("dead's claim: %d, %v", len(c), err)
	}
	db.Exec(t, `UPDATE dzhook.instances SET heartbeat_at = now() - interval '1 hour' WHERE id = 'dead'`)

	w := runWriter(t, WriterConfig{Store: s, Slot: "dzhook", Owner: "live", Hold: time.Hour, Linger: -1})
	put := func(r Record) {
		t.Helper()
		if err := w.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// The replayed transaction: the delivery again, owned by live, in
	// flight from memory (held).
	replayed := pendingBatch("00").Deliveries[0]
	replayed.Owner = "live"
	put(Record{Deliveries: []DeliveryRow{replayed}})
	// live takes over the dead process's claim and retries: attempt 2.
	claimed, err := s.Claim(ctx, crm(10), "live", "t2", time.Minute)
	if err != nil || len(claimed) != 1 || claimed[0].Attempts != 1 {
		t.Fatalf("live's claim: %+v, %v; want dlv_00 after 1 attempt", claimed, err)
	}
	now := time.Now()
	put(Record{Update: &DeliveryUpdate{ID: "dlv_00", State: Delivered, Attempts: 2, LastStatus: 200, LastAttemptAt: now},
		Attempt: &AttemptRow{DeliveryID: "dlv_00", Attempt: 2, At: now, Trigger: "auto", StatusCode: 200, Instance: "live"}})
	if err := w.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	// Then the replayed copy's first attempt ends (it was slower).
	put(Record{Update: &DeliveryUpdate{ID: "dlv_00", State: Delivered, Attempts: 1, LastStatus: 200, LastAttemptAt: now}})
	if err := w.Barrier(ctx); err != nil {
		t.Fatal(err)
	}

	var state string
	var attempts int
	var owner *string
	if err := db.Connect(t).QueryRow(ctx, `SELECT state, attempts, owner FROM dzhook.deliveries WHERE id = 'dlv_00'`).Scan(&state, &attempts, &owner); err != nil {
		t.Fatal(err)
	}
	if state != string(Delivered) || attempts != 2 || owner != nil {
		t.Errorf("dlv_00 journaled %s after %d attempts, owner %s; want delivered after 2, no owner", state, attempts, deref(owner))
	}

	// A batch that holds a journaled delivery twice (replayed twice) is
	// written, with its latest attempt's outcome.
	again := pendingBatch("00", "01")
	third := again.Deliveries[0]
	third.State, third.Attempts, third.LastStatus = Failed, 3, 410
	again.Deliveries = append(again.Deliveries, third, again.Deliveries[0])
	if err := s.Write(ctx, again); err != nil {
		t.Fatalf("a batch with a journaled delivery twice: %v", err)
	}
	if err := db.Connect(t).QueryRow(ctx, `SELECT state, attempts FROM dzhook.deliveries WHERE id = 'dlv_00'`).Scan(&state, &attempts); err != nil {
		t.Fatal(err)
	}
	if state != string(Failed) || attempts != 3 {
		t.Errorf("dlv_00 journaled %s after %d attempts, want failed after 3", state, attempts)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries`); n != 2 {
		t.Errorf("%d deliveries journaled, want 2", n)
	}
}

// waitLockedOrDone waits until done has a result or a backend waits on a
// lock of kind (pg_stat_activity), and returns the result if there is one.
func waitLockedOrDone(t *testing.T, db *pgtest.DB, kind string, done <-chan error) (finished bool, err error) {
	t.Helper()
	conn := db.Connect(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-done:
			return true, err
		default:
		}
		var n int
		if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = $1`, kind).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return false, nil
		}
		if time.Now().After(deadline) {
			t.Fatalf("neither finished nor waiting on a %s lock after 10 s", kind)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPruneBesideReplay: a retention step that runs while a replay step
// reads an old event and makes its delivery must not delete the event
// (its deliveries of before were all finished and old): the replayed
// delivery would stay pending for ever, unclaimable, since a claim reads
// its event. The retention step waits for the replay step instead.
func TestPruneBesideReplay(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	old := time.Now().Add(-40 * 24 * time.Hour).UTC().Truncate(time.Microsecond)
	b := batchOf(0, 1)
	b.Deliveries[0].CreatedAt, b.Events[0].OccurredAt = old, old
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.CreateReplay(ctx, ReplayRequest{ID: "rpl_1", Subscription: "erp", Since: old.Add(-time.Hour), Until: time.Now(),
		Patterns: []string{"request.created"}, Types: []string{"request.created"}, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cutoff := time.Now().Add(-30 * 24 * time.Hour)
	pruned := make(chan error, 1)
	_, err = s.StepReplay(ctx, r.ID, 10, 100, func(_ Replay, _ int, events []ReplayEvent) ([]DeliveryRow, int) {
		// The retention step starts between the replay's read of the
		// event and its insert of the delivery.
		go func() {
			_, err := s.PruneStep(ctx, cutoff, 100)
			pruned <- err
		}()
		if finished, err := waitLockedOrDone(t, db, "advisory", pruned); finished {
			pruned <- err // ran beside the replay step: checked below
		}
		var rows []DeliveryRow
		for _, e := range events {
			rows = append(rows, DeliveryRow{ID: "dlv_" + e.ID[4:] + "_erp", EventID: e.ID, SubscriptionID: "erp", EventType: e.Type,
				NextAttemptAt: time.Now()})
		}
		return rows, len(events)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-pruned; err != nil {
		t.Fatal(err)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries d WHERE state = 'pending'
		AND NOT EXISTS (SELECT 1 FROM dzhook.events e WHERE e.id = d.event_id)`); n != 0 {
		t.Errorf("%d pending deliveries whose event retention deleted", n)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE subscription_id = 'erp' AND state = 'pending'`); n != 1 {
		t.Errorf("%d replayed deliveries pending, want 1", n)
	}
}

// TestPruneBesideRetryFailed: a retention step that meets a failed
// delivery RetryFailed is making pending (its transaction not yet
// committed) keeps it, whichever waits for the other.
// TestPruneKeepsARecentAttempt: an old delivery attempted since the
// cutoff (an operator's retry of one that failed 40 days ago, or one held
// for weeks and sent after a resume) keeps its history for the whole
// retention after that attempt; pruned by creation alone, it went at the
// next hourly run.
func TestPruneKeepsARecentAttempt(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	old, recent := time.Now().Add(-40*24*time.Hour), time.Now().Add(-24*time.Hour)
	b := batchOf(0, 3)
	for i := range b.Deliveries {
		b.Deliveries[i].CreatedAt, b.Events[i].OccurredAt = old, old
		b.Deliveries[i].LastAttemptAt, b.Attempts[i].At = old, old
	}
	b.Deliveries[1].State, b.Deliveries[1].LastAttemptAt = "failed", recent
	b.Deliveries[2].State, b.Deliveries[2].LastAttemptAt = "skipped", time.Time{} // never attempted
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	p, err := s.PruneStep(ctx, time.Now().Add(-30*24*time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	if p.Deliveries != 2 || p.Events != 2 {
		t.Errorf("pruned %+v, want the delivery last attempted 40 days ago and the skipped one, with their events", p)
	}
	if got := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE id = 'dlv_00000000000000000000000001'`); got != 1 {
		t.Error("the delivery attempted a day ago was pruned")
	}
	if got := queryCount(t, db, `SELECT count(*) FROM dzhook.events WHERE id = 'whk_00000000000000000000000001'`); got != 1 {
		t.Error("the event of the delivery attempted a day ago was pruned")
	}
}

func TestPruneBesideRetryFailed(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	old := time.Now().Add(-40 * 24 * time.Hour)
	b := batchOf(0, 1)
	b.Deliveries[0].CreatedAt, b.Events[0].OccurredAt = old, old
	b.Deliveries[0].State = "failed"
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	conn := db.Connect(t)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `UPDATE dzhook.deliveries SET state = 'pending', next_attempt_at = now(), owner = NULL, manual = true
		WHERE state = 'failed'`); err != nil {
		t.Fatal(err)
	}
	pruned := make(chan error, 1)
	go func() {
		_, err := s.PruneStep(ctx, time.Now().Add(-30*24*time.Hour), 100)
		pruned <- err
	}()
	finished, err := waitLockedOrDone(t, db, "transactionid", pruned)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if !finished {
		err = <-pruned
	}
	if err != nil {
		t.Fatal(err)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'pending'`); n != 1 {
		t.Errorf("%d pending deliveries after the retention step, want the one retried", n)
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.events`); n != 1 {
		t.Errorf("%d events, want the retried delivery's", n)
	}
}

// TestClaimCountsAttemptsByHand: a claimed delivery says how many of its
// attempts were made by hand, which its retry schedule does not count,
// and ClaimForRetry says the state and next attempt it took it in.
func TestClaimCountsAttemptsByHand(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	now := time.Now().Add(-time.Second).UTC().Truncate(time.Microsecond)
	b := &Batch{
		Events: []EventRow{{ID: "whk_1", Type: "request.created", Body: []byte(`{}`), OccurredAt: now}},
		Deliveries: []DeliveryRow{{ID: "dlv_1", EventID: "whk_1", SubscriptionID: "crm", EventType: "request.created",
			State: "pending", NextAttemptAt: now, CreatedAt: now, Attempts: 3}},
		Attempts: []AttemptRow{
			{DeliveryID: "dlv_1", Attempt: 1, At: now, Trigger: "auto", StatusCode: 500},
			{DeliveryID: "dlv_1", Attempt: 2, At: now, Trigger: "manual", StatusCode: 500},
			{DeliveryID: "dlv_1", Attempt: 3, At: now, Trigger: "auto", StatusCode: 500},
		},
	}
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if n := queryCount(t, db, `SELECT attempts FROM dzhook.deliveries WHERE id = 'dlv_1'`); n != 3 {
		t.Fatalf("the delivery has %d attempts, want 3 (the test's premise)", n)
	}
	got, err := s.Claim(ctx, []ClaimWant{{Subscription: "crm", Limit: 10}}, "a", "t1", time.Minute)
	if err != nil || len(got) != 1 {
		t.Fatalf("claimed %+v (err %v), want dlv_1", got, err)
	}
	if got[0].Attempts != 3 || got[0].ByHand != 1 {
		t.Errorf("claimed with %d attempts, %d by hand; want 3 and 1", got[0].Attempts, got[0].ByHand)
	}
	db.Exec(t, `UPDATE dzhook.deliveries SET owner = NULL, state = 'delivered', next_attempt_at = NULL WHERE id = 'dlv_1'`)
	c, err := s.ClaimForRetry(ctx, "dlv_1", "a", "t2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if c.State != Delivered || c.NextAttemptAt != nil {
		t.Errorf("ClaimForRetry took it as %s, next %v; want delivered, none", c.State, c.NextAttemptAt)
	}
}

// TestHeartbeatRegistersAgain: a live instance whose row is gone (pruned
// by retention after a long stop) is registered again by its heartbeat,
// so that others see it alive and do not take over what it owns.
func TestHeartbeatRegistersAgain(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		if err := s.Register(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	db.Exec(t, `DELETE FROM dzhook.instances WHERE id = 'a'`)
	if _, _, err := s.Heartbeat(ctx, "a", time.Hour); err != nil {
		t.Fatal(err)
	}
	if peers, _, err := s.Heartbeat(ctx, "b", time.Hour); err != nil || peers != 1 {
		t.Errorf("b sees %d live peers (err %v), want 1: a, whose heartbeat put its row back", peers, err)
	}
}

// TestPeersWritesNothing: Peers counts the others alive as Heartbeat does,
// and keeps no one alive, the caller included.
func TestPeersWritesNothing(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		if err := s.Register(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	db.Exec(t, `UPDATE dzhook.instances SET heartbeat_at = now() - interval '1 minute' WHERE id = 'a'`)
	if peers, at, err := s.Peers(ctx, "a", time.Hour); err != nil || peers != 1 || time.Since(at).Abs() > time.Minute {
		t.Fatalf("a's Peers: %d alive at %v (err %v), want 1 (b) at about now", peers, at, err)
	}
	if peers, _, err := s.Peers(ctx, "b", 30*time.Second); err != nil || peers != 0 {
		t.Errorf("b's Peers: %d alive within 30s (err %v), want 0: a's check must not have refreshed its heartbeat", peers, err)
	}
	if peers, _, err := s.Peers(ctx, "b", time.Hour); err != nil || peers != 1 {
		t.Errorf("b's Peers: %d alive within an hour (err %v), want 1 (a)", peers, err)
	}
	if _, _, err := s.Heartbeat(ctx, "a", time.Hour); err != nil {
		t.Fatal(err)
	}
	if peers, _, err := s.Peers(ctx, "b", 30*time.Second); err != nil || peers != 1 {
		t.Errorf("b's Peers after a's heartbeat: %d alive within 30s (err %v), want 1", peers, err)
	}
}

// TestReadersHonourTheWritersHeartbeat: an instance with a long heartbeat
// (a minute: it writes its row every 2 s at most, but promises only two
// heartbeats) is alive, and keeps its deliveries, for a reader whose own
// heartbeat is a second, as long as its own windows say; past them it is
// taken over. A row of an older version (no interval) is judged by the
// reader's window alone.
func TestReadersHonourTheWritersHeartbeat(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, pendingBatch("00", "01", "02")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Heartbeat(ctx, "slow", 2*time.Minute); err != nil { // heartbeat 1m
		t.Fatal(err)
	}
	if got, err := s.Claim(ctx, crm(3), "slow", "t1", 3*time.Minute); err != nil || len(got) != 3 {
		t.Fatalf("slow claimed %d, %v; want 3", len(got), err)
	}
	if err := s.Register(ctx, "old"); err != nil { // no interval: an older version
		t.Fatal(err)
	}
	db.Exec(t, `UPDATE dzhook.instances SET heartbeat_at = now() - interval '30 seconds'`)
	// The fast reader (heartbeat 1s: alive within 2s, taken over after 3s).
	if peers, _, err := s.Peers(ctx, "fast", 2*time.Second); err != nil || peers != 1 {
		t.Errorf("fast sees %d alive (err %v), want 1: slow, whose row is 30s old of its 2m", peers, err)
	}
	if got, err := s.Claim(ctx, crm(3), "fast", "t2", 3*time.Second); err != nil || len(got) != 0 {
		t.Errorf("fast took over %d of slow's deliveries (err %v) 30s after its write: want none before 3m", len(got), err)
	}
	db.Exec(t, `UPDATE dzhook.instances SET heartbeat_at = now() - interval '4 minutes' WHERE id = 'slow'`)
	if peers, _, err := s.Peers(ctx, "fast", 2*time.Second); err != nil || peers != 0 {
		t.Errorf("fast sees %d alive (err %v), want 0: slow silent for 4m, old for 30s", peers, err)
	}
	// A claimer whose own row is stale, or missing, takes over nothing: an
	// outage of the journal just ended (every row stale, theirs too), the
	// claim held up by it.
	if err := s.Register(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `UPDATE dzhook.instances SET heartbeat_at = now() - interval '1 minute' WHERE id = 'fast'`)
	if got, err := s.Claim(ctx, crm(3), "fast", "t3", 3*time.Second); err != nil || len(got) != 0 {
		t.Errorf("fast, its own row a minute old, took over %d of slow's deliveries (err %v): want none", len(got), err)
	}
	if _, _, err := s.Heartbeat(ctx, "fast", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Claim(ctx, crm(3), "fast", "t4", 3*time.Second); err != nil || len(got) != 3 {
		t.Errorf("fast took over %d of slow's deliveries (err %v) after 4m: want all 3", len(got), err)
	}
}

// TestPruneKeepsLiveInstances: however short the retention, an instance
// row written within the hour stays; an older one goes.
func TestPruneKeepsLiveInstances(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	for _, id := range []string{"live", "recent", "gone"} {
		if err := s.Register(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	db.Exec(t, `UPDATE dzhook.instances SET heartbeat_at = now() - interval '10 minutes' WHERE id = 'recent'`,
		`UPDATE dzhook.instances SET heartbeat_at = now() - interval '2 hours' WHERE id = 'gone'`)
	if _, err := s.PruneStep(ctx, time.Now().Add(time.Minute), 1000); err != nil { // a cutoff past every row
		t.Fatal(err)
	}
	if peers, _, err := s.Peers(ctx, "x", 24*time.Hour); err != nil || peers != 2 {
		t.Errorf("%d instance rows left within a day (err %v), want 2: live and recent kept, gone pruned", peers, err)
	}
}

// TestSubscriptionStateTransitions: the journal keeps the last transition
// any process made, not a process's unchanged view written after it, and
// a disabled subscription stays disabled, whatever a process that has not
// learned of it writes, until a resume sets its state.
func TestSubscriptionStateTransitions(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	write := func(state Health, changed bool) {
		t.Helper()
		if err := s.Write(ctx, &Batch{Subs: []SubscriptionState{{ID: "crm", State: state, Changed: changed, LastStatus: 200}}}); err != nil {
			t.Fatal(err)
		}
	}
	want := func(step string, state Health) {
		t.Helper()
		states, err := s.SubscriptionStates(ctx)
		if err != nil || len(states) != 1 || states[0].State != state {
			t.Fatalf("%s: states %+v (err %v), want crm %s", step, states, err, state)
		}
	}
	write(Healthy, false)
	want("first row", Healthy)
	write(Failing, true)
	want("a transition", Failing)
	write(Healthy, false) // another process's view, unchanged
	want("another's unchanged view", Failing)
	write(Disabled, true)
	want("a 410", Disabled)
	write(Healthy, false)
	write(Failing, true) // a process that has not learned of the 410
	want("others while disabled", Disabled)
	if err := s.SetState(ctx, "crm", Healthy); err != nil { // resume
		t.Fatal(err)
	}
	want("resumed", Healthy)
}

// orderedBatch is n deliveries of subscription crm under ordering key
// key, at positions from+1..from+n, pending and due, none attempted.
func orderedBatch(key string, from, n int) *Batch {
	b := &Batch{}
	now := time.Now().Add(-time.Second)
	for i := from + 1; i <= from+n; i++ {
		id := fmt.Sprintf("%s_%06d", key, i)
		b.Events = append(b.Events, EventRow{ID: "whk_" + id, Type: "request.updated", Body: []byte(`{}`), OccurredAt: now})
		b.Deliveries = append(b.Deliveries, DeliveryRow{ID: "dlv_" + id, EventID: "whk_" + id, SubscriptionID: "crm",
			EventType: "request.updated", State: "pending", NextAttemptAt: now, CreatedAt: now,
			Ordered: true, OrderingKey: key, Position: int64(i)})
	}
	return b
}

// dueOf counts key's deliveries the claim reads: pending and due.
func dueOf(t *testing.T, db *pgtest.DB, key string) int {
	t.Helper()
	return queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE ordering_key = '`+key+`' AND state = 'pending' AND next_attempt_at <= now()`)
}

// TestStateChangeOfAnEarlierBatch: a subscription's state change whose
// batch began before the journal's last change (it waited for a lock
// meanwhile) does not undo that change, and is not told.
func TestStateChangeOfAnEarlierBatch(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, pendingBatch("00")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetState(ctx, "crm", Healthy); err != nil {
		t.Fatal(err)
	}
	tx := db.Hold(t, `SELECT 1 FROM dzhook.deliveries WHERE id = 'dlv_00' FOR UPDATE`)
	// The earlier batch: it begins, then waits for the delivery's lock
	// before it gets to the subscription.
	earlier := make(chan error, 1)
	go func() {
		earlier <- s.Write(ctx, &Batch{
			Updates:       []DeliveryUpdate{{ID: "dlv_00", State: "pending", Attempts: 1, NextAttemptAt: time.Now(), LastStatus: 200, LastAttemptAt: time.Now()}},
			Subs:          []SubscriptionState{{ID: "crm", State: Healthy, Changed: true, LastStatus: 200}},
			Notifications: []NotificationRow{{SubscriptionID: "crm", Kind: "recovered", Body: []byte(`{}`)}},
		})
	}()
	watch := db.Connect(t)
	testutil.Eventually(t, 10*time.Second, "the earlier batch waiting for the lock", func() bool {
		var n int
		_ = watch.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND backend_type = 'client backend'`).Scan(&n)
		return n > 0
	})
	// The later change, committed first.
	if err := s.Write(ctx, &Batch{
		Subs:          []SubscriptionState{{ID: "crm", State: Failing, Changed: true, LastStatus: 503}},
		Notifications: []NotificationRow{{SubscriptionID: "crm", Kind: "failing", Body: []byte(`{}`)}},
	}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-earlier; err != nil {
		t.Fatal(err)
	}
	if got := crmState(t, s); got != Failing {
		t.Errorf("journal's state %s, want failing: the later change", got)
	}
	if got := notified(t, db, "recovered"); got != 0 {
		t.Errorf("%d recovered notifications for a change the journal did not take, want 0", got)
	}
	if got := notified(t, db, "failing"); got != 1 {
		t.Errorf("%d failing notifications, want 1", got)
	}
}

// TestLastAnswerIsTheLatestByItsTime: two processes' answers reach the
// journal in the other order than they were given (one's batch held up
// behind the other's): the journal keeps the later answer's status and
// error, not the last written (a process's 200 written after another's
// later 503 left the row failing with a 200, and every replica showed
// that: TestAdoptedFailingIsExplained failed under load).
func TestLastAnswerIsTheLatestByItsTime(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	ok := time.Now().Add(-time.Second).UTC().Truncate(time.Microsecond)
	failed, olderFail := ok.Add(500*time.Millisecond), ok.Add(-500*time.Millisecond)
	for _, st := range []SubscriptionState{
		{ID: "crm", State: Failing, Changed: true, LastStatus: 503, LastError: "HTTP 503", LastFailureAt: failed}, // written first
		{ID: "crm", State: Healthy, LastStatus: 200, LastSuccessAt: ok},                                           // given before it
		{ID: "crm", State: Healthy, LastStatus: 401, LastError: "HTTP 401", LastFailureAt: olderFail},             // before both
	} {
		if err := s.Write(ctx, &Batch{Subs: []SubscriptionState{st}}); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := s.SubscriptionStates(ctx)
	if err != nil || len(rows) != 1 {
		t.Fatalf("journal's states %+v (%v), want crm's alone", rows, err)
	}
	got := rows[0]
	if got.LastStatus != 503 || got.LastError != "HTTP 503" || !got.LastFailureAt.Equal(failed) || !got.LastSuccessAt.Equal(ok) {
		t.Errorf("last answer: status %d, error %q, failure at %v, success at %v; want 503, \"HTTP 503\", %v, %v",
			got.LastStatus, got.LastError, got.LastFailureAt, got.LastSuccessAt, failed, ok)
	}
}

// changeState journals a process's change of crm's state, made at at,
// with the notification that tells it.
func changeState(t *testing.T, s *Store, state Health, kind string, at time.Time) {
	t.Helper()
	status := 503
	if state == Disabled {
		status = 410
	}
	if err := s.Write(context.Background(), &Batch{
		Subs:          []SubscriptionState{{ID: "crm", State: state, Changed: true, ChangedAt: at, LastStatus: status}},
		Notifications: []NotificationRow{{SubscriptionID: "crm", Kind: kind, Body: []byte(`{}`)}},
	}); err != nil {
		t.Fatal(err)
	}
}

// crmState is crm's state in the journal.
func crmState(t *testing.T, s *Store) Health {
	t.Helper()
	rows, err := s.SubscriptionStates(context.Background())
	if err != nil || len(rows) != 1 || rows[0].ID != "crm" {
		t.Fatalf("journal's states %+v (%v), want crm's alone", rows, err)
	}
	return rows[0].State
}

// notified counts the notifications of kind.
func notified(t *testing.T, db *pgtest.DB, kind string) int {
	t.Helper()
	return queryCount(t, db, `SELECT count(*) FROM dzhook.notifications WHERE kind = '`+kind+`'`)
}

// TestStateChangeHeldUp: a change is placed at the time the process made
// it, not at the time its batch was written: a batch held up (retried
// while the journal was unreachable, say) whose change came before
// another process's does not undo that later change, nor is it told.
func TestStateChangeHeldUp(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	now := time.Now()
	changeState(t, s, Failing, "failing", now.Add(-10*time.Second))
	// Another process saw the receiver recover, and wrote that first.
	changeState(t, s, Healthy, "recovered", now)
	// This process saw it fail before that; its batch was held up and
	// comes last.
	changeState(t, s, Failing, "failing", now.Add(-2*time.Second))
	if got := crmState(t, s); got != Healthy {
		t.Errorf("journal's state %s, want healthy: the later change", got)
	}
	if got := notified(t, db, "failing"); got != 1 {
		t.Errorf("%d failing notifications, want 1: the held-up change was not the journal's", got)
	}
	if got := notified(t, db, "recovered"); got != 1 {
		t.Errorf("%d recovered notifications, want 1", got)
	}
	// A change is recorded at its time: one made three seconds ago reads
	// three seconds old.
	if err := s.Write(ctx, &Batch{
		Subs: []SubscriptionState{{ID: "erp", State: Failing, Changed: true, ChangedAt: time.Now().Add(-3 * time.Second), LastStatus: 503}},
	}); err != nil {
		t.Fatal(err)
	}
	var age float64
	if err := db.Connect(t).QueryRow(ctx, `SELECT extract(epoch FROM now() - state_changed_at) FROM dzhook.subscriptions WHERE id = 'erp'`).Scan(&age); err != nil {
		t.Fatal(err)
	}
	if age < 2.9 || age > 60 {
		t.Errorf("the change made 3 s ago is recorded %.2f s ago", age)
	}
}

// TestDisableBeatsALaterHealthChange: a 410 disables the subscription
// even when another process, which has not seen it, wrote a health
// change made after the 410 first: a disable is ordered against a
// resume, not against health changes, and told.
func TestDisableBeatsALaterHealthChange(t *testing.T) {
	s, db := newStore(t)
	gone := time.Now().Add(-time.Second)
	changeState(t, s, Failing, "failing", time.Now())
	changeState(t, s, Disabled, "disabled", gone)
	if got := crmState(t, s); got != Disabled {
		t.Errorf("journal's state %s, want disabled", got)
	}
	if got := notified(t, db, "disabled"); got != 1 {
		t.Errorf("%d disabled notifications, want 1", got)
	}
}

// TestHeldUpDisableAfterResume: a disable whose batch was held up past
// an operator's resume, though made before it, does not disable the
// subscription again; one made after the resume does.
func TestHeldUpDisableAfterResume(t *testing.T) {
	s, db := newStore(t)
	before := time.Now().Add(-time.Second)
	changeState(t, s, Disabled, "disabled", before.Add(-time.Second))
	if err := s.SetState(context.Background(), "crm", Healthy); err != nil { // the operator resumes
		t.Fatal(err)
	}
	changeState(t, s, Disabled, "disabled", before) // another process's, made before the resume, written after it
	if got := crmState(t, s); got != Healthy {
		t.Fatalf("state %s after a disable made before the resume, want healthy", got)
	}
	if got := notified(t, db, "disabled"); got != 1 {
		t.Errorf("%d disabled notifications, want 1: the held-up disable was not the journal's", got)
	}
	changeState(t, s, Disabled, "disabled", time.Now()) // the receiver still answers 410
	if got := crmState(t, s); got != Disabled {
		t.Fatalf("state %s after a disable made after the resume, want disabled", got)
	}
	if got := notified(t, db, "disabled"); got != 2 {
		t.Errorf("%d disabled notifications, want 2", got)
	}
}

// failFirstAttempt records head's first attempt answered 503, its retry
// due in an hour: the deliveries of its key behind it wait for it.
func failFirstAttempt(t *testing.T, s *Store, head string) {
	t.Helper()
	if err := s.Write(context.Background(), &Batch{
		Updates:  []DeliveryUpdate{{ID: head, State: "pending", Attempts: 1, NextAttemptAt: time.Now().Add(time.Hour), LastStatus: 503, LastAttemptAt: time.Now()}},
		Attempts: []AttemptRow{{DeliveryID: head, Attempt: 1, At: time.Now(), Trigger: "auto", StatusCode: 503}},
	}); err != nil {
		t.Fatal(err)
	}
}

// TestParkTellsALockedHead: Park that finds deliveries behind a waiting
// head it cannot lock (another transaction records the head's outcome)
// says so, so that its caller calls again soon instead of waiting longer
// as when there is nothing to park.
func TestParkTellsALockedHead(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, orderedBatch("k", 0, 4)); err != nil {
		t.Fatal(err)
	}
	head := "dlv_k_000001"
	failFirstAttempt(t, s, head)
	tx := db.Hold(t, `SELECT 1 FROM dzhook.deliveries WHERE id = '`+head+`' FOR UPDATE`)
	if n, locked, err := s.Park(ctx, []string{"crm"}, time.Minute, 100); err != nil || n != 0 || !locked {
		t.Fatalf("Park beside a locked head: parked %d, locked %v (err %v); want 0, true", n, locked, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n, locked, err := s.Park(ctx, []string{"crm"}, time.Minute, 100); err != nil || n != 3 || locked {
		t.Fatalf("Park once the head is free: parked %d, locked %v (err %v); want 3, false", n, locked, err)
	}
	if n, locked, err := s.Park(ctx, []string{"crm"}, time.Minute, 100); err != nil || n != 0 || locked {
		t.Fatalf("Park with nothing left: parked %d, locked %v (err %v); want 0, false", n, locked, err)
	}
}

// TestParkWaitsForNoLock: Park and Unpark leave a delivery another
// transaction holds for a later call instead of waiting for it. Waiting,
// Park deadlocked with a replay's cancel, which holds the deliveries it
// cancels and then wants the head Park holds: here a transaction of the
// test takes those locks in that order, and without SKIP LOCKED
// PostgreSQL aborts one of the two after deadlock_timeout.
func TestParkWaitsForNoLock(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, orderedBatch("k", 0, 5)); err != nil {
		t.Fatal(err)
	}
	head := "dlv_k_000001"
	failFirstAttempt(t, s, head)
	// The cancel's transaction: it holds a delivery behind the head.
	tx := db.Hold(t, `SELECT 1 FROM dzhook.deliveries WHERE id = 'dlv_k_000003' FOR UPDATE`)
	pctx, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	parked := make(chan error, 1)
	go func() {
		n, _, err := s.Park(pctx, []string{"crm"}, time.Minute, 100)
		if err == nil && n != 3 {
			err = fmt.Errorf("parked %d, want the 3 behind the head that no one holds", n)
		}
		parked <- err
	}()
	// Once Park has returned, or waits: the cancel goes on with the head.
	var perr error
	returned := false
	watch := db.Connect(t)
	testutil.Eventually(t, 10*time.Second, "Park returned or waiting for a lock", func() bool {
		select {
		case perr = <-parked:
			returned = true
			return true
		default:
		}
		var waiting int
		_ = watch.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%), behind AS (%'`).Scan(&waiting)
		return waiting > 0
	})
	if _, err := tx.Exec(ctx, `UPDATE dzhook.deliveries SET state = 'cancelled', next_attempt_at = NULL WHERE id = $1`, head); err != nil {
		t.Fatalf("the cancel's update of the head: %v", err)
	}
	if !returned {
		perr = <-parked
	}
	if perr != nil {
		t.Fatalf("Park beside a transaction holding a delivery behind the head: %v", perr)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE parked_behind = '`+head+`'`); got != 3 {
		t.Fatalf("%d parked behind the head, want 3", got)
	}

	// The head is finished: Unpark brings them back, but not one another
	// transaction holds, until it lets go.
	tx = db.Hold(t, `SELECT 1 FROM dzhook.deliveries WHERE id = 'dlv_k_000004' FOR UPDATE`)
	if n, err := s.Unpark(pctx, 100); err != nil || n != 2 {
		t.Errorf("Unpark beside a transaction holding one of the 3: %d (err %v), want the other 2", n, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Unpark(pctx, 100); err != nil || n != 1 {
		t.Errorf("Unpark after it let go: %d (err %v), want 1", n, err)
	}
	if got := dueOf(t, db, "k"); got != 4 {
		t.Errorf("%d of k's deliveries due after the head was cancelled, want 4", got)
	}
}

// TestParkBehindWaitingHead: the deliveries behind a head waiting for its
// retry leave the claim's way (Park) with the head's due time; they stay
// parked when its next attempt fails, and are due again (Unpark), in
// their order, when it succeeds. Behind a head being attempted, or one
// never attempted, nothing is parked; other keys are not touched.
func TestParkBehindWaitingHead(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	const behind = 3000
	for _, b := range []*Batch{orderedBatch("k", 0, behind+1), orderedBatch("busy", 0, 3), orderedBatch("fresh", 0, 3)} {
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Register(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	// k's head failed its first attempt and waits an hour; busy's head is
	// being attempted by a (live); fresh's head is due.
	retry := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	head := "dlv_k_000001"
	if err := s.Write(ctx, &Batch{
		Updates: []DeliveryUpdate{
			{ID: head, State: "pending", Attempts: 1, NextAttemptAt: retry, LastStatus: 503, LastAttemptAt: time.Now()},
			{ID: "dlv_busy_000001", State: "pending", Attempts: 1, NextAttemptAt: time.Now().Add(time.Hour), Owner: "a", LastStatus: 503, LastAttemptAt: time.Now()},
		},
		Attempts: []AttemptRow{{DeliveryID: head, Attempt: 1, At: time.Now(), Trigger: "auto", StatusCode: 503},
			{DeliveryID: "dlv_busy_000001", Attempt: 1, At: time.Now(), Trigger: "auto", StatusCode: 503}},
	}); err != nil {
		t.Fatal(err)
	}
	if got := dueOf(t, db, "k"); got != behind {
		t.Fatalf("before parking, %d of k's deliveries are due, want %d", got, behind)
	}
	n, _, err := s.Park(ctx, []string{"crm"}, time.Minute, 100000)
	if err != nil || n != behind {
		t.Fatalf("Park parked %d (err %v), want the %d behind k's head", n, err, behind)
	}
	if got := dueOf(t, db, "k"); got != 0 {
		t.Errorf("after parking, %d of k's deliveries are still due", got)
	}
	if got := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE ordering_key = 'k' AND parked_behind = '`+head+`' AND next_attempt_at = '`+retry.Format(time.RFC3339Nano)+`'`); got != behind {
		t.Errorf("%d deliveries parked behind %s until its retry, want %d", got, head, behind)
	}
	if got := dueOf(t, db, "busy") + dueOf(t, db, "fresh"); got != 2+3 {
		t.Errorf("keys busy and fresh: %d due after parking, want 5 (nothing parked behind a head being attempted or due)", got)
	}
	if n, locked, err := s.Park(ctx, []string{"crm"}, time.Minute, 100000); err != nil || n != 0 || locked {
		t.Errorf("a second Park parked %d (locked %v, err %v), want 0: nothing left to park", n, locked, err)
	}
	got, err := s.Claim(ctx, crm(100), "a", "t1", time.Minute)
	if ids := claimedIDs(got); err != nil || !slices.Equal(ids, []string{"dlv_fresh_000001", "dlv_fresh_000002", "dlv_fresh_000003"}) {
		t.Fatalf("claim beside the parked key: %v (err %v), want only fresh's head and its run", ids, err)
	}

	// The head's second attempt fails: they stay parked (due at its
	// earlier time, when they are parked behind its next one), and
	// Unpark leaves them.
	later := retry.Add(time.Hour)
	if err := s.Write(ctx, &Batch{
		Updates:  []DeliveryUpdate{{ID: head, State: "pending", Attempts: 2, NextAttemptAt: later, LastStatus: 503, LastAttemptAt: time.Now()}},
		Attempts: []AttemptRow{{DeliveryID: head, Attempt: 2, At: time.Now(), Trigger: "manual", StatusCode: 503}},
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Unpark(ctx, 100000); err != nil || n != 0 {
		t.Errorf("Unpark behind a head still waiting: %d (err %v), want 0", n, err)
	}
	// Its third succeeds: Unpark makes them due again, and the next of k
	// is its head, claimed with the run behind it.
	if err := s.Write(ctx, &Batch{
		Updates:  []DeliveryUpdate{{ID: head, State: "delivered", Attempts: 3, LastStatus: 200, LastAttemptAt: time.Now()}},
		Attempts: []AttemptRow{{DeliveryID: head, Attempt: 3, At: time.Now(), Trigger: "manual", StatusCode: 200}},
	}); err != nil {
		t.Fatal(err)
	}
	if got := dueOf(t, db, "k"); got != 0 {
		t.Errorf("before Unpark, %d of k's deliveries are due", got)
	}
	if n, err := s.Unpark(ctx, 1000); err != nil || n != 1000 {
		t.Errorf("Unpark moved %d (err %v), want its limit, 1000", n, err)
	}
	if n, err := s.Unpark(ctx, 100000); err != nil || n != behind-1000 {
		t.Errorf("Unpark moved %d (err %v), want the other %d", n, err, behind-1000)
	}
	if got := dueOf(t, db, "k"); got != behind {
		t.Errorf("after the head was delivered, %d of k's deliveries are due, want %d", got, behind)
	}
	if got := queryCount(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE parked_behind IS NOT NULL`); got != 0 {
		t.Errorf("%d deliveries still parked", got)
	}
	got, err = s.Claim(ctx, crm(100), "a", "t2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 2; i <= 101; i++ {
		want = append(want, fmt.Sprintf("dlv_k_%06d", i))
	}
	if ids := claimedIDs(got); !slices.Equal(ids, want) {
		t.Errorf("claimed of k %v, want its next 100 in order (its head and a run)", ids)
	}
}

// claimedIDs lists what a claim took, in position order.
func claimedIDs(got []Claimed) []string {
	slices.SortFunc(got, func(a, b Claimed) int {
		return cmp.Or(cmp.Compare(a.OrderingKey, b.OrderingKey), cmp.Compare(a.Position, b.Position))
	})
	ids := make([]string, len(got))
	for i, c := range got {
		ids[i] = c.ID
	}
	return ids
}

// TestClaimRun: behind an ordered head, the claim takes the key's next
// deliveries while they are claimable, in order and without a gap, within
// the want's limit after its heads: a delivery held, owned by a live
// instance, not due or a manual retry ends the run; a failed one is not
// in the way (it let its key move on).
func TestClaimRun(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	for _, key := range []string{"a", "b", "c", "d", "e"} {
		if err := s.Write(ctx, orderedBatch(key, 0, 6)); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"x", "y"} {
		if err := s.Register(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	db.Exec(t, `UPDATE dzhook.deliveries SET state = 'failed', next_attempt_at = NULL WHERE id = 'dlv_a_000003'`,
		`UPDATE dzhook.deliveries SET state = 'held' WHERE id = 'dlv_b_000004'`,
		`UPDATE dzhook.deliveries SET owner = 'y' WHERE id = 'dlv_c_000003'`,
		`UPDATE dzhook.deliveries SET next_attempt_at = now() + interval '1 hour' WHERE id = 'dlv_d_000005'`,
		`UPDATE dzhook.deliveries SET manual = true WHERE id = 'dlv_e_000002'`)
	got, err := s.Claim(ctx, []ClaimWant{{Subscription: "crm", Limit: 100, Heads: 5, Runs: true}}, "x", "t1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"dlv_a_000001", "dlv_a_000002", "dlv_a_000004", "dlv_a_000005", "dlv_a_000006",
		"dlv_b_000001", "dlv_b_000002", "dlv_b_000003",
		"dlv_c_000001", "dlv_c_000002",
		"dlv_d_000001", "dlv_d_000002", "dlv_d_000003", "dlv_d_000004",
		"dlv_e_000001",
	}
	if ids := claimedIDs(got); !slices.Equal(ids, want) {
		t.Errorf("claimed %v\nwant    %v", ids, want)
	}
	// The limit counts heads first, then runs head by head.
	db.Exec(t, `UPDATE dzhook.deliveries SET owner = NULL, claim = NULL`)
	got, err = s.Claim(ctx, []ClaimWant{{Subscription: "crm", Limit: 8, Heads: 2, Runs: true}}, "x", "t2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 8 {
		t.Fatalf("claimed %v, want 8", claimedIDs(got))
	}
	heads, runOf := 0, map[string][]int64{}
	for _, c := range got {
		runOf[c.OrderingKey] = append(runOf[c.OrderingKey], c.Position)
	}
	for key, pos := range runOf {
		heads++
		slices.Sort(pos)
		if pos[0] != 1 {
			t.Errorf("key %s: claimed positions %v, not from its head", key, pos)
		}
	}
	if heads != 2 {
		t.Errorf("claimed of %d keys %v, want 2 heads and their runs", heads, claimedIDs(got))
	}
	// A delivery another transaction holds ends its run: what follows it
	// is not taken.
	db.Exec(t, `UPDATE dzhook.deliveries SET owner = NULL, claim = NULL`)
	conn := db.Connect(t)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT 1 FROM dzhook.deliveries WHERE id = 'dlv_a_000004' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	got, err = s.Claim(ctx, []ClaimWant{{Subscription: "crm", Limit: 100, Heads: 1, Runs: true}}, "x", "t3", time.Minute)
	if ids := claimedIDs(got); err != nil || !slices.Equal(ids, []string{"dlv_a_000001", "dlv_a_000002"}) {
		t.Errorf("claimed %v (err %v) beside a held dlv_a_000004, want dlv_a_000001 and dlv_a_000002", ids, err)
	}
}

// TestParkedFollowCancelledReplay: deliveries parked behind a replayed
// delivery are due again when the replay is cancelled.
func TestParkedFollowCancelledReplay(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, orderedBatch("k", 0, 4)); err != nil {
		t.Fatal(err)
	}
	head := "dlv_k_000001"
	db.Exec(t, `INSERT INTO dzhook.replays (id, subscription_id, since, until, patterns, types, matched)
			VALUES ('rpl_1', 'crm', now() - interval '1 day', now(), '{}', '{}', 1)`,
		`UPDATE dzhook.deliveries SET replay_id = 'rpl_1', attempts = 1, next_attempt_at = now() + interval '1 hour' WHERE id = '`+head+`'`)
	if n, _, err := s.Park(ctx, []string{"crm"}, time.Minute, 100); err != nil || n != 3 {
		t.Fatalf("Park parked %d (err %v), want 3", n, err)
	}
	if _, _, err := s.CancelReplay(ctx, "crm", "rpl_1", "test", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := dueOf(t, db, "k"); got != 3 {
		t.Errorf("after the replay's cancel, %d of k's deliveries are due, want 3", got)
	}
}

// BenchmarkClaimBehindWaitingHead measures a claim round of an ordered
// subscription whose one key has 200,000 due deliveries behind a head
// waiting for its retry, and another key with one due delivery: as the
// journal is before Park (parked=false) and after.
func BenchmarkClaimBehindWaitingHead(b *testing.B) {
	for _, parked := range []bool{false, true} {
		b.Run(fmt.Sprintf("parked=%v", parked), func(b *testing.B) {
			s, db := newStore(b)
			ctx := context.Background()
			db.Exec(b, `INSERT INTO dzhook.events (id, type, body, occurred_at) VALUES ('whk_1', 'request.updated', '{}', now())`,
				`INSERT INTO dzhook.deliveries (id, event_id, subscription_id, event_type, state, attempts, next_attempt_at, created_at, updated_at, ordering_key, position)
				 SELECT 'dlv_k_' || lpad(g::text, 7, '0'), 'whk_1', 'crm', 'request.updated', 'pending',
				        CASE WHEN g = 1 THEN 1 ELSE 0 END, CASE WHEN g = 1 THEN now() + interval '1 hour' ELSE now() - interval '1 second' END,
				        now(), now(), 'k', g
				   FROM generate_series(1, 200001) g`,
				`INSERT INTO dzhook.deliveries (id, event_id, subscription_id, event_type, state, next_attempt_at, created_at, updated_at, ordering_key, position)
				 VALUES ('dlv_j', 'whk_1', 'crm', 'request.updated', 'pending', now() - interval '1 second', now(), now(), 'j', 1)`,
				`ANALYZE dzhook.deliveries`)
			if err := s.Register(ctx, "a"); err != nil {
				b.Fatal(err)
			}
			if parked {
				if n, _, err := s.Park(ctx, []string{"crm"}, time.Minute, 1_000_000); err != nil || n != 200000 {
					b.Fatalf("parked %d, %v", n, err)
				}
			}
			b.ResetTimer()
			for i := range b.N {
				got, err := s.Claim(ctx, []ClaimWant{{Subscription: "crm", Limit: 100}}, "a", fmt.Sprint("t", i), time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				if i == 0 && len(got) != 1 {
					b.Fatalf("claimed %d, want j's one", len(got))
				}
			}
		})
	}
}

// TestNotificationOncePerTransition: processes sharing the journal each
// report the transitions they see; the admin is told of a subscription's
// state change once, by the batch that changed the journal's state. A
// notification about dzhook itself is always kept.
func TestNotificationOncePerTransition(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	report := func(state Health, kind string) {
		t.Helper()
		b := &Batch{Subs: []SubscriptionState{{ID: "crm", State: state, Changed: true, LastStatus: 503}},
			Notifications: []NotificationRow{{SubscriptionID: "crm", Kind: kind, Body: []byte(`{}`)}}}
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	told := func(step, want string) {
		t.Helper()
		var kinds string
		if err := db.Connect(t).QueryRow(ctx, `SELECT coalesce(string_agg(kind, ',' ORDER BY id), '') FROM dzhook.notifications`).Scan(&kinds); err != nil {
			t.Fatal(err)
		}
		if kinds != want {
			t.Errorf("%s: notifications %q, want %q", step, kinds, want)
		}
	}
	if err := s.Write(ctx, &Batch{Subs: []SubscriptionState{{ID: "crm", State: Healthy, LastStatus: 200}}}); err != nil {
		t.Fatal(err)
	}
	report(Failing, "failing") // process a
	report(Failing, "failing") // process b, the same receiver
	told("two processes saw it fail", "failing")
	report(Healthy, "recovered")
	report(Healthy, "recovered")
	told("two processes saw it recover", "failing,recovered")
	report(Disabled, "disabled")
	report(Failing, "failing") // one that has not learned of the 410
	report(Disabled, "disabled")
	told("a 410", "failing,recovered,disabled")
	if err := s.Write(ctx, &Batch{Notifications: []NotificationRow{{Kind: "journal_lag", Body: []byte(`{}`)}, {Kind: "journal_lag", Body: []byte(`{}`)}}}); err != nil {
		t.Fatal(err)
	}
	told("system notifications", "failing,recovered,disabled,journal_lag,journal_lag")

	// A flap within one batch (the writer keeps one state row per
	// subscription, the last): every transition this process saw is told.
	db.Exec(t, `DELETE FROM dzhook.notifications`)
	if err := s.SetState(ctx, "crm", Healthy); err != nil {
		t.Fatal(err)
	}
	flap := func(final Health, kinds ...string) {
		t.Helper()
		b := &Batch{Subs: []SubscriptionState{{ID: "crm", State: final, Changed: true, LastStatus: 200}}}
		for _, k := range kinds {
			b.Notifications = append(b.Notifications, NotificationRow{SubscriptionID: "crm", Kind: k, Body: []byte(`{}`)})
		}
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	flap(Healthy, "failing", "recovered")
	told("failing and recovered in one batch", "failing,recovered")
	flap(Failing, "failing", "recovered", "failing")
	told("three transitions in one batch", "failing,recovered,failing,recovered,failing")
}

// TestCompletionKeepsTimersDueBeforeIt: a completed SLA's change (Due:
// its completion) cancels the unfired timers due after the completion
// and keeps those due before, which the clock then fires: the SLA was
// breached (or warned) first.
func TestCompletionKeepsTimersDueBeforeIt(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	target := now.Add(-time.Minute)
	warning := TimerRow{SLAID: "7", Kind: "warning:75", TargetAt: now.Add(time.Hour), FireAt: now.Add(30 * time.Minute), RequestID: "7", StartedAt: now.Add(-time.Hour)}
	breach := TimerRow{SLAID: "7", Kind: "breach", TargetAt: target, FireAt: target, RequestID: "7", StartedAt: now.Add(-time.Hour)}
	later := TimerRow{SLAID: "7", Kind: "warning:90", TargetAt: target, FireAt: now.Add(time.Minute), RequestID: "7", StartedAt: now.Add(-time.Hour)}
	if err := s.Write(ctx, &Batch{Timers: []TimerChange{{SLAID: "7", Keep: target, Arm: []TimerRow{breach, later, warning}}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, &Batch{Timers: []TimerChange{{SLAID: "7", Due: now}}}); err != nil {
		t.Fatal(err)
	}
	due, err := s.ClaimTimers(ctx, 10, time.Minute)
	if err != nil || len(due) != 1 || due[0].Kind != "breach" {
		t.Fatalf("claimed %v (%v), want the breach due before the completion", due, err)
	}
	var left int
	if err := s.pool.QueryRow(ctx, s.q(`SELECT count(*) FROM {{schema}}.sla_timers`)).Scan(&left); err != nil || left != 1 {
		t.Fatalf("%d timers left (%v), want the breach only: those due after the completion are cancelled", left, err)
	}
}

// TestBootstrapLeavesSLAsTheStreamArmedSince: the first start's scan
// arms the SLAs it read as the stream would, except those with a timer
// armed since it read (TimerMark before its page): a target the stream
// moved between the scan's read and its write keeps the new target's
// timers (the scan's write replaced them with the old target's, which
// the clock then cancelled). An SLA with an older timer of another
// target (a journal that served an earlier slot) is armed anew.
func TestBootstrapLeavesSLAsTheStreamArmedSince(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	old, moved, stale := now.Add(time.Hour), now.Add(2*time.Hour), now.Add(-time.Hour)
	breach := func(sla string, target time.Time) TimerRow {
		return TimerRow{SLAID: sla, Kind: "breach", TargetAt: target, FireAt: target, RequestID: sla, StartedAt: now.Add(-2 * time.Hour)}
	}
	// Before the scan: SLA 9's timer of a target it no longer has.
	if err := s.Write(ctx, &Batch{Timers: []TimerChange{{SLAID: "9", Keep: stale, Arm: []TimerRow{breach("9", stale)}}}}); err != nil {
		t.Fatal(err)
	}
	mark, err := s.TimerMark(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The scan reads its page; meanwhile the stream moves SLA 7.
	if err := s.Write(ctx, &Batch{Timers: []TimerChange{{SLAID: "7", Keep: moved, Arm: []TimerRow{breach("7", moved)}}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.ArmBootstrap(ctx, "dzhook", []TimerChange{
		{SLAID: "7", Keep: old, Arm: []TimerRow{breach("7", old)}},
		{SLAID: "8", Keep: old, Arm: []TimerRow{breach("8", old)}},
		{SLAID: "9", Keep: old, Arm: []TimerRow{breach("9", old)}},
	}, true, mark, mark); err != nil {
		t.Fatal(err)
	}
	rows, err := s.pool.Query(ctx, s.q(`SELECT sla_id, target_at FROM {{schema}}.sla_timers ORDER BY sla_id`))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]time.Time{}
	for rows.Next() {
		var id string
		var at time.Time
		if err := rows.Scan(&id, &at); err != nil {
			t.Fatal(err)
		}
		got[id] = append(got[id], at.UTC())
	}
	one := func(id string, want time.Time) bool { return len(got[id]) == 1 && got[id][0].Equal(want) }
	if !one("7", moved) || !one("8", old) || !one("9", old) {
		t.Fatalf("timers after the scan: %v; want SLA 7 at its moved target %s only, SLAs 8 and 9 at %s", got, moved, old)
	}
	if done, err := s.SLABootstrapped(ctx, "dzhook"); err != nil || !done {
		t.Fatalf("SLABootstrapped = %v, %v", done, err)
	}
}

// TestPruneSparesAManualRetryInFlight: a finished delivery older than the
// retention that an operator's retry has claimed (a live owner, its state
// unchanged) is left to the attempt; deleted under it, the attempt's row
// stayed for ever without its delivery (found by a review, 2026-12-06).
// One a dead instance owns is pruned.
func TestPruneSparesAManualRetryInFlight(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	old := time.Now().Add(-40 * 24 * time.Hour)
	b := batchOf(0, 2)
	for i := range b.Deliveries {
		b.Deliveries[i].CreatedAt, b.Events[i].OccurredAt, b.Deliveries[i].State = old, old, Failed
		b.Deliveries[i].LastAttemptAt = old
	}
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	for _, i := range []string{"live", "dead"} {
		if err := s.Register(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.ClaimForRetry(ctx, b.Deliveries[0].ID, "live", "tok1", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimForRetry(ctx, b.Deliveries[1].ID, "dead", "tok2", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.instances SET heartbeat_at = now() - interval '1 hour' WHERE id = 'dead'`)); err != nil {
		t.Fatal(err)
	}
	p, err := s.PruneStep(ctx, time.Now().Add(-30*24*time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	if p.Deliveries != 1 {
		t.Fatalf("pruned %d deliveries, want the dead instance's only", p.Deliveries)
	}
	var left string
	if err := s.pool.QueryRow(ctx, s.q(`SELECT id FROM {{schema}}.deliveries`)).Scan(&left); err != nil || left != b.Deliveries[0].ID {
		t.Fatalf("left %q (%v), want the delivery being retried, %s", left, err, b.Deliveries[0].ID)
	}
}

// TestNotificationsInOrderPerSubscription: a subscription's notification
// waits while an earlier one of it is unsent (backing off after a failed
// send): after a notify.url outage a stale "failing" reached the channel
// after the "recovered" that followed it. Other subscriptions' go on.
func TestNotificationsInOrderPerSubscription(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	db.Exec(t, `INSERT INTO dzhook.notifications (subscription_id, kind, body) VALUES
		('crm', 'failing', '{}'), ('crm', 'recovered', '{}'), ('hr', 'failing', '{}')`)
	kinds := func(ns []Notification) string {
		var k []string
		for _, n := range ns {
			k = append(k, n.SubscriptionID+":"+n.Kind)
		}
		return strings.Join(k, ",")
	}
	got, err := s.ClaimNotifications(ctx, 10, time.Minute)
	if err != nil || kinds(got) != "crm:failing,hr:failing" {
		t.Fatalf("first claim %q, %v; want each subscription's first", kinds(got), err)
	}
	// crm's first failed to send and backs off; its second is due.
	if err := s.NotificationSent(ctx, got[0].ID, errors.New("notify.url: 503"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `UPDATE dzhook.notifications SET next_attempt_at = now() WHERE kind = 'recovered'`)
	if got, _ := s.ClaimNotifications(ctx, 10, time.Minute); len(got) != 0 {
		t.Errorf("claimed %q while crm's earlier one is unsent", kinds(got))
	}
	db.Exec(t, `UPDATE dzhook.notifications SET next_attempt_at = now() WHERE kind = 'failing' AND subscription_id = 'crm'`)
	got, _ = s.ClaimNotifications(ctx, 10, time.Minute)
	if kinds(got) != "crm:failing" {
		t.Fatalf("claim %q, want crm's failing first", kinds(got))
	}
	if err := s.NotificationSent(ctx, got[0].ID, nil, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ClaimNotifications(ctx, 10, time.Minute); kinds(got) != "crm:recovered" {
		t.Errorf("claim %q, want crm's recovered once its failing is sent", kinds(got))
	}

	// A notification given up (a century ahead: the notifier's mark)
	// holds nothing back, and system notifications (no subscription) do
	// not hold each other back: one given up silenced every later alert.
	db.Exec(t, `DELETE FROM dzhook.notifications`)
	db.Exec(t, `INSERT INTO dzhook.notifications (subscription_id, kind, body, next_attempt_at) VALUES
		('crm', 'failing', '{}', now() + interval '100 years'), ('crm', 'recovered', '{}', now()),
		('', 'stream.gap', '{}', now() + interval '1 hour'), ('', 'stream.stalled', '{}', now())`)
	if got, _ := s.ClaimNotifications(ctx, 10, time.Minute); kinds(got) != "crm:recovered,:stream.stalled" {
		t.Errorf("claim %q, want crm's recovered past the one given up, and the stall past the gap's backoff", kinds(got))
	}
	// Retention takes a given-up notification as it takes a sent one.
	db.Exec(t, `UPDATE dzhook.notifications SET created_at = now() - interval '60 days'`)
	if _, err := s.PruneStep(ctx, time.Now().Add(-30*24*time.Hour), 1000); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := db.Connect(t).QueryRow(ctx, `SELECT count(*) FROM dzhook.notifications WHERE kind = 'failing'`).Scan(&left); err != nil || left != 0 {
		t.Errorf("%d given-up notifications left by retention (%v)", left, err)
	}
}

// TestNewerJournalRefused: a journal migrated by a newer dzhook is
// refused, naming both versions: an older binary ran on it without a word
// (claiming a transformed delivery's event rather than its kept body).
func TestNewerJournalRefused(t *testing.T) {
	s, db := newStore(t)
	db.Exec(t, `INSERT INTO dzhook.schema_migrations (version, name) VALUES (9999, '9999_from_the_future')`)
	_, err := s.Migrate(context.Background())
	if !errors.Is(err, ErrNewerJournal) || !strings.Contains(err.Error(), "its version 9999") {
		t.Errorf("Migrate on a newer journal: %v, want ErrNewerJournal naming 9999", err)
	}
}

// TestMigrationWaitsForLocksInTries: a migration altering a table a long
// transaction has open waits for its lock in short tries, each ending
// with lock_timeout so the queries queued behind it go on, and fails
// naming the migration and the lock when the tries run out; it applies
// once the transaction ends. Without the tries it waited for ever,
// stalling every query of the table behind its lock request.
func TestMigrationWaitsForLocksInTries(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	m := New(s.Pool(), "mig_locks")
	first := fstest.MapFS{"migrations/0001_table.sql": {Data: []byte(`CREATE TABLE {{schema}}.t (a int)`)}}
	if applied, err := m.migrate(ctx, first, lockWait{timeout: time.Second, tries: 1}); err != nil || len(applied) != 1 {
		t.Fatalf("first migration: applied %v, err %v", applied, err)
	}
	both := maps.Clone(first)
	both["migrations/0002_column.sql"] = &fstest.MapFile{Data: []byte(`ALTER TABLE {{schema}}.t ADD COLUMN b int`)}
	holder := db.Hold(t, `SELECT count(*) FROM mig_locks.t`)

	quick, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := m.migrate(quick, both, lockWait{timeout: 50 * time.Millisecond, pause: 10 * time.Millisecond, tries: 3})
	if err == nil || !strings.Contains(err.Error(), "0002_column") || !strings.Contains(err.Error(), "not granted in 3 tries") || quick.Err() != nil {
		t.Fatalf("migration beside a long transaction: err %v (context %v); want the lock named after 3 tries", err, quick.Err())
	}

	// Tries until the transaction ends: seen waiting in two transactions
	// (a try ended, another began), then the holder commits.
	done := make(chan error, 1)
	go func() {
		_, err := m.migrate(quick, both, lockWait{timeout: 50 * time.Millisecond, pause: 10 * time.Millisecond, tries: 1000})
		done <- err
	}()
	watch := db.Connect(t)
	seen := map[string]bool{}
	testutil.Eventually(t, 20*time.Second, "the migration waiting for the lock in two tries", func() bool {
		var vxid string
		err := watch.QueryRow(ctx, `SELECT virtualtransaction FROM pg_locks WHERE relation = 'mig_locks.t'::regclass AND NOT granted`).Scan(&vxid)
		if err == nil {
			seen[vxid] = true
		}
		return len(seen) >= 2
	})
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("migration once the transaction ended: %v", err)
	}
	var cols int
	if err := watch.QueryRow(ctx, `SELECT count(*) FROM information_schema.columns WHERE table_schema = 'mig_locks' AND table_name = 't'`).Scan(&cols); err != nil || cols != 2 {
		t.Errorf("columns of the table after the migration: %d (%v), want 2", cols, err)
	}
}

// TestReleaseHeldKeepsAPausedSubscriptionsHeld: a release reaching the
// journal after a pause (a release the start or a reload asked for while
// the subscription was active) leaves its deliveries held, as it does for
// a disabled subscription; once the journal says the subscription is
// active again, the same release makes them due.
func TestReleaseHeldKeepsAPausedSubscriptionsHeld(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	b := batchOf(0, 3)
	for i := range b.Deliveries {
		b.Deliveries[i].State, b.Deliveries[i].Attempts, b.Deliveries[i].LastStatus = "held", 0, 0
	}
	b.Attempts = nil
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	held := func() int {
		var n int
		if err := db.Connect(t).QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'held'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, c := range []struct {
		name string
		set  func() error
	}{
		{"paused", func() error { return s.SetPaused(ctx, "crm", true) }},
		{"disabled", func() error {
			if err := s.SetPaused(ctx, "crm", false); err != nil {
				return err
			}
			return s.SetState(ctx, "crm", Disabled)
		}},
	} {
		if err := c.set(); err != nil {
			t.Fatal(err)
		}
		if n, err := s.ReleaseHeld(ctx, "crm"); err != nil || n != 0 {
			t.Errorf("%s: ReleaseHeld released %d (err %v), want none", c.name, n, err)
		}
		if n := held(); n != 3 {
			t.Errorf("%s: %d deliveries held after the release, want 3", c.name, n)
		}
	}
	if err := s.SetState(ctx, "crm", Healthy); err != nil {
		t.Fatal(err)
	}
	if n, err := s.ReleaseHeld(ctx, "crm"); err != nil || n != 3 {
		t.Errorf("active again: ReleaseHeld released %d (err %v), want 3", n, err)
	}
	if n := held(); n != 0 {
		t.Errorf("%d deliveries still held once active, want none", n)
	}
}

// TestStaleOutcomeMeetingAHeldCopy: A's writer holds a replayed copy of
// a delivery (A stalled past the slot's timeout; B took the slot over,
// streamed the transaction again and owns the delivery, its attempt in
// flight) when A's late outcome of its own attempt comes, made while its
// heartbeat was stale (Unless). Merged into the held row, it overwrote
// B's row (the insert's conflict update looks at attempts only) and
// recorded A's attempt: found by a review. It must leave B's row and
// history alone, as it does without the held copy.
func TestStaleOutcomeMeetingAHeldCopy(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, pendingBatch("00")); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `UPDATE dzhook.deliveries SET owner = 'iB' WHERE id = 'dlv_00'`)
	w := runWriter(t, WriterConfig{Store: s, Slot: "dzhook", Owner: "iA", Hold: time.Hour, Linger: -1})
	replayed := pendingBatch("00").Deliveries[0]
	replayed.Owner = "iA"
	now := time.Now()
	for _, r := range []Record{
		{Deliveries: []DeliveryRow{replayed}},
		{Update: &DeliveryUpdate{ID: "dlv_00", State: Pending, Attempts: 1, NextAttemptAt: now.Add(time.Minute), Owner: "iA", LastStatus: 500, LastAttemptAt: now, Unless: "iA"},
			Attempt: &AttemptRow{DeliveryID: "dlv_00", Attempt: 1, At: now, Trigger: "auto", StatusCode: 500, Instance: "iA", Unless: "iA"}},
	} {
		if err := w.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	var state string
	var attempts int
	var owner *string
	if err := db.Connect(t).QueryRow(ctx, `SELECT state, attempts, owner FROM dzhook.deliveries WHERE id = 'dlv_00'`).Scan(&state, &attempts, &owner); err != nil {
		t.Fatal(err)
	}
	if state != string(Pending) || attempts != 0 || deref(owner) != `"iB"` {
		t.Errorf("dlv_00 journaled %s after %d attempts, owner %s; want B's row as it was: pending, 0, iB", state, attempts, deref(owner))
	}
	if n := queryCount(t, db, `SELECT count(*) FROM dzhook.attempts WHERE delivery_id = 'dlv_00'`); n != 0 {
		t.Errorf("%d attempts recorded, want none: A's is not the one that counts", n)
	}
}
