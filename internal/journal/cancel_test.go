package journal

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestCutStatementEndsInTheServer: a statement of Open's pool whose
// context ends is cancelled in the server and fails with PostgreSQL's
// query_canceled (TookTooLong: the API says the journal took too long,
// not that it could not be reached), on a connection kept for the next
// statement; and it is not left running in the server.
func TestCutStatementEndsInTheServer(t *testing.T) {
	db := pgtest.NewDB(t)
	ctx := context.Background()
	s, err := Open(ctx, db.DSN, "dzhook")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	const slow = "SELECT pg_sleep(60) AS cut_by_its_context"
	cut, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = conn.Exec(cut, slow)
	if err == nil {
		t.Fatal("a minute's statement ended within its context's 200 ms")
	}
	if !TookTooLong(err) {
		t.Errorf("error %v, want the server's query_canceled (TookTooLong)", err)
	}
	if conn.Conn().IsClosed() {
		t.Error("the connection of a cut statement was closed, not kept")
	} else if err := conn.Conn().Ping(ctx); err != nil {
		t.Errorf("the connection of a cut statement: %v", err)
	}
	watch := db.Connect(t)
	testutil.Eventually(t, 10*time.Second, "the cut statement to end in the server", func() bool {
		var running bool
		if err := watch.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query = $1 AND state = 'active')`, slow).Scan(&running); err != nil {
			t.Fatal(err)
		}
		return !running
	})
}

// TestTookTooLong: a statement cut by statement_timeout is told apart
// from an unreachable journal, so the API answers that the journal took
// too long to answer.
func TestTookTooLong(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	_, err := s.pool.Exec(ctx, "SET statement_timeout = 50; SELECT pg_sleep(5)")
	if !TookTooLong(err) {
		t.Errorf("a statement cut by statement_timeout: TookTooLong(%v) = false", err)
	}
	if TookTooLong(errors.New("dial tcp: connection refused")) || TookTooLong(nil) {
		t.Error("TookTooLong is true of an error that is not a cancelled statement")
	}
}
