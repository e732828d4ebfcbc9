package journal

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// memStore is a BatchStore in memory: it applies batches the way Write
// does (inserts, an outcome merged into the insert of a delivery already
// there applied when it raises the attempt count, then updates that raise
// the attempt count, then releases and the checkpoint) and fails when fail
// says so.
type memStore struct {
	mu         sync.Mutex
	fail       func(write int) error
	writes     int
	batches    []Batch
	deliveries map[string]DeliveryRow
	released   map[string]bool
	checkpoint pglogrepl.LSN
}

func newMemStore() *memStore {
	return &memStore{deliveries: map[string]DeliveryRow{}, released: map[string]bool{}}
}

func (m *memStore) Write(_ context.Context, b *Batch) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.writes++
	if m.fail != nil {
		if err := m.fail(m.writes); err != nil {
			return err
		}
	}
	cp := *b
	cp.Deliveries = append([]DeliveryRow(nil), b.Deliveries...)
	cp.Updates = append([]DeliveryUpdate(nil), b.Updates...)
	m.batches = append(m.batches, cp)
	for _, d := range b.Deliveries {
		switch old, ok := m.deliveries[d.ID]; {
		case !ok:
			m.deliveries[d.ID] = d
		case old.Attempts < d.Attempts:
			// Journaled already: the outcome merged in applies as an
			// update would.
			mergeUpdate(&old, &DeliveryUpdate{ID: d.ID, State: d.State, Attempts: d.Attempts, NextAttemptAt: d.NextAttemptAt, Owner: d.Owner,
				LastStatus: d.LastStatus, LastError: d.LastError, LastAttemptAt: d.LastAttemptAt})
			m.deliveries[d.ID] = old
		}
	}
	for _, u := range b.Updates {
		if d, ok := m.deliveries[u.ID]; ok && d.Attempts < u.Attempts {
			mergeUpdate(&d, &u)
			m.deliveries[u.ID] = d
		}
	}
	for _, r := range b.Release {
		for _, id := range r.IDs {
			m.released[id] = true
		}
	}
	if b.Slot != "" {
		m.checkpoint = max(m.checkpoint, b.Checkpoint)
	}
	return nil
}

func (m *memStore) delivery(id string) (DeliveryRow, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.deliveries[id]
	return d, ok
}

func (m *memStore) snapshot() (batches []Batch, checkpoint pglogrepl.LSN) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Batch(nil), m.batches...), m.checkpoint
}

// harness runs a Writer on a memStore and records its acknowledgements.
// Every acknowledgement is checked against the invariant: each delivery
// put before a commit at or below the acknowledged LSN is durable.
type harness struct {
	t     *testing.T
	store *memStore
	w     *Writer
	stop  context.CancelFunc
	done  chan error

	mu     sync.Mutex
	acks   []pglogrepl.LSN
	ackCh  chan pglogrepl.LSN
	before map[pglogrepl.LSN][]string // deliveries put before each commit
	puts   []string
	spills int
}

func newHarness(t *testing.T, store *memStore, cfg WriterConfig) *harness {
	t.Helper()
	h := &harness{t: t, store: store, ackCh: make(chan pglogrepl.LSN, 1024), before: map[pglogrepl.LSN][]string{}, done: make(chan error, 1)}
	cfg.Store, cfg.Slot, cfg.Owner = store, "dzhook", "i1"
	cfg.Ack = h.ack
	cfg.OnSpill = func() { h.mu.Lock(); h.spills++; h.mu.Unlock() }
	if cfg.Linger == 0 {
		cfg.Linger = -1
	}
	w, err := NewWriter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.w = w
	ctx, stop := context.WithCancel(context.Background())
	h.stop = stop
	go func() { h.done <- w.Run(ctx) }()
	t.Cleanup(h.close)
	return h
}

func (h *harness) close() {
	h.stop()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run returned %v, want nil", err)
		}
		h.done <- nil // close may run twice
	case <-time.After(10 * time.Second):
		h.t.Fatal("Run did not return after its context ended")
	}
}

