package journal

import (
	"context"
	"errors"
	"testing"
	"time"

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
	direct := newStoreOn(t, db.DSN, 0)
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
	cut := newStoreOn(t, proxy.DSN, 1)
	if got, err := cut.Claim(ctx, []ClaimWant{{Subscription: "none", Limit: 1, Runs: true}}, "a", "first", time.Minute); err != nil || len(got) != 0 {
		t.Fatalf("first claim: %d, %v", len(got), err)
	}

	tx := db.Hold(t, `LOCK TABLE dzhook.instances IN ACCESS EXCLUSIVE MODE`)
	blocker := tx.Conn()
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
	if err := <-failed; !errors.As(err, &ce) || ce.Backend == 0 || ce.Sent.IsZero() {
		t.Fatalf("claim cut off: %v, want a ClaimError naming its server process and when it was sent", err)
	}

	lost := LostClaim{Subscription: "crm", Tokens: []string{"late"}, Backends: []ClaimBackend{{PID: ce.Backend, Sent: ce.Sent}}}
	n, settled, err := direct.ReleaseLost(ctx, "a", lost)
	if err != nil || n != 0 || settled {
		t.Fatalf("release while the claim waits on the server: %d, settled %v, %v; want 0, not settled", n, settled, err)
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

	// Which processes hold a release back: one that has been idle since
	// before the claim was sent (it has not reached it yet) or is in a
	// transaction, unless it started after the claim was sent.
	sent := time.Now()
	// Time passing is the condition: the release compares ages measured
	// here with the server's now(), read a one-way trip after the age, so
	// a process idle since "after" must be later than that trip (and
	// than the pool's acquire and the backend's wait for a CPU); under
	// load (CI, -race) a statement made at once after sent was not, and
	// 50 ms later is within a loaded machine's delays too.
	time.Sleep(500 * time.Millisecond)
	if _, err := blocker.Exec(ctx, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	check := func(what string, sent time.Time, want bool) {
		t.Helper()
		_, settled, err := direct.ReleaseLost(ctx, "a", LostClaim{Subscription: "crm", Tokens: []string{"late"},
			Backends: []ClaimBackend{{PID: uint32(blocker.PgConn().PID()), Sent: sent}}})
		if err != nil || settled != want {
			t.Errorf("release naming a process %s: settled %v, %v; want %v", what, settled, err, want)
		}
	}
	check("idle since after the claim was sent", sent, true)
	check("idle since before the claim was sent", time.Now(), false)
	if _, err := blocker.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	check("in a transaction", sent, false)
	check("started after the claim was sent", time.Now().Add(-time.Hour), true)
}
