package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// failover is a source cluster of its own (to be copied and promoted)
// and a journal in another cluster, whose checkpoint survives a failover
// of the source.
type failover struct {
	primary *pgtest.Cluster
	src     *pgtest.DB
	journal *pgtest.DB
	rc      *testutil.Receiver
}

func newFailover(t *testing.T) *failover {
	t.Helper()
	primary, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		pgtest.Unavailable(t, "%v", err)
	}
	t.Cleanup(primary.Close)
	if err := primary.Exec(context.Background(), "postgres", "CREATE DATABASE dz"); err != nil {
		t.Fatal(err)
	}
	f := &failover{primary: primary, src: on(primary), journal: pgtest.NewDB(t), rc: testutil.NewReceiver(t)}
	f.src.Exec(t, dzsql.Schema, `INSERT INTO users (id, email) VALUES (1, 'john@company.com')`)
	return f
}

// on is database dz of cluster c.
func on(c *pgtest.Cluster) *pgtest.DB { return &pgtest.DB{Name: "dz", DSN: c.DSN("dz"), Cluster: c} }

// config streams from src into the failover's journal.
func (f *failover) config(t *testing.T, src *pgtest.DB) *config.Config {
	cfg := testConfig(t, src, "", sub("crm", f.rc.URL, "request.created"))
	cfg.Journal.DSN = config.Secret(f.journal.DSN)
	return cfg
}

// checkpoint is the journal's checkpoint of slot dzhook: its LSN and
// timeline (0 when none).
func (f *failover) checkpoint(t *testing.T) (pglogrepl.LSN, int) {
	lsn := queryInt(t, f.journal, `SELECT coalesce(max(lsn), 0) FROM dzhook.checkpoints WHERE slot = 'dzhook'`)
	tli := queryInt(t, f.journal, `SELECT coalesce(max(timeline), 0) FROM dzhook.checkpoints WHERE slot = 'dzhook'`)
	return pglogrepl.LSN(lsn), tli
}

// deliver commits request id on db and waits until it is delivered and
// journaled (the checkpoint comes after the delivery).
func (f *failover) deliver(t *testing.T, db *pgtest.DB, id int) {
	t.Helper()
	f.deliverInto(t, db, f.journal, id)
}