// ack is the Writer's Ack: it checks the invariant as the slot would move.
func (h *harness) ack(lsn pglogrepl.LSN) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n := len(h.acks); n > 0 && lsn <= h.acks[n-1] {
		h.t.Errorf("acknowledged %s after %s: acknowledgements must increase", lsn, h.acks[n-1])
	}
	h.acks = append(h.acks, lsn)
	for commit, ids := range h.before {
		if commit > lsn {
			continue
		}
		for _, id := range ids {
			if _, ok := h.store.delivery(id); !ok {
				h.t.Errorf("acknowledged %s, but delivery %s of the transaction committed at %s is not durable", lsn, id, commit)
			}
		}
	}
	h.ackCh <- lsn
}

func (h *harness) put(r Record) {
	h.t.Helper()
	h.mu.Lock()
	for _, d := range r.Deliveries {
		h.puts = append(h.puts, d.ID)
	}
	if r.Commit != 0 {
		h.before[r.Commit] = append([]string(nil), h.puts...)
	}
	h.mu.Unlock()
	if err := h.w.Put(context.Background(), r); err != nil {
		h.t.Fatalf("Put: %v", err)
	}
}

// waitAck waits for the acknowledgement of lsn (or a later one).
func (h *harness) waitAck(lsn pglogrepl.LSN, within time.Duration) {
	h.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case got := <-h.ackCh:
			if got >= lsn {
				return
			}
		case <-deadline:
			h.t.Fatalf("%s not acknowledged within %v (acknowledged: %v)", lsn, within, h.acked())
		}
	}
}

// noAckPast asserts that nothing at or past lsn is acknowledged while
// the Writer has had time to write (a barrier makes sure it did).
func (h *harness) noAckPast(lsn pglogrepl.LSN) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.w.Barrier(ctx); err != nil {
		h.t.Fatalf("Barrier: %v", err)
	}
	for _, a := range h.acked() {
		if a >= lsn {
			h.t.Fatalf("%s acknowledged although a delivery of its transaction is not durable (acknowledged: %v)", a, h.acked())
		}
	}
}

func (h *harness) acked() []pglogrepl.LSN {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]pglogrepl.LSN(nil), h.acks...)
}

func inFlight(id string) DeliveryRow {
	return DeliveryRow{ID: id, EventID: "whk_" + id, SubscriptionID: "crm", EventType: "request.created", State: Pending, Owner: "i1"}
}

func outcome(id string, state State) *DeliveryUpdate {
	return &DeliveryUpdate{ID: id, State: state, Attempts: 1, LastStatus: 200}
}

func TestWriterHoldsAnInFlightDeliveryUntilItsOutcome(t *testing.T) {
	store := newMemStore()
	h := newHarness(t, store, WriterConfig{Hold: time.Hour})
	h.put(Record{Deliveries: []DeliveryRow{inFlight("a")}})
	h.put(Record{Commit: 10})
	h.noAckPast(10)
	if _, ok := store.delivery("a"); ok {
		t.Fatal("a held delivery was written before its outcome or its deadline")
	}
	h.put(Record{Update: outcome("a", Delivered)})
	h.waitAck(10, 5*time.Second)
	d, _ := store.delivery("a")
	if d.State != Delivered || d.Attempts != 1 {
		t.Errorf("delivery a journaled as %s after %d attempts, want delivered after 1", d.State, d.Attempts)
	}
	batches, cp := store.snapshot()
	for _, b := range batches {
		if len(b.Updates) > 0 {
			t.Errorf("a held delivery was inserted and then updated (%d updates); want one insert with its outcome", len(b.Updates))
		}
	}
	if cp != 10 {
		t.Errorf("checkpoint = %s, want 0/A", cp)
	}
}

func TestWriterWritesAHeldDeliveryAtItsDeadline(t *testing.T) {
	store := newMemStore()
	h := newHarness(t, store, WriterConfig{Hold: 50 * time.Millisecond})
	h.put(Record{Deliveries: []DeliveryRow{inFlight("a")}})
	h.put(Record{Commit: 10})
	h.waitAck(10, 5*time.Second)
	d, ok := store.delivery("a")
	if !ok || d.State != Pending || d.Owner != "i1" {
		t.Fatalf("after its deadline the delivery is journaled as %+v (found %v), want pending and owned", d, ok)
	}
	// Its outcome, when it comes, is an update.
	h.put(Record{Update: outcome("a", Delivered)})
	if err := h.w.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d, _ := store.delivery("a"); d.State != Delivered {
		t.Errorf("the late outcome left the delivery %s, want delivered", d.State)
	}
}

