package fanout

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dzdesk/dzhook/internal/beat"
	"github.com/dzdesk/dzhook/internal/journal"
)

// scheduler claims due work into the subscriptions' queues when they have
// room, every poll interval or when nudged. Due work waits in the journal:
// retries, deliveries that found their queue full, deliveries released by
// a reload, a resume or a dead instance, and the keys' heads of ordered
// subscriptions. It also gives back what lost claims took, keeps this
// instance's heartbeat, and reads the ordered keys' backlog while it is
// unread.
type scheduler struct {
	store    Store
	instance string
	// claimMu is held across a claim and the recording of what it took
	// (orderState.claimedRun), and across the read of the ordered keys'
	// backlog and its sync (Dispatcher.syncOrder): the backlog leaves
	// out what this process owns and sync adds what it claimed, so a
	// claim committed during the read but not yet recorded would be
	// counted twice, or not at all.
	claimMu sync.Mutex
	// claimFailures says the claims' failures (under claimMu).
	claimFailures failures
	poll          time.Duration
	heartbeat     time.Duration
	log           *slog.Logger
	wake          chan struct{}
	lost          lostClaims
	// now is the process's clock (Config.NowFunc); skew is the journal's
	// clock less it, measured at each heartbeat (Unix nanoseconds): due
	// times are written in the journal's clock, with which claims
	// compare them.
	now  func() time.Time
	skew atomic.Int64
	// peers is how many other instances sharing the journal are alive,
	// as of the last heartbeat: with any, a full queue hands deliveries
	// to them (Dispatcher.reserve) instead of waiting for room.
	peers atomic.Int64
	// beat is when the last heartbeat reached the journal (Unix
	// nanoseconds; 0: none yet).
	beat atomic.Int64
	// busyUntil: until then (Unix nanoseconds) Run polls fast while
	// others share the journal; set by this process's first heartbeat
	// that sees others (it joined them).
	busyUntil atomic.Int64
	// told is when this process's journal writer last woke it for work
	// it journaled (Dispatcher.Spilled; Unix nanoseconds).
	told atomic.Int64
	// joined is told when other processes appear where there were none,
	// by Run at the start of its next round (joinedDue, set by the
	// heartbeat): claims run on Run's goroutine only, so a claim sized
	// while this process was alone (half its free places, hundreds) has
	// returned before joined shares the queue with the newcomer; run
	// after the share, it took all of it back (seen in CI:
	// TestJoiningPeerGetsAShareOfTheQueue, the newcomer made no attempt).
	// On Run's goroutine the share also ends with Run's context, and a
	// slow claim never holds up a heartbeat.
	joined    func(ctx context.Context)
	joinedDue atomic.Bool
	// fence holds the workers' attempts from memory while this
	// instance's heartbeat is stale; reown, on Run's goroutine when
	// reownDue (set by the heartbeat that ended such a gap), asks the
	// journal what of its memory is still this instance's and opens it
	// (Dispatcher.reown).
	fence    *fence
	reown    func(ctx context.Context) error
	reownDue atomic.Bool
	// reownAfter is when (Unix ns) the recheck may run (heartbeatLoop).
	reownAfter atomic.Int64
	// contactSince is since when (ns after fence.epoch) this process has
	// reached the journal without a gap (heartbeatLoop): until it has for
	// the stale window, its claims take over no other instance's
	// deliveries (takeoverAfter).
	contactSince atomic.Int64
	// lastContact is when (ns after fence.epoch) the last heartbeat check
	// that reached the journal began: a claim takes over nothing while it
	// is older than contactGap (a claim can reach the journal back from
	// an outage before the heartbeat does).
	lastContact atomic.Int64
	// syncFlags, after each heartbeat, adopts what other processes
	// changed of the subscriptions' pause and disabled state; shared says
	// whether others share the journal (or did until this heartbeat):
	// alone, it reads the journal only when a Reload asked for it.
	syncFlags func(ctx context.Context, shared bool)
	// subs is the current subscription set; giveBack returns deliveries
	// to the journal in routing order; syncOrder reads the backlog of the
	// ordered subscriptions not synced yet.
	subs      func() []*sub
	giveBack  func(ctx context.Context, take func() []string) error
	syncOrder func(ctx context.Context) error
	// recount corrects the ordered keys' counts, every recountEvery poll
	// intervals at most.
	recount     func(ctx context.Context) error
	lastRecount time.Time
	// park names the ordered subscriptions whose last claim took less
	// than it asked in a slow round: Run parks what waits behind their
	// keys' heads (journal.Store.Park), once per poll interval at most.
	park     []string
	lastPark time.Time
	// parkWait is how long after the last Park the next may run: a poll
	// interval, doubled (to a minute at most) while Park finds nothing to
	// park: a slow round beside a run in flight, or behind a head being
	// attempted, reads deliveries Park cannot park. Not doubled when
	// Park found some but another transaction held their head.
	parkWait time.Duration
	// lastUnpark is when Unpark last ran (once per poll interval while
	// the process has ordered subscriptions, or parked deliveries may be
	// left).
	lastUnpark time.Time
	// unparked: no subscription of this process is ordered, and the
	// journal had no parked delivery when last looked at then. Until
	// then Unpark goes on without ordered subscriptions: one whose
	// ordering a reload turned off left deliveries parked behind their
	// heads, due only at the heads' old due time, up to hours after the
	// heads were delivered (found by a review, 2026-12-07).
	unparked bool
}

