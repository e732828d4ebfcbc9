package fanout

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"go.opentelemetry.io/otel/trace"

	"github.com/dzdesk/dzhook/internal/backoff"
	"github.com/dzdesk/dzhook/internal/journal"
)

// Defaults of Config.
const (
	DefaultTimeout      = 5 * time.Second
	DefaultConcurrency  = 16
	DefaultQueueSize    = 1024
	DefaultBodyLimit    = 4096
	DefaultPollInterval = time.Second
	DefaultHeartbeat    = 5 * time.Second
)

// NoResponseBody as Config.ResponseBodyLimit keeps no byte of receivers'
// answers (delivery.response_body_limit: 0, for answers that may carry
// personal data); a zero ResponseBodyLimit means DefaultBodyLimit.
const NoResponseBody = -1

// DefaultRetrySchedule is DZDESK's: immediately, 1 min, 5 min, 30 min, 2 h.
var DefaultRetrySchedule = []time.Duration{0, time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Spilled is the state DeliveryRecorded is told for a delivery recorded
// pending in the journal for want of room in memory (the journal has it
// as pending; the metric, as spilled rather than queued).
const Spilled journal.State = "spilled"

// Observer is told what the dispatcher does, for metrics. Its methods must
// be fast and safe for concurrent use.
type Observer interface {
	EventDispatched(eventType string, deliveries int)
	DeliveryRecorded(subscription string, state journal.State)
	AttemptFinished(subscription string, took time.Duration, status int, errorClass string, outcome Outcome)
	// Unsent: a delivery failed without an HTTP attempt (its transform
	// failed on the event: errorClass transform).
	Unsent(subscription, errorClass string, outcome Outcome)
	StateChanged(subscription string, from, to journal.Health)
}

// Recorder is the journal writer as fanout uses it: records go in FIFO
// order, Wait says when one is durable, Barrier when all put before it
// are. *journal.Writer is one.
type Recorder interface {
	Put(ctx context.Context, r journal.Record) error
	Wait(ctx context.Context, done <-chan error) error
	Barrier(ctx context.Context) error
}

// Store is what fanout reads from and claims in the journal (the writes
// of the hot path go through the Recorder). *journal.Store is one.
type Store interface {
	Register(ctx context.Context, instance string) error
	Heartbeat(ctx context.Context, instance string, within time.Duration) (peers int, at time.Time, err error)
	Peers(ctx context.Context, instance string, within time.Duration) (peers int, at time.Time, err error)
	Unregister(ctx context.Context, instance string) error
	SubscriptionStates(ctx context.Context) ([]journal.SubscriptionRow, error)
	Claim(ctx context.Context, wants []journal.ClaimWant, owner, token string, staleAfter time.Duration) ([]journal.Claimed, error)
	ClaimForRetry(ctx context.Context, id, owner, token string, staleAfter time.Duration) (journal.Claimed, error)
	ReleaseLost(ctx context.Context, owner string, c journal.LostClaim) (released int, settled bool, err error)
	Disowned(ctx context.Context, owner string, ids []string) ([]string, error)
	Park(ctx context.Context, subscriptions []string, staleAfter time.Duration, limit int) (parked int, locked bool, err error)
	Unpark(ctx context.Context, limit int) (int, error)
	Parked(ctx context.Context) (bool, error)
	GetDelivery(ctx context.Context, id string) (journal.Delivery, []byte, []journal.Attempt, error)
	RetryFailed(ctx context.Context, subscription string, since, until *time.Time, self string, staleAfter time.Duration) (int, error)
	SetPaused(ctx context.Context, subscription string, paused bool) error
	SetState(ctx context.Context, subscription string, state journal.Health) error
	ReleaseHeld(ctx context.Context, subscription string) (int, error)
	OrderedBacklog(ctx context.Context, subscriptions []string, self string) (map[string]map[string]journal.KeyBacklog, error)
	KeyBacklogs(ctx context.Context, subscription string, keys []string) (map[string]int, error)
	ClaimNotifications(ctx context.Context, limit int, lease time.Duration) ([]journal.Notification, error)
	NotificationSent(ctx context.Context, id int64, sendErr error, next time.Time) error
}

// Config is the input of New.
type Config struct {
	Subscriptions []Subscription
	// Journal is read and claimed from; required.
	Journal Store
	// Records receives every delivery, attempt and state change, in
	// order; required. The journal writer behind it acknowledges the
	// replication stream.
	Records Recorder
	// Replays, when set, lets operators replay journaled events into a
	// subscription (StartReplay), and this process take part in making
	// the replays' deliveries (replay.go). *journal.Store is one.
	Replays ReplayStore
	// Instance identifies this process among those sharing the journal.
	Instance string

	Timeout           time.Duration   // per attempt; defaults to 5 s
	RetrySchedule     []time.Duration // defaults to DefaultRetrySchedule
	ResponseBodyLimit int             // bytes kept; defaults to 4096, NoResponseBody keeps none
	Concurrency       int             // per subscription; defaults to 16
	QueueSize         int             // per subscription; defaults to 1024
	// ShareFirstAttempts journals every new delivery unowned and due, for
	// whichever process sharing the journal claims it first, instead of
	// making its first attempt here from memory (see Dispatch).
	ShareFirstAttempts bool
	UserAgent          string // defaults to "dzhook"

	// Notify sends the admin a signed message when a subscription becomes
	// failing, recovers or is disabled; zero value: log only.
	Notify NotifyConfig

	PollInterval time.Duration // how often due work is claimed; defaults to 1 s
	Heartbeat    time.Duration // defaults to 5 s; an owner silent for 3 heartbeats is dead

	// Egress decides which addresses deliveries and notifications may
	// reach; link-local and metadata addresses are refused even when nil.
	Egress *EgressGuard
	// DialContext dials receivers; defaults to Egress's dialer.
	DialContext dialFunc
	// RootCAs verify receivers' certificates; nil means the system's.
	RootCAs *x509.CertPool
	// Proxy is the forward proxy (http:// or https://host:port, with
	// user:password for Proxy-Authorization) that deliveries and
	// notifications go through, unless a subscription names its own;
	// "" for none. The environment's HTTPS_PROXY is never used.
	Proxy    string
	proxyURL *url.URL // Proxy, parsed by withDefaults
	Logger   *slog.Logger
	Observer Observer
	// TracerProvider makes the spans of events and attempts (trace.go);
	// nil: tracing off, and the delivery path makes no span at all.
	TracerProvider trace.TracerProvider
	// NowFunc is the clock; defaults to time.Now.
	NowFunc func() time.Time
}

// bodyLimit is how many bytes of an answer an attempt keeps: 0 for
// NoResponseBody (any negative value).
func (cfg Config) bodyLimit() int { return max(cfg.ResponseBodyLimit, 0) }

// withDefaults fills in what Config leaves zero: the one place fanout's
// defaults are applied.
func (cfg Config) withDefaults() (Config, error) {
	switch {
	case cfg.Journal == nil:
		return cfg, errors.New("fanout: Config.Journal is required")
	case cfg.Records == nil:
		return cfg, errors.New("fanout: Config.Records is required")
	case cfg.Instance == "":
		return cfg, errors.New("fanout: Config.Instance is required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if len(cfg.RetrySchedule) == 0 {
		cfg.RetrySchedule = DefaultRetrySchedule
	}
	if cfg.ResponseBodyLimit == 0 {
		cfg.ResponseBodyLimit = DefaultBodyLimit
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "dzhook"
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.NowFunc == nil {
		cfg.NowFunc = time.Now
	}
	if cfg.DialContext == nil {
		cfg.DialContext = cfg.Egress.Dialer(cfg.Timeout)
	}
	if cfg.Proxy != "" {
		u, err := ParseProxy(cfg.Proxy)
		if err != nil {
			return cfg, fmt.Errorf("fanout: Config.Proxy %w", err) // never the URL: it may hold a password
		}
		cfg.proxyURL = u
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	return cfg, nil
}

// Event is what Dispatch delivers.
type Event struct {
	ID        string
	Type      string
	Timestamp time.Time
	// Body is the envelope, sent byte for byte on every attempt.
	Body []byte
	// CommitLSN of the source transaction; 0 for events from time.
	CommitLSN pglogrepl.LSN
	// Key is the entity the event is about (a request's or a user's id),
	// whose deliveries an ordered subscription keeps in order; "" for
	// none.
	Key string
}

// Dispatcher delivers events to subscriptions. Its parts, in the order
// an event meets them:
//
//   - the router (route.go): Dispatch matches an event against the
//     subscriptions and their filters and turns it into delivery rows,
//     put to the journal writer; the first attempt goes to the
//     subscription's queue straight from memory.
//   - the deliverers (deliver.go): per subscription, a queue and workers
//     that make attempts, decide what follows each (policy.go: next) and
//     keep the subscription's health.
//   - the scheduler (schedule.go): claims due work from the journal
//     (retries, spilled and released deliveries), gives back lost
//     claims, and keeps this instance's heartbeat.
//   - the notifier (notify.go): tells notify.url of state changes.
//
// No lock is held across a wait: the subscription set is an immutable
// registry swapped by Reload and read without locking; dispatches in
// progress are counted by a gate that Resume waits on.
type Dispatcher struct {
	cfg      Config
	log      *slog.Logger
	obs      Observer
	records  Recorder
	notifier *Notifier
	deliver  *deliverer
	sched    *scheduler
	replayer *replayer
	now      func() time.Time
	tracer   trace.Tracer // nil: tracing off

	reg      atomic.Pointer[registry]
	reloadMu sync.Mutex // one Reload at a time; held only while swapping
	// routeMu serializes routing: the stream's dispatches, the SLA
	// clock's, and the returns of ordered deliveries to the journal. The
	// journal writer then receives records in the order ordered keys were
	// decided, which Record.Unhold relies on. Only those producers wait on
	// it (while the writer's queue is full); readers, Reload and the
	// workers' attempts never do.
	routeMu sync.Mutex
	// dispatches counts the dispatches in progress: Resume waits for
	// those that may have seen the subscription paused.
	dispatches gate
	// held: the subscriptions whose held deliveries wait for a release
	// (held.go).
	held *heldReleases

	// flagsOp lets one Pause or Resume at a time run from its journal
	// write to its memory's: interleaved, a resume's memory write could
	// follow a pause's, the journal paused and this process sending.
	flagsOp chan struct{}
	// resync asks the scheduler's next heartbeat for a syncFlags even
	// with no other process: a Reload that added a subscription could
	// not read its pause and state from the journal.
	resync atomic.Bool

	stopping atomic.Bool
	opMu     sync.Mutex      // guards life and the ops count against stopping
	life     context.Context // the workers' context, once Run started them
	ops      sync.WaitGroup  // operators' operations in progress (enter)
	loaded   atomic.Bool     // LoadState done
	started  atomic.Bool     // Run registered the instance and loaded the state

	// pos gives ordered deliveries their positions.
	pos positions
}

// registry is one immutable set of subscriptions.
type registry struct {
	subs []*sub
	byID map[string]*sub
}

func newRegistry(subs []*sub) *registry {
	r := &registry{subs: subs, byID: make(map[string]*sub, len(subs))}
	for _, s := range subs {
		r.byID[s.cfg.ID] = s
	}
	return r
}

// New compiles the subscriptions and returns a Dispatcher; Run starts it.
func New(cfg Config) (*Dispatcher, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	d := &Dispatcher{
		cfg: cfg, log: cfg.Logger.With("component", "fanout"), obs: cfg.Observer, records: cfg.Records,
		now: cfg.NowFunc, tracer: cfg.tracer(), held: newHeldReleases(), flagsOp: make(chan struct{}, 1),
	}
	d.notifier = newNotifier(cfg)
	due := func(t time.Time) time.Time { return d.sched.due(t) } // d.sched is made below
	d.deliver = &deliverer{cfg: &d.cfg, records: cfg.Records, obs: cfg.Observer, notifier: d.notifier, log: d.log, now: cfg.NowFunc,
		nudge: d.nudge, giveBack: d.giveBack, tracer: d.tracer, due: due}
	d.sched = &scheduler{
		store: cfg.Journal, instance: cfg.Instance, poll: cfg.PollInterval, heartbeat: cfg.Heartbeat, log: d.log, now: cfg.NowFunc,
		wake: make(chan struct{}, 1), subs: func() []*sub { return d.reg.Load().subs }, giveBack: d.giveBack,
		syncOrder: func(ctx context.Context) error { return d.syncOrder(ctx, true) },
		recount:   d.recountOrder,
		joined:    d.shareQueued,
		syncFlags: d.syncFlagsAfterBeat,
		fence:     newFence(2 * cfg.Heartbeat),
		reown:     d.reown,
	}
	d.deliver.fence = d.sched.fence
	d.replayer = &replayer{
		store: cfg.Replays, log: d.log, poll: min(cfg.PollInterval, replayPollMax), idle: cfg.PollInterval, wake: make(chan struct{}, 1), now: cfg.NowFunc, due: due,
		lookup: func(id string) *sub { return d.reg.Load().byID[id] }, claimed: d.nudge,
		filterFailed: func(s *sub, ev Event, err error) { d.filterFailure(s, ev, err, cfg.NowFunc()) },
	}
	subs, err := d.compileAll(cfg.Subscriptions, nil)
	if err != nil {
		return nil, err
	}
	d.reg.Store(newRegistry(subs))
	return d, nil
}

// compileAll prepares subscriptions, refusing duplicates and colliding
// delivery id tags.
//
// A subscription of current whose configuration did not change is kept,
// not compiled again: a reload changes only what it changes (and does not
// fail on a client certificate caught in the middle of its rotation when
// that subscription's settings are the same).
func (d *Dispatcher) compileAll(cfgs []Subscription, current map[string]*sub) ([]*sub, error) {
	var subs []*sub
	tags := map[string]string{}
	for _, sc := range cfgs {
		s := current[sc.ID]
		if s == nil || !s.cfg.Equal(sc) {
			var err error
			if s, err = compile(sc, &d.cfg, d.share); err != nil {
				return nil, err
			}
		}
		tag := s.tag
		if other, dup := tags[tag]; dup {
			if other == sc.ID {
				return nil, fmt.Errorf("fanout: duplicate subscription %q", sc.ID)
			}
			return nil, fmt.Errorf("fanout: subscriptions %q and %q share a delivery id tag; rename one", other, sc.ID)
		}
		tags[tag] = sc.ID
		subs = append(subs, s)
	}
	return subs, nil
}

// share is how many processes share a rate limit: this one and the
// others alive on the journal.
func (d *Dispatcher) share() int64 { return 1 + d.sched.peers.Load() }

// Notifier returns the part that sends notifications; the owner of the
// Dispatcher runs it (Notifier.Run).
func (d *Dispatcher) Notifier() *Notifier { return d.notifier }

// nudge wakes the scheduler.
func (d *Dispatcher) nudge() { d.sched.nudge() }

// Spilled is to be called when deliveries were journaled for the
// scheduler to claim (journal.WriterConfig.OnSpill).
func (d *Dispatcher) Spilled() {
	d.sched.told.Store(time.Now().UnixNano())
	d.nudge()
}

// Run delivers until ctx ends. It loads the subscriptions' persisted state,
// registers this instance, and runs the workers and the scheduler
// (claims of due work, heartbeat). When
// ctx ends it stops taking new work, lets attempts in flight finish (each
// within the delivery timeout), waits until their outcomes are journaled,
// releases the deliveries it owned to other instances, and returns nil.
// Deliveries still in memory queues are already journaled and go out on
// the next start or from another instance. The journal writer must run
// until Run has returned.
func (d *Dispatcher) Run(ctx context.Context) error {
	// The workers' attempts outlive ctx: an attempt in flight at shutdown
	// runs to its end (within the delivery timeout) and is journaled.
	life, stopLife := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLife()
	if err := d.start(ctx, life); err != nil {
		d.stopping.Store(true)
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}
	schedDone := make(chan error, 1)
	go func() { schedDone <- d.sched.Run(ctx) }()
	replayDone := make(chan struct{})
	go func() { defer close(replayDone); _ = d.replayer.Run(ctx) }()
	heldDone := make(chan struct{})
	go func() { defer close(heldDone); d.releaseHeldLoop(ctx) }()
	// The heartbeat goes on until the owned deliveries are given back: a
	// process still finishing its attempts must not look dead to the
	// others, which would take over what it is sending.
	hbCtx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); d.sched.heartbeatLoop(hbCtx) }()
	endHeartbeat := sync.OnceFunc(func() { stopHeartbeat(); <-hbDone })
	defer endHeartbeat()
	<-ctx.Done()

	// Under reloadMu: a Reload in progress finishes starting its new
	// subscriptions' workers first, and none starts any after this.
	d.reloadMu.Lock()
	d.opMu.Lock()
	d.stopping.Store(true)
	d.opMu.Unlock()
	d.reloadMu.Unlock()
	<-schedDone
	<-replayDone
	<-heldDone
	subs := d.reg.Load().subs
	for _, s := range subs {
		s.retire()
	}
	// Attempts in flight finish within the delivery timeout; workers
	// blocked on a journal that does not answer are stopped after that.
	workersDone := make(chan struct{})
	go func() {
		for _, s := range subs {
			s.wg.Wait()
		}
		close(workersDone)
	}()
	select {
	case <-workersDone:
	case <-time.After(d.cfg.Timeout + 5*time.Second):
		d.log.Warn("stopping with attempts whose outcome the journal did not take; their deliveries are attempted again")
		stopLife()
		<-workersDone
	}
	// Operators' retries and test sends in flight finish their attempt
	// (within the delivery timeout) and journal it, unless they overrun.
	opsDone := make(chan struct{})
	go func() { d.ops.Wait(); close(opsDone) }()
	select {
	case <-opsDone:
	case <-time.After(d.cfg.Timeout + 5*time.Second):
		d.log.Warn("stopping with an operator's retry or test still running; its outcome may not be journaled")
	}
	// Every outcome is put; wait for it to be durable before giving the
	// owned deliveries back (bounded: the journal may be unreachable).
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), journal.DefaultDrainTimeout)
	defer cancel()
	if err := d.records.Barrier(fctx); err != nil {
		d.log.Warn("outcomes of the last attempts may not be journaled; their deliveries are attempted again", "err", err)
	}
	// Before the row goes: a heartbeat after it would register the
	// instance again (Heartbeat does, for a live one whose row is gone).
	endHeartbeat()
	if err := d.cfg.Journal.Unregister(fctx, d.cfg.Instance); err != nil {
		d.log.Warn("could not release owned deliveries; another instance takes them over after the heartbeat expires", "err", err)
	}
	return nil
}

