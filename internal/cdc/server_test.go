package cdc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestFailoverToAServerBehind: the stream's server is replaced by one
// whose WAL stands lower (a restore of a backup, or a standby promoted
// while behind, with the slot as it was then). The stream refuses to
// stream from it, says why, and never reports the position it had
// reached there: the slot stays within the server's WAL, and the new
// server's transactions are not skipped as handled.
func TestFailoverToAServerBehind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary, db := sourceCluster(t)
	// The server failed over to: the cluster as it is now, slot included.
	behind, err := primary.Clone()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(behind.Close)
	old := &pgtest.DB{Name: "dz", DSN: behind.DSN("dz"), Cluster: behind}

	px := testutil.NewSwitchProxy(t, primary.Addr())
	rec := newRecorder(true)
	s := startStreamWith(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: primary}, rec, func(c *Config) {})
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'before@x')`, `INSERT INTO users (id, email) VALUES (2, 'before2@x')`)
	_, commits := rec.waitCommits(t, 2)
	read := commits[1].EndLSN
	waitConfirmed(t, db, "the primary's slot past the stream's transactions", func(l pglogrepl.LSN) bool { return l >= read })

	walEnd := func(d *pgtest.DB) pglogrepl.LSN {
		var s string
		if err := d.Connect(t).QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		l, _ := pglogrepl.ParseLSN(s)
		return l
	}
	if end := walEnd(old); end >= read {
		t.Fatalf("the clone's WAL (%s) is not behind what the stream read (%s)", end, read)
	}
	px.SwitchTo(behind.Addr())
	old.Exec(t, `INSERT INTO users (id, email) VALUES (3, 'after@x')`)

	testutil.Eventually(t, 30*time.Second, "the stream refusing the server behind", func() bool {
		return strings.Contains(s.Stats().Problem, "refuses to stream")
	})
	if p := s.Stats().Problem; !strings.Contains(p, "before "+read.String()) || !strings.Contains(p, "fresh journal.schema") {
		t.Errorf("Problem = %q, want the positions and the way out named", p)
	}
	if got := slotConfirmedLSN(t, old); got > walEnd(old) {
		t.Errorf("the new server's slot was told %s, past its WAL's end", got)
	}
	if handedOver(rec, "after@x") {
		t.Errorf("the new server's transaction was handed over while the stream refuses it")
	}
}

// TestStandbyReachedForAMomentIsTriedAgain: a session whose connection
// reaches a standby (a virtual IP not yet moved, DNS in a failover) is
// told apart from a server behind: its WAL end is only what it received,
// and PostgreSQL 15 cannot decode on it. The stream says so and tries
// again, and streams on once the primary is reached. (Judged as a
// server behind, it was refused for the rest of the process.)
func TestStandbyReachedForAMomentIsTriedAgain(t *testing.T) {
	t.Parallel()
	primary, db := sourceCluster(t)
	standby, err := primary.CloneStandby()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(standby.Close)
	px := testutil.NewSwitchProxy(t, primary.Addr())
	rec := newRecorder(true)
	s := startStreamWith(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: primary}, rec, func(c *Config) {})
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'before@x')`, `SELECT pg_switch_wal()`, `INSERT INTO users (id, email) VALUES (2, 'before2@x')`)
	rec.waitCommits(t, 2)

	px.SwitchTo(standby.Addr())
	testutil.Eventually(t, 30*time.Second, "the stream saying it reached a standby", func() bool {
		return strings.Contains(s.Stats().Problem, "is a standby (in recovery)")
	})
	px.SwitchTo(primary.Addr())
	db.Exec(t, `INSERT INTO users (id, email) VALUES (3, 'after@x')`)
	testutil.Eventually(t, 60*time.Second, "the primary's transaction after the standby", func() bool {
		return handedOver(rec, "after@x")
	})
}

func TestParseHistory(t *testing.T) {
	content := []byte("1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2000-01-01\n")
	for _, tc := range []struct {
		old  int32
		want pglogrepl.LSN
	}{{1, 0x3000158}, {2, 0x5000000}, {3, 0}} {
		if got := parseHistory(content, tc.old); got != tc.want {
			t.Errorf("timeline %d: got %s, want %s", tc.old, got, tc.want)
		}
	}
}