// unparkBatch bounds what one Unpark statement moves.
const unparkBatch = 20000

// parkAfter: a claim round slower than this, in which an ordered
// subscription took less than it asked, may have read deliveries turned
// away behind their keys' heads; Run then parks them. An idle round takes
// about a millisecond; each delivery turned away, a few microseconds.
const parkAfter = 5 * time.Millisecond

// parkBatch bounds what one Park statement moves (a few hundred
// milliseconds of the journal's time); more waits for the next round.
const parkBatch = 20000

// recountEvery is how many poll intervals pass between two recounts of
// the ordered keys (20 s with the default poll interval).
const recountEvery = 20

// nudge makes Run claim now.
func (sc *scheduler) nudge() {
	select {
	case sc.wake <- struct{}{}:
	default:
	}
}

// Run claims due work until ctx ends, and returns nil. Deliveries it
// claimed and queued when ctx ends stay owned by this instance: the
// dispatcher's shutdown gives them back. (The heartbeat runs apart, until
// the dispatcher has given them back: heartbeatLoop.)
func (sc *scheduler) Run(ctx context.Context) error {
	t := time.NewTimer(sc.poll)
	defer t.Stop()
	var lastFound time.Time // when a round last found work
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-sc.wake:
		}
		if sc.reownDue.Load() && time.Now().UnixNano() >= sc.reownAfter.Load() && sc.reownDue.Swap(false) {
			if err := sc.reown(ctx); err != nil {
				sc.reownDue.Store(true) // next round; the workers wait meanwhile
				if ctx.Err() == nil {
					sc.log.Warn("reading which deliveries in memory this instance still owns failed; its workers wait, retrying", "err", err)
				}
			}
		}
		if sc.joinedDue.Swap(false) && sc.joined != nil {
			sc.joined(ctx)
		}
		found := false
		sc.releaseLost(ctx)
		if err := sc.syncOrder(ctx); err != nil && ctx.Err() == nil {
			sc.log.Warn("reading the ordered keys' backlog failed; retrying", "err", err)
		}
		if sc.recount != nil && time.Since(sc.lastRecount) >= recountEvery*sc.poll {
			sc.lastRecount = time.Now()
			// Claims run in this goroutine only, so none starts meanwhile.
			if err := sc.recount(ctx); err != nil && ctx.Err() == nil {
				sc.log.Warn("recounting the ordered keys' backlog failed; retrying later", "err", err)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		subs := sc.subs()
		ordered := slices.ContainsFunc(subs, func(s *sub) bool { return s.ord != nil })
		if ordered {
			sc.unparked = false
		}
		if time.Since(sc.lastUnpark) >= sc.poll && !sc.unparked {
			sc.unpark(ctx)
			if !ordered {
				left, err := sc.store.Parked(ctx)
				sc.unparked = err == nil && !left
			}
		}
		began := time.Now()
		found = sc.claim(ctx, subs) > 0
		if len(sc.park) > 0 && time.Since(began) >= parkAfter && time.Since(sc.lastPark) >= max(sc.parkWait, sc.poll) {
			sc.parkBehindHeads(ctx)
		}
		// While other processes share the journal, work found says more
		// is coming: the process that streams is told at once when it
		// journals due work (OnSpill), the others only poll, so they poll
		// fast until no round has found work for a poll interval. Not
		// only until a round finds nothing: the streaming process
		// journals in bursts (when its queues fill, when its writer
		// flushes), and a process that waited a whole poll interval after
		// each gap left its workers idle (make bench SCENARIO=scaleout:
		// the two standbys idle for a second at a time early in the run).
		// A process that starts beside others polls fast for three
		// heartbeats (busyUntil): a streaming process hands over its
		// queued deliveries when it learns of the newcomer, at its next
		// heartbeat. The processes already running keep their pace.
		now := time.Now()
		if found {
			lastFound = now
		}
		// The window after found work is for the processes that are not
		// told: one whose writer wakes it when it journals claimable work
		// (Spilled) learns of its own at once, and polling fast as well
		// would have it take the work it shares from the others
		// (TestOrderedTwoInstances: the streaming process then made every
		// retry).
		told := now.UnixNano()-sc.told.Load() < int64(sc.poll)
		next := sc.poll
		if sc.peers.Load() > 0 && (found || !told && now.Sub(lastFound) < sc.poll || now.UnixNano() < sc.busyUntil.Load()) {
			next = min(next, busyPoll)
		}
		if next == sc.poll && sc.peers.Load() == 0 {
			// Alone and idle: on the clock's multiples, with the other
			// pollers (beat), one wake for all. Beside others, each on
			// the phase of its own rounds: on the same instants, the
			// first to reach the journal would take every key's head
			// that came due (TestOrderedTwoInstances: the streaming
			// process made every retry).
			next = beat.Until(next)
		}
		if sc.reownDue.Load() {
			// The recheck waits for the claims that could have read this
			// instance's row stale (heartbeatLoop): wake for it.
			next = min(next, max(time.Until(time.Unix(0, sc.reownAfter.Load())), time.Millisecond))
		}
		t.Reset(next)
	}
}

