package fanout

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
)

// ErrUnknownSubscription: no subscription has that id.
var ErrUnknownSubscription = errors.New("no such subscription")

// AttemptReport is what an attempt made on an operator's request got.
type AttemptReport struct {
	DeliveryID   string
	EventID      string
	Attempt      int
	StatusCode   int
	Delivered    bool
	DurationMS   float64
	ResponseBody string
	ErrorClass   string
	Error        string
}

func report(t *task, res attemptResult) AttemptReport {
	return AttemptReport{
		DeliveryID: t.deliveryID, EventID: t.eventID, Attempt: t.attempts + 1, StatusCode: res.Status,
		Delivered: res.Status >= 200 && res.Status < 300, DurationMS: float64(res.Duration.Microseconds()) / 1000,
		ResponseBody: excerpt(res.Body, len(res.Body)), ErrorClass: res.ErrorClass, Error: res.Error,
	}
}

func (d *Dispatcher) lookup(id string) (*sub, error) {
	s, ok := d.reg.Load().byID[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownSubscription, id)
	}
	return s, nil
}

// RetryNow makes one immediate manual attempt of a delivery, whatever its
// state (no new schedule: a pending delivery keeps its own), and reports
// it. A delivery being attempted right now is not sent twice:
// journal.ErrBusy.
func (d *Dispatcher) RetryNow(ctx context.Context, deliveryID string) (AttemptReport, error) {
	life, leave, err := d.enter(ctx)
	if err != nil {
		return AttemptReport{}, err
	}
	defer leave()
	before, _, _, err := d.cfg.Journal.GetDelivery(ctx, deliveryID)
	if err != nil {
		return AttemptReport{}, err
	}
	s, err := d.lookup(before.Subscription)
	if err != nil {
		return AttemptReport{}, err
	}
	token := claimToken()
	c, err := d.cfg.Journal.ClaimForRetry(ctx, deliveryID, d.cfg.Instance, token, d.sched.takeoverAfter())
	if err != nil {
		var behind *journal.BehindError
		if !errors.Is(err, journal.ErrBusy) && !errors.Is(err, journal.ErrNotFound) && !errors.Is(err, journal.ErrEarlierSubscription) &&
			!errors.Is(err, journal.ErrHeld) && !errors.As(err, &behind) {
			// The operator may have gone away after the claim committed:
			// without the release the delivery would look busy until
			// this instance stops.
			if d.sched.lost.failed("", deliveryID, token, err) {
				d.nudge() // free it soon: the operator may try again
			}
		}
		return AttemptReport{}, err
	}
	t := &task{deliveryID: c.ID, eventID: c.EventID, eventType: c.EventType, body: c.Body, own: c.Own, attempts: c.Attempts, byHand: c.ByHand, trigger: journal.TriggerManual, test: c.Test,
		durable: make(chan error, 1)}
	if c.State == journal.Pending && c.NextAttemptAt != nil { // as claimed: before may be stale
		t.keepNext = *c.NextAttemptAt
	}
	// The attempt runs to its end even if the operator's request goes
	// away (its outcome is journaled), but not past the dispatcher's life.
	res, _ := d.deliver.attempt(life, s, t, nil)
	if err := d.records.Wait(ctx, t.durable); err != nil {
		return report(t, res), err
	}
	return report(t, res), nil
}

// RetryFailed sends every failed delivery of a subscription created in
// [since, until) again (a nil bound is none), one manual attempt each,
// through its queue. It
// returns how many it scheduled.
func (d *Dispatcher) RetryFailed(ctx context.Context, subscription string, since, until *time.Time) (int, error) {
	if _, err := d.lookup(subscription); err != nil {
		return 0, err
	}
	n, err := d.cfg.Journal.RetryFailed(ctx, subscription, since, until, d.cfg.Instance, d.sched.takeoverAfter())
	if n > 0 {
		d.nudge()
	}
	return n, err
}

// SendTest posts a sample event to a subscription, signed with its real
// secret, and reports what the receiver answered. The delivery is recorded
// with trigger test and left out of the subscription's health.
func (d *Dispatcher) SendTest(ctx context.Context, subscription string, ev Event) (AttemptReport, error) {
	life, leave, err := d.enter(ctx)
	if err != nil {
		return AttemptReport{}, err
	}
	defer leave()
	s, err := d.lookup(subscription)
	if err != nil {
		return AttemptReport{}, err
	}
	now := d.now().UTC()
	id := ids.DeliveryID(ev.ID, s.cfg.ID)
	err = d.records.Put(ctx, journal.Record{
		Event: &journal.EventRow{ID: ev.ID, Type: ev.Type, Body: ev.Body, OccurredAt: ev.Timestamp},
		Deliveries: []journal.DeliveryRow{{ID: id, EventID: ev.ID, SubscriptionID: s.cfg.ID, EventType: ev.Type,
			State: journal.Pending, Owner: d.cfg.Instance, NextAttemptAt: now.Add(time.Hour), Test: true, CreatedAt: now}},
	})
	if err != nil {
		return AttemptReport{}, err
	}
	t := &task{deliveryID: id, eventID: ev.ID, eventType: ev.Type, body: ev.Body, trigger: journal.TriggerTest, test: true, durable: make(chan error, 1)}
	// The attempt runs to its end even if the operator's request goes
	// away (its outcome is journaled), but not past the dispatcher's life.
	res, _ := d.deliver.attempt(life, s, t, nil)
	if err := d.records.Wait(ctx, t.durable); err != nil {
		return report(t, res), err
	}
	return report(t, res), nil
}

