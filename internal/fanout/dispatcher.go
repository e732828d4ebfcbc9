package fanout

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dzdesk/dzhook/internal/filter"
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
	DefaultLinger       = 2 * time.Millisecond
	defaultWriterQueue  = 8192
	defaultMaxBatch     = 4096
)

// DefaultRetrySchedule is DZDESK's: immediately, 1 min, 5 min, 30 min, 2 h.
var DefaultRetrySchedule = []time.Duration{0, time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Observer is told what the dispatcher does, for metrics. Its methods must
// be fast and safe for concurrent use.
type Observer interface {
	EventDispatched(eventType string, deliveries int)
	DeliveryRecorded(subscription, state string)
	AttemptFinished(subscription string, took time.Duration, status int, errorClass string, outcome Outcome)
	StateChanged(subscription, from, to string)
	JournalFlushed(records int, took time.Duration, err error)
}

// Config is the input of New.
type Config struct {
	Subscriptions []Subscription
	// Journal records everything; required.
	Journal *journal.Store
	// Slot names the replication slot whose checkpoint the writer keeps;
	// SystemID, the database cluster its positions belong to.
	Slot, SystemID string
	// Instance identifies this process among those sharing the journal.
	Instance string
	// Ack is told the highest commit LSN whose transaction is fully
	// journaled; it moves the slot.
	Ack func(lsn uint64)

	Timeout           time.Duration   // per attempt; defaults to 5 s
	RetrySchedule     []time.Duration // defaults to DefaultRetrySchedule
	ResponseBodyLimit int             // bytes kept; defaults to 4096
	Concurrency       int             // per subscription; defaults to 16
	QueueSize         int             // per subscription; defaults to 1024
	UserAgent         string          // defaults to "dzhook"

	// Notify sends the admin a signed message when a subscription becomes
	// failing, recovers or is disabled; zero value: log only.
	Notify NotifyConfig

	PollInterval time.Duration // how often due work is claimed; defaults to 1 s
	Heartbeat    time.Duration // defaults to 5 s; an owner silent for 3 heartbeats is dead
	Linger       time.Duration // group commit wait; defaults to 2 ms

	// Egress decides which addresses deliveries and notifications may
	// reach; link-local and metadata addresses are refused even when nil.
	Egress *EgressGuard
	// DialContext dials receivers; defaults to Egress's dialer.
	DialContext dialFunc
	// RootCAs verify receivers' certificates; nil means the system's.
	RootCAs  *x509.CertPool
	Logger   *slog.Logger
	Observer Observer
	// NowFunc is the clock; defaults to time.Now.
	NowFunc func() time.Time
}

// Event is what Dispatch delivers.
type Event struct {
	ID        string
	Type      string
	Timestamp time.Time
	// Body is the envelope, sent byte for byte on every attempt.
	Body []byte
	// CommitLSN of the source transaction; 0 for events from time.
	CommitLSN uint64
}

// Dispatcher matches events to subscriptions and delivers them: the first
// attempt straight from memory, the journal written beside it in batches,
// retries claimed from the journal when due.
type Dispatcher struct {
	cfg    Config
	log    *slog.Logger
	obs    Observer
	writer *writer
	wake   chan struct{}
	nwake  chan struct{}
	now    func() time.Time

	// mu guards the subscription set. Dispatch and claims hold it for
	// reading while they reserve and fill queues; Reload holds it for
	// writing while it swaps subscriptions.
	mu   sync.RWMutex
	subs []*sub
	byID map[string]*sub
	// life is the workers' and the writer's context: from New until Run
	// has drained (or given up on) the journal.
	life     context.Context
	stopLife context.CancelFunc
	started  bool           // Run started the workers
	ops      sync.WaitGroup // operators' operations in progress (enter)
	stopped  bool
	loaded   atomic.Bool // LoadState done

	// lost holds claims that failed: their UPDATE may have committed
	// with the answer lost, leaving deliveries owned by this live
	// instance and in no queue. The schedule loop gives them back.
	lostMu sync.Mutex
	lost   []journal.LostClaim
	// loseAnswer, set by tests, drops a successful claim's answer, as a
	// connection that breaks after the commit does.
	loseAnswer func(what string) bool
}

// errAnswerLost is what a claim whose answer a test dropped returns.
var errAnswerLost = errors.New("the claim's answer was lost")

// claimToken marks the rows of one claim (journal.Claim).
func claimToken() string { return strconv.FormatUint(rand.Uint64(), 36) }

// claimFailed remembers a claim that failed after it may have committed,
// so the next scheduling round gives back what it took. One entry per
// subscription or delivery, however many claims failed. It does not wake
// the scheduler: a claim failing again at once would make it spin.
func (d *Dispatcher) claimFailed(subscription, delivery, token string, err error) bool {
	if !mayHaveCommitted(err) {
		return false
	}
	d.lostMu.Lock()
	d.claimFailedLocked(subscription, delivery, token)
	d.lostMu.Unlock()
	return true
}

func (d *Dispatcher) claimFailedLocked(subscription, delivery, token string) {
	i := slices.IndexFunc(d.lost, func(c journal.LostClaim) bool { return c.Subscription == subscription && c.Delivery == delivery })
	if i < 0 {
		d.lost = append(d.lost, journal.LostClaim{Subscription: subscription, Delivery: delivery})
		i = len(d.lost) - 1
	}
	d.lost[i].Tokens = append(d.lost[i].Tokens, token)
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

// releaseLost gives back what failed claims took; a release that fails is
// tried again on the next round.
func (d *Dispatcher) releaseLost(ctx context.Context) {
	d.lostMu.Lock()
	lost := d.lost
	d.lost = nil
	d.lostMu.Unlock()
	if len(lost) == 0 {
		return
	}
	var again []journal.LostClaim
	for i, c := range lost {
		n, err := d.cfg.Journal.ReleaseLost(ctx, d.cfg.Instance, c)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Warn("could not give back the deliveries of a failed claim; retrying", "err", err)
			}
			again = append(again, lost[i:]...)
			break
		}
		if n > 0 {
			d.log.Warn("a claim's answer was lost; its deliveries are claimed again", "deliveries", n, "subscription", c.Subscription, "delivery_id", c.Delivery)
		}
	}
	if len(again) > 0 {
		d.lostMu.Lock()
		for _, c := range again {
			for _, tok := range c.Tokens {
				d.claimFailedLocked(c.Subscription, c.Delivery, tok)
			}
		}
		d.lostMu.Unlock()
	}
}

