package fanout

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func newJournal(t *testing.T) *journal.Store {
	t.Helper()
	db := pgtest.NewDB(t)
	pool, err := pgxpool.New(context.Background(), db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := journal.New(pool, "dzhook")
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestLostClaimAnswer: a claim whose UPDATE committed but whose answer
// never arrived (the connection broke) leaves deliveries owned by this
// live instance and in no queue. They must still go out while it runs,
// and a manual retry whose answer was lost must not leave its delivery
// busy.
func TestLostClaimAnswer(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	past := time.Now().Add(-time.Minute)
	b := &journal.Batch{}
	for _, id := range []string{"a", "b", "c", "f"} {
		d := journal.DeliveryRow{ID: "dlv_" + id, EventID: "whk_" + id, SubscriptionID: "crm", EventType: "request.created",
			State: journal.Pending, Attempts: 1, NextAttemptAt: past, CreatedAt: past}
		if id == "f" {
			d.State, d.Attempts, d.NextAttemptAt = journal.Failed, 5, time.Time{}
		}
		b.Events = append(b.Events, journal.EventRow{ID: "whk_" + id, Type: "request.created", Body: []byte(`{"id":"whk_` + id + `"}`), OccurredAt: past})
		b.Deliveries = append(b.Deliveries, d)
	}
	if err := store.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	lossy := &lossyStore{Store: store}
	lossy.loseClaim.Store(true)
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		// The default heartbeat: this instance must stay alive for the
		// whole test, so only the release can free what it lost.
		Journal: lossy, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: 5 * time.Second,
	})

	// The first claim takes the three due deliveries and loses its answer.
	rc.Wait(t, 3, 10*time.Second)
	if lossy.loseClaim.Load() {
		t.Fatal("no claim's answer was dropped")
	}
	testutil.Eventually(t, 10*time.Second, "the three journaled as delivered", func() bool {
		var n int
		_ = store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`).Scan(&n)
		return n == 3
	})
	if n := len(rc.Requests()); n != 3 {
		t.Errorf("receiver got %d requests for 3 deliveries: the release freed a delivery still queued", n)
	}

	// A manual retry whose answer is lost; the next one goes out.
	lossy.loseRetry.Store(true)
	if _, err := d.RetryNow(ctx, "dlv_f"); !errors.Is(err, errAnswerLost) {
		t.Fatalf("RetryNow with its answer dropped: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "a manual retry after the lost one", func() bool {
		rep, err := d.RetryNow(ctx, "dlv_f")
		if err != nil && !errors.Is(err, journal.ErrBusy) {
			t.Fatalf("RetryNow: %v", err)
		}
		return err == nil && rep.Delivered
	})
	rc.Wait(t, 4, 10*time.Second)
	if n := len(rc.Requests()); n != 4 {
		t.Errorf("receiver got %d requests, want 4", n)
	}
}

// TestMayHaveCommitted: only an error that leaves the claim's fate open
// makes it a lost claim; a refused statement or a connection never made
// committed nothing.
func TestMayHaveCommitted(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	_, refused := store.Pool().Exec(ctx, `UPDATE dzhook.deliveries SET attempts = 'x'`)
	_, unreachable := pgconn.Connect(ctx, "postgres://nobody@127.0.0.1:1/none?connect_timeout=2")
	done, cancel := context.WithCancel(ctx)
	cancel()
	conn, err := store.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	_, notSent := conn.Conn().PgConn().Exec(done, `SELECT 1`).ReadAll()
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"refused by the server", refused, false},
		{"no connection", unreachable, false},
		{"context done before sending", notSent, false},
		{"answer lost", errAnswerLost, true},
		// What pgbouncer sends when its server connection broke, before
		// or after the commit.
		{"FATAL from a pooler", &pgconn.PgError{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08P01", Message: "server conn crashed?"}, true},
		{"cancelled while waiting for the answer", context.Canceled, true},
	} {
		if c.err == nil {
			t.Fatalf("%s: no error to classify", c.name)
		}
		if got := mayHaveCommitted(fmt.Errorf("claim due deliveries: %w", c.err)); got != c.want {
			t.Errorf("%s (%v): mayHaveCommitted = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}
