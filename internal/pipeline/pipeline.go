// Package pipeline consumes the replication stream: it is the cdc.Handler
// that turns each change into events (through mapping) and hands them to
// the router, arms SLA timers for changes of the SLA table, records
// rejected outbox rows, and marks each transaction's end for the journal.
//
// It also keeps dzhook from journaling a transaction twice. The journal
// holds a checkpoint per slot: every transaction with a commit LSN up to
// it is journaled. PostgreSQL resends what was not confirmed before a
// restart (or before another process took the slot over), so a change at
// or below the checkpoint is skipped, and its commit is acknowledged at
// once (Ack) instead of passing through the journal again. A checkpoint
// that cannot be this cluster's is dropped rather than trusted (see
// UseCheckpoint).
//
// The stream calls a Pipeline from one goroutine, in commit order, and
// waits for each call; a Pipeline has no goroutine of its own.
package pipeline

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/internal/slaclock"
)

// Router delivers an event to the subscriptions that want it. A nil
// return means the event is in the hands of the journal writer, in order
// with the rest of its transaction.
type Router interface {
	Dispatch(ctx context.Context, ev fanout.Event) error
}

// Journal takes what must stay in order with a transaction's events: the
// transaction's end, rejected outbox rows, and SLA timers. Each returns
// once the record is queued for the journal writer, which acknowledges a
// commit LSN to the stream only once everything before it is durable.
type Journal interface {
	Commit(ctx context.Context, lsn, end pglogrepl.LSN) error
	Reject(ctx context.Context, r journal.Rejection) error
	ArmTimers(ctx context.Context, c journal.TimerChange) error
}

// Checkpoints reads and forgets the journal's checkpoints;
// *journal.Store has it.
type Checkpoints interface {
	Checkpoint(ctx context.Context, slot string) (journal.Checkpoint, error)
	ResetCheckpoint(ctx context.Context, slot string, cp journal.Checkpoint) error
	ClearRestored(ctx context.Context, slot string, cp journal.Checkpoint) error
}

// Observer counts what the pipeline sees; *metrics.Metrics has it.
type Observer interface {
	Rejected()
}

// Config is the input of New.
type Config struct {
	// Slot is the replication slot, whose checkpoint the pipeline reads.
	Slot string
	// SystemID is the source cluster's system identifier (from
	// IDENTIFY_SYSTEM): a checkpoint written for another is not trusted.
	SystemID string
	// Mapper turns changes into events. Required. SetMapper replaces it.
	Mapper *mapping.Mapper
	// Router receives the events. Required.
	Router Router
	// Journal receives commits, rejections and SLA timers. Required.
	Journal Journal
	// Checkpoints is the journal's checkpoint table. Required.
	Checkpoints Checkpoints
	// Ack acknowledges to the stream a transaction skipped as already
	// journaled (cdc.Stream.Ack). Required.
	Ack func(pglogrepl.LSN)
	// WarningPercent are the sla.warning thresholds timers are armed for.
	WarningPercent []float64
	// ArmHorizon (journal.retention): a timer whose moment is older than
	// this is not armed. It fired then, or was missed then, and the
	// journal has since pruned its row and its event, which were all
	// that kept it from firing again: a later update of a long-breached
	// SLA sent its sla.breach a second time, a month late. Zero: every
	// timer is armed.
	ArmHorizon time.Duration
	// Observer, when set, counts rejections.
	Observer Observer
	// Stalls, when set, is told when the stream stops at a change the
	// mapping no longer fits, and when it goes on (stall.go).
	Stalls Stalls
	// Logger; defaults to slog.Default().
	Logger *slog.Logger
}

// Pipeline is the stream's handler. Its methods, except New, are called
// from the stream's goroutine only (UseCheckpoint and Checkpoint before
// the stream runs).
type Pipeline struct {
	cfg        Config
	log        *slog.Logger
	checkpoint pglogrepl.LSN
	scratch    []mapping.Event
	schema     schemaState
}

var _ cdc.Handler = (*Pipeline)(nil)

// New returns a pipeline without a checkpoint: call UseCheckpoint before
// the stream runs.
func New(cfg Config) (*Pipeline, error) {
	if cfg.Mapper == nil || cfg.Router == nil || cfg.Journal == nil || cfg.Checkpoints == nil || cfg.Ack == nil {
		return nil, errors.New("pipeline: Mapper, Router, Journal, Checkpoints and Ack are required")
	}
	p := &Pipeline{cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default())}
	p.schema.init(cfg.Mapper)
	return p, nil
}

