package engine

import (
	"context"
	"time"

	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
)

// The SLA clock turns time into sla.warning and sla.breach. Changes of the
// SLA table arm durable timers in the journal (through the writer, in
// order with the transaction, so an armed timer is never lost before the
// transaction is acknowledged); at the first start, the SLAs already open
// are armed by a scan. Every CheckInterval, any instance claims the due
// timers (leased, FOR UPDATE SKIP LOCKED: two instances never fire the
// same one), checks the SLA again (completed, deleted or moved since: the
// timer is cancelled), and fires the event through the dispatcher like
// any other. The event's id comes from the SLA row, the kind and the
// target, so a timer fired again after a crash is the same event, and is
// not dispatched again if the journal has it.

const (
	slaClaimLimit = 500
	slaLease      = 30 * time.Second
	slaScanPage   = 1000
)

// armSLA handles a change of the SLA table.
func (e *Engine) armSLA(ctx context.Context, c *cdc.Change) error {
	up, err := e.mapper.SLAChange(c, e.cfg.SLA.WarningPercent, time.Now())
	if err != nil {
		e.log.Warn("SLA change not understood; its timers are left as they were", "err", err, "lsn", c.CommitLSN.String())
		return nil
	}
	if up.SLAID == "" {
		return nil
	}
	return e.writer.ArmTimers(ctx, timerChange(up))
}

func timerChange(up mapping.SLAUpdate) journal.TimerChange {
	tc := journal.TimerChange{SLAID: up.SLAID, Keep: up.Keep}
	for _, t := range up.Arm {
		tc.Arm = append(tc.Arm, journal.TimerRow{SLAID: t.SLAID, Kind: t.Kind, TargetAt: t.TargetAt, FireAt: t.FireAt,
			RequestID: t.RequestID, SLAType: t.SLAType, StartedAt: t.StartedAt})
	}
	return tc
}

// runSLAClock arms the pre-existing SLAs once, then fires due timers
// until ctx ends.
func (e *Engine) runSLAClock(ctx context.Context) error {
	src := e.slaSource
	if err := e.bootstrapSLAs(ctx, src); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		e.log.Error("arming the SLAs open before the first start failed; retrying at the next start", "err", err)
	}
	t := time.NewTicker(e.cfg.SLA.CheckInterval)
	defer t.Stop()
	for {
		if err := e.fireDue(ctx, src); err != nil && ctx.Err() == nil {
			e.log.Warn("SLA clock: firing due timers failed; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// bootstrapSLAs arms every open SLA the first time dzhook runs on a slot.
func (e *Engine) bootstrapSLAs(ctx context.Context, src *mapping.SLASource) error {
	done, err := e.journal.SLABootstrapped(ctx, e.cfg.Source.Slot)
	if err != nil || done {
		return err
	}
	after, armed := "", 0
	for {
		rows, err := src.OpenSLAs(ctx, after, slaScanPage)
		if err != nil {
			return err
		}
		var changes []journal.TimerChange
		now := time.Now()
		for _, r := range rows {
			slaType := r.SLAType
			if t, ok := e.cfg.Mapping.SLAs.Values.SLAType[slaType]; ok {
				slaType = t
			}
			base := mapping.Timer{SLAID: r.ID, RequestID: r.RequestID, SLAType: slaType, StartedAt: r.StartedAt, TargetAt: r.TargetAt}
			changes = append(changes, timerChange(mapping.SLAUpdate{SLAID: r.ID, Keep: r.TargetAt, Arm: mapping.SLATimers(base, e.cfg.SLA.WarningPercent, now)}))
		}
		last := len(rows) < slaScanPage
		if err := e.journal.ArmBootstrap(ctx, e.cfg.Source.Slot, changes, last); err != nil {
			return err
		}
		armed += len(rows)
		if last {
			e.log.Info("SLA clock: armed the SLAs open at the first start", "slas", armed)
			return nil
		}
		after = rows[len(rows)-1].ID
	}
}

// fireDue claims the due timers and fires or cancels each.
func (e *Engine) fireDue(ctx context.Context, src *mapping.SLASource) error {
	for {
		due, err := e.journal.ClaimTimers(ctx, slaClaimLimit, slaLease)
		if err != nil || len(due) == 0 {
			return err
		}
		ids := make([]string, 0, len(due))
		for _, t := range due {
			ids = append(ids, t.SLAID)
		}
		current, err := src.Current(ctx, ids)
		if err != nil {
			return err
		}
		for _, t := range due {
			cur, ok := current[t.SLAID]
			if !ok || cur.Completed || !cur.TargetAt.Equal(t.TargetAt) || !e.slaKindConfigured(t.Kind) {
				// Completed, deleted or moved before its moment: the
				// stream has or will have re-armed what is still due. A
				// warning threshold since removed from sla.warning_percent
				// fires no more.
				if err := e.journal.TimerCancelled(ctx, t); err != nil {
					return err
				}
				continue
			}
			ev := e.mapper.SLAEvent(mapping.Timer{SLAID: t.SLAID, Kind: t.Kind, RequestID: t.RequestID, SLAType: t.SLAType,
				StartedAt: t.StartedAt, TargetAt: t.TargetAt, FireAt: t.FireAt})
			seen, err := e.journal.EventExists(ctx, ev.ID)
			if err != nil {
				return err
			}
			if !seen {
				if err := e.dispatcher.DispatchDurable(ctx, fanout.Event{ID: ev.ID, Type: ev.Type, Timestamp: ev.Timestamp, Body: ev.Body}); err != nil {
					return err
				}
				e.log.Debug("SLA event fired", "event", ev.Type, "event_id", ev.ID, "sla", t.SLAID, "late", time.Since(t.FireAt).Round(time.Millisecond).String())
			}
			if err := e.journal.TimerDone(ctx, t, "fired"); err != nil {
				return err
			}
		}
		if len(due) < slaClaimLimit {
			return nil
		}
	}
}

// slaKindConfigured reports whether a timer's kind is one the current
// configuration arms.
func (e *Engine) slaKindConfigured(kind string) bool {
	if kind == "breach" {
		return true
	}
	for _, p := range e.cfg.SLA.WarningPercent {
		if mapping.WarningKind(p) == kind {
			return true
		}
	}
	return false
}
