package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/rawsock"
	"github.com/dzdesk/dzhook/internal/transform"
	"github.com/dzdesk/dzhook/signer"
)

// deliverer makes the attempts of the subscriptions: each subscription's
// workers take its queue (and, for an ordered subscription, the next
// delivery of a key right after the previous one), POST, decide what
// follows (Next), keep the subscription's health, and put every outcome to
// the journal writer.
type deliverer struct {
	cfg      *Config
	records  Recorder
	obs      Observer
	notifier *Notifier
	log      *slog.Logger
	now      func() time.Time
	due      func(time.Time) time.Time // a time in the journal's clock (scheduler.due)
	// nudge wakes the scheduler; giveBack returns deliveries to the
	// journal in routing order.
	nudge    func()
	giveBack func(ctx context.Context, take func() []string) error
	tracer   trace.Tracer // nil: tracing off
	// fence holds the attempts from memory while this instance's
	// heartbeat is stale (fence.go).
	fence *fence
}

// start runs a subscription's workers until it is retired; life bounds
// their attempts.
func (d *deliverer) start(life context.Context, s *sub) {
	s.mu.Lock()
	if !s.retired {
		s.bell = rawsock.NewBell() // nil: the workers wait on the lanes
	}
	s.mu.Unlock()
	s.workers.Store(int32(d.cfg.Concurrency))
	for i := range d.cfg.Concurrency {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.workerDone()
			d.work(life, s, &s.busy[i])
		}()
	}
}

// work runs one worker of a subscription until it is retired; busy says
// since when its attempt in flight runs.
//
// Once the subscription is retired (shutdown, or a reload that removed or
// replaced it) the worker starts no attempt: it finishes the one in
// flight and ends. A select with both the stop and the queue ready picks
// one at random, so stop is checked on its own first; a task taken just
// as the subscription was retired goes back to the journal unattempted
// (giveUp), as what is left in a retired queue does.
func (d *deliverer) work(life context.Context, s *sub, busy *atomic.Int64) {
	var sg signer.Signer // this worker's keyed HMACs, kept between its attempts
	for {
		if s.stopped() {
			return
		}
		// Noted before t is taken: a recheck from then on may not have
		// seen t (in this worker's hands), and t is then checked at the
		// fence before its attempt.
		came := d.fence.generation()
		t := s.next()
		if t == nil {
			return
		}
		s.release(1)
		select {
		case s.room <- struct{}{}:
		default:
		}
		if s.backlog.Load() && int64(s.queued()) < s.size/2 {
			d.nudge() // due work waits in the journal and there is room
		}
		// An ordered key's next delivery follows on this worker, right
		// after the previous one finished.
		for t != nil {
			if s.stopped() {
				d.giveUp(life, s, t)
				break
			}
			// A rate-limited subscription's attempt waits for its turn
			// (one that will not be sent takes none). Retries of failed
			// deliveries in bulk (retry-failed) wait too: only an
			// operator's single attempt (RetryNow, SendTest, which do not
			// come through here) goes at once.
			if s.pace != nil && s.shapeBody(t) == nil && !s.pace.wait(life, s.stop) {
				d.giveUp(life, s, t)
				break
			}
			// Paused (or disabled by a 410) since the task was queued, or
			// while it waited for its turn: it goes back to the journal,
			// where the claim leaves it until the resume (a paused
			// subscription's queue went on being sent: at 1/m, for half
			// an hour).
			if !s.accepting() {
				d.giveUp(life, s, t)
				break
			}
			started := time.Now()
			if !d.fence.open(started) || d.fence.generation() != came {
				// This instance's heartbeat is stale: others may be taking
				// over what it holds. Wait until it is not, and until the
				// journal said whether t is still this instance's (or t
				// was in this worker's hands through a recheck, which did
				// not ask about it).
				switch d.fence.wait(life, s.stop, t, came) {
				case dropIt:
					t = nil
					continue
				case giveItUp, stopped:
					d.giveUp(life, s, t)
					t = nil
					continue
				}
				started = time.Now()
			}
			busy.Store(started.UnixNano())
			res, dec := d.attempt(life, s, t, &sg)
			if s.pace != nil && res.Status == http.StatusTooManyRequests {
				s.pace.throttled(time.Now(), started, res.RetryAfter)
			}
			busy.Store(0)
			came = d.fence.generation() // before the key's next is taken
			if t = d.afterOrdered(life, s, t, dec); t != nil && s.yield(t) {
				break // the key's next waits its turn in the queue
			}
		}
	}
}

