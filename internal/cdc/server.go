package cdc

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// This file checks, at the start of each replication session, that the
// server is the one the stream read from so far, or one that carries on
// its WAL. The processor skips transactions at or below the last one it
// handed over, and the flush position only moves forward: after a
// failover to a standby that was behind (its slot carried over), or a
// restore from a backup while dzhook runs, new transactions at or below
// that position would be skipped for good, and the first status update
// would move the new slot past the server's own WAL. So such a session
// does not stream: the stream refuses, from then on until the process is
// started again, and says why (Stats.Problem, /readyz). A start judges
// the journal's checkpoint, which records the timeline it was read on,
// the same way (CheckResume), and seeds the stream with it (Config.Resume).

// server is what IDENTIFY_SYSTEM said at the last session that streamed
// (or at the start that judged Config.Resume).
type server struct {
	systemID string
	timeline int32
}

// Resume is where a process read a slot to: the position, and the
// cluster and timeline it was read on (0: unknown).
type Resume struct {
	SystemID string
	Timeline int32
	LSN      pglogrepl.LSN
	// End is the journal's checkpoint's end_lsn: the end of the commit
	// record that starts at LSN, or the position an idle LSN is one
	// below (0: unknown).
	End pglogrepl.LSN
}

// readTo is the position r says was read to: the end of its last commit
// when known (End past LSN), else LSN. Judged at LSN, a commit starting
// at a fork was accepted while the journal's fence and RecordFork hold
// it the lost branch's (found by a review); judged at LSN+1, a
// checkpoint written at an idle position itself (before 2026-12-06, End
// equal to LSN) refused the idle server for good as restored (found by
// the next).
func (r Resume) readTo() pglogrepl.LSN {
	if r.End > r.LSN {
		return r.End
	}
	return r.LSN
}

// Timeline returns the timeline of the server the stream reads (0 before
// a session or Config.Resume said). Every position handed over is on it:
// the stream moves to a new timeline only when it carries on what was
// read (checkServer). Safe from any goroutine.
func (s *Stream) Timeline() int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.server.timeline
}

// ServerChangedError: the replication connection leads to a server whose
// WAL does not carry on from where the stream read to.
type ServerChangedError struct {
	Slot string
	// SystemID and Timeline are the server's now; WALEnd its WAL's end
	// (IDENTIFY_SYSTEM's xlogpos).
	SystemID string
	Timeline int32
	WALEnd   pglogrepl.LSN
	// PrevSystemID and PrevTimeline are those of the server read so far.
	PrevSystemID string
	PrevTimeline int32
	// Fork is where the server's timeline left PrevTimeline (0 when it
	// did not, or when PrevTimeline is not in its history).
	Fork pglogrepl.LSN
	// Read is the position the stream read to and handed over, or, when
	// Journal is set, what the journal's checkpoint says was read to
	// (another process's read: Resume.readTo).
	Read    pglogrepl.LSN
	Journal bool
	// Queued: the server is refused because of what the stream queued
	// and has not handed over yet, past the fork, alone; that queue is
	// dropped and the server judged again. Handed is what was handed
	// over then.
	Queued bool
	Handed pglogrepl.LSN
}

func (e *ServerChangedError) Error() string { return e.PublicReason() }

