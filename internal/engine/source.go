package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

// GapError says the replication slot starts past the journal's
// checkpoint: transactions committed in between were never read.
type GapError struct {
	Slot     string
	From, To pglogrepl.LSN
}

func (e *GapError) Error() string {
	return fmt.Sprintf("gap in the change stream: replication slot %q starts at %s, past the journal's position %s; "+
		"transactions committed between them were never read and their events are lost "+
		"(the slot was dropped and created again, or advanced by hand). dzhook refuses to stream until an operator accepts the gap: "+
		"run `dzhook setup --accept-gap` (it is recorded in the journal's gaps table); "+
		"to recover those events, recreate them from the source tables for that period first", e.Slot, e.To, e.From)
}

// PublicReason implements cdc.PublicReason: LSNs and the slot's name only.
func (e *GapError) PublicReason() string { return e.Error() }

// detectGap compares the slot's start with the journal's checkpoint cp:
// every position the stream reports to PostgreSQL as flushed is first
// made durable in the checkpoint (its End), so a slot past it started
// somewhere dzhook never read from. A checkpoint of another cluster is no
// reference (pipeline.UseCheckpoint drops it), nor a fresh journal.
func detectGap(cp journal.Checkpoint, systemID, slot string, start pglogrepl.LSN) *GapError {
	if cp.LSN == 0 || (cp.SystemID != "" && cp.SystemID != systemID) || start <= cp.End {
		return nil
	}
	return &GapError{Slot: slot, From: cp.End, To: start}
}

// gapNotification is the admin's notification of g; nil when notify.url
// is not set.
func gapNotification(g *GapError, notify bool) *journal.NotificationRow {
	if !notify {
		return nil
	}
	row, err := fanout.SystemNotification(fanout.NotifyStreamGap,
		fmt.Sprintf("the change stream has a gap: replication slot *%s* starts at %s, past the journal's position %s. Events of transactions committed in between are lost; streaming is stopped until an operator runs `dzhook setup --accept-gap`.", g.Slot, g.To, g.From),
		map[string]string{"slot": g.Slot, "from_lsn": g.From.String(), "to_lsn": g.To.String()})
	if err != nil {
		return nil
	}
	return &row
}

// sourceCheck is what Setup learned of the journal's source registration.
type sourceCheck struct {
	database   string
	registered bool   // a slot was registered for this source before
	replacing  string // the registered slot, when it is another (gone) one
}

// checkSource makes sure one slot feeds the journal from one source
// database: a second slot would journal and deliver every event again,
// under the same ids. A registered slot that no longer exists may be
// replaced (the gap check then applies to its checkpoint).
func checkSource(ctx context.Context, conn *pgx.Conn, store *journal.Store, systemID, slot string) (sourceCheck, error) {
	var sc sourceCheck
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&sc.database); err != nil {
		return sc, fmt.Errorf("read the source database's name: %w", err)
	}
	src, ok, err := store.Source(ctx, systemID, sc.database)
	if err != nil {
		return sc, err
	}
	sc.registered = ok
	if !ok || src.Slot == slot {
		return sc, nil
	}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, src.Slot).Scan(&exists); err != nil {
		return sc, fmt.Errorf("look up slot %q: %w", src.Slot, err)
	}
	if exists {
		return sc, secondSlotError(src, slot, store)
	}
	sc.replacing = src.Slot
	return sc, nil
}

func secondSlotError(src journal.Source, slot string, store *journal.Store) error {
	return fmt.Errorf("journal schema %s is already fed from database %q (cluster %s) by replication slot %q, registered %s; "+
		"a second slot (source.slot %q) on the same source would journal and deliver every event a second time. "+
		"Run every dzhook of this source with source.slot: %s (they share the slot: one streams, the others stand by), "+
		"or drop slot %q first if it is no longer used (SELECT pg_drop_replication_slot('%s')); "+
		"a separate journal.schema is needed only for a separate, independent copy of the events",
		store.Schema(), src.Database, src.SystemID, src.Slot, src.RegisteredAt.UTC().Format("2006-01-02 15:04:05Z"),
		slot, src.Slot, src.Slot, src.Slot)
}