// deliverInto is deliver with the journal in database journal.
func (f *failover) deliverInto(t *testing.T, db, journal *pgtest.DB, id int) {
	t.Helper()
	db.Exec(t, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) VALUES (%d, 'r', 1)`, id))
	testutil.Eventually(t, 20*time.Second, fmt.Sprintf("request %d delivered", id), func() bool { return hasRequest(f.rc, id) })
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("request %d's commit checkpointed", id), func() bool {
		return queryInt(t, journal, `SELECT count(*) FROM dzhook.events WHERE convert_from(body, 'UTF8') LIKE $1
			AND commit_lsn <= (SELECT lsn FROM dzhook.checkpoints WHERE slot = 'dzhook')`, fmt.Sprintf(`%%"id":"req_%d"%%`, id)) == 1
	})
}

// promote copies the failover's primary as a standby promoted now
// (pgtest.ClonePromoted): the copy, its database dz, and where its
// timeline 2 left timeline 1.
func (f *failover) promote(t *testing.T) (*pgtest.Cluster, *pgtest.DB, pglogrepl.LSN) {
	t.Helper()
	cl, err := f.primary.ClonePromoted()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	promoted := on(cl)
	return cl, promoted, forkOf(t, promoted)
}

// walEnd is where db's WAL ends now.
func walEnd(t *testing.T, db *pgtest.DB) pglogrepl.LSN {
	var s string
	conn := db.Connect(t)
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	l, _ := pglogrepl.ParseLSN(s)
	return l
}

// forkOf reads where promoted's timeline 2 left timeline 1.
func forkOf(t *testing.T, promoted *pgtest.DB) pglogrepl.LSN {
	var h string
	conn := promoted.Connect(t)
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(), `SELECT pg_read_file('pg_wal/00000002.history')`).Scan(&h); err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(h)
	if len(f) < 2 || f[0] != "1" {
		t.Fatalf("timeline history %q", h)
	}
	l, err := pglogrepl.ParseLSN(f[1])
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestRestartRefusesAServerWhoseTimelineForkedBelowTheCheckpoint: the
// source fails over to a standby that was behind (promoted: timeline 2,
// forked below what dzhook journaled on timeline 1) while the journal,
// in another cluster, keeps its checkpoint. Once the new server's WAL has
// passed the checkpoint, a start used to trust it and skip the new
// server's transactions between the fork and the checkpoint for good. It
// must refuse, naming the slot, the positions, the timelines and the
// way out.
func TestRestartRefusesAServerWhoseTimelineForkedBelowTheCheckpoint(t *testing.T) {
	t.Parallel()
	f := newFailover(t)
	_, stop := startStoppable(t, f.config(t, f.src))
	f.deliver(t, f.src, 1)
	stop()
	// The standby failed over to: the source as of now.
	_, promoted, fork := f.promote(t)

	// The old primary goes on, and dzhook journals past the fork.
	_, stop = startStoppable(t, f.config(t, f.src))
	f.deliver(t, f.src, 2)
	f.src.Exec(t, `SELECT pg_switch_wal()`) // far past the fork
	f.deliver(t, f.src, 3)
	stop()
	cp, tli := f.checkpoint(t)
	if cp <= fork || tli != 1 {
		t.Fatalf("checkpoint %s on timeline %d, want past the fork (%s) on timeline 1", cp, tli, fork)
	}

	// The new server's transactions: one between the fork and the
	// checkpoint, then enough for its WAL to pass the checkpoint.
	promoted.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (4, 'below the checkpoint', 1)`)
	pushWALPast(t, promoted, cp)

	e, err := New(context.Background(), f.config(t, promoted), Options{Logger: testutil.Logger(t)})
	if err == nil {
		e.Close(context.Background())
		t.Fatalf("start on the promoted server behind the checkpoint (fork %s, checkpoint %s): no error; its transactions below the checkpoint would be skipped", fork, cp)
	}
	var changed *cdc.ServerChangedError
	if !errors.As(err, &changed) {
		t.Fatalf("start on the promoted server behind the checkpoint: %v, want a ServerChangedError", err)
	}
	// The checkpoint is a commit's start: read to its end.
	end := pglogrepl.LSN(queryInt(t, f.journal, `SELECT end_lsn FROM dzhook.checkpoints WHERE slot = 'dzhook'`))
	for _, want := range []string{`slot "dzhook"`, "timeline 2 left timeline 1 at " + fork.String(), "before " + end.String(), "fresh journal.schema"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "postgres@") {
		t.Errorf("error %q names a connection string", err)
	}
}

// TestRestartCarriesOnANewTimelineAboveTheCheckpoint: a failover to a
// standby that was not behind (its timeline forks at or above the
// journal's checkpoint) starts, and the new server's transactions are
// delivered, the old ones not again; the checkpoint moves to its timeline.
func TestRestartCarriesOnANewTimelineAboveTheCheckpoint(t *testing.T) {
	t.Parallel()
	f := newFailover(t)
	_, stop := startStoppable(t, f.config(t, f.src))
	f.deliver(t, f.src, 1)
	stop()
	_, promoted, fork := f.promote(t)
	if cp, tli := f.checkpoint(t); tli != 1 || cp > fork {
		t.Fatalf("checkpoint %s on timeline %d, want at most the fork on timeline 1", cp, tli)
	}

	start(t, f.config(t, promoted))
	f.deliver(t, promoted, 2)
	if n := len(f.rc.Requests()); n != 2 {
		t.Errorf("receiver got %d requests, want 2: request 1 once, request 2", n)
	}
	testutil.Eventually(t, 10*time.Second, "the checkpoint on timeline 2", func() bool { _, tli := f.checkpoint(t); return tli == 2 })
	// The fork is recorded as a rewind's is: a process still on the old
	// primary is fenced past it (journal.RecordFork; found by a review).
	if n := queryInt(t, f.journal, `SELECT count(*) FROM dzhook.checkpoints WHERE rewinds_timeline = '{2}' AND rewinds_at = ARRAY[$1::bigint]`, int64(fork)); n != 1 {
		t.Errorf("the fork at %s of timeline 2 is not recorded in the checkpoint", fork)
	}
}