// measureSkew sets skew from a heartbeat the journal answered with at,
// its clock when the answer came (journal.Store.Heartbeat: its now()
// plus half the query's own round trip, not the wait for a connection
// before it). A skew past a second is logged when it first appears: the
// hosts' clocks differ, and due times follow the journal's.
func (sc *scheduler) measureSkew(at time.Time) {
	skew := at.Sub(sc.now())
	before := time.Duration(sc.skew.Swap(int64(skew)))
	if skew.Abs() > time.Second && (before-skew).Abs() > time.Second {
		sc.log.Warn("this host's clock differs from the journal's; due times follow the journal's clock",
			"journal_ahead_by", skew.Round(time.Millisecond).String())
	}
}

// due is t in the journal's clock: what a due time written to the
// journal is measured in.
func (sc *scheduler) due(t time.Time) time.Time { return t.Add(time.Duration(sc.skew.Load())) }

// noTakeover is the staleness a claim is given while this process may not
// take over others' deliveries: every instance with a row counts as alive.
const noTakeover = 100 * 365 * 24 * time.Hour

// takeoverAfter is how stale another instance's heartbeat must be for this
// process's claims to take over its deliveries: three heartbeats, once
// this process has reached the journal without a gap for that long
// (contactSince). Before, it takes over none (noTakeover): after an
// outage of the journal every row is stale, its own as well, and the
// first process back would take every other's work, which they still
// hold in memory (they then drop it at their fence, having waited for
// nothing). A process that has just started waits as long: it cannot
// tell a dead instance from one that was cut off with it.
//
// The journal checks too (Store.Claim): it takes over nothing for a
// claimer whose own row is stale, as after an outage, when this
// process's view is older than the claim's arrival (a claim held up by
// the outage itself).
func (sc *scheduler) takeoverAfter() time.Duration {
	stale := 3 * sc.heartbeat
	now := time.Since(sc.fence.epoch)
	if now-time.Duration(sc.lastContact.Load()) > sc.contactGap() || now-time.Duration(sc.contactSince.Load()) < stale {
		return noTakeover
	}
	return stale
}

// contactGap is the longest time between two heartbeat checks that
// reached the journal that still counts as continuous contact: a
// heartbeat, or two checks, whichever is longer.
func (sc *scheduler) contactGap() time.Duration {
	return max(sc.heartbeat, 2*min(sc.heartbeat, time.Second))
}

// busyPoll is how soon a process claims again after a round that found
// work, while other processes share the journal.
const busyPoll = 50 * time.Millisecond