// enter registers an operator's operation (a manual retry, a test send):
// the dispatcher's shutdown waits for it, a while, before it stops. It
// fails once the dispatcher is stopping. life bounds the operation's
// attempt: the attempt runs to its end (within the delivery timeout) even
// when the operator's request goes away, so its outcome is journaled.
// leave ends the registration.
func (d *Dispatcher) enter(ctx context.Context) (life context.Context, leave func(), err error) {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if d.stopping.Load() {
		return nil, nil, errors.New("fanout: stopped")
	}
	d.ops.Add(1)
	return context.WithoutCancel(ctx), d.ops.Done, nil
}

// Pause stops a subscription's deliveries (persisted: it stays paused
// across restarts). With queue_while_inactive its new deliveries wait as
// held; otherwise they are recorded as skipped.
func (d *Dispatcher) Pause(ctx context.Context, subscription string) error {
	if _, err := d.lookup(subscription); err != nil {
		return err
	}
	unlock, err := d.lockFlags(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if err := d.cfg.Journal.SetPaused(ctx, subscription, true); err != nil {
		return err
	}
	d.onCurrent(subscription, func(s *sub) {
		s.paused = true
		s.flagsGen++
	})
	d.log.Info("subscription paused", "subscription", subscription)
	return nil
}

// Resume restarts a paused or disabled subscription; its held deliveries
// go out, oldest first. It returns how many were held.
func (d *Dispatcher) Resume(ctx context.Context, subscription string) (int, error) {
	if _, err := d.lookup(subscription); err != nil {
		return 0, err
	}
	resumed, err := d.resumeFlags(ctx, subscription)
	if resumed && err != nil {
		// The journal says active: its held deliveries are released, here
		// if this call gets that far, else by the release loop, which
		// retries (an operator who finds it resumed does not resume it
		// again, and they stayed held until a restart).
		d.held.add(subscription)
	}
	if err != nil {
		return 0, err
	}
	// A delivery recorded as held just before the resume may still be on
	// its way to the journal; it must be there before the held are
	// released, or it would stay held: wait for the dispatches that may
	// have seen the subscription paused, then for the journal writer.
	n, err := func() (int, error) {
		if err := d.dispatches.wait(ctx); err != nil {
			return 0, err
		}
		if err := d.records.Barrier(ctx); err != nil {
			return 0, err
		}
		return d.cfg.Journal.ReleaseHeld(ctx, subscription)
	}()
	if err != nil {
		d.held.add(subscription)
		return 0, err
	}
	d.log.Info("subscription resumed", "subscription", subscription, "held_deliveries", n)
	d.nudge()
	return n, nil
}

// resumeFlags makes the subscription unpaused and not disabled, in the
// journal, then in memory; resumed says whether the journal was changed.
func (d *Dispatcher) resumeFlags(ctx context.Context, subscription string) (resumed bool, err error) {
	unlock, err := d.lockFlags(ctx)
	if err != nil {
		return false, err
	}
	defer unlock()
	if err := d.cfg.Journal.SetPaused(ctx, subscription, false); err != nil {
		return false, err
	}
	wasDisabled := false
	d.onCurrent(subscription, func(s *sub) {
		wasDisabled = s.state == journal.Disabled
		s.paused = false
		s.flagsGen++
		if wasDisabled {
			s.state = journal.Healthy
			s.refusedInARow = 0
		}
	})
	if !wasDisabled {
		// Another process may have disabled it (a 410) and this one not
		// adopted that yet: the resume is the journal's.
		if wasDisabled, err = d.journalDisabled(ctx, subscription); err != nil {
			return true, err
		}
	}
	if wasDisabled {
		if err := d.cfg.Journal.SetState(ctx, subscription, journal.Healthy); err != nil {
			return true, err
		}
	}
	return true, nil
}

// lockFlags waits for the pause or resume in progress (flagsOp), or
// for ctx.
func (d *Dispatcher) lockFlags(ctx context.Context) (unlock func(), err error) {
	select {
	case d.flagsOp <- struct{}{}:
		return func() { <-d.flagsOp }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// onCurrent runs f, under its lock, on the subscription as the registry
// holds it now: a Reload that replaced it while a pause's journal write
// ran copied the flags before the pause set them, and a pause set on the
// retired one was lost (the journal paused, this process sending). Under
// reloadMu, which a Reload holds from its copy to its swap (memory work
// only). Nothing when the subscription is gone.
func (d *Dispatcher) onCurrent(subscription string, f func(*sub)) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	s := d.reg.Load().byID[subscription]
	if s == nil {
		return
	}
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
}

// journalDisabled reports whether the journal has subscription disabled.
func (d *Dispatcher) journalDisabled(ctx context.Context, subscription string) (bool, error) {
	states, err := d.cfg.Journal.SubscriptionStates(ctx)
	if err != nil {
		return false, err
	}
	for _, st := range states {
		if st.ID == subscription {
			return st.State == journal.Disabled, nil
		}
	}
	return false, nil
}

// SubscriptionStatus is a subscription as the admin API shows it.
type SubscriptionStatus struct {
	ID                 string
	URL                string
	Events             []string
	Active             bool
	Paused             bool
	QueueWhileInactive bool
	Filter             string
	State              journal.Health
	// Held says why its deliveries wait: HeldPaused, HeldInactive,
	// HeldDisabled, or "" when they are sent now.
	Held          string
	LastSuccessAt *time.Time
	LastFailureAt *time.Time
	LastStatus    int
	LastError     string
	QueueDepth    int
	Stats         Stats
	// Ordering is the subscription's; Order what this process holds of
	// its keys (zero without ordering).
	Ordering Ordering
	Order    OrderStatus
	// Source and Description as configured (Subscription).
	Source, Description string
	// Transform, Format, Method and RateLimit as configured; Pace the
	// rate-limited pace now (attempts per second; 0 without a limit) and
	// PausedUntil a 429's Retry-After (zero: none).
	Transform, Format, Method string
	RateLimit                 Rate
	Pace                      float64
	PausedUntil               time.Time
	// Traceparent as configured.
	Traceparent bool
	// StandardWebhooks as configured. PreviousUntil and SwitchAt are a
	// rotation's overlap while it runs (zero otherwise): when the
	// previous secret stops being valid, when X-DZDESK-Signature switches
	// to the new one. Never the secrets.
	StandardWebhooks        bool
	PreviousUntil, SwitchAt time.Time
}

// Subscriptions returns every subscription's status.
func (d *Dispatcher) Subscriptions() []SubscriptionStatus {
	subs := d.reg.Load().subs
	now := d.now()
	out := make([]SubscriptionStatus, 0, len(subs))
	for _, s := range subs {
		s.mu.Lock()
		st := SubscriptionStatus{
			ID: s.cfg.ID, URL: s.shownURL(), Events: s.cfg.Events, Active: s.cfg.Active, Paused: s.paused,
			QueueWhileInactive: s.cfg.QueueWhileInactive, Filter: s.cfg.Filter, State: s.state,
			LastStatus: s.lastStatus, LastError: s.lastError, QueueDepth: s.queued(),
			Source: s.cfg.Source, Description: s.cfg.Description,
			Transform: s.cfg.Transform, Format: s.cfg.Format, Method: s.method, RateLimit: s.cfg.RateLimit,
			Traceparent: s.cfg.Traceparent, Held: s.heldBy(), StandardWebhooks: s.cfg.StandardWebhooks,
		}
		if len(s.cfg.PreviousSecret) > 0 && now.Before(s.cfg.PreviousUntil) {
			st.PreviousUntil, st.SwitchAt = s.cfg.PreviousUntil, s.cfg.SwitchAt
		}
		if s.pace != nil {
			st.Pace, st.PausedUntil = s.pace.pace(now)
		}
		if !s.lastSuccessAt.IsZero() {
			t := s.lastSuccessAt
			st.LastSuccessAt = &t
		}
		if !s.lastFailureAt.IsZero() {
			t := s.lastFailureAt
			st.LastFailureAt = &t
		}
		s.mu.Unlock()
		st.Stats = s.stats.snapshot(now)
		st.Ordering = s.cfg.Ordering
		if st.Ordering == "" {
			st.Ordering = OrderNone
		}
		if s.ord != nil {
			st.Order = s.ord.status()
		}
		out = append(out, st)
	}
	return out
}

// SubscriptionIDs lists the configured subscriptions.
func (d *Dispatcher) SubscriptionIDs() []string {
	subs := d.reg.Load().subs
	ids := make([]string, len(subs))
	for i, s := range subs {
		ids[i] = s.cfg.ID
	}
	return ids
}

// HasSubscription reports whether a subscription is configured.
func (d *Dispatcher) HasSubscription(id string) bool {
	_, err := d.lookup(id)
	return err == nil
}
