package pipeline

import (
	"context"
	"sync/atomic"

	"github.com/jackc/pglogrepl"

	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/mapping"
)

// This file keeps the mapping and the tables in step while the stream
// runs.
//
// PostgreSQL describes a table (a relation message) before its first
// change in each session and again after every ALTER TABLE, so the
// stream knows a table's columns as of each change. When a change
// arrives for a mapped table that no longer has what the mapping needs
// (a mapped column renamed, dropped, or a time column retyped: see
// mapping.Fit; or the table renamed), mapping it would send events
// without the field, or none at all, and acknowledging it would lose
// them. So the pipeline stops there: HandleChange does not return, the
// stream hands nothing more over, and the journal writer, which
// acknowledges only commits it journaled, never acknowledges that
// transaction or any after it. The stream's keepalive acknowledgement
// does not pass it either: it needs the stream idle, and a change being
// handled is not. The stall is said once (an ERROR per misfit, then
// Stalls: /readyz, a metric, a notification) and lasts until:
//
//   - a reload gives a mapping that fits the change (SetMapper): the
//     same change is mapped with it and the stream goes on; a reloaded
//     mapping that does not fit is logged and the stall goes on;
//   - ctx ends (shutdown): HandleChange returns, the stream stops, and
//     the next start streams again from the last acknowledged commit,
//     which is before the stalled change. Started with a fixed mapping,
//     it maps the change; with the same one, it refuses to start
//     (mapping.Config.Check).
//
// A reloaded mapping takes effect at the first change it fits: the
// stream may be behind the catalog the reload was checked against, and
// changes from before an ALTER are still described with the old
// columns. Until then, and after for such changes, the mapping it
// replaces maps what it fits: for each table, until the new mapping has
// fitted a description of it (a later description it does not fit comes
// from a later ALTER, and stalls).

// Stalls is told when the stream stops at a change the mapping does not
// fit, once per stall, and when it goes on. Called from the stream's
// goroutine; Stalled may block on ctx.
type Stalls interface {
	Stalled(ctx context.Context, s Stall)
	Resumed(s Stall)
}

// Stall is a change the stream waits at.
type Stall struct {
	// CommitLSN and Ordinal name the change (its transaction's commit
	// LSN and its position in it).
	CommitLSN pglogrepl.LSN
	Ordinal   int
	// Misfits are what the mapping names and the table lacks.
	Misfits []mapping.Misfit
}

// schemaState is the pipeline's mapping and what it knows of the
// stream's tables. Only the stream's goroutine touches it, except
// current (read by Mapper) and next and reloaded (written by SetMapper).
type schemaState struct {
	current  atomic.Pointer[mapping.Mapper]
	next     atomic.Pointer[checked]
	reloaded chan struct{}

	previous *mapping.Mapper // the one current replaced: maps what current does not fit
	// previousUntil: previous maps only changes committed before it, the
	// WAL position at which the reload that replaced it was checked
	// against the catalog (every ALTER it was written for came before).
	previousUntil pglogrepl.LSN
	candidate     *mapping.Mapper // reloaded, not yet in effect
	candidateAt   pglogrepl.LSN   // where candidate was checked (SetMapperAt)
	told          *mapping.Mapper // candidate whose misfit was logged
	fitted        map[uint32]*cdc.Relation
	// settled: for each table, the first change (in WAL order) at which
	// current fitted a description of it since it took effect. The
	// replaced mapping maps only changes before it: a later one current
	// does not fit comes from a later ALTER (a mapped column dropped),
	// not from before the reload's, and stalls. By position, not by
	// arrival: a new replication session sends again changes from before
	// it, described as they were.
	settled map[uint32]position
	// fallbacks are the mappings the slot's changes were mapped with
	// before this start (SetFallbacks), newest first: they map a change
	// current does not fit that comes before the first change of its
	// table a mapping in effect has fitted since the start (ever, kept as
	// settled is): a change from before an ALTER made while dzhook was
	// stopped (or before it stopped). fellBackOn: tables a fallback
	// mapped, logged once each.
	fallbacks     []*mapping.Mapper
	fallbackUntil pglogrepl.LSN // where the start checked its mapping (SetFallbacks)
	ever          map[uint32]position
	fellBackOn    map[uint32]bool
	names         map[uint32]string // relation ID → the name it was last mapped under
	stall         *Stall
}

