package fanout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/dzdesk/dzhook/internal/catalog"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/dzdesk/dzhook/internal/beat"
	"github.com/dzdesk/dzhook/internal/filter"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
)

// Replays
//
// A replay re-sends the journaled events of a window to one subscription
// (a new integration wants what happened before it existed; a receiver
// that lost its database wants the last day again). It is a journal row
// (journal.Replay) and a loop, the replayer, that any process sharing the
// journal runs: it turns the window's events, oldest first, into
// deliveries a batch at a time (journal.Store.StepReplay), pending and
// unowned. From there they are due work like any other: the scheduler
// claims them when the subscription's queue has room, and retries,
// pause, the failing state, signing and ordering apply as they do to the
// stream's deliveries.
//
// Identity: each delivery carries the original event's id and body (the
// journaled bytes) so receivers deduplicate on id; its own id is derived
// from (event, subscription, replay) (ids.ReplayDeliveryID), so a replay
// never collides with the delivery the subscription already had, and one
// taken up again after a crash makes nothing twice.
//
// Pacing: a step makes deliveries only while the subscription has fewer
// than ReplayBound pending or held (live ones included), at most
// ReplayBatch at a time. A replay therefore follows its receiver: a fast
// one drains the bound quickly and gets the next batch on the next round
// (every replayPollMax while replays run; with none running, the loop
// looks every poll interval, and at once when this process's API starts
// one); a slow, failing or paused one holds the replay at
// the bound. The journal never takes a day of history at once, and the
// subscription's queue keeps its room for the stream, whose deliveries
// take the memory path first: the scheduler claims only half the free
// room (scheduler.claim).
//
// Order: the events of the window are read in (occurred_at, id) order:
// commit-time order, and stream order within a transaction. (Two
// transactions committed concurrently may carry commit times in the
// other order than their commit LSNs, by microseconds; the replay follows
// the times.) Unordered subscriptions get them due one microsecond apart,
// so the claim (oldest due first) hands them out oldest first; with
// several workers they may still arrive out of order, as live deliveries
// may. An ordered subscription gets them with ordering keys of the
// replay's own: "replay:<rid>:" then the key (the entity under entity
// ordering, "" under subscription ordering), positions in the window's
// order. The replay's deliveries are therefore ordered among themselves,
// but not against the live deliveries of the same entity: under one key,
// a day of history would hold back every live delivery of the entity (or
// of the whole subscription) until it was through, the starvation pacing
// is there to prevent. The entity key of a stored event is read from its
// body as mapping derives it (data.id of request.* and user.* events,
// data.requestId of request.commented and sla.*); a custom event's key
// (outbox key column, message "key") is not in the stored event, so under
// entity ordering custom events are ordered with the whole replay
// (key "replay:<rid>:"), slower but never out of order.
//
// The subscription as it is when each batch is made decides: its event
// patterns and CEL filter apply, so a replay sends what the subscription
// would have received; events it no longer wants are passed over.

// Defaults of the replay loop.
const (
	// ReplayBatch is how many events one step looks at, at most. Small:
	// each step is one transaction inserting its deliveries, then a claim
	// updates them, in the journal; with the journal in the source
	// database the walsender decodes both before any live change
	// committed after them. At 500 a step, the live deliveries' p99
	// beside a replay was 4.3–4.4 ms; at 100, 3.9–4.4 (BENCHMARKS.md,
	// eighth stop).
	ReplayBatch = 100
	// ReplayRate bounds the deliveries a process makes for replays, per
	// second. A replay is history: on a small machine one that goes as
	// fast as the receiver takes it (9,000/s in the bench) takes the CPU
	// the live deliveries need (their p99 went from 2.5 to 22 ms); at
	// this rate a day of a busy helpdesk (100,000 events) replays in under
	// a minute and the live path keeps its room.
	ReplayRate = 2000
	// ReplayBound: a step makes deliveries only while the subscription
	// has fewer pending or held.
	ReplayBound = 1000
	// replayPollMax is the longest wait between two rounds of the loop
	// while replays run.
	replayPollMax = 200 * time.Millisecond
)

// ReplayStore is what the replays read and write in the journal.
// *journal.Store is one.
type ReplayStore interface {
	CreateReplay(ctx context.Context, req journal.ReplayRequest) (journal.Replay, journal.ReplayWindow, error)
	GetReplay(ctx context.Context, subscription, id string) (journal.Replay, error)
	ListReplays(ctx context.Context, subscription string, limit int) ([]journal.Replay, error)
	CancelReplay(ctx context.Context, subscription, id, reason string, staleAfter time.Duration) (journal.Replay, int, error)
	RunningReplays(ctx context.Context) ([]journal.Replay, error)
	FailReplay(ctx context.Context, id, reason string) error
	StepReplay(ctx context.Context, id string, batch, bound int, plan journal.ReplayPlan) (journal.ReplayStep, error)
}