// start registers the instance, loads the state and starts the workers.
// A journal that does not answer is waited for, tried again with backoff
// (and said at WARN): it answered a moment before (engine.New migrated
// it), and a blip then ended the process.
func (d *Dispatcher) start(ctx, life context.Context) error {
	wait := backoff.New(250*time.Millisecond, 5*time.Second)
	for attempt := 1; ; attempt++ {
		err := d.register(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return err
		}
		d.log.Warn("registering in the journal failed; retrying", "err", err, "attempt", attempt, "delay", wait.Current().String())
		if err := wait.Wait(ctx); err != nil {
			return err
		}
	}
	d.started.Store(true)
	if err := d.SyncOrder(ctx); err != nil {
		d.log.Warn("could not read the ordered keys' backlog; ordered deliveries go through the journal until it is read", "err", err)
	}
	// Held deliveries of a subscription active now were left by a
	// process that stopped before it released them.
	d.held.add(accepting(d.reg.Load().subs)...)
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	d.opMu.Lock()
	d.life = life
	d.opMu.Unlock()
	for _, s := range d.reg.Load().subs {
		d.deliver.start(life, s)
	}
	return nil
}

// register records the instance in the journal, starts the fence's
// clock, and loads the subscriptions' state.
func (d *Dispatcher) register(ctx context.Context) error {
	registering := time.Now()
	if err := d.cfg.Journal.Register(ctx, d.cfg.Instance); err != nil {
		return fmt.Errorf("register in journal: %w", err)
	}
	d.sched.fence.start(registering)
	d.sched.contactSince.Store(int64(registering.Sub(d.sched.fence.epoch)))
	d.sched.lastContact.Store(int64(registering.Sub(d.sched.fence.epoch)))
	if !d.loaded.Load() {
		return d.LoadState(ctx)
	}
	return nil
}