func (s *schemaState) init(m *mapping.Mapper) {
	s.current.Store(m)
	s.reloaded = make(chan struct{}, 1)
	s.fitted = map[uint32]*cdc.Relation{}
	s.settled = map[uint32]position{}
	s.ever = map[uint32]position{}
	s.fellBackOn = map[uint32]bool{}
	s.names = map[uint32]string{}
}

// Mapper returns the mapping in effect. Safe from any goroutine.
func (p *Pipeline) Mapper() *mapping.Mapper { return p.schema.current.Load() }

// SetMapper hands over a reloaded mapping, already checked against the
// catalog (mapping.Config.Check). It takes effect at the first change
// it fits, which resumes a stalled stream. Safe from any goroutine.
func (p *Pipeline) SetMapper(m *mapping.Mapper) { p.SetMapperAt(m, ^pglogrepl.LSN(0)) }

// SetMapperAt is SetMapper for a mapping checked against the catalog at
// WAL position at: the mapping it replaces maps only changes committed
// before at (any ALTER the new one was written for came before it, and
// one after it that the new one does not fit stalls).
func (p *Pipeline) SetMapperAt(m *mapping.Mapper, at pglogrepl.LSN) {
	p.schema.next.Store(&checked{m, at})
	select {
	case p.schema.reloaded <- struct{}{}:
	default:
	}
}

// position is a change's place in the WAL: its commit and its ordinal.
type position struct {
	lsn     pglogrepl.LSN
	ordinal int
}

func (a position) less(b position) bool {
	return a.lsn < b.lsn || a.lsn == b.lsn && a.ordinal < b.ordinal
}

// earlier is the earlier of m[id] (if set) and at.
func earlier(m map[uint32]position, id uint32, at position) position {
	if was, ok := m[id]; ok && was.less(at) {
		return was
	}
	return at
}

// before reports whether c comes before m[id], or m has no position for id.
func before(m map[uint32]position, id uint32, c *cdc.Change) bool {
	at, ok := m[id]
	return !ok || (position{c.CommitLSN, c.Ordinal}).less(at)
}

// checked is a reloaded mapping and the WAL position at which it was
// checked against the catalog.
type checked struct {
	m  *mapping.Mapper
	at pglogrepl.LSN
}

// SetFallbacks gives the mappings the slot's changes were mapped with
// before this start, newest first (see schemaState.fallbacks). Called
// before the stream starts.
//
// until is the WAL position at which the start checked its mapping
// against the catalog: every ALTER that mapping was written for committed
// before it, so the fallbacks map only changes committed before it; one
// after it that the configured mapping does not fit comes from a later
// ALTER, and stalls.
func (p *Pipeline) SetFallbacks(ms []*mapping.Mapper, until pglogrepl.LSN) {
	p.schema.fallbacks, p.schema.fallbackUntil = ms, until
}

