// Package slaclock turns time into sla.warning and sla.breach events.
//
// Changes of the SLA table arm durable timers in the journal; the stream
// handler does that (see TimerChange), through the journal writer, in
// order with the transaction, so an armed timer is never lost before the
// transaction is acknowledged. At the first start on a slot the clock
// arms the SLAs already open by a scan. Then, every CheckInterval, the
// dzhook process that streams (Config.Streaming) claims the due timers
// (leased, FOR UPDATE SKIP LOCKED: two processes never fire the same one,
// also while the slot changes hands), checks the SLA again, and fires
// the event through the dispatcher like any other. A timer the stream
// kept past a move or a completion of its SLA (due before it:
// TimerRow.SupersededAt) fires whatever the SLA says now; otherwise an
// SLA deleted, completed before the timer's moment, or a threshold no
// longer configured cancels it. An SLA moved or completed (without a
// completion time) in a change the stream has not read yet leaves the
// timer for a later look: that change cancels it, or keeps it to fire. The event's id comes
// from the SLA row, the kind and the target, so a timer fired again after
// a crash is the same event, and is not dispatched again if the journal
// has it.
package slaclock

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
)

const (
	claimLimit = 500
	lease      = 30 * time.Second
	scanPage   = 1000

	// The first start's scan of open SLAs, failed, is tried again after
	// scanRetryMin, doubling up to scanRetryMax.
	scanRetryMin = 5 * time.Second
	scanRetryMax = 5 * time.Minute
)

// Store is the part of the journal the clock uses; *journal.Store has it.
type Store interface {
	SLABootstrapped(ctx context.Context, slot string) (bool, error)
	TimerMark(ctx context.Context) (int64, error)
	ArmBootstrap(ctx context.Context, slot string, changes []journal.TimerChange, done bool, mark, start int64) error
	ArmThresholds(ctx context.Context, slot, systemID string, timers []journal.TimerRow) (int, error)
	ClaimTimers(ctx context.Context, limit int, lease time.Duration) ([]journal.TimerRow, error)
	TimerCancelled(ctx context.Context, t journal.TimerRow) error
	TimerDeferred(ctx context.Context, t journal.TimerRow, d time.Duration) error
	TimerDone(ctx context.Context, t journal.TimerRow, outcome string) error
	EventExists(ctx context.Context, id string) (bool, error)
}

// Source reads the SLA table of the source database; *mapping.SLASource
// has it.
type Source interface {
	OpenSLAs(ctx context.Context, after string, limit int) ([]mapping.SLARow, error)
	Current(ctx context.Context, ids []string) (map[string]mapping.SLARow, error)
}

// Events builds the event of a fired timer; *mapping.Mapper has it.
type Events interface {
	SLAEvent(t mapping.Timer) mapping.Event
}

// Dispatcher delivers a fired event, returning once it is journaled;
// *fanout.Dispatcher has it.
type Dispatcher interface {
	DispatchDurable(ctx context.Context, ev fanout.Event) error
}

// Config is the input of New.
type Config struct {
	// Store holds the timers and the fired events. Required.
	Store Store
	// Source is the SLA table, read to arm the SLAs open at the first
	// start and to check a due timer's SLA before it fires. Required.
	Source Source
	// Events builds the events. Required.
	Events Events
	// Dispatcher delivers them. Required.
	Dispatcher Dispatcher
	// Slot is the replication slot whose first start arms the open SLAs.
	Slot string
	// WarningPercent are the thresholds of sla.warning (sla.warning_percent):
	// a due timer of a threshold no longer listed is dropped, not fired.
	WarningPercent []float64
	// SLATypes translates stored SLA types (mapping.slas.values.sla_type);
	// nil keeps them as stored.
	SLATypes map[string]string
	// SystemID is the source cluster's (IDENTIFY_SYSTEM): the stream's
	// checkpoint row of it orders the arming of missing thresholds
	// against the stream's batches (journal.Store.ArmThresholds).
	SystemID string
	// CheckInterval is how often due timers are looked for
	// (sla.check_interval). Required, positive.
	CheckInterval time.Duration
	// ArmHorizon (journal.retention): the scan of open SLAs arms no timer
	// whose moment is older than this, as the stream does not
	// (pipeline.Config.ArmHorizon): it fired, or was missed, then, and the
	// journal has since pruned its row and its event. A scan asked for
	// again after a failover (journal.RewindCheckpoint) sent the breaches
	// of SLAs breached months ago a second time. Zero: every timer.
	ArmHorizon time.Duration
	// Streaming reports whether this process streams now (holds the
	// replication slot); nil: always. Due timers are fired only then: the
	// process that streams is the only one that makes new deliveries, so
	// an SLA event takes its place among its request's deliveries for an
	// ordered subscription. When it stops, the process that takes the
	// slot fires them (a standby takes over within the heartbeat).
	Streaming func() bool
	// Logger; defaults to slog.Default().
	Logger *slog.Logger
}