// UseCheckpoint adopts cp, the slot's checkpoint, below which the
// stream's transactions are known to be journaled. Read cp before walEnd
// (the WAL's end from IDENTIFY_SYSTEM): another process holding the slot
// may journal meanwhile, and a checkpoint read after the WAL position
// could look ahead of it. A checkpoint that cannot be this cluster's
// (another system identifier, or a position its WAL has not reached: a
// restore from backup) is dropped, here and in the journal, rather than
// trusted, since it would make dzhook skip transactions it never
// journaled. One of this cluster on another timeline than the server's
// is judged before (cdc.CheckResume: the start refuses a server whose
// timeline forked below it).
func (p *Pipeline) UseCheckpoint(ctx context.Context, cp journal.Checkpoint, walEnd pglogrepl.LSN) error {
	lsn, why := trusted(cp, p.cfg.SystemID, walEnd)
	p.checkpoint = lsn
	if why == "" {
		if cp.RestoredBelow != 0 {
			// Trusted at or below the restored WAL's end: the restore
			// is handled, and this start's streaming carries the
			// checkpoint past the mark.
			return p.cfg.Checkpoints.ClearRestored(ctx, p.cfg.Slot, cp)
		}
		return nil
	}
	p.log.Warn("journal checkpoint dropped; every transaction the slot sends is processed", "slot", p.cfg.Slot, "checkpoint", pglogrepl.LSN(cp.LSN).String(), "reason", why)
	return p.cfg.Checkpoints.ResetCheckpoint(ctx, p.cfg.Slot, cp)
}

// trusted returns the position below which cp says transactions are
// journaled, or 0 and why cp cannot be trusted.
func trusted(cp journal.Checkpoint, systemID string, walEnd pglogrepl.LSN) (pglogrepl.LSN, string) {
	lsn := pglogrepl.LSN(cp.LSN)
	// What it says was read to (Checkpoint.ReadTo): a commit that starts
	// at the WAL's end (or a restored WAL's) is one that WAL lacks.
	read := cp.ReadTo()
	switch {
	case cp.LSN == 0:
		return 0, ""
	case cp.SystemID != "" && cp.SystemID != systemID:
		return 0, "it belongs to database cluster " + cp.SystemID + ", not " + systemID
	case read > walEnd:
		return 0, "it is ahead of the database's WAL (" + walEnd.String() + "): the database was restored from a backup or replaced; " +
			"new events may reuse ids of the lost timeline, which the journal drops as known: give dzhook a fresh journal.schema"
	case cp.RestoredBelow != 0 && read > cp.RestoredBelow:
		return 0, "a server of this cluster whose WAL ended at " + cp.RestoredBelow.String() + ", before it, was refused while dzhook ran (a restore from a snapshot); " +
			"trusted, the restored server's transactions below it would be skipped as journaled. New events may reuse ids of the lost WAL, which the journal drops as known: give dzhook a fresh journal.schema to process every one"
	}
	return lsn, ""
}

// Checkpoint is the position at or below which transactions are skipped.
func (p *Pipeline) Checkpoint() pglogrepl.LSN { return p.checkpoint }

// SessionStarted is for cdc.Config.OnSession: it runs, in the stream's
// order, before the first change of each replication session. Another
// process may have journaled transactions (and checkpointed them) while
// this one waited for the slot, and PostgreSQL resends what that process
// journaled but had not yet confirmed. The fresh checkpoint skips them.
//
// A checkpoint lower than the one held was moved back on purpose: by
// another process's start after a failover (to the fork: the session's
// server was judged against it, cdc Config.Journaled), or deleted by a
// start that could not trust it. It is taken as it is: kept, a standby
// that took the slot over after the rewind skipped the new server's
// transactions between the fork and the checkpoint it read at its own
// start (found by a review). What this process journaled itself is past
// the journal's checkpoint, never below it.
func (p *Pipeline) SessionStarted(ctx context.Context) {
	cp, err := p.cfg.Checkpoints.Checkpoint(ctx, p.cfg.Slot)
	if err != nil {
		p.log.Warn("could not re-read the journal checkpoint; transactions journaled by another instance may be delivered again", "err", err)
		return
	}
	lsn := pglogrepl.LSN(cp.LSN)
	switch {
	case cp.SystemID == p.cfg.SystemID && lsn > p.checkpoint:
		p.checkpoint = lsn
	case lsn < p.checkpoint && (cp.SystemID == p.cfg.SystemID || cp.LSN == 0 && cp.SystemID == ""):
		p.log.Info("the journal's checkpoint was moved back (a failover's rewind to the fork, or a checkpoint a start could not trust): the transactions the slot sends from there are processed",
			"slot", p.cfg.Slot, "checkpoint", lsn.String(), "was", p.checkpoint.String())
		p.checkpoint = lsn
	}
}