// New compiles the subscriptions and returns a Dispatcher; Run starts it.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Journal == nil {
		return nil, errors.New("fanout: Config.Journal is required")
	}
	if cfg.Instance == "" {
		return nil, errors.New("fanout: Config.Instance is required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if len(cfg.RetrySchedule) == 0 {
		cfg.RetrySchedule = DefaultRetrySchedule
	}
	if cfg.ResponseBodyLimit <= 0 {
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
	if cfg.Linger < 0 {
		cfg.Linger = 0
	} else if cfg.Linger == 0 {
		cfg.Linger = DefaultLinger
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
	d := &Dispatcher{
		cfg: cfg, log: cfg.Logger.With("component", "fanout"), obs: cfg.Observer,
		wake: make(chan struct{}, 1), nwake: make(chan struct{}, 1), now: cfg.NowFunc,
	}
	if d.obs == nil {
		d.obs = nopObserver{}
	}
	subs, err := d.compileAll(cfg.Subscriptions)
	if err != nil {
		return nil, err
	}
	d.subs = subs
	d.byID = index(subs)
	d.life, d.stopLife = context.WithCancel(context.Background())
	d.writer = &writer{
		in: make(chan record, defaultWriterQueue), closed: make(chan struct{}), store: cfg.Journal, slot: cfg.Slot, systemID: cfg.SystemID, ack: cfg.Ack,
		onSpill: d.nudge, onNotify: d.nudgeNotifier, onFlush: d.obs.JournalFlushed, owner: cfg.Instance,
		log: d.log, linger: cfg.Linger, hold: DefaultHold, maxBatch: defaultMaxBatch,
	}
	return d, nil
}

// compileAll prepares subscriptions, refusing duplicates and colliding
// delivery id tags.
func (d *Dispatcher) compileAll(cfgs []Subscription) ([]*sub, error) {
	var subs []*sub
	tags := map[string]string{}
	for _, sc := range cfgs {
		s, err := compile(sc, d.cfg.Timeout, d.cfg.Concurrency, d.cfg.QueueSize, d.cfg.DialContext, &d.cfg)
		if err != nil {
			return nil, err
		}
		tag := subscriptionTag(sc.ID)
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

func index(subs []*sub) map[string]*sub {
	m := make(map[string]*sub, len(subs))
	for _, s := range subs {
		m[s.cfg.ID] = s
	}
	return m
}

// nudge wakes the scheduler.
func (d *Dispatcher) nudge() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *Dispatcher) nudgeNotifier() {
	select {
	case d.nwake <- struct{}{}:
	default:
	}
}

// Run delivers until ctx ends. It loads the subscriptions' persisted state,
// registers this instance, and runs the workers, the journal writer, the
// scheduler of due work, the notifier and the heartbeat. When ctx ends it
// stops taking new work, lets attempts in flight finish (each within the
// delivery timeout), writes everything queued to the journal, releases the
// deliveries it owned to other instances, and returns nil. Deliveries still
// in memory queues are already journaled and go out on the next start or
// from another instance.
func (d *Dispatcher) Run(ctx context.Context) error {
	life, stopLife := d.life, d.stopLife
	defer stopLife()
	// abandon ends a Run that never started its writer: nothing more is
	// accepted, and whoever waits for the writer hears it is gone.
	abandon := func(err error) error {
		d.mu.Lock()
		d.stopped = true
		d.mu.Unlock()
		close(d.writer.closed)
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}
	if err := d.cfg.Journal.Register(ctx, d.cfg.Instance); err != nil {
		return abandon(fmt.Errorf("register in journal: %w", err))
	}
	if !d.loaded.Load() {
		if err := d.LoadState(ctx); err != nil {
			return abandon(err)
		}
	}

	drain := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		d.writer.run(life, drain)
	}()

	d.mu.Lock()
	d.started = true
	for _, s := range d.subs {
		d.startWorkers(s)
	}
	d.mu.Unlock()

	var bg sync.WaitGroup
	bg.Add(3)
	go func() { defer bg.Done(); d.scheduleLoop(ctx) }()
	go func() { defer bg.Done(); d.heartbeatLoop(ctx) }()
	go func() { defer bg.Done(); d.notifyLoop(ctx) }()

	<-ctx.Done()
	d.mu.Lock()
	d.stopped = true
	subs := d.subs
	d.mu.Unlock()
	bg.Wait()
	for _, s := range subs {
		close(s.stop)
	}
	for _, s := range subs {
		s.wg.Wait()
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
	close(drain)
	select {
	case <-writerDone:
	case <-time.After(drainJournalTimeout):
		// The journal is unreachable: give up on what is queued rather
		// than hang the shutdown. None of it was acknowledged, so the
		// stream sends it again on the next start.
		d.log.Error("journal unreachable at shutdown; stopping with records unwritten (their transactions were not acknowledged and come again)", "waited", drainJournalTimeout.String())
		stopLife()
		<-writerDone
	}
	uctx, cancel := context.WithTimeout(life, 10*time.Second)
	defer cancel()
	if err := d.cfg.Journal.Unregister(uctx, d.cfg.Instance); err != nil {
		d.log.Warn("could not release owned deliveries; another instance takes them over after the heartbeat expires", "err", err)
	}
	return nil
}

// drainJournalTimeout bounds how long a stopping dispatcher waits for the
// journal to take what is queued.
const drainJournalTimeout = 20 * time.Second

// startWorkers runs a subscription's workers. Call with d.mu held.
func (d *Dispatcher) startWorkers(s *sub) {
	for i := range d.cfg.Concurrency {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			d.work(d.life, s, &s.busy[i])
		}()
	}
}

// LoadState restores pause and health from the journal. Run does it when
// it was not done before; calling it first makes the state visible (to the
// admin API) before Run starts.
func (d *Dispatcher) LoadState(ctx context.Context) error {
	states, err := d.cfg.Journal.SubscriptionStates(ctx)
	if err != nil {
		return fmt.Errorf("load subscription state: %w", err)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, st := range states {
		if s, ok := d.byID[st.ID]; ok {
			s.mu.Lock()
			s.state, s.paused = st.State, st.Paused
			s.lastSuccessAt, s.lastFailureAt, s.lastStatus, s.lastError = st.LastSuccessAt, st.LastFailureAt, st.LastStatus, st.LastError
			s.mu.Unlock()
		}
	}
	d.loaded.Store(true)
	return nil
}

// Reload replaces the subscriptions without a restart and without losing
// a delivery. An unchanged subscription keeps running as it is. A new one
// starts. A changed one starts afresh with its health and pause state, and
// its old self stops after the attempts in flight: what waited in its
// queue is journaled and goes back to the journal for the new one. A
// removed one stops the same way; its pending deliveries stay in the
// journal, and go out if it comes back.
func (d *Dispatcher) Reload(ctx context.Context, cfgs []Subscription) error {
	fresh, err := d.compileAll(cfgs)
	if err != nil {
		return err
	}
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		return errors.New("fanout: stopped")
	}
	var next, retired []*sub
	keep := map[*sub]bool{}
	for _, f := range fresh {
		old, ok := d.byID[f.cfg.ID]
		switch {
		case ok && reflect.DeepEqual(old.cfg, f.cfg):
			next = append(next, old)
			keep[old] = true
		case ok:
			old.mu.Lock()
			f.state, f.paused, f.lastSuccessAt, f.lastFailureAt = old.state, old.paused, old.lastSuccessAt, old.lastFailureAt
			old.mu.Unlock()
			next = append(next, f)
		default:
			next = append(next, f)
		}
	}
	for _, s := range d.subs {
		if !keep[s] {
			retired = append(retired, s)
		}
	}
	d.subs, d.byID = next, index(next)
	if d.started {
		for _, s := range next {
			if !keep[s] {
				d.startWorkers(s)
			}
		}
	}
	running := d.started
	d.mu.Unlock()

	for _, s := range retired {
		close(s.stop)
	}
	if running {
		for _, s := range retired {
			s.wg.Wait()
			// Its workers are gone and nothing feeds its queue any more
			// (claims check that the subscription is still current): what
			// waits there was never attempted.
			if ids := s.drainQueue(); len(ids) > 0 {
				if err := d.writer.put(ctx, record{release: ids}); err != nil {
					return err
				}
			}
		}
	}
	d.nudge()
	return nil
}

// Dispatch matches ev against the subscriptions, journals its deliveries
// (queued for the group commit) and hands each active subscription's
// delivery to its workers, so the first attempt does not wait for the
// journal. When a subscription's queue is full, its delivery waits in the
// journal as due work instead. Dispatch blocks only while the journal's
// queue is full. It is called from one goroutine, in commit order.
func (d *Dispatcher) Dispatch(ctx context.Context, ev Event) error {
	return d.dispatch(ctx, ev, false)
}

// dispatch is Dispatch; noHold writes the deliveries without waiting for
// their first attempts' outcomes.
func (d *Dispatcher) dispatch(ctx context.Context, ev Event, noHold bool) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.stopped {
		return context.Canceled
	}
	var env *filter.Envelope
	var rows []journal.DeliveryRow
	var tasks []*task
	var targets []*sub
	spilled := false
	now := d.now().UTC()
	for _, s := range d.subs {
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
			ok, err := s.filter.Match(env)
			if err != nil {
				d.log.Debug("filter did not apply to the event", "subscription", s.cfg.ID, "event_id", ev.ID, "err", err)
			}
			if !ok {
				continue
			}
		}
		row := journal.DeliveryRow{
			ID: DeliveryID(ev.ID, s.cfg.ID), EventID: ev.ID, SubscriptionID: s.cfg.ID, EventType: ev.Type, CreatedAt: now,
		}
		switch {
		case !s.accepting():
			row.State = "skipped"
			if s.cfg.QueueWhileInactive {
				row.State = "held"
			}
		case d.reserve(ctx, s):
			row.State, row.Owner, row.NextAttemptAt = "pending", d.cfg.Instance, now
			tasks = append(tasks, &task{deliveryID: row.ID, eventID: ev.ID, eventType: ev.Type, body: ev.Body, trigger: TriggerAuto})
			targets = append(targets, s)
		default:
			// The queue is full: the delivery waits in the journal and
			// the scheduler claims it when there is room.
			row.State, row.NextAttemptAt = "pending", now
			spilled = true
			s.backlog.Store(true)
		}
		d.obs.DeliveryRecorded(s.cfg.ID, row.State)
		rows = append(rows, row)
	}
	d.obs.EventDispatched(ev.Type, len(rows))
	if len(rows) == 0 {
		return nil // no subscription wants it: nothing to record
	}
	rec := record{
		event:   &journal.EventRow{ID: ev.ID, Type: ev.Type, Body: ev.Body, CommitLSN: ev.CommitLSN, OccurredAt: ev.Timestamp},
		delivs:  rows,
		spilled: spilled,
		noHold:  noHold,
	}
	if err := d.writer.put(ctx, rec); err != nil {
		for _, s := range targets {
			s.release(1)
		}
		return err
	}
	// The journal's queue holds the deliveries before any result of
	// theirs can follow them there.
	for i, t := range tasks {
		targets[i].queue <- t
	}
	return nil
}

