package journal

import (
	"context"
	"io/fs"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dzdesk/dzhook/internal/pgtest"
)

// TestRejectionWrittenOncePerChange: the rejections of a transaction
// written again (streamed again after a crash, before its commit was
// checkpointed) are recorded once each, keyed by their change's
// position; two changes of one transaction are two rejections. Each was
// inserted again (found by a review). One without a position has nothing
// to key it by.
func TestRejectionWrittenOncePerChange(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	b := &Batch{Rejections: []Rejection{
		{Source: "outbox row 1", Reason: "undeclared event", CommitLSN: 900, Ordinal: 0},
		{Source: "outbox row 2", Reason: "undeclared event", CommitLSN: 900, Ordinal: 3},
		{Source: "message", Reason: "not JSON"},
	}}
	for range 2 {
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	conn := db.Connect(t)
	var positioned, unpositioned int
	if err := conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE commit_lsn = 900), count(*) FILTER (WHERE commit_lsn IS NULL) FROM dzhook.rejections`).Scan(&positioned, &unpositioned); err != nil {
		t.Fatal(err)
	}
	if positioned != 2 {
		t.Errorf("%d rejections of the transaction at 900 after writing it twice, want its 2 changes' once each", positioned)
	}
	if unpositioned != 2 {
		t.Errorf("%d rejections without a position after writing one twice, want 2 (nothing keys them)", unpositioned)
	}
}

// TestRejectionsUpgradeToVersion22KeepsDuplicates: a journal whose
// rejections a crash recorded twice before version 22 migrates (the
// unique index leaves rows without an ordinal out), keeps them, and
// from then on records a change's rejection once.
func TestRejectionsUpgradeToVersion22KeepsDuplicates(t *testing.T) {
	s, db := storeAtVersion(t, 21)
	ctx := context.Background()
	db.Exec(t, `INSERT INTO dzhook.rejections (source, reason, commit_lsn) VALUES ('outbox row 1', 'undeclared event', 900), ('outbox row 1', 'undeclared event', 900)`)
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatalf("migrate a journal holding a rejection recorded twice: %v", err)
	}
	for range 2 {
		if err := s.Write(ctx, &Batch{Rejections: []Rejection{{Source: "outbox row 1", Reason: "undeclared event", CommitLSN: 900}}}); err != nil {
			t.Fatal(err)
		}
	}
	conn := db.Connect(t)
	var old, keyed int
	if err := conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE ordinal IS NULL), count(*) FILTER (WHERE ordinal = 0) FROM dzhook.rejections WHERE commit_lsn = 900`).Scan(&old, &keyed); err != nil {
		t.Fatal(err)
	}
	if old != 2 || keyed != 1 {
		t.Errorf("rejections at 900: %d from before the upgrade, %d written twice after it; want 2 and 1", old, keyed)
	}
}

// storeAtVersion is a Store on a new database whose journal has the
// migrations up to version alone: an older dzhook's, to upgrade from.
func storeAtVersion(t *testing.T, version int) (*Store, *pgtest.DB) {
	t.Helper()
	db := pgtest.NewDB(t)
	pool, err := pgxpool.New(context.Background(), db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := New(pool, "dzhook")
	migrateTo(t, s, version)
	return s, db
}

// migrateTo applies the journal's migrations up to version alone.
func migrateTo(t *testing.T, s *Store, version int) {
	t.Helper()
	upTo := fstest.MapFS{}
	files, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, v, err := migrationVersion(f); err == nil && v <= version {
			data, err := fs.ReadFile(migrations, f)
			if err != nil {
				t.Fatal(err)
			}
			upTo[f] = &fstest.MapFile{Data: data}
		}
	}
	if _, err := s.migrate(context.Background(), upTo, migrationLockWait); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeToVersion24BesideAReaderThatWrites: the upgrade past
// versions 23 and 24 beside an older process's transaction that read
// deliveries and then writes it (a replay step: its backlog's count, then
// its insert) ends with both done. Version 23 dropped deliveries_failed
// after its builds: the drop's lock upgrade and that insert waited for
// each other, and PostgreSQL aborted one (found by a review).
func TestUpgradeToVersion24BesideAReaderThatWrites(t *testing.T) {
	s, db := storeAtVersion(t, 22)
	ctx := context.Background()
	older := db.Connect(t)
	tx, err := older.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	migrated := make(chan error, 1)
	go func() {
		_, err := s.migrate(ctx, migrations, lockWait{timeout: 5 * time.Second, pause: 100 * time.Millisecond, tries: 20})
		migrated <- err
	}()
	if finished, err := waitLockedOrDone(t, db, "relation", migrated); finished {
		t.Fatalf("the upgrade ended (%v) while a transaction held deliveries: want it waiting for its lock", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO dzhook.events (id, type, body, occurred_at) VALUES ('whk_u1', 'request.created', '{}', now())`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO dzhook.deliveries (id, event_id, subscription_id, event_type, state, next_attempt_at, created_at, updated_at)
		VALUES ('dlv_u1_erp', 'whk_u1', 'erp', 'request.created', 'pending', now(), now(), now())`); err != nil {
		t.Fatalf("the older process's insert beside the upgrade: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-migrated; err != nil {
		t.Fatalf("the upgrade beside it: %v", err)
	}
}