func TestWriterAcknowledgesUpToTheFirstHeldDelivery(t *testing.T) {
	store := newMemStore()
	h := newHarness(t, store, WriterConfig{Hold: time.Hour})
	h.put(Record{Deliveries: []DeliveryRow{{ID: "s", State: Pending}}, Spilled: true}) // spilled: no owner
	h.put(Record{Commit: 5})
	h.put(Record{Deliveries: []DeliveryRow{inFlight("b")}})
	h.put(Record{Commit: 10})
	h.put(Record{Deliveries: []DeliveryRow{inFlight("c")}})
	h.put(Record{Commit: 15})
	h.waitAck(5, 5*time.Second)
	h.noAckPast(10)
	// The later transaction's outcome comes first: still nothing past 5.
	h.put(Record{Update: outcome("c", Delivered)})
	h.noAckPast(10)
	h.put(Record{Update: outcome("b", Failed)})
	h.waitAck(15, 5*time.Second)
	h.mu.Lock()
	spills := h.spills
	h.mu.Unlock()
	if spills == 0 {
		t.Error("OnSpill was not called after spilled deliveries were written")
	}
}

func TestWriterNoHold(t *testing.T) {
	store := newMemStore()
	h := newHarness(t, store, WriterConfig{Hold: time.Hour})
	h.put(Record{Deliveries: []DeliveryRow{inFlight("a")}, NoHold: true})
	h.put(Record{Commit: 10})
	h.waitAck(10, 5*time.Second)
	if d, ok := store.delivery("a"); !ok || d.State != Pending {
		t.Fatalf("a NoHold delivery is journaled as %+v (found %v), want pending at once", d, ok)
	}
}

func TestWriterReleaseWritesWhatItHolds(t *testing.T) {
	store := newMemStore()
	h := newHarness(t, store, WriterConfig{Hold: time.Hour})
	h.put(Record{Deliveries: []DeliveryRow{inFlight("a"), inFlight("b")}})
	h.put(Record{Commit: 10})
	h.put(Record{Release: []string{"a"}})
	h.noAckPast(10) // b is still held
	if _, ok := store.delivery("a"); !ok {
		t.Fatal("a released delivery was not written before its release")
	}
	store.mu.Lock()
	released := store.released["a"]
	store.mu.Unlock()
	if !released {
		t.Error("the release of a was not written")
	}
	batches, _ := store.snapshot()
	for _, b := range batches {
		for _, r := range b.Release {
			if r.Owner != "i1" {
				t.Errorf("release written for owner %q, want i1", r.Owner)
			}
		}
	}
}

// TestWriterBoundsRowsPerBatch: a batch holds at most four times
// MaxBatch rows (and one record more), however few records carry them:
// rows written in one transaction are claimable by other processes only
// once it commits.
func TestWriterBoundsRowsPerBatch(t *testing.T) {
	store := newMemStore()
	unblock := make(chan struct{})
	store.fail = func(write int) error {
		if write == 1 {
			<-unblock // records pile up in the queue meanwhile
		}
		return nil
	}
	h := newHarness(t, store, WriterConfig{Hold: time.Hour, MaxBatch: 10})
	h.put(Record{Deliveries: []DeliveryRow{inFlight("first")}, NoHold: true, Spilled: true})
	for i := range 10 {
		var ds []DeliveryRow
		for j := range 20 {
			ds = append(ds, inFlight(fmt.Sprintf("d%d_%d", i, j)))
		}
		h.put(Record{Deliveries: ds, NoHold: true, Spilled: true})
	}
	h.put(Record{Commit: 10})
	close(unblock)
	h.waitAck(10, 5*time.Second)
	batches, _ := store.snapshot()
	total := 0
	for i, b := range batches {
		total += len(b.Deliveries)
		if len(b.Deliveries) > 4*10+20 {
			t.Errorf("batch %d wrote %d deliveries, want at most %d", i+1, len(b.Deliveries), 4*10+20)
		}
	}
	if total != 201 {
		t.Errorf("%d deliveries written, want 201", total)
	}
}