// maxRoomWait bounds how long Dispatch waits for room in the queue of a
// receiver that keeps up.
const maxRoomWait = 100 * time.Millisecond

// reserve takes a place in a subscription's queue. When the queue is full
// and the receiver keeps up (answers 2xx, fast), it waits a moment for
// room: the stream then runs at the receiver's pace and every delivery
// takes the fast path, one journal insert with its outcome. A receiver
// that is slow, failing or hung gets no wait: its deliveries go to the
// journal at once, so it never delays the others.
func (d *Dispatcher) reserve(ctx context.Context, s *sub) bool {
	if s.reserve(1) == 1 {
		return true
	}
	if !s.keepsUp() {
		return false
	}
	deadline := time.NewTimer(maxRoomWait)
	defer deadline.Stop()
	for {
		select {
		case <-s.room:
		case <-deadline.C:
			return false
		case <-ctx.Done():
			return false
		}
		if s.reserve(1) == 1 {
			return true
		}
		if !s.keepsUp() {
			return false
		}
	}
}

// ArmTimers queues an SLA's timer change in the journal, in order with the
// transaction's events (so it is durable before the transaction is
// acknowledged).
func (d *Dispatcher) ArmTimers(ctx context.Context, c journal.TimerChange) error {
	return d.put(ctx, record{timer: &c})
}

