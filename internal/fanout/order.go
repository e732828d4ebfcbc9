package fanout

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
)

// Ordering is what order a subscription's deliveries keep.
type Ordering string

// Orderings.
const (
	// OrderNone: deliveries go out in parallel; no order is promised.
	OrderNone Ordering = "none"
	// OrderEntity: the deliveries of one key (a request, a user; see
	// Event.Key) reach the receiver in stream order, each after the
	// previous one finished; different keys go out in parallel.
	OrderEntity Ordering = "entity"
	// OrderSubscription: one delivery at a time, in stream order.
	OrderSubscription Ordering = "subscription"
)

// key returns the ordering key of an event whose own key is eventKey,
// and whether its delivery is ordered at all: under entity an event
// without a key is not.
func (o Ordering) key(eventKey string) (string, bool) {
	switch o {
	case OrderEntity:
		return eventKey, eventKey != ""
	case OrderSubscription:
		return "", true
	}
	return "", false
}

// How ordered delivery works (DESIGN: "ordering")
//
// The journal is the authority: Store.Claim takes an ordered delivery
// only when no earlier delivery of its key is pending or held, and with
// it the run behind it (the key's next claimable deliveries, without a
// gap), which waits in this process's memory behind the head as a
// streamed key's deliveries do (orderState.claimedRun). Memory is a
// fast path for the process that streams (the only one that makes new
// deliveries): a key whose deliveries are all in this process's memory
// needs no journal round trip. Per key, orderState knows
//
//   - active: the delivery handed to the workers (queued or in flight);
//   - waiting: later deliveries, in order, that go out one after the
//     other from memory, each right after the previous one finished
//     (routed by the stream, or a claimed run);
//   - journaled: how many of the key's deliveries wait in the journal
//     (a retry, a spill, held while paused, or left by an earlier
//     process) that this process has not seen finish.
//
// A new delivery of an idle key goes to the workers at once; of a key
// with an active delivery, to its waiting list (keeping its place in the
// subscription's queue, so memory is bounded and the stream is paced by
// the receiver as without ordering); of a key with journaled deliveries
// this process does not hold (it holds a claimed head and its run: once
// a claim took all of the key, the key is back in memory), or with a
// quarter of the queue waiting behind the key already (keyCap), or when
// the queue has no room, to the journal, unowned, where the claim orders
// it.
// When a delivery of a key goes to the journal while earlier
// ones are in memory, those are made visible in the journal first
// (journal.Record.Unhold): pending and owned by a live instance, they
// hold the later one back. When an attempt leads to a retry, the delivery
// stays owned until the key's state records it, then it and the waiting
// deliveries of its key go to the journal (journal.Record.Release), and
// the key waits there; other keys flow. Routing, and these releases, are
// serialized (Dispatcher.routeMu), so the journal writer receives a key's
// records in the order they were decided. The count errs only upwards
// (deliveries of the key finished by another process, or replayed after a
// crash): a key then uses the journal, which is slower but never out of
// order, until the scheduler's periodic recount (Dispatcher.recountOrder)
// brings its count down to what the journal holds.
type orderState struct {
	mu      sync.Mutex
	keys    map[string]*keyState
	waiting int // tasks waiting in memory, all keys (each holds a queue place)
	// keyCap is how many of a key's deliveries from the stream may wait in
	// memory behind it; its later ones go to the journal, from which its
	// runs are claimed. Uncapped, one busy key filled the queue with
	// deliveries that go one at a time, and the stream, waiting for a
	// place while the receiver kept up, went at that key's pace: every
	// key and subscription with it (found by a review, 2026-12-07: 3,000
	// deliveries of one request held the stream 12.8 s instead of 1).
	keyCap int
	// synced: the journal's backlog was read (sync). Until then every
	// delivery goes to the journal, where the claim orders it.
	synced bool
}

type keyState struct {
	active    *task
	waiting   []*task
	journaled int
	lastPos   int64
	claimed   int // deliveries of the key claimed from the journal and not finished
	// inChain counts the claimed deliveries that are active or waiting
	// (a claimed head and the run behind it).
	inChain int
}

// newOrderState is the order of a subscription whose queue holds size
// deliveries: a key may hold a quarter of it.
func newOrderState(size int64) *orderState {
	return &orderState{keys: map[string]*keyState{}, keyCap: int(max(1, size/4))}
}

func (ks *keyState) idle() bool { return ks.active == nil && len(ks.waiting) == 0 && ks.journaled == 0 }