// TestResumeJudgesTheFirstSession: a stream seeded with where a process
// read to before (Config.Resume: the journal's checkpoint, on timeline
// 1) refuses, from its first session, a server whose timeline forked
// below that position, and streams from one that forked at it, on the
// new timeline (Timeline).
func TestResumeJudgesTheFirstSession(t *testing.T) {
	t.Parallel()
	primary, _ := sourceCluster(t)
	_, promoted, sysID, fork := promote(t, primary)
	promoted.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'after@x')`) // the WAL past fork+1

	// A checkpoint is a commit's start, read to its end (End): a commit
	// that starts at the fork is the lost branch's (the journal's fence
	// and RecordFork hold so too; judged at its start, it was accepted
	// and the fork's record refused at every try: found by a review).
	behind := startStreamWith(t, promoted, newRecorder(true), func(c *Config) {
		c.Resume = Resume{SystemID: sysID, Timeline: 1, LSN: fork, End: fork + 0x40}
	})
	testutil.Eventually(t, 30*time.Second, "the first session refusing the server", func() bool {
		return strings.Contains(behind.Stats().Problem, "refuses to stream")
	})
	if p := behind.Stats().Problem; !strings.Contains(p, "timeline 2 left timeline 1 at "+fork.String()) || !strings.Contains(p, "before "+(fork+0x40).String()) {
		t.Errorf("Problem = %q, want the timelines and the fork named", p)
	}

	// An idle position at the fork (a checkpoint one below it, or one
	// written at the position itself before 2026-12-06: End equal to
	// LSN) carries on.
	rec := newRecorder(true)
	s := startStreamWith(t, promoted, rec, func(c *Config) {
		c.Resume = Resume{SystemID: sysID, Timeline: 1, LSN: fork, End: fork}
	})
	rec.waitCommits(t, 1)
	if got := s.Timeline(); got != 2 {
		t.Errorf("Timeline() = %d, want 2", got)
	}

	// Judged at its start below the fork, but the journal says another
	// process read past it on timeline 1 since (a standby process taking
	// the slot over): refused too.
	later := newRecorder(true)
	taken := startStreamWith(t, promoted, later, func(c *Config) {
		c.Resume = Resume{SystemID: sysID, Timeline: 1, LSN: fork - 1, End: fork}
		c.Journaled = func(context.Context) (Resume, error) {
			return Resume{SystemID: sysID, Timeline: 1, LSN: fork, End: fork + 0x40}, nil
		}
	})
	testutil.Eventually(t, 30*time.Second, "the session refusing the server behind the journal", func() bool {
		return strings.Contains(taken.Stats().Problem, "refuses to stream")
	})
	if p := taken.Stats().Problem; !strings.Contains(p, "before "+(fork+0x40).String()) {
		t.Errorf("Problem = %q, want the journal's position named", p)
	}
	if ch, _ := later.snapshot(); len(ch) != 0 {
		t.Errorf("%d changes handed over by the refused stream", len(ch))
	}
}

// TestJournaledAheadOnTheSameTimelineRefused: the journal says another
// process read this slot past the server's WAL, on its own timeline (the
// source restored from a snapshot while two processes shared the slot):
// the session refuses, as the process that read there does. Judged only
// against what it read itself, a process taking the slot over adopted
// that checkpoint and skipped the restored server's transactions below it.
func TestJournaledAheadOnTheSameTimelineRefused(t *testing.T) {
	ctx := context.Background()
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema)
	runSetup(t, db, SetupConfig{Slot: "dzhook", Publication: "dzhook", Tables: referenceTables,
		FullIdentity: []string{"public.users", "public.requests", "public.request_slas"}})
	var sysID, end string
	var tli int32
	if err := db.Connect(t).QueryRow(ctx, `SELECT system_identifier::text, pg_current_wal_flush_lsn()::text, (SELECT timeline_id FROM pg_control_checkpoint())
		FROM pg_control_system()`).Scan(&sysID, &end, &tli); err != nil {
		t.Fatal(err)
	}
	walEnd, _ := pglogrepl.ParseLSN(end)
	ahead := walEnd + 64<<20
	rec := newRecorder(true)
	s := startStreamWith(t, db, rec, func(c *Config) {
		c.Journaled = func(context.Context) (Resume, error) { return Resume{SystemID: sysID, Timeline: tli, LSN: ahead}, nil }
	})
	testutil.Eventually(t, 30*time.Second, "the session refusing the server behind the journal", func() bool {
		return strings.Contains(s.Stats().Problem, "refuses to stream")
	})
	if p := s.Stats().Problem; !strings.Contains(p, "before "+ahead.String()) {
		t.Errorf("Problem = %q, want the journal's position named", p)
	}
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'after@x')`)
	if ch, _ := rec.snapshot(); len(ch) != 0 {
		t.Errorf("%d changes handed over by the refused stream", len(ch))
	}
}

// TestStandbyJudgedByTheJournalNow: a process that has read nothing
// judges the server by where the journal says the slot was read to now,
// not at its start: another process moved the checkpoint back to the
// fork after a failover, and this one, seeded past the fork, streams. It
// refused for the rest of the process (a standby that never took over).
func TestStandbyJudgedByTheJournalNow(t *testing.T) {
	t.Parallel()
	primary, _ := sourceCluster(t)
	_, promoted, sysID, fork := promote(t, primary)
	promoted.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'after@x')`)
	var moved atomic.Bool
	rec := newRecorder(true)
	s := startStreamWith(t, promoted, rec, func(c *Config) {
		c.Resume = Resume{SystemID: sysID, Timeline: 1, LSN: fork + 1}
		c.Journaled = func(context.Context) (Resume, error) {
			if moved.Load() {
				return Resume{SystemID: sysID, Timeline: 2, LSN: fork - 1}, nil
			}
			return Resume{SystemID: sysID, Timeline: 1, LSN: fork + 1}, nil
		}
	})
	testutil.Eventually(t, 30*time.Second, "the session refusing the server while the journal is past the fork", func() bool {
		return strings.Contains(s.Stats().Problem, "refuses to stream")
	})
	moved.Store(true) // another process's start moved it back to the fork
	rec.waitCommits(t, 1)
}

// TestJournalForkJudgedAgainForAProcessThatRead: a process that read a
// little on timeline 1, below the fork, meets the promoted server while
// the journal says another process read past the fork: refused, naming
// the journal's checkpoint, and judged again at each try, so that once
// another process's start moves the checkpoint back to the fork it
// streams, as a process that read nothing does. The refusal was kept
// for the rest of the process (found by a review).
func TestJournalForkJudgedAgainForAProcessThatRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary, db := sourceCluster(t)
	var sysID string
	if err := db.Connect(t).QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&sysID); err != nil {
		t.Fatal(err)
	}
	var j atomic.Pointer[Resume]
	j.Store(&Resume{SystemID: sysID, Timeline: 1})
	px := testutil.NewSwitchProxy(t, primary.Addr())
	rec := newRecorder(true)
	s := startStreamWith(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: primary}, rec, func(c *Config) {
		c.Resume = Resume{SystemID: sysID, Timeline: 1}
		c.Journaled = func(context.Context) (Resume, error) { return *j.Load(), nil }
	})
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'old@x')`)
	rec.waitCommits(t, 1)
	px.Cut()
	cl, promoted, _, fork := promote(t, primary)
	j.Store(&Resume{SystemID: sysID, Timeline: 1, LSN: fork + 1}) // another process read past the fork
	px.SwitchTo(cl.Addr())
	testutil.Eventually(t, 30*time.Second, "the session refusing the server while the journal is past the fork", func() bool {
		return strings.Contains(s.Stats().Problem, "where the journal's checkpoint (a dzhook process) already read to")
	})
	if s.changed.Load() != nil {
		t.Error("the refusal by the journal's position is kept for the rest of the process")
	}
	j.Store(&Resume{SystemID: sysID, Timeline: 2, LSN: fork - 1}) // another process's start moved it back
	promoted.Exec(t, `INSERT INTO users (id, email) VALUES (3, 'new@x')`)
	rec.waitCommits(t, 2)
}