func TestWriterReplayedDeliveryIsHeldOnce(t *testing.T) {
	store := newMemStore()
	h := newHarness(t, store, WriterConfig{Hold: time.Hour})
	h.put(Record{Deliveries: []DeliveryRow{inFlight("a")}})
	h.put(Record{Deliveries: []DeliveryRow{inFlight("a")}}) // the stream sent it again
	h.put(Record{Commit: 10})
	h.put(Record{Update: outcome("a", Delivered)})
	h.waitAck(10, 5*time.Second)
	batches, _ := store.snapshot()
	n := 0
	for _, b := range batches {
		n += len(b.Deliveries)
	}
	if n != 1 {
		t.Errorf("delivery a written %d times, want once", n)
	}
}

func TestWriterRetriesAFailedBatch(t *testing.T) {
	store := newMemStore()
	var failures int
	store.fail = func(write int) error {
		if write <= 3 {
			failures++
			return errors.New("connection refused")
		}
		return nil
	}
	h := newHarness(t, store, WriterConfig{Hold: -1})
	done := make(chan error, 1)
	h.put(Record{Deliveries: []DeliveryRow{inFlight("a")}})
	h.put(Record{Commit: 10, Done: done})
	h.waitAck(10, 10*time.Second)
	if err := <-done; err != nil {
		t.Errorf("Done after the retried batch = %v, want nil", err)
	}
	if failures != 3 {
		t.Errorf("the store failed %d times, want 3", failures)
	}
	if _, ok := store.delivery("a"); !ok {
		t.Error("the retried batch's delivery is not durable")
	}
}

func TestWriterBrokenBatchStopsAcknowledgements(t *testing.T) {
	store := newMemStore()
	store.fail = func(int) error { return errors.New("journal unreachable") }
	h := newHarness(t, store, WriterConfig{Hold: -1, DrainTimeout: 200 * time.Millisecond})
	done := make(chan error, 1)
	h.put(Record{Deliveries: []DeliveryRow{inFlight("a")}})
	h.put(Record{Commit: 10, Done: done})
	// Stopping while the batch cannot be written: it is given up, and
	// so is everything after it.
	h.close()
	if err := <-done; err == nil {
		t.Error("Done of an unwritten record said durable")
	}
	if a := h.acked(); len(a) > 0 {
		t.Errorf("acknowledged %v with the journal unreachable", a)
	}
	if err := h.w.Put(context.Background(), Record{Commit: 11}); !errors.Is(err, ErrWriterClosed) {
		t.Errorf("Put after Run returned = %v, want ErrWriterClosed", err)
	}
	if err := h.w.Barrier(context.Background()); !errors.Is(err, ErrWriterClosed) {
		t.Errorf("Barrier after Run returned = %v, want ErrWriterClosed", err)
	}
}

func TestWriterDrainsHeldDeliveriesAtShutdown(t *testing.T) {
	store := newMemStore()
	h := newHarness(t, store, WriterConfig{Hold: time.Hour})
	h.put(Record{Deliveries: []DeliveryRow{inFlight("a")}})
	h.put(Record{Commit: 10})
	h.close()
	if d, ok := store.delivery("a"); !ok || d.State != Pending {
		t.Fatalf("at shutdown the held delivery is journaled as %+v (found %v), want pending", d, ok)
	}
	if _, cp := store.snapshot(); cp != 10 {
		t.Errorf("checkpoint after the drain = %s, want 0/A", cp)
	}
}