// giveUp gives back to the journal a task of a retired (or paused)
// subscription that a worker took and will not attempt (and, for an ordered delivery, the
// deliveries waiting behind its key): it stays pending, claimable by
// whoever runs the subscription now, this process after a reload or
// another one. What cannot be given back stays owned by this instance
// until its shutdown releases everything it owns (Store.Unregister).
func (d *deliverer) giveUp(life context.Context, s *sub, t *task) {
	err := d.giveBack(life, func() []string {
		if s.ord != nil {
			return s.ord.drained([]*task{t})
		}
		return []string{t.deliveryID}
	})
	if err != nil {
		d.log.Warn("a delivery not attempted stays owned by this instance until it stops", "subscription", s.cfg.ID,
			"delivery_id", t.deliveryID, "err", err)
	}
}

// afterOrdered keeps an ordered subscription's key state after an attempt
// of t, and returns the key's next delivery to attempt now, if any.
func (d *deliverer) afterOrdered(life context.Context, s *sub, t *task, dec Decision) *task {
	if s.ord == nil || !t.ordered {
		if t.unkeyed && dec.State != journal.Pending {
			// The claim takes one delivery of an ordered key at a time
			// for a subscription no longer ordered: woken at once, it
			// takes the next, where waiting a poll interval moved the
			// key one delivery a second (found by a review, 2026-12-07).
			d.nudgeWhenDurable(life)
		}
		return nil
	}
	retrying, retired := dec.State == journal.Pending, s.isRetired()
	var next *task
	var nudge bool
	if !retrying && !retired {
		// Nothing goes back to the journal: no need to wait for routing.
		next, _, nudge = s.ord.finished(t, false, false)
	} else {
		err := d.giveBack(life, func() []string {
			var release []string
			next, release, nudge = s.ord.finished(t, retrying, retired)
			if retrying {
				// Kept owned by attempt until now: first in line again.
				release = append([]string{t.deliveryID}, release...)
			}
			return release
		})
		if err != nil {
			d.log.Warn("deliveries waiting behind a retry stay owned by this instance until it stops", "subscription", s.cfg.ID, "err", err)
		}
	}
	if nudge {
		d.nudgeWhenDurable(life)
	}
	return next
}

// nudgeWhenDurable wakes the scheduler once what was put to the journal
// writer so far is durable. After an ordered delivery finished, the next
// one of its key waits in the journal and becomes claimable only when
// this one's outcome is written there: until then the claim still sees
// this one pending, the head of its key, and takes nothing. Woken at
// once, the scheduler would find nothing and sleep a PollInterval, and a
// key that went through the journal (after a retry, a spill, a pause)
// would move one delivery per PollInterval. The writer wakes it after
// the batch that holds this record (journal.Record.Spilled).
func (d *deliverer) nudgeWhenDurable(life context.Context) {
	if err := d.records.Put(life, journal.Record{Spilled: true}); err != nil {
		d.nudge()
	}
}

// attempt makes one attempt, puts its outcome to the journal writer, and
// returns what the receiver answered and what follows; in a span of its
// own when tracing is on.
func (d *deliverer) attempt(life context.Context, s *sub, t *task, sg *signer.Signer) (attemptResult, Decision) {
	if d.tracer == nil {
		return d.try(life, s, t, sg)
	}
	ctx, span := startAttempt(life, d.tracer, s, t, t.attempts+1)
	res, dec := d.try(ctx, s, t, sg)
	endAttempt(span, res, dec)
	return res, dec
}

