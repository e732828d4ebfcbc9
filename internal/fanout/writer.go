package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
)

// record is one entry of the writer's queue. The queue is FIFO: an
// event's deliveries are queued before any result of their attempts, and
// a transaction's commit after all its events.
type record struct {
	event   *journal.EventRow
	delivs  []journal.DeliveryRow
	spilled bool // some deliveries wait in the journal for the scheduler
	noHold  bool // write the deliveries now, without their first outcomes
	update  *journal.DeliveryUpdate
	attempt *journal.AttemptRow
	sub     *journal.SubscriptionState
	reject  *journal.Rejection
	notify  *journal.NotificationRow
	timer   *journal.TimerChange
	// release: deliveries that waited in the queue of a subscription
	// stopped by a reload; they go back to the journal, unowned, for
	// whoever runs the subscription now.
	release []string
	commit  uint64       // a transaction boundary: its commit LSN
	done    chan<- error // told when the record is durable
}

// DefaultHold is how long the writer keeps a delivery whose first attempt
// is in flight before writing it without its outcome.
const DefaultHold = time.Second

// writer is the group commit. It writes what accumulated while the last
// batch was being written (lingering a moment first), in one transaction,
// and then acknowledges the highest commit LSN whose transaction is wholly
// journaled.
//
// A delivery whose first attempt is in flight is held back for up to
// Hold, so that it is usually written once, with its outcome, instead of
// inserted and then updated (an update touches every index of the table:
// it is the journal's most expensive write). A transaction is not
// acknowledged while one of its deliveries is held, so holding delays the
// slot by at most Hold and never loses anything: a delivery held when the
// process dies was never acknowledged, and the stream sends it again.
type writer struct {
	in       chan record
	closed   chan struct{} // closed when run returns
	store    *journal.Store
	slot     string
	systemID string
	ack      func(uint64)
	onSpill  func()
	onNotify func()
	onFlush  func(batchRecords int, took time.Duration, err error)
	owner    string
	log      *slog.Logger
	linger   time.Duration
	hold     time.Duration
	maxBatch int

	seq      uint64
	held     map[string]*heldDelivery
	heldFIFO []*heldDelivery // by arrival: deadlines are in order too
	markers  []marker        // commits received and not yet acknowledged
	written  uint64          // the checkpoint last written
	// broken: a batch was not written (the writer's life ended while it
	// retried). Nothing after it may be written or acknowledged: a later
	// checkpoint would cover the lost batch's transactions.
	broken error
}

type heldDelivery struct {
	row      journal.DeliveryRow
	seq      uint64
	deadline time.Time
	gone     bool // written already (its outcome came, or it expired)
}

type marker struct {
	lsn, seq uint64
}

// put queues a record; it blocks while the queue is full (backpressure up
// to the replication stream) and returns ctx's error if ctx ends first.
func (w *writer) put(ctx context.Context, r record) error {
	select {
	case <-w.closed:
		return errWriterClosed
	default:
	}
	select {
	case w.in <- r:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-w.closed:
		return errWriterClosed
	}
}

// errWriterClosed: the writer stopped; the record was not journaled.
var errWriterClosed = errors.New("fanout: the journal writer has stopped")

// run writes batches until drain is closed, then writes what is queued,
// releases what it holds, and returns. It never drops a batch: a failed
// write is retried with backoff, and meanwhile the queue fills and
// backpressure holds the stream.
func (w *writer) run(life context.Context, drain <-chan struct{}) {
	defer close(w.closed)
	if w.held == nil {
		w.held = map[string]*heldDelivery{}
	}
	// One timer for the next held delivery's deadline, reset each round
	// (since Go 1.23 Stop and Reset leave no stale tick behind).
	expiry := time.NewTimer(time.Hour)
	expiry.Stop()
	defer expiry.Stop()
	for {
		b := newBatchBuilder()
		var expire <-chan time.Time
		if d, ok := w.nextDeadline(); ok {
			expiry.Reset(time.Until(d))
			expire = expiry.C
		}
		select {
		case r := <-w.in:
			w.add(b, r)
			w.gather(b, drain)
		case <-expire:
		case <-drain:
			expiry.Stop()
			w.drainAll(life)
			return
		case <-life.Done():
			return
		}
		expiry.Stop()
		w.flush(life, b, time.Now())
	}
}