// TestWriterInvariantUnderRandomWork puts random transactions, with
// deliveries held or not, outcomes in any order and a journal that fails
// now and then; every acknowledgement is checked by the harness, and at
// the end everything is acknowledged.
func TestWriterInvariantUnderRandomWork(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			store := newMemStore()
			frng := rand.New(rand.NewPCG(seed, 9)) // the writer's goroutine only
			store.fail = func(int) error {
				if frng.IntN(8) == 0 {
					return errors.New("transient")
				}
				return nil
			}
			hold := time.Duration(rng.IntN(3)) * 20 * time.Millisecond // 0 (never held), 20 ms or 40 ms
			if hold == 0 {
				hold = -1
			}
			h := newHarness(t, store, WriterConfig{Hold: hold, MaxBatch: 1 + rng.IntN(16)})
			var pending []string
			lsn := pglogrepl.LSN(0)
			n := 0
			for range 200 {
				switch rng.IntN(4) {
				case 0, 1:
					n++
					id := fmt.Sprintf("d%d", n)
					d := inFlight(id)
					if rng.IntN(3) == 0 {
						d.Owner = "" // spilled
					}
					h.put(Record{Deliveries: []DeliveryRow{d}, NoHold: rng.IntN(5) == 0})
					if d.Owner != "" {
						pending = append(pending, id)
					}
				case 2:
					lsn += pglogrepl.LSN(1 + rng.IntN(100))
					h.put(Record{Commit: lsn})
				case 3:
					if len(pending) > 0 {
						i := rng.IntN(len(pending))
						h.put(Record{Update: outcome(pending[i], Delivered)})
						pending = append(pending[:i], pending[i+1:]...)
					}
				}
			}
			for _, id := range pending {
				h.put(Record{Update: outcome(id, Delivered)})
			}
			lsn++
			h.put(Record{Commit: lsn})
			h.waitAck(lsn, 10*time.Second)
			for i := 1; i <= n; i++ {
				if _, ok := store.delivery(fmt.Sprintf("d%d", i)); !ok {
					t.Errorf("d%d never written", i)
				}
			}
		})
	}
}

func TestWriterUnholdWritesNowAndKeepsTheOwner(t *testing.T) {
	store := newMemStore()
	h := newHarness(t, store, WriterConfig{Hold: time.Hour})
	h.put(Record{Deliveries: []DeliveryRow{inFlight("a"), inFlight("b")}})
	h.put(Record{Commit: 10})
	h.put(Record{Unhold: []string{"a", "unknown"}})
	h.noAckPast(10) // b is still held
	d, ok := store.delivery("a")
	if !ok || d.State != Pending || d.Owner != "i1" {
		t.Fatalf("after Unhold, a is journaled as %+v (found %v), want pending and still owned", d, ok)
	}
	store.mu.Lock()
	released := store.released["a"]
	store.mu.Unlock()
	if released {
		t.Error("Unhold released the delivery")
	}
	// Its outcome is an update now.
	h.put(Record{Update: outcome("a", Delivered)})
	h.put(Record{Update: outcome("b", Delivered)})
	h.waitAck(10, 5*time.Second)
	if d, _ := store.delivery("a"); d.State != Delivered {
		t.Errorf("a is %s after its outcome, want delivered", d.State)
	}
}

// cutStore's first write blocks until its context ends, as a batch being
// written when the shutdown comes; the later ones succeed.
type cutStore struct {
	*memStore
	started chan struct{}
	once    sync.Once
}

func (c *cutStore) Write(ctx context.Context, b *Batch) error {
	first := false
	c.once.Do(func() { first = true })
	if first {
		close(c.started)
		<-ctx.Done()
		return ctx.Err()
	}
	if err := ctx.Err(); err != nil { // as Store.Write's pool.Acquire does
		return err
	}
	return c.memStore.Write(ctx, b)
}

// TestWriterShutdownDuringABatchStillDrains: a batch whose write the
// shutdown cut short is not a broken journal: the drain writes it, and
// what was queued after it, and acknowledges them.
func TestWriterShutdownDuringABatchStillDrains(t *testing.T) {
	shutdownCutShort(t, 0, "b")
}

