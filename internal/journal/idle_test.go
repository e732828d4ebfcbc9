package journal

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// TestIdlePositionCheckpointsCommitsBeforeIt: a position the stream was
// idle at (Writer.Idle), a gap an operator accepts and a slot position
// adopted move the checkpoint to end at that position and to cover the
// commits before it only: a transaction whose commit record starts
// exactly there (open while the stream was idle) is still streamed and
// must not be skipped as journaled (the pipeline skips commits at or
// below the checkpoint). Idle acknowledges the position less one. All
// three used to put the checkpoint at the position itself (found by a
// review, 2026-12-06).
func TestIdlePositionCheckpointsCommitsBeforeIt(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	acks := make(chan pglogrepl.LSN, 8)
	w, err := NewWriter(WriterConfig{Store: s, Slot: "dzhook", SystemID: "sys", Linger: -1, Ack: func(l pglogrepl.LSN) { acks <- l }})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	defer func() { stop(); <-done }()

	const x = pglogrepl.LSN(0x1958F00)
	if err := w.Idle(ctx, x); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-acks:
		if got != x-1 {
			t.Fatalf("Idle(%s) acknowledged %s, want %s", x, got, x-1)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the idle position was never acknowledged")
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.LSN != x-1 || cp.End != x {
		t.Fatalf("checkpoint after Idle(%s) = %+v (%v), want LSN %s, End %s", x, cp, err, x-1, x)
	}
	const to = pglogrepl.LSN(0x2000000)
	if err := s.AcceptGap(ctx, Gap{Slot: "dzhook", SystemID: "sys", From: x, To: to}, "test"); err != nil {
		t.Fatal(err)
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.LSN != to-1 || cp.End != to {
		t.Fatalf("checkpoint after an accepted gap to %s = %+v (%v), want LSN %s, End %s", to, cp, err, to-1, to)
	}
	const adopted = pglogrepl.LSN(0x3000000)
	if err := s.AdoptSlotPosition(ctx, "dzhook", "sys", adopted); err != nil {
		t.Fatal(err)
	}
	if cp, err := s.Checkpoint(ctx, "dzhook"); err != nil || cp.LSN != adopted-1 || cp.End != adopted {
		t.Fatalf("checkpoint after adopting %s = %+v (%v), want LSN %s, End %s", adopted, cp, err, adopted-1, adopted)
	}
}