// followsInMemory reports whether a new delivery of the key can wait in
// memory behind its active one: the key has one, and nothing of it waits
// in the journal except what this process claimed and holds in that
// chain. A key whose deliveries went to the journal (a spill, a retry)
// thus comes back to memory as soon as a claim took all of them, instead
// of sending each later one through the journal for as long as they keep
// coming, as in a catch-up, where every claim would find the next.
func (ks *keyState) followsInMemory() bool {
	return ks.active != nil && (ks.journaled == 0 || ks.journaled == ks.inChain && ks.claimed == ks.inChain)
}

// inMemory lists the deliveries of the key in this process's memory.
func (ks *keyState) inMemory() []string {
	var ids []string
	if ks.active != nil {
		ids = append(ids, ks.active.deliveryID)
	}
	for _, t := range ks.waiting {
		ids = append(ids, t.deliveryID)
	}
	return ids
}

func (o *orderState) get(key string) *keyState {
	ks := o.keys[key]
	if ks == nil {
		ks = &keyState{}
		o.keys[key] = ks
	}
	return ks
}

func (o *orderState) forget(key string, ks *keyState) {
	if ks.idle() {
		delete(o.keys, key)
	}
}

// route is where admit sends a delivery.
type admission uint8

const (
	toWorkers admission = iota // the key was idle: the first attempt now
	toWaiting                  // behind the key's active delivery, in memory
	toJournal                  // unowned in the journal, claimed in order
)

// admit decides where a new delivery t of its key goes, and gives it its
// position: pos, or later than every earlier delivery of the key. room
// is a place reserved in the subscription's queue for it (nil: none): a
// delivery kept in memory, going to the workers or waiting behind its
// key, keeps its place, so memory stays bounded by the queue's size and
// the stream is paced by the receiver as without ordering. unhold lists
// the key's deliveries in memory that the journal must show first.
func (o *orderState) admit(t *task, pos int64, room *sub) (where admission, position int64, unhold []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ks := o.get(t.key)
	position = max(pos, ks.lastPos+1)
	ks.lastPos = position
	switch {
	case !o.synced || room == nil:
	case ks.idle():
		ks.active = t
		return toWorkers, position, nil
	case ks.followsInMemory() && len(ks.waiting) < o.keyCap:
		t.place = room
		ks.waiting = append(ks.waiting, t)
		o.waiting++
		return toWaiting, position, nil
	}
	ks.journaled++
	return toJournal, position, ks.inMemory()
}

// undo forgets a delivery admitted but never journaled (the journal
// writer refused it: the process is stopping).
func (o *orderState) undo(t *task, where admission) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ks := o.keys[t.key]
	if ks == nil {
		return
	}
	switch where {
	case toWorkers:
		if ks.active == t {
			ks.active = nil
		}
	case toWaiting:
		for i, w := range ks.waiting {
			if w == t {
				ks.waiting = append(ks.waiting[:i], ks.waiting[i+1:]...)
				o.waiting--
				t.freePlace()
				break
			}
		}
	default:
		ks.journaled = max(0, ks.journaled-1)
	}
	o.forget(t.key, ks)
}

// held records a delivery of the key recorded as held (its subscription
// is paused): it waits in the journal, so the key does too.
func (o *orderState) held(key string, pos int64) (position int64, unhold []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ks := o.get(key)
	position = max(pos, ks.lastPos+1)
	ks.lastPos = position
	ks.journaled++
	return position, ks.inMemory()
}

// claimedRun records a key's head taken from the journal by the
// scheduler, and the run the claim took behind it (in order; may be
// empty). The head becomes the key's active delivery, and the run waits
// in memory behind it, each in the queue place reserved for it in room,
// as the deliveries routed behind a busy key do: each goes to the worker
// that finished the one before it. It returns false, and records the
// head alone, when the key already has deliveries in memory: the run
// then goes back to the journal. last is the latest position among them.
func (o *orderState) claimedRun(head *task, run []*task, room *sub, last int64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	// The claimed deliveries themselves are in the journal, unfinished:
	// the key is not idle until they finish, whatever the count said.
	ks := o.get(head.key)
	// A delivery this process routes next for the key goes after them,
	// whatever its clock says: positioned by the clock of the process
	// that routed them, they may lie ahead of this one's (a standby
	// taking over the stream on a host whose clock is behind placed the
	// key's next delivery before its claimed head, and the journal then
	// sent it first once both were there: found by a review).
	ks.lastPos = max(ks.lastPos, last)
	ks.journaled = max(ks.journaled, 1+len(run))
	ks.claimed++
	if ks.active != nil || len(ks.waiting) > 0 {
		return len(run) == 0
	}
	ks.active = head
	ks.inChain = 1 + len(run)
	for _, t := range run {
		t.place = room
	}
	room.runHeld.Add(int64(len(run)))
	ks.claimed += len(run)
	ks.waiting = append(ks.waiting, run...)
	o.waiting += len(run)
	return true
}

