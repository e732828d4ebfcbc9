package cdc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// processor decodes WAL messages and calls the handler. It runs in one
// goroutine for the stream's whole life, so its transaction state survives
// reconnections: after one, PostgreSQL resends every transaction not yet
// acknowledged, and the processor skips what it already handed on (whole
// transactions, or the first changes of one cut short), so the handler
// sees each change once per process.
type processor struct {
	s    *Stream
	rels *relations

	inTx    bool
	cur     begin
	ordinal int // of the next change in the current transaction
	// skipAll: the current transaction was handed on in full before a
	// reconnection. skipBelow: its changes with a smaller ordinal were.
	skipAll   bool
	skipBelow int
	// told: the stream knows a change of the current transaction was
	// handed over (Stream.partialEnd).
	told bool

	lastCommit pglogrepl.LSN // commit LSN of the last transaction handed on in full
	partial    *txProgress   // a transaction cut short by a lost connection

	// discard: a message of this session could not be processed for a
	// reason that ends the session, not the stream (a type lookup that
	// failed); the rest of the session's messages are dropped, and the
	// next session sends them again.
	discard bool

	oldBuf, newBuf []rawColumn // raw tuples, reused message to message
}

type txProgress struct {
	lsn    pglogrepl.LSN
	handed int
}

func newProcessor(s *Stream, rels *relations) *processor {
	return &processor{s: s, rels: rels}
}

// run processes messages until ctx ends or the handler fails.
func (p *processor) run(ctx context.Context, msgs <-chan wal) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case w := <-msgs:
			if !w.session && (p.discard || w.seq <= p.s.dropThrough.Load()) {
				p.s.busy.Add(-1)
				continue
			}
			p.discard = false
			err := p.handle(ctx, w)
			var lookup *typeLookupError
			if errors.As(err, &lookup) && ctx.Err() == nil {
				// The session ends (Interrupt) and its messages still
				// queued are dropped: the next one sends them again. The
				// stream stays busy in a transaction meanwhile, so no
				// keepalive's position is acknowledged past them.
				// Interrupt before busy goes to 0: the reader, free to
				// process the next message itself once it does, finds
				// the session ended (inliner.try) rather than handling
				// a message of it on this state.
				p.discard = true
				p.s.discarded.Store(w.seq)
				p.s.inTx.Store(true)
				p.s.Interrupt(fmt.Errorf("wal at %s: %w", w.start, err))
				p.s.busy.Add(-1)
				continue
			}
			if err != nil && ctx.Err() == nil {
				// busy stays above 0: the reader must not process the
				// next message itself (inline.go) on a failed
				// processor's state; it hands it over and sees procErr.
				return fmt.Errorf("wal at %s: %w", w.start, err)
			}
			p.s.busy.Add(-1)
			if err != nil {
				return nil // stopped while the handler waited
			}
		}
	}
}

