package fanout

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// heartbeats reads an instance's heartbeat row: beat is its last write
// (zero while the instance has not registered: the dispatcher's first
// heartbeat runs in its own goroutine, after start returned),
// nextWrite waits (up to within) for a write other than after's.
func heartbeats(t *testing.T, db *pgtest.DB, instance string) (beat func() time.Time, nextWrite func(after time.Time, within time.Duration) time.Time) {
	conn := db.Connect(t)
	beat = func() time.Time {
		t.Helper()
		var at time.Time
		err := conn.QueryRow(context.Background(), `SELECT heartbeat_at FROM dzhook.instances WHERE id = $1`, instance).Scan(&at)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			t.Fatal(err)
		}
		return at
	}
	nextWrite = func(after time.Time, within time.Duration) time.Time {
		t.Helper()
		var at time.Time
		testutil.Eventually(t, within, fmt.Sprintf("a heartbeat written after %v", after), func() bool {
			at = beat()
			return !at.Equal(after)
		})
		return at
	}
	return beat, nextWrite
}

// TestHeartbeatWritesEveryHalfHeartbeat: with a 4 s heartbeat the process
// checks for others every second but writes its row every other check
// (half a heartbeat), and a newcomer is learned of by a check that
// writes nothing.
func TestHeartbeatWritesEveryHalfHeartbeat(t *testing.T) {
	store, db := newJournalDB(t)
	d := start(t, store, Config{Journal: store, Instance: "i1", PollInterval: time.Second, Heartbeat: 4 * time.Second, Logger: testutil.Logger(t)})
	beat, nextWrite := heartbeats(t, db, "i1")
	w1 := nextWrite(time.Time{}, 5*time.Second)
	w2 := nextWrite(w1, 5*time.Second)
	w3 := nextWrite(w2, 5*time.Second)
	// Writes every second check: about 2 s apart (a write every check,
	// as before, was 1 s apart).
	if gap := w3.Sub(w2); gap < 1500*time.Millisecond || gap > 3*time.Second {
		t.Errorf("heartbeat rows written %v apart, want about 2s (every other 1s check)", gap)
	}
	// Right after a write, another process appears: the next check, a
	// second later, reads it without writing.
	written := nextWrite(w3, 5*time.Second)
	db.Exec(t, `INSERT INTO dzhook.instances (id, hostname) VALUES ('i2', 'elsewhere')`)
	deadline := time.Now().Add(1800 * time.Millisecond)
	for d.Peers() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the newcomer not learned of within 1.8s of its row (peers %d)", d.Peers())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if at := beat(); !at.Equal(written) {
		t.Errorf("the check that learned of the newcomer wrote the row (%v, last write %v): want a read-only check", at, written)
	}
}

// slowBeats is the real journal whose heartbeat checks take delay (a
// journal under load) once slow is set.
type slowBeats struct {
	*journal.Store
	slow  atomic.Bool
	delay time.Duration
}

func (s *slowBeats) wait() {
	if s.slow.Load() {
		time.Sleep(s.delay)
	}
}

func (s *slowBeats) Heartbeat(ctx context.Context, instance string, within time.Duration) (int, time.Time, error) {
	s.wait()
	return s.Store.Heartbeat(ctx, instance, within)
}

func (s *slowBeats) Peers(ctx context.Context, instance string, within time.Duration) (int, time.Time, error) {
	s.wait()
	return s.Store.Peers(ctx, instance, within)
}

// TestHeartbeatWriteAgeOnTheClock: the row's writes are spaced by time,
// not by checks. With a 6 s heartbeat (a write every 2 s at most) and
// checks that take 2 s each, the first check that starts 1.5 s after a
// write writes: every other check, 4 s apart. Counting checks, every
// third would write, 6 s apart.
func TestHeartbeatWriteAgeOnTheClock(t *testing.T) {
	store, db := newJournalDB(t)
	slow := &slowBeats{Store: store, delay: 2 * time.Second}
	start(t, store, Config{Journal: slow, Instance: "i1", PollInterval: time.Second, Heartbeat: 6 * time.Second, Logger: testutil.Logger(t)})
	beat, nextWrite := heartbeats(t, db, "i1")
	nextWrite(time.Time{}, 8*time.Second) // registered
	slow.slow.Store(true)
	w1 := nextWrite(beat(), 8*time.Second)
	w2 := nextWrite(w1, 8*time.Second)
	if gap := w2.Sub(w1); gap > 5*time.Second {
		t.Errorf("heartbeat rows written %v apart with 2 s checks, want every other check (4 s)", gap)
	}
}
