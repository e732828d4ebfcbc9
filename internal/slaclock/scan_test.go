package slaclock

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// failingScans is the SLA table as the clock reads it, noting each
// failed scan of the open SLAs.
type failingScans struct {
	*mapping.SLASource
	mu     sync.Mutex
	failed []error
}

func (f *failingScans) OpenSLAs(ctx context.Context, after string, limit int) ([]mapping.SLARow, error) {
	rows, err := f.SLASource.OpenSLAs(ctx, after, limit)
	if err != nil {
		f.mu.Lock()
		f.failed = append(f.failed, err)
		f.mu.Unlock()
	}
	return rows, err
}

func (f *failingScans) failures() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.failed)
}

// TestFailedScanIsRetried: the first start's scan of the open SLAs,
// failed (here its table is renamed away), is tried again with a backoff
// until it succeeds, logged once for tries failing the same way; then
// the open SLAs are armed and the slot recorded as scanned. It used to be
// tried again only at the next start: until then, SLAs open before
// dzhook's first start fired nothing (found by a review).
func TestFailedScanIsRetried(t *testing.T) {
	ctx := context.Background()
	db, store, pool, mc, sla := slaWorld(t)
	src := &failingScans{SLASource: sla}
	db.Exec(t, `ALTER TABLE slas RENAME TO slas_away`)

	var logs testutil.SyncBuffer
	c, err := New(Config{
		Store: store, Source: src, Events: mapping.NewMapper(mapping.MapperConfig{Mapping: mc, Source: ids.NewSource("1")}),
		Dispatcher: &fakeDispatcher{}, Slot: "dzhook", WarningPercent: []float64{75}, CheckInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	runFast(t, c)

	testutil.Eventually(t, 10*time.Second, "the scan failing a few times", func() bool { return src.failures() >= 3 })
	db.Exec(t, `ALTER TABLE slas_away RENAME TO slas`)
	testutil.Eventually(t, 10*time.Second, "the open SLA armed and the slot recorded as scanned", func() bool {
		ok, err := store.SLABootstrapped(ctx, "dzhook")
		if err != nil || !ok {
			return false
		}
		due, err := queryString(ctx, pool, `SELECT string_agg(kind, ',' ORDER BY kind) FROM dzhook.sla_timers WHERE sla_id = '1'`)
		return err == nil && due == "breach,warning:75"
	})
	if n := strings.Count(logs.String(), "arming the open SLAs failed"); n != 1 {
		t.Errorf("%d failures logged for tries failing the same way, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "after failed tries") {
		t.Errorf("the scan's success after failures not logged:\n%s", logs.String())
	}
}

// runFast runs c until the test ends, its scan's backoff 20 to 40 ms.
func runFast(t *testing.T, c *Clock) {
	c.retryMin, c.retryMax = 20*time.Millisecond, 40*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// slaWorld is a database with an SLA table "slas" holding one SLA open
// for the next hour, a migrated journal on it, a pool, the mapping that
// reads that table and its SLA source.
func slaWorld(t *testing.T) (*pgtest.DB, *journal.Store, *pgxpool.Pool, mapping.Config, *mapping.SLASource) {
	t.Helper()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	db.Exec(t, `CREATE TABLE slas (id int PRIMARY KEY, request_id int, sla_type text, started_at timestamptz, target_at timestamptz, completed_at timestamptz)`,
		`INSERT INTO slas VALUES (1, 1, 'resolution', now(), now() + interval '1 hour', NULL)`)
	store, err := journal.Open(ctx, db.DSN, "dzhook")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	mc := mapping.DefaultConfig()
	mc.SLAs.Table = "slas"
	sla, err := mapping.NewSLASource(ctx, pool, &mc)
	if err != nil {
		t.Fatal(err)
	}
	return db, store, pool, mc, sla
}

func queryString(ctx context.Context, pool *pgxpool.Pool, sql string) (string, error) {
	var s *string
	if err := pool.QueryRow(ctx, sql).Scan(&s); err != nil || s == nil {
		return "", err
	}
	return *s, nil
}

// TestThresholdsWaitForTheCheckpoint: at a start after the slot's first,
// a threshold the open SLAs lack is armed only once the stream's
// checkpoint row of the cluster exists (the turn it takes with the
// stream's batches), tried again quietly until then: without it, a
// warning was armed beside a batch moving the SLA off that target, and
// fired at its next change (found by a review).
func TestThresholdsWaitForTheCheckpoint(t *testing.T) {
	ctx := context.Background()
	db, store, pool, mc, sla := slaWorld(t)
	var started, target time.Time
	if err := pool.QueryRow(ctx, `SELECT started_at, target_at FROM slas`).Scan(&started, &target); err != nil {
		t.Fatal(err)
	}
	// Scanned at an earlier start, armed with [75] by the stream.
	timer := func(kind string, fire time.Time) journal.TimerRow {
		return journal.TimerRow{SLAID: "1", Kind: kind, TargetAt: target, FireAt: fire, RequestID: "1", SLAType: "resolution", StartedAt: started}
	}
	if err := store.Write(ctx, &journal.Batch{Timers: []journal.TimerChange{{SLAID: "1", Keep: target,
		Arm: []journal.TimerRow{timer("breach", target), timer("warning:75", started.Add(45*time.Minute))}}}}); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO dzhook.sla_bootstrap (slot) VALUES ('dzhook')`)
	var logs testutil.SyncBuffer
	c, err := New(Config{
		Store: store, Source: sla, Events: mapping.NewMapper(mapping.MapperConfig{Mapping: mc, Source: ids.NewSource("1")}),
		Dispatcher: &fakeDispatcher{}, Slot: "dzhook", SystemID: "sys", WarningPercent: []float64{75, 90}, CheckInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	c.noCheckpointSayAfter = 200 * time.Millisecond
	runFast(t, c)
	kinds := func() string {
		k, err := queryString(ctx, pool, `SELECT string_agg(kind, ',' ORDER BY kind) FROM dzhook.sla_timers WHERE sla_id = '1'`)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	testutil.Eventually(t, 10*time.Second, "the arming put off twice for want of a checkpoint", func() bool {
		return strings.Count(logs.String(), "once the stream has journaled a checkpoint") >= 2
	})
	if k := kinds(); k != "breach,warning:75" {
		t.Errorf("timers %q armed without a checkpoint, want none added", k)
	}
	// A wait that lasts is said at INFO, once, when it has lasted.
	const said = "still no checkpoint of the stream in the journal"
	testutil.Eventually(t, 10*time.Second, "the wait said at INFO, then tried again", func() bool {
		l := logs.String()
		i := strings.Index(l, said)
		return i >= 0 && strings.Count(l[i:], "once the stream has journaled a checkpoint") >= 3
	})
	l := logs.String()
	if n := strings.Count(l, said); n != 1 {
		t.Errorf("the wait said at INFO %d times, want once:\n%s", n, l)
	}
	// Said no sooner than noCheckpointSayAfter after the first put-off
	// (the log's times have milliseconds).
	first := logTime(t, l, "once the stream has journaled a checkpoint")
	if waited := logTime(t, l, said).Sub(first); waited < c.noCheckpointSayAfter-10*time.Millisecond {
		t.Errorf("the wait said at INFO %s after the first put-off, want %s at least", waited, c.noCheckpointSayAfter)
	}
	db.Exec(t, `INSERT INTO dzhook.checkpoints (slot, lsn, system_id) VALUES ('dzhook', 1, 'sys')`)
	testutil.Eventually(t, 10*time.Second, "the 90% warning armed", func() bool { return kinds() == "breach,warning:75,warning:90" })
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("waiting for the checkpoint logged an error:\n%s", logs.String())
	}
}

// logTime is the time of the first line of logs (slog's text) holding
// msg.
func logTime(t *testing.T, logs, msg string) time.Time {
	t.Helper()
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		stamp, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, stamp)
		if err != nil {
			t.Fatalf("no time in the log line %q: %v", line, err)
		}
		return at
	}
	t.Fatalf("no log line holding %q:\n%s", msg, logs)
	return time.Time{}
}