// TestRestartRewindsToTheForkWhenNothingWasJournaledPastIt: the
// checkpoint moved past the fork on the old server with no event
// journaled there (a transaction that changed unmapped columns only; idle
// positions do the same). A start on the promoted server moves the
// checkpoint back to the fork and reads the new server's transactions
// from there, instead of refusing for a fresh journal: no event of the
// old server past the fork can share an id with them.
func TestRestartRewindsToTheForkWhenNothingWasJournaledPastIt(t *testing.T) {
	t.Parallel()
	f := newFailover(t)
	_, stop := startStoppable(t, f.config(t, f.src))
	f.deliver(t, f.src, 1)
	stop()
	_, promoted, fork := f.promote(t)

	_, stop = startStoppable(t, f.config(t, f.src))
	f.src.Exec(t, `SELECT pg_switch_wal()`, `UPDATE requests SET description = 'unmapped' WHERE id = 1`)
	testutil.Eventually(t, 20*time.Second, "the checkpoint past the fork", func() bool { cp, _ := f.checkpoint(t); return cp > fork })
	stop()
	if n := queryInt(t, f.journal, `SELECT count(*) FROM dzhook.events WHERE commit_lsn >= $1`, int64(fork)); n != 0 {
		t.Fatalf("%d events journaled past the fork", n)
	}
	cp, _ := f.checkpoint(t)

	promoted.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (4, 'below the checkpoint', 1)`)
	pushWALPast(t, promoted, cp)
	start(t, f.config(t, promoted))
	f.deliver(t, promoted, 5)
	if !hasRequest(f.rc, 4) {
		t.Errorf("request 4, committed on the new server between the fork and the old checkpoint, was not delivered")
	}
	testutil.Eventually(t, 10*time.Second, "the checkpoint on timeline 2", func() bool { _, tli := f.checkpoint(t); return tli == 2 })
}

// TestRewindArmsTheSLAsAsTheNewServerHasThem: a move of an SLA's target
// past the fork journals no event, so it does not keep the start from
// moving the checkpoint back; its timers (for a target the new server
// never had) stayed, the surviving target's had been deleted by the
// move, and its breach never fired. The rewind asks for the SLA scan
// again: the breach of the target the new server holds fires, and the
// lost target's timers go.
func TestRewindArmsTheSLAsAsTheNewServerHasThem(t *testing.T) {
	t.Parallel()
	f := newFailover(t)
	ops := testutil.NewReceiver(t)
	cfgOn := func(db *pgtest.DB) *config.Config {
		c := testConfigWith(t, db, slaSection, "", sub("crm", f.rc.URL, "request.created"), sub("ops", ops.URL, "sla.breach"))
		c.Journal.DSN = config.Secret(f.journal.DSN)
		return c
	}
	_, stop := startStoppable(t, cfgOn(f.src))
	insertSLA(t, f.src, 1, 6*time.Second)
	testutil.Eventually(t, 20*time.Second, "request 1 delivered", func() bool { return hasRequest(f.rc, 1) })
	testutil.Eventually(t, 10*time.Second, "the SLA's timers armed", func() bool {
		return queryInt(t, f.journal, `SELECT count(*) FROM dzhook.sla_timers WHERE sla_id = '1' AND kind = 'breach'`) == 1
	})
	stop()
	_, promoted, fork := f.promote(t)

	// Past the fork, on the old server only: the target moved a day on.
	_, stop = startStoppable(t, cfgOn(f.src))
	f.src.Exec(t, `SELECT pg_switch_wal()`, `UPDATE request_slas SET target_at = target_at + interval '1 day' WHERE id = 1`)
	testutil.Eventually(t, 20*time.Second, "the checkpoint past the fork, and the moved target's timers", func() bool {
		cp, _ := f.checkpoint(t)
		return cp > fork && queryInt(t, f.journal, `SELECT count(*) FROM dzhook.sla_timers WHERE sla_id = '1' AND fired_at IS NULL AND target_at > now() + interval '1 hour'`) > 0
	})
	stop()
	if n := queryInt(t, f.journal, `SELECT count(*) FROM dzhook.events WHERE commit_lsn >= $1`, int64(fork)); n != 0 {
		t.Fatalf("%d events journaled past the fork", n)
	}
	cp, _ := f.checkpoint(t)
	pushWALPast(t, promoted, cp)
	var target time.Time
	if err := promoted.Connect(t).QueryRow(context.Background(), `SELECT target_at FROM request_slas WHERE id = 1`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	start(t, cfgOn(promoted))
	ops.Wait(t, 1, 30*time.Second)
	evs := slaEvents(t, ops)
	if want := target.UTC().Truncate(time.Second).Format(time.RFC3339); len(evs) != 1 || evs[0].Event != "sla.breach" || evs[0].Data.TargetTime != want {
		t.Errorf("events %+v, want the breach of %s, the target the new server holds", evs, want)
	}
	testutil.Eventually(t, 10*time.Second, "the lost target's timers gone", func() bool {
		return queryInt(t, f.journal, `SELECT count(*) FROM dzhook.sla_timers WHERE sla_id = '1' AND fired_at IS NULL AND target_at > now() + interval '1 hour'`) == 0
	})
}

// TestStandbyTakingOverAfterARewindDeliversBelowItsStart: a standby
// process started while the journal's checkpoint was past the fork
// (idle positions, a transaction firing nothing) takes the slot over
// after another process's start on the promoted server moved the
// checkpoint back to the fork. The new server's transactions between the
// fork and the checkpoint the standby read at its start are delivered:
// its pipeline kept that checkpoint, skipped them as journaled and
// confirmed the slot past them (found by a review).
func TestStandbyTakingOverAfterARewindDeliversBelowItsStart(t *testing.T) {
	t.Parallel()
	f := newFailover(t)
	_, stop := startStoppable(t, f.config(t, f.src))
	f.deliver(t, f.src, 1)
	stop()
	cl, promoted, fork := f.promote(t)

	_, stopA := startStoppable(t, f.config(t, f.src))
	f.src.Exec(t, `SELECT pg_switch_wal()`, `UPDATE requests SET description = 'unmapped' WHERE id = 1`)
	testutil.Eventually(t, 20*time.Second, "the checkpoint past the fork", func() bool { cp, _ := f.checkpoint(t); return cp > fork })
	cp, _ := f.checkpoint(t)

	px := testutil.NewSwitchProxy(t, f.primary.Addr())
	b, _ := startStoppable(t, f.config(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: f.primary}))
	testutil.Eventually(t, 30*time.Second, "the standby waiting for the slot", func() bool { return b.Stream().Stats().Standby })

	stopA()
	px.SwitchTo(cl.Addr())
	promoted.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (4, 'below the standby start', 1)`)
	// Another process's start on the promoted server rewinds.
	c, err := New(context.Background(), f.config(t, promoted), Options{Logger: testutil.Logger(t), Version: "test"})
	if err != nil {
		t.Fatalf("the start that rewinds: %v", err)
	}
	c.Close(context.Background())
	testutil.Eventually(t, 90*time.Second, "the standby streaming from the promoted server", func() bool {
		st := b.Stream().Stats()
		return st.Connected && !st.Standby
	})
	promoted.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (5, 'after the takeover, still below', 1)`)
	testutil.Eventually(t, 20*time.Second, "requests 4 and 5 delivered", func() bool { return hasRequest(f.rc, 4) && hasRequest(f.rc, 5) })
	// A blip while the promoted WAL is still below the checkpoint the
	// standby read at its start: the same server, judged again against
	// what this process read itself, streams on. (It was refused for
	// good: the start's position stayed in the judgment.)
	if w := walEnd(t, promoted); w >= cp {
		t.Fatalf("the promoted WAL (%s) passed the standby's start checkpoint (%s) before the blip", w, cp)
	}
	before := b.Stream().Stats().Reconnects
	px.Cut()
	testutil.Eventually(t, 60*time.Second, "the standby streaming again after the blip", func() bool {
		st := b.Stream().Stats()
		return st.Reconnects > before && st.Connected
	})
	pushWALPast(t, promoted, cp)
	f.deliver(t, promoted, 6)
}

// TestRestartAfterARestoreSeenWhileRunning: the source is restored from
// a snapshot (the same cluster and timeline) while dzhook runs. The
// running process refuses it and records the restore in the journal's
// checkpoint; the restart that follows drops the checkpoint, even once
// the restored server's WAL has passed it, and delivers the restored
// server's transactions below it. (The restart trusted the checkpoint
// then and skipped them without a word: found by a review.)
func TestRestartAfterARestoreSeenWhileRunning(t *testing.T) {
	t.Parallel()
	f := newFailover(t)
	px := testutil.NewSwitchProxy(t, f.primary.Addr())
	a, stopA := startStoppable(t, f.config(t, &pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: f.primary}))
	f.deliver(t, f.src, 1)
	snap, err := f.primary.Clone()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(snap.Close)
	f.src.Exec(t, `SELECT pg_switch_wal()`)
	f.deliver(t, f.src, 2)
	f.deliver(t, f.src, 3)
	cp, _ := f.checkpoint(t)
	restored := on(snap)
	px.SwitchTo(snap.Addr())
	testutil.Eventually(t, 60*time.Second, "the running process refusing the restored server, and the restore recorded", func() bool {
		return strings.Contains(a.Stream().Stats().Problem, "restore") &&
			queryInt(t, f.journal, `SELECT count(*) FROM dzhook.checkpoints WHERE slot = 'dzhook' AND restored_below IS NOT NULL`) == 1
	})
	stopA()
	restored.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (7, 'on the restored server', 1)`)
	pushWALPast(t, restored, cp)
	_, stop := startStoppable(t, f.config(t, restored))
	defer stop()
	f.deliver(t, restored, 8)
	testutil.Eventually(t, 20*time.Second, "request 7, below the old checkpoint, delivered", func() bool { return hasRequest(f.rc, 7) })
}

