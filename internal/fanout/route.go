package fanout

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dzdesk/dzhook/internal/filter"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
)

// Dispatch matches ev against the subscriptions, journals its deliveries
// (put to the journal writer) and hands each active subscription's
// delivery to its workers, so the first attempt does not wait for the
// journal. When a subscription's queue is full, its delivery waits in the
// journal as due work instead, unowned: whichever process sharing the
// journal has room claims it (scale-out). With Config.ShareFirstAttempts
// every delivery takes that way. Dispatch blocks only while the journal
// writer's queue is full, and holds no lock meanwhile. The stream calls it
// from one goroutine, in commit order.
func (d *Dispatcher) Dispatch(ctx context.Context, ev Event) error {
	return d.dispatch(ctx, ev, false)
}

// DispatchDurable is Dispatch for an event from time (the SLA clock): it
// returns once the event and its deliveries are journaled, so the clock
// may then mark its timer fired.
func (d *Dispatcher) DispatchDurable(ctx context.Context, ev Event) error {
	if err := d.dispatch(ctx, ev, true); err != nil {
		return err
	}
	return d.records.Barrier(ctx)
}

// route is one subscription's part of a dispatch.
type route struct {
	s    *sub
	task *task // the first attempt, to hand to its workers
}

// admitted is an ordered delivery's place, undone if the journal refuses
// the record.
type admitted struct {
	s     *sub
	t     *task
	where admission
}

// dispatch is Dispatch; noHold writes the deliveries without waiting for
// their first attempts' outcomes.
func (d *Dispatcher) dispatch(ctx context.Context, ev Event, noHold bool) error {
	if d.stopping.Load() {
		return context.Canceled
	}
	if d.tracer == nil {
		return d.route(ctx, ev, noHold, nil)
	}
	es := startEvent(ctx, d.tracer, ev)
	err := d.route(ctx, ev, noHold, es)
	if !es.journaled {
		es.end(err) // nothing was put to the journal: the span ends now
	}
	return err
}

