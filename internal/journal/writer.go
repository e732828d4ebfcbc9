package journal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/dzdesk/dzhook/internal/backoff"
)

// Record is one entry of the Writer's queue. The queue is FIFO, and that
// order is the acknowledgement contract: an event's deliveries are put
// before any outcome of their attempts, and a transaction's Commit after
// everything the transaction produced.
type Record struct {
	Event      *EventRow
	Deliveries []DeliveryRow
	// Spilled: some deliveries wait in the journal for the scheduler, or
	// became claimable there (WriterConfig.OnSpill is told once the batch
	// holding this record is written).
	Spilled bool
	// NoHold writes the deliveries now, without waiting for the outcome
	// of their first attempts.
	NoHold  bool
	Update  *DeliveryUpdate
	Attempt *AttemptRow
	Sub     *SubscriptionState
	Reject  *Rejection
	Notify  *NotificationRow
	Timer   *TimerChange
	// Release gives back deliveries this instance owns and will not
	// attempt (they waited in the queue of a subscription a reload
	// stopped, or behind an ordered delivery that now waits for its
	// retry): they go back to the journal, unowned, for whoever claims
	// them.
	Release []string
	// Unhold writes these deliveries now if they are held, still owned:
	// an ordered key whose later deliveries go to the journal makes its
	// earlier ones, in memory, visible there first, so that no claim can
	// take a later one while an earlier one is being attempted.
	Unhold []string
	// Commit marks a transaction boundary: its commit LSN. CommitEnd is
	// the end of its commit record, the position PostgreSQL is told is
	// flushed once the commit is acknowledged; it is kept with the
	// checkpoint so that a slot found past it is known to have started
	// elsewhere (a gap). Zero means Commit.
	Commit, CommitEnd pglogrepl.LSN
	// Done is told when the record is durable (nil), or that it will
	// never be.
	Done chan<- error
	// Durable, when set, is called like Done is told, from Run's
	// goroutine (so it must not block), without ending the batch's
	// linger: an observer's, such as the end of a tracing span, that no
	// one waits for. Deliveries held for their first attempt's outcome
	// are written later, as with Done.
	Durable func(error)
}

// BatchStore is what the Writer needs of the journal: one batch written
// in one transaction, all or nothing. *Store is one.
type BatchStore interface {
	Write(ctx context.Context, b *Batch) error
}

// Defaults of WriterConfig.
const (
	DefaultLinger       = 50 * time.Millisecond
	DefaultHold         = time.Second
	DefaultWriterQueue  = 8192
	DefaultMaxBatch     = 4096
	DefaultDrainTimeout = 20 * time.Second
	// SpilledLinger bounds the linger of a batch holding a Spilled record
	// (see WriterConfig.Linger).
	SpilledLinger = 10 * time.Millisecond
)

// WriterConfig is the input of NewWriter.
type WriterConfig struct {
	// Store receives the batches; required.
	Store BatchStore
	// Slot names the replication slot whose checkpoint the writer keeps;
	// SystemID, the database cluster its positions belong to.
	Slot, SystemID string
	// Timeline, when set, returns the timeline the stream reads now
	// (cdc.Stream.Timeline), recorded with each checkpoint: a stream
	// moves to a new timeline only when it carries on every position
	// handed over, so the checkpoint's position is on it. 0: unknown.
	Timeline func() int32
	// Owner is this instance: releases give back only what it owns.
	Owner string
	// Ack is told the highest commit LSN whose transaction is wholly
	// journaled, after the batch that made it so is written; it moves the
	// replication slot. Called from Run's goroutine, in increasing order.
	Ack func(pglogrepl.LSN)
	// OnSpill is called after a batch that wrote spilled deliveries
	// (wakes the scheduler); OnNotify after one that wrote a notification.
	OnSpill, OnNotify func()
	// OnFlush observes every batch written or failed (metrics).
	OnFlush func(records int, took time.Duration, err error)
	// OnWriteError is told of every failed attempt to write a batch
	// (the writer retries it): the engine ends the replication session,
	// since nothing can be acknowledged until the journal is back.
	OnWriteError func(err error)
	// OnFenced is told, once, that the journal refused this process's
	// stream rows (ErrTimelineMoved): the engine stops. The writer goes
	// on writing what else it is given (attempts' outcomes, health,
	// notifications) until its Run ends.
	OnFenced func(err error)
	Logger   *slog.Logger
	// Linger is how long a batch waits for more records once the first
	// arrived. Defaults to 50 ms: the deliveries' first attempts never
	// wait for the journal, so a linger delays only the acknowledgement to
	// PostgreSQL and the journal's view, and at moderate rates it turns a
	// round trip per transaction into one per linger. What waits for the
	// journal does not wait so long: a record with Done, or a full batch
	// queued, ends the linger at once; a Spilled record (work the
	// scheduler claims from the journal once it is written: an ordered
	// key's next delivery, deliveries for other processes) ends it within
	// SpilledLinger. Negative: no wait.
	Linger time.Duration
	// Hold is how long a delivery whose first attempt is in flight is
	// kept back to be written once, with its outcome. Defaults to 1 s;
	// negative: never held.
	Hold time.Duration
	// QueueSize bounds the records waiting to be written (then Put
	// blocks: backpressure up to the stream). Defaults to 8192.
	QueueSize int
	// MaxBatch bounds the records of one batch. Defaults to 4096.
	MaxBatch int
	// DrainTimeout bounds how long a stopping Writer tries to write what
	// is queued. Defaults to 20 s.
	DrainTimeout time.Duration
}