// settleSource checks the slot's start against the journal (a gap), and
// registers the slot as the journal's source once that holds. A gap is
// recorded (and the admin notified, once); it is refused unless accept,
// then recorded as accepted by whoever runs setup. sys is the source's
// IDENTIFY_SYSTEM.
func settleSource(ctx context.Context, conn *pgx.Conn, store *journal.Store, sc sourceCheck, sys pglogrepl.IdentifySystemResult, slot string, accept, notify bool) ([]string, error) {
	systemID := sys.SystemID
	var actions []string
	var confirmed *string
	err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&confirmed)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("read slot %q's position: %w", slot, err)
	}
	var start pglogrepl.LSN
	if confirmed != nil {
		start, _ = pglogrepl.ParseLSN(*confirmed)
	}
	// The checkpoint after the slot's position: a process streaming now
	// makes its positions durable before PostgreSQL hears of them.
	cpSlot := slot
	if sc.replacing != "" {
		cpSlot = sc.replacing
	}
	cp, err := store.Checkpoint(ctx, cpSlot)
	if err != nil {
		return nil, err
	}
	gap := detectGap(cp, systemID, slot, start)
	switch {
	case start == 0 || gap == nil:
		if accept {
			actions = append(actions, "no gap to accept: the slot starts where the journal stands")
		}
		if cp.LSN == 0 && start != 0 && sc.replacing == "" {
			// A slot no checkpoint speaks for yet (made by this setup, or
			// by one before the first transaction was journaled): its
			// position becomes the journal's, so that a slot dropped and
			// created again before anything is journaled is a gap, not a
			// silent loss of what was committed in between.
			if err := store.AdoptSlotPosition(ctx, slot, sys.SystemID, sys.Timeline, start); err != nil {
				return nil, err
			}
		}
	case !sc.registered:
		// The first start since journal version 7: positions reported
		// while idle were not made durable before, so the slot may be
		// past the checkpoint without a gap. Trusted, once.
		if err := store.AdoptSlotPosition(ctx, slot, sys.SystemID, sys.Timeline, start); err != nil {
			return nil, err
		}
		actions = append(actions, fmt.Sprintf("registered slot %s as the journal's source at its position %s", slot, start))
	case accept:
		by := acceptedBy()
		if err := store.AcceptGap(ctx, journal.Gap{Slot: slot, SystemID: sys.SystemID, From: gap.From, To: gap.To}, sys.Timeline, by); err != nil {
			return nil, err
		}
		actions = append(actions, fmt.Sprintf("accepted the gap in the change stream from %s to %s on slot %s (by %s): events of transactions committed in between are not delivered", gap.From, gap.To, slot, by))
	default:
		if _, err := store.RecordGap(ctx, journal.Gap{Slot: slot, SystemID: systemID, From: gap.From, To: gap.To}, gapNotification(gap, notify)); err != nil {
			return nil, err
		}
		return nil, gap
	}
	ok, err := store.RegisterSource(ctx, journal.Source{SystemID: systemID, Database: sc.database, Slot: slot}, sc.replacing)
	if err != nil {
		return nil, err
	}
	if !ok {
		src, _, _ := store.Source(ctx, systemID, sc.database)
		return nil, secondSlotError(src, slot, store)
	}
	if sc.replacing != "" {
		actions = append(actions, fmt.Sprintf("slot %s replaces slot %s (which no longer exists) as the journal's source", slot, sc.replacing))
	}
	return actions, nil
}

// acceptedBy names who accepted a gap: the OS user and host running setup.
func acceptedBy() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host + " (dzhook setup --accept-gap)"
}

// journalDownError ends a replication session when the journal cannot be
// written.
type journalDownError struct{ err error }

func (e *journalDownError) Error() string {
	return "journal unreachable, replication connection ended (nothing can be acknowledged until the journal answers): " + e.err.Error()
}

func (e *journalDownError) Unwrap() error { return e.err }

// PublicReason implements cdc.PublicReason.
func (e *journalDownError) PublicReason() string {
	return "journal unreachable: the replication connection was ended so that PostgreSQL is not kept waiting (a shutdown waits for it); reconnecting"
}

// checkStart runs before each replication session streams: a slot that
// starts past the journal's checkpoint is a gap, refused (the stream
// retries, /readyz says why) until an operator accepts it.
func (e *Engine) checkStart(ctx context.Context, start pglogrepl.LSN) error {
	slot := e.cfg.Source.Slot
	cp, err := e.journal.Checkpoint(ctx, slot)
	if err != nil {
		// Said as the journal's: returned bare, /readyz blamed the source
		// ("PostgreSQL unreachable") for the whole journal outage.
		return &journalDownError{err}
	}
	gap := detectGap(cp, e.systemID, slot, start)
	if gap == nil {
		return nil
	}
	isNew, err := e.journal.RecordGap(ctx, journal.Gap{Slot: slot, SystemID: e.systemID, From: gap.From, To: gap.To}, gapNotification(gap, e.cfg.Notify.URL.Reveal() != ""))
	if err != nil {
		return &journalDownError{err}
	}
	if isNew {
		e.dispatcher.Notifier().Wake()
	}
	if last := e.lastGap.Swap(gap); last == nil || *last != *gap {
		e.log.Error("refusing to stream: the replication slot starts past the journal's position", "slot", slot,
			"journal_lsn", gap.From.String(), "slot_lsn", gap.To.String(), "err", gap)
	}
	return gap
}

// persistIdle makes a position the stream was idle at durable, as the
// checkpoint, before the stream reports it to PostgreSQL: the journal's
// checkpoint then bounds every position the slot was ever told, which is
// what tells a gap from an idle stretch.
func (e *Engine) persistIdle(lsn pglogrepl.LSN) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), journal.DefaultDrainTimeout)
		defer cancel()
		if err := e.writer.Idle(ctx, lsn); err != nil && !errors.Is(err, journal.ErrWriterClosed) {
			e.log.Debug("idle position not journaled", "lsn", lsn.String(), "err", err)
		}
	}()
}