// PublicReason implements PublicReason: the slot's name, positions and
// cluster identifiers only.
func (e *ServerChangedError) PublicReason() string {
	reader := "this dzhook"
	if e.Journal {
		reader = "the journal's checkpoint (a dzhook process)"
	}
	var what string
	switch {
	case e.SystemID != e.PrevSystemID:
		what = fmt.Sprintf("replication slot %q is now on another database cluster (system identifier %s, was %s; WAL at %s): its positions cannot be compared with the %s %s read to",
			e.Slot, e.SystemID, e.PrevSystemID, e.WALEnd, e.Read, reader)
	case e.Timeline != e.PrevTimeline && e.Fork != 0:
		// Whatever its WAL's end: a promoted standby's is usually below
		// what was read, and the text said "a failover ... or a restore"
		// without the fork a restart moves back to (found by a review).
		what = fmt.Sprintf("replication slot %q is now on a server whose timeline %d left timeline %d at %s, before %s, where %s already read to: a failover to a standby that was behind",
			e.Slot, e.Timeline, e.PrevTimeline, e.Fork, e.Read, reader)
	case e.Timeline != e.PrevTimeline:
		what = fmt.Sprintf("replication slot %q is now on a server whose timeline %d does not descend from timeline %d, on which %s already read to %s: a failover or a restore onto another branch of the cluster's history",
			e.Slot, e.Timeline, e.PrevTimeline, reader, e.Read)
	default:
		what = fmt.Sprintf("replication slot %q is now on a server whose WAL ends at %s (timeline %d), before %s, where %s already read to: a restore from a backup or a snapshot",
			e.Slot, e.WALEnd, e.Timeline, e.Read, reader)
	}
	if e.Queued {
		return fmt.Sprintf("replication slot %q is now on a server whose timeline %d left timeline %d at %s: above what this dzhook handed over (%s), below what it received and has not yet handed over (to %s). "+
			"dzhook refuses to stream from it for now, drops those messages unprocessed (the new server sends again what it shares below the fork) and judges it again once they are gone: it is streamed from unless one past the fork was being handed over",
			e.Slot, e.Timeline, e.PrevTimeline, e.Fork, e.Handed, e.Read)
	}
	return what + ". Its new transactions below that position would be taken for ones already handled and skipped, and reporting the position would move the slot past the server's WAL, so dzhook refuses to stream from it. " +
		"Events of what the old server committed and this one lacks are lost with it (recreate them from the source tables if they matter). " +
		"Its new transactions reuse positions (and so event ids) of the lost ones, which the journal drops as known: to process every one, start dzhook on a fresh journal.schema (the old schema keeps the history, and its pending deliveries are not sent from the new one; subscriptions made through the API or the dashboard live in the journal: create them again there, with their secrets). " +
		e.restart()
}

// refuses reports whether the server e judged would be refused against a
// read position of p too, on the same previous server.
func (e *ServerChangedError) refuses(p pglogrepl.LSN) bool {
	switch {
	case e.SystemID != e.PrevSystemID:
		return true
	case e.Timeline != e.PrevTimeline:
		return e.Fork == 0 || e.Fork < p
	}
	return e.WALEnd < p
}

// restart says what a restart does with the journal's checkpoint, by
// case (engine.New, pipeline.UseCheckpoint).
func (e *ServerChangedError) restart() string {
	switch {
	case e.SystemID != e.PrevSystemID:
		return "A restart drops the journal's checkpoint of the other cluster and processes every transaction the slot sends"
	case e.Timeline == e.PrevTimeline:
		return "A restart drops the journal's checkpoint (this process records this server's WAL end in it, so that a restart does even once the WAL has passed it) and processes every transaction the slot sends"
	case e.Fork == 0:
		// No fork to move back to (engine.rewindToFork): every start
		// refuses the same way.
		return "A restart refuses too: only the fresh journal.schema above lets dzhook stream from this server"
	}
	return "A restart moves the journal's checkpoint back to where this server's timeline forked when nothing was journaled past that point; otherwise it refuses too"
}

// betweenQueueAndPartial runs between checkServer's two reads of what
// the processor did; a test makes the processor move there.
var betweenQueueAndPartial = func() {}