// TestFailoverWithABacklogJudgedWithIt: a failover in the middle of a
// catch-up, the processor stalled (held here at the session's start),
// with its queue holding what the old timeline has past the new one's
// fork: transactions, or non-transactional logical messages (each handed
// over as a transaction of its own), or the first part of a transaction
// whose commit the session never received. The next session judges the new
// server against what was queued too, and refuses it, for good once the
// queue is handed over. It judged it
// against what had been handed over, accepted it, and the queue of the
// old timeline past the fork was handed over after it (found by two
// reviews).
func TestFailoverWithABacklogJudgedWithIt(t *testing.T) {
	t.Parallel()
	row := func(i int) string { return fmt.Sprintf(`INSERT INTO users (id, email) VALUES (%d, 'u%d@x')`, i, i) }
	for _, tc := range []struct {
		name string
		sql  func(i int) string
		// after, when set, is what the old primary commits past the fork
		// instead of sql's 11th to 400th.
		after string
	}{
		{"transactions", row, ""},
		{"logical messages", func(int) string {
			return `SELECT pg_logical_emit_message(false, 'dzdesk', '{"event":"x.y","data":{}}')`
		}, ""},
		// One transaction of 390 rows, its commit beyond what the queue
		// holds: the changes handed over before it come count up to its
		// commit record (found by a review: its events went out, and the
		// new timeline was accepted below it).
		{"a transaction cut short", row, `INSERT INTO users (id, email) SELECT g, 'u' || g || '@x' FROM generate_series(11, 400) g`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			primary, db := sourceCluster(t)
			var sql []string
			for i := 1; i <= 400; i++ {
				sql = append(sql, tc.sql(i))
			}
			db.Exec(t, sql[:10]...)
			cl, promoted, _, fork := promote(t, primary) // forks after the first 10
			if tc.after != "" {
				sql = append(sql[:10], tc.after)
			}
			db.Exec(t, sql[10:]...)

			px := testutil.NewSwitchProxy(t, primary.Addr())
			gate := make(chan struct{})
			rec := newRecorder(true)
			var forked atomic.Pointer[[2]uint64]
			s := startStreamWith(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: primary}, rec, func(c *Config) {
				c.OnSession = stallFirstSession(gate)
				c.Forked = func(_ context.Context, timeline int32, at pglogrepl.LSN) error {
					forked.Store(&[2]uint64{uint64(timeline), uint64(at)})
					return nil
				}
			})
			// The queue reaching past the fork is read from the refusal's
			// Problem below: s.queued is the reader's, which may still be
			// noting the last message queued (a data race, found in CI).
			testutil.Eventually(t, 30*time.Second, "the queue full behind the stalled processor", func() bool { return s.busy.Load() >= 256+1 })
			before := s.Stats().Reconnects
			oldReceived := pglogrepl.LSN(s.received.Load())
			px.SwitchTo(cl.Addr())
			testutil.Eventually(t, 30*time.Second, "the promoted server refused", func() bool {
				if st := s.Stats(); st.Reconnects > before && st.Connected {
					t.Fatalf("the next session streams from the promoted server with %d messages of the old one queued", s.busy.Load())
				}
				return strings.Contains(s.Stats().Problem, "refuses to stream")
			})
			// Judged again while the queue waits, which the processor
			// drops: nothing of it was handed over, and the promoted
			// server is streamed from, sending again what it shares
			// below the fork. Handed over, the old timeline's
			// transactions past the fork went out and the refusal held
			// for good (found by a review).
			if s.changed.Load() != nil {
				t.Error("a refusal due to what is still queued is kept for the rest of the process")
			}
			if p := s.Stats().Problem; !strings.Contains(p, "left timeline 1 at "+fork.String()) || !strings.Contains(p, "not yet handed over") || strings.Contains(p, "fresh journal.schema") {
				t.Errorf("Problem = %q, want the fork named and the queue said to be dropped, without the way out of a final refusal", p)
			}
			close(gate)
			promoted.Exec(t, `INSERT INTO users (id, email) VALUES (2000, 'after@x')`)
			testutil.Eventually(t, 60*time.Second, "the promoted server's transaction handed over", func() bool {
				if s.changed.Load() != nil {
					t.Fatalf("refused for the rest of the process: %s", s.Stats().Problem)
				}
				return handedOver(rec, "after@x")
			})
			if f := forked.Load(); f == nil || f[0] != 2 || pglogrepl.LSN(f[1]) != fork {
				t.Errorf("told Forked %v, want timeline 2 at %s (recorded in the journal, it fences a process still on the old primary)", f, fork)
			}
			if r := pglogrepl.LSN(s.received.Load()); r >= oldReceived {
				t.Errorf("the position received, reported to the promoted server as written, is %s, the old timeline's (%s), past the new WAL", r, oldReceived)
			}
			ch, _ := rec.snapshot()
			below := 0
			for _, c := range ch {
				if c.Message != nil && c.CommitLSN < fork {
					below++
				}
				if c.CommitLSN >= fork && c.Relation != nil {
					if v, _ := c.Relation.Get(c.New, "email"); v.V != "after@x" {
						t.Errorf("a change of the old timeline past the fork was handed over: %s at %s", v.V, c.CommitLSN)
					}
				} else if c.CommitLSN >= fork {
					t.Errorf("a message of the old timeline past the fork was handed over, at %s", c.CommitLSN)
				}
			}
			if tc.name == "logical messages" && below != 10 {
				t.Errorf("%d messages below the fork handed over, want the 10 the promoted server shares, once each", below)
			} else if tc.name != "logical messages" && (!handedOver(rec, "u1@x") || !handedOver(rec, "u10@x")) {
				t.Error("the rows below the fork were not handed over")
			}
		})
	}
}

// TestQueuedEndForgetsOnlyDiscardedSessions: what the sessions queued
// counts, but for the sessions whose queue the processor dropped and
// those before them; a later session's queue still counts (a stale
// discard wiped every session's, and brought back the accepted failover
// of TestFailoverWithABacklogJudgedWithIt: found by a review). Spans
// already handed over are forgotten, and all of them once every queued
// message has been processed.
func TestQueuedEndForgetsOnlyDiscardedSessions(t *testing.T) {
	for _, tc := range []struct {
		name         string
		busy         int64 // messages still to be processed
		discarded    uint64
		handed, want pglogrepl.LSN
		left         int
	}{
		{"nothing discarded", 1, 0, 50, 300, 3},
		{"the second session's queue dropped", 1, 2, 50, 300, 1},
		{"the last session's queue dropped", 1, 3, 50, 0, 0},
		{"all handed over", 1, 0, 300, 0, 0},
		{"the first two handed over", 1, 0, 200, 300, 1},
		{"everything processed", 0, 0, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Stream{queued: []queuedSpan{{1, 100}, {2, 200}, {3, 300}}}
			s.discarded.Store(tc.discarded)
			s.busy.Store(tc.busy)
			if got := s.queuedEnd(tc.handed); got != tc.want || len(s.queued) != tc.left {
				t.Errorf("queuedEnd(%s) = %s with %d spans left, want %s with %d", tc.handed, got, len(s.queued), tc.want, tc.left)
			}
		})
	}
}

