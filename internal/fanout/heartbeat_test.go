package fanout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

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
	// Writes every second check: about 2 s apart (a write every check,
	// as before, was 1 s apart). The write's age is on the clock from its
	// answer: one that took over half a second (a loaded journal) moves
	// the next write to the third check, 3 s on, as it should
	// (TestHeartbeatWriteAgeOnTheClock). So no gap may be under 1.5 s,
	// and of up to three gaps one must be about 2 s: writes every third
	// check would make all three 3 s.
	last := nextWrite(nextWrite(time.Time{}, 5*time.Second), 5*time.Second)
	var gaps []time.Duration
	for len(gaps) < 3 {
		w := nextWrite(last, 5*time.Second)
		gap := w.Sub(last)
		last = w
		gaps = append(gaps, gap)
		if gap < 1500*time.Millisecond {
			t.Fatalf("heartbeat rows written %v apart (gaps %v), want about 2s (every other 1s check)", gap, gaps)
		}
		if gap <= 2500*time.Millisecond {
			break
		}
	}
	if gap := gaps[len(gaps)-1]; gap > 2500*time.Millisecond {
		t.Errorf("heartbeat rows written %v apart, want about 2s (every other 1s check)", gaps)
	}
	// Right after a write, another process appears: the next check, a
	// second later, reads it without writing. A row that lands after
	// that check (a loaded machine) is learned of by the writing check
	// after it, which tells nothing: the newcomer then leaves and comes
	// again after the next write, three times at most. A process that
	// learned of others only when it writes fails all three.
	for attempt := 1; ; attempt++ {
		written := nextWrite(beat(), 5*time.Second)
		db.Exec(t, `INSERT INTO dzhook.instances (id, hostname) VALUES ('i2', 'elsewhere')`)
		testutil.Eventually(t, 5*time.Second, "the newcomer learned of", func() bool { return d.Peers() == 1 })
		at := beat()
		if at.Equal(written) {
			return
		}
		if attempt == 3 {
			t.Fatalf("the check that learned of the newcomer wrote the row, three times (%v, last write %v): want a read-only check", at, written)
		}
		db.Exec(t, `DELETE FROM dzhook.instances WHERE id = 'i2'`)
		testutil.Eventually(t, 5*time.Second, "the newcomer's leaving learned of", func() bool { return d.Peers() == 0 })
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
	// 4 s and the slow checks' own journal round trips; every third
	// check would be 6 s.
	if gap := w2.Sub(w1); gap > 5500*time.Millisecond {
		t.Errorf("heartbeat rows written %v apart with 2 s checks, want every other check (4 s)", gap)
	}
}

// TestHeartbeatSkewLeavesOutTheWaitForAConnection: a heartbeat check that
// waits 3-4 s for the pool's one connection must not take the wait for
// the journal's lead on this host's clock: measured from before the
// wait, the journal looked half the wait ahead (due times pushed that
// far, and a clock skew logged that was not there).
func TestHeartbeatSkewLeavesOutTheWaitForAConnection(t *testing.T) {
	store, db := newJournalDB(t)
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var logs lockedBuffer
	d := start(t, store, Config{Journal: journal.New(pool, "dzhook"), Instance: "i1", PollInterval: time.Second, Heartbeat: time.Second,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	testutil.Eventually(t, 5*time.Second, "the first heartbeat", func() bool { return !d.LastHeartbeat().IsZero() })
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // the fault: the pool's one connection busy
	released := time.Now()
	conn.Release()
	testutil.Eventually(t, 5*time.Second, "a heartbeat after the connection came back", func() bool {
		return d.LastHeartbeat().After(released)
	})
	if strings.Contains(logs.String(), "clock differs") {
		t.Errorf("a clock skew was logged for the wait for a connection:\n%s", logs.String())
	}
}

// lockedBuffer is a bytes.Buffer that a logger and the test may use at
// once.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
