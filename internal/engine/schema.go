package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/internal/pipeline"
)

// DefaultSchemaInterval is how often the mapped tables are checked for
// being dropped, renamed or out of the publication.
const DefaultSchemaInterval = 30 * time.Second

// schemaWatch makes a source schema that no longer fits the mapping
// loud, and lets a reload fix it.
//
// Two cases, because the stream sees them differently:
//
//   - A mapped column renamed, dropped or retyped: the stream describes
//     the table again before its next change, and the pipeline stops at
//     that change (internal/pipeline/stall.go) until a reloaded mapping
//     fits it. schemaWatch is the pipeline's Stalls: /readyz answers 503
//     with the reason, dzhook_stream_stalled{reason="mapping"} is 1, and
//     one notification goes out per stall.
//   - A mapped table dropped (or renamed, or recreated outside the
//     publication): pgoutput says nothing, and there is no change to stop
//     before; changes made to the table are not streamed at all, so
//     stopping the stream would save none of them and would hold back
//     the other tables' events. So the stream goes on, and a periodic
//     check of the catalog and the publication makes it loud instead:
//     an ERROR per table, /readyz 503, dzhook_mapped_tables_unstreamed,
//     one notification per new problem. It clears itself once the table
//     is back in the publication (`dzhook setup`) or a reload maps
//     another.
//
// A reload with a changed mapping section is checked against the live
// catalog (mapping.Config.Check) and, if it passes, takes effect without
// a restart: the pipeline gets a new Mapper (at the first change it
// fits), the SLA clock new queries.
type schemaWatch struct {
	e        *Engine
	interval time.Duration
	sla      atomic.Pointer[mapping.SLASource]

	// outbox is outbox.table, qualified, when it existed at start (setup
	// then put it in the publication): checked with the mapped tables, so
	// one dropped and created again outside the publication is loud, not
	// a silent loss of its rows. "" when none (no outbox in use).
	outbox string

	mu      sync.Mutex
	applied mapping.Config // the mapping in effect (or becoming so)
	stall   *pipeline.Stall
	missing []mapping.Misfit
}

func newSchemaWatch(e *Engine, cfg *config.Config, interval time.Duration, sla *mapping.SLASource) *schemaWatch {
	if interval <= 0 {
		interval = DefaultSchemaInterval
	}
	w := &schemaWatch{e: e, interval: interval, applied: cfg.Mapping}
	w.sla.Store(sla)
	return w
}

// Stalled implements pipeline.Stalls.
func (w *schemaWatch) Stalled(ctx context.Context, s pipeline.Stall) {
	w.mu.Lock()
	w.stall = &s
	w.mu.Unlock()
	w.e.metrics.SetStalled("mapping", true)
	detail := map[string]string{"lsn": s.CommitLSN.String()}
	var what []string
	for _, m := range s.Misfits {
		what = append(what, m.Error())
		detail[m.Path] = m.Message
	}
	text := fmt.Sprintf("the replication stream stopped at %s: the mapping no longer fits the source tables (%s). Nothing after it is acknowledged or lost; fix the mapping and reload (SIGHUP) to resume from that change.",
		s.CommitLSN, strings.Join(what, "; "))
	if err := w.e.dispatcher.NotifySystem(ctx, fanout.NotifyStreamStalled, text, detail); err != nil && ctx.Err() == nil {
		w.e.log.Warn("could not queue the stall notification", "err", err)
	}
}

// Resumed implements pipeline.Stalls.
func (w *schemaWatch) Resumed(pipeline.Stall) {
	w.mu.Lock()
	w.stall = nil
	w.mu.Unlock()
	w.e.metrics.SetStalled("mapping", false)
}

// notReady is the reason /readyz gives, or nil. It names mapping paths
// and positions, not hosts or credentials: /readyz needs no token.
func (w *schemaWatch) notReady() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stall != nil {
		var paths []string
		for _, m := range w.stall.Misfits {
			paths = append(paths, m.Path)
		}
		return fmt.Errorf("replication stream stalled at %s: the mapping does not fit the source table (%s); fix the mapping and reload", w.stall.CommitLSN, strings.Join(paths, ", "))
	}
	if len(w.missing) > 0 {
		var paths []string
		for _, m := range w.missing {
			paths = append(paths, m.Path)
		}
		return fmt.Errorf("mapped tables not streamed as dzhook needs (dropped, renamed, out of the publication, filtered, without REPLICA IDENTITY FULL, or an outbox without event or payload): %s; the log has the detail", strings.Join(paths, ", "))
	}
	return nil
}