// maxHeartbeatWrite bounds the time between two writes of the heartbeat
// row, whatever journal.heartbeat is (heartbeatLoop).
const maxHeartbeatWrite = 2 * time.Second

// heartbeatLoop keeps this instance alive in the journal, and learns how
// many others are: at once, then every heartbeat or every second, whichever
// is sooner, so that a process joining takes part within a second. The
// row is written only when the last write is half a heartbeat old (2 s at
// most): the checks between read only. A write every second was most of
// an idle process's cost, and of its journal's: with the journal in the
// source database each write's WAL also woke the walsender, which then
// sent this process a keepalive to answer.
//
// The write's age is measured on the clock, not in checks: slow checks (a
// slow journal) or a process stopped for a while (SIGSTOP, a frozen
// cgroup) write at the first check after. Others count a row alive for
// two heartbeats and take over its deliveries after three, of theirs or
// of the writer's, whichever is longer (the row records the writer's:
// journal version 14), so processes with different journal.heartbeat
// values do not take one another for dead between writes.
func (sc *scheduler) heartbeatLoop(ctx context.Context) {
	every := min(sc.heartbeat, time.Second)
	// Written at the first check at least this long after the last write
	// (half a check early: the checks tick every `every`).
	writeAfter := min(sc.heartbeat/2, maxHeartbeatWrite) - every/2
	t := beat.NewTicker(every)
	defer t.Stop()
	shared := false       // others were alive at the last heartbeat
	var written time.Time // the last write that reached the journal
	var beatFailures failures
	for first := true; ; {
		var peers int
		var at time.Time
		var err error
		checked := time.Now() // the check's start: contact is counted from it
		if write := written.IsZero() || time.Since(written) >= writeAfter; write {
			sent := time.Now() // before the write: the row is at least this young
			if peers, at, err = sc.store.Heartbeat(ctx, sc.instance, 2*sc.heartbeat); err == nil {
				written = time.Now()
				// What others see: LastHeartbeat is this row's age.
				sc.beat.Store(written.UnixNano())
				if sc.fence.written(sent, written) {
					// Run asks the journal, then opens the fence; not before
					// a claim that read this row stale before the write has
					// ended (journal.ClaimTimeout bounds it): asked earlier,
					// the journal answered "still yours" for what that claim
					// then took. With no other instance alive, none can be
					// claiming (a claimer's own row must be fresh).
					wait := journal.ClaimTimeout
					if peers == 0 {
						wait = 0
					}
					if !sc.reownDue.Load() { // the first write after the gap sets when
						sc.reownAfter.Store(written.Add(wait).UnixNano())
						sc.reownDue.Store(true)
					}
					sc.nudge()
				}
			}
		} else {
			peers, at, err = sc.store.Peers(ctx, sc.instance, 2*sc.heartbeat)
		}
		if err == nil {
			sc.measureSkew(at)
			// Checks are counted from their start, so a slow answer is no
			// gap; the first contact is the registration (start).
			began := int64(checked.Sub(sc.fence.epoch))
			if began-sc.lastContact.Load() > int64(sc.contactGap()) {
				// The first contact after a gap: others' rows may be
				// stale for the same reason as this one's. Stored before
				// lastContact: a claim in between sees one or the other
				// and takes over nothing (takeoverAfter).
				sc.contactSince.Store(began)
			}
			sc.lastContact.Store(began)
		}
		if err != nil {
			if ctx.Err() == nil {
				beatFailures.failed(sc.log, "journal heartbeat failed", err)
			}
		} else {
			beatFailures.ok(sc.log, "journal heartbeat written again")
			if before := sc.peers.Swap(int64(peers)); before != int64(peers) {
				sc.log.Info("instances sharing the journal changed", "others_alive", peers)
				if before == 0 && sc.joined != nil {
					sc.joinedDue.Store(true) // Run shares, at once
					sc.nudge()
				}
				if first {
					// Joining others: they hand over work (a streaming
					// process shares its queues at its next heartbeat,
					// and its writer takes a moment to journal them).
					sc.busyUntil.Store(time.Now().Add(3 * every).UnixNano())
					sc.nudge()
				}
			}
			first = false
			if sc.syncFlags != nil {
				sc.syncFlags(ctx, peers > 0 || shared)
			}
			shared = peers > 0
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// claim takes due deliveries for the subscriptions accepting work, in one
// claim for all of them, and queues them; it returns how many it took.
// For each, it takes up to half the room left in its queue (reserved
// first, so nothing claimed is left without a place; only half, so the
// stream's own deliveries still find room while the claim runs). While
// other processes share the journal it takes only what its workers can
// start soon (sub.soon, less what is queued): what one process claims
// waits in its queue while others, with idle workers, find nothing, and
// an ordered key's head claimed here holds back the key everywhere.
func (sc *scheduler) claim(ctx context.Context, subs []*sub) int {
	type asked struct {
		s     *sub
		n     int64 // places reserved
		heads int   // of which for heads (journal.ClaimWant.Heads)
	}
	var wants []journal.ClaimWant
	var ask []asked
	sc.park = sc.park[:0]
	peers := sc.peers.Load() > 0
	for _, s := range subs {
		if !s.accepting() {
			continue
		}
		if s.ord != nil && s.cfg.Ordering == OrderSubscription && s.ord.holds("") && time.Since(s.lastAsked) < recountEvery*sc.poll {
			// Its one key is in this process's memory: nothing of the
			// subscription can start before that finishes but a manual
			// retry (retry-failed steps outside the order), and the claim
			// would read its whole backlog to find so (every due delivery
			// of the key, each turned away). It is asked all the same
			// every recountEvery poll intervals: a stream that keeps the
			// key busy would otherwise keep manual retries waiting.
			continue
		}
		free := s.size - s.reserved.Load()
		// At least one: a queue of one place (a rate-limited subscription
		// with one worker, queue_size: 1) would otherwise never claim.
		want := min(max(free/2, 1), 1024)
		heads := want
		switch {
		case s.cfg.Ordering == OrderSubscription && s.ord != nil:
			// One key, so one head at most: the claim stops reading at
			// it rather than turning away the rest of the backlog.
			heads = 1
		case s.ord != nil:
			// Heads leave most of the want to the runs behind them: no
			// more than an eighth of it (but two per worker), nor more
			// than the workers start soon. Runs are taken after the heads,
			// within the limit; a claim that filled it with heads would
			// move each key one delivery at a time, and one that takes a
			// key's whole run brings the key back to memory
			// (orderState.claimedRun), where its next deliveries follow
			// without the journal.
			heads = min(heads, max(s.soon(), 1), max(want/8, 2*int64(len(s.busy))))
		}
		if peers {
			// Places held by runs waiting behind their heads start no
			// worker: they do not count against what starts soon.
			heads = min(heads, s.soon()-(s.reserved.Load()-s.runHeld.Load()))
		}
		// An ordered subscription's runs (the deliveries that follow a
		// key's head, attempted one after the other) start no worker of
		// their own: with others sharing the journal they do not take
		// work from them, so they are not held to what starts soon.
		ordered := s.ord != nil
		if !ordered {
			want = heads
		}
		if free < 1 || heads < 1 {
			continue
		}
		n := s.reserve(want)
		if n < 1 {
			continue
		}
		wants = append(wants, journal.ClaimWant{Subscription: s.cfg.ID, Limit: int(n), Heads: int(min(heads, n)), Runs: ordered})
		s.lastAsked = time.Now()
		ask = append(ask, asked{s, n, int(min(heads, n))})
	}
	if len(wants) == 0 {
		return 0
	}
	token := claimToken()
	sc.claimMu.Lock()
	defer sc.claimMu.Unlock()
	issued := time.Now()
	claimed, err := sc.store.Claim(ctx, wants, sc.instance, token, sc.takeoverAfter())
	at := int64(issued.Sub(sc.fence.epoch))
	if err == nil && len(claimed) > 0 && time.Since(issued) > sc.contactGap() && (sc.lastContact.Load() < at || sc.contactSince.Load() > at) {
		// Held up (an outage of the journal, this process stopped: no
		// heartbeat check reached the journal while it ran, or one found
		// a gap; a claim merely slow beside working checks is kept): what
		// the claim judged by a staleness decided before may be another
		// instance's work, alive and held in its memory, taken over after
		// this instance's own row was written again. It goes back,
		// unowned: that instance's recheck drops it, and the next claim
		// of whoever is free takes it (found by a review, 2026-12-07).
		ids := make([]string, len(claimed))
		for i, c := range claimed {
			ids[i] = c.ID
		}
		for _, a := range ask {
			a.s.release(a.n)
		}
		if err := sc.giveBack(ctx, func() []string { return ids }); err != nil && ctx.Err() == nil {
			sc.log.Warn("deliveries a held-up claim took stay owned by this instance until it stops", "deliveries", len(ids), "err", err)
		}
		sc.log.Info("a claim held up gave back what it took", "deliveries", len(ids), "took", time.Since(issued).Round(time.Millisecond).String())
		return 0
	}
	if err != nil {
		for _, a := range ask {
			a.s.release(a.n)
			sc.lost.failed(a.s.cfg.ID, "", token, err)
		}
		if ctx.Err() == nil {
			sc.claimFailures.failed(sc.log, "claiming due deliveries failed; retrying", err, "subscriptions", len(ask))
		}
		return 0
	}
	sc.claimFailures.ok(sc.log, "claiming due deliveries works again")
	bySub := make(map[string][]journal.Claimed, len(ask))
	for _, c := range claimed {
		bySub[c.SubscriptionID] = append(bySub[c.SubscriptionID], c)
	}
	for _, a := range ask {
		got := bySub[a.s.cfg.ID]
		a.s.release(a.n - int64(len(got)))
		// All it asked for, or (ordering: entity, whose heads leave most
		// of the limit to runs that may be short or none) every head it
		// asked for: more may be due.
		more := len(got) == int(a.n) || a.s.cfg.Ordering == OrderEntity && a.heads > 0 && headsOf(got) >= a.heads
		if a.s.cfg.Ordering == OrderEntity { // the only ordering that counts ahead
			// Before queue, which may wait for routeMu: the stream may
			// hold it, waiting for ahead to fall (reserveRouted).
			if !more || a.s.ahead.Add(-int64(len(got))) < 0 {
				a.s.ahead.Store(0)
			}
			select {
			case a.s.room <- struct{}{}:
			default:
			}
		}
		if err := sc.queue(ctx, a.s, got); err != nil && ctx.Err() == nil {
			sc.log.Warn("giving back claimed deliveries failed; they stay this instance's until it stops (its exit releases them)", "subscription", a.s.cfg.ID, "err", err)
		}
		if more {
			a.s.backlog.Store(true)
			sc.nudge() // there may be more
		} else {
			a.s.backlog.Store(false)
			if a.s.ord != nil && headsOf(got) < a.heads {
				// Fewer heads than asked: due deliveries may have been
				// turned away behind heads that wait.
				sc.park = append(sc.park, a.s.cfg.ID)
			}
		}
	}
	return len(claimed)
}

// parkBehindHeads parks, for the ordered subscriptions of the last claim
// that took less than they asked, the due deliveries that wait behind a
// head waiting for its retry (journal.Store.Park): the claim no longer
// reads and turns them away on every round. When a whole batch was
// parked, the next round may park more.
func (sc *scheduler) parkBehindHeads(ctx context.Context) {
	subs := sc.park
	sc.lastPark = time.Now()
	n, locked, err := sc.store.Park(ctx, subs, sc.takeoverAfter(), parkBatch)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			sc.log.Warn("parking ordered deliveries behind their keys' heads failed; the claim reads them meanwhile", "err", err)
		}
	case n > 0:
		sc.parkWait = 0
		sc.log.Debug("parked ordered deliveries behind their keys' heads, which wait for a retry", "deliveries", n, "subscriptions", len(subs))
		if n == parkBatch {
			sc.lastPark = time.Time{}
			sc.nudge()
		}
	case locked:
		// Found, but held by another transaction (a head whose outcome
		// is being recorded, a replay's cancel): not "nothing to park".
		// The claims read them until Park takes them: again next poll.
		sc.parkWait = 0
	default:
		sc.parkWait = min(max(2*sc.parkWait, 2*sc.poll), time.Minute)
	}
}

// unpark makes due again the deliveries parked behind heads that have
// finished (journal.Store.Unpark); when a whole batch moved, the next
// round moves more.
func (sc *scheduler) unpark(ctx context.Context) {
	sc.lastUnpark = time.Now()
	n, err := sc.store.Unpark(ctx, unparkBatch)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			sc.log.Warn("making due the ordered deliveries parked behind finished heads failed; retrying", "err", err)
		}
	case n > 0:
		sc.log.Debug("ordered deliveries parked behind finished heads are due again", "deliveries", n)
		if n == unparkBatch {
			sc.lastUnpark = time.Time{}
		}
		sc.nudge()
	}
}

