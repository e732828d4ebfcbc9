package fanout

import (
	"bytes"
	"fmt"
	"maps"
	"math"
	"net/http"
	"path"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/dzdesk/dzhook/internal/filter"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/procs"
	"github.com/dzdesk/dzhook/internal/rawsock"
	"github.com/dzdesk/dzhook/internal/transform"
	"github.com/dzdesk/dzhook/signer"
)

// Subscription is one webhook endpoint, as configured.
type Subscription struct {
	ID  string
	URL string
	// Events are exact names or globs (request.*, *).
	Events []string
	// Secret signs X-DZDESK-Signature.
	Secret []byte
	// StandardWebhooks adds webhook-id, webhook-timestamp and
	// webhook-signature (the secret must be whsec_…).
	StandardWebhooks bool
	// Active false: nothing is sent.
	Active bool
	// QueueWhileInactive keeps deliveries while inactive or paused and
	// sends them, oldest first, on resume; otherwise they are skipped.
	QueueWhileInactive bool
	// Filter is a CEL expression over the envelope; "" matches all.
	Filter string
	// Headers are added to every POST.
	Headers map[string]string
	// Ordering is what order its deliveries keep (zero: none).
	Ordering Ordering
	// Transform is a CEL expression that makes the body from the
	// envelope; Format a preset's name (slack, teams, discord; "" or
	// dzdesk: the envelope). A transform overrides the format.
	Transform, Format string
	// Method is the HTTP method: POST ("") or PUT.
	Method string
	// RateLimit caps the attempts started (zero: none); see pacer.
	RateLimit Rate
	// Source is where it is defined ("config" or "runtime"); Description
	// is a runtime subscription's note. Both are shown, not used.
	Source, Description string
	// PreviousSecret is the secret before a rotation: Standard Webhooks
	// deliveries are signed with it too until PreviousUntil, and
	// X-DZDESK-Signature (one signature) uses it until SwitchAt.
	PreviousSecret          []byte
	PreviousUntil, SwitchAt time.Time
	// RetiredSecrets are the secrets replaced by rotations made during an
	// earlier one's overlap (newest first): webhook-signature carries a
	// signature with each too until PreviousUntil, since a Standard
	// Webhooks receiver holds the one secret it installed last, which
	// may be any of them. X-DZDESK-Signature never uses them.
	RetiredSecrets [][]byte
	// Proxy is the forward proxy of this subscription's attempts
	// (proxy.go); "" uses Config.Proxy.
	Proxy string
	// ClientCert is presented to a receiver that asks for a client
	// certificate (mutual TLS); zero: none. Its files are read again
	// when they change (tls.go).
	ClientCert ClientCert
	// Traceparent sends a W3C traceparent header with each attempt
	// while tracing is on (Config.TracerProvider): the attempt's HTTP
	// client span, so the receiver's trace continues it.
	Traceparent bool
}

// Equal reports whether two configurations are the same (a reload keeps
// a subscription whose configuration did not change running as it is).
func (s Subscription) Equal(o Subscription) bool {
	return s.ID == o.ID && s.URL == o.URL && slices.Equal(s.Events, o.Events) && bytes.Equal(s.Secret, o.Secret) &&
		s.StandardWebhooks == o.StandardWebhooks && s.Active == o.Active && s.QueueWhileInactive == o.QueueWhileInactive &&
		s.Filter == o.Filter && maps.Equal(s.Headers, o.Headers) && s.Ordering == o.Ordering &&
		s.Transform == o.Transform && s.Format == o.Format && s.Method == o.Method && s.RateLimit == o.RateLimit &&
		s.Source == o.Source && s.Description == o.Description && bytes.Equal(s.PreviousSecret, o.PreviousSecret) &&
		slices.EqualFunc(s.RetiredSecrets, o.RetiredSecrets, bytes.Equal) && s.PreviousUntil.Equal(o.PreviousUntil) && s.SwitchAt.Equal(o.SwitchAt) &&
		s.Proxy == o.Proxy && s.ClientCert == o.ClientCert && s.Traceparent == o.Traceparent
}