// Started reports whether Run has registered the instance and loaded
// the subscriptions' state (readiness waits for it).
func (d *Dispatcher) Started() bool { return d.started.Load() }

// syncFlagsAfterBeat is the scheduler's syncFlags: while others share
// the journal, or when a Reload asked for it (resync), until the journal
// answers.
func (d *Dispatcher) syncFlagsAfterBeat(ctx context.Context, shared bool) {
	if d.resync.Swap(false) || shared {
		if !d.syncFlags(ctx) {
			d.resync.Store(true) // the next heartbeat tries again
		}
	}
}

// syncFlags adopts the pause and state other processes sharing the
// journal gave the subscriptions (read says whether the journal
// answered): a pause on one stops the claims of all
// (within a heartbeat), a 410 one of them received disables the
// subscription everywhere, a resume on one resumes it everywhere. So does
// failing, when another process's delivery exhausted its schedule, and
// healthy, when another's attempt succeeded after that: without it a
// process that only ever succeeded never told the recovery (its success
// changed nothing of its own view), and the journal said failing while
// every process delivered.
//
// A change of this process's own since the journal was read is kept (it
// is newer), and so is a state this process set that the journal does
// not show yet (its writer journals it in its next batch): the journal's
// other state is adopted only if it was set after that.
func (d *Dispatcher) syncFlags(ctx context.Context) (read bool) {
	reg := d.reg.Load()
	type gen struct{ flags, health uint64 }
	gens := make(map[*sub]gen, len(reg.subs))
	for _, s := range reg.subs {
		s.mu.Lock()
		gens[s] = gen{s.flagsGen, s.healthGen}
		s.mu.Unlock()
	}
	asked := time.Now()
	states, err := d.cfg.Journal.SubscriptionStates(ctx)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn("reading the subscriptions' pause and state from the journal", "err", err)
		}
		return false
	}
	resumed := false
	var release []string
	for _, st := range states {
		s, ok := reg.byID[st.ID]
		if !ok {
			continue
		}
		s.mu.Lock()
		if s.flagsGen != gens[s].flags {
			s.mu.Unlock()
			continue
		}
		changedAt := asked.Add(-st.StateAge) // in this process's clock
		was := s.paused || s.state == journal.Disabled
		if s.paused != st.Paused {
			s.paused = st.Paused
			d.log.Info("subscription pause changed by another instance", "subscription", st.ID, "paused", st.Paused)
		}
		switch {
		case st.State == journal.Disabled && s.state != journal.Disabled:
			// At the disable's own time (the journal keeps when it was
			// made), not now: a resume made after it, which this read
			// may just have missed, re-enables the subscription.
			s.state, s.disabledAt = journal.Disabled, changedAt
			d.log.Info("subscription disabled by another instance", "subscription", st.ID)
		case st.State != journal.Disabled && s.state == journal.Disabled && asked.Add(-st.ResumeAge).After(s.disabledAt):
			// Only a resume made after this process's disable re-enables
			// it: a failing/healthy change of a process that has not
			// seen the 410 (this one's disable may not be journaled
			// yet) never does, as in the journal.
			s.state = st.State
			s.refusedInARow = 0 // a state from elsewhere starts the count again
			d.log.Info("subscription re-enabled by another instance", "subscription", st.ID, "state", st.State)
		case st.State != journal.Disabled && s.state != journal.Disabled && st.State != s.state &&
			s.healthGen == gens[s].health && changedAt.After(s.healthAt):
			// Not a transition of this process's: neither counted nor
			// told (the process that made it told it).
			s.state = st.State
			s.refusedInARow = 0 // a state from elsewhere starts the count again
			d.log.Info("subscription state changed by another instance", "subscription", st.ID, "state", st.State)
		}
		s.adoptLastAnswer(st)
		if was && !s.paused && s.state != journal.Disabled {
			resumed = true
			if s.cfg.Active {
				// What this process recorded as held until now is not in
				// what the resuming process released.
				release = append(release, s.cfg.ID)
			}
		}
		s.mu.Unlock()
	}
	d.held.add(release...)
	if resumed {
		d.nudge() // its due work waits in the journal
	}
	return true
}