// queue hands what a claim took for s to its workers, in the places
// reserved for them; what s no longer takes (retired by a reload or a
// shutdown since the claim began) goes back to the journal.
//
// Of an ordered key, the claim takes the head and the run behind it
// (journal.Store.Claim): the head goes to the workers and the run waits
// in memory behind it, each in its place, as the deliveries a stream
// routes behind a busy key do; each goes out right after the one before
// it finished.
func (sc *scheduler) queue(ctx context.Context, s *sub, claimed []journal.Claimed) error {
	var giveBack []*task
	var runBack []string
	if s.ord != nil {
		// Each key's claimed deliveries together, in their order (the
		// claim's: position, then id).
		slices.SortStableFunc(claimed, func(a, b journal.Claimed) int {
			return cmp.Or(cmp.Compare(a.OrderingKey, b.OrderingKey), cmp.Compare(a.Position, b.Position), cmp.Compare(a.ID, b.ID))
		})
	}
	for i := 0; i < len(claimed); i++ {
		c := claimed[i]
		t := claimedTask(c)
		t.unkeyed = c.Ordered && !c.Manual && s.ord == nil
		// A manual retry (retry-failed) steps outside the order: its key's
		// state does not count it.
		if c.Ordered && !c.Manual && s.ord != nil {
			t.ordered, t.key, t.claimed = true, c.OrderingKey, true
			var run []*task
			for i+1 < len(claimed) && claimed[i+1].Ordered && !claimed[i+1].Manual && claimed[i+1].OrderingKey == c.OrderingKey {
				i++
				r := claimedTask(claimed[i])
				r.ordered, r.key, r.claimed = true, c.OrderingKey, true
				run = append(run, r)
			}
			if !s.ord.claimedRun(t, run, s, claimed[i].Position) { // sorted: the key's last
				// The key has deliveries in this process's memory (it
				// should not, since the journal let its head go): its
				// run goes back, and the claim after the head's outcome
				// takes it again.
				for _, r := range run {
					s.release(1)
					runBack = append(runBack, r.deliveryID)
				}
			}
		}
		if !s.enqueue(t) {
			giveBack = append(giveBack, t)
		}
	}
	if len(runBack) > 0 {
		if err := sc.giveBack(ctx, func() []string { return runBack }); err != nil {
			return err
		}
	}
	if len(giveBack) == 0 {
		return nil
	}
	return sc.giveBack(ctx, func() []string {
		if s.ord != nil {
			return s.ord.drained(giveBack)
		}
		ids := make([]string, len(giveBack))
		for i, t := range giveBack {
			ids[i] = t.deliveryID
		}
		return ids
	})
}