// signing returns the secret of X-DZDESK-Signature and the keys of
// webhook-signature at now: during a rotation's overlap Standard Webhooks
// carries one signature per secret (receivers verify against either),
// and X-DZDESK-Signature, which carries one, switches at SwitchAt.
func (s *sub) signing(now time.Time) (secret []byte, standard [][]byte) {
	secret = s.cfg.Secret
	overlap := len(s.cfg.PreviousSecret) > 0 && now.Before(s.cfg.PreviousUntil)
	if overlap && now.Before(s.cfg.SwitchAt) {
		secret = s.cfg.PreviousSecret
	}
	n := len(s.standardKeys)
	if !overlap {
		n = min(n, 1)
	}
	return secret, s.standardKeys[:n:n] // shared with every attempt: no room to append into
}

// sub is a subscription at run time: its queue, workers' client, health.
type sub struct {
	cfg     Subscription
	tag     string // ids.SubscriptionTag(cfg.ID): a hash, made once, not per delivery
	filter  *filter.Program
	shape   *transform.Transform // nil: the envelope is sent as it is
	method  string
	pace    *pacer // nil: no rate limit
	headers http.Header
	// scrub: what the subscription sends that a receiver's answer may
	// quote back and the history must not keep (scrub.go).
	scrub scrubber

	// filterFailed counts the events the filter failed on since the last
	// WARN about it, at filterToldAt (unix nanoseconds); see filterFailure.
	filterFailures tally
	// transformFailures: likewise for the transform failing on events
	// (deliver.unsent).
	transformFailures tally

	// standardKeys are the Standard Webhooks keys of cfg.Secret and,
	// during a rotation, of cfg.PreviousSecret and cfg.RetiredSecrets
	// (made once, not per attempt); none: no Standard Webhooks headers.
	standardKeys [][]byte
	client       *retryablehttp.Client

	// queue holds what the scheduler claimed from the journal (retries,
	// spilled and replayed deliveries) and an ordered subscription's
	// every delivery; live the stream's deliveries of an unordered
	// subscription, routed from memory. Workers take live first (one
	// take in fairEvery looks at queue first, so a steady stream does not
	// starve retries): a replay or a backlog claimed into the queue never
	// holds up what was just committed. An ordered subscription has one
	// lane: its key state decides what goes out when. Both lanes share
	// the places counted by reserved, and each can hold them all.
	queue    chan *task
	live     chan *task
	takes    atomic.Uint64 // tasks taken, for next's fairness
	reserved atomic.Int64  // queue places taken or promised
	size     int64
	room     chan struct{} // a worker took a task: there may be room
	// ahead estimates the ordered deliveries the stream sent to the
	// journal, behind their keys, that no claim of this process took yet
	// (less what claims took; zeroed when a claim finds less than it
	// asked for). See reserveRouted.
	ahead atomic.Int64
	// bell, waiter, sleeping, idle and promote are how an idle worker is
	// woken for a task (next, wake); bell is nil where the system has
	// none, or before the workers start and after they end (under mu).
	bell     *rawsock.Bell
	ring     chan struct{} // the bell's stand-in on one processor
	onRing   atomic.Bool   // the waiter sleeps on ring, not on the bell
	waiter   atomic.Bool   // a worker holds the bell's role
	sleeping atomic.Bool   // that worker sleeps on the bell, or is about to
	idle     atomic.Int32  // workers waiting for promote
	promote  chan struct{} // calls an idle worker when the bell's is busy
	workers  atomic.Int32  // running, to close the bell after the last
	// backlog is set while due work of this subscription waits in the
	// journal, so workers that empty the queue wake the scheduler, and
	// the stream leaves them room to claim it (reserveRouted).
	backlog atomic.Bool
	// latency is an exponential moving average of attempt durations (µs)
	// and lastFailed whether the last attempt failed: together they say
	// whether the receiver keeps up (see keepsUp).
	latency    atomic.Int64
	lastFailed atomic.Bool
	// busy holds, per worker, when its attempt in flight started (unix
	// nanoseconds; 0 when idle): a receiver that stopped answering shows
	// as an old attempt long before the first timeout comes back.
	busy []atomic.Int64

	// ord is the per-key state of an ordered subscription (nil: none),
	// shared by the generations of a subscription a reload replaces.
	ord *orderState

	stop chan struct{} // closed by retire: the workers stop
	wg   sync.WaitGroup
	// stats, like ord, is shared by the generations of a subscription a
	// reload replaces: its history is the subscription's, not its
	// configuration's, and the old generation's last attempts count too.
	stats *stats

	mu            sync.Mutex
	retired       bool // stopped by a reload or shutdown: its queue takes nothing more
	state         journal.Health
	paused        bool
	lastSuccessAt time.Time
	lastFailureAt time.Time
	lastStatus    int
	lastError     string
	// healthWritten is when this process last journaled the
	// subscription's health (see deliverer.health).
	healthWritten time.Time
	// flagsGen counts this process's own changes of paused and of the
	// disabled state (pause, resume, a 410), and disabledAt is when it
	// last disabled the subscription: syncFlags adopts another process's
	// changes, not a journal that has not caught up with these.
	flagsGen   uint64
	disabledAt time.Time
	// healthGen counts this process's own moves between healthy and
	// failing (deliverer.health), and healthAt is when it last made one:
	// syncFlags adopts another process's, not a journal that has not
	// caught up with these.
	healthGen uint64
	healthAt  time.Time
	// refusedInARow counts this process's deliveries in a row that
	// failed at once, their answer not retried (a 4xx): no schedule is
	// used up, and a receiver refusing them all (a wrong secret's 401)
	// never made the subscription failing (finalFailuresFailing).
	refusedInARow int

	// runHeld counts the places of reserved held by claimed runs waiting
	// behind their heads (orderState.claimedRun): no worker starts them
	// until the one before finished.
	runHeld atomic.Int64
	// lastAsked is when the scheduler last asked a claim for this
	// subscription (its goroutine alone reads and writes it).
	lastAsked time.Time
}