// TestBeginAloneInTheQueue: the queue ends with the Begin of a
// transaction past the fork, its first change not yet queued when the
// failover cuts the session. Refused while the queue waits; once it is
// processed, nothing of that transaction was handed over, and the
// promoted server, which carries on everything handed over, is streamed
// from. The Begin's span stayed, and refused it at every try (found by a
// review).
func TestBeginAloneInTheQueue(t *testing.T) {
	t.Parallel()
	primary, db := sourceCluster(t)
	// A transaction of 3 rows (Begin, Relation, 3 inserts, Commit: 6
	// messages), then 83 of one row (3 each): 255 messages; the 256th is
	// the next transaction's Begin, and the reader holds its first change.
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'a1'), (2, 'a2'), (3, 'a3')`)
	var sql []string
	for i := 4; i < 4+83; i++ {
		sql = append(sql, fmt.Sprintf(`INSERT INTO users (id, email) VALUES (%d, 'u%d@x')`, i, i))
	}
	db.Exec(t, sql...)
	cl, promoted, _, _ := promote(t, primary) // forks after all of them
	db.Exec(t, `INSERT INTO users (id, email) SELECT g, 'v' || g || '@x' FROM generate_series(1000, 1400) g`)

	px := testutil.NewSwitchProxy(t, primary.Addr())
	gate := make(chan struct{})
	rec := newRecorder(true)
	s := startStreamWith(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: primary}, rec, func(c *Config) {
		c.OnSession = stallFirstSession(gate)
	})
	testutil.Eventually(t, 30*time.Second, "the reader blocked behind a full queue", func() bool { return s.busy.Load() >= 256+2 })
	px.SwitchTo(cl.Addr())
	testutil.Eventually(t, 30*time.Second, "the promoted server refused while the queue waits", func() bool {
		return strings.Contains(s.Stats().Problem, "refuses to stream")
	})
	close(gate)
	promoted.Exec(t, `INSERT INTO users (id, email) VALUES (2000, 'after@x')`)
	testutil.Eventually(t, 60*time.Second, "the promoted server's transaction handed over", func() bool {
		if s.changed.Load() != nil {
			t.Fatalf("refused for the rest of the process: %s", s.Stats().Problem)
		}
		return handedOver(rec, "after@x")
	})
	if handedOver(rec, "v1000@x") {
		t.Error("a change of the old timeline past the fork was handed over")
	}
}

// pastTheFork sets up a judgment after a failover (timeline 2, promoted
// from primary with nothing more written): a stream whose process read
// to just below the fork on timeline 1, its processor, the Begin of a
// transaction of timeline 1 committed past the fork and one of its
// changes (a transactional logical message), and a replication
// connection to the promoted server. (Messages built by hand: the old
// timeline's WAL past the fork is not in the copy.)
func pastTheFork(t *testing.T) (s *Stream, proc *processor, rec *recorder, begin, change wal, conn *pgconn.PgConn) {
	t.Helper()
	primary, db := sourceCluster(t)
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'before@x')`)
	cl, _, sysID, fork := promote(t, primary)
	rec = newRecorder(true)
	s, err := New(Config{DSN: cl.DSN("dz"), Slot: "dzhook", Publication: "dzhook", Handler: rec, Logger: testLogger(t),
		Resume: Resume{SystemID: sysID, Timeline: 1}})
	if err != nil {
		t.Fatal(err)
	}
	rec.stream = s
	s.handed(txEnd{commit: fork - 0x100, end: fork - 0x80})
	proc = newProcessor(s, newRelations(nil))
	final := fork + 0x4000
	b := []byte{'B'}
	b = binary.BigEndian.AppendUint64(b, uint64(final))
	b = binary.BigEndian.AppendUint64(b, 0) // commit time
	b = binary.BigEndian.AppendUint32(b, 777)
	m := []byte{'M', 1}
	m = binary.BigEndian.AppendUint64(m, uint64(final-0x2000))
	m = append(append(m, "dzdesk"...), 0)
	m = append(binary.BigEndian.AppendUint32(m, 2), "{}"...)
	s.sessions = 1
	begin = wal{data: b, start: final - 0x3000, seq: 1}
	change = wal{data: m, start: final - 0x2000, seq: 1}
	conn, err = ConnectReplication(context.Background(), cl.DSN("dz"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return s, proc, rec, begin, change, conn
}

// TestTwoFailoversRecordTheJournalsFork: a process that read timeline
// 1 below its fork lost contact; another streamed timeline 2 and moved
// the journal's checkpoint there, past timeline 1's fork; timeline 3
// then forked from timeline 2 above that checkpoint. The process accepts
// timeline 3 and tells Forked where it left the checkpoint's timeline
// (2), as RecordFork judges it: its own fork (timeline 1's) was refused
// there at every try, and the process never streamed (found by a
// review).
func TestTwoFailoversRecordTheJournalsFork(t *testing.T) {
	dsn, sysID, fork1, checkpoint, fork2 := twoFailovers(t)
	// This process read timeline 1 below its fork.
	told := judgeTelling(t, dsn, Resume{SystemID: sysID, Timeline: 1, LSN: fork1 - 0x200}, fork1-0x80,
		Resume{SystemID: sysID, Timeline: 2, LSN: checkpoint})
	if len(told) != 1 || told[0] != [2]uint64{3, uint64(fork2)} {
		t.Errorf("told Forked %v, want timeline 3 at %s (where it left timeline 2, the checkpoint's)", told, fork2)
	}
}

// TestTwoFailoversRecordTheCheckpointsForkOverANewerRead: this process
// read timeline 2 past timeline 1's fork while the journal's checkpoint
// is still on timeline 1 below it (what the process read not yet
// journaled); timeline 3 forked from timeline 2. Forked is told where
// timeline 3 left timeline 1, the checkpoint's, at the judgment and at a
// reconnect alike: it also fences timeline 2's valid batches past it
// (the process stops and streams them again from the checkpoint), where
// this process's own fork alone left timeline 1 unfenced between the two
// forks when its own fork had not been written (found by a review).
func TestTwoFailoversRecordTheCheckpointsForkOverANewerRead(t *testing.T) {
	t.Parallel()
	dsn, sysID, fork1, checkpoint, fork2 := twoFailovers(t)
	journal := Resume{SystemID: sysID, Timeline: 1, LSN: fork1 - 0x200}
	want := [][2]uint64{{3, uint64(fork1)}}
	if told := judgeTelling(t, dsn, Resume{SystemID: sysID, Timeline: 2, LSN: checkpoint}, checkpoint+0x80, journal); !slices.Equal(told, want) {
		t.Errorf("told Forked %v, want timeline 3 at %s (where it left timeline 1, the checkpoint's)", told, fork1)
	}
	if told := judgeTelling(t, dsn, Resume{SystemID: sysID, Timeline: 3, LSN: fork2 - 0x200}, fork2-0x80, journal); !slices.Equal(told, want) {
		t.Errorf("a reconnect on timeline 3 told Forked %v, want timeline 3 at %s", told, fork1)
	}
}

// twoFailovers sets up two failovers in a row: timeline 2 promoted from
// timeline 1 at fork1 and written to (checkpoint is one of its
// positions, past fork1), then timeline 3 promoted from timeline 2 at
// fork2, above checkpoint. dsn leads to timeline 3's server.
func twoFailovers(t *testing.T) (dsn, sysID string, fork1, checkpoint, fork2 pglogrepl.LSN) {
	t.Helper()
	ctx := context.Background()
	primary, db := sourceCluster(t)
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'one@x')`)
	cl2, db2, sysID, fork1 := promote(t, primary)
	db2.Exec(t, `INSERT INTO users (id, email) VALUES (2, 'two@x')`)
	if err := db2.Connect(t).QueryRow(ctx, `SELECT pg_current_wal_lsn()`).Scan(&checkpoint); err != nil {
		t.Fatal(err)
	}
	db2.Exec(t, `SELECT pg_switch_wal()`, `INSERT INTO users (id, email) VALUES (3, 'three@x')`)
	cl3, err := cl2.ClonePromoted()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl3.Close)
	var history string
	db3 := &pgtest.DB{Name: "dz", DSN: cl3.DSN("dz"), Cluster: cl3}
	if err := db3.Connect(t).QueryRow(ctx, `SELECT pg_read_file('pg_wal/00000003.history')`).Scan(&history); err != nil {
		t.Fatal(err)
	}
	fork2 = parseHistory([]byte(history), 2)
	if !(fork1 < checkpoint && checkpoint < fork2) {
		t.Fatalf("fork1 %s, checkpoint %s, fork2 %s: want them in that order", fork1, checkpoint, fork2)
	}
	return cl3.DSN("dz"), sysID, fork1, checkpoint, fork2
}

// judgeTelling judges the server at dsn (checkServer) for a stream that
// resumed at from and handed over up to handed itself, with journal the
// journal's checkpoint; it fails unless the server is accepted, and
// returns what Forked was told (timeline, fork).
func judgeTelling(t *testing.T, dsn string, from Resume, handed pglogrepl.LSN, journal Resume) (told [][2]uint64) {
	t.Helper()
	ctx := context.Background()
	s, err := New(Config{DSN: dsn, Slot: "dzhook", Publication: "dzhook", Handler: newRecorder(true), Logger: testLogger(t),
		Resume:    from,
		Journaled: func(context.Context) (Resume, error) { return journal, nil },
		Forked: func(_ context.Context, timeline int32, at pglogrepl.LSN) error {
			told = append(told, [2]uint64{uint64(timeline), uint64(at)})
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	s.handed(txEnd{commit: handed - 0x80, end: handed})
	conn, err := ConnectReplication(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := s.checkServer(ctx, conn); err != nil {
		t.Fatalf("a server that carries on what this process and the journal read: %v", err)
	}
	return told
}

// TestForkRecordedBesideACheckpointWithoutTimeline: a process that read
// timeline 1 below the fork accepts timeline 2 while the journal's
// checkpoint has no timeline (written before journal version 17): its
// own fork is told to Forked. The checkpoint's judgment left it out, and
// a process still on the old primary went unfenced (found by a review).
func TestForkRecordedBesideACheckpointWithoutTimeline(t *testing.T) {
	t.Parallel()
	primary, db := sourceCluster(t)
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'one@x')`)
	cl, _, sysID, fork := promote(t, primary)
	told := judgeTelling(t, cl.DSN("dz"), Resume{SystemID: sysID, Timeline: 1, LSN: fork - 0x200}, fork-0x80,
		Resume{SystemID: sysID, LSN: fork - 0x200})
	if len(told) != 1 || told[0] != [2]uint64{2, uint64(fork)} {
		t.Errorf("told Forked %v, want timeline 2 at %s", told, fork)
	}
}