// put queues a record for the journal unless the dispatcher has stopped.
// It does not hold d.mu while the writer's queue is full: a shutdown
// waiting for the lock would otherwise wait on a caller whose context
// never ends (an operator's request).
func (d *Dispatcher) put(ctx context.Context, r record) error {
	d.mu.RLock()
	stopped := d.stopped
	d.mu.RUnlock()
	if stopped {
		return context.Canceled
	}
	return d.writer.put(ctx, r)
}

// DispatchDurable is Dispatch for an event from time (the SLA clock): it
// returns once the event and its deliveries are journaled, so the clock
// may then mark its timer fired.
func (d *Dispatcher) DispatchDurable(ctx context.Context, ev Event) error {
	if err := d.dispatch(ctx, ev, true); err != nil {
		return err
	}
	done := make(chan error, 1)
	if err := d.put(ctx, record{done: done}); err != nil {
		return err
	}
	return d.waitDurable(ctx, done)
}

// Commit marks the end of the transaction committed at lsn: once the
// journal holds everything queued before it, lsn is acknowledged.
func (d *Dispatcher) Commit(ctx context.Context, lsn uint64) error {
	return d.put(ctx, record{commit: lsn})
}

// Reject records an outbox row or message that could not become an event.
func (d *Dispatcher) Reject(ctx context.Context, r journal.Rejection) error {
	return d.put(ctx, record{reject: &r})
}