// finished records the end of an attempt of t; retrying says the
// delivery now waits in the journal for its next attempt. It returns the
// key's next delivery to attempt now (nil: none), the deliveries to give
// back to the journal, and whether due work of the key may now be
// claimable there.
func (o *orderState) finished(t *task, retrying, retired bool) (next *task, release []string, nudge bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ks := o.keys[t.key]
	if ks == nil {
		return nil, nil, t.claimed
	}
	if t.claimed {
		ks.claimed = max(0, ks.claimed-1)
	}
	switch {
	case t.claimed && !retrying:
		ks.journaled = max(0, ks.journaled-1)
	case !t.claimed && retrying:
		ks.journaled++
	}
	wasActive := ks.active == t
	if wasActive {
		ks.active = nil
		if t.claimed {
			ks.inChain = max(0, ks.inChain-1)
		}
	}
	if retrying || retired {
		// The later deliveries of the key wait in the journal behind it.
		release = o.giveUpWaiting(ks)
	} else if wasActive && len(ks.waiting) > 0 {
		// Only the key's delivery in memory hands over to the next one: a
		// delivery claimed from the journal is not the one they wait for.
		next = ks.waiting[0]
		ks.waiting = ks.waiting[1:]
		o.waiting--
		next.freePlace() // it leaves the queue's count, as a task taken by a worker does
		ks.active = next
	}
	// The next of the key may be claimable once this outcome is written,
	// unless it follows from memory (a run, or the stream's).
	if t.claimed && !retrying && next == nil || ks.active == nil && ks.journaled > 0 {
		nudge = true
	}
	o.forget(t.key, ks)
	return next, release, nudge
}

// holds reports whether a delivery of key is in this process's memory
// (queued, in flight, or waiting behind another): then no other delivery
// of the key can start anywhere until it finishes.
func (o *orderState) holds(key string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	ks := o.keys[key]
	return ks != nil && (ks.active != nil || len(ks.waiting) > 0 || ks.claimed > 0)
}

// drained records tasks taken out of a retired subscription's queue,
// never attempted: they and the waiting deliveries of their keys go back
// to the journal. It returns what to release.
func (o *orderState) drained(tasks []*task) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var release []string
	for _, t := range tasks {
		release = append(release, t.deliveryID)
		if !t.ordered {
			continue
		}
		ks := o.keys[t.key]
		if ks == nil {
			continue
		}
		if ks.active == t {
			ks.active = nil
			if t.claimed {
				ks.inChain = max(0, ks.inChain-1)
			}
		}
		if t.claimed {
			ks.claimed = max(0, ks.claimed-1) // back in the journal, counted there
		} else {
			ks.journaled++
		}
		release = append(release, o.giveUpWaiting(ks)...)
	}
	return release
}

// giveUpWaiting sends the key's waiting deliveries to the journal (the
// caller releases them there) and frees their places.
func (o *orderState) giveUpWaiting(ks *keyState) []string {
	ids := make([]string, 0, len(ks.waiting))
	for _, w := range ks.waiting {
		ids = append(ids, w.deliveryID)
		w.freePlace()
		if w.claimed {
			// Of a claimed run: counted in the journal already.
			ks.claimed = max(0, ks.claimed-1)
			ks.inChain = max(0, ks.inChain-1)
		} else {
			ks.journaled++
		}
	}
	o.waiting -= len(ks.waiting)
	ks.waiting = nil
	return ids
}

// inMemory lists the deliveries of every key in this process's memory:
// active (queued or in flight) and waiting.
func (o *orderState) inMemory() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var ids []string
	for _, ks := range o.keys {
		ids = append(ids, ks.inMemory()...)
	}
	return ids
}