// route is dispatch; es, when tracing is on, is the event's span, ended
// once the record is durable.
func (d *Dispatcher) route(ctx context.Context, ev Event, noHold bool, es *eventSpan) error {
	ticket := d.dispatches.enter()
	defer d.dispatches.leave(ticket)
	d.routeMu.Lock()
	defer d.routeMu.Unlock()

	var env *filter.Envelope
	var rows []journal.DeliveryRow
	var routes []route
	var unhold []string
	var orderedRoutes []admitted
	spilled := false
	now := d.now().UTC()
	due := d.sched.due(now) // "now" in the journal's clock, with which claims compare it
	var pos int64           // the ordered deliveries' position, taken when first needed
	for _, s := range d.reg.Load().subs {
		if !s.matches(ev.Type) {
			continue
		}
		if s.filter != nil {
			if env == nil {
				var err error
				if env, err = filter.Parse(ev.Body); err != nil {
					d.log.Error("event body is not JSON; filters cannot see it", "event_id", ev.ID, "err", err)
					continue
				}
			}
			ok, err := matchWithin(s.filter, env)
			if err != nil {
				d.filterFailure(s, ev, err, now)
			}
			if !ok {
				continue
			}
		}
		row := journal.DeliveryRow{
			ID: ids.DeliveryIDTagged(ev.ID, s.tag), EventID: ev.ID, SubscriptionID: s.cfg.ID, EventType: ev.Type, CreatedAt: now,
		}
		rowSpilled := false
		key, ordered := s.cfg.Ordering.key(ev.Key)
		if ordered && pos == 0 {
			pos = d.pos.next(now)
		}
		switch {
		case !s.accepting():
			row.State = journal.Skipped
			if s.cfg.QueueWhileInactive {
				row.State = journal.Held
				if ordered {
					var un []string
					row.Ordered, row.OrderingKey = true, key
					row.Position, un = s.ord.held(key, pos)
					unhold = append(unhold, un...)
				}
			}
		case ordered:
			t := &task{deliveryID: row.ID, eventID: ev.ID, eventType: ev.Type, body: ev.Body, trigger: journal.TriggerAuto, ordered: true, key: key,
				event: es}
			// A place is reserved (waited for, while the queue is full and
			// the receiver keeps up) even for a key whose deliveries wait
			// in the journal, which then gives it back: the stream keeps
			// the deliveries' pace for those keys too (sub.reserveRouted).
			var room *sub
			if !d.cfg.ShareFirstAttempts && d.reserve(ctx, s) {
				room = s
			}
			where, position, un := s.ord.admit(t, pos, room)
			row.Ordered, row.OrderingKey, row.Position = true, key, position
			unhold = append(unhold, un...)
			orderedRoutes = append(orderedRoutes, admitted{s: s, t: t, where: where})
			if where == toJournal {
				if s.cfg.Ordering == OrderEntity {
					// Under ordering: subscription the one key's claims
					// wait while it is in memory, so they would not bring
					// ahead down; its chain paces the stream as it is.
					s.ahead.Add(1)
				}
				if room != nil {
					s.release(1)
				}
			}
			switch where {
			case toWorkers:
				row.State, row.Owner, row.NextAttemptAt = journal.Pending, d.cfg.Instance, due
				routes = append(routes, route{s: s, task: t})
			case toWaiting:
				// In memory behind the key's active delivery; the journal
				// has it as in flight here (held by the writer meanwhile).
				row.State, row.Owner, row.NextAttemptAt = journal.Pending, d.cfg.Instance, due
			default:
				row.State, row.NextAttemptAt = journal.Pending, due
				spilled, rowSpilled = true, true
				s.backlog.Store(true)
			}
		case !d.cfg.ShareFirstAttempts && d.reserve(ctx, s):
			row.State, row.Owner, row.NextAttemptAt = journal.Pending, d.cfg.Instance, due
			routes = append(routes, route{s: s, task: &task{deliveryID: row.ID, eventID: ev.ID, eventType: ev.Type, body: ev.Body, trigger: journal.TriggerAuto,
				event: es}})
		default:
			// The queue is full: the delivery waits in the journal and
			// the scheduler claims it when there is room.
			row.State, row.NextAttemptAt = journal.Pending, due
			spilled, rowSpilled = true, true
			s.backlog.Store(true)
		}
		// A rate-limited first attempt waits for its turn, often longer
		// than the writer would hold the row: written at once, the
		// commit's acknowledgement does not wait for it.
		row.NoHold = s.pace != nil
		if rowSpilled {
			d.obs.DeliveryRecorded(s.cfg.ID, Spilled) // queued in the journal, not in memory
		} else {
			d.obs.DeliveryRecorded(s.cfg.ID, row.State)
		}
		rows = append(rows, row)
	}
	d.obs.EventDispatched(ev.Type, len(rows))
	if len(rows) == 0 {
		if es != nil {
			es.span.SetAttributes(AttrDeliveries.Int(0))
		}
		return nil // no subscription wants it: nothing to record
	}
	rec := journal.Record{
		Event:      &journal.EventRow{ID: ev.ID, Type: ev.Type, Body: ev.Body, CommitLSN: ev.CommitLSN, OccurredAt: ev.Timestamp},
		Deliveries: rows,
		Spilled:    spilled,
		NoHold:     noHold,
		// Before this record's unowned deliveries can be claimed, the
		// earlier ones of their keys that are in memory are in the journal
		// too: the same batch writes both.
		Unhold: unhold,
	}
	if es != nil {
		es.span.SetAttributes(AttrDeliveries.Int(len(rows)))
		rec.Durable = es.end
	}
	if err := d.records.Put(ctx, rec); err != nil {
		for _, r := range routes {
			r.s.release(1)
		}
		for _, a := range orderedRoutes {
			a.s.ord.undo(a.t, a.where)
		}
		return err
	}
	if es != nil {
		es.journaled = true // es.end is called once the record is durable
	}
	// The journal's queue holds the deliveries before any result of
	// theirs can follow them there. A subscription retired meanwhile (a
	// reload, a shutdown) takes nothing: its deliveries go back to the
	// journal, unowned, for whoever runs it now.
	var giveBack []string
	for _, r := range routes {
		switch {
		case r.s.enqueueLive(r.task):
		case r.task.ordered:
			giveBack = append(giveBack, r.s.ord.drained([]*task{r.task})...)
		default:
			giveBack = append(giveBack, r.task.deliveryID)
		}
	}
	if len(giveBack) > 0 {
		return d.records.Put(ctx, journal.Record{Release: giveBack})
	}
	return nil
}

// maxRoomWait bounds how long Dispatch waits for room in the queue of a
// receiver that keeps up.
const maxRoomWait = 100 * time.Millisecond

