package fanout

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/dzdesk/dzhook/journal"
)

// record is one entry of the writer's queue. The queue is FIFO: an
// event's deliveries are queued before any result of their attempts, and
// a transaction's commit after all its events, so when a batch holding a
// commit is written, the whole transaction is journaled.
type record struct {
	event   *journal.EventRow
	delivs  []journal.DeliveryRow
	spilled bool // some deliveries wait in the journal for the scheduler
	update  *journal.DeliveryUpdate
	attempt *journal.AttemptRow
	sub     *journal.SubscriptionState
	reject  *journal.Rejection
	commit  uint64        // a transaction boundary: its commit LSN
	done    chan<- error  // told when the record is durable
	wake    chan struct{} // a no-op record that only forces a flush
}

// writer is the group commit: it takes what accumulated while the last
// batch was written (lingering a moment to let first attempts finish, so a
// delivery is usually inserted with its outcome rather than inserted and
// then updated), writes it in one transaction, and then reports the
// highest commit LSN of the batch as durable.
type writer struct {
	in       chan record
	store    *journal.Store
	slot     string
	ack      func(uint64)
	onSpill  func()
	onFlush  func(batchRecords int, took time.Duration, err error)
	log      *slog.Logger
	linger   time.Duration
	maxBatch int
}

// put queues a record; it blocks while the queue is full (backpressure up
// to the replication stream) and returns ctx's error if ctx ends first.
func (w *writer) put(ctx context.Context, r record) error {
	select {
	case w.in <- r:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run writes batches until drain is closed, then writes what is queued
// and returns. It never drops a batch: a failed write is retried with
// backoff, and meanwhile the queue fills and backpressure holds the
// stream.
func (w *writer) run(life context.Context, drain <-chan struct{}) {
	for {
		var first record
		select {
		case first = <-w.in:
		case <-drain:
			w.drainAll(life)
			return
		case <-life.Done():
			return
		}
		b := newBatchBuilder()
		b.add(first)
		if w.linger > 0 && b.records < w.maxBatch {
			timer := time.NewTimer(w.linger)
		gather:
			for b.records < w.maxBatch {
				select {
				case r := <-w.in:
					b.add(r)
				case <-timer.C:
					break gather
				case <-drain:
					break gather
				}
			}
			timer.Stop()
		}
		// Whatever else is queued now joins without waiting.
	more:
		for b.records < w.maxBatch {
			select {
			case r := <-w.in:
				b.add(r)
			default:
				break more
			}
		}
		w.flush(life, b)
	}
}

// drainAll writes everything queued, at shutdown.
func (w *writer) drainAll(life context.Context) {
	for {
		b := newBatchBuilder()
	fill:
		for b.records < w.maxBatch {
			select {
			case r := <-w.in:
				b.add(r)
			default:
				break fill
			}
		}
		if b.records == 0 {
			return
		}
		w.flush(life, b)
	}
}

func (w *writer) flush(life context.Context, b *batchBuilder) {
	start := time.Now()
	var err error
	if !b.b.Empty() {
		if b.commit != 0 {
			b.b.Slot, b.b.Checkpoint = w.slot, b.commit
		}
		backoff := 100 * time.Millisecond
		for attempt := 1; ; attempt++ {
			err = w.store.Write(life, &b.b)
			if err == nil || life.Err() != nil {
				break
			}
			w.log.Error("journal write failed; retrying, deliveries and the stream wait meanwhile", "err", err, "attempt", attempt, "records", b.records)
			select {
			case <-time.After(backoff/2 + rand.N(backoff/2+1)):
			case <-life.Done():
			}
			backoff = min(backoff*2, 10*time.Second)
		}
	}
	if w.onFlush != nil {
		w.onFlush(b.records, time.Since(start), err)
	}
	if err != nil {
		for _, d := range b.dones {
			d <- err
		}
		return
	}
	if b.commit != 0 && w.ack != nil {
		w.ack(b.commit)
	}
	for _, d := range b.dones {
		d <- nil
	}
	if b.spilled && w.onSpill != nil {
		w.onSpill()
	}
}

// batchBuilder merges records into one journal.Batch.
type batchBuilder struct {
	b        journal.Batch
	delivIdx map[string]int
	updIdx   map[string]int
	subIdx   map[string]int
	commit   uint64
	spilled  bool
	dones    []chan<- error
	records  int
}

func newBatchBuilder() *batchBuilder {
	return &batchBuilder{delivIdx: map[string]int{}, updIdx: map[string]int{}, subIdx: map[string]int{}}
}

func (bb *batchBuilder) add(r record) {
	bb.records++
	b := &bb.b
	if r.event != nil {
		b.Events = append(b.Events, *r.event)
	}
	for _, d := range r.delivs {
		bb.delivIdx[d.ID] = len(b.Deliveries)
		b.Deliveries = append(b.Deliveries, d)
	}
	bb.spilled = bb.spilled || r.spilled
	if u := r.update; u != nil {
		if i, ok := bb.delivIdx[u.ID]; ok {
			// Inserted in this very batch: insert it with its outcome.
			d := &b.Deliveries[i]
			if u.Attempts >= d.Attempts {
				d.State, d.Attempts, d.NextAttemptAt, d.Owner = u.State, u.Attempts, u.NextAttemptAt, u.Owner
				d.LastStatus, d.LastError, d.LastAttemptAt = u.LastStatus, u.LastError, u.LastAttemptAt
			}
		} else if i, ok := bb.updIdx[u.ID]; ok {
			if u.Attempts >= b.Updates[i].Attempts {
				b.Updates[i] = *u
			}
		} else {
			bb.updIdx[u.ID] = len(b.Updates)
			b.Updates = append(b.Updates, *u)
		}
	}
	if r.attempt != nil {
		b.Attempts = append(b.Attempts, *r.attempt)
	}
	if s := r.sub; s != nil {
		if i, ok := bb.subIdx[s.ID]; ok {
			prev := b.Subs[i]
			next := *s
			next.Changed = next.Changed || prev.Changed
			if next.LastSuccessAt.IsZero() {
				next.LastSuccessAt = prev.LastSuccessAt
			}
			if next.LastFailureAt.IsZero() {
				next.LastFailureAt = prev.LastFailureAt
			}
			b.Subs[i] = next
		} else {
			bb.subIdx[s.ID] = len(b.Subs)
			b.Subs = append(b.Subs, *s)
		}
	}
	if r.reject != nil {
		b.Rejections = append(b.Rejections, *r.reject)
	}
	if r.commit > bb.commit {
		bb.commit = r.commit
	}
	if r.done != nil {
		bb.dones = append(bb.dones, r.done)
	}
}