// try is attempt, without its span.
func (d *deliverer) try(life context.Context, s *sub, t *task, sg *signer.Signer) (attemptResult, Decision) {
	n := t.attempts + 1
	// A delivery's own body is made at its first attempt (or the first
	// since its subscription has a transform) and kept with it: every
	// later attempt sends those bytes, whatever the transform becomes.
	if err := s.shapeBody(t); err != nil {
		return d.unsent(life, s, t, n, err)
	}
	var shaped []byte
	if t.fresh {
		shaped = t.body
	}
	secret, standard := s.signing(d.now())
	r := request{
		method: s.method, url: s.cfg.URL, body: t.body, eventType: t.eventType, eventID: t.eventID, deliveryID: t.deliveryID,
		attempt: n, secret: secret, standardKeys: standard, signer: sg, headers: s.headers, userAgent: d.cfg.UserAgent,
	}
	if d.tracer != nil {
		r.tracer, r.traceparent, r.shownURL = d.tracer, s.cfg.Traceparent, s.shownURL()
	}
	fenced := d.fence.generation()
	res := post(life, s.client, r, d.cfg.Timeout, d.cfg.bodyLimit())
	// The heartbeat went stale during the attempt (the fence closed, or
	// closed and was rechecked): another instance may have taken the
	// delivery over and be making this very attempt. Its outcome then
	// counts; this one is recorded only if none did (Unless).
	// Before the instance registered (an operator's retry or test at the
	// start), nothing is said: its row does not show it alive yet either.
	var unless string
	if !d.fence.open(time.Now()) || d.fence.generation() != fenced {
		unless = d.cfg.Instance
		if d.fence.started() {
			d.log.Info("attempt ended while this instance's heartbeat was stale: its outcome is recorded unless another instance took the delivery over",
				"subscription", s.cfg.ID, "delivery_id", t.deliveryID, "attempt", n, "status_code", res.Status)
		}
	}
	if len(s.scrub) > 0 {
		res.Body = s.scrub.scrub(res.Body, len(res.Body) >= d.cfg.bodyLimit())
		if res.Error != "" {
			res.Error = string(s.scrub.scrub([]byte(res.Error), false)) // a redirect's Location
		}
	}
	ok := res.Status >= 200 && res.Status < 300
	if !t.test {
		s.observe(res.Duration, ok)
	}
	now := d.now().UTC()
	dec := Next(Attempted{Attempt: n, ByHand: t.byHand, Trigger: t.trigger, KeepNext: t.keepNext, Status: res.Status, RetryAfter: res.RetryAfter},
		d.cfg.RetrySchedule, d.due(now))
	// An ordered delivery that will be retried stays this instance's
	// until its key's state has moved on (afterOrdered releases it with
	// the deliveries that wait behind it): claimable at once, it could be
	// claimed, attempted and followed by the next one of its key while
	// this worker has not yet recorded that it waits for a retry.
	owner := ""
	if t.ordered && dec.State == journal.Pending {
		owner = d.cfg.Instance
	}
	rec := journal.Record{
		Update: &journal.DeliveryUpdate{Owner: owner,
			ID: t.deliveryID, State: dec.State, Attempts: n, NextAttemptAt: dec.NextAttemptAt,
			LastStatus: res.Status, LastError: errorExcerpt(res.Error), LastAttemptAt: res.At, Body: shaped, Unless: unless,
		},
		Attempt: &journal.AttemptRow{
			DeliveryID: t.deliveryID, Attempt: n, At: res.At, Trigger: t.trigger, StatusCode: res.Status,
			Duration: res.Duration, ResponseBody: res.Body, ErrorClass: res.ErrorClass, Error: errorExcerpt(res.Error),
			Instance: d.cfg.Instance, Unless: unless,
		},
		Done: t.durable,
	}
	if !t.test {
		s.stats.record(now, res.Duration, dec.Outcome)
		// An outcome the journal may not apply (unless) says of the
		// subscription's health only once it was applied (healthIfApplied):
		// another instance's attempt may be the one that counts, and this
		// one's late failure marked the subscription failing, and told the
		// admin, over a delivery the other made (found by a review).
		if unless == "" {
			rec.Sub, rec.Notify = d.health(life, s, dec, res)
		}
	}
	if !t.test {
		// An operator's test send is no delivery of the subscription's:
		// its health leaves it out, and so do the metrics.
		d.obs.AttemptFinished(s.cfg.ID, res.Duration, res.Status, res.ErrorClass, dec.Outcome)
	}
	if err := d.records.Put(life, rec); err != nil {
		d.log.Error("attempt outcome not journaled; the delivery is attempted again", "delivery_id", t.deliveryID, "err", err)
	} else if unless != "" && !t.test {
		d.healthIfApplied(life, s, t.deliveryID, n, dec, res)
	}
	if res.ErrorClass != "" {
		d.log.Debug("attempt failed", "subscription", s.cfg.ID, "delivery_id", t.deliveryID, "attempt", n,
			"status_code", res.Status, "error_class", res.ErrorClass, "outcome", dec.Outcome.String())
	}
	return res, dec
}