// task is one attempt to make.
type task struct {
	deliveryID, eventID, eventType string
	// body is what the attempt sends: the event's envelope, or the
	// delivery's own body (own) once a transform made it.
	body []byte
	own  bool
	// fresh: own was made at this attempt (it goes to the journal with
	// the outcome); shapeErr: the transform failed or skipped.
	fresh    bool
	shapeErr error
	attempts int // attempts made before this one
	byHand   int // of those, made by hand (manual): the schedule does not count them
	trigger  journal.Trigger
	test     bool
	// keepNext, for a manual retry of a delivery still on its schedule:
	// when its next scheduled attempt is due (see Attempted.KeepNext).
	keepNext time.Time
	// ordered: a delivery of an ordered subscription, with its key;
	// claimed: taken from the journal by the scheduler (not routed from
	// memory).
	ordered bool
	key     string
	claimed bool
	// unkeyed: claimed as an ordered delivery of a subscription no longer
	// ordered (a reload turned it off): its outcome makes its key's next
	// delivery claimable, so it wakes the scheduler (afterOrdered).
	unkeyed bool
	// place is the subscription whose queue place a delivery waiting
	// behind its key holds (nil: none).
	place *sub
	// durable, when set, is told once the outcome is journaled: an
	// operator's request returns only then, so its next one sees it.
	durable chan error
	// event is the span of the dispatch that made the task (nil when
	// tracing is off, or the task was claimed from the journal): a
	// pointer, so that a task grows by one word for it.
	event *eventSpan
}

// matches reports whether the subscription's patterns select an event
// type.
func (s *sub) matches(eventType string) bool {
	for _, p := range s.cfg.Events {
		if p == eventType {
			return true
		}
		if ok, _ := path.Match(p, eventType); ok {
			return true
		}
	}
	return false
}

// accepting reports whether deliveries are sent now: active, not paused,
// not disabled.
func (s *sub) accepting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.heldBy() == ""
}

// heldBy says why the subscription's deliveries wait, or "" when they are
// sent now (accepting); s.mu held.
func (s *sub) heldBy() string {
	switch {
	case s.paused:
		return HeldPaused
	case !s.cfg.Active:
		return HeldInactive
	case s.state == journal.Disabled:
		return HeldDisabled
	}
	return ""
}

// Why a subscription's deliveries wait (SubscriptionStatus.Held).
const (
	HeldPaused   = "paused"   // paused by an operator
	HeldInactive = "inactive" // active: false
	HeldDisabled = "disabled" // a 410 Gone turned it off
)

// enqueue hands a task to the workers, in a place reserved before. It
// refuses once the subscription is retired: nobody would take the task.
func (s *sub) enqueue(t *task) bool {
	return s.put(t, false)
}

// enqueueLive is enqueue for a delivery the stream routed from memory:
// in the live lane, unless the subscription is ordered.
func (s *sub) enqueueLive(t *task) bool {
	return s.put(t, s.ord == nil)
}

