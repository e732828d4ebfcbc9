package mapping

import (
	"context"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TestSLASourceCompletedAt: the clock's recheck reads when an SLA was
// completed from a time column (no later than now), and only whether it
// was from a column of another type (README: only the time columns must
// be times). A first version cast any completed_at column as a time, and
// PostgreSQL refused the recheck of a boolean one: no SLA timer ever
// fired again (found by a review, 2026-12-06).
func TestSLASourceCompletedAt(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, `CREATE TABLE slas_t (id int PRIMARY KEY, request_id int, sla_type text, started_at timestamptz, target_at timestamptz, completed_at timestamptz)`,
		`CREATE TABLE slas_b (id int PRIMARY KEY, request_id int, sla_type text, started_at timestamptz, target_at timestamptz, completed_at boolean)`,
		`INSERT INTO slas_t VALUES (1, 1, 'x', now() - interval '2 hours', now() - interval '1 hour', now() - interval '30 minutes'),
		                           (2, 1, 'x', now() - interval '2 hours', now() + interval '1 hour', now() + interval '1 day'),
		                           (3, 1, 'x', now() - interval '2 hours', now() + interval '1 hour', NULL)`,
		`INSERT INTO slas_b VALUES (1, 1, 'x', now() - interval '2 hours', now() - interval '1 hour', true),
		                           (3, 1, 'x', now() - interval '2 hours', now() + interval '1 hour', NULL)`)
	pool, err := pgxpool.New(context.Background(), db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	for _, table := range []string{"slas_t", "slas_b"} {
		c := DefaultConfig()
		c.SLAs.Table = table
		src, err := NewSLASource(context.Background(), pool, &c)
		if err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		cur, err := src.Current(context.Background(), []string{"1", "2", "3"})
		if err != nil {
			t.Fatalf("%s: recheck: %v", table, err)
		}
		if !cur["1"].Completed || cur["3"].Completed || cur["3"].CompletedAt != nil {
			t.Errorf("%s: completed %v / %v, want SLA 1 completed, 3 open", table, cur["1"], cur["3"])
		}
		switch table {
		case "slas_t":
			if at := cur["1"].CompletedAt; at == nil || time.Since(*at) < 29*time.Minute || time.Since(*at) > 31*time.Minute {
				t.Errorf("slas_t: SLA 1 completed at %v, want half an hour ago", at)
			}
			if at := cur["2"].CompletedAt; at == nil || time.Since(*at) > time.Minute {
				t.Errorf("slas_t: SLA 2 (completed_at tomorrow) completed at %v, want now at the latest", at)
			}
		case "slas_b":
			if cur["1"].CompletedAt != nil {
				t.Errorf("slas_b: a boolean completed_at read as the time %v", cur["1"].CompletedAt)
			}
		}
	}
}