// work runs one worker of a subscription until it is stopped; busy says
// since when its attempt in flight runs.
func (d *Dispatcher) work(life context.Context, s *sub, busy *atomic.Int64) {
	for {
		select {
		case <-s.stop:
			return
		case t := <-s.queue:
			s.release(1)
			select {
			case s.room <- struct{}{}:
			default:
			}
			if s.backlog.Load() && int64(len(s.queue)) < s.size/2 {
				d.nudge() // due work waits in the journal and there is room
			}
			busy.Store(time.Now().UnixNano())
			d.attempt(life, s, t)
			busy.Store(0)
		}
	}
}

// attempt makes one attempt and queues its outcome for the journal.
func (d *Dispatcher) attempt(life context.Context, s *sub, t *task) attemptResult {
	n := t.attempts + 1
	res := post(life, s.client, request{
		url: s.cfg.URL, body: t.body, eventType: t.eventType, eventID: t.eventID, deliveryID: t.deliveryID,
		attempt: n, secret: s.cfg.Secret, standardKey: s.standardKey, headers: s.headers, userAgent: d.cfg.UserAgent,
	}, d.cfg.Timeout, d.cfg.ResponseBodyLimit)
	ok := res.Status >= 200 && res.Status < 300
	if !t.test {
		s.observe(res.Duration, ok)
	}
	now := d.now().UTC()
	upd := journal.DeliveryUpdate{
		ID: t.deliveryID, Attempts: n, LastStatus: res.Status, LastError: errorExcerpt(res.Error), LastAttemptAt: res.At,
	}
	dec := Decide(n, res.Status, res.RetryAfter, d.cfg.RetrySchedule, now)
	if t.trigger != TriggerAuto && dec.Outcome == Retry {
		// A manual or test attempt is one attempt: no new schedule.
		dec = Decision{Outcome: Failed}
	}
	switch {
	case dec.Outcome == Delivered:
		upd.State = "delivered"
	case dec.Outcome == Retry:
		upd.State, upd.NextAttemptAt = "pending", dec.NextAttemptAt
	case t.keepPending:
		// A manual retry of a delivery still on its schedule failed: the
		// schedule goes on.
		upd.State, upd.NextAttemptAt = "pending", t.keepNext
	default:
		upd.State = "failed"
	}
	rec := record{
		update: &upd,
		attempt: &journal.AttemptRow{
			DeliveryID: t.deliveryID, Attempt: n, At: res.At, Trigger: t.trigger, StatusCode: res.Status,
			Duration: res.Duration, ResponseBody: res.Body, ErrorClass: res.ErrorClass, Error: errorExcerpt(res.Error),
		},
	}
	if !t.test {
		s.stats.record(now, res.Duration, dec.Outcome)
		rec.sub, rec.notify = d.health(s, dec, res)
	}
	d.obs.AttemptFinished(s.cfg.ID, res.Duration, res.Status, res.ErrorClass, dec.Outcome)
	if t.durable != nil {
		rec.done = t.durable
	}
	if err := d.writer.put(life, rec); err != nil {
		d.log.Error("attempt outcome not journaled; the delivery is attempted again", "delivery_id", t.deliveryID, "err", err)
	}
	if res.ErrorClass != "" {
		d.log.Debug("attempt failed", "subscription", s.cfg.ID, "delivery_id", t.deliveryID, "attempt", n,
			"status_code", res.Status, "error_class", res.ErrorClass, "outcome", dec.Outcome.String())
	}
	if t.reply != nil {
		t.reply <- res
	}
	return res
}