// LoadState restores pause and health from the journal. Run does it when
// it was not done before; calling it first makes the state visible (to the
// admin API) before Run starts.
func (d *Dispatcher) LoadState(ctx context.Context) error {
	states, err := d.cfg.Journal.SubscriptionStates(ctx)
	if err != nil {
		return fmt.Errorf("load subscription state: %w", err)
	}
	reg := d.reg.Load()
	for _, st := range states {
		if s, ok := reg.byID[st.ID]; ok {
			s.adopt(st)
		}
	}
	d.loaded.Store(true)
	return nil
}

// adopt takes the journal's pause, state and last answer for s.
func (s *sub) adopt(st journal.SubscriptionRow) {
	s.mu.Lock()
	s.state, s.paused = st.State, st.Paused
	s.refusedInARow = 0
	s.lastSuccessAt, s.lastFailureAt, s.lastStatus, s.lastError = st.LastSuccessAt, st.LastFailureAt, st.LastStatus, st.LastError
	s.mu.Unlock()
}

// adoptLastAnswer takes the journal's last answer for s where it is newer
// than this process's own (s.mu held): another process's attempts, which
// made it failing, are then explained by this one's API and dashboard
// too (a replica behind the same Service showed failing with its own
// last 200 and no error: found by a review). The moments are those of
// the processes' clocks.
func (s *sub) adoptLastAnswer(st journal.SubscriptionRow) {
	mine := s.lastSuccessAt
	if s.lastFailureAt.After(mine) {
		mine = s.lastFailureAt
	}
	if st.LastFailureAt.After(s.lastFailureAt) {
		s.lastFailureAt, s.lastError = st.LastFailureAt, st.LastError
	}
	if st.LastSuccessAt.After(s.lastSuccessAt) {
		s.lastSuccessAt = st.LastSuccessAt
	}
	theirs := st.LastSuccessAt
	if st.LastFailureAt.After(theirs) {
		theirs = st.LastFailureAt
	}
	if theirs.After(mine) {
		s.lastStatus = st.LastStatus
	}
}