// Writer is the journal's group commit, and the owner of the
// acknowledgement contract:
//
//	the acknowledged LSN never passes a transaction with a delivery
//	that is not durable in the journal.
//
// It writes what accumulated while the last batch was being written
// (lingering a moment first) in one transaction, and then acknowledges the
// highest commit LSN whose transaction is wholly journaled.
//
// A delivery whose first attempt is in flight (pending, owned, and not
// NoHold) is held back for up to Hold, so that it is usually written once,
// with its outcome, instead of inserted and then updated (an update
// touches every index of the table: it is the journal's most expensive
// write). A transaction is not acknowledged while one of its deliveries is
// held, so holding delays the slot by at most Hold and never loses
// anything: a delivery held when the process dies was never acknowledged,
// and the stream sends it again.
//
// A batch that cannot be written is retried with backoff for as long as
// the Writer runs; meanwhile its queue fills and Put blocks, so the
// stream waits. If the Writer stops before the batch is written, the
// Writer is broken: nothing after that batch is written or acknowledged,
// since a later checkpoint would cover the lost batch's transactions.
type Writer struct {
	cfg    WriterConfig
	log    *slog.Logger
	in     chan Record
	closed chan struct{} // closed when Run returns
	// failingSince is when the batch being written first failed (unix
	// ns; 0: the last write went through): FailingSince.
	failingSince atomic.Int64
	// urgent ends a linger: a record someone waits for was put, or a
	// full batch is queued.
	urgent chan struct{}
	// spilled shortens a linger to SpilledLinger: a Spilled record was put.
	spilled chan struct{}
	// What the queue holds that decides a linger: its rows (a batch full
	// by rows, batchBuilder.full), and its records someone waits for
	// (Done) or the scheduler will claim from (Spilled). Signals only wake
	// a linger; these say, whatever batch a signal was spent on, how long
	// the next one may be.
	queuedRows, queuedDone, queuedSpilled atomic.Int64
	linger                                *time.Timer // Run's goroutine's

	// The state below belongs to Run's goroutine.
	seq      uint64
	held     map[string]*heldDelivery
	heldFIFO []*heldDelivery // by arrival: deadlines are in order too
	markers  []marker        // commits received and not yet acknowledged
	written  pglogrepl.LSN   // the checkpoint last written
	broken   error
	// fenced is the journal's refusal of this process's stream rows
	// (ErrTimelineMoved): from then on every batch is written without
	// them (strip), and nothing more is acknowledged.
	fenced error
	// stripped are the events and deliveries strip left out: a held
	// delivery, an attempt or an outcome of one comes in a later batch.
	strippedEvents, strippedDeliveries map[string]bool
	// unwritten is a batch whose write was cut short by Run's context
	// ending (a shutdown, not a failure of the journal): the drain writes
	// it first.
	unwritten *batchBuilder
}

type heldDelivery struct {
	row      DeliveryRow
	seq      uint64
	deadline time.Time
	gone     bool // written already (its outcome came, or it expired)
}

// marker is a commit: acknowledgeable once no record put before it
// (seq) is held.
type marker struct {
	lsn, end pglogrepl.LSN
	seq      uint64
}

// ErrWriterClosed: the Writer stopped; the record was not journaled.
var ErrWriterClosed = errors.New("journal: the writer has stopped")