// checkServer runs IDENTIFY_SYSTEM on a new session's connection and
// refuses a server that does not carry on the WAL the stream read
// (ServerChangedError), for the rest of the process.
func (s *Stream) checkServer(ctx context.Context, conn *pgconn.PgConn) error {
	if e := s.changed.Load(); e != nil {
		s.refused(ctx, e)
		return e
	}
	// A standby's WAL end is what it has received: one a connection
	// reached for a moment (a virtual IP or DNS name not yet moved) would
	// be judged behind, and refused for the rest of the process. It is
	// no server to stream from (PostgreSQL 15 decodes on a primary only):
	// tried again, as an unreachable one is. Asked before IDENTIFY_SYSTEM:
	// a standby promoted between the two answered with its replay
	// timeline and received WAL, and was judged a restore, for good
	// (found by a review); out of recovery first, it stays a primary.
	if err := InRecovery(ctx, conn, s.cfg.Slot); err != nil {
		return err
	}
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	s.mu.Lock()
	prev := s.server
	// What this process handed over, queued to hand over (a catch-up's
	// queue, processed after the session that read it ended: judged
	// without it, the new timeline of a failover was accepted and the old
	// one's queued transactions past its fork handed over; found by a
	// review) or asked to persist itself: flushed alone is also the
	// slot's position, copied at each session's start (a standby's tries
	// included).
	// What a session queued after a failed type lookup was dropped, not
	// handed over: counted, it stated a position this process never read
	// to, and a server that carries on what was handed over was refused
	// for good; a later session's queue still counts (found by reviews).
	// A transaction cut off before its commit counts up to its commit
	// record once one of its changes was handed over (their events went
	// out): judged without it, a fork below its commit was accepted, and
	// a transaction of the new timeline committed at the same position
	// lost its first changes, skipped as handed (found by a review).
	// The queue first: its busy count orders what the processor did
	// before it went to 0 (partialEnd included) before the load of
	// partialEnd. Read the other way round, the processor could hand
	// over a change past a fork and reach 0 in between, and the span of
	// its queued Begin was forgotten with the stale partialEnd used
	// (found by a review).
	queued := s.queuedEnd(s.handedEnd)
	betweenQueueAndPartial()
	handed := max(s.handedEnd, s.idleAsked, pglogrepl.LSN(s.partialEnd.Load()))
	own := max(handed, queued)
	read := max(s.flushed, own, s.baseline)
	readHanded := max(s.flushed, handed, s.baseline)
	s.mu.Unlock()
	// A process that has read nothing yet judges the server by the
	// journal's position as it is now (Journaled), not by the one it
	// read at its start (Resume): another process may have moved it
	// since, back to a fork after a failover (engine.rewindToFork), and a
	// standby refused for good by its start's view never took over. Only
	// a refusal of what this process read itself holds for the rest of
	// the process, and one of another cluster than the process started
	// on (its event ids are that cluster's).
	sticky := own != 0 || s.cfg.Journaled == nil
	var e *ServerChangedError
	var fork pglogrepl.LSN // where the server's timeline left prev's
	// forked is where the accepted server's timeline left forkedFrom,
	// the one read so far by this process or the journal (Forked).
	var forked pglogrepl.LSN
	var forkedFrom int32
	journalJudged := false
	if prev.systemID != "" && !sticky && sys.SystemID != prev.systemID {
		e = &ServerChangedError{Slot: s.cfg.Slot, SystemID: sys.SystemID, Timeline: sys.Timeline, WALEnd: sys.XLogPos,
			PrevSystemID: prev.systemID, PrevTimeline: prev.timeline, Read: read}
		sticky = true
	}
	if prev.systemID != "" && sticky && e == nil {
		// Not the first session, or one seeded by Config.Resume: a first
		// session without it has read nothing yet (the slot is judged by
		// Config.CheckStart, the journal by its owner).
		fork, e, err = judge(ctx, conn, s.cfg.Slot, sys, prev, read)
		if err != nil {
			return err
		}
		if e != nil && e.SystemID == e.PrevSystemID && e.Timeline != e.PrevTimeline && e.Fork != 0 && !e.refuses(readHanded) {
			// A fork refused only by what is still queued: the processor
			// drops it (dropThrough), and the server is judged again at
			// the next try. Every queued message processed or dropped by
			// then (busy 0, queuedEnd), it is judged by what was handed
			// over alone: streamed from, its slot sending again what it
			// shares below the fork, unless the processor had begun to
			// hand over a message past the fork (the refusal then holds
			// for good). Left to be handed over, the lost branch's
			// transactions went out and the refusal held for good,
			// every start refusing too (found by a review). Not kept: a
			// drop that came after a kept judgment left a server that
			// carries on everything handed over refused for good (found
			// by a review). Not a WAL that ends before the queue on the
			// same timeline (a restore): its end moves on, and judged
			// again once past the queue it was accepted, unrecorded
			// (found by the next review).
			e.Queued, e.Handed = true, readHanded
			sticky = false
			s.dropThrough.Store(s.sessions - 1)
		}
	}
	// accepted is the journal's position a session judged by it (one of
	// a process that has read nothing itself) carries on.
	var accepted *pglogrepl.LSN
	if e == nil && s.cfg.Journaled != nil {
		j, err := s.cfg.Journaled(ctx)
		if err != nil {
			return err
		}
		if !sticky {
			var at pglogrepl.LSN
			if j.SystemID == sys.SystemID {
				at = j.readTo()
			}
			accepted = &at
		}
		if j.SystemID == sys.SystemID && j.LSN != 0 {
			// Its WAL must reach the journal's position too, on the same
			// timeline (a restore from a snapshot: the process that read
			// there refuses; one taking the slot over adopted its
			// checkpoint, above the WAL, and skipped what came below it).
			tli := cmp.Or(j.Timeline, sys.Timeline)
			var jfork pglogrepl.LSN
			// Read to the end of its commit (Resume.readTo), as RecordFork
			// and the fence hold it.
			if jfork, e, err = judge(ctx, conn, s.cfg.Slot, sys, server{systemID: j.SystemID, timeline: tli}, j.readTo()); err != nil {
				return err
			}
			// The fork recorded is the journal's checkpoint's, whose
			// timeline RecordFork judges it against: this process's own,
			// of an older timeline two failovers back, was refused there
			// at every try, and would have fenced the live timeline in
			// between (found by a review). A checkpoint already on the
			// new timeline was moved there by a process that accepted it.
			// Only when it exists: a checkpoint without a timeline (one
			// written before journal version 17), or one moved onto the
			// new timeline without a fork (an accepted gap), leaves this
			// process's own fork to record (found by a review). The
			// checkpoint's fork is recorded also when this process read a
			// newer timeline than the checkpoint's (what it read there not
			// yet journaled), on purpose: the fence cannot tell a
			// timeline's branches apart (a fork recorded for timeline 3
			// fences every older timeline past it), so the checkpoint's
			// fork also refuses that newer timeline's valid batches past
			// it, this process's own in flight among them, and the process
			// stops, to stream them again from the checkpoint: nothing is
			// lost. Its own fork alone (tried, then dropped) left the
			// checkpoint's timeline unfenced between the two forks when
			// that timeline's own fork had not been written (no checkpoint
			// of the cluster when this process moved), and a process still
			// on the old primary journaled the lost branch there (found by
			// a review).
			if e == nil && tli != sys.Timeline {
				forked, forkedFrom, journalJudged = jfork, tli, true
			}
			if e != nil {
				// Judged again at the next try when it is a fork: another
				// process's start may move the journal's position back to
				// it (engine.rewindToFork), also for a process that read
				// some itself, which the server was judged against above
				// (kept, a standby that had once streamed below the fork
				// never took over after the rewind; found by a review). A
				// WAL that ends before it on the same timeline (a
				// restore) is for good: streamed once its WAL passed the
				// position, the restored server's transactions below it
				// were skipped as journaled.
				read = j.readTo()
				e.Journal = true
				sticky = e.Timeline == e.PrevTimeline
			}
		}
	}
	if e != nil {
		if sticky {
			s.changed.Store(e)
			s.refused(ctx, e)
		}
		// Once per reason: a refusal that is not kept is judged again at
		// every try (up to every 30 s, for as long as it lasts).
		lvl := slog.LevelError
		why := fmt.Sprintf("%s/%s %d/%d %s %s %t", e.SystemID, e.PrevSystemID, e.Timeline, e.PrevTimeline, e.Read, e.Fork, e.Queued) // not the WAL's end, which moves
		if last := s.lastRefusal.Swap(&why); last != nil && *last == why {
			lvl = slog.LevelDebug
		}
		s.log.Log(ctx, lvl, "refusing to stream: the server does not carry on the WAL this process read", "err", e,
			"wal_end", sys.XLogPos.String(), "read_lsn", read.String(), "timeline", sys.Timeline, "system_id", sys.SystemID)
		return e
	}
	if !journalJudged && fork != 0 && sys.Timeline != prev.timeline {
		forked, forkedFrom = fork, prev.timeline
	}
	if forked != 0 && s.cfg.Forked != nil {
		if err := s.cfg.Forked(ctx, sys.Timeline, forked); err != nil {
			return fmt.Errorf("the server's timeline %d left timeline %d at %s: %w", sys.Timeline, forkedFrom, forked, err)
		}
	}
	if low := cmp.Or(fork, forked); low != 0 && sys.Timeline != prev.timeline && uint64(low) < s.received.Load() {
		// What was received of the old timeline past the fork (a queue
		// dropped, a keepalive's WAL end) is none of the new server's:
		// reported as written, it showed in its pg_stat_replication past
		// its WAL (found by a review), also for a process the journal's
		// position judged.
		s.received.Store(uint64(low))
	}
	if fork != 0 && sys.Timeline != prev.timeline {
		// Said once the session is accepted: a refusal by the journal's
		// position, judged again at each try, would have it said at each.
		s.log.Info("the server is on a new timeline that carries on the one read so far", "timeline", sys.Timeline, "was", prev.timeline, "switched_at", fork.String(), "read_lsn", read.String())
	}
	s.mu.Lock()
	s.server = server{systemID: sys.SystemID, timeline: sys.Timeline}
	if accepted != nil {
		// The start's position was judged on the server and timeline of
		// then: a standby that took the slot over after a failover's
		// rewind kept it, above the new timeline's WAL, and refused the
		// same server for good at its first reconnect (found by a review).
		s.baseline = *accepted
	}
	s.mu.Unlock()
	s.lastRefusal.Store(nil)
	return nil
}