// ErrReplaysOff: the dispatcher was built without Config.Replays.
var ErrReplaysOff = errors.New("replays are not available")

// ErrNothingToReplay: none of the event types asked for is one the
// subscription receives.
var ErrNothingToReplay = errors.New("none of these events is one the subscription receives")

// ReplayRequest asks for a replay (StartReplay).
type ReplayRequest struct {
	Subscription string
	// Since and Until bound the events' timestamps: [Since, Until).
	Since, Until time.Time
	// Patterns are the globs asked for, recorded as given; Types the
	// event types they select in the catalog (every type when no glob
	// was given). The subscription's own patterns narrow Types further.
	Patterns, Types []string
	// RequestedBy names who asked (the API client's address).
	RequestedBy string
}

// StartReplay records a replay and wakes the loop that makes its
// deliveries; it returns the replay and what the journal holds of the
// window. A subscription that is paused or inactive may be replayed to:
// its deliveries wait like its others.
func (d *Dispatcher) StartReplay(ctx context.Context, req ReplayRequest) (journal.Replay, journal.ReplayWindow, error) {
	if d.cfg.Replays == nil {
		return journal.Replay{}, journal.ReplayWindow{}, ErrReplaysOff
	}
	s, err := d.lookup(req.Subscription)
	if err != nil {
		return journal.Replay{}, journal.ReplayWindow{}, err
	}
	var types []string
	for _, t := range req.Types {
		if s.matches(t) {
			types = append(types, t)
		}
	}
	if len(types) == 0 {
		return journal.Replay{}, journal.ReplayWindow{}, fmt.Errorf("%w (it receives %s)", ErrNothingToReplay, strings.Join(s.cfg.Events, ", "))
	}
	r, w, err := d.cfg.Replays.CreateReplay(ctx, journal.ReplayRequest{
		ID: ids.NewReplayID(d.now()), Subscription: s.cfg.ID, Since: req.Since, Until: req.Until,
		Patterns: req.Patterns, Types: types, RequestedBy: req.RequestedBy,
	})
	if err != nil {
		return r, w, err
	}
	d.log.Info("replay requested", "replay", r.ID, "subscription", r.Subscription, "since", r.Since, "until", r.Until,
		"events", r.Matched, "requested_by", r.RequestedBy)
	d.replayer.nudge()
	return r, w, nil
}

// GetReplay returns a replay of a subscription with its progress.
func (d *Dispatcher) GetReplay(ctx context.Context, subscription, id string) (journal.Replay, error) {
	if d.cfg.Replays == nil {
		return journal.Replay{}, ErrReplaysOff
	}
	return d.cfg.Replays.GetReplay(ctx, subscription, id)
}

// ListReplays returns a subscription's latest replays, newest first.
func (d *Dispatcher) ListReplays(ctx context.Context, subscription string, limit int) ([]journal.Replay, error) {
	if d.cfg.Replays == nil {
		return nil, ErrReplaysOff
	}
	return d.cfg.Replays.ListReplays(ctx, subscription, limit)
}

// CancelReplay stops a running replay: no more deliveries are made, and
// those waiting in the journal are cancelled (journal.Store.CancelReplay);
// attempts in flight finish. Cancelling a finished replay is
// journal.ErrReplayFinished, with the replay as it is.
func (d *Dispatcher) CancelReplay(ctx context.Context, subscription, id, by string) (journal.Replay, int, error) {
	if d.cfg.Replays == nil {
		return journal.Replay{}, 0, ErrReplaysOff
	}
	reason := "cancelled by an operator"
	if by != "" {
		reason += " (" + by + ")"
	}
	r, n, err := d.cfg.Replays.CancelReplay(ctx, subscription, id, reason, d.sched.takeoverAfter())
	if err == nil {
		d.log.Info("replay cancelled", "replay", id, "subscription", subscription, "skipped", n)
	}
	return r, n, err
}

// replayer is the loop that makes the running replays' deliveries, one
// replay at a time per subscription (the oldest first: a second replay of
// a subscription waits for the first, so two never compete for its
// bound). Every process runs it; StepReplay's row lock keeps two from
// stepping one replay at once.
type replayer struct {
	store ReplayStore
	log   *slog.Logger
	poll  time.Duration // between rounds while replays run
	idle  time.Duration // between rounds while none does
	wake  chan struct{}
	now   func() time.Time
	due   func(time.Time) time.Time // a time in the journal's clock (scheduler.due)
	// lookup returns a subscription of the current registry (nil: none).
	lookup func(id string) *sub
	// claimed wakes the scheduler, which claims what a step made.
	claimed func()
	// filterFailed tells of a subscription's filter failing on a replayed
	// event, as the stream's are told (Dispatcher.filterFailure).
	filterFailed func(*sub, Event, error)
	// missing is since when a running replay's subscription has not been
	// in this process's registry (Run's goroutine only).
	missing map[string]time.Time
}