// gather adds what arrives within the linger time, and whatever else is
// already queued, up to the batch size.
func (w *writer) gather(b *batchBuilder, drain <-chan struct{}) {
	if w.linger > 0 && b.records < w.maxBatch {
		timer := time.NewTimer(w.linger)
	wait:
		for b.records < w.maxBatch {
			select {
			case r := <-w.in:
				w.add(b, r)
			case <-timer.C:
				break wait
			case <-drain:
				break wait
			}
		}
		timer.Stop()
	}
more:
	for b.records < w.maxBatch {
		select {
		case r := <-w.in:
			w.add(b, r)
		default:
			break more
		}
	}
}

// drainAll writes everything queued and everything held, at shutdown.
func (w *writer) drainAll(life context.Context) {
	for {
		b := newBatchBuilder()
	fill:
		for b.records < w.maxBatch {
			select {
			case r := <-w.in:
				w.add(b, r)
			default:
				break fill
			}
		}
		if b.records == 0 {
			break
		}
		w.flush(life, b, time.Now())
	}
	// Release every held delivery: it goes to the journal as in flight,
	// and the instance's exit releases its ownership.
	w.flush(life, newBatchBuilder(), time.Now().Add(w.hold+time.Hour))
}

func (w *writer) nextDeadline() (time.Time, bool) {
	for len(w.heldFIFO) > 0 && w.heldFIFO[0].gone {
		w.heldFIFO = w.heldFIFO[1:]
	}
	if len(w.heldFIFO) == 0 {
		return time.Time{}, false
	}
	return w.heldFIFO[0].deadline, true
}

// add merges one record into the batch.
func (w *writer) add(bb *batchBuilder, r record) {
	w.seq++
	bb.records++
	b := &bb.b
	if r.event != nil {
		b.Events = append(b.Events, *r.event)
	}
	for _, d := range r.delivs {
		if h, ok := w.held[d.ID]; ok && !h.gone {
			continue // handed twice (a replayed transaction): held already
		}
		if d.State == "pending" && d.Owner != "" && w.hold > 0 && !r.noHold {
			h := &heldDelivery{row: d, seq: w.seq, deadline: time.Now().Add(w.hold)}
			w.held[d.ID] = h
			w.heldFIFO = append(w.heldFIFO, h)
			continue
		}
		bb.addDelivery(d)
	}
	bb.spilled = bb.spilled || r.spilled
	if u := r.update; u != nil {
		if h, ok := w.held[u.ID]; ok {
			// The first attempt's outcome: write the delivery once, with it.
			delete(w.held, u.ID)
			h.gone = true
			mergeUpdate(&h.row, u)
			bb.addDelivery(h.row)
		} else {
			bb.addUpdate(*u)
		}
	}
	if r.attempt != nil {
		b.Attempts = append(b.Attempts, *r.attempt)
	}
	if r.sub != nil {
		bb.addSub(*r.sub)
	}
	if r.reject != nil {
		b.Rejections = append(b.Rejections, *r.reject)
	}
	if r.notify != nil {
		b.Notifications = append(b.Notifications, *r.notify)
		bb.notified = true
	}
	if r.timer != nil {
		// One change per SLA and batch: the latest says the SLA's state.
		if i, ok := bb.timerIdx[r.timer.SLAID]; ok {
			b.Timers[i] = *r.timer
		} else {
			bb.timerIdx[r.timer.SLAID] = len(b.Timers)
			b.Timers = append(b.Timers, *r.timer)
		}
	}
	if len(r.release) > 0 {
		// Write what is held of them now, so the release that follows in
		// the same batch covers it.
		ids := make(map[string]bool, len(r.release))
		for _, id := range r.release {
			ids[id] = true
		}
		for _, h := range w.heldFIFO {
			if !h.gone && ids[h.row.ID] {
				h.gone = true
				delete(w.held, h.row.ID)
				bb.addDelivery(h.row)
			}
		}
		b.Release = append(b.Release, journal.Release{IDs: r.release})
	}
	if r.commit != 0 {
		w.markers = append(w.markers, marker{lsn: r.commit, seq: w.seq})
	}
	if r.done != nil {
		bb.dones = append(bb.dones, r.done)
	}
}

func mergeUpdate(d *journal.DeliveryRow, u *journal.DeliveryUpdate) {
	if u.Attempts < d.Attempts {
		return
	}
	d.State, d.Attempts, d.NextAttemptAt, d.Owner = u.State, u.Attempts, u.NextAttemptAt, u.Owner
	d.LastStatus, d.LastError, d.LastAttemptAt = u.LastStatus, u.LastError, u.LastAttemptAt
}