func (s *sub) put(t *task, live bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.retired {
		s.release(1)
		return false
	}
	// Never blocks: the place was reserved, and either lane can hold
	// every place.
	if live {
		s.live <- t
	} else {
		s.queue <- t
	}
	s.wake()
	return true
}

// next waits for a worker's next task, the live lane's first (see
// sub.queue); nil once the subscription is retired.
//
// With a bell, workers never wait on the lanes themselves, so a task put
// there readies nobody directly: while every worker is idle, one of them
// (the waiter) sleeps on the bell, and the others on promote. put rings
// the bell when the waiter sleeps (the waiter then runs on the thread of
// the goroutine that put the task, once it sleeps: no thread is woken
// for the hand-over, rawsock.Bell), and calls a worker through promote
// when the waiter is already awake and more work comes.
//
// On one processor (procs.One) the waiter sleeps on a channel, ring,
// instead: a goroutine readied then wakes no thread, and the hand-over
// makes no system call (the bell makes three: its write, its read, and
// the poller's look). The waiter's role stays: the same worker takes
// the tasks that come one at a time, its stack warm, rather than each
// idle worker in turn as a channel's waiters are served.
func (s *sub) next() *task {
	for {
		if t := s.take(); t != nil {
			return t
		}
		b := s.bell
		if b == nil {
			return s.wait()
		}
		if s.waiter.CompareAndSwap(false, true) {
			bellHook("waiter")
			if t, ok := s.waitBell(b); ok {
				return t
			}
			continue
		}
		// wake looks at idle after it put a task; this looks at the
		// lanes after it counted itself: one of the two sees the other.
		s.idle.Add(1)
		if s.queued() > 0 || s.stopped() || !s.waiter.Load() {
			s.idle.Add(-1)
			if s.stopped() {
				return nil
			}
			continue
		}
		select {
		case <-s.promote:
		case <-s.stop:
		}
		s.idle.Add(-1)
	}
}

// take takes a task if one waits, the live lane's first but one take in
// fairEvery; nil if none.
func (s *sub) take() *task {
	first, then := s.live, s.queue
	if s.takes.Add(1)%fairEvery == 0 {
		first, then = s.queue, s.live
	}
	select {
	case t := <-first:
		return t
	default:
	}
	select {
	case t := <-then:
		return t
	default:
		return nil
	}
}

// oneProcessor is procs.One unless a test set testOneProcessor to drive
// either way of sleeping.
func oneProcessor() bool {
	if f := testOneProcessor.Load(); f != nil {
		return (*f)()
	}
	return procs.One()
}

var testOneProcessor atomic.Pointer[func() bool]

// wait waits on the lanes (no bell).
func (s *sub) wait() *task {
	select {
	case <-s.stop:
		return nil
	case t := <-s.live:
		return t
	case t := <-s.queue:
		return t
	}
}

// waitBell is the waiter's: it sleeps on the bell until a task is put or
// the subscription is retired. ok false: woken, look again.
func (s *sub) waitBell(b *rawsock.Bell) (t *task, ok bool) {
	defer s.waiter.Store(false)
	// Where to sleep is chosen before sleeping is set: wake reads it
	// after it cleared sleeping.
	onRing := oneProcessor()
	s.onRing.Store(onRing)
	// wake looks at sleeping after it put a task; this looks at the
	// lanes after it set it: one of the two sees the other.
	s.sleeping.Store(true)
	if t := s.take(); t != nil {
		bellHook("took")
		if !s.sleeping.CompareAndSwap(true, false) {
			// A put rang for its task while this one took another: the
			// ring is spent on nobody, so an idle worker is called in
			// its place. (Not the bell: outside mu, the last worker
			// may be closing it.)
			s.promoteOne()
		}
		return t, true
	}
	if s.stopped() {
		s.sleeping.Store(false)
		return nil, true
	}
	if onRing {
		select {
		case <-s.ring:
		case <-s.stop:
		}
		s.sleeping.Store(false)
		return nil, false
	}
	if err := b.Wait(); err != nil { // closed: not while a worker runs
		s.sleeping.Store(false)
		return s.wait(), true
	}
	s.sleeping.Store(false)
	return nil, false
}