// StandbyError: the replication connection leads to a server in
// recovery (a standby), which logical decoding cannot stream from.
type StandbyError struct{ Slot string }

func (e *StandbyError) Error() string { return e.PublicReason() }

// PublicReason implements PublicReason.
func (e *StandbyError) PublicReason() string {
	return fmt.Sprintf("the server of replication slot %q is a standby (in recovery): logical decoding needs the primary (a failover in progress, or source.dsn leads to a standby)", e.Slot)
}

// InRecovery returns a *StandbyError when the server behind conn (a
// replication connection) is in recovery.
func InRecovery(ctx context.Context, conn *pgconn.PgConn, slot string) error {
	res, err := conn.Exec(ctx, "SELECT pg_is_in_recovery()").ReadAll()
	if err != nil {
		return fmt.Errorf("pg_is_in_recovery: %w", err)
	}
	if len(res) == 1 && len(res[0].Rows) == 1 && string(res[0].Rows[0][0]) == "t" {
		return &StandbyError{Slot: slot}
	}
	return nil
}

// refused tells Config.OnRefused of a refusal kept for the rest of the
// process (at each try, until the process ends).
func (s *Stream) refused(ctx context.Context, e *ServerChangedError) {
	if s.cfg.OnRefused != nil {
		s.cfg.OnRefused(ctx, e)
	}
}