// TestBeginProcessedByTheReaderCountsItsQueuedChanges: the reader
// processed a transaction's Begin itself (inline.go, the processor idle),
// then queued its changes (the streak's end); the session is cut before
// the commit, which is past the fork. The promoted server is refused
// while those changes wait: a Begin processed there left no span, and the
// fork was accepted below that transaction's commit, its queued changes
// of the dead branch then handed over under timeline 2 (found by a
// review).
func TestBeginProcessedByTheReaderCountsItsQueuedChanges(t *testing.T) {
	ctx := context.Background()
	s, proc, rec, begin, change, conn := pastTheFork(t)
	in := newInliner(ctx, s, proc, conn)
	if done, err := in.try(ctx, begin); !done || err != nil {
		t.Fatalf("the reader did not process the Begin itself: %v, %v", done, err)
	}
	s.busy.Add(1)
	s.noteQueued(&change)
	err := s.checkServer(ctx, conn)
	var changed *ServerChangedError
	if !errors.As(err, &changed) || !changed.Queued {
		t.Fatalf("judged with the transaction's change queued: %v, want a refusal that waits on the queue", err)
	}
	if err := proc.handle(ctx, change); err != nil {
		t.Fatal(err)
	}
	s.busy.Add(-1)
	if ch, _ := rec.snapshot(); len(ch) != 1 {
		t.Fatalf("%d changes handed over, want the one queued", len(ch))
	}
	if err := s.checkServer(ctx, conn); !errors.As(err, &changed) || changed.Queued || s.changed.Load() == nil {
		t.Errorf("judged once the change past the fork was handed over: %v, want a refusal kept for good", err)
	}
}

// TestJudgmentReadsTheQueueBeforeWhatWasHanded: the processor hands over
// the last queued message, a change past the fork of a transaction whose
// Begin it processed, between the judgment's two reads. The queue is read
// first: read the other way round, a busy count of 0 dropped the Begin's
// span while partialEnd was read before the change (found by a review).
func TestJudgmentReadsTheQueueBeforeWhatWasHanded(t *testing.T) {
	ctx := context.Background()
	s, proc, rec, begin, change, conn := pastTheFork(t)
	for _, w := range []*wal{&begin, &change} {
		s.busy.Add(1)
		s.noteQueued(w)
	}
	if err := proc.handle(ctx, begin); err != nil {
		t.Fatal(err)
	}
	s.busy.Add(-1)
	betweenQueueAndPartial = func() {
		if err := proc.handle(ctx, change); err != nil {
			t.Error(err)
		}
		s.busy.Add(-1)
	}
	defer func() { betweenQueueAndPartial = func() {} }()
	err := s.checkServer(ctx, conn)
	if ch, _ := rec.snapshot(); len(ch) != 1 {
		t.Fatalf("%d changes handed over during the judgment, want 1", len(ch))
	}
	if err == nil {
		t.Error("the promoted server was accepted although a change past its fork was handed over during the judgment")
	}
}