// wake, under mu after a task was put, wakes a worker for it: the waiter
// if it sleeps, else an idle one. Without a bell the lanes ready a
// waiting worker themselves.
func (s *sub) wake() {
	if s.bell == nil {
		return
	}
	if s.sleeping.Load() && s.sleeping.CompareAndSwap(true, false) {
		if s.onRing.Load() {
			select {
			case s.ring <- struct{}{}:
			default: // a ring spent on nobody is there: it wakes the waiter
			}
			return
		}
		_ = s.bell.Ring()
		return
	}
	s.promoteOne()
}

// testBellHook, set by a test, is called at two points of the wake
// protocol to hold an interleaving there; nil otherwise.
var testBellHook atomic.Pointer[func(at string)]

func bellHook(at string) {
	if h := testBellHook.Load(); h != nil {
		(*h)(at)
	}
}

// promoteOne calls a worker waiting in promote, if any.
func (s *sub) promoteOne() {
	if s.idle.Load() > 0 {
		select {
		case s.promote <- struct{}{}:
		default: // as many calls wait as there are workers
		}
	}
}

// fairEvery: one take in fairEvery prefers the queue to the live lane.
const fairEvery = 8

// queued is how many tasks wait in the two lanes.
func (s *sub) queued() int { return len(s.live) + len(s.queue) }

// yield puts t, the next delivery of an ordered key, in the queue when
// other work waits there, and reports whether it did: one key's chain (a
// run claimed from the journal, a streamed key kept busy) then does not
// keep a worker from the other keys' deliveries queued behind it. t is
// still the only delivery of its key that may start; a worker takes it
// in its turn.
func (s *sub) yield(t *task) bool {
	if s.queued() == 0 || s.reserve(1) != 1 {
		return false
	}
	return s.enqueue(t) // retired: the place is released, and the caller gives t up
}

// retire stops the subscription: its workers end after their attempts in
// flight, and its queue takes nothing more.
func (s *sub) retire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.retired {
		s.retired = true
		close(s.stop)
		if s.bell != nil {
			_ = s.bell.Ring() // the waiter looks at stop again
		}
	}
}

// reserve takes n places in the queue, or as many as are free; it
// returns how many it took.
func (s *sub) reserve(n int64) int64 {
	for {
		cur := s.reserved.Load()
		free := s.size - cur
		if free <= 0 {
			return 0
		}
		take := min(n, free)
		if s.reserved.CompareAndSwap(cur, cur+take) {
			return take
		}
	}
}

// reserveRouted takes a place in the queue for a delivery the stream
// routes. Under ordering: entity, while due work waits in the journal
// (backlog: the stream sent some there, or the last claim took all it
// asked for), the stream gives the claims their share:
//
//   - It takes places only up to half the queue. In a catch-up it would
//     otherwise take every place a worker frees, the scheduler's claims
//     (each for half the room left) would find none, and keys sent to the
//     journal would wait there until the catch-up ended.
//   - It takes none while it has sent a queue's worth of ordered
//     deliveries to the journal that no claim has taken back (ahead). An
//     ordered key's deliveries go to the journal while some of the key
//     wait there (after a spill, say); those need no place, so without
//     this the stream sent them there as fast as it read, much faster
//     than claims take them back.
//
// Dispatcher.reserve then waits for room as for a full queue, while the
// receiver keeps up: the stream keeps the pace of the deliveries. Other
// subscriptions keep the stream's first claim on any free place: their
// backlogs (retries, a replay, a spill) must not hold up what was just
// committed, and nothing of theirs waits in the journal behind a key.
// Nor does a key parked behind a retry pace the stream: the claims find
// less than they ask for, which zeroes ahead and clears the backlog.
func (s *sub) reserveRouted() bool {
	if s.cfg.Ordering == OrderEntity && s.backlog.Load() && (s.ahead.Load() >= s.size || s.reserved.Load() >= max(1, s.size/2)) {
		return false
	}
	return s.reserve(1) == 1
}