// TestWriterShutdownWithAQueueDrains: at a shutdown that cuts a batch
// short while more than a batch is queued (a catch-up), the writer goes
// to the drain at once. It used to take another record first, half the
// time: that batch failed on the ended context and marked the journal
// broken, so the drain wrote nothing and stopped with an error logged
// (found by a review, 2026-12-06; the test failed 11 times in 20).
func TestWriterShutdownWithAQueueDrains(t *testing.T) {
	for range 20 {
		shutdownCutShort(t, 1, "b", "c", "d", "e", "f", "g", "h")
	}
}

// shutdownCutShort writes delivery a, puts the others (commits 20, 21,
// ...) while a's write is under way, then stops the writer, which cuts
// a's write short; the drain must write them all and acknowledge the
// last commit.
func shutdownCutShort(t *testing.T, maxBatch int, queued ...string) {
	t.Helper()
	store := &cutStore{memStore: newMemStore(), started: make(chan struct{})}
	var mu sync.Mutex
	var acked pglogrepl.LSN
	w, err := NewWriter(WriterConfig{Store: store, Slot: "dzhook", Linger: -1, Hold: -1, MaxBatch: maxBatch,
		Ack: func(l pglogrepl.LSN) { mu.Lock(); acked = l; mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	bg := context.Background()
	if err := w.Put(bg, Record{Deliveries: []DeliveryRow{{ID: "a", State: Pending}}, Commit: 10}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-store.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the first batch was never written")
	}
	for i, id := range queued {
		if err := w.Put(bg, Record{Deliveries: []DeliveryRow{{ID: id, State: Pending}}, Commit: pglogrepl.LSN(20 + i)}); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	for _, id := range append([]string{"a"}, queued...) {
		if _, ok := store.delivery(id); !ok {
			t.Fatalf("delivery %s was not written by the drain", id)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := pglogrepl.LSN(20 + len(queued) - 1); acked != want {
		t.Fatalf("acknowledged %s after the drain, want %s", acked, want)
	}
}

// TestWriterDurableCallback: Record.Durable is called once the batch
// holding the record is written (not before), is told a broken batch's
// error, and does not end the linger as Done does.
func TestWriterDurableCallback(t *testing.T) {
	store := newMemStore()
	h := newHarness(t, store, WriterConfig{Linger: 200 * time.Millisecond})
	told := make(chan error, 1)
	start := time.Now()
	h.put(Record{Event: &EventRow{ID: "whk_1"}, Durable: func(err error) {
		if store.writes == 0 { // Run's goroutine, which made the writes
			t.Error("Durable called before any batch was written")
		}
		told <- err
	}})
	select {
	case err := <-told:
		if err != nil {
			t.Errorf("Durable told %v, want nil", err)
		}
		if waited := time.Since(start); waited < 150*time.Millisecond {
			t.Errorf("written after %s: Durable ended the linger", waited)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Durable not called")
	}

	broken := newMemStore()
	broken.fail = func(int) error { return errors.New("journal down") }
	hb := newHarness(t, broken, WriterConfig{DrainTimeout: 200 * time.Millisecond})
	hb.put(Record{Event: &EventRow{ID: "whk_2"}, Durable: func(err error) { told <- err }})
	hb.close() // the write is retried until Run stops; then the batch is broken
	select {
	case err := <-told:
		if err == nil {
			t.Error("Durable told nil for a batch never written")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Durable not called for a broken batch")
	}
}

// TestWriterLingerEndsForWhatWaits: a batch lingers for more records,
// but not when something waits for it: a full batch queued is written at
// once, and a Spilled record (work the scheduler claims from the journal)
// within SpilledLinger, whether it came first or during the linger.
func TestWriterLingerEndsForWhatWaits(t *testing.T) {
	const linger = 5 * time.Second
	written := func(store *memStore) int {
		b, _ := store.snapshot()
		return len(b)
	}
	// waitWritten returns how long the first batch took to be written,
	// failing the test past limit.
	waitWritten := func(t *testing.T, store *memStore, start time.Time, limit time.Duration) time.Duration {
		t.Helper()
		for written(store) == 0 {
			if time.Since(start) > limit {
				t.Fatalf("nothing written after %s (linger %s)", limit, linger)
			}
			time.Sleep(2 * time.Millisecond)
		}
		return time.Since(start)
	}
	t.Run("plain records linger", func(t *testing.T) {
		store := newMemStore()
		h := newHarness(t, store, WriterConfig{Linger: 300 * time.Millisecond})
		start := time.Now()
		h.put(Record{Event: &EventRow{ID: "whk_1"}})
		h.put(Record{Event: &EventRow{ID: "whk_2"}})
		if took := waitWritten(t, store, start, 5*time.Second); took < 250*time.Millisecond {
			t.Errorf("written after %s, before the linger of 300 ms", took)
		}
	})
	t.Run("a spilled record comes during the linger", func(t *testing.T) {
		store := newMemStore()
		h := newHarness(t, store, WriterConfig{Linger: linger})
		start := time.Now()
		h.put(Record{Event: &EventRow{ID: "whk_1"}})
		h.put(Record{Spilled: true})
		waitWritten(t, store, start, linger/2)
	})
	t.Run("the first record is spilled", func(t *testing.T) {
		store := newMemStore()
		h := newHarness(t, store, WriterConfig{Linger: linger})
		start := time.Now()
		h.put(Record{Spilled: true, Event: &EventRow{ID: "whk_1"}})
		waitWritten(t, store, start, linger/2)
	})
	t.Run("a record someone waits for, behind a full batch", func(t *testing.T) {
		// The full batch's signal ends the first linger; the record
		// waited for is in the next batch, whose linger must not wait
		// for a signal already spent.
		store := newMemStore()
		h := newHarness(t, store, WriterConfig{Linger: linger, MaxBatch: 4})
		start := time.Now()
		for i := range 5 {
			h.put(Record{Event: &EventRow{ID: fmt.Sprintf("whk_%d", i)}})
		}
		done := make(chan error, 1)
		h.put(Record{Event: &EventRow{ID: "whk_waited"}, Done: done})
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(linger / 2):
			t.Fatalf("the record waited for was not written after %s (linger %s)", time.Since(start), linger)
		}
	})
	// A full batch queued, by records (9 of a batch of 4) or by rows (6
	// records of 9 rows: 54, more than the 32 of a batch of 8 records).
	for _, tc := range []struct {
		name                          string
		maxBatch, records, deliveries int
	}{
		{"a full batch is queued", 4, 9, 0},
		{"a batch full by rows is queued", 8, 6, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newMemStore()
			h := newHarness(t, store, WriterConfig{Linger: linger, MaxBatch: tc.maxBatch})
			start := time.Now()
			for i := range tc.records {
				r := Record{Event: &EventRow{ID: fmt.Sprintf("whk_%d", i)}}
				for j := range tc.deliveries {
					r.Deliveries = append(r.Deliveries, DeliveryRow{ID: fmt.Sprintf("dlv_%d_%d", i, j), State: Delivered})
				}
				h.put(r)
			}
			waitWritten(t, store, start, linger/2)
		})
	}
}

// TestBatchKeepsTheChangeTime: a batch holds one state row per
// subscription; a later row that changes nothing keeps the time of the
// change an earlier one made, and a later change brings its own.
func TestBatchKeepsTheChangeTime(t *testing.T) {
	t1, t2 := time.Now().Add(-time.Minute), time.Now()
	bb := newBatchBuilderFor(batchSizes{})
	bb.addSub(SubscriptionState{ID: "crm", State: Failing, Changed: true, ChangedAt: t1})
	bb.addSub(SubscriptionState{ID: "crm", State: Failing, LastStatus: 503})
	if got := bb.b.Subs; len(got) != 1 || !got[0].Changed || !got[0].ChangedAt.Equal(t1) || got[0].LastStatus != 503 {
		t.Fatalf("after a row without a change: %+v, want the change of %v kept", got, t1)
	}
	bb.addSub(SubscriptionState{ID: "crm", State: Healthy, Changed: true, ChangedAt: t2})
	if got := bb.b.Subs; len(got) != 1 || got[0].State != Healthy || !got[0].ChangedAt.Equal(t2) {
		t.Fatalf("after a later change: %+v, want healthy at %v", got, t2)
	}
}