// reloadStateWait bounds a Reload's read of the journal's pause and
// state for the subscriptions it adds; the scheduler's next heartbeat
// reads them when it could not (resync).
const reloadStateWait = 2 * time.Second

// Reload replaces the subscriptions without a restart and without losing
// a delivery. An unchanged subscription keeps running as it is. A new one
// starts. A changed one starts afresh with its health, pause state and
// statistics, and its old self stops after the attempts in flight: what
// waited in its queue is journaled and goes back to the journal for the
// new one. A
// removed one stops the same way; its pending deliveries stay in the
// journal, and go out if it comes back.
//
// Readers (Dispatch, the admin API, /metrics) never wait for a Reload:
// the new set is swapped in at once, and the old subscriptions are
// stopped afterwards, without a lock. The Reload itself may wait up to
// reloadStateWait for the journal before the swap (the added
// subscriptions' pause and state), and so may its caller's locks.
func (d *Dispatcher) Reload(ctx context.Context, cfgs []Subscription) error {
	// The journal's pause and state of the subscriptions it may add,
	// read before the lock (readers never wait for the journal): one
	// removed while paused (or disabled by a 410) and added back started
	// active, sending while the journal said paused, and paused again at
	// the next restart.
	var states map[string]journal.SubscriptionRow
	unread := false
	if d.loaded.Load() {
		sctx, cancel := context.WithTimeout(ctx, reloadStateWait)
		rows, err := d.cfg.Journal.SubscriptionStates(sctx)
		cancel()
		if err != nil {
			d.log.Warn("configuration reload: the subscriptions' pause and state could not be read from the journal; those added take them at the next heartbeat", "err", err)
			unread = true
		}
		states = make(map[string]journal.SubscriptionRow, len(rows))
		for _, st := range rows {
			states[st.ID] = st
		}
	}
	d.reloadMu.Lock()
	if d.stopping.Load() {
		d.reloadMu.Unlock()
		return errors.New("fanout: stopped")
	}
	old := d.reg.Load()
	// Under the lock: the unchanged subscriptions it keeps are those of
	// the registry it replaces, not of one another reload retired.
	fresh, err := d.compileAll(cfgs, old.byID)
	if err != nil {
		d.reloadMu.Unlock()
		return err
	}
	var next, retired []*sub
	keep := map[*sub]bool{}
	for _, f := range fresh {
		o, ok := old.byID[f.cfg.ID]
		switch {
		case ok && o.cfg.Equal(f.cfg):
			next = append(next, o)
			keep[o] = true
		case ok:
			// What the subscription's status shows carries over: its
			// health, its last answer and its statistics, as for a
			// subscription the reload keeps as it is.
			o.mu.Lock()
			f.state, f.paused, f.lastSuccessAt, f.lastFailureAt = o.state, o.paused, o.lastSuccessAt, o.lastFailureAt
			f.lastStatus, f.lastError = o.lastStatus, o.lastError
			o.mu.Unlock()
			f.stats = o.stats
			// So does whether the receiver keeps up (Dispatch waits for
			// room only for one that does).
			f.latency.Store(o.latency.Load())
			f.lastFailed.Store(o.lastFailed.Load())
			if f.cfg.RateLimit == o.cfg.RateLimit && o.pace != nil {
				// The pace carries over with its 429s' slowdown and
				// pause: an edit of the description is no reason to
				// call a receiver that asked for a pause.
				f.pace = o.pace
			}
			if f.cfg.Ordering == o.cfg.Ordering && o.ord != nil {
				// The keys' state carries over: the old generation's
				// attempts in flight and waiting deliveries still count.
				f.ord = o.ord
			}
			next = append(next, f)
		default:
			if st, ok := states[f.cfg.ID]; ok {
				f.adopt(st)
			}
			next = append(next, f)
		}
	}
	for _, s := range old.subs {
		if !keep[s] {
			retired = append(retired, s)
		}
	}
	d.reg.Store(newRegistry(next))
	if unread {
		// After the swap: a heartbeat's sync in between would read the
		// old set, without the added subscriptions, and take the ask.
		d.resync.Store(true)
	}
	d.opMu.Lock()
	life := d.life
	d.opMu.Unlock()
	if life != nil {
		for _, s := range next {
			if !keep[s] {
				d.deliver.start(life, s)
			}
		}
	}
	// Retired before the lock is released: a Run stopping now stops the
	// new set, and these are stopped here.
	for _, s := range retired {
		s.retire()
	}
	d.reloadMu.Unlock()
	// A subscription made active (or added) may have held deliveries
	// waiting for it.
	var started []*sub
	for _, s := range next {
		if !keep[s] {
			started = append(started, s)
		}
	}
	d.held.add(accepting(started)...)

	for _, s := range retired {
		// Its workers (if Run started any) are gone, and nothing can enter
		// its queue any more (enqueue checks retirement): what waits there
		// was never attempted, and goes back to the journal for whoever
		// runs the subscription now. Before Run, the stream may already
		// have queued deliveries that no worker would ever take.
		s.wg.Wait()
		// Its own client's idle connections would otherwise stay open
		// until the pool's sweep (up to twice the idle timeout), each
		// with its registration on the dispatcher's lifetime.
		s.client.HTTPClient.CloseIdleConnections()
		// The queue is drained before the release is put. A caller that
		// stops waiting for room in the journal's queue (an API request
		// ended) must not leave them owned by this live instance, which
		// no other claims, until it stops. An unordered subscription's
		// release is then put on the workers' context, in the background,
		// so that neither this reload nor its caller waits on the writer.
		// An ordered one's is put on the workers' context here, under
		// routeMu: put later, a delivery of the same key routed meanwhile
		// would reach the journal first and go out before them. (The
		// stream waits for the same room meanwhile.)
		giveCtx := ctx
		if life != nil && s.ord != nil {
			giveCtx = life
		}
		var ids []string
		err := d.giveBack(giveCtx, func() []string { ids = s.drainQueue(); return ids })
		if err != nil && len(ids) > 0 && life != nil && s.ord == nil && !errors.Is(err, journal.ErrWriterClosed) {
			d.releaseLater(life, s.cfg.ID, ids)
			err = nil
		}
		if err != nil {
			// The new set is in force; what could not be given back (the
			// writer stopped) stays this instance's until it stops
			// (Unregister releases it).
			d.log.Warn("deliveries queued for a replaced subscription stay owned by this instance until it stops", "subscription", s.cfg.ID, "err", err)
		}
	}
	d.nudge()
	return nil
}