// NewWriter returns a Writer; Run starts it.
func NewWriter(cfg WriterConfig) (*Writer, error) {
	if cfg.Store == nil {
		return nil, errors.New("journal: WriterConfig.Store is required")
	}
	switch {
	case cfg.Linger < 0:
		cfg.Linger = 0
	case cfg.Linger == 0:
		cfg.Linger = DefaultLinger
	}
	switch {
	case cfg.Hold < 0:
		cfg.Hold = 0
	case cfg.Hold == 0:
		cfg.Hold = DefaultHold
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultWriterQueue
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Writer{
		cfg: cfg, log: cfg.Logger.With("component", "journal-writer"),
		in: make(chan Record, cfg.QueueSize), closed: make(chan struct{}), held: map[string]*heldDelivery{},
		urgent: make(chan struct{}, 1), spilled: make(chan struct{}, 1), linger: stoppedTimer(),
	}, nil
}

// Put queues a record; it blocks while the queue is full (backpressure up
// to the replication stream) and returns ctx's error if ctx ends first,
// or ErrWriterClosed once Run has returned.
func (w *Writer) Put(ctx context.Context, r Record) error {
	select {
	case <-w.closed:
		return ErrWriterClosed
	default:
	}
	// Counted before it is queued, so that the writer, which takes it out
	// of the counts when it takes it, never sees them below zero.
	w.count(&r, 1)
	// The queue has room almost always: a send that does not wait is a
	// fraction of a select of three cases, and Put is called three times
	// per event (a hundredth of dzhook's CPU at 500 tx/s).
	select {
	case w.in <- r:
		w.queued(&r)
		return nil
	default:
	}
	select {
	case w.in <- r:
		w.queued(&r)
		return nil
	case <-ctx.Done():
		w.count(&r, -1)
		return ctx.Err()
	case <-w.closed:
		w.count(&r, -1)
		return ErrWriterClosed
	}
}

// queued signals what r, just queued, asks of the linger.
func (w *Writer) queued(r *Record) {
	switch {
	case r.Done != nil || w.fullQueued():
		signal(w.urgent)
	case r.Spilled:
		signal(w.spilled)
	}
}

// Commit marks the end of the transaction committed at lsn, whose commit
// record ends at end: once the journal holds everything put before it,
// lsn is acknowledged.
func (w *Writer) Commit(ctx context.Context, lsn, end pglogrepl.LSN) error {
	return w.Put(ctx, Record{Commit: lsn, CommitEnd: end})
}

// Idle records a position the stream was idle at (cdc.Config.PersistIdle)
// as a commit just before it, ending at it: the checkpoint then covers
// every transaction committed before lsn, and Ack reports lsn-1. Not lsn:
// the commit record of a transaction open while the stream was idle can
// start exactly there (a keepalive's WAL end is where the next record
// begins), and a checkpoint at lsn would skip it when it is streamed
// again (after a crash: lost), while Ack(lsn) would report it flushed.
func (w *Writer) Idle(ctx context.Context, lsn pglogrepl.LSN) error {
	if lsn == 0 {
		return nil
	}
	return w.Put(ctx, Record{Commit: lsn - 1, CommitEnd: lsn})
}

// Reject records an outbox row or message that could not become an event.
func (w *Writer) Reject(ctx context.Context, r Rejection) error {
	return w.Put(ctx, Record{Reject: &r})
}

// ArmTimers queues an SLA's timer change, in order with its transaction's
// events (so it is durable before the transaction is acknowledged).
func (w *Writer) ArmTimers(ctx context.Context, c TimerChange) error {
	return w.Put(ctx, Record{Timer: &c})
}

// Barrier returns once everything put before it is written, except the
// deliveries the Writer holds (in flight: they are written with their
// outcome, or at their deadline).
func (w *Writer) Barrier(ctx context.Context) error {
	done := make(chan error, 1)
	if err := w.Put(ctx, Record{Done: done}); err != nil {
		return err
	}
	return w.Wait(ctx, done)
}

// Wait waits for a record's Done channel: until the record is durable,
// ctx ends, or the Writer stopped without writing it.
func (w *Writer) Wait(ctx context.Context, done <-chan error) error {
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-w.closed:
		select {
		case err := <-done:
			return err // written in the last batch
		default:
			return ErrWriterClosed
		}
	}
}