// mapperFor returns the mapping to map c with, waiting while none fits
// c's table. It returns only ctx's error.
func (p *Pipeline) mapperFor(ctx context.Context, c *cdc.Change) (*mapping.Mapper, error) {
	s := &p.schema
	rel := c.Relation
	for {
		if n := s.next.Swap(nil); n != nil {
			s.candidate, s.candidateAt = n.m, n.at
		}
		cur := s.current.Load()
		if rel == nil {
			// A logical message needs no table: a reloaded mapping takes
			// effect at once.
			if s.candidate != nil {
				p.adopt(c)
				cur = s.current.Load()
			}
			return cur, nil
		}
		if s.candidate != nil && len(p.misfits(s.candidate, rel)) == 0 {
			p.adopt(c)
			cur = s.current.Load()
		}
		if s.fitted[rel.ID] == rel {
			return cur, nil
		}
		misfits := p.misfits(cur, rel)
		mapped := cur.Entity(rel.QualifiedName()) != ""
		if len(misfits) == 0 && !mapped {
			// A table current does not map: one an older mapping maps
			// under this name (renamed since) gives that one its
			// changes from before.
			if m := p.older(c, rel, true); m != nil {
				return m, nil
			}
		}
		if len(misfits) == 0 {
			p.fits(cur, rel)
			if mapped {
				at := position{c.CommitLSN, c.Ordinal}
				s.settled[rel.ID] = earlier(s.settled, rel.ID, at)
				s.ever[rel.ID] = earlier(s.ever, rel.ID, at)
			}
			return cur, nil
		}
		if m := p.older(c, rel, false); m != nil {
			return m, nil
		}
		if s.stall == nil {
			s.stall = &Stall{CommitLSN: c.CommitLSN, Ordinal: c.Ordinal, Misfits: misfits}
			for _, m := range misfits {
				p.log.Error("replication stream stalled: the mapping does not fit the table as the stream describes it; nothing after this change is acknowledged until a reload fixes the mapping",
					"path", m.Path, "table", m.Table, "column", m.Column, "problem", m.Message, "lsn", c.CommitLSN.String(), "op", c.Op.String())
			}
			if p.cfg.Stalls != nil {
				p.cfg.Stalls.Stalled(ctx, *s.stall)
			}
		} else if s.candidate != nil && s.told != s.candidate {
			s.told = s.candidate
			for _, m := range p.misfits(s.candidate, rel) {
				p.log.Error("reloaded mapping does not fit the stalled change either; the stream stays stalled",
					"path", m.Path, "table", m.Table, "column", m.Column, "problem", m.Message, "lsn", c.CommitLSN.String())
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.reloaded:
		}
	}
}

// older returns the mapping from before current that maps c, or nil: the
// one a reload replaced, for a change before that reload's check and
// before current fitted the table; else one the slot ran with before this
// start (the journal's), for a change before the start's check and before
// a mapping in effect fitted the table. named: only one that maps the
// table under its name (current does not).
func (p *Pipeline) older(c *cdc.Change, rel *cdc.Relation, named bool) *mapping.Mapper {
	s := &p.schema
	fits := func(m *mapping.Mapper) bool {
		return (!named || m.Entity(rel.QualifiedName()) != "") && len(p.misfits(m, rel)) == 0
	}
	if s.previous != nil && c.CommitLSN < s.previousUntil && before(s.settled, rel.ID, c) && fits(s.previous) {
		// From before the change the reload was made for: the mapping it
		// replaced still describes it.
		return s.previous
	}
	if c.CommitLSN >= s.fallbackUntil || !before(s.ever, rel.ID, c) {
		return nil
	}
	for _, f := range s.fallbacks {
		if fits(f) {
			if !s.fellBackOn[rel.ID] {
				s.fellBackOn[rel.ID] = true
				p.log.Info("mapping changes from before the table changed with the mapping then in force (recorded in the journal), until the configured mapping fits the table",
					"table", rel.QualifiedName(), "lsn", c.CommitLSN.String())
			}
			return f
		}
	}
	return nil
}

// adopt puts the candidate mapping in effect from change c on.
func (p *Pipeline) adopt(c *cdc.Change) {
	s := &p.schema
	s.previousUntil = s.candidateAt
	s.previous = s.current.Swap(s.candidate)
	s.candidate, s.told = nil, nil
	clear(s.fitted)
	clear(s.settled)
	p.log.Info("reloaded mapping in effect", "lsn", c.CommitLSN.String())
}

// fits records that m fits rel, and ends a stall.
func (p *Pipeline) fits(m *mapping.Mapper, rel *cdc.Relation) {
	s := &p.schema
	s.fitted[rel.ID] = rel
	if m.Entity(rel.QualifiedName()) != "" {
		s.names[rel.ID] = rel.QualifiedName()
	}
	if s.stall != nil {
		p.log.Info("replication stream resumed: the mapping fits again", "lsn", s.stall.CommitLSN.String())
		if p.cfg.Stalls != nil {
			p.cfg.Stalls.Resumed(*s.stall)
		}
		s.stall = nil
	}
}

// misfits is what m needs of rel and rel lacks: mapped columns (see
// mapping.Fit), or the table itself when a relation m maps was renamed
// to a name m does not map as the same entity (its changes would
// otherwise pass unmapped, silently).
func (p *Pipeline) misfits(m *mapping.Mapper, rel *cdc.Relation) []mapping.Misfit {
	out := m.Fit(rel)
	name := rel.QualifiedName()
	if prev, ok := p.schema.names[rel.ID]; ok && prev != name {
		if e := m.Entity(prev); e != "" && m.Entity(name) != e {
			out = append(out, mapping.Misfit{Path: "mapping." + e + ".table", Table: prev,
				Message: "table " + prev + " was renamed to " + name + "; its changes would no longer be mapped"})
		}
	}
	return out
}

// truncated warns of a TRUNCATE of a mapped table: pgoutput sends it,
// and DZDESK has no event for it, so receivers hear nothing of the rows
// it removed.
func (p *Pipeline) truncated(c *cdc.Change) {
	if c.Relation == nil {
		return
	}
	table := c.Relation.QualifiedName()
	if e := p.Mapper().Entity(table); e != "" {
		p.log.Warn("TRUNCATE of a mapped table: no event fires for the rows it removed", "table", table, "entity", e, "lsn", c.CommitLSN.String())
	}
}
