package journal

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestReleaseLostAfterALateCommit: a claim whose network went away while
// the server was still at it (here: waiting for a lock) commits after
// its caller saw it fail, and after the first release, which finds
// nothing and is not settled. Once the claim's server process is done, a
// release gives back what it took and is settled.
func TestReleaseLostAfterALateCommit(t *testing.T) {
	db := pgtest.NewDB(t)
	ctx := context.Background()
	direct, _ := newStoreOn(t, db.DSN, 0)
	if err := direct.Write(ctx, pendingBatch("00", "01", "02")); err != nil {
		t.Fatal(err)
	}
	if err := direct.Register(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	// The claim goes through a proxy that can cut it off, on one
	// connection: the claim's statement, prepared by a first claim, is in
	// its cache, so the claim is sent whole (BEGIN to COMMIT) before it
	// waits.
	proxy := testutil.NewCutProxy(t, db.DSN)
	cut, _ := newStoreOn(t, proxy.DSN, 1)
	if got, err := cut.Claim(ctx, []ClaimWant{{Subscription: "none", Limit: 1, Runs: true}}, "a", "first", time.Minute); err != nil || len(got) != 0 {
		t.Fatalf("first claim: %d, %v", len(got), err)
	}

	blocker := db.Connect(t)
	tx, err := blocker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE dzhook.instances IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	failed := make(chan error, 1)
	go func() {
		_, err := cut.Claim(ctx, crm(10), "a", "late", time.Minute)
		failed <- err
	}()
	testutil.Eventually(t, 10*time.Second, "the claim waiting for the lock", func() bool {
		var n int
		_ = direct.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%WITH live AS%'`).Scan(&n)
		return n == 1
	})
	proxy.Cut()
	var ce *ClaimError
	if err := <-failed; !errors.As(err, &ce) || ce.Backend == 0 {
		t.Fatalf("claim cut off: %v, want a ClaimError naming its server process", err)
	}

	lost := &LostClaim{Subscription: "crm", Tokens: []string{"late"}, Backends: []ClaimBackend{{PID: ce.Backend}}}
	n, settled, err := direct.ReleaseLost(ctx, "a", lost)
	if err != nil || n != 0 || settled {
		t.Fatalf("release while the claim waits on the server: %d, settled %v, %v; want 0, not settled", n, settled, err)
	}
	if lost.Backends[0].Started.IsZero() {
		t.Error("the release did not note when the claim's server process started")
	}
	if err := tx.Commit(ctx); err != nil { // the claim goes on, and commits
		t.Fatal(err)
	}
	released := 0
	testutil.Eventually(t, 10*time.Second, "a settled release", func() bool {
		n, settled, err := direct.ReleaseLost(ctx, "a", lost)
		if err != nil {
			t.Fatalf("release: %v", err)
		}
		released += n
		return settled
	})
	if released != 3 {
		t.Errorf("the releases gave back %d deliveries, want the 3 the late claim took", released)
	}
	if got, err := direct.Claim(ctx, crm(10), "a", "again", time.Minute); err != nil || len(got) != 3 {
		t.Errorf("claim after the release: %d, %v; want 3", len(got), err)
	}

	// A process in a transaction holds a release back, unless it started
	// after the claim's process of that number was seen.
	if _, err := blocker.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	busy := uint32(blocker.PgConn().PID())
	for _, c := range []struct {
		started time.Time
		want    bool
	}{{time.Time{}, false}, {time.Unix(1, 0), true}} {
		_, settled, err := direct.ReleaseLost(ctx, "a", &LostClaim{Subscription: "crm", Tokens: []string{"late"},
			Backends: []ClaimBackend{{PID: busy, Started: c.started}}})
		if err != nil || settled != c.want {
			t.Errorf("release naming a process in a transaction, first seen at %v: settled %v, %v; want %v", c.started, settled, err, c.want)
		}
	}
}

// newStoreOn is a Store on dsn's database, migrated, with at most
// maxConns connections (0: the pool's default).
func newStoreOn(t *testing.T, dsn string, maxConns int32) (*Store, *pgxpool.Pool) {
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
	return s, pool
}
