package pipeline

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
)

// recorder is the pipeline's world: router, journal writer, checkpoint
// table and the stream's Ack, each recording what it was given.
type recorder struct {
	dispatched []fanout.Event
	commits    []pglogrepl.LSN
	rejections []journal.Rejection
	timers     []journal.TimerChange
	acks       []pglogrepl.LSN
	stored     journal.Checkpoint   // what Checkpoint returns
	resets     []journal.Checkpoint // ResetCheckpoint calls
	cleared    []journal.Checkpoint // ClearRestored calls
	rejected   int                  // Observer.Rejected calls
}

func (r *recorder) Dispatch(_ context.Context, ev fanout.Event) error {
	r.dispatched = append(r.dispatched, ev)
	return nil
}

func (r *recorder) Commit(_ context.Context, lsn, _ pglogrepl.LSN) error {
	r.commits = append(r.commits, lsn)
	return nil
}

func (r *recorder) Reject(_ context.Context, rej journal.Rejection) error {
	r.rejections = append(r.rejections, rej)
	return nil
}

func (r *recorder) ArmTimers(_ context.Context, c journal.TimerChange) error {
	r.timers = append(r.timers, c)
	return nil
}

func (r *recorder) Checkpoint(context.Context, string) (journal.Checkpoint, error) {
	return r.stored, nil
}

func (r *recorder) ResetCheckpoint(_ context.Context, _ string, cp journal.Checkpoint) error {
	r.resets = append(r.resets, cp)
	return nil
}

func (r *recorder) ClearRestored(_ context.Context, _ string, cp journal.Checkpoint) error {
	r.cleared = append(r.cleared, cp)
	return nil
}

func (r *recorder) Rejected() { r.rejected++ }

const systemID = "7300000000000000001"

