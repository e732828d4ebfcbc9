package journal

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dzdesk/dzhook/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func newStore(t testing.TB) (*Store, *pgtest.DB) {
	t.Helper()
	db := pgtest.NewDB(t)
	pool, err := pgxpool.New(context.Background(), db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := New(pool, "dzhook")
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, db
}

// batchOf is a batch of n events, each delivered at its first attempt:
// the hot path's journal write.
func batchOf(start, n int) *Batch {
	b := &Batch{Slot: "dzhook", Checkpoint: uint64(start + n)}
	now := time.Now()
	body := make([]byte, 600)
	for i := start; i < start+n; i++ {
		ev := fmt.Sprintf("whk_%026d", i)
		dlv := fmt.Sprintf("dlv_%026d", i)
		b.Events = append(b.Events, EventRow{ID: ev, Type: "request.created", Body: body, CommitLSN: uint64(i), OccurredAt: now})
		b.Deliveries = append(b.Deliveries, DeliveryRow{ID: dlv, EventID: ev, SubscriptionID: "crm", EventType: "request.created",
			State: "delivered", Attempts: 1, LastStatus: 200, LastAttemptAt: now, CreatedAt: now})
		b.Attempts = append(b.Attempts, AttemptRow{DeliveryID: dlv, Attempt: 1, At: now, Trigger: "auto", StatusCode: 200, Duration: time.Millisecond, ResponseBody: []byte("ok")})
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