// Clock fires the SLA timers that are due.
type Clock struct {
	cfg Config
	log *slog.Logger
	// retryMin and retryMax bound the backoff of the first start's scan
	// (scanRetryMin, scanRetryMax; shorter in tests).
	retryMin, retryMax time.Duration
	// noCheckpointSayAfter is how long the arming of missing thresholds
	// waits for the stream's checkpoint before it says so at INFO
	// (noCheckpointSayAfter; shorter in tests).
	noCheckpointSayAfter time.Duration
	// waitSaid holds the timers whose long wait for the stream was logged
	// (Run's goroutine only), so it is said once each.
	waitSaid map[string]bool
	// scanStart is the timers' generation read before the first try of
	// the first start's scan (once scanStarted), kept across its retries:
	// a retry reading its own judged a due timer the stream had armed
	// since the first try as an earlier slot's, and deleted it.
	scanStart   int64
	scanStarted bool
	// scanned: this process made the first start's scan, which armed
	// every threshold (armThresholds has nothing to add).
	scanned bool
}

// waitTooLong is how long past its moment a timer waiting for the stream
// (verdict's wait) is said at WARN: the stream far behind, or the SLA's
// change one it did not understand (logged when read), after which the
// timer waits for a later change of the SLA.
const waitTooLong = 10 * time.Minute

// maxWaitSaid bounds the timers whose long wait is remembered as said.
const maxWaitSaid = 10000

// waitKey names a timer in Clock.waitSaid.
func waitKey(t journal.TimerRow) string { return t.SLAID + " " + t.Kind + " " + t.TargetAt.String() }

// New returns a clock; Run starts it.
func New(cfg Config) (*Clock, error) {
	if cfg.Store == nil || cfg.Source == nil || cfg.Events == nil || cfg.Dispatcher == nil {
		return nil, errors.New("slaclock: Store, Source, Events and Dispatcher are required")
	}
	if cfg.CheckInterval <= 0 {
		return nil, errors.New("slaclock: CheckInterval must be positive")
	}
	return &Clock{cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default()), retryMin: scanRetryMin, retryMax: scanRetryMax,
		noCheckpointSayAfter: noCheckpointSayAfter}, nil
}

