package cdc

import (
	"testing"

	"github.com/jackc/pglogrepl"
)

// TestIdlePositionReportedOnAnAckJustBeforeIt: an idle position X is
// reported once its owner acknowledges X-1 (Config.PersistIdle), and a
// transaction whose commit record starts exactly at X (open while the
// stream was idle: a keepalive's WAL end is where the next record
// begins) is not reported flushed by it, only by its own acknowledgement.
// The owner used to acknowledge X itself, which reported that
// transaction's end flushed before anything of it was journaled, and
// its checkpoint at X skipped it when it was streamed again (found by a
// review, 2026-12-06; reproduced against PostgreSQL: the commit record
// started at the idle position and the slot was confirmed past it).
func TestIdlePositionReportedOnAnAckJustBeforeIt(t *testing.T) {
	s, err := New(Config{Slot: "s", Publication: "p", Handler: newRecorder(false),
		PersistIdle: func(pglogrepl.LSN) {}})
	if err != nil {
		t.Fatal(err)
	}
	const x = pglogrepl.LSN(0x1958F00)
	s.mu.Lock()
	s.idleAsked = x
	s.mu.Unlock()
	s.handed(txEnd{commit: x, end: x + 0x30}) // committed at the idle position
	s.Ack(x - 1)                              // what the owner acknowledges for the idle position
	if got := s.advance(); got != x {
		t.Fatalf("flushed %s after the idle position's acknowledgement, want %s (and not the transaction's end %s)", got, x, x+0x30)
	}
	s.Ack(x) // the transaction's own
	if got := s.advance(); got != x+0x30 {
		t.Fatalf("flushed %s after the transaction's acknowledgement, want %s", got, x+0x30)
	}
}
