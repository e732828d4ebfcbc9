package cdc

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
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
// started again (a restart judges the journal's checkpoint against the
// server: engine.UseCheckpoint), and says why (Stats.Problem, /readyz).

// server is what IDENTIFY_SYSTEM said at the last session that streamed.
type server struct {
	systemID string
	timeline int32
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
	// Read is the position the stream read to and handed over.
	Read pglogrepl.LSN
}

func (e *ServerChangedError) Error() string { return e.PublicReason() }

// PublicReason implements PublicReason: the slot's name, positions and
// cluster identifiers only.
func (e *ServerChangedError) PublicReason() string {
	var what string
	switch {
	case e.SystemID != e.PrevSystemID:
		what = fmt.Sprintf("replication slot %q is now on another database cluster (system identifier %s, was %s; WAL at %s): its positions cannot be compared with the %s this dzhook read to",
			e.Slot, e.SystemID, e.PrevSystemID, e.WALEnd, e.Read)
	case e.WALEnd < e.Read:
		what = fmt.Sprintf("replication slot %q is now on a server whose WAL ends at %s (timeline %d), before %s, where this dzhook already read to: a failover to a standby that was behind, or a restore from a backup",
			e.Slot, e.WALEnd, e.Timeline, e.Read)
	default:
		what = fmt.Sprintf("replication slot %q is now on a server whose timeline %d left timeline %d at %s, before %s, where this dzhook already read to: a failover to a standby that was behind",
			e.Slot, e.Timeline, e.PrevTimeline, e.Fork, e.Read)
	}
	return what + ". Its new transactions below that position would be taken for ones already handled and skipped, and reporting the position would move the slot past the server's WAL, so dzhook refuses to stream from it. " +
		"Events of what the old server committed and this one lacks are lost with it (recreate them from the source tables if they matter). " +
		"Its new transactions reuse positions (and so event ids) of the lost ones, which the journal drops as known: to process every one, start dzhook on a fresh journal.schema (the old schema keeps the history, and its pending deliveries are not sent from the new one; subscriptions made through the API or the dashboard live in the journal: create them again there, with their secrets). " +
		"A plain restart is no way out once this server's WAL has passed " + e.Read.String() + ": dzhook then trusts its journal's checkpoint and skips this server's transactions below it"
}

// checkServer runs IDENTIFY_SYSTEM on a new session's connection and
// refuses a server that does not carry on the WAL the stream read
// (ServerChangedError), for the rest of the process.
func (s *Stream) checkServer(ctx context.Context, conn *pgconn.PgConn) error {
	if e := s.changed.Load(); e != nil {
		return e
	}
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	s.mu.Lock()
	prev := s.server
	read := max(s.flushed, s.handedEnd, s.idleAsked)
	s.mu.Unlock()
	e := &ServerChangedError{Slot: s.cfg.Slot, SystemID: sys.SystemID, Timeline: sys.Timeline, WALEnd: sys.XLogPos,
		PrevSystemID: prev.systemID, PrevTimeline: prev.timeline, Read: read}
	refuse := false
	switch {
	case prev.systemID == "":
		// The first session: the stream has read nothing yet (the slot
		// is judged by Config.CheckStart, the journal by its owner).
	case sys.SystemID != prev.systemID:
		refuse = true
	case sys.XLogPos < read:
		refuse = true
	case sys.Timeline != prev.timeline:
		fork, err := forkPoint(ctx, conn, sys.Timeline, prev.timeline)
		if err != nil {
			return err
		}
		e.Fork = fork
		refuse = fork < read
		if !refuse {
			s.log.Info("the server is on a new timeline that carries on the one read so far", "timeline", sys.Timeline, "was", prev.timeline, "switched_at", fork.String(), "read_lsn", read.String())
		}
	}
	if refuse {
		s.changed.Store(e)
		s.log.Error("refusing to stream: the server does not carry on the WAL this process read", "err", e,
			"wal_end", sys.XLogPos.String(), "read_lsn", read.String(), "timeline", sys.Timeline, "system_id", sys.SystemID)
		return e
	}
	s.mu.Lock()
	s.server = server{systemID: sys.SystemID, timeline: sys.Timeline}
	s.mu.Unlock()
	return nil
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
