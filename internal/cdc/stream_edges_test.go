package cdc

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/dzdesk/dzhook/internal/testutil"
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
	s := startStreamWith(t, db, rec, func(c *Config) {
		c.StatusInterval = 200 * time.Millisecond
		c.OnSession = stallFirstSession(gate)
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

// flakyTypes fails its first lookups of a type, then asks the catalog.
// It notes whether a failed lookup ran in the reader (inline.go) or in
// the processor's goroutine.
type flakyTypes struct {
	catalog TypeLoader
	stream  atomic.Pointer[Stream]
	fails   atomic.Int32
	inline  atomic.Int32 // failed lookups in the reader
	handed  atomic.Int32 // failed lookups in the processor's goroutine
}

func (f *flakyTypes) LoadType(ctx context.Context, oid uint32) (TypeInfo, error) {
	if f.fails.Add(-1) >= 0 {
		if s := f.stream.Load(); s != nil && s.inlining.Load() != nil {
			f.inline.Add(1)
		} else {
			f.handed.Add(1)
		}
		return TypeInfo{}, errors.New("connection reset by peer (injected)")
	}
	return f.catalog.LoadType(ctx, oid)
}

// TestTypeLookupFailureReconnects: a failed catalog lookup of a type the
// stream meets for the first time (an enum added mid-run) ends the
// session, not the process; the next session describes the table again
// and its changes are handed over once each, decoded. Both where the
// reader processes the relation itself and where the processor's
// goroutine does (behind a busy handler).
func TestTypeLookupFailureReconnects(t *testing.T) {
	for _, inline := range []bool{true, false} {
		t.Run(fmt.Sprintf("inline=%v", inline), func(t *testing.T) {
			db := setupRef(t)
			types := flakyCatalog(t, db, 0)
			rec := newRecorder(true)
			s := startStreamWith(t, db, rec, func(c *Config) { c.types = types })
			types.stream.Store(s)
			db.Exec(t, `CREATE TYPE mood AS ENUM ('sad', 'happy')`, `CREATE TABLE moods (id int PRIMARY KEY, m mood)`,
				`ALTER PUBLICATION dzhook ADD TABLE moods`)
			types.fails.Store(1)
			if !inline {
				// A transaction the handler takes a while over: the
				// reader hands the messages after its first ones to the
				// processor's goroutine (inlineStreak), the moods
				// table's among them.
				rec.mu.Lock()
				rec.delay = 3 * time.Millisecond
				rec.mu.Unlock()
				db.Exec(t, `INSERT INTO users (id, email) SELECT g, 'u' || g || '@x' FROM generate_series(1, 300) g`)
			}
			db.Exec(t, `INSERT INTO moods VALUES (1, 'happy')`, `INSERT INTO moods VALUES (2, 'sad')`)
			want := map[int64]string{1: "happy", 2: "sad"}
			got := map[int64]string{}
			dup := false
			testutil.Eventually(t, 30*time.Second, "both rows of the new table", func() bool {
				ch, _ := rec.snapshot()
				clear(got)
				for _, c := range ch {
					if c.Relation.Name == "moods" {
						id, _ := c.Relation.Get(c.New, "id")
						m, _ := c.Relation.Get(c.New, "m")
						if _, seen := got[id.V.(int64)]; seen {
							dup = true
						}
						got[id.V.(int64)], _ = m.V.(string)
					}
				}
				return len(got) == len(want)
			})
			if !reflect.DeepEqual(got, want) || dup {
				t.Errorf("rows = %v (a row twice: %v), want %v once each", got, dup, want)
			}
			if s.Stats().Reconnects == 0 {
				t.Errorf("no reconnection after the failed lookup")
			}
			switch {
			case types.inline.Load()+types.handed.Load() != 1:
				t.Errorf("failed lookups: %d in the reader, %d in the processor; want one", types.inline.Load(), types.handed.Load())
			case !inline && types.handed.Load() != 1:
				t.Errorf("failed lookups: %d in the reader, %d in the processor; the test meant the processor's", types.inline.Load(), types.handed.Load())
			case inline && types.inline.Load() != 1:
				// The reader hands a message over when the processor is
				// busy, which a loaded machine makes it now and then (CI):
				// the processor's path, the other case's, was taken.
				t.Logf("the lookup failed in the processor's goroutine, not the reader's, this time")
			}
		})
	}
}

// TestIdlePositionAskedAgainAfterOneIsLost: the owner drops one idle
// position without making it durable (the engine's writer.Idle timed out
// enqueueing it, and only logged that at Debug). The stream asks again
// once the interval passes without its acknowledgement, and the slot
// moves on while the stream stays idle. It took the unacknowledged
// position as in flight for ever: the slot stayed where it was, holding
// the WAL the rest of the cluster wrote (found by a review).
func TestIdlePositionAskedAgainAfterOneIsLost(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	var calls atomic.Int32
	startStreamWith(t, db, rec, func(c *Config) {
		c.idleEvery = 300 * time.Millisecond
		c.PersistIdle = func(lsn pglogrepl.LSN) {
			if calls.Add(1) == 1 {
				return // lost: never acknowledged
			}
			go rec.stream.Ack(lsn - 1)
		}
	})
	before := slotConfirmedLSN(t, db)
	// WAL of a table outside the publication: the walsender decodes and
	// skips it, and its keepalives' WAL end moves on with it.
	db.Exec(t, `CREATE TABLE noise (v text)`)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond) // a steady trickle of WAL
		defer tick.Stop()
		for ctx.Err() == nil {
			_ = db.Cluster.Exec(ctx, db.Name, `INSERT INTO noise SELECT repeat('x', 100) FROM generate_series(1, 100)`)
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
	}()
	testutil.Eventually(t, 30*time.Second, "the first idle position asked for", func() bool { return calls.Load() >= 1 })
	waitConfirmed(t, db, "the slot moved past the lost idle position", func(l pglogrepl.LSN) bool { return l > before+16*1024 })
	if n := calls.Load(); n < 2 {
		t.Errorf("PersistIdle called %d times, want the lost position asked again", n)
	}
}

// TestIdlePositionAskedAgainStillCountsTheEarlierOne: a position taken
// as lost and asked again past may only have been slow: its
// acknowledgement, arriving after the next was asked for, reports it.
// Counting the last position alone, a journal slower than the interval
// had each position acknowledged after the next was asked, and the
// stream never reported one.
func TestIdlePositionAskedAgainStillCountsTheEarlierOne(t *testing.T) {
	s, err := New(Config{Slot: "s", Publication: "p", Handler: newRecorder(false),
		PersistIdle: func(pglogrepl.LSN) {}})
	if err != nil {
		t.Fatal(err)
	}
	const x, y = pglogrepl.LSN(0x1958F00), pglogrepl.LSN(0x1960000)
	s.mu.Lock()
	s.idleEarlier, s.idleAsked = x, y
	s.mu.Unlock()
	s.Ack(x - 1) // the slow acknowledgement of the earlier position
	if got := s.advance(); got != x {
		t.Fatalf("flushed %s after the earlier idle position's acknowledgement, want %s", got, x)
	}
	s.Ack(y - 1)
	if got := s.advance(); got != y {
		t.Fatalf("flushed %s after the later idle position's acknowledgement, want %s", got, y)
	}
}
