package engine

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/internal/pgtest"
)

// TestSourcePoolReadsTimestampsAsUTC: on a server whose TimeZone is not
// UTC, the SLA clock's recheck reads a completed_at of type timestamp
// (without time zone) as the stream reads it, in UTC. The source pool
// used the server's zone: in Asia/Tokyo a completion at 12:00 read as
// 03:00 UTC, nine hours before the stream's 12:00 (found by a review).
func TestSourcePoolReadsTimestampsAsUTC(t *testing.T) {
	ctx := context.Background()
	db := pgtest.NewDB(t)
	db.Exec(t, `ALTER DATABASE `+pgx.Identifier{db.Name}.Sanitize()+` SET timezone = 'Asia/Tokyo'`)
	db.Exec(t, `CREATE TABLE slas (id int PRIMARY KEY, request_id int, sla_type text, started_at timestamp, target_at timestamp, completed_at timestamp)`,
		`INSERT INTO slas VALUES (1, 1, 'resolution', '2025-01-01 10:00', '2025-01-01 11:00', '2025-01-01 12:00')`)
	var zone string
	if err := db.Connect(t).QueryRow(ctx, `SHOW timezone`).Scan(&zone); err != nil || zone != "Asia/Tokyo" {
		t.Fatalf("the database's sessions run in %q (%v), want Asia/Tokyo", zone, err)
	}
	pool, err := newSourcePool(ctx, db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	c := mapping.DefaultConfig()
	c.SLAs.Table = "slas"
	src, err := mapping.NewSLASource(ctx, pool, &c)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := src.Current(ctx, []string{"1"})
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	if at := cur["1"].CompletedAt; at == nil || !at.Equal(want) {
		t.Errorf("completed at %v, want %v (the stream's reading)", at, want)
	}
	if !cur["1"].TargetAt.Equal(want.Add(-time.Hour)) {
		t.Errorf("target %v, want %v", cur["1"].TargetAt, want.Add(-time.Hour))
	}
}