// TestRefusalTextNamesTheFork: a fork's refusal names the fork and says
// a failover, whatever the new server's WAL end (a promoted standby's is
// usually below what was read: the text said "a failover ... or a
// restore" without the fork); a restore on the same timeline says so.
func TestRefusalTextNamesTheFork(t *testing.T) {
	fork := &ServerChangedError{Slot: "dzhook", SystemID: "1", PrevSystemID: "1", Timeline: 2, PrevTimeline: 1,
		Fork: 0x1955A00, WALEnd: 0x1955AE0, Read: 0x1959A01}
	restore := &ServerChangedError{Slot: "dzhook", SystemID: "1", PrevSystemID: "1", Timeline: 1, PrevTimeline: 1,
		WALEnd: 0x1955AE0, Read: 0x1959A01}
	other := &ServerChangedError{Slot: "dzhook", SystemID: "1", PrevSystemID: "1", Timeline: 3, PrevTimeline: 2,
		WALEnd: 0x1955AE0, Read: 0x1959A01}
	for _, c := range []struct {
		e        *ServerChangedError
		want     []string
		wantNone string
	}{
		{fork, []string{"timeline 2 left timeline 1 at 0/1955A00", "a failover to a standby that was behind", "moves the journal's checkpoint back"}, "restore"},
		{restore, []string{"WAL ends at 0/1955AE0", "a restore from a backup or a snapshot"}, "failover"},
		{other, []string{"timeline 3 does not descend from timeline 2"}, "left timeline"},
	} {
		got := c.e.PublicReason()
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%q lacks %q", got, w)
			}
		}
		if strings.Contains(got, c.wantNone) {
			t.Errorf("%q says %q", got, c.wantNone)
		}
	}
}

// TestRestoreInsideTheQueueRefusedForGood: a restore (the same cluster
// and timeline) whose WAL ends between what was handed over and what is
// still queued is refused for the rest of the process, and recorded
// (OnRefused), as one below what was handed over is: its WAL's end moves
// on, and a refusal judged again, like a fork's due to the queue alone,
// was accepted once the restored WAL passed the queue, the lost branch
// handed over and the restored server's transactions below it skipped
// (found by a review).
func TestRestoreInsideTheQueueRefusedForGood(t *testing.T) {
	t.Parallel()
	primary, db := sourceCluster(t)
	snap, err := primary.Clone()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(snap.Close)
	var sql []string
	for i := 1; i <= 400; i++ {
		sql = append(sql, fmt.Sprintf(`INSERT INTO users (id, email) VALUES (%d, 'u%d@x')`, i, i))
	}
	db.Exec(t, sql...)

	px := testutil.NewSwitchProxy(t, primary.Addr())
	gate := make(chan struct{})
	defer close(gate)
	recorded := make(chan pglogrepl.LSN, 64)
	s := startStreamWith(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: primary}, newRecorder(true), func(c *Config) {
		c.OnSession = stallFirstSession(gate)
		c.OnRefused = func(_ context.Context, e *ServerChangedError) { recorded <- e.WALEnd }
	})
	testutil.Eventually(t, 30*time.Second, "the queue full behind the stalled processor", func() bool { return s.busy.Load() >= 256+1 })
	px.SwitchTo(snap.Addr())
	testutil.Eventually(t, 30*time.Second, "the restored server refused", func() bool {
		return strings.Contains(s.Stats().Problem, "refuses to stream")
	})
	if s.changed.Load() == nil {
		t.Error("the refusal of a restore whose WAL ends inside the queue is judged again")
	}
	select {
	case w := <-recorded:
		if q := s.changed.Load(); q != nil && w >= q.Read {
			t.Errorf("recorded WAL end %s, not below what was read (%s)", w, q.Read)
		}
	case <-time.After(10 * time.Second):
		t.Error("the restore was not told to OnRefused (recorded in the journal)")
	}
}

// TestFailoverAfterADiscardedBacklog: what the last session queued and
// the processor dropped after a failed type lookup (the catalog's
// connection lost in a failover, say) was never handed over, and is not
// counted as read when the next session judges the promoted server: it
// carries on what was handed over, and is streamed from. Counted, it was
// refused for the rest of the process (found by a review).
func TestFailoverAfterADiscardedBacklog(t *testing.T) {
	t.Parallel()
	primary, db, cl, promoted, _ := moodsPastAFork(t, 300)

	types := flakyCatalog(t, db, 1) // the moods row's lookup, after the fork
	px := testutil.NewSwitchProxy(t, primary.Addr())
	rec := newRecorder(true)
	// A handler that takes a while: the reader hands messages over to
	// the processor (inlineStreak) and queues the transactions past the
	// fork while the processor is still on the 300 rows.
	rec.delay = 3 * time.Millisecond
	s := startStreamWith(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: primary}, rec, func(c *Config) { c.types = types })
	types.stream.Store(s)
	testutil.Eventually(t, 30*time.Second, "the first session streaming", func() bool { return s.Stats().Connected })
	px.Redirect(cl.Addr()) // the next session reaches the promoted server
	testutil.Eventually(t, 60*time.Second, "the promoted server streamed from", func() bool {
		if s.changed.Load() != nil {
			t.Fatalf("the promoted server, which carries on what was handed over, was refused: %s", s.Stats().Problem)
		}
		st := s.Stats()
		return st.Reconnects > 0 && st.Connected
	})
	if types.handed.Load() != 1 {
		t.Fatalf("failed lookups in the processor: %d (in the reader: %d); the test meant one in the processor, with a queue behind it", types.handed.Load(), types.inline.Load())
	}
	rec.mu.Lock()
	rec.delay = 0
	rec.mu.Unlock()
	promoted.Exec(t, `INSERT INTO users (id, email) VALUES (1000, 'after@x')`)
	testutil.Eventually(t, 30*time.Second, "the promoted server's transaction handed over", func() bool {
		return handedOver(rec, "after@x")
	})
}