// HandleChange implements cdc.Handler: map the change and dispatch its
// events, or arm the timers of an SLA change. A change of a transaction
// already journaled is skipped.
func (p *Pipeline) HandleChange(ctx context.Context, c *cdc.Change) error {
	if c.CommitLSN <= p.checkpoint {
		return nil
	}
	if c.Op == cdc.OpTruncate {
		p.truncated(c)
		return nil
	}
	// Waits here while the mapping does not fit the change's table as
	// the stream describes it: nothing after is handed over, so nothing
	// after is acknowledged (stall.go).
	m, err := p.mapperFor(ctx, c)
	if err != nil {
		return err
	}
	if m.IsSLA(c) {
		return p.armSLA(ctx, m, c)
	}
	events, rej := m.Map(ctx, c, p.scratch[:0])
	p.scratch = events[:0]
	if rej != nil {
		if p.cfg.Observer != nil {
			p.cfg.Observer.Rejected()
		}
		what, reason := rejectionText(rej.What), rejectionText(rej.Reason)
		p.log.Warn("event rejected", "source", what, "reason", reason, "lsn", c.CommitLSN.String())
		if err := p.cfg.Journal.Reject(ctx, journal.Rejection{Source: what, Reason: reason, CommitLSN: c.CommitLSN, Ordinal: c.Ordinal}); err != nil {
			return err
		}
	}
	for _, ev := range events {
		err := p.cfg.Router.Dispatch(ctx, fanout.Event{ID: ev.ID, Type: ev.Type, Timestamp: ev.Timestamp, Body: ev.Body, CommitLSN: ev.CommitLSN, Key: ev.Key})
		if err != nil {
			return err
		}
	}
	return nil
}

// HandleCommit implements cdc.Handler: the transaction's end goes to the
// journal, which acknowledges it once it is durable; a transaction
// already journaled is acknowledged at once.
func (p *Pipeline) HandleCommit(ctx context.Context, c cdc.Commit) error {
	if c.CommitLSN <= p.checkpoint {
		p.cfg.Ack(c.CommitLSN)
		return nil
	}
	return p.cfg.Journal.Commit(ctx, c.CommitLSN, c.EndLSN)
}

// armSLA handles a change of the SLA table.
func (p *Pipeline) armSLA(ctx context.Context, m *mapping.Mapper, c *cdc.Change) error {
	now := time.Now()
	up, err := m.SLAChange(c, p.cfg.WarningPercent, now)
	if err != nil {
		p.log.Warn("SLA change not understood; its timers are left as they were", "err", err, "lsn", c.CommitLSN.String())
		return nil
	}
	if up.SLAID == "" {
		return nil
	}
	if p.cfg.ArmHorizon > 0 {
		// By when it is due: a warning whose threshold passed before the
		// change that gave its SLA its target is due at the change
		// (SLATimers), however long ago the threshold passed.
		up.Arm = slices.DeleteFunc(up.Arm, func(t mapping.Timer) bool { return t.FireAt.Before(now.Add(-p.cfg.ArmHorizon)) })
	}
	tc := slaclock.TimerChange(up)
	tc.CommitLSN = c.CommitLSN
	return p.cfg.Journal.ArmTimers(ctx, tc)
}

// maxRejectionText bounds what a rejection says (its source and its
// reason), in bytes.
const maxRejectionText = 1024

// rejectionText is a rejection's text as the log and the journal keep it
// (journal.Text): a reason quoting a data key with a NUL byte made the
// journal writer retry its batch for ever, and one quoting a value that
// failed a pattern, or an undeclared event name, could be a megabyte.
func rejectionText(s string) string { return journal.Text(s, maxRejectionText) }
