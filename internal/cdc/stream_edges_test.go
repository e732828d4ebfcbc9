package cdc

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
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

// TestNewSessionWaitsForRoomAsAMessageDoes: a session that starts while
// the processor is blocked with the queue full (a mapping stall in a
// catch-up, then the connection dropped) answers the server with status
// updates while its start marker waits, and ends on Interrupt. It used to
// wait silent, ignoring Interrupt, its slot active, until the server's
// wal_sender_timeout ended it (found by a review, 2026-12-06).
func TestNewSessionWaitsForRoomAsAMessageDoes(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	gate := make(chan struct{})
	var first atomic.Bool
	first.Store(true)
	s := startStreamWith(t, db, rec, func(c *Config) {
		c.StatusInterval = 200 * time.Millisecond
		c.OnSession = func(ctx context.Context) {
			if !first.Swap(false) {
				return
			}
			select { // the processor stalls at the first session's start
			case <-gate:
			case <-ctx.Done():
			}
		}
	})
	defer close(gate)
	db.Exec(t, `INSERT INTO users (id, email) SELECT g, 'u' || g || '@x' FROM generate_series(1, 1000) g`)
	testutil.Eventually(t, 30*time.Second, "the queue full behind the stalled processor", func() bool { return s.busy.Load() >= 256+2 })
	db.Exec(t, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'dzhook'`)
	testutil.Eventually(t, 30*time.Second, "a new session", func() bool { st := s.Stats(); return st.Reconnects >= 1 && st.Connected })
	before := s.Stats().StatusUpdates
	testutil.Eventually(t, 5*time.Second, "status updates from the new session while its start waits", func() bool {
		return s.Stats().StatusUpdates >= before+2
	})
	reconnects := s.Stats().Reconnects
	s.Interrupt(errors.New("journal down"))
	testutil.Eventually(t, 10*time.Second, "the waiting session ended by Interrupt", func() bool { return s.Stats().Reconnects > reconnects })
}