// judge returns why a server (sys: its IDENTIFY_SYSTEM, on conn) does
// not carry on the WAL read on prev up to read, or nil when it does:
// another cluster, a WAL that ends before read, or a timeline whose
// history leaves prev's below read (or does not hold it). fork is where
// the server's timeline left prev's (0 on the same timeline).
func judge(ctx context.Context, conn *pgconn.PgConn, slot string, sys pglogrepl.IdentifySystemResult, prev server, read pglogrepl.LSN) (fork pglogrepl.LSN, refused *ServerChangedError, err error) {
	e := &ServerChangedError{Slot: slot, SystemID: sys.SystemID, Timeline: sys.Timeline, WALEnd: sys.XLogPos,
		PrevSystemID: prev.systemID, PrevTimeline: prev.timeline, Read: read}
	switch {
	case sys.SystemID != prev.systemID:
		return 0, e, nil
	case sys.Timeline != prev.timeline:
		// The fork also when the WAL ends before read (a standby
		// promoted a moment ago): the start moves the checkpoint back to
		// it when nothing was journaled past it (engine.rewindToFork).
		if fork, err = forkPoint(ctx, conn, sys.Timeline, prev.timeline); err != nil {
			return 0, nil, err
		}
		e.Fork = fork
		if fork < read {
			return fork, e, nil
		}
	case sys.XLogPos < read:
		return 0, e, nil
	}
	return fork, nil, nil
}