// TestRefusalByAQueueDroppedAfterIt: the promoted server is judged while
// the last session's queue, past the fork, is still to be processed, and
// refused; the processor then drops that queue (the refusal asks it to;
// a type lookup failing in it, the moods row's, would too), so nothing
// past the fork is ever handed over. The refusal, due to the queue
// alone, is judged again, and the promoted server, which carries on
// everything handed over, is streamed from, sending again the rows it
// shares below the fork. It was refused for the rest of the process
// (found by a review).
func TestRefusalByAQueueDroppedAfterIt(t *testing.T) {
	t.Parallel()
	primary, db, cl, promoted, fork := moodsPastAFork(t, 10)

	types := flakyCatalog(t, db, 1) // the moods row's lookup, past the fork
	px := testutil.NewSwitchProxy(t, primary.Addr())
	gate := make(chan struct{})
	rec := newRecorder(true)
	s := startStreamWith(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: primary}, rec, func(c *Config) {
		c.types = types
		c.OnSession = stallFirstSession(gate)
	})
	types.stream.Store(s)
	testutil.Eventually(t, 30*time.Second, "the queue full behind the stalled processor", func() bool { return s.busy.Load() >= 256+1 })
	px.SwitchTo(cl.Addr())
	testutil.Eventually(t, 30*time.Second, "the promoted server refused while the queue waits", func() bool {
		return strings.Contains(s.Stats().Problem, "refuses to stream")
	})
	// Read from the refusal, not from s.queued, which is the reader's
	// (it may still be noting the last message queued: a data race the
	// race detector found in CI).
	if p := s.Stats().Problem; !strings.Contains(p, "left timeline 1 at "+fork.String()) || !strings.Contains(p, "not yet handed over") {
		t.Fatalf("Problem = %q, want the refusal due to the queue, which reaches past the fork (%s)", p, fork)
	}
	if s.changed.Load() != nil {
		t.Error("a refusal due to the queue alone is kept for the rest of the process")
	}
	close(gate) // the processor drops the queue
	testutil.Eventually(t, 60*time.Second, "the promoted server streamed from", func() bool {
		if s.changed.Load() != nil {
			t.Fatalf("refused for the rest of the process: %s", s.Stats().Problem)
		}
		return s.Stats().Connected
	})
	promoted.Exec(t, `INSERT INTO users (id, email) VALUES (1000, 'after@x')`)
	testutil.Eventually(t, 30*time.Second, "the promoted server's transaction handed over", func() bool {
		return handedOver(rec, "after@x")
	})
	if !handedOver(rec, "u1@x") || !handedOver(rec, "u10@x") || handedOver(rec, "u11@x") {
		t.Error("want the rows below the fork handed over, sent again by the promoted server, and none of those past it")
	}
	ch, _ := rec.snapshot()
	for _, c := range ch {
		if c.Relation != nil && c.Relation.Name == "moods" {
			t.Error("the moods row, past the fork, was handed over")
		}
	}
}

// TestStandbyAcrossAFailoverTakesOver: a standby process (the slot held
// by another) that stays up through a failover to a standby that was
// behind streams from the promoted server once the journal's position is
// back at the fork. Its tries had copied the slot's position on the old
// server, as if it had read there, and its refusal was kept for the rest
// of the process.
func TestStandbyAcrossAFailoverTakesOver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary, db := sourceCluster(t)
	cl, promoted, sysID, fork := promote(t, primary)

	// The active process reads past the fork on the old primary.
	recA := newRecorder(true)
	startStreamWith(t, db, recA, func(c *Config) {})
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'old@x')`, `SELECT pg_switch_wal()`, `INSERT INTO users (id, email) VALUES (2, 'old2@x')`)
	recA.waitCommits(t, 2)
	waitConfirmed(t, db, "the slot past the fork", func(l pglogrepl.LSN) bool { return l > fork })

	px := testutil.NewSwitchProxy(t, primary.Addr())
	var moved atomic.Bool
	recB := newRecorder(true)
	b := startStreamWith(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: primary}, recB, func(c *Config) {
		c.Resume = Resume{SystemID: sysID, Timeline: 1, LSN: fork - 1}
		c.Journaled = func(context.Context) (Resume, error) {
			if moved.Load() {
				return Resume{SystemID: sysID, Timeline: 2, LSN: fork - 1}, nil
			}
			return Resume{SystemID: sysID, Timeline: 1, LSN: fork - 1}, nil
		}
	})
	testutil.Eventually(t, 30*time.Second, "the standby waiting for the slot", func() bool { return b.Stats().Standby })
	moved.Store(true) // another process's start moved the checkpoint back to the fork
	px.SwitchTo(cl.Addr())
	promoted.Exec(t, `INSERT INTO users (id, email) VALUES (3, 'new@x')`)
	recB.waitCommits(t, 1)
	// What it reports as flushed is the new server's slot, not the old
	// one's its tries had seen: told the old position, past the new WAL,
	// the new server's next transactions below it were skipped.
	var end string
	if err := promoted.Connect(t).QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&end); err != nil {
		t.Fatal(err)
	}
	if walEnd, _ := pglogrepl.ParseLSN(end); b.Stats().FlushedLSN > walEnd {
		t.Errorf("the standby that took over reports %s as flushed, past the new server's WAL (%s)", b.Stats().FlushedLSN, walEnd)
	}
}

// TestNothingReadStillRefusesAnotherCluster: a process that has read
// nothing, whose connection now leads to another database cluster than
// the one it started on, refuses it (its event ids are the first's); the
// journal's position, of the first cluster, judges nothing there.
func TestNothingReadStillRefusesAnotherCluster(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	x := pgtest.NewDB(t)
	var sysX string
	if err := x.Connect(t).QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&sysX); err != nil {
		t.Fatal(err)
	}
	yc, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(yc.Close)
	if err := yc.Exec(ctx, "postgres", "CREATE DATABASE dz"); err != nil {
		t.Fatal(err)
	}
	y := &pgtest.DB{Name: "dz", DSN: yc.DSN("dz"), Cluster: yc}
	y.Exec(t, dzsql.Schema)
	runSetup(t, y, SetupConfig{Slot: "dzhook", Publication: "dzhook", Tables: referenceTables,
		FullIdentity: []string{"public.users", "public.requests", "public.request_slas"}})
	rec := newRecorder(true)
	s := startStreamWith(t, y, rec, func(c *Config) {
		c.Resume = Resume{SystemID: sysX, Timeline: 1, LSN: 0x1000000}
		c.Journaled = func(context.Context) (Resume, error) { return Resume{SystemID: sysX, Timeline: 1, LSN: 0x1000000}, nil }
	})
	testutil.Eventually(t, 30*time.Second, "the stream refusing the other cluster", func() bool {
		return strings.Contains(s.Stats().Problem, "another database cluster")
	})
	y.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'y@x')`)
	if _, commits := rec.snapshot(); len(commits) != 0 {
		t.Errorf("%d transactions handed over from the other cluster", len(commits))
	}
}

