package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// steadyInserts commits request creations one per transaction at rate per
// second until ctx ends, retrying each (idempotently) while PostgreSQL is
// down, and returns how many it committed: ids 1..n.
func steadyInserts(ctx context.Context, db *pgtest.DB, rate int) int {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	start := time.Now()
	for i := 1; ; i++ {
		if wait := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); wait > 0 {
			select {
			case <-ctx.Done():
				return i - 1
			case <-time.After(wait):
			}
		}
		for {
			if ctx.Err() != nil {
				return i - 1
			}
			if conn == nil {
				c, err := pgx.Connect(ctx, db.DSN)
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				conn = c
			}
			_, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) VALUES (%d, 'steady', 1) ON CONFLICT (id) DO NOTHING`, i))
			if err == nil {
				break
			}
			conn.Close(context.Background())
			conn = nil // idempotent: retrying an ambiguous commit is harmless
		}
	}
}

// TestPostgresFastStopUnderLoad: PostgreSQL's fast shutdown cuts the
// journal's connections first, then waits for its walsenders' clients to
// confirm the end of the WAL. dzhook, unable to journal, must end its
// replication connection rather than keep the shutdown waiting; it
// reconnects when PostgreSQL is back, and every committed row arrives.
func TestPostgresFastStopUnderLoad(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := writeConfig(t, db, rc.URL, "  retry_schedule: [0s, 300ms, 1s, 1s, 1s, 1s, 1s, 1s]")
	setup(t, cfg)
	p := startDzhook(t, cfg)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	committed := make(chan int, 1)
	go func() { committed <- steadyInserts(ctx, db, 30) }()
	testutil.Eventually(t, 30*time.Second, "deliveries under way", func() bool { return len(rc.Requests()) >= 20 })

	took, ok := db.Cluster.StopFast(20 * time.Second)
	if !ok || took > 10*time.Second {
		t.Errorf("pg_ctl stop -m fast with dzhook running took %s (finished: %v), want under 10s", took.Round(time.Millisecond), ok)
	}
	if err := db.Cluster.StartAgain(); err != nil {
		t.Fatal(err)
	}
	// A little more load once PostgreSQL is back, then stop.
	n0 := len(rc.Requests())
	testutil.Eventually(t, 60*time.Second, "deliveries after the restart", func() bool { return len(rc.Requests()) >= n0+20 })
	cancel()
	n := <-committed
	waitOrDiagnose(t, db, 60*time.Second, fmt.Sprintf("all %d committed rows delivered", n), func() bool {
		return len(received(rc.Requests())) >= n
	})
	got := received(rc.Requests())
	for i := 1; i <= n; i++ {
		if len(got[fmt.Sprintf("req_%d", i)]) != 1 {
			t.Errorf("req_%d arrived under %d event ids, want one", i, len(got[fmt.Sprintf("req_%d", i)]))
		}
	}
	if p.cmd.ProcessState != nil {
		t.Errorf("dzhook exited (%v) while PostgreSQL was stopped; it should wait and reconnect", p.cmd.ProcessState)
	}
	t.Logf("fast stop took %s with dzhook running; %d rows committed around it, all delivered", took.Round(time.Millisecond), n)
}

// TestPostgresFastStopIdle: the same with nothing to deliver. The stream
// makes an idle position durable before it confirms it, so the shutdown's
// last confirmation also goes through the journal, which is gone.
func TestPostgresFastStopIdle(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := writeConfig(t, db, rc.URL, "")
	setup(t, cfg)
	p := startDzhook(t, cfg)
	if err := insertRequests(context.Background(), db, 5, 1, 0); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "5 deliveries", func() bool { return len(rc.Requests()) >= 5 })
	took, ok := db.Cluster.StopFast(20 * time.Second)
	if !ok || took > 10*time.Second {
		t.Errorf("pg_ctl stop -m fast with an idle dzhook took %s (finished: %v), want under 10s", took.Round(time.Millisecond), ok)
	}
	if err := db.Cluster.StartAgain(); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (6, 'after', 1)`)
	testutil.Eventually(t, 60*time.Second, "the row committed after the restart delivered", func() bool { return len(received(rc.Requests())) >= 6 })
	if p.cmd.ProcessState != nil {
		t.Errorf("dzhook exited (%v) while PostgreSQL was stopped", p.cmd.ProcessState)
	}
	t.Logf("idle fast stop took %s", took.Round(time.Millisecond))
}