// flush releases held deliveries whose time is up (as of now), writes the
// batch with the checkpoint of every transaction now wholly journaled, and
// acknowledges it.
func (w *writer) flush(life context.Context, bb *batchBuilder, now time.Time) {
	for len(w.heldFIFO) > 0 && (w.heldFIFO[0].gone || !w.heldFIFO[0].deadline.After(now)) {
		h := w.heldFIFO[0]
		w.heldFIFO = w.heldFIFO[1:]
		if !h.gone {
			h.gone = true
			delete(w.held, h.row.ID)
			bb.addDelivery(h.row)
		}
	}
	// A commit is acknowledged once nothing before it is held.
	minHeld := uint64(math.MaxUint64)
	if _, ok := w.nextDeadline(); ok {
		minHeld = w.heldFIFO[0].seq
	}
	var ackable uint64
	n := 0
	for n < len(w.markers) && w.markers[n].seq < minHeld {
		ackable = max(ackable, w.markers[n].lsn)
		n++
	}
	if ackable > w.written {
		bb.b.Slot, bb.b.Checkpoint, bb.b.SystemID = w.slot, ackable, w.systemID
	}
	for i := range bb.b.Release {
		bb.b.Release[i].Owner = w.owner
	}
	if bb.records == 0 && bb.b.Empty() {
		return
	}

	start := time.Now()
	err := w.broken
	if err == nil && !bb.b.Empty() {
		backoff := 100 * time.Millisecond
		for attempt := 1; ; attempt++ {
			err = w.store.Write(life, &bb.b)
			if err == nil || life.Err() != nil {
				break
			}
			w.log.Error("journal write failed; retrying, deliveries and the stream wait meanwhile", "err", err, "attempt", attempt, "records", bb.records)
			select {
			case <-time.After(backoff/2 + rand.N(backoff/2+1)):
			case <-life.Done():
			}
			backoff = min(backoff*2, 10*time.Second)
		}
	}
	took := time.Since(start)
	if w.onFlush != nil {
		w.onFlush(bb.records, took, err)
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
		return
	}
	w.markers = w.markers[n:]
	if ackable > w.written {
		w.written = ackable
		if w.ack != nil {
			w.ack(ackable)
		}
	}
	for _, d := range bb.dones {
		d <- nil
	}
	if bb.spilled && w.onSpill != nil {
		w.onSpill()
	}
	if bb.notified && w.onNotify != nil {
		w.onNotify()
	}
}

// batchBuilder merges records into one journal.Batch.
type batchBuilder struct {
	b        journal.Batch
	delivIdx map[string]int
	updIdx   map[string]int
	subIdx   map[string]int
	timerIdx map[string]int
	spilled  bool
	notified bool
	dones    []chan<- error
	records  int
}

func newBatchBuilder() *batchBuilder {
	return &batchBuilder{delivIdx: map[string]int{}, updIdx: map[string]int{}, subIdx: map[string]int{}, timerIdx: map[string]int{}}
}

func (bb *batchBuilder) addDelivery(d journal.DeliveryRow) {
	bb.delivIdx[d.ID] = len(bb.b.Deliveries)
	bb.b.Deliveries = append(bb.b.Deliveries, d)
}

// addUpdate merges an attempt's outcome: into the delivery's insert when
// it is in this batch, else into one update per delivery.
func (bb *batchBuilder) addUpdate(u journal.DeliveryUpdate) {
	b := &bb.b
	if i, ok := bb.delivIdx[u.ID]; ok {
		mergeUpdate(&b.Deliveries[i], &u)
		return
	}
	if i, ok := bb.updIdx[u.ID]; ok {
		if u.Attempts >= b.Updates[i].Attempts {
			b.Updates[i] = u
		}
		return
	}
	bb.updIdx[u.ID] = len(b.Updates)
	b.Updates = append(b.Updates, u)
}

// addSub keeps one state row per subscription and batch.
func (bb *batchBuilder) addSub(s journal.SubscriptionState) {
	b := &bb.b
	i, ok := bb.subIdx[s.ID]
	if !ok {
		bb.subIdx[s.ID] = len(b.Subs)
		b.Subs = append(b.Subs, s)
		return
	}
	prev := b.Subs[i]
	s.Changed = s.Changed || prev.Changed
	if s.LastSuccessAt.IsZero() {
		s.LastSuccessAt = prev.LastSuccessAt
	}
	if s.LastFailureAt.IsZero() {
		s.LastFailureAt = prev.LastFailureAt
	}
	b.Subs[i] = s
}