// health updates a subscription's health after an attempt and returns the
// row to journal, with a notification when the state changed: failing
// once a delivery exhausts its schedule, healthy again on the next 2xx,
// disabled on 410 Gone.
func (d *Dispatcher) health(s *sub, dec Decision, res attemptResult) (*journal.SubscriptionState, *journal.NotificationRow) {
	s.mu.Lock()
	prev := s.state
	st := &journal.SubscriptionState{ID: s.cfg.ID, LastStatus: res.Status}
	switch {
	case dec.Outcome == Delivered:
		s.lastSuccessAt, st.LastSuccessAt = res.At, res.At
		if s.state == StateFailing {
			s.state = StateHealthy
		}
	default:
		s.lastFailureAt, st.LastFailureAt = res.At, res.At
		s.lastError, st.LastError = errorExcerpt(res.Error), errorExcerpt(res.Error)
		switch {
		case dec.Outcome == Gone:
			s.state = StateDisabled
		case dec.Exhausted && s.state == StateHealthy:
			s.state = StateFailing
		}
	}
	s.lastStatus = res.Status
	state := s.state
	st.State = state
	st.Changed = state != prev
	s.mu.Unlock()
	if !st.Changed {
		return st, nil
	}
	lvl := slog.LevelError
	if state == StateHealthy {
		lvl = slog.LevelInfo
	}
	d.log.Log(context.Background(), lvl, "subscription changed state", "subscription", s.cfg.ID, "from", prev, "to", state,
		"status_code", res.Status, "error_class", res.ErrorClass)
	d.obs.StateChanged(s.cfg.ID, prev, state)
	return st, d.notification(s.cfg.ID, prev, state, res)
}