func (p *processor) handle(ctx context.Context, w wal) error {
	if w.session {
		if p.inTx {
			// What was skipped of a replayed transaction counts as handed:
			// cut short again before reaching skipBelow, it must not hand
			// those changes a second time.
			p.partial = &txProgress{lsn: p.cur.FinalLSN, handed: max(p.ordinal, p.skipBelow)}
			if p.skipAll {
				p.partial = nil // handed in full: lastCommit covers it
			}
			p.endTx()
		}
		p.s.inTx.Store(false) // set while a failed session's messages were dropped
		if p.s.cfg.OnSession != nil {
			p.s.cfg.OnSession(ctx)
		}
		return nil
	}
	b := w.data
	if len(b) == 0 {
		return fmt.Errorf("empty message")
	}
	switch b[0] {
	case 'B':
		m, err := parseBegin(b)
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		if p.inTx {
			return fmt.Errorf("begin of transaction %d inside transaction %d", m.XID, p.cur.XID)
		}
		p.cur, p.ordinal, p.inTx, p.told = m, 0, true, false
		p.s.inTx.Store(true)
		p.skipAll, p.skipBelow = m.FinalLSN <= p.lastCommit, 0
		if p.partial != nil && p.partial.lsn == m.FinalLSN {
			p.skipBelow = p.partial.handed
			p.partial = nil
		}
	case 'C':
		m, err := parseCommit(b)
		if err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		if !p.inTx {
			return fmt.Errorf("commit %s outside a transaction", m.CommitLSN)
		}
		if m.CommitLSN != p.cur.FinalLSN {
			return fmt.Errorf("commit LSN %s does not match the transaction's final LSN %s", m.CommitLSN, p.cur.FinalLSN)
		}
		skip := p.skipAll
		n := p.ordinal
		p.endTx()
		if skip {
			return nil
		}
		p.lastCommit = m.CommitLSN
		if err := p.s.cfg.Handler.HandleCommit(ctx, Commit{XID: p.cur.XID, CommitLSN: m.CommitLSN, CommitTime: m.CommitTime, EndLSN: m.EndLSN, Changes: n}); err != nil {
			return err
		}
		p.s.transactions.Add(1)
		// Recorded once the handler took the commit (its acknowledgement
		// may come first: advance compares with the highest one), so a
		// stopping stream never waits for a commit the handler refused.
		p.s.handed(txEnd{commit: m.CommitLSN, end: m.EndLSN})
		return nil
	case 'R':
		rel, err := parseRelation(b)
		if err != nil {
			return fmt.Errorf("relation: %w", err)
		}
		return p.rels.put(ctx, rel)
	case 'Y', 'O':
		// Types are resolved from the catalog; origins are not used.
	case 'I', 'U', 'D':
		m, err := parseRowChange(b, p.oldBuf, p.newBuf)
		if m.Old != nil {
			p.oldBuf = m.Old[:0]
		}
		if m.New != nil {
			p.newBuf = m.New[:0]
		}
		if err != nil {
			return fmt.Errorf("%s: %w", opName(b[0]), err)
		}
		rel, ok := p.rels.get(m.RelationID)
		if !ok {
			return fmt.Errorf("%s for relation %d, which the stream never described", opName(b[0]), m.RelationID)
		}
		c := &Change{Relation: rel}
		switch b[0] {
		case 'I':
			c.Op = OpInsert
		case 'U':
			c.Op = OpUpdate
		case 'D':
			c.Op = OpDelete
		}
		if c.New, err = tupleValues(rel, m.New); err != nil {
			return err
		}
		if c.Old, err = tupleValues(rel, m.Old); err != nil {
			return err
		}
		if c.New != nil && c.Old != nil {
			fillUnchanged(c.New, c.Old)
		}
		return p.emit(ctx, c)
	case 'T':
		ids, err := parseTruncate(b)
		if err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
		for _, id := range ids {
			rel, ok := p.rels.get(id)
			if !ok {
				return fmt.Errorf("truncate of relation %d, which the stream never described", id)
			}
			if err := p.emit(ctx, &Change{Op: OpTruncate, Relation: rel}); err != nil {
				return err
			}
		}
	case 'M':
		m, err := parseMessage(b)
		if err != nil {
			return fmt.Errorf("logical message: %w", err)
		}
		if m.Transactional || p.inTx {
			return p.emit(ctx, &Change{Op: OpMessage, Message: m})
		}
		return p.standalone(ctx, m)
	default:
		return fmt.Errorf("unknown message type %q", b[0])
	}
	return nil
}

// emit hands a change of the current transaction to the handler, unless it
// was handed before a reconnection.
func (p *processor) emit(ctx context.Context, c *Change) error {
	if !p.inTx {
		return fmt.Errorf("%s outside a transaction", c.Op)
	}
	ord := p.ordinal
	p.ordinal++
	if p.skipAll || ord < p.skipBelow {
		return nil
	}
	c.XID, c.CommitLSN, c.CommitTime, c.Ordinal = p.cur.XID, p.cur.FinalLSN, p.cur.CommitTime, ord
	p.s.changes.Add(1)
	if !p.told {
		// Its events go out before its commit comes, which a lost
		// connection may cut off: the transaction counts as read up to
		// its commit record for the next session's judgment.
		p.s.partialRead(p.cur.FinalLSN + 1)
		p.told = true
	}
	return p.s.cfg.Handler.HandleChange(ctx, c)
}

// standalone hands on a non-transactional logical message as a
// transaction of its own.
//
// Its key (the commit LSN the handler sees) is the message's LSN minus one.
// pgoutput reports a message at the end of its record, which is the start
// of the next record; when that record is a commit, of a transaction that
// emitted the message while open, the message's LSN equals that
// transaction's commit LSN, and keying the message by it would make the
// transaction look handed on already. Every commit before the message
// starts before the message's record, so the key stays strictly between
// the commits around it.
//
// The flush position is the message's LSN: PostgreSQL skips a
// non-transactional message on restart once the flush position is past the
// start of its record, and a commit only once it is past the commit
// record's start, so anything beyond the message's end would acknowledge
// a following transaction not yet handed on.
func (p *processor) standalone(ctx context.Context, m *Message) error {
	key := m.LSN - 1
	if key <= p.lastCommit {
		return nil
	}
	c := &Change{Op: OpMessage, Message: m, CommitLSN: key, CommitTime: time.Now().UTC()}
	p.s.changes.Add(1)
	if err := p.s.cfg.Handler.HandleChange(ctx, c); err != nil {
		return err
	}
	p.lastCommit = key
	if err := p.s.cfg.Handler.HandleCommit(ctx, Commit{CommitLSN: key, CommitTime: c.CommitTime, EndLSN: m.LSN, Changes: 1}); err != nil {
		return err
	}
	p.s.transactions.Add(1)
	p.s.handed(txEnd{commit: key, end: m.LSN})
	return nil
}

func (p *processor) endTx() {
	p.inTx = false
	p.s.inTx.Store(false)
}

func opName(b byte) string {
	switch b {
	case 'I':
		return "insert"
	case 'U':
		return "update"
	case 'D':
		return "delete"
	}
	return string(b)
}