func newPipeline(t *testing.T, r *recorder) *Pipeline {
	t.Helper()
	cat, err := catalog.New(catalog.Event{Name: "order.shipped"})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := New(Config{
		Slot: "dzhook", SystemID: systemID,
		Mapper: mapping.NewMapper(mapping.MapperConfig{Mapping: mapping.DefaultConfig(), Source: ids.NewSource(systemID), Catalog: cat, Logger: log}),
		Router: r, Journal: r, Checkpoints: r, Ack: func(lsn pglogrepl.LSN) { r.acks = append(r.acks, lsn) },
		WarningPercent: []float64{75}, Observer: r, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// message is a transaction's pg_logical_emit_message change, which the
// mapper turns into one event (or a rejection, for content that is not an
// event).
func message(lsn pglogrepl.LSN, content string) *cdc.Change {
	return &cdc.Change{
		Op:        cdc.OpMessage,
		Message:   &cdc.Message{Prefix: "dzdesk", Content: []byte(content), Transactional: true, LSN: lsn - 8},
		CommitLSN: lsn, CommitTime: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC),
	}
}

const shipped = `{"event":"order.shipped","data":{"order":"ord_1"}}`

// TestTrusted: a checkpoint is trusted only when it can be this
// cluster's: written for this system (or before system ids were
// recorded) and not ahead of the WAL.
func TestTrusted(t *testing.T) {
	const walEnd = pglogrepl.LSN(1000)
	for _, tc := range []struct {
		name string
		cp   journal.Checkpoint
		want pglogrepl.LSN
		drop bool
	}{
		{"none", journal.Checkpoint{}, 0, false},
		{"this cluster", journal.Checkpoint{LSN: 900, SystemID: systemID}, 900, false},
		{"at the WAL's end", journal.Checkpoint{LSN: 1000, SystemID: systemID}, 1000, false},
		{"idle at the WAL's end, written at the position itself", journal.Checkpoint{LSN: 1000, End: 1000, SystemID: systemID}, 1000, false},
		{"idle at the WAL's end", journal.Checkpoint{LSN: 999, End: 1000, SystemID: systemID}, 999, false},
		// A commit that starts at the WAL's end: the WAL lacks it.
		{"a commit the WAL lacks", journal.Checkpoint{LSN: 1000, End: 1040, SystemID: systemID}, 0, true},
		{"written before system ids", journal.Checkpoint{LSN: 900}, 900, false},
		{"another cluster", journal.Checkpoint{LSN: 900, SystemID: "7300000000000000002"}, 0, true},
		{"ahead of the WAL", journal.Checkpoint{LSN: 1001, SystemID: systemID}, 0, true},
		{"ahead of the WAL, before system ids", journal.Checkpoint{LSN: 5000}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := trusted(tc.cp, systemID, walEnd)
			if got != tc.want || (why != "") != tc.drop {
				t.Errorf("trusted(%+v) = %s, %q; want %s, dropped %v", tc.cp, got, why, tc.want, tc.drop)
			}
		})
	}
}

// TestUseCheckpointDropsUntrusted: a checkpoint of another cluster is
// forgotten in the journal too, and the transactions below it are
// processed, not skipped.
func TestUseCheckpointDropsUntrusted(t *testing.T) {
	r := &recorder{}
	p := newPipeline(t, r)
	cp := journal.Checkpoint{LSN: 500, SystemID: "7300000000000000002"}
	if err := p.UseCheckpoint(context.Background(), cp, 1000); err != nil {
		t.Fatal(err)
	}
	if p.Checkpoint() != 0 || !slices.Equal(r.resets, []journal.Checkpoint{cp}) {
		t.Fatalf("checkpoint %s, resets %+v; want 0 and the dropped checkpoint reset", p.Checkpoint(), r.resets)
	}
	ctx := context.Background()
	if err := p.HandleChange(ctx, message(400, shipped)); err != nil {
		t.Fatal(err)
	}
	if err := p.HandleCommit(ctx, cdc.Commit{CommitLSN: 400}); err != nil {
		t.Fatal(err)
	}
	if len(r.dispatched) != 1 || !slices.Equal(r.commits, []pglogrepl.LSN{400}) || len(r.acks) != 0 {
		t.Errorf("dispatched %d, commits %v, acks %v; want the transaction below the dropped checkpoint journaled", len(r.dispatched), r.commits, r.acks)
	}
}

// TestUseCheckpointClearsAHandledRestore: a checkpoint at or below a
// restore's recorded WAL end is trusted, and the mark is cleared (the
// restore is handled; kept, it dropped the checkpoint at a later routine
// start, once streaming had moved it past the mark: found by a review);
// one past the mark is dropped, its mark with it.
func TestUseCheckpointClearsAHandledRestore(t *testing.T) {
	ctx := context.Background()
	r := &recorder{}
	p := newPipeline(t, r)
	below := journal.Checkpoint{LSN: 900, SystemID: systemID, RestoredBelow: 950}
	if err := p.UseCheckpoint(ctx, below, 1000); err != nil {
		t.Fatal(err)
	}
	if p.Checkpoint() != 900 || !slices.Equal(r.cleared, []journal.Checkpoint{below}) || len(r.resets) != 0 {
		t.Errorf("below the mark: checkpoint %s, cleared %+v, resets %+v; want 900 trusted and the mark cleared", p.Checkpoint(), r.cleared, r.resets)
	}
	// Past the mark, or a commit starting at it, which ends past it: a
	// commit the restored WAL lacks (trusted: found by a review).
	for _, past := range []journal.Checkpoint{{LSN: 960, SystemID: systemID, RestoredBelow: 950}, {LSN: 950, End: 990, SystemID: systemID, RestoredBelow: 950}} {
		r = &recorder{}
		p = newPipeline(t, r)
		if err := p.UseCheckpoint(ctx, past, 1000); err != nil {
			t.Fatal(err)
		}
		if p.Checkpoint() != 0 || len(r.cleared) != 0 || !slices.Equal(r.resets, []journal.Checkpoint{past}) {
			t.Errorf("%s, the mark at %s: checkpoint %s, cleared %+v, resets %+v; want it dropped", pglogrepl.LSN(past.LSN), past.RestoredBelow, p.Checkpoint(), r.cleared, r.resets)
		}
	}
}

// TestReplaySkip: changes at or below the checkpoint are skipped and
// their commits acknowledged at once, without the journal; changes above
// it are dispatched and their commits go to the journal, which
// acknowledges them once durable.
func TestReplaySkip(t *testing.T) {
	r := &recorder{}
	p := newPipeline(t, r)
	ctx := context.Background()
	if err := p.UseCheckpoint(ctx, journal.Checkpoint{LSN: 200, SystemID: systemID}, 1000); err != nil {
		t.Fatal(err)
	}
	if len(r.resets) != 0 {
		t.Fatalf("a checkpoint of this cluster was reset: %+v", r.resets)
	}
	for _, lsn := range []pglogrepl.LSN{100, 200, 300} {
		if err := p.HandleChange(ctx, message(lsn, shipped)); err != nil {
			t.Fatal(err)
		}
		bad := message(lsn, `{"event":"not.declared","data":{}}`)
		bad.Ordinal = 1 // the transaction's second change
		if err := p.HandleChange(ctx, bad); err != nil {
			t.Fatal(err)
		}
		if err := p.HandleCommit(ctx, cdc.Commit{CommitLSN: lsn}); err != nil {
			t.Fatal(err)
		}
	}
	if want := []pglogrepl.LSN{100, 200}; !slices.Equal(r.acks, want) {
		t.Errorf("acknowledged at once %v, want %v", r.acks, want)
	}
	if want := []pglogrepl.LSN{300}; !slices.Equal(r.commits, want) {
		t.Errorf("commits to the journal %v, want %v", r.commits, want)
	}
	if len(r.dispatched) != 1 || r.dispatched[0].CommitLSN != 300 || r.dispatched[0].Type != "order.shipped" {
		t.Errorf("dispatched %+v, want the one event of LSN 300", r.dispatched)
	}
	// Its position keys it in the journal (a transaction streamed again
	// records it once).
	if len(r.rejections) != 1 || r.rejections[0].CommitLSN != 300 || r.rejections[0].Ordinal != 1 || r.rejected != 1 {
		t.Errorf("rejections %+v (counted %d), want the one of LSN 300, change 1", r.rejections, r.rejected)
	}
}

// TestSessionStartedMovesForward: at a new replication session the
// checkpoint another process wrote meanwhile is adopted, if it is this
// cluster's and ahead; one moved back on purpose (a failover's rewind to
// the fork, a start's reset) is taken too: kept, a standby taking over
// after a rewind skipped the new server's transactions below it.
func TestSessionStartedMovesForward(t *testing.T) {
	r := &recorder{}
	p := newPipeline(t, r)
	ctx := context.Background()
	if err := p.UseCheckpoint(ctx, journal.Checkpoint{LSN: 200, SystemID: systemID}, 1000); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		stored journal.Checkpoint
		want   pglogrepl.LSN
	}{
		{journal.Checkpoint{LSN: 300, SystemID: systemID}, 300},
		{journal.Checkpoint{LSN: 250, SystemID: systemID, Timeline: 2}, 250},
		{journal.Checkpoint{LSN: 900, SystemID: "7300000000000000002"}, 250},
		{journal.Checkpoint{LSN: 100, SystemID: "7300000000000000002"}, 250},
		{journal.Checkpoint{LSN: 400, SystemID: systemID}, 400},
		{journal.Checkpoint{}, 0},
	} {
		r.stored = step.stored
		p.SessionStarted(ctx)
		if got := p.Checkpoint(); got != step.want {
			t.Errorf("after a session with %+v stored: checkpoint %s, want %s", step.stored, got, step.want)
		}
	}
}