// headsOf counts what a claim took that can start at once: every
// delivery but those of an ordered key's run (one per key).
func headsOf(claimed []journal.Claimed) int {
	n := 0
	keys := map[string]bool{}
	for _, c := range claimed {
		if !c.Ordered || c.Manual {
			n++
		} else if !keys[c.OrderingKey] {
			keys[c.OrderingKey] = true
			n++
		}
	}
	return n
}

// claimedTask is the task of a delivery a claim took.
func claimedTask(c journal.Claimed) *task {
	trigger := journal.TriggerAuto
	if c.Manual {
		trigger = journal.TriggerManual
	}
	return &task{deliveryID: c.ID, eventID: c.EventID, eventType: c.EventType, body: c.Body, own: c.Own, attempts: c.Attempts, byHand: c.ByHand, trigger: trigger, test: c.Test}
}

// claimToken marks the rows of one claim (journal.Claim).
func claimToken() string { return strconv.FormatUint(rand.Uint64(), 36) }

// lostClaims holds claims that failed: their UPDATE may have committed
// with the answer lost, leaving deliveries owned by this live instance
// and in no queue. The schedule loop gives them back.
type lostClaims struct {
	mu      sync.Mutex
	entries []lostEntry
}

// lostEntry is what failed claims of one subscription or delivery took,
// and when to release it again while it is not settled (a server
// process that ran one may still commit it): soon at first, then less
// often, up to once a minute.
type lostEntry struct {
	journal.LostClaim
	since  time.Time     // when the first of its claims failed
	next   time.Time     // the next release, not before
	wait   time.Duration // since the last release
	warned bool          // that it stays unsettled
}