// CheckResume judges, before a stream starts, the server behind conn
// (sys: its IDENTIFY_SYSTEM there) against where a process read the slot
// to (from: the journal's checkpoint), as a session is judged against
// the one before it. It judges the timeline only: a server of from's
// cluster on another timeline whose history leaves from's below
// from.LSN, or does not hold it (a failover to a standby that was
// behind, a restore to a point before from.LSN), is refused with a
// *ServerChangedError; that server's transactions below from.LSN would
// otherwise be skipped as journaled. A position of another cluster, of
// an unknown timeline (0), or none, is nil: the caller judges it by the
// system identifier and the WAL's end. fork is where sys's timeline left
// from's when it carries it on (0 on the same timeline).
func CheckResume(ctx context.Context, conn *pgconn.PgConn, slot string, sys pglogrepl.IdentifySystemResult, from Resume) (fork pglogrepl.LSN, err error) {
	if from.LSN == 0 || from.Timeline == 0 || from.SystemID != sys.SystemID || from.Timeline == sys.Timeline {
		return 0, nil
	}
	fork, e, err := judge(ctx, conn, slot, sys, server{systemID: from.SystemID, timeline: from.Timeline}, from.readTo())
	if err != nil {
		return 0, err
	}
	if e != nil {
		return 0, e
	}
	return fork, nil
}

// forkPoint returns where timeline tli's history left timeline old, or 0
// when old is not in it.
func forkPoint(ctx context.Context, conn *pgconn.PgConn, tli, old int32) (pglogrepl.LSN, error) {
	if tli < old {
		return 0, nil
	}
	h, err := pglogrepl.TimelineHistory(ctx, conn, tli)
	if err != nil {
		return 0, fmt.Errorf("TIMELINE_HISTORY %d: %w", tli, err)
	}
	return parseHistory(h.Content, old), nil
}

// parseHistory finds, in a timeline history file ("parent TLI <tab>
// switch point <tab> reason" per line), where timeline old ended.
func parseHistory(content []byte, old int32) pglogrepl.LSN {
	sc := bufio.NewScanner(bytes.NewReader(content))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		parent, err := strconv.ParseInt(f[0], 10, 32)
		if err != nil || int32(parent) != old {
			continue
		}
		lsn, err := pglogrepl.ParseLSN(f[1])
		if err != nil {
			return 0
		}
		return lsn
	}
	return 0
}