// TestArmHorizon: a timer whose moment is older than the journal's
// retention is not armed: it fired then (or was missed then), and the
// journal has pruned its row and its event, all that kept it from firing
// again; an update of a long-breached SLA sent its breach a second time.
func TestArmHorizon(t *testing.T) {
	r := &recorder{}
	p := newPipeline(t, r)
	p.cfg.ArmHorizon = 30 * 24 * time.Hour
	names := []string{"id", "request_id", "sla_type", "started_at", "target_at", "completed_at"}
	cols := make([]cdc.Column, len(names))
	for i, n := range names {
		cols[i] = cdc.Column{Name: n, TypeOID: 25} // text
		if strings.HasSuffix(n, "_at") {
			cols[i].TypeOID = 1184 // timestamptz
		}
	}
	rel := cdc.NewRelation(9, "public", "request_slas", 'f', cols)
	update := func(started, target time.Time) *cdc.Change {
		v := func(x any) cdc.Value { return cdc.Value{V: x} }
		return &cdc.Change{Op: cdc.OpUpdate, Relation: rel, CommitLSN: 0x100, CommitTime: time.Now(),
			New: cdc.Tuple{v(int64(7)), v(int64(1)), v("resolution"), v(started), v(target), {State: cdc.Null}}}
	}
	now := time.Now()
	if err := p.HandleChange(context.Background(), update(now.Add(-90*24*time.Hour), now.Add(-60*24*time.Hour))); err != nil {
		t.Fatal(err)
	}
	if err := p.HandleChange(context.Background(), update(now.Add(-time.Hour), now.Add(3*time.Hour))); err != nil {
		t.Fatal(err)
	}
	if len(r.timers) != 2 {
		t.Fatalf("%d timer changes, want 2", len(r.timers))
	}
	if n := len(r.timers[0].Arm); n != 0 {
		t.Errorf("an SLA breached 60 days ago: %d timers armed (%+v), want none", n, r.timers[0].Arm)
	}
	if n := len(r.timers[1].Arm); n != 2 {
		t.Errorf("an SLA due in 3 hours: %d timers armed, want its warning and breach", n)
	}
}