// Run writes batches until ctx ends. Then it writes what is queued and
// what it holds (trying for up to DrainTimeout), and returns nil; what it
// could not write was never acknowledged, so the stream sends it again on
// the next start. A batch refused with ErrTimelineMoved (the process
// read past a failover's fork the journal was moved back to) is written
// without what the stream read, as every batch after it, nothing more is
// acknowledged, and OnFenced is told: the process stops. Stop it after everything that puts records (the
// stream's handler, the deliverers) has stopped: a Put after Run returned
// fails with ErrWriterClosed.
func (w *Writer) Run(ctx context.Context) error {
	defer close(w.closed)
	// One timer for the next held delivery's deadline, reset each round
	// (since Go 1.23 Stop and Reset leave no stale tick behind).
	expiry := stoppedTimer()
	defer expiry.Stop()
	var last batchSizes
	for {
		if ctx.Err() != nil {
			// A shutdown, maybe one that cut the last batch short: the
			// drain writes it and what is queued. Taking another record
			// first (select picks at random among ready cases) would try
			// its batch on the ended context and mark the journal broken.
			w.drain(ctx)
			return nil
		}
		b := newBatchBuilderFor(last)
		var expire <-chan time.Time
		if d, ok := w.nextDeadline(); ok {
			expiry.Reset(time.Until(d))
			expire = expiry.C
		}
		select {
		case r := <-w.in:
			w.count(&r, -1)
			w.add(b, r)
			w.gather(ctx, b, r.Done != nil)
		case <-expire:
		case <-ctx.Done():
			expiry.Stop()
			continue // to the drain, above
		}
		expiry.Stop()
		w.flush(ctx, b, time.Now())
		last = b.sizes()
	}
}

// gather waits the linger time once, then adds whatever is queued, up to
// the batch size. It sleeps on the timer alone instead of taking each
// record as it arrives: at a helpdesk's usual rates records come one by
// one, and waking this goroutine for each (then the batch's round trip
// per transaction) was most of what an event cost. What waits for the
// journal ends the linger sooner (WriterConfig.Linger): a record someone
// waits for (Done: a barrier, the SLA clock) or a full batch queued at
// once, a Spilled record within SpilledLinger.
func (w *Writer) gather(ctx context.Context, b *batchBuilder, urgent bool) {
	if urgent {
		// Its own signal is spent: the next batch lingers as usual.
		select {
		case <-w.urgent:
		default:
		}
	}
	if w.cfg.Linger > 0 && !urgent && !b.full(w.cfg.MaxBatch) && w.queuedDone.Load() == 0 && !w.fullQueued() {
		start, linger := time.Now(), w.cfg.Linger
		if b.spilled || w.queuedSpilled.Load() > 0 {
			linger = min(linger, SpilledLinger)
		}
		w.linger.Reset(linger)
	wait:
		for {
			select {
			case <-w.linger.C:
				break wait
			case <-w.spilled:
				if linger > SpilledLinger {
					linger = SpilledLinger
					w.linger.Reset(max(0, time.Until(start.Add(linger))))
				}
			case <-w.urgent:
				break wait
			case <-ctx.Done():
				break wait
			}
		}
		w.linger.Stop()
	}
	w.takeQueued(b)
}

// count adds r to the queue's counts (sign 1), or takes it out (-1).
func (w *Writer) count(r *Record, sign int64) {
	w.queuedRows.Add(sign * int64(r.rows()))
	if r.Done != nil {
		w.queuedDone.Add(sign)
	}
	if r.Spilled {
		w.queuedSpilled.Add(sign)
	}
}

// fullQueued reports whether the queue holds a full batch.
func (w *Writer) fullQueued() bool {
	return len(w.in) >= w.cfg.MaxBatch || w.queuedRows.Load() >= int64(batchRows(w.cfg.MaxBatch))
}

// signal wakes the receiver of c, if it is not woken already.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// takeQueued adds what is queued now, up to the batch size.
func (w *Writer) takeQueued(b *batchBuilder) {
	for !b.full(w.cfg.MaxBatch) {
		select {
		case r := <-w.in:
			w.count(&r, -1)
			w.add(b, r)
		default:
			return
		}
	}
}