// TestStandbyThroughARestoreRefusesForGood: a standby process (the slot
// held by another) through a restore of the source from a snapshot, on
// the same timeline: the journal's position is past the restored WAL,
// and the refusal holds for the rest of the process. Judged again at
// each try, it streamed once the restored server's WAL passed that
// position, and the transactions below it were skipped as journaled.
func TestStandbyThroughARestoreRefusesForGood(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary, db := sourceCluster(t)
	var sysID string
	if err := db.Connect(t).QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&sysID); err != nil {
		t.Fatal(err)
	}
	snap, err := primary.Clone() // the snapshot, taken now
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(snap.Close)

	var checkpoint atomic.Uint64
	journaled := func(context.Context) (Resume, error) {
		return Resume{SystemID: sysID, Timeline: 1, LSN: pglogrepl.LSN(checkpoint.Load())}, nil
	}
	recA := newRecorder(true)
	startStreamWith(t, db, recA, func(c *Config) { c.Resume = Resume{SystemID: sysID, Timeline: 1}; c.Journaled = journaled })
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'a@x')`, `SELECT pg_switch_wal()`, `INSERT INTO users (id, email) VALUES (2, 'b@x')`)
	_, commits := recA.waitCommits(t, 2)
	checkpoint.Store(uint64(commits[1].CommitLSN))

	px := testutil.NewSwitchProxy(t, primary.Addr())
	b := startStreamWith(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: primary}, newRecorder(true), func(c *Config) {
		c.Resume = Resume{SystemID: sysID, Timeline: 1}
		c.Journaled = journaled
	})
	testutil.Eventually(t, 30*time.Second, "the standby waiting for the slot", func() bool { return b.Stats().Standby })
	px.SwitchTo(snap.Addr())
	testutil.Eventually(t, 30*time.Second, "the standby refusing the restored server", func() bool {
		return strings.Contains(b.Stats().Problem, "refuses to stream")
	})
	if b.changed.Load() == nil {
		t.Errorf("the refusal of a server whose WAL ends before the journal's position, on its timeline, is judged again at the next try")
	}
}

// moodsPastAFork is a source cluster (primary, its database dz) with
// users 1 to n committed in one transaction, a copy of it promoted after
// them (cl, its database dz, where its timeline forked), and on the old
// primary past the fork a row of a table with an enum column (moods:
// the type's lookup comes then), then users n+1 to 400, a transaction
// each.
func moodsPastAFork(t *testing.T, n int) (*pgtest.Cluster, *pgtest.DB, *pgtest.Cluster, *pgtest.DB, pglogrepl.LSN) {
	t.Helper()
	primary, db := sourceCluster(t)
	db.Exec(t, `CREATE TYPE mood AS ENUM ('sad', 'happy')`, `CREATE TABLE moods (id int PRIMARY KEY, m mood)`,
		`ALTER PUBLICATION dzhook ADD TABLE moods`,
		fmt.Sprintf(`INSERT INTO users (id, email) SELECT g, 'u' || g || '@x' FROM generate_series(1, %d) g`, n))
	cl, promoted, _, fork := promote(t, primary)
	sql := []string{`INSERT INTO moods VALUES (1, 'happy')`}
	for i := n + 1; i <= 400; i++ {
		sql = append(sql, fmt.Sprintf(`INSERT INTO users (id, email) VALUES (%d, 'u%d@x')`, i, i))
	}
	db.Exec(t, sql...)
	return primary, db, cl, promoted, fork
}

// stallFirstSession is an OnSession that holds the processor at the
// first session's start until gate is closed: every message after it is
// queued, up to the queue's 256.
func stallFirstSession(gate <-chan struct{}) func(context.Context) {
	var first atomic.Bool
	first.Store(true)
	return func(ctx context.Context) {
		if !first.Swap(false) {
			return
		}
		select {
		case <-gate:
		case <-ctx.Done():
		}
	}
}

// handedOver reports whether a users row with email was handed to rec.
func handedOver(rec *recorder, email string) bool {
	ch, _ := rec.snapshot()
	for _, c := range ch {
		if c.Relation == nil {
			continue // a logical message
		}
		if v, _ := c.Relation.Get(c.New, "email"); v.V == email {
			return true
		}
	}
	return false
}

// flakyCatalog is a type loader on db's catalog whose first fails
// lookups fail.
func flakyCatalog(t *testing.T, db *pgtest.DB, fails int32) *flakyTypes {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	types := &flakyTypes{catalog: &catalogTypes{pool: pool}}
	types.fails.Store(fails)
	return types
}

// sourceCluster is a cluster of its own (to be copied) with database dz,
// the reference schema, and the slot and publication dzhook.
func sourceCluster(t *testing.T) (*pgtest.Cluster, *pgtest.DB) {
	t.Helper()
	primary, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(primary.Close)
	if err := primary.Exec(context.Background(), "postgres", "CREATE DATABASE dz"); err != nil {
		t.Fatal(err)
	}
	db := &pgtest.DB{Name: "dz", DSN: primary.DSN("dz"), Cluster: primary}
	db.Exec(t, dzsql.Schema)
	runSetup(t, db, SetupConfig{Slot: "dzhook", Publication: "dzhook", Tables: referenceTables,
		FullIdentity: []string{"public.users", "public.requests", "public.request_slas"}})
	return primary, db
}

// promote copies primary as it is now into a standby and promotes it
// (timeline 2): the copy, its database dz, the cluster's system
// identifier, and where timeline 2 left timeline 1.
func promote(t *testing.T, primary *pgtest.Cluster) (*pgtest.Cluster, *pgtest.DB, string, pglogrepl.LSN) {
	t.Helper()
	cl, err := primary.ClonePromoted()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	promoted := &pgtest.DB{Name: "dz", DSN: cl.DSN("dz"), Cluster: cl}
	var sysID, history string
	if err := promoted.Connect(t).QueryRow(context.Background(), `SELECT system_identifier::text, pg_read_file('pg_wal/00000002.history') FROM pg_control_system()`).Scan(&sysID, &history); err != nil {
		t.Fatal(err)
	}
	fork := parseHistory([]byte(history), 1)
	if fork == 0 {
		t.Fatalf("timeline history %q", history)
	}
	return cl, promoted, sysID, fork
}