// lostRetryMax bounds the wait between releases of an unsettled entry,
// and is how long it stays unsettled before a warning.
const lostRetryMax = time.Minute

// failed remembers a claim that failed after it may have committed, so
// the next scheduling round gives back what it took. One entry per
// subscription or delivery, however many claims failed. It does not wake
// the scheduler: a claim failing again at once would make it spin.
func (l *lostClaims) failed(subscription, delivery, token string, err error) bool {
	if !mayHaveCommitted(err) {
		return false
	}
	e := lostEntry{LostClaim: journal.LostClaim{Subscription: subscription, Delivery: delivery, Tokens: []string{token}}, since: time.Now()}
	var ce *journal.ClaimError
	if errors.As(err, &ce) && ce.Backend != 0 {
		e.Backends = []journal.ClaimBackend{{PID: ce.Backend, Sent: ce.Sent}}
	}
	l.mu.Lock()
	l.add(e)
	l.mu.Unlock()
	return true
}

// add merges e into the entry of its subscription or delivery. l.mu is
// held. A claim that failed since the entry's last release makes it due
// at once.
func (l *lostClaims) add(e lostEntry) {
	i := slices.IndexFunc(l.entries, func(x lostEntry) bool {
		return x.Subscription == e.Subscription && x.Delivery == e.Delivery
	})
	if i < 0 {
		l.entries = append(l.entries, e)
		return
	}
	x := &l.entries[i]
	for _, tok := range e.Tokens {
		if !slices.Contains(x.Tokens, tok) {
			x.Tokens = append(x.Tokens, tok)
			x.next, x.wait = time.Time{}, 0
		}
	}
	for _, b := range e.Backends {
		if !slices.Contains(x.Backends, b) {
			x.Backends = append(x.Backends, b)
		}
	}
	x.since = minTime(x.since, e.since)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (l *lostClaims) take() []lostEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries
	l.entries = nil
	return e
}