// drain writes everything queued and everything held, at shutdown, on a
// context of its own bounded by DrainTimeout.
func (w *Writer) drain(parent context.Context) {
	ctx, cancel := context.WithTimeout(context.WithValue(context.WithoutCancel(parent), drainKey{}, true), w.cfg.DrainTimeout)
	defer cancel()
	if bb := w.unwritten; bb != nil {
		w.unwritten = nil
		w.flush(ctx, bb, time.Now())
	}
	for {
		b := newBatchBuilderFor(batchSizes{})
		w.takeQueued(b)
		if b.records == 0 {
			break
		}
		w.flush(ctx, b, time.Now())
	}
	// Release every held delivery: it goes to the journal as in flight,
	// and the instance's exit releases its ownership.
	w.flush(ctx, newBatchBuilderFor(batchSizes{}), time.Now().Add(w.cfg.Hold+time.Hour))
	if ctx.Err() != nil {
		w.log.Error("journal unreachable at shutdown; stopping with records unwritten (their transactions were not acknowledged and come again)",
			"waited", w.cfg.DrainTimeout.String())
	}
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

func (w *Writer) nextDeadline() (time.Time, bool) {
	for len(w.heldFIFO) > 0 && w.heldFIFO[0].gone {
		w.heldFIFO = w.heldFIFO[1:]
	}
	if len(w.heldFIFO) == 0 {
		return time.Time{}, false
	}
	return w.heldFIFO[0].deadline, true
}

// add merges one record into the batch.
func (w *Writer) add(bb *batchBuilder, r Record) {
	w.seq++
	bb.records++
	b := &bb.b
	if r.Event != nil {
		b.Events = append(b.Events, *r.Event)
	}
	for _, d := range r.Deliveries {
		if h, ok := w.held[d.ID]; ok && !h.gone {
			continue // handed twice (a replayed transaction): held already
		}
		if d.State == Pending && d.Owner != "" && w.cfg.Hold > 0 && !r.NoHold && !d.NoHold {
			h := &heldDelivery{row: d, seq: w.seq, deadline: time.Now().Add(w.cfg.Hold)}
			w.held[d.ID] = h
			w.heldFIFO = append(w.heldFIFO, h)
			continue
		}
		bb.addDelivery(d)
	}
	bb.spilled = bb.spilled || r.Spilled
	if u := r.Update; u != nil {
		if h, ok := w.held[u.ID]; ok {
			// The first attempt's outcome: write the delivery once, with
			// it; one that may not apply (Unless) goes after the row,
			// as an update of its own that keeps its condition (merged,
			// it overwrote the row of an instance that took the
			// delivery over from a replayed transaction: found by a
			// review).
			delete(w.held, u.ID)
			h.gone = true
			if u.Unless == "" {
				mergeUpdate(&h.row, u)
			}
			bb.addDelivery(h.row)
			if u.Unless != "" {
				bb.addUpdate(*u)
			}
		} else {
			bb.addUpdate(*u)
		}
	}
	if r.Attempt != nil {
		b.Attempts = append(b.Attempts, *r.Attempt)
	}
	if r.Sub != nil {
		bb.addSub(*r.Sub)
	}
	if r.Reject != nil {
		b.Rejections = append(b.Rejections, *r.Reject)
	}
	if r.Notify != nil {
		b.Notifications = append(b.Notifications, *r.Notify)
		bb.notified = true
	}
	if r.Timer != nil {
		// Every change, in order: the journal applies an SLA's changes of
		// one batch one after another (queueTimers), as it would in
		// batches of their own.
		b.Timers = append(b.Timers, *r.Timer)
	}
	// Write what is held of them now: a release that follows in the same
	// batch covers it; an unheld delivery is visible with this batch.
	w.unhold(bb, r.Release)
	w.unhold(bb, r.Unhold)
	if len(r.Release) > 0 {
		b.Release = append(b.Release, Release{IDs: r.Release})
	}
	if r.Commit != 0 {
		w.markers = append(w.markers, marker{lsn: r.Commit, end: max(r.Commit, r.CommitEnd), seq: w.seq})
	}
	if r.Done != nil {
		bb.dones = append(bb.dones, r.Done)
		bb.doneRows = append(bb.doneRows, rowsOf(&r))
	}
	if r.Durable != nil {
		bb.durables = append(bb.durables, r.Durable)
		bb.durableRows = append(bb.durableRows, rowsOf(&r))
	}
}

// recordRows is what rows a record someone waits for wrote, to tell it
// whether they were dropped (strip).
type recordRows struct {
	event           string // an event of the stream's
	stream          bool   // an SLA timer change, a rejection of the stream's
	deliveries      []DeliveryRow
	update, attempt string // the deliveries they change
}

func rowsOf(r *Record) recordRows {
	rr := recordRows{deliveries: r.Deliveries, stream: r.Timer != nil || r.Reject != nil && r.Reject.CommitLSN != 0}
	if r.Event != nil && r.Event.CommitLSN != 0 {
		rr.event = r.Event.ID
	}
	if r.Update != nil {
		rr.update = r.Update.ID
	}
	if r.Attempt != nil {
		rr.attempt = r.Attempt.DeliveryID
	}
	return rr
}

// dropped reports whether strip took out rows of a record (after the
// journal refused the stream's: w.fenced).
func (w *Writer) dropped(rr *recordRows) bool {
	if w.fenced == nil {
		return false
	}
	if rr.stream || rr.event != "" || w.strippedDeliveries[rr.update] || w.strippedDeliveries[rr.attempt] {
		return true
	}
	for i := range rr.deliveries {
		if w.strippedDeliveries[rr.deliveries[i].ID] || w.strippedEvents[rr.deliveries[i].EventID] {
			return true
		}
	}
	return false
}

// unhold adds the held deliveries among ids to the batch.
func (w *Writer) unhold(bb *batchBuilder, ids []string) {
	for _, id := range ids {
		if h, ok := w.held[id]; ok && !h.gone {
			h.gone = true
			delete(w.held, id)
			bb.addDelivery(h.row)
		}
	}
}

func mergeUpdate(d *DeliveryRow, u *DeliveryUpdate) {
	if u.Attempts < d.Attempts {
		return
	}
	d.State, d.Attempts, d.NextAttemptAt, d.Owner = u.State, u.Attempts, u.NextAttemptAt, u.Owner
	d.LastStatus, d.LastError, d.LastAttemptAt = u.LastStatus, u.LastError, u.LastAttemptAt
	if d.Body == nil {
		d.Body = u.Body
	}
}

// flush releases held deliveries whose time is up (as of now), writes the
// batch with the checkpoint of every transaction now wholly journaled, and
// acknowledges it.
func (w *Writer) flush(ctx context.Context, bb *batchBuilder, now time.Time) {
	for len(w.heldFIFO) > 0 && (w.heldFIFO[0].gone || !w.heldFIFO[0].deadline.After(now)) {
		h := w.heldFIFO[0]
		w.heldFIFO = w.heldFIFO[1:]
		if !h.gone {
			h.gone = true
			delete(w.held, h.row.ID)
			bb.addDelivery(h.row)
		}
	}
	// A commit is acknowledged once nothing put before it is held.
	minHeld := uint64(math.MaxUint64)
	if _, ok := w.nextDeadline(); ok {
		minHeld = w.heldFIFO[0].seq
	}
	var ackable, end pglogrepl.LSN
	n := 0
	for n < len(w.markers) && w.markers[n].seq < minHeld {
		ackable = max(ackable, w.markers[n].lsn)
		end = max(end, w.markers[n].end)
		n++
	}
	if ackable > w.written {
		bb.b.Slot, bb.b.Checkpoint, bb.b.CheckpointEnd = w.cfg.Slot, ackable, end
	}
	if w.cfg.Slot != "" {
		bb.b.Fence, bb.b.SystemID = w.cfg.Slot, w.cfg.SystemID
		if w.cfg.Timeline != nil {
			bb.b.Timeline = w.cfg.Timeline()
		}
	}
	for i := range bb.b.Release {
		bb.b.Release[i].Owner = w.cfg.Owner
	}
	if bb.records == 0 && bb.b.Empty() {
		return
	}

	if w.fenced != nil {
		w.strip(bb)
	}
	start := time.Now()
	err := w.broken
	if err == nil && !bb.b.Empty() {
		err = w.write(ctx, bb)
		if errors.Is(err, ErrTimelineMoved) && w.fenced == nil {
			w.fenced = err
			w.log.Error("the journal refused what this process read of the old timeline, past the fork another process's start moved the checkpoint back to after a failover: it is dropped, what else is queued is written, nothing more is acknowledged, and the process stops", "err", err)
			if w.cfg.OnFenced != nil {
				w.cfg.OnFenced(err)
			}
			w.strip(bb)
			err = nil
			if !bb.b.Empty() {
				err = w.write(ctx, bb)
			}
		}
		if err != nil && ctx.Err() != nil && w.unwritten == nil && !isDrain(ctx) {
			// Cut short by the shutdown, not refused by the journal: the
			// drain writes it (idempotently) before anything else.
			w.unwritten = bb
			return
		}
	}
	took := time.Since(start)
	if w.cfg.OnFlush != nil {
		w.cfg.OnFlush(bb.records, took, err)
	}
	w.log.Debug("journal batch written", "records", bb.records, "events", len(bb.b.Events), "deliveries", len(bb.b.Deliveries),
		"updates", len(bb.b.Updates), "attempts", len(bb.b.Attempts), "held", len(w.held), "took", took.Round(time.Microsecond).String())
	if err != nil {
		if w.broken == nil {
			w.broken = fmt.Errorf("journal batch not written: %w", err)
			w.log.Error("journal batch not written; nothing after it is acknowledged, the stream sends it again on the next start", "err", err, "records", bb.records)
		}
		for _, d := range bb.dones {
			d <- w.broken
		}
		for _, f := range bb.durables {
			f(w.broken)
		}
		return
	}
	w.markers = w.markers[n:]
	if ackable > w.written && w.fenced == nil {
		w.written = ackable
		if w.cfg.Ack != nil {
			w.cfg.Ack(ackable)
		}
	}
	// A record someone waits for is not durable when its own rows were
	// dropped; one whose rows were written is, whatever else its batch
	// lost (an operator's retry, a test send: told otherwise, the
	// operator would try again, and the webhook go out twice; found by
	// reviews).
	for i, d := range bb.dones {
		if w.dropped(&bb.doneRows[i]) {
			d <- w.fenced
		} else {
			d <- nil
		}
	}
	for i, f := range bb.durables {
		if w.dropped(&bb.durableRows[i]) {
			f(w.fenced)
		} else {
			f(nil)
		}
	}
	if bb.spilled && w.cfg.OnSpill != nil {
		w.cfg.OnSpill()
	}
	if bb.notified && w.cfg.OnNotify != nil {
		w.cfg.OnNotify()
	}
}

// strip takes out of bb what the stream read, which the journal refused
// (w.fenced): events and rejections with a commit position, SLA timer
// changes, the checkpoint; and the deliveries of those events, with
// their attempts and outcomes, now or in a later batch (a held delivery).
// What else it holds (attempts of deliveries journaled before, health,
// notifications, releases) is written.
func (w *Writer) strip(bb *batchBuilder) {
	if w.strippedEvents == nil {
		w.strippedEvents, w.strippedDeliveries = map[string]bool{}, map[string]bool{}
	}
	b := &bb.b
	b.Events = slices.DeleteFunc(b.Events, func(e EventRow) bool {
		if e.CommitLSN != 0 {
			w.strippedEvents[e.ID] = true
		}
		return e.CommitLSN != 0
	})
	b.Rejections = slices.DeleteFunc(b.Rejections, func(r Rejection) bool { return r.CommitLSN != 0 })
	b.Timers = nil
	b.Slot, b.Checkpoint, b.CheckpointEnd = "", 0, 0
	b.Deliveries = slices.DeleteFunc(b.Deliveries, func(d DeliveryRow) bool {
		if w.strippedEvents[d.EventID] {
			w.strippedDeliveries[d.ID] = true
		}
		return w.strippedDeliveries[d.ID]
	})
	b.Attempts = slices.DeleteFunc(b.Attempts, func(a AttemptRow) bool { return w.strippedDeliveries[a.DeliveryID] })
	b.Updates = slices.DeleteFunc(b.Updates, func(u DeliveryUpdate) bool { return w.strippedDeliveries[u.ID] })
	// The indexes by id, for what a flush of the same batch adds (the
	// drain's, of a batch a shutdown cut short).
	clear(bb.delivIdx)
	for i := range b.Deliveries {
		bb.delivIdx[b.Deliveries[i].ID] = i
	}
	clear(bb.updIdx)
	for i := range b.Updates {
		bb.updIdx[b.Updates[i].ID] = i
	}
}

// drainKey marks the drain's context.
type drainKey struct{}

func isDrain(ctx context.Context) bool { return ctx.Value(drainKey{}) != nil }

// FailingSince is when the journal began refusing the writer's batch
// being written, retried since; zero while writes go through. The
// stream's session ends at each failure and starts again at once (its
// start only reads the journal), so "connected" alone made readiness
// flap while the journal refused every write (found by a review).
func (w *Writer) FailingSince() time.Time {
	if ns := w.failingSince.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// write writes a batch, retrying with backoff until it is written or ctx
// ends (then it returns the last error).
func (w *Writer) write(ctx context.Context, bb *batchBuilder) error {
	bo := backoff.New(100*time.Millisecond, 10*time.Second)
	for attempt := 1; ; attempt++ {
		err := w.cfg.Store.Write(ctx, &bb.b)
		if err == nil {
			w.failingSince.Store(0)
		} else if ctx.Err() == nil {
			w.failingSince.CompareAndSwap(0, time.Now().UnixNano())
		}
		if err == nil || ctx.Err() != nil || errors.Is(err, ErrTimelineMoved) {
			return err
		}
		w.log.Error("journal write failed; retrying, deliveries and the stream wait meanwhile", "err", err, "attempt", attempt, "records", bb.records)
		if w.cfg.OnWriteError != nil {
			w.cfg.OnWriteError(err)
		}
		if bo.Wait(ctx) != nil {
			return err
		}
	}
}

// batchBuilder merges records into one Batch.
type batchBuilder struct {
	b        Batch
	delivIdx map[string]int
	updIdx   map[string]int
	subIdx   map[string]int
	spilled  bool
	notified bool
	dones    []chan<- error
	durables []func(error)
	// doneRows and durableRows are the rows of the records of dones and
	// durables, in the same order.
	doneRows, durableRows []recordRows
	records               int
}

// full reports whether the batch has maxRecords records, or rows to
// write for four times as many. A record can carry many rows (an event's
// deliveries to 20 subscriptions, a release of a whole queue): bounded by
// records alone, a catch-up shared with other processes wrote 76,000
// deliveries in one transaction of 1.4 s, and none of them could be
// claimed until it committed.
func (bb *batchBuilder) full(maxRecords int) bool {
	b := &bb.b
	rows := len(b.Events) + len(b.Deliveries) + len(b.Updates) + len(b.Attempts)
	for _, r := range b.Release {
		rows += len(r.IDs)
	}
	return bb.records >= maxRecords || rows >= batchRows(maxRecords)
}

// batchRows is the rows a batch of at most maxRecords records may hold.
func batchRows(maxRecords int) int { return 4 * maxRecords }

// rows counts what r adds to a batch, as batchBuilder.full does.
func (r *Record) rows() int {
	n := len(r.Deliveries) + len(r.Release)
	if r.Event != nil {
		n++
	}
	if r.Update != nil {
		n++
	}
	if r.Attempt != nil {
		n++
	}
	return n
}

// batchSizes is how many events, deliveries and attempts a batch held.
type batchSizes struct{ events, deliveries, attempts int }

func (bb *batchBuilder) sizes() batchSizes {
	return batchSizes{len(bb.b.Events), len(bb.b.Deliveries), len(bb.b.Attempts)}
}

// newBatchBuilderFor makes a batch with room for as many rows as the
// last one held: a batch grows to its size in one allocation per kind of
// row, not by repeated copies (appending 4,096 events of a catch-up
// batch to an empty slice copied them about four times over: 7% of
// dzhook's CPU at catch-up). A batch after a larger one takes the room it
// does not use once; the one after it is sized by what it held.
func newBatchBuilderFor(last batchSizes) *batchBuilder {
	bb := &batchBuilder{delivIdx: make(map[string]int, last.deliveries), updIdx: map[string]int{}, subIdx: map[string]int{}}
	bb.b.Events = make([]EventRow, 0, last.events)
	bb.b.Deliveries = make([]DeliveryRow, 0, last.deliveries)
	bb.b.Attempts = make([]AttemptRow, 0, last.attempts)
	return bb
}

func (bb *batchBuilder) addDelivery(d DeliveryRow) {
	bb.delivIdx[d.ID] = len(bb.b.Deliveries)
	bb.b.Deliveries = append(bb.b.Deliveries, d)
}

// addUpdate merges an attempt's outcome: into the delivery's insert when
// it is in this batch (unless it may not apply: Unless, whose condition
// an update keeps; the batch's updates run after its inserts), else into
// one update per delivery.
func (bb *batchBuilder) addUpdate(u DeliveryUpdate) {
	b := &bb.b
	if i, ok := bb.delivIdx[u.ID]; ok && u.Unless == "" {
		mergeUpdate(&b.Deliveries[i], &u)
		return
	}
	if i, ok := bb.updIdx[u.ID]; ok {
		if u.Attempts >= b.Updates[i].Attempts {
			if u.Body == nil {
				u.Body = b.Updates[i].Body // a body once computed is kept
			}
			b.Updates[i] = u
		} else if b.Updates[i].Body == nil {
			b.Updates[i].Body = u.Body
		}
		return
	}
	bb.updIdx[u.ID] = len(b.Updates)
	b.Updates = append(b.Updates, u)
}

// addSub keeps one state row per subscription and batch.
func (bb *batchBuilder) addSub(s SubscriptionState) {
	b := &bb.b
	i, ok := bb.subIdx[s.ID]
	if !ok {
		bb.subIdx[s.ID] = len(b.Subs)
		b.Subs = append(b.Subs, s)
		return
	}
	prev := b.Subs[i]
	if !s.Changed {
		s.ChangedAt = prev.ChangedAt // the batch's last change is prev's
	}
	s.Changed = s.Changed || prev.Changed
	if s.LastSuccessAt.IsZero() {
		s.LastSuccessAt = prev.LastSuccessAt
	}
	if s.LastFailureAt.IsZero() {
		s.LastFailureAt = prev.LastFailureAt
	}
	b.Subs[i] = s
}