// filterQueued goes through the tasks waiting in the two lanes once: those
// drop says drop leave them (their places released), the others are put
// back in their lane, behind what was put meanwhile. It returns the tasks
// it saw. (Dispatcher.reown: the workers wait at the fence meanwhile.)
func (s *sub) filterQueued(drop func(*task) bool) []*task {
	var seen []*task
	for range s.queued() {
		var t *task
		live := false
		select {
		case t = <-s.live:
			live = true
		case t = <-s.queue:
		default:
			return seen // taken by workers meanwhile
		}
		seen = append(seen, t)
		if drop != nil && drop(t) {
			s.release(1)
			continue
		}
		s.mu.Lock()
		// Never blocks: the task kept its place.
		if live {
			s.live <- t
		} else {
			s.queue <- t
		}
		s.wake()
		s.mu.Unlock()
	}
	return seen
}

// drainQueue empties the queue of a stopped subscription and returns the
// deliveries to give back to the journal: those that waited there (and,
// for an ordered subscription, the waiting deliveries of their keys).
func (s *sub) drainQueue() []string {
	tasks := s.takeQueued(0)
	if s.ord != nil {
		return s.ord.drained(tasks)
	}
	return taskIDs(tasks)
}

// takeQueued takes out of both lanes what waits there beyond keep,
// releasing their places.
func (s *sub) takeQueued(keep int) []*task {
	var tasks []*task
	for s.queued() > keep {
		select {
		case t := <-s.live:
			tasks = append(tasks, t)
		case t := <-s.queue:
			tasks = append(tasks, t)
		default:
			return tasks // taken by workers meanwhile
		}
		s.release(1)
	}
	return tasks
}

func taskIDs(tasks []*task) []string {
	ids := make([]string, len(tasks))
	for i, t := range tasks {
		ids[i] = t.deliveryID
	}
	return ids
}

// trimQueue takes out of the queue of an unordered subscription what waits
// there beyond keep, and returns their ids, to give back to the journal.
func (s *sub) trimQueue(keep int64) []string { return taskIDs(s.takeQueued(int(keep))) }

// stopped reports whether the subscription was retired, without a lock:
// its workers check it before every attempt.
func (s *sub) stopped() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// isRetired reports whether the subscription was stopped.
func (s *sub) isRetired() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.retired
}

// release gives back places reserved and not used.
func (s *sub) release(n int64) { s.reserved.Add(-n) }

// freePlace gives back the queue place a waiting delivery held, and says
// there is room, as a worker taking a task from the queue does.
func (t *task) freePlace() {
	if s := t.place; s != nil {
		t.place = nil
		if t.claimed {
			s.runHeld.Add(-1)
		}
		s.release(1)
		select {
		case s.room <- struct{}{}:
		default:
		}
	}
}

// fastReceiver is the attempt time under which a receiver that answers
// 2xx is considered to keep up: Dispatch waits for room in its queue
// rather than sending its deliveries the slow way, through the journal.
const fastReceiver = 50 * time.Millisecond

// stuckAttempt is how old an attempt in flight may be before its receiver
// counts as not keeping up, whatever its average.
const stuckAttempt = 250 * time.Millisecond

// soon is how many deliveries of the subscription its workers start
// soon: four per worker. While other processes share the journal a
// process queues no more than that (Dispatcher.reserve, scheduler.claim).
func (s *sub) soon() int64 { return int64(4 * len(s.busy)) }

// keepsUp reports whether the receiver answers, and fast, right now: its
// last attempt succeeded, attempts take little time on average, and none
// in flight has been waiting long (a receiver that stopped answering).
func (s *sub) keepsUp() bool {
	if s.lastFailed.Load() || time.Duration(s.latency.Load())*time.Microsecond >= fastReceiver {
		return false
	}
	oldest := time.Now().Add(-stuckAttempt).UnixNano()
	for i := range s.busy {
		if since := s.busy[i].Load(); since != 0 && since < oldest {
			return false
		}
	}
	return true
}

// observe records an attempt's duration and outcome.
func (s *sub) observe(d time.Duration, ok bool) {
	us := d.Microseconds()
	for {
		cur := s.latency.Load()
		next := us
		if cur != 0 {
			next = (cur*7 + us) / 8
		}
		if s.latency.CompareAndSwap(cur, next) {
			break
		}
	}
	s.lastFailed.Store(!ok)
}

// shownURL is the subscription's URL as dzhook shows it: without its
// credentials (a connector's whole path is one).
func (s *sub) shownURL() string { return ShownURL(s.cfg.URL, s.cfg.Format, s.cfg.Transform) }