// mayHaveCommitted reports whether a statement that failed may have
// committed all the same: not when the server refused it with an ERROR
// (one statement is its own transaction, rolled back) nor when it was
// never sent. A FATAL or PANIC says nothing about the statement: a pooler
// such as pgbouncer sends one when its server connection broke, after
// the commit or before it.
func mayHaveCommitted(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return cmp.Or(pgErr.SeverityUnlocalized, pgErr.Severity) != "ERROR"
	}
	var connErr *pgconn.ConnectError
	return !errors.As(err, &connErr) && !pgconn.SafeToRetry(err)
}

// releaseLost gives back what failed claims took. A release that fails
// is tried again on the next round; one made while a claim's server
// process may still commit it (journal.ReleaseLost's settled) again
// after a second, then less often, until it is settled.
func (sc *scheduler) releaseLost(ctx context.Context) {
	lost := sc.lost.take()
	now := time.Now()
	var keep []lostEntry
	defer func() {
		sc.lost.mu.Lock()
		for _, e := range keep {
			sc.lost.add(e)
		}
		sc.lost.mu.Unlock()
	}()
	for i := range lost {
		e := lost[i]
		if now.Before(e.next) {
			keep = append(keep, e)
			continue
		}
		n, settled, err := sc.store.ReleaseLost(ctx, sc.instance, e.LostClaim)
		if err != nil {
			if ctx.Err() == nil {
				sc.log.Warn("could not give back the deliveries of a failed claim; retrying", "subscription", e.Subscription,
					"delivery_id", e.Delivery, "err", err)
			}
			keep = append(keep, lost[i:]...)
			return
		}
		if n > 0 {
			sc.log.Warn("a claim's answer was lost; its deliveries are claimed again", "deliveries", n, "subscription", e.Subscription, "delivery_id", e.Delivery)
		}
		if settled {
			continue
		}
		e.wait = min(max(2*e.wait, time.Second), lostRetryMax)
		e.next = now.Add(e.wait)
		if !e.warned && now.Sub(e.since) >= lostRetryMax {
			e.warned = true
			pids := make([]uint32, len(e.Backends))
			for j, b := range e.Backends {
				pids[j] = b.PID
			}
			sc.log.Warn("a failed claim's server process is still at it; what it takes is given back once it is done",
				"subscription", e.Subscription, "delivery_id", e.Delivery, "server_processes", pids, "failed", now.Sub(e.since).Round(time.Second).String())
		}
		keep = append(keep, e)
	}
}