// healthIfApplied brings the subscription's health up to an outcome made
// while this instance's heartbeat was stale (journal.DeliveryUpdate's
// Unless) once the journal shows it applied: attempt n recorded as this
// instance's. Skipped, a delivery that used up its schedule, or a 410, in
// such a window (a journal restart) never marked the subscription
// failing or disabled, nor a 2xx healthy again (found by a review). A
// rare path: the worker waits for the journal's write and one read.
func (d *deliverer) healthIfApplied(life context.Context, s *sub, id string, n int, dec Decision, res attemptResult) {
	if d.cfg.Journal == nil {
		return
	}
	written := make(chan error, 1)
	if err := d.records.Put(life, journal.Record{Done: written}); err != nil {
		return
	}
	select {
	case err := <-written:
		if err != nil {
			return
		}
	case <-life.Done():
		return
	}
	_, _, attempts, err := d.cfg.Journal.GetDelivery(life, id)
	if err != nil {
		d.log.Warn("the subscription's health is not updated for an attempt made while this instance's heartbeat was stale: its outcome could not be read back",
			"subscription", s.cfg.ID, "delivery_id", id, "err", err)
		return
	}
	applied := slices.ContainsFunc(attempts, func(a journal.Attempt) bool {
		return a.Attempt == n && a.Instance != nil && *a.Instance == d.cfg.Instance
	})
	if !applied {
		return
	}
	if sub, notify := d.health(life, s, dec, res); sub != nil || notify != nil {
		if err := d.records.Put(life, journal.Record{Sub: sub, Notify: notify}); err != nil {
			d.log.Warn("the subscription's health after an attempt made while this instance's heartbeat was stale is not journaled", "subscription", s.cfg.ID, "err", err)
		}
	}
}

// unsent records an attempt that sent nothing: the subscription's
// transform skipped the delivery (it gave null) or failed on its event.
// Either is final: the same event and transform give the same answer,
// so a failure is not retried (a person may retry it by hand, after
// fixing the transform). A failure counts against the subscription's
// health like an exhausted schedule, so the admin is told.
func (d *deliverer) unsent(life context.Context, s *sub, t *task, n int, err error) (attemptResult, Decision) {
	now := d.now().UTC()
	res := attemptResult{At: now}
	dec := Decision{Outcome: Failed, State: journal.Failed, Exhausted: true}
	if errors.Is(err, transform.ErrSkip) {
		dec = Decision{Outcome: Skipped, State: journal.Skipped}
		res.Error = "skipped: " + err.Error()
	} else {
		res.ErrorClass, res.Error = ClassTransform, err.Error()
		if name := s.shape.Name(); name != "transform" { // a preset's: say which
			res.Error = name + ": " + res.Error
		}
	}
	rec := journal.Record{
		Update: &journal.DeliveryUpdate{ID: t.deliveryID, State: dec.State, Attempts: n, LastError: errorExcerpt(res.Error), LastAttemptAt: now},
		Attempt: &journal.AttemptRow{DeliveryID: t.deliveryID, Attempt: n, At: now, Trigger: t.trigger, ErrorClass: res.ErrorClass,
			Error: errorExcerpt(res.Error), Instance: d.cfg.Instance},
		Done: t.durable,
	}
	// An operator's test send is no delivery of the subscription's: its
	// health, stats and metrics leave it out, as try's do.
	switch {
	case dec.Outcome == Skipped:
		if !t.test {
			d.obs.DeliveryRecorded(s.cfg.ID, journal.Skipped)
		}
	default:
		if !t.test {
			s.stats.record(now, unsentDuration, dec.Outcome)
			rec.Sub, rec.Notify = d.health(life, s, dec, res)
			d.obs.Unsent(s.cfg.ID, res.ErrorClass, dec.Outcome)
		}
		// Not the error's text: CEL's can quote the event's values, which
		// stay out of logs; the history has it. At most every
		// filterToldEvery per subscription, with the count: a transform
		// failing on one kind of event logged a line per delivery.
		if k, last, tell := s.transformFailures.hit(now, filterToldEvery); tell {
			attrs := []any{"subscription", s.cfg.ID, "deliveries", k, "delivery_id", t.deliveryID, "event", t.eventType, "error_class", ClassTransform}
			if last != 0 {
				attrs = append(attrs, "since", time.Duration(now.UnixNano()-last).Round(time.Second).String())
			}
			d.log.Warn("transform failed: the deliveries fail without being sent (their history says why)", attrs...)
		}
	}
	if err := d.records.Put(life, rec); err != nil {
		d.log.Error("attempt outcome not journaled; the delivery is attempted again", "delivery_id", t.deliveryID, "err", err)
	}
	return res, dec
}