// recountKeysLimit bounds the keys one recount reads.
const recountKeysLimit = 1000

// recountOrder brings the ordered keys' counts of journaled deliveries
// down to what the journal holds, for keys with nothing in memory and
// nothing claimed in flight (see orderState). The counts err upwards when
// another process finished a key's deliveries, or when a delivery was
// routed again after a crash; such a key would otherwise keep going
// through the journal until the process restarts. It holds routeMu for a
// barrier and one query per subscription, so that no delivery of those
// keys is routed or unwritten while they are counted.
func (d *Dispatcher) recountOrder(ctx context.Context) error {
	for _, s := range d.reg.Load().subs {
		if s.ord == nil {
			continue
		}
		keys := s.ord.recountable(recountKeysLimit)
		if len(keys) == 0 {
			continue
		}
		err := func() error {
			d.routeMu.Lock()
			defer d.routeMu.Unlock()
			if err := d.records.Barrier(ctx); err != nil {
				return err
			}
			counts, err := d.cfg.Journal.KeyBacklogs(ctx, s.cfg.ID, keys)
			if err != nil {
				return err
			}
			if n := s.ord.recount(keys, counts); n > 0 {
				d.log.Debug("ordered keys back on the fast path", "subscription", s.cfg.ID, "keys", n)
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}

// releaseLater puts a release of ids on life, in the background: what a
// reload drained from a replaced subscription's queue when its caller
// could not wait for room in the journal's queue. Until it is written
// they stay this live instance's (no process claims them); if life ends
// first, Unregister releases them at the stop.
func (d *Dispatcher) releaseLater(life context.Context, subscription string, ids []string) {
	go func() {
		if err := d.records.Put(life, journal.Record{Release: ids}); err != nil && life.Err() == nil {
			d.log.Warn("deliveries queued for a replaced subscription stay owned by this instance until it stops", "subscription", subscription, "deliveries", len(ids), "err", err)
		}
	}()
}

// reown runs after a heartbeat write that ended a gap in which others may
// have taken over this instance's deliveries (the fence closed: fence.go),
// while the workers wait at the fence. It asks the journal which of the
// deliveries in memory (queued, held at the fence, an ordered key's active
// and waiting ones) are no longer this instance's, drops those, gives the
// ordered keys they belong to back to the journal (their subscription is
// synced again before new deliveries follow in memory: a key's
// deliveries the other process holds come first), and opens the fence.
// Deliveries put to the journal writer and not yet written are not in the
// journal: no one else can have them, and they stay.
//
// A claim whose statement began before this instance's heartbeat came
// back and that reaches the rows after the journal answered here can
// still take one; the read waits for claims that hold a row (FOR SHARE).
func (d *Dispatcher) reown(ctx context.Context) error {
	f := d.sched.fence
	reg := d.reg.Load()
	idle := map[string]bool{} // queued or held at the fence: not in flight
	for _, s := range reg.subs {
		for _, t := range s.filterQueued(nil) {
			idle[t.deliveryID] = true
		}
	}
	for _, id := range f.heldIDs() {
		idle[id] = true
	}
	checked := maps.Clone(idle)
	for _, s := range reg.subs {
		if s.ord != nil {
			for _, id := range s.ord.inMemory() {
				checked[id] = true
			}
		}
	}
	lostIDs, err := d.cfg.Journal.Disowned(ctx, d.cfg.Instance, slices.Collect(maps.Keys(checked)))
	if err != nil {
		return err
	}
	lost := map[string]bool{}
	for _, id := range lostIDs {
		lost[id] = true
	}
	revoked := maps.Clone(lost)
	keys := 0
	if len(lost) > 0 {
		for _, s := range reg.subs {
			if s.ord == nil {
				continue
			}
			gaveUp := false
			err := d.giveBack(ctx, func() []string {
				release, dropped, hit := s.ord.revoke(lost, idle)
				for _, id := range dropped {
					revoked[id] = true
				}
				gaveUp = hit
				return release
			})
			if gaveUp {
				keys++
				s.ord.unsync() // the scheduler's next round reads the backlog again
			}
			if err != nil {
				d.log.Warn("ordered deliveries given up after this instance's heartbeat went stale stay owned by it until it stops", "subscription", s.cfg.ID, "err", err)
			}
		}
		for _, s := range reg.subs {
			s.filterQueued(func(t *task) bool { return revoked[t.deliveryID] })
		}
	}
	f.reopen(checked, revoked)
	if len(lost) > 0 {
		d.log.Warn("deliveries another instance took over while this one's heartbeat was stale are dropped here", "instance", d.cfg.Instance,
			"deliveries", len(lost), "ordered_subscriptions_synced_again", keys)
	} else {
		d.log.Info("this instance's heartbeat reaches the journal again; it still owns what it holds in memory", "instance", d.cfg.Instance, "deliveries", len(checked))
	}
	return nil
}

// giveBack puts to the journal a release of the deliveries take returns,
// in routing order (routeMu), so no dispatch decided meanwhile for their
// keys reaches the journal writer between the decision and the release.
func (d *Dispatcher) giveBack(ctx context.Context, take func() []string) error {
	d.routeMu.Lock()
	defer d.routeMu.Unlock()
	if ids := take(); len(ids) > 0 {
		return d.records.Put(ctx, journal.Record{Release: ids})
	}
	return nil
}

// SyncOrder reads what waits in the journal for the ordered
// subscriptions' keys (left by another process, or by this one before a
// restart), so that no new delivery of such a key leaves from memory
// before them. The stream calls it when a replication session starts,
// before the first change: only the process that streams makes new
// deliveries.
func (d *Dispatcher) SyncOrder(ctx context.Context) error { return d.syncOrder(ctx, false) }

// syncOrder is SyncOrder, for the subscriptions not synced yet only when
// onlyUnsynced (the scheduler's retry, and a subscription a reload added).
func (d *Dispatcher) syncOrder(ctx context.Context, onlyUnsynced bool) error {
	var ordered []*sub
	var names []string
	for _, s := range d.reg.Load().subs {
		if s.ord != nil && (!onlyUnsynced || !s.ord.isSynced()) {
			ordered = append(ordered, s)
			names = append(names, s.cfg.ID)
		}
	}
	if len(ordered) == 0 {
		return nil
	}
	if !onlyUnsynced {
		// Until the journal is read, new ordered deliveries go through it:
		// another process may have streamed since this one last did.
		for _, s := range ordered {
			s.ord.unsync()
		}
	}
	// No claim commits between the read and the sync unrecorded
	// (scheduler.claimMu): sync adds the keys' claimed deliveries to a
	// backlog that leaves them out.
	d.sched.claimMu.Lock()
	defer d.sched.claimMu.Unlock()
	backlog, err := d.cfg.Journal.OrderedBacklog(ctx, names, d.cfg.Instance)
	if err != nil {
		return err
	}
	for _, s := range ordered {
		s.ord.sync(backlog[s.cfg.ID])
	}
	return nil
}

type nopObserver struct{}

func (nopObserver) EventDispatched(string, int)                                 {}
func (nopObserver) DeliveryRecorded(string, journal.State)                      {}
func (nopObserver) AttemptFinished(string, time.Duration, int, string, Outcome) {}
func (nopObserver) Unsent(string, string, Outcome)                              {}
func (nopObserver) StateChanged(string, journal.Health, journal.Health)         {}

// shareQueued runs when other processes appear on the journal (on the
// scheduler's goroutine, between two claims: scheduler.joined): of what
// waits in this process's queues (a catch-up's backlog, queued while it
// was alone) it keeps its share, and at least what its workers start
// soon, and gives the rest back to the journal, unowned, for the others
// to claim. Not all of it: writing a backlog of 20,000 deliveries back
// took the journal about a second, in which no process had anything to
// send (make bench SCENARIO=scaleout). Ordered subscriptions keep theirs:
// their keys' state is this process's until those deliveries are
// attempted.
func (d *Dispatcher) shareQueued(ctx context.Context) {
	shared := 0
	processes := d.sched.peers.Load() + 1
	for _, s := range d.reg.Load().subs {
		if s.ord != nil {
			continue
		}
		n := 0
		err := d.giveBack(ctx, func() []string {
			ids := s.trimQueue(max(s.soon(), int64(s.queued())/processes))
			n = len(ids)
			return ids
		})
		if err != nil {
			d.log.Warn("could not share queued deliveries with the other processes", "subscription", s.cfg.ID, "err", err)
			return
		}
		if n > 0 {
			shared += n
			s.backlog.Store(true)
		}
	}
	if shared > 0 {
		d.log.Info("queued deliveries shared with the other processes on the journal", "deliveries", shared)
	}
}

// Peers is how many other dzhook processes on the journal were alive at
// the last heartbeat.
func (d *Dispatcher) Peers() int { return int(d.sched.peers.Load()) }

// LastHeartbeat is when this process's heartbeat last reached the
// journal; the zero time before the first.
func (d *Dispatcher) LastHeartbeat() time.Time {
	if ns := d.sched.beat.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}