// Run checks the mapped tables every interval until ctx ends.
func (w *schemaWatch) Run(ctx context.Context) error {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		w.check(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// check compares the mapped tables with the catalog and the publication.
func (w *schemaWatch) check(ctx context.Context) {
	w.mu.Lock()
	mc := w.applied
	w.mu.Unlock()
	var also []mapping.Watched
	if w.outbox != "" {
		also = append(also, mapping.Watched{Path: "outbox.table", Table: w.outbox})
	}
	misfits, err := mc.CheckPublished(ctx, w.e.source, w.e.cfg.Source.Publication, also...)
	if err == nil && w.outbox != "" && !slices.ContainsFunc(misfits, func(m mapping.Misfit) bool { return m.Path == "outbox.table" }) {
		// Its columns too, as the start checks them (one problem per
		// path: a table not streamed is that one's). An outbox altered
		// without event or payload rejects every row.
		var misfit *mapping.Misfit
		if misfit, err = mapping.CheckOutbox(ctx, w.e.source, w.outbox); misfit != nil {
			misfits = append(misfits, *misfit)
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			w.e.log.Warn("could not check the mapped tables", "err", err)
		}
		return
	}
	// A problem is a mapped table (its path) not streamed, from the check
	// that finds it to the one that finds it streamed again: one ERROR and
	// one notification. Its reason can change meanwhile (dropped, then
	// recreated but not yet in the publication): the log says so, and
	// nothing claims it is streamed again.
	w.mu.Lock()
	known := map[string]string{} // path → the problem as last reported
	for _, m := range w.missing {
		known[m.Path] = m.Error()
	}
	w.missing = misfits
	w.mu.Unlock()
	w.e.metrics.SetUnstreamedTables(len(misfits))
	var fresh []string
	for _, m := range misfits {
		was, had := known[m.Path]
		delete(known, m.Path)
		switch {
		case !had:
			fresh = append(fresh, m.Error())
			w.e.log.Error("a mapped table is not streamed as dzhook needs: events are missing", "path", m.Path, "table", m.Table, "problem", m.Message)
		case was != m.Error():
			w.e.log.Error("a mapped table is still not streamed, now for another reason", "path", m.Path, "table", m.Table, "problem", m.Message, "was", was)
		}
	}
	var back []string
	for _, was := range known {
		w.e.log.Info("a mapped table is streamed again", "was", was)
		back = append(back, was)
	}
	// The admin told of the problem is told it cleared (the notified
	// channel's last word was the problem, for good).
	if len(back) > 0 && !w.e.stream.Stats().Standby {
		slices.Sort(back)
		text := "mapped tables are streamed again (their changes between give no events): " + strings.Join(back, "; ")
		if err := w.e.dispatcher.NotifySystem(ctx, fanout.NotifyTableStreamed, text, nil); err != nil && ctx.Err() == nil {
			w.e.log.Warn("could not queue the notification", "err", err)
		}
	}
	// Every process checks (and logs, and says it in /readyz and the
	// metric); only one that streams tells the admin: each process of N
	// sent its own copy of the notification.
	if len(fresh) > 0 && !w.e.stream.Stats().Standby {
		text := "mapped tables are not streamed as dzhook needs, so events are missing: " + strings.Join(fresh, "; ")
		if err := w.e.dispatcher.NotifySystem(ctx, fanout.NotifyTableMissing, text, nil); err != nil && ctx.Err() == nil {
			w.e.log.Warn("could not queue the notification", "err", err)
		}
	}
}

// prepare checks next's mapping, if it changed, against the live catalog
// and readies it, changing nothing: apply puts it in effect (nil when the
// mapping is the one in effect). An error says why it cannot be applied,
// so that Reload refuses the whole file: applied apart, a file whose
// subscriptions went live while its mapping was rejected was then said
// to "take effect at the next restart", where the start refused it
// (found by a review, 2026-12-07).
func (w *schemaWatch) prepare(ctx context.Context, next *config.Config) (apply func(), err error) {
	w.mu.Lock()
	same := reflect.DeepEqual(w.applied, next.Mapping)
	stalled := w.stall != nil
	w.mu.Unlock()
	if same {
		return nil, nil
	}
	still := ""
	if stalled {
		still = "; the stream stays stalled until a mapping that fits is loaded"
	}
	if err := next.Mapping.Check(ctx, w.e.source); err != nil {
		var problems []string
		for _, e := range unjoin(err) {
			problems = append(problems, e.Error())
		}
		return nil, fmt.Errorf("the mapping does not fit the source tables: %s%s", strings.Join(problems, "; "), still)
	}
	users, err := mapping.NewPoolUsers(ctx, w.e.source, &next.Mapping)
	if err != nil {
		return nil, fmt.Errorf("the mapping cannot be applied: %w%s", err, still)
	}
	sla, err := mapping.NewSLASource(ctx, w.e.source, &next.Mapping)
	if err != nil {
		return nil, fmt.Errorf("the mapping cannot be applied: %w%s", err, still)
	}
	checkedAt, err := walPosition(ctx, w.e.source)
	if err != nil {
		return nil, fmt.Errorf("the mapping cannot be applied: %w%s", err, still)
	}
	return func() {
		w.sla.Store(sla)
		w.e.pipeline.SetMapperAt(w.e.pipeline.Mapper().WithMapping(next.Mapping, users), checkedAt)
		w.mu.Lock()
		w.applied = next.Mapping
		w.mu.Unlock()
		if err := w.e.recordMapping(ctx, next.Mapping); err != nil {
			w.e.log.Warn("the reloaded mapping is not recorded in the journal: a restart before the stream is past the ALTER it was made for may stall", "err", err)
		}
		w.e.log.Info("reloaded mapping applied; it takes effect at the first change it fits", "stream_stalled", stalled)
		w.check(ctx)
	}, nil
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// prefixes are the id prefixes of the mapping in effect.
func (w *schemaWatch) prefixes() mapping.Prefixes {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.applied.Prefixes()
}

// OpenSLAs implements slaclock.Source with the SLA queries of the
// mapping in effect.
func (w *schemaWatch) OpenSLAs(ctx context.Context, after string, limit int) ([]mapping.SLARow, error) {
	return w.sla.Load().OpenSLAs(ctx, after, limit)
}

// Current implements slaclock.Source.
func (w *schemaWatch) Current(ctx context.Context, ids []string) (map[string]mapping.SLARow, error) {
	return w.sla.Load().Current(ctx, ids)
}

// SLAEvent implements slaclock.Events with the mapping in effect.
func (w *schemaWatch) SLAEvent(t mapping.Timer) mapping.Event {
	return w.e.pipeline.Mapper().SLAEvent(t)
}

// useRecordedMappings gives the pipeline, as fallbacks, the mappings the
// slot's changes were mapped with before this start (the journal records
// them), and records the configured one. Changes streamed again after the
// checkpoint may come from before an ALTER made while dzhook was stopped
// (or before it stopped): the mapping written for the altered schema does
// not fit them, and the one that did maps them (pipeline.SetFallbacks).
// People are looked up through the configured mapping's users table, as
// it is now. A recorded mapping this version cannot read is left out.
//
// checkedAt is the WAL position at which the start checked its mapping:
// the fallbacks map only changes committed before it.
func (e *Engine) useRecordedMappings(ctx context.Context, cfg *config.Config, mapper *mapping.Mapper, users mapping.UserLookup, checkedAt pglogrepl.LSN) error {
	recorded, err := e.journal.RecentMappings(ctx, cfg.Source.Slot)
	if err != nil {
		return err
	}
	var fallbacks []*mapping.Mapper
	for _, b := range recorded {
		// On the defaults: a field this version has and the recording
		// one had not takes its default, not the zero that means "not
		// mapped".
		mc := mapping.DefaultConfig()
		if json.Unmarshal(b, &mc) != nil || reflect.DeepEqual(mc, cfg.Mapping) {
			continue
		}
		fallbacks = append(fallbacks, mapper.WithMapping(mc, users))
	}
	e.pipeline.SetFallbacks(fallbacks, checkedAt)
	return e.recordMapping(ctx, cfg.Mapping)
}

// recordMapping records that the slot's changes are mapped with mc.
func (e *Engine) recordMapping(ctx context.Context, mc mapping.Config) error {
	b, err := json.Marshal(mc)
	if err != nil {
		return err
	}
	return e.journal.RecordMapping(ctx, e.cfg.Source.Slot, b)
}

// walPosition is the source's current WAL position, read after a mapping
// was checked against its catalog: every ALTER the check saw committed
// before it.
// primaryOnly returns a *cdc.StandbyError when the source server is in
// recovery: logical decoding, the WAL position and the setup need the
// primary.
func primaryOnly(ctx context.Context, q interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}, slot string) error {
	var standby bool
	if err := q.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&standby); err != nil {
		return fmt.Errorf("ask whether the source is a standby: %w", err)
	}
	if standby {
		return &cdc.StandbyError{Slot: slot}
	}
	return nil
}

func walPosition(ctx context.Context, q interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}) (pglogrepl.LSN, error) {
	var s string
	if err := q.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		return 0, fmt.Errorf("read the source's WAL position: %w", err)
	}
	return pglogrepl.ParseLSN(s)
}