// healthEvery bounds how often an unchanged, healthy subscription's
// health row is journaled after successes.
const healthEvery = time.Second

// finalFailuresFailing is how many deliveries in a row, each failed at
// once by an answer that is not retried (a 4xx other than 408, 425, 429
// and 410), make a subscription failing, as a used-up schedule does
// (DZDESK: "after 5 failures"): one event a receiver rejects is its own
// matter, every event rejected is a broken receiver (a secret mistyped,
// a route gone) whose events are lost unless the admin hears of it.
const finalFailuresFailing = 5

// health updates a subscription's health after an attempt and returns the
// row to journal (nil: nothing new worth a write), with a notification
// when the state changed: failing once a delivery exhausts its schedule,
// healthy again on the next 2xx, disabled on 410 Gone.
func (d *deliverer) health(ctx context.Context, s *sub, dec Decision, res attemptResult) (*journal.SubscriptionState, *journal.NotificationRow) {
	s.mu.Lock()
	prev := s.state
	st := &journal.SubscriptionState{ID: s.cfg.ID, LastStatus: res.Status}
	switch {
	case dec.Outcome == Delivered:
		if s.state == journal.Healthy && s.lastStatus == res.Status && res.At.Sub(s.healthWritten) < healthEvery && res.At.After(s.healthWritten) {
			// Nothing to tell but a later success: every process sharing
			// the journal writes these rows, and one write per attempt
			// made them the journal's busiest rows (each batch waited for
			// the others' locks). last_success_at lags by healthEvery at
			// most.
			s.lastSuccessAt = res.At
			s.refusedInARow = 0
			s.mu.Unlock()
			return nil, nil
		}
		s.lastSuccessAt, st.LastSuccessAt = res.At, res.At
		s.refusedInARow = 0
		if s.state == journal.Failing {
			s.state = journal.Healthy
		}
	default:
		s.lastFailureAt, st.LastFailureAt = res.At, res.At
		s.lastError, st.LastError = errorExcerpt(res.Error), errorExcerpt(res.Error)
		if dec.Outcome == Failed && res.Status != 0 && !retryable(res.Status) {
			s.refusedInARow++
		}
		switch {
		case dec.Outcome == Gone:
			if s.state != journal.Disabled {
				s.flagsGen++
				s.disabledAt = time.Now()
			}
			s.state = journal.Disabled
		case dec.Exhausted && s.state == journal.Healthy:
			s.state = journal.Failing
		case dec.Outcome == Failed && s.refusedInARow >= finalFailuresFailing && s.state == journal.Healthy:
			s.state = journal.Failing
		}
	}
	refused := s.refusedInARow
	s.lastStatus = res.Status
	s.healthWritten = res.At
	state := s.state
	st.State = state
	st.Changed = state != prev
	if st.Changed {
		st.ChangedAt = time.Now()
		if state != journal.Disabled {
			s.healthGen++
			s.healthAt = st.ChangedAt
		}
	}
	s.mu.Unlock()
	if !st.Changed {
		return st, nil
	}
	lvl := slog.LevelError
	if state == journal.Healthy {
		lvl = slog.LevelInfo
	}
	d.log.Log(ctx, lvl, "subscription changed state", "subscription", s.cfg.ID, "from", prev, "to", state,
		"status_code", res.Status, "error_class", res.ErrorClass)
	d.obs.StateChanged(s.cfg.ID, prev, state)
	why := "a delivery used up its retry schedule"
	switch {
	case res.ErrorClass == ClassTransform:
		why = "its transform failed on a delivery, which is not retried"
	case !dec.Exhausted && dec.Outcome == Failed:
		why = fmt.Sprintf("its receiver refused %d deliveries in a row with an answer that is not retried", refused)
	}
	return st, d.notifier.message(s.cfg.ID, prev, state, why, res)
}