// replayMissingGrace is how long a replay's subscription may be missing
// from this process before the replay fails: a subscription just created
// through another process, or a reload not yet made here, arrives within
// a few seconds; a deleted runtime subscription's replays are cancelled
// by the delete itself.
const replayMissingGrace = time.Minute

func (rp *replayer) nudge() {
	if rp == nil {
		return
	}
	select {
	case rp.wake <- struct{}{}:
	default:
	}
}

// Run makes the running replays' deliveries until ctx ends, then returns
// nil. A step cut short by ctx rolls back whole; whoever runs the loop
// next starts it again from the replay's cursor.
func (rp *replayer) Run(ctx context.Context) error {
	if rp.store == nil {
		return nil
	}
	t := time.NewTimer(beat.Until(rp.idle))
	defer t.Stop()
	var fails failures
	backoff := rp.poll
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-rp.wake:
		}
		active, err := rp.round(ctx)
		if err != nil && ctx.Err() == nil {
			fails.failed(rp.log, "replaying failed; retrying", err)
			// Backed off to the idle interval: every poll (200 ms) tried
			// the journal again during its outage, and said so.
			t.Reset(backoff)
			backoff = min(2*backoff, rp.idle)
			continue
		}
		if err == nil {
			fails.ok(rp.log, "replaying works again")
			backoff = rp.poll
		}
		// Every poll while replays run (a step that waited for its
		// receiver goes on soon); with none, a look every idle interval
		// for one another process created (this one's API wakes it).
		// Only the idle look falls on the clock's multiples (beat), with
		// the other pollers: while replays run, the steps keep their pace
		// (and the processes stepping them, their own phases).
		if active || err != nil {
			t.Reset(rp.poll)
		} else {
			t.Reset(beat.Until(rp.idle))
		}
	}
}

// round steps each subscription's oldest running replay until it waits
// for its receiver, is done, or another process has it. active: some
// replay was running.
func (rp *replayer) round(ctx context.Context) (active bool, err error) {
	running, err := rp.store.RunningReplays(ctx)
	if err != nil {
		return false, err
	}
	return len(running) > 0, rp.step(ctx, running)
}

// step is round's work on the running replays: one step of each in turn
// (a long replay does not hold back another subscription's), each paced,
// until each waits for its receiver, is done, or another process has it.
// A replay whose step fails is left for the next round; the others go on.
func (rp *replayer) step(ctx context.Context, running []journal.Replay) error {
	type stepping struct {
		r journal.Replay
		s *sub
	}
	var errs []error
	var active []stepping
	seen := map[string]bool{}
	for id := range rp.missing {
		// Ended meanwhile (cancelled, or failed by another process).
		if !slices.ContainsFunc(running, func(r journal.Replay) bool { return r.ID == id }) {
			delete(rp.missing, id)
		}
	}
	for _, r := range running {
		if seen[r.Subscription] {
			continue
		}
		seen[r.Subscription] = true
		s := rp.lookup(r.Subscription)
		if s == nil {
			// Not here (yet): another process may run it, or this one
			// will after its next reload. Missing for long, it was
			// removed from the configuration: nobody will send these
			// deliveries, and the replay says so rather than run for ever.
			if rp.missing == nil {
				rp.missing = map[string]time.Time{}
			}
			since, ok := rp.missing[r.ID]
			if !ok {
				rp.missing[r.ID] = rp.now()
				continue
			}
			if rp.now().Sub(since) < replayMissingGrace {
				continue
			}
			if err := rp.store.FailReplay(ctx, r.ID, fmt.Sprintf("subscription %q no longer exists", r.Subscription)); err != nil {
				errs = append(errs, fmt.Errorf("replay %s: %w", r.ID, err))
				continue
			}
			delete(rp.missing, r.ID)
			continue
		}
		delete(rp.missing, r.ID)
		active = append(active, stepping{r, s})
	}
	for len(active) > 0 && ctx.Err() == nil {
		next := active[:0]
		for _, a := range active {
			if ctx.Err() != nil {
				break
			}
			began := time.Now()
			step, err := rp.store.StepReplay(ctx, a.r.ID, ReplayBatch, ReplayBound, replayPlan(a.s, rp.due(rp.now().UTC()), rp.filterFailed))
			if err != nil {
				if ctx.Err() == nil {
					errs = append(errs, fmt.Errorf("replay %s: %w", a.r.ID, err))
				}
				continue
			}
			if step.Done {
				rp.log.Info("replay made all its deliveries", "replay", a.r.ID, "subscription", a.r.Subscription)
			}
			if !step.Busy && !step.Waiting && !step.Done {
				next = append(next, a)
			}
			if step.Created > 0 {
				rp.claimed()
				// Paced: the next step (of this replay or another) once
				// the time these deliveries take at ReplayRate has passed
				// since this one began.
				pause := time.NewTimer(time.Duration(step.Created)*time.Second/ReplayRate - time.Since(began))
				select {
				case <-ctx.Done():
					pause.Stop()
				case <-pause.C:
				}
			}
		}
		active = next
	}
	return errors.Join(errs...)
}