// Run fires due timers every CheckInterval until ctx ends, and returns
// nil. Beside it, it arms the SLAs open before the first start (once per
// slot), or at a later start the thresholds the open SLAs lack: a read
// of every open SLA, which the firing does not wait for (due timers that
// fell due while dzhook was down went out only after it: found by a
// review).
// It never fails: a failed scan is tried again with a backoff (5 s
// doubling to 5 min) until it succeeds, due timers firing meanwhile, and
// a failed round at the next tick; a scan's failure is logged when it
// fails differently from the try before. A timer being fired when ctx
// ends keeps its lease: once the lease expires, this or another process
// claims it again, and the event id it fires under is the same, so it is
// not delivered twice.
func (c *Clock) Run(ctx context.Context) error {
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		c.scanUntilDone(ctx)
	}()
	defer func() { <-scanned }()
	t := time.NewTicker(c.cfg.CheckInterval)
	defer t.Stop()
	for {
		if ctx.Err() != nil {
			return nil
		}
		if c.cfg.Streaming == nil || c.cfg.Streaming() {
			if err := c.fireDue(ctx); err != nil && ctx.Err() == nil {
				c.log.Warn("SLA clock: firing due timers failed; retrying", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// scanUntilDone tries the scan until it is done or ctx ends, each try
// after the one before's backoff.
func (c *Clock) scanUntilDone(ctx context.Context) {
	r := scanRetry{wait: c.retryMin}
	for {
		c.scan(ctx, &r)
		if r.done || ctx.Err() != nil {
			return
		}
		wait := time.NewTimer(time.Until(r.at))
		select {
		case <-ctx.Done():
			wait.Stop()
			return
		case <-wait.C:
		}
	}
}

// scanRetry is the state of the first start's scan across its tries.
type scanRetry struct {
	done     bool
	at       time.Time     // the next try, once one failed
	wait     time.Duration // the backoff after the next failure
	tries    int           // failed so far
	lastKind string        // of the last failure
	// noCheckpointSince is when the arming of missing thresholds first
	// found no checkpoint (journal.ErrNoCheckpoint); noCheckpointSaid
	// once that was said at INFO.
	noCheckpointSince time.Time
	noCheckpointSaid  bool
}

// noCheckpointSayAfter is how long the arming of missing thresholds
// waits for the stream's checkpoint before it says so at INFO.
const noCheckpointSayAfter = 5 * time.Minute

// scan tries the first start's scan once (or, after it, the arming of
// the thresholds the open SLAs lack), and on failure schedules the next
// try.
func (c *Clock) scan(ctx context.Context, r *scanRetry) {
	err := c.bootstrap(ctx)
	if err == nil && !c.scanned {
		if err = c.armThresholds(ctx); err != nil {
			err = fmt.Errorf("arming the warning thresholds the open SLAs lack: %w", err)
		}
	}
	if err == nil {
		r.done = true
		if r.tries > 0 {
			c.log.Info("SLA clock: armed the open SLAs, after failed tries", "attempt", r.tries+1)
		}
		return
	}
	if ctx.Err() != nil {
		return
	}
	if errors.Is(err, journal.ErrNoCheckpoint) {
		// Not a failure: the stream has not journaled yet. Tried again
		// at the backoff's first step, not doubling: a threshold whose
		// moment passed in the wait is not armed any more (found by a
		// review). Said once at INFO when it lasts.
		now := time.Now()
		if r.noCheckpointSince.IsZero() {
			r.noCheckpointSince = now
		}
		c.log.Debug("SLA clock: the thresholds the open SLAs lack are armed once the stream has journaled a checkpoint", "delay", c.retryMin.String())
		if !r.noCheckpointSaid && now.Sub(r.noCheckpointSince) >= c.noCheckpointSayAfter {
			r.noCheckpointSaid = true
			c.log.Info("SLA clock: still no checkpoint of the stream in the journal; the warning thresholds the open SLAs lack are armed once there is one",
				"waited", now.Sub(r.noCheckpointSince).Round(time.Second).String())
		}
		r.at = now.Add(c.retryMin)
		return
	}
	r.tries++
	if kind := failureKind(err); kind != r.lastKind {
		r.lastKind = kind
		c.log.Error("SLA clock: arming the open SLAs failed; retrying with backoff (logged again when it fails differently)",
			"err", err, "attempt", r.tries, "delay", r.wait.String())
	}
	r.at = time.Now().Add(r.wait)
	r.wait = min(2*r.wait, c.retryMax)
}

// failureKind tells failures apart for the log: PostgreSQL's SQLSTATE,
// a network error, or the innermost error's type.
func failureKind(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return "sqlstate " + pe.Code
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return "network"
	}
	for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(err) {
		err = u
	}
	return fmt.Sprintf("%T", err)
}

// TimerChange is the journal's form of what a change of the SLA table
// means for its timers.
func TimerChange(up mapping.SLAUpdate) journal.TimerChange {
	tc := journal.TimerChange{SLAID: up.SLAID, Keep: up.Keep, Due: up.Due}
	for _, t := range up.Arm {
		tc.Arm = append(tc.Arm, timerRow(t))
	}
	return tc
}

// timerRow is the journal's form of a timer.
func timerRow(t mapping.Timer) journal.TimerRow {
	return journal.TimerRow{SLAID: t.SLAID, Kind: t.Kind, TargetAt: t.TargetAt, FireAt: t.FireAt,
		RequestID: t.RequestID, SLAType: t.SLAType, StartedAt: t.StartedAt}
}

// bootstrap arms every open SLA the first time dzhook runs on a slot.
func (c *Clock) bootstrap(ctx context.Context) error {
	done, err := c.cfg.Store.SLABootstrapped(ctx, c.cfg.Slot)
	if err != nil || done {
		return err
	}
	// Timers armed after start come from the stream running beside the
	// scan: a due one of another target than the SLA's now waits for the
	// stream's change (a move it has not read yet, after the breach).
	if !c.scanStarted {
		if c.scanStart, err = c.cfg.Store.TimerMark(ctx); err != nil {
			return err
		}
		c.scanStarted = true
	}
	start := c.scanStart
	after, armed := "", 0
	for {
		// Timers armed after this mark come from the stream's changes,
		// newer than the page read below: ArmBootstrap leaves their SLAs.
		mark, err := c.cfg.Store.TimerMark(ctx)
		if err != nil {
			return err
		}
		rows, err := c.cfg.Source.OpenSLAs(ctx, after, scanPage)
		if err != nil {
			return err
		}
		var changes []journal.TimerChange
		now := time.Now()
		for _, r := range rows {
			base := c.timerOf(r)
			// Known from now: one already past a threshold is warned of
			// now, once (as one the stream reads as recorded at risk; the
			// two arm it alike when they race at the first start).
			arm := mapping.SLATimers(base, c.cfg.WarningPercent, now, now)
			if c.cfg.ArmHorizon > 0 {
				arm = slices.DeleteFunc(arm, func(t mapping.Timer) bool { return t.Moment().Before(now.Add(-c.cfg.ArmHorizon)) })
			}
			changes = append(changes, TimerChange(mapping.SLAUpdate{SLAID: r.ID, Keep: r.TargetAt, Arm: arm}))
		}
		last := len(rows) < scanPage
		if err := c.cfg.Store.ArmBootstrap(ctx, c.cfg.Slot, changes, last, mark, start); err != nil {
			return err
		}
		armed += len(rows)
		if last {
			c.scanned = true
			c.log.Info("SLA clock: armed the SLAs open at the first start", "slas", armed)
			return nil
		}
		after = rows[len(rows)-1].ID
	}
}

// timerOf is the timer base of an open SLA as the table holds it.
func (c *Clock) timerOf(r mapping.SLARow) mapping.Timer {
	slaType := r.SLAType
	if t, ok := c.cfg.SLATypes[slaType]; ok {
		slaType = t
	}
	return mapping.Timer{SLAID: r.ID, RequestID: r.RequestID, SLAType: slaType, StartedAt: r.StartedAt, TargetAt: r.TargetAt}
}

// armThresholds arms, at a start after the slot's first, the warning
// thresholds of sla.warning_percent that the SLAs open now lack, where
// their moment is still ahead (ArmThresholds: never over a timer of the
// same SLA, kind and target, and only for the target the journal holds).
// A threshold added to the list was armed for an open SLA only at its
// next change: one left alone until its breach never got the new
// warning. A list recorded in the journal to find what was added (tried,
// then dropped) missed the SLAs a process with the old list armed during
// a rolling change, once a process with the new one had recorded it
// (found by a review): each start looks instead, one paged read of the
// open SLAs. A threshold an SLA has already passed is not warned of
// late: adding 50 would otherwise send at once a warning for every open
// SLA past half its time. One removed needs nothing here: its timers are
// dropped when due (verdict).
func (c *Clock) armThresholds(ctx context.Context) error {
	if len(c.cfg.WarningPercent) == 0 {
		return nil
	}
	after, slas, armed, began := "", 0, 0, time.Now()
	for {
		rows, err := c.cfg.Source.OpenSLAs(ctx, after, scanPage)
		if err != nil {
			return err
		}
		now := time.Now()
		var timers []journal.TimerRow
		for _, r := range rows {
			for _, t := range mapping.SLATimers(c.timerOf(r), c.cfg.WarningPercent, now, time.Time{}) {
				if t.Kind != "breach" && t.FireAt.After(now) {
					timers = append(timers, timerRow(t))
				}
			}
		}
		n, err := c.cfg.Store.ArmThresholds(ctx, c.cfg.Slot, c.cfg.SystemID, timers)
		if err != nil {
			return err
		}
		slas += len(rows)
		armed += n
		if len(rows) < scanPage {
			switch took := time.Since(began).Round(time.Millisecond); {
			case armed > 0:
				c.log.Info("SLA clock: armed the warning thresholds the open SLAs lacked (sla.warning_percent gained them since the SLAs last changed)",
					"thresholds", c.cfg.WarningPercent, "open_slas", slas, "timers", armed, "took", took.String())
			case took > time.Second:
				// Neutral: the slow read itself is worth knowing, not a
				// change (found by a review).
				c.log.Info("SLA clock: checked the open SLAs for warning thresholds they lack; none armed",
					"open_slas", slas, "took", took.String())
			}
			return nil
		}
		after = rows[len(rows)-1].ID
	}
}

// fireDue claims the due timers and fires or cancels each.
func (c *Clock) fireDue(ctx context.Context) error {
	for {
		due, err := c.cfg.Store.ClaimTimers(ctx, claimLimit, lease)
		if err != nil || len(due) == 0 {
			return err
		}
		ids := make([]string, 0, len(due))
		for _, t := range due {
			ids = append(ids, t.SLAID)
		}
		current, err := c.cfg.Source.Current(ctx, ids)
		if err != nil {
			return err
		}
		for _, t := range due {
			v := c.verdict(t, current)
			if v != wait && c.waitSaid[waitKey(t)] {
				delete(c.waitSaid, waitKey(t)) // settled
			}
			switch v {
			case cancel:
				if err := c.cfg.Store.TimerCancelled(ctx, t); err != nil {
					return err
				}
				continue
			case wait:
				if err := c.cfg.Store.TimerDeferred(ctx, t, c.cfg.CheckInterval/2); err != nil {
					return err
				}
				c.log.Debug("SLA timer waits for the stream: its SLA moved or completed in a change not read yet", "sla", t.SLAID, "kind", t.Kind)
				// Said once per timer; a set that grew past its bound
				// (a catch-up of many moved SLAs) says no more than it has.
				if key := waitKey(t); time.Since(t.FireAt) > waitTooLong && !c.waitSaid[key] && len(c.waitSaid) < maxWaitSaid {
					if c.waitSaid == nil {
						c.waitSaid = map[string]bool{}
					}
					c.waitSaid[key] = true
					c.log.Warn("SLA timer still waits for the stream to read its SLA's move or completion: the stream is far behind, or that change was not understood (logged when read); it fires or is cancelled at the SLA's next change",
						"sla", t.SLAID, "kind", t.Kind, "target", t.TargetAt.UTC().Format(time.RFC3339), "due_since", t.FireAt.UTC().Format(time.RFC3339))
				}
				continue
			}
			if late := time.Since(t.FireAt); t.Kind != "breach" && late > c.lateAfter() {
				// A warning found due long after its moment (dzhook was
				// down, or the stream far behind): "at risk, 2h 30m
				// remaining", hours late, says nothing true, whether the
				// target has passed since (just before the breach) or not
				// (the time remaining is less by as much). The breach fires
				// however late; arming skips a warning whose target passed
				// the same way. One merely a check or two late (95% of a
				// five-minute SLA is 15 s before its target) is sent.
				if err := c.cfg.Store.TimerDone(ctx, t, "late"); err != nil {
					return err
				}
				c.log.Info("SLA warning not sent: found due later than the clock's allowance", "sla", t.SLAID, "kind", t.Kind,
					"late", late.Round(time.Second).String(), "allowance", c.lateAfter().String())
				continue
			}
			ev := c.cfg.Events.SLAEvent(mapping.Timer{SLAID: t.SLAID, Kind: t.Kind, RequestID: t.RequestID, SLAType: t.SLAType,
				StartedAt: t.StartedAt, TargetAt: t.TargetAt, FireAt: t.FireAt})
			seen, err := c.cfg.Store.EventExists(ctx, ev.ID)
			if err != nil {
				return err
			}
			if !seen {
				if err := c.cfg.Dispatcher.DispatchDurable(ctx, fanout.Event{ID: ev.ID, Type: ev.Type, Timestamp: ev.Timestamp, Body: ev.Body, Key: ev.Key}); err != nil {
					return err
				}
				c.log.Debug("SLA event fired", "event", ev.Type, "event_id", ev.ID, "sla", t.SLAID, "late", time.Since(t.FireAt).Round(time.Millisecond).String())
			}
			if err := c.cfg.Store.TimerDone(ctx, t, "fired"); err != nil {
				return err
			}
		}
		if len(due) < claimLimit {
			return nil
		}
	}
}

// What the clock does with a due timer.
const (
	fire   = iota
	cancel // no longer due: deleted
	wait   // not known yet: looked at again a check later
)

// verdict decides a claimed timer's fate from the SLA as the table holds
// it now (current; absent: deleted).
func (c *Clock) verdict(t journal.TimerRow, current map[string]mapping.SLARow) int {
	if !c.configured(t.Kind) {
		// A warning threshold since removed from sla.warning_percent
		// fires no more.
		return cancel
	}
	if !t.SupersededAt.IsZero() {
		// The stream kept it past a move or a completion of its SLA: due
		// before that change, it was breached (or warned) first, and
		// fires with its own target, whatever the SLA says now. One not
		// due before it is cancelled (the stream deletes those).
		if t.FireAt.Before(t.SupersededAt) {
			return fire
		}
		return cancel
	}
	cur, ok := current[t.SLAID]
	switch {
	case !ok:
		// Absent is deleted only if the source role reads every row:
		// without SELECT, Current fails and the check is tried again, but
		// row-level security hides rows with no error, and every open
		// SLA read as deleted here. mapping.Check refuses such a role at
		// the start, setup and a reload that changes the mapping
		// (checkReads), which is what makes this true; a policy added
		// while dzhook runs is not seen until then (README says so).
		return cancel
	case !cur.TargetAt.Equal(t.TargetAt), cur.Completed && cur.CompletedAt == nil:
		// Moved, or completed at a moment the table does not say, by a
		// change the stream has not read yet (it would have kept the
		// timer, or deleted it): only that change's commit time tells
		// whether the timer was due first. The stream's next batch
		// settles it; cancelled here, a breach before an extension was
		// lost (found by a review).
		return wait
	case cur.Completed && !t.FireAt.Before(*cur.CompletedAt):
		// Completed before its moment. Completed after it, it was
		// breached (or warned) first, and fires: the stream or a restart
		// can reach the completion before the clock fired it.
		return cancel
	}
	return fire
}

// configured reports whether a timer's kind is one the configuration
// arms.
func (c *Clock) configured(kind string) bool {
	if kind == "breach" {
		return true
	}
	for _, p := range c.cfg.WarningPercent {
		if mapping.WarningKind(p) == kind {
			return true
		}
	}
	return false
}

// lateAfter is how late a warning may still be sent: two checks, and a
// minute for the hosts' clocks (the claim reads the journal's, this check
// the process's).
func (c *Clock) lateAfter() time.Duration {
	return 2*c.cfg.CheckInterval + time.Minute
}