// ShownURL is a subscription's URL as shown (API, CLI, history, the
// journal's readable copy). A subscription that sends its own shape (a
// connector's format, or a transform: a chat such as Mattermost's
// /hooks/<token>, a relay) likely posts to a URL whose path is its
// credential: the path is hidden too.
func ShownURL(raw, format, transformExpr string) string {
	if (format != "" && format != transform.FormatDZDESK) || transformExpr != "" {
		return RedactConnectorURL(raw)
	}
	return RedactURL(raw)
}

// shapeBody makes a task's own body when its subscription has a
// transform and the delivery has none yet; the error (transform.ErrSkip
// or a failure) says it is not to be sent. Calling it again returns the
// first answer.
func (s *sub) shapeBody(t *task) error {
	if s.shape == nil || t.own || t.shapeErr != nil {
		return t.shapeErr
	}
	body, err := s.shape.Apply(t.body)
	if err != nil {
		t.shapeErr = err
		return err
	}
	t.body, t.own, t.fresh = body, true, true
	return nil
}

// compile prepares a subscription for delivery; share says how many
// processes share its rate limit.
func compile(cfg Subscription, opts *Config, share func() int64) (*sub, error) {
	s := &sub{cfg: cfg, queue: make(chan *task, opts.QueueSize), live: make(chan *task, opts.QueueSize), size: int64(opts.QueueSize), state: journal.Healthy, headers: http.Header{},
		room: make(chan struct{}, 1), stop: make(chan struct{}), busy: make([]atomic.Int64, opts.Concurrency), stats: &stats{},
		promote: make(chan struct{}, opts.Concurrency), ring: make(chan struct{}, 1), tag: ids.SubscriptionTag(cfg.ID)}
	if cfg.Filter != "" {
		p, err := filter.Compile(cfg.Filter)
		if err != nil {
			return nil, fmt.Errorf("subscription %s: filter: %w", cfg.ID, err)
		}
		s.filter = p
	}
	shape, err := transform.New(cfg.Transform, cfg.Format)
	if err != nil {
		return nil, fmt.Errorf("subscription %s: transform: %w", cfg.ID, err)
	}
	s.shape = shape
	if !cfg.RateLimit.IsZero() {
		s.pace = newPacer(cfg.RateLimit, share)
		// What waits in memory is what the budget lets start within a
		// second or so (and no fewer than the workers): the rest waits
		// in the journal, claimed as the queue empties.
		s.size = min(s.size, max(int64(opts.Concurrency), int64(math.Ceil(cfg.RateLimit.perSecond()))))
	}
	s.method = http.MethodPost
	switch cfg.Method {
	case "", http.MethodPost:
	case http.MethodPut:
		s.method = http.MethodPut
	default:
		return nil, fmt.Errorf("subscription %s: method %q: POST or PUT", cfg.ID, cfg.Method)
	}
	if cfg.StandardWebhooks {
		key, err := signer.StandardKey(string(cfg.Secret))
		if err != nil {
			return nil, fmt.Errorf("subscription %s: standard webhooks secret: %w", cfg.ID, err)
		}
		s.standardKeys = [][]byte{key}
		for _, old := range append([][]byte{cfg.PreviousSecret}, cfg.RetiredSecrets...) {
			if len(old) == 0 {
				continue
			}
			if prev, err := signer.StandardKey(string(old)); err == nil {
				s.standardKeys = append(s.standardKeys, prev)
			}
		}
	}
	// In a fixed order, the first of two names that differ only in case
	// kept (configuration refuses such a pair; a runtime subscription
	// stored before it did may have one): the same header every time.
	for _, k := range slices.Sorted(maps.Keys(cfg.Headers)) {
		if _, dup := s.headers[http.CanonicalHeaderKey(k)]; !dup {
			s.headers.Set(k, cfg.Headers[k])
		}
	}
	s.scrub = newScrubber(cfg)
	client, err := subscriptionClient(cfg, opts)
	if err != nil {
		return nil, fmt.Errorf("subscription %s: %w", cfg.ID, err)
	}
	s.client = client
	if _, ordered := cfg.Ordering.key("k"); ordered {
		s.ord = newOrderState(s.size)
	}
	return s, nil
}

// workerDone closes the bell after the last worker ended (they end once
// the subscription is retired, when put rings no more).
func (s *sub) workerDone() {
	if s.workers.Add(-1) != 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bell != nil {
		_ = s.bell.Close()
		s.bell = nil
	}
}