// revoke gives up the keys of which a delivery in this process's memory
// is lost (another process took it over while this one's heartbeat was
// stale, Dispatcher.reown): their waiting deliveries go back to the
// journal, which orders them behind what the other process holds, and so
// does their active one, unless it is in flight (not idle: neither queued
// nor held at the fence) and still this process's, when it finishes as it
// would have. It returns what to release, the active deliveries no longer
// to attempt, and whether it gave up any key.
func (o *orderState) revoke(lost, idle map[string]bool) (release, dropped []string, gaveUp bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for key, ks := range o.keys {
		a := ks.active
		if !(a != nil && lost[a.deliveryID] || slices.ContainsFunc(ks.waiting, func(w *task) bool { return lost[w.deliveryID] })) {
			continue
		}
		gaveUp = true
		if a != nil && (lost[a.deliveryID] || idle[a.deliveryID]) {
			ks.active = nil
			dropped = append(dropped, a.deliveryID)
			release = append(release, a.deliveryID) // a no-op in the journal for a lost one: not this owner's
			if a.claimed {
				ks.inChain = max(0, ks.inChain-1)
				ks.claimed = max(0, ks.claimed-1) // counted in the journal already
			} else {
				ks.journaled++
			}
		}
		release = append(release, o.giveUpWaiting(ks)...)
		o.forget(key, ks)
	}
	return release, dropped, gaveUp
}

// sync raises the journaled counts to what the journal holds for each
// key, not owned by this process (see Dispatcher.SyncOrder). It only
// raises them: a delivery put to the journal writer and not yet written
// is counted already.
func (o *orderState) sync(backlog map[string]journal.KeyBacklog) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for key, b := range backlog {
		ks := o.get(key)
		// The backlog leaves out what this process owns, and so the
		// deliveries it claimed, which the count includes: without them
		// the count could stay below what the journal holds for the key
		// (and followsInMemory let a new delivery pass one there).
		ks.journaled = max(ks.journaled, b.Count+ks.claimed)
		ks.lastPos = max(ks.lastPos, b.MaxPosition)
	}
	o.synced = true
}

// recountable lists up to limit keys whose count of journaled deliveries
// may be too high and can be checked: keys with nothing in memory and no
// claimed delivery in flight.
func (o *orderState) recountable(limit int) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var keys []string
	for k, ks := range o.keys {
		if ks.journaled > 0 && ks.active == nil && len(ks.waiting) == 0 && ks.claimed == 0 {
			keys = append(keys, k)
			if len(keys) == limit {
				break
			}
		}
	}
	return keys
}

// recount sets the keys' counts to what the journal holds. The caller
// holds routeMu and read the journal after a barrier, so nothing was
// routed to these keys meanwhile and nothing put for them is unwritten; a
// key that got a claimed delivery or a delivery in memory since it was
// listed is left as it is (its count could move under the read).
func (o *orderState) recount(keys []string, counts map[string]int) (lowered int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, k := range keys {
		ks := o.keys[k]
		if ks == nil || ks.active != nil || len(ks.waiting) > 0 || ks.claimed > 0 {
			continue
		}
		if n := counts[k]; n < ks.journaled {
			ks.journaled = n
			lowered++
			o.forget(k, ks)
		}
	}
	return lowered
}

func (o *orderState) unsync() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.synced = false
}

func (o *orderState) isSynced() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.synced
}

// OrderStatus is a subscription's ordered delivery as this process sees
// it.
type OrderStatus struct {
	// Keys is how many keys have deliveries in memory or in the journal;
	// Waiting, how many deliveries wait in memory behind another of their
	// key; JournalKeys, how many keys wait in the journal (for a retry, a
	// spill, a pause).
	Keys, Waiting, JournalKeys int
}

func (o *orderState) status() OrderStatus {
	o.mu.Lock()
	defer o.mu.Unlock()
	st := OrderStatus{Keys: len(o.keys), Waiting: o.waiting}
	for _, ks := range o.keys {
		if ks.journaled > 0 {
			st.JournalKeys++
		}
	}
	return st
}

// positions gives deliveries their position: the moment they were routed,
// in microseconds, strictly increasing within the process (and from one
// process to the next that streams, as long as clocks do not go back;
// orderState.admit also keeps each key's positions increasing). The
// process that streams routes in stream order, so positions follow the
// commit order and the order within each transaction, and an SLA event
// falls where it fired.
type positions struct{ last atomic.Int64 }

func (p *positions) next(now time.Time) int64 {
	us := now.UnixMicro()
	for {
		last := p.last.Load()
		n := max(us, last+1)
		if p.last.CompareAndSwap(last, n) {
			return n
		}
	}
}