// replayPlan turns a batch of a replay's events into the deliveries of s
// (see "Replays" above for the ids, order and keys). An event's filter
// runs as the stream runs it: within filterBudget, a failure (a field the
// event lacks, the budget spent) not matching and told through failed.
// Unbounded, one costly filter held the replay step's transaction, and
// the retention steps waiting on its lock, for as long as it ran (22 s
// in a review's case), and could match where the stream, which stopped
// it at the budget, had not.
//
// A step looks at its events for replayStepTime at most, then ends with
// those: a filter near its budget on each of a batch's events held the
// step's transaction for the batch times the budget (10 s), and the
// retention steps waiting on its lock with it.
func replayPlan(s *sub, now time.Time, failed func(*sub, Event, error)) journal.ReplayPlan {
	return func(r journal.Replay, scanned int, events []journal.ReplayEvent) ([]journal.DeliveryRow, int) {
		rows := make([]journal.DeliveryRow, 0, len(events))
		began := time.Now()
		for i, ev := range events {
			if i > 0 && s.filter != nil && time.Since(began) > replayStepTime {
				return rows, i
			}
			if !s.matches(ev.Type) {
				continue
			}
			if s.filter != nil && !replayMatches(s, ev, failed) {
				continue
			}
			row := journal.DeliveryRow{
				ID: ids.ReplayDeliveryID(ev.ID, s.cfg.ID, r.ID), EventID: ev.ID, EventType: ev.Type,
				// Due oldest first: the claim takes the earliest due.
				NextAttemptAt: now.Add(time.Duration(i) * time.Microsecond),
			}
			if key, ordered := replayKey(s.cfg.Ordering, ev); ordered {
				row.Ordered, row.OrderingKey, row.Position = true, "replay:"+r.ID+":"+key, int64(scanned+i+1)
			}
			rows = append(rows, row)
		}
		return rows, len(events)
	}
}

// replayStepTime is how long a replay step looks at its events (the
// filter's) before it ends with those it looked at: a var for tests.
var replayStepTime = time.Second

// replayMatches reports whether s's filter matches the stored event ev.
func replayMatches(s *sub, ev journal.ReplayEvent, failed func(*sub, Event, error)) bool {
	env, err := filter.Parse(ev.Body)
	if err != nil {
		failed(s, Event{ID: ev.ID, Type: ev.Type}, err)
		return false
	}
	ok, err := matchWithin(s.filter, env)
	if err != nil {
		failed(s, Event{ID: ev.ID, Type: ev.Type}, err)
	}
	return ok
}

// replayKey is the ordering key of a stored event's replay delivery
// (before the replay's prefix), and whether it is ordered.
func replayKey(o Ordering, ev journal.ReplayEvent) (string, bool) {
	switch o {
	case OrderSubscription:
		return "", true
	case OrderEntity:
		// Under entity ordering, an event whose key is not in its body
		// (a custom event) goes with the whole replay's key: ordered.
		return storedKey(ev), true
	}
	return "", false
}

// storedKey reads an event's entity key from its body as mapping
// derives it: "" when the body does not hold it.
func storedKey(ev journal.ReplayEvent) string {
	var env struct {
		Data struct {
			ID        any `json:"id"`
			RequestID any `json:"requestId"`
		} `json:"data"`
	}
	if json.Unmarshal(ev.Body, &env) != nil {
		return ""
	}
	v := env.Data.ID
	switch {
	case !catalog.IsBuiltin(ev.Type):
		// A custom event, even one named request.escalated: its key was
		// the outbox row's column or the message's field, not its data's.
		return ""
	case ev.Type == catalog.RequestCommented || strings.HasPrefix(ev.Type, "sla."):
		v = env.Data.RequestID
	}
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}