// TestRestoreWithTheJournalHandledOnce: the source, its journal in it,
// is restored from a snapshot while dzhook runs. The running process
// refuses it and records the restore in the (restored) checkpoint, which
// is below the restored WAL's end: the restart trusts it, clears the mark
// and streams; a later routine restart, the checkpoint now past the
// mark, trusts it too. (The mark stayed: that restart dropped the
// checkpoint as a restore's and told the operator to take a fresh
// journal.schema; found by a review.)
func TestRestoreWithTheJournalHandledOnce(t *testing.T) {
	t.Parallel()
	f := newFailover(t)
	px := testutil.NewSwitchProxy(t, f.primary.Addr())
	cfgOn := func(db *pgtest.DB) *config.Config {
		return testConfig(t, db, "", sub("crm", f.rc.URL, "request.created"))
	}
	a, stopA := startStoppable(t, cfgOn(&pgtest.DB{Name: "dz", DSN: px.DSN("dz"), Cluster: f.primary}))
	f.deliverInto(t, f.src, f.src, 1)
	snap, err := f.primary.Clone()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(snap.Close)
	restored := on(snap)
	f.src.Exec(t, `SELECT pg_switch_wal()`)
	f.deliverInto(t, f.src, f.src, 2)
	px.SwitchTo(snap.Addr())
	testutil.Eventually(t, 60*time.Second, "the running process refusing the restored server, and the restore recorded", func() bool {
		return strings.Contains(a.Stream().Stats().Problem, "restore") &&
			queryInt(t, restored, `SELECT count(*) FROM dzhook.checkpoints WHERE slot = 'dzhook' AND restored_below IS NOT NULL`) == 1
	})
	stopA()
	_, stopB := startStoppable(t, cfgOn(restored))
	if n := queryInt(t, restored, `SELECT count(*) FROM dzhook.checkpoints WHERE slot = 'dzhook' AND restored_below IS NULL`); n != 1 {
		t.Errorf("the restart that trusted the restored checkpoint left the mark (%d unmarked checkpoints)", n)
	}
	f.deliverInto(t, restored, restored, 7)
	restored.Exec(t, `SELECT pg_switch_wal()`)
	f.deliverInto(t, restored, restored, 8)
	stopB()
	cp := queryInt(t, restored, `SELECT lsn FROM dzhook.checkpoints WHERE slot = 'dzhook'`)
	_, stopC := startStoppable(t, cfgOn(restored))
	defer stopC()
	if got := queryInt(t, restored, `SELECT coalesce(max(lsn), 0) FROM dzhook.checkpoints WHERE slot = 'dzhook'`); got < cp {
		t.Errorf("a routine restart after the restore was handled dropped the journal's checkpoint (%X, now %X)", cp, got)
	}
	f.deliverInto(t, restored, restored, 9)
}