// scheduleLoop claims due deliveries from the journal for subscriptions
// with room in their queues, every PollInterval or when nudged.
func (d *Dispatcher) scheduleLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.wake:
		}
		d.releaseLost(ctx)
		d.mu.RLock()
		subs := d.subs
		d.mu.RUnlock()
		for _, s := range subs {
			if ctx.Err() != nil {
				return
			}
			if !s.accepting() {
				continue
			}
			if err := d.claim(ctx, s); err != nil && ctx.Err() == nil {
				d.log.Warn("claiming due deliveries failed; retrying", "subscription", s.cfg.ID, "err", err)
			}
		}
	}
}

// claim takes due deliveries of one subscription, up to half the room
// left in its queue (reserved first, so nothing claimed is left without a
// place; only half, so the stream's own deliveries still find room while
// the claim runs).
func (d *Dispatcher) claim(ctx context.Context, s *sub) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.byID[s.cfg.ID] != s || d.stopped {
		return nil // replaced or stopping meanwhile
	}
	free := s.size - s.reserved.Load()
	if free < 2 {
		return nil
	}
	n := s.reserve(min(free/2, 1024))
	token := claimToken()
	claimed, err := d.cfg.Journal.Claim(ctx, s.cfg.ID, int(n), d.cfg.Instance, token, 3*d.cfg.Heartbeat)
	if err == nil && d.loseAnswer != nil && d.loseAnswer("claim") {
		claimed, err = nil, errAnswerLost
	}
	s.release(n - int64(len(claimed)))
	if err != nil {
		d.claimFailed(s.cfg.ID, "", token, err)
		return err
	}
	for _, c := range claimed {
		trigger := TriggerAuto
		if c.Manual {
			trigger = TriggerManual
		}
		s.queue <- &task{deliveryID: c.ID, eventID: c.EventID, eventType: c.EventType, body: c.Body, attempts: c.Attempts, trigger: trigger, test: c.Test}
	}
	if len(claimed) == int(n) {
		s.backlog.Store(true)
		d.nudge() // there may be more
	} else {
		s.backlog.Store(false)
	}
	return nil
}

// heartbeatLoop keeps this instance alive in the journal.
func (d *Dispatcher) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := d.cfg.Journal.Heartbeat(ctx, d.cfg.Instance); err != nil && ctx.Err() == nil {
				d.log.Warn("journal heartbeat failed", "err", err)
			}
		}
	}
}

type nopObserver struct{}

func (nopObserver) EventDispatched(string, int)                                 {}
func (nopObserver) DeliveryRecorded(string, string)                             {}
func (nopObserver) AttemptFinished(string, time.Duration, int, string, Outcome) {}
func (nopObserver) StateChanged(string, string, string)                         {}
func (nopObserver) JournalFlushed(int, time.Duration, error)                    {}