// roomTimers bound the waits for room: during a catch-up the stream waits
// for most events, and a timer made for each was two allocations.
var roomTimers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

// reserve takes a place in a subscription's queue. When the queue is full
// and the receiver keeps up (answers 2xx, fast), it waits a moment for
// room: the stream then runs at the receiver's pace and every delivery
// takes the fast path, one journal insert with its outcome. A receiver
// that is slow, failing or hung gets no wait: its deliveries go to the
// journal at once, so it never delays the others. Nor does any receiver
// while other processes share the journal: they have workers of their
// own for this subscription, and claim what goes to the journal; the
// queue then holds only what its workers can start soon, or a catch-up
// would leave most of the work queued in this process while the others
// idle.
func (d *Dispatcher) reserve(ctx context.Context, s *sub) bool {
	if d.sched.peers.Load() > 0 && s.reserved.Load() >= s.soon() {
		// Others are alive: what would wait here behind more than the
		// workers can start soon goes to the journal, where any process
		// with a free worker claims it (the same bound as the claims').
		return false
	}
	if s.reserveRouted() {
		return true
	}
	if !s.keepsUp() || d.sched.peers.Load() > 0 || s.pace != nil {
		return false
	}
	deadline := roomTimers.Get().(*time.Timer)
	deadline.Reset(maxRoomWait)
	defer func() {
		deadline.Stop() // since Go 1.23: no stale tick left for the next user
		roomTimers.Put(deadline)
	}()
	for {
		select {
		case <-s.room:
		case <-s.stop:
			return false
		case <-deadline.C:
			return false
		case <-ctx.Done():
			return false
		}
		if s.reserveRouted() {
			return true
		}
		if !s.keepsUp() {
			return false
		}
	}
}

// tally counts what happened since it was last told, and says when to
// tell it: at the first, then at most once every interval.
type tally struct{ n, toldAt atomic.Int64 }

// hit counts one, and returns the count to tell and when it was last
// told (unix nanoseconds, 0: never), or tell false.
func (t *tally) hit(now time.Time, every time.Duration) (n, last int64, tell bool) {
	n = t.n.Add(1)
	last = t.toldAt.Load()
	if last != 0 && now.UnixNano()-last < int64(every) || !t.toldAt.CompareAndSwap(last, now.UnixNano()) {
		return 0, 0, false
	}
	t.n.Add(-n)
	return n, last, true
}

// filterBudget bounds a subscription's filter on one event: a filter past
// it does not match (a filter failure, said as the others are). Each
// filter has its own: shared by an event's filters, one subscription's
// costly filter (a regex over a large comment) spent it, and the filters
// after it, however cheap, did not match, their failure told under their
// own names (found by a review, 2026-12-07).
const filterBudget = 100 * time.Millisecond

// matchWithin runs f on env within filterBudget.
func matchWithin(f *filter.Program, env *filter.Envelope) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), filterBudget)
	defer cancel()
	return f.MatchContext(ctx, env)
}

// filterToldEvery is how often a subscription's filter failing on events
// is logged at most.
const filterToldEvery = 10 * time.Minute

// filterFailure notes that s's filter failed on ev (a field the event
// lacks, a type it does not expect): the event does not match, as the
// filter package says. Debug logs each; a WARN says it, with how many
// since the last, at most every filterToldEvery per subscription, so an
// operator at the default level learns that a filter skips events it
// cannot read (a filter on data.priority, on a subscription that also
// takes request.escalated, whose data has none) without a line per event.
func (d *Dispatcher) filterFailure(s *sub, ev Event, err error, now time.Time) {
	d.log.Debug("filter did not apply to the event", "subscription", s.cfg.ID, "event_id", ev.ID, "err", err)
	n, last, tell := s.filterFailures.hit(now, filterToldEvery)
	if !tell {
		return
	}
	// Not the error itself: CEL's messages quote the event's values
	// (invalid RFC 3339 timestamp "jane@company.com", no such key:
	// jane@company.com). The debug line has it.
	attrs := []any{"subscription", s.cfg.ID, "events", n, "event", ev.Type, "event_id", ev.ID, "filter", s.filter.String(), "see", "the debug log for each error"}
	if last != 0 {
		attrs = append(attrs, "since", time.Duration(now.UnixNano()-last).Round(time.Second).String())
	}
	d.log.Warn("the subscription's filter fails on some events, which therefore do not match it (and are not delivered to it)", attrs...)
}
