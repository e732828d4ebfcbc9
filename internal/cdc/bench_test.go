package cdc

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/pgtest"
)

// BenchmarkCatchUp streams 200,000 committed rows of requests two ways on
// the same slot data: a minimal pglogrepl loop that only parses messages
// (pglogrepl.Parse, no typed values), and the cdc.Stream with full typed
// decoding and a handler that acknowledges every transaction. It reports
// rows/s of each and their ratio; run with -benchtime=1x:
//
//	go test ./cdc -run XXX -bench CatchUp -benchtime=1x
func BenchmarkCatchUp(b *testing.B) {
	for _, tc := range []struct {
		name  string
		perTx int
	}{{"tx100", 100}, {"tx200000", 200_000}} {
		b.Run(tc.name, func(b *testing.B) {
			const rows = 200_000
			db := pgtest.NewDB(b)
			db.Exec(b, dzsql.Schema,
				`INSERT INTO users (id, email) VALUES (1, 'bench@x')`,
				`CREATE PUBLICATION dzhook FOR TABLE users, requests, comments, request_slas`,
				`SELECT pg_create_logical_replication_slot('mini', 'pgoutput')`,
				`SELECT pg_create_logical_replication_slot('mini2', 'pgoutput')`,
				`SELECT pg_create_logical_replication_slot('dzhook', 'pgoutput')`,
				fmt.Sprintf(`DO $$ BEGIN FOR i IN 1..%d LOOP
					INSERT INTO requests (title, description, priority, requester_id, assigned_to_id)
					SELECT 'Request ' || g, repeat('Printer on floor 3 is jammed again. ', 5), 'high', 1, 1 FROM generate_series(1, %d) g;
					COMMIT; END LOOP; END $$`, rows/tc.perTx, tc.perTx),
			)
			runs := 0
			for b.Loop() {
				// The slots are read once: a second run would find the
				// dzhook slot acknowledged to the end and wait for rows
				// that never come.
				if runs++; runs > 1 {
					b.Fatal("BenchmarkCatchUp reads its slots once: run it with -benchtime=1x")
				}
				// The minimal loop runs before and after the stream, on
				// slots of the same data; the faster run counts, so the
				// order of the runs favours neither side.
				minimal := minimalLoop(b, db, "mini", rows)
				full, peakHeap := fullStream(b, db, rows)
				minimal = min(minimal, minimalLoop(b, db, "mini2", rows))
				b.ReportMetric(float64(rows)/minimal.Seconds(), "minimal-rows/s")
				b.ReportMetric(float64(rows)/full.Seconds(), "cdc-rows/s")
				b.ReportMetric(minimal.Seconds()/full.Seconds()*100, "%-of-minimal")
				b.ReportMetric(float64(peakHeap)/(1<<20), "peak-heap-MiB")
			}
		})
	}
}

// minimalLoop reads the slot with pglogrepl alone until it has parsed n
// inserts, and returns how long that took.
func minimalLoop(b *testing.B, db *pgtest.DB, slot string, n int) time.Duration {
	ctx := context.Background()
	cfg, _ := pgconn.ParseConfig(db.DSN)
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	start := time.Now()
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'dzhook'", "messages 'true'"}})
	if err != nil {
		b.Fatal(err)
	}
	inserts := 0
	for inserts < n {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			b.Fatal(err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || cd.Data[0] != pglogrepl.XLogDataByteID {
			continue
		}
		xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
		if err != nil {
			b.Fatal(err)
		}
		m, err := pglogrepl.Parse(xld.WALData)
		if err != nil {
			b.Fatal(err)
		}
		if _, ok := m.(*pglogrepl.InsertMessage); ok {
			inserts++
		}
	}
	return time.Since(start)
}

type countingHandler struct {
	s       *Stream
	changes atomic.Int64
	done    chan struct{}
	want    int64
}

func (h *countingHandler) HandleChange(_ context.Context, c *Change) error {
	if c.Op == OpInsert && c.Relation.Name == "requests" && h.changes.Add(1) == h.want {
		close(h.done)
	}
	return nil
}

func (h *countingHandler) HandleCommit(_ context.Context, c Commit) error {
	h.s.Ack(c.CommitLSN)
	return nil
}

// fullStream runs a cdc.Stream until it has handed on n inserts, and
// returns the time and the peak heap in use meanwhile.
func fullStream(b *testing.B, db *pgtest.DB, n int) (time.Duration, uint64) {
	h := &countingHandler{done: make(chan struct{}), want: int64(n)}
	s, err := New(Config{DSN: db.DSN, Slot: "dzhook", Publication: "dzhook", Handler: h, Logger: discardLogger()})
	if err != nil {
		b.Fatal(err)
	}
	h.s = s
	runtime.GC()
	var peak atomic.Uint64
	sampling, stopSampling := context.WithCancel(context.Background())
	go func() {
		var ms runtime.MemStats
		for sampling.Err() == nil {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-h.done:
	case err := <-done:
		b.Fatalf("stream stopped: %v", err)
	case <-time.After(5 * time.Minute):
		b.Fatal("stream did not finish in 5 minutes")
	}
	elapsed := time.Since(start)
	cancel()
	<-done
	stopSampling()
	return elapsed, peak.Load()
}