// pushWALPast commits on db (users 100 on, pg_switch_wal) until its WAL
// passes at: a promoted server's, past the old checkpoint.
func pushWALPast(t *testing.T, db *pgtest.DB, at pglogrepl.LSN) {
	t.Helper()
	for i := 0; walEnd(t, db) <= at; i++ {
		if i == 5 {
			t.Fatalf("the promoted server's WAL (%s) does not pass the checkpoint (%s)", walEnd(t, db), at)
		}
		db.Exec(t, fmt.Sprintf(`INSERT INTO users (id, email) VALUES (%d, 'u%d@x')`, 100+i, i), `SELECT pg_switch_wal()`)
	}
}

// TestProcessStopsWhenAnotherStartRewoundTheCheckpoint: a process still
// streaming a timeline the journal's checkpoint has left (another
// process's start after a failover moved the checkpoint back to the
// fork, on the new timeline; done here by hand) stops at its next batch
// with a message that says so, journaling and acknowledging nothing of
// it: the old timeline's events past the fork would take the ids of the
// new timeline's transactions. It used to journal them, and only its
// checkpoint's move was refused.
func TestProcessStopsWhenAnotherStartRewoundTheCheckpoint(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e, err := New(ctx, testConfig(t, db, "", sub("crm", rc.URL, "request.created")), Options{Logger: testutil.Logger(t), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- e.Run(ctx) }()
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'r', 1)`)
	testutil.Eventually(t, 20*time.Second, "request 1 delivered and checkpointed", func() bool {
		return hasRequest(rc, 1) && queryInt(t, db, `SELECT count(*) FROM dzhook.events WHERE commit_lsn <= (SELECT lsn FROM dzhook.checkpoints WHERE slot = 'dzhook')`) == 1
	})
	db.Exec(t, `UPDATE dzhook.checkpoints SET timeline = 2, rewound_timeline = 2, rewound_at = end_lsn, rewinds_timeline = '{2}', rewinds_at = ARRAY[end_lsn] WHERE slot = 'dzhook'`)
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (2, 'r', 1)`)
	select {
	case err := <-ran:
		if !errors.Is(err, journal.ErrTimelineMoved) || !strings.Contains(err.Error(), "timeline 2") {
			t.Fatalf("Run ended with %v, want the journal writer's ErrTimelineMoved naming timeline 2", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the process on timeline 1 did not stop")
	}
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.events`); n != 1 {
		t.Errorf("%d events journaled, want request 1's alone", n)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM pg_replication_slots s JOIN dzhook.checkpoints c ON c.slot = s.slot_name
		WHERE s.slot_name = 'dzhook' AND s.confirmed_flush_lsn - '0/0' > c.end_lsn`); n != 0 {
		t.Error("the slot was acknowledged past the journal's checkpoint")
	}

}

// TestStartOnAStandbyWaits: a start whose source.dsn reaches a standby (a
// name or address not yet moved after a failover) fails with a
// StandbyError, which `dzhook run` waits out as it does a server not yet
// up (Transient), and leaves the journal's checkpoint alone. It failed at
// once on the standby's WAL position ("recovery is in progress"), and the
// process exited (found by a review).
func TestStartOnAStandbyWaits(t *testing.T) {
	t.Parallel()
	f := newFailover(t)
	_, stop := startStoppable(t, f.config(t, f.src))
	f.deliver(t, f.src, 1)
	standby, err := f.primary.CloneStandby()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(standby.Close)
	stop()
	cp, _ := f.checkpoint(t)
	e, err := New(context.Background(), f.config(t, on(standby)), Options{Logger: testutil.Logger(t), Version: "test"})
	if e != nil {
		e.Close(context.Background())
	}
	if _, ok := errors.AsType[*cdc.StandbyError](err); !ok || !Transient(err) {
		t.Errorf("a start on a standby: %v (transient %v), want a StandbyError, waited out", err, Transient(err))
	}
	if got, _ := f.checkpoint(t); got != cp {
		t.Errorf("the start on a standby moved the journal's checkpoint from %s to %s", cp, got)
	}
}
