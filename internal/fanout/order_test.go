package fanout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// orderReceiver records, per key, the deliveries it answered 2xx in the
// order they arrived, when each attempt started and ended, and fails the
// attempts fail says to fail.
type orderReceiver struct {
	srv *httptest.Server

	mu          sync.Mutex
	got         map[string][]int // key → sequence numbers delivered, in arrival order
	inFlight    map[string]int   // key → attempts in progress
	overlap     []string         // keys that had two attempts in progress at once
	attempts    map[string]int   // delivery id → attempts seen
	fail        func(key string, seq, attempt int) bool
	retryAt     map[string]time.Time // key → when a second attempt of one of its deliveries began
	okAt        map[string]time.Time // key → when its last 2xx was answered
	sequence    []string             // "key/seq" of every 2xx, in arrival order
	all         int                  // attempts in progress, all keys
	maxInFlight int
	done        chan struct{}
	want        int
	total       int
}

type orderBody struct {
	Data struct {
		Key string `json:"key"`
		Seq int    `json:"seq"`
	} `json:"data"`
}

func newOrderReceiver(t *testing.T, want int, fail func(key string, seq, attempt int) bool) *orderReceiver {
	r := &orderReceiver{got: map[string][]int{}, inFlight: map[string]int{}, attempts: map[string]int{},
		fail: fail, done: make(chan struct{}), want: want, retryAt: map[string]time.Time{}, okAt: map[string]time.Time{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var b orderBody
		if err := json.Unmarshal(body, &b); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id := req.Header.Get("X-DZDESK-Delivery")
		r.mu.Lock()
		r.attempts[id]++
		n := r.attempts[id]
		if _, ok := r.retryAt[b.Data.Key]; !ok && n == 2 {
			r.retryAt[b.Data.Key] = time.Now()
		}
		r.all++
		r.maxInFlight = max(r.maxInFlight, r.all)
		r.inFlight[b.Data.Key]++
		if r.inFlight[b.Data.Key] > 1 {
			r.overlap = append(r.overlap, b.Data.Key)
		}
		r.mu.Unlock()
		time.Sleep(time.Millisecond) // an attempt takes a moment, so overlaps can show
		r.mu.Lock()
		defer r.mu.Unlock()
		r.inFlight[b.Data.Key]--
		r.all--
		if r.fail != nil && r.fail(b.Data.Key, b.Data.Seq, n) {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		r.got[b.Data.Key] = append(r.got[b.Data.Key], b.Data.Seq)
		r.okAt[b.Data.Key] = time.Now()
		r.sequence = append(r.sequence, fmt.Sprintf("%s/%d", b.Data.Key, b.Data.Seq))
		r.total++
		if r.total == r.want {
			close(r.done)
		}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *orderReceiver) wait(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(within):
		r.mu.Lock()
		defer r.mu.Unlock()
		t.Fatalf("the receiver got %d deliveries within %v, want %d", r.total, within, r.want)
	}
}

// orderEvents builds events for keys: events[i] has key keys[i] and the
// sequence number of its key.
func orderEvents(keys []string) []Event {
	src := ids.NewSource("order-test")
	seq := map[string]int{}
	evs := make([]Event, len(keys))
	for i, k := range keys {
		id := src.NewID(pglogrepl.LSN(1000+i), 0, 0)
		body := fmt.Sprintf(`{"id":%q,"event":"request.updated","timestamp":"2024-01-15T14:30:00Z","data":{"key":%q,"seq":%d}}`, id, k, seq[k])
		evs[i] = Event{ID: id, Type: "request.updated", Timestamp: time.Now(), Body: []byte(body), CommitLSN: pglogrepl.LSN(1000 + i), Key: k}
		seq[k]++
	}
	return evs
}

// checkOrder asserts every key's deliveries arrived in order, each once,
// and never two of a key at once.
func (r *orderReceiver) checkOrder(t *testing.T, keys []string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	count := map[string]int{}
	for _, k := range keys {
		count[k]++
	}
	for k, n := range count {
		got := r.got[k]
		if len(got) != n {
			t.Errorf("key %s: %d deliveries, want %d", k, len(got), n)
		}
		for i, s := range got {
			if s != i {
				t.Errorf("key %s: deliveries arrived as %v, want 0..%d in order", k, got, n-1)
				break
			}
		}
	}
	if len(r.overlap) > 0 {
		t.Errorf("keys with two attempts at once: %v", r.overlap)
	}
}

// TestOrderedEntity: the first attempt of X's first delivery fails; X's
// 50 later deliveries wait behind its retry and arrive after it, in order;
// 1,000 deliveries of other keys flow meanwhile, in order per key.
func TestOrderedEntity(t *testing.T) {
	store := newJournal(t)
	var keys []string
	for i := range 1050 {
		if i%21 == 0 {
			keys = append(keys, "req_X")
		} else {
			keys = append(keys, fmt.Sprintf("req_%d", i%100))
		}
	}
	xs := 0
	for _, k := range keys {
		if k == "req_X" {
			xs++
		}
	}
	const retryAfter = 2 * time.Second
	rc := newOrderReceiver(t, len(keys), func(key string, seq, attempt int) bool { return key == "req_X" && seq == 0 && attempt == 1 })
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.srv.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, Ordering: OrderEntity}},
		Journal:       store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second,
		RetrySchedule: []time.Duration{0, retryAfter}, Logger: testutil.Logger(t),
	})
	ctx := context.Background()
	// As the stream does when its session starts: from now on, keys with
	// nothing in the journal go out from memory.
	if err := d.SyncOrder(ctx); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	for _, ev := range orderEvents(keys) {
		if err := d.Dispatch(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	rc.wait(t, 60*time.Second)
	rc.checkOrder(t, keys)

	// The other keys did not wait for X's retry: each was delivered
	// before X's head was attempted again.
	rc.mu.Lock()
	defer rc.mu.Unlock()
	retry, ok := rc.retryAt["req_X"]
	if !ok {
		t.Fatal("X's head was never attempted a second time")
	}
	if since := retry.Sub(started); since < retryAfter-100*time.Millisecond {
		t.Errorf("X's head was retried %v after the start, before its retry was due (%v)", since, retryAfter)
	}
	for k, at := range rc.okAt {
		if k != "req_X" && at.After(retry) {
			t.Errorf("key %s was last delivered %v after X's retry: it waited behind another key", k, at.Sub(retry))
		}
	}
}

// noBacklogStore is the journal, except that the ordered keys' backlog
// cannot be read: ordered deliveries then all go through the journal.
type noBacklogStore struct{ *journal.Store }

func (noBacklogStore) OrderedBacklog(context.Context, []string, string) (map[string]map[string]journal.KeyBacklog, error) {
	return nil, errors.New("backlog unreadable in this test")
}

// TestOrderedThroughTheJournal: until the keys' backlog is read, every
// ordered delivery waits in the journal, and the claim takes only the head
// of each key: the order holds without the memory's fast path.
func TestOrderedThroughTheJournal(t *testing.T) {
	store := newJournal(t)
	var keys []string
	for i := range 300 {
		keys = append(keys, fmt.Sprintf("usr_%d", i%7))
	}
	rc := newOrderReceiver(t, len(keys), func(key string, seq, attempt int) bool { return key == "usr_3" && seq == 5 && attempt < 3 })
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.srv.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, Ordering: OrderEntity}},
		Journal:       noBacklogStore{store}, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second,
		RetrySchedule: []time.Duration{0, 300 * time.Millisecond, 300 * time.Millisecond}, Logger: testutil.Logger(t),
	})
	for _, ev := range orderEvents(keys) {
		if err := d.Dispatch(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	rc.wait(t, 60*time.Second)
	rc.checkOrder(t, keys)
}

// TestOrderedSubscription: one delivery at a time, in order, for the
// whole subscription; a failed attempt holds back everything after it.
func TestOrderedSubscription(t *testing.T) {
	store := newJournal(t)
	var keys []string
	for i := range 60 {
		keys = append(keys, fmt.Sprintf("req_%d", i%5))
	}
	// The receiver sees one stream: record it under one key.
	rc := newOrderReceiver(t, len(keys), func(key string, seq, attempt int) bool { return key == "req_2" && seq == 3 && attempt == 1 })
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "audit", URL: rc.srv.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, Ordering: OrderSubscription}},
		Journal:       store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second,
		RetrySchedule: []time.Duration{0, 300 * time.Millisecond}, Logger: testutil.Logger(t),
	})
	if err := d.SyncOrder(context.Background()); err != nil {
		t.Fatal(err)
	}
	evs := orderEvents(keys)
	for _, ev := range evs {
		if err := d.Dispatch(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	rc.wait(t, 60*time.Second)
	rc.checkOrder(t, keys) // per key, and no overlap within a key
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.sequence) != len(evs) {
		t.Fatalf("the receiver saw %d deliveries, want %d", len(rc.sequence), len(evs))
	}
	for i, got := range rc.sequence {
		if want := fmt.Sprintf("%s/%d", keys[i], seqOf(keys, i)); got != want {
			t.Fatalf("delivery %d of the subscription was %s, want %s (the whole order: %v)", i, got, want, rc.sequence)
		}
	}
	if rc.maxInFlight > 1 {
		t.Errorf("%d attempts were in progress at once, want one at a time", rc.maxInFlight)
	}
}

// seqOf is the sequence number of keys[i] among its key's events.
func seqOf(keys []string, i int) int {
	n := 0
	for _, k := range keys[:i] {
		if k == keys[i] {
			n++
		}
	}
	return n
}

// TestOrderedAcrossReload: reloading an ordered subscription (its headers
// changed) while keys have deliveries in flight, waiting in memory and
// waiting in the journal behind a retry keeps every key in order: the new
// generation inherits the keys' state, and what the old one held goes
// back to the journal behind what came before it.
func TestOrderedAcrossReload(t *testing.T) {
	// Before Run started its workers (the stream may queue deliveries
	// first), and while they run with keys in flight and waiting.
	for _, running := range []bool{false, true} {
		t.Run(fmt.Sprintf("running=%v", running), func(t *testing.T) { orderedAcrossReload(t, running) })
	}
}

func orderedAcrossReload(t *testing.T, running bool) {
	store := newJournal(t)
	var keys []string
	for i := range 600 {
		keys = append(keys, fmt.Sprintf("req_%d", i%12))
	}
	rc := newOrderReceiver(t, len(keys), func(key string, seq, attempt int) bool {
		return (key == "req_4" && seq == 2 || key == "req_9" && seq == 30) && attempt == 1
	})
	sub := Subscription{ID: "crm", URL: rc.srv.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, Ordering: OrderEntity}
	d := start(t, store, Config{
		Subscriptions: []Subscription{sub}, Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second,
		RetrySchedule: []time.Duration{0, 500 * time.Millisecond}, Concurrency: 4, Logger: testutil.Logger(t),
	})
	ctx := context.Background()
	if err := d.SyncOrder(ctx); err != nil {
		t.Fatal(err)
	}
	evs := orderEvents(keys)
	for i, ev := range evs {
		if i == len(evs)/2 {
			if running {
				testutil.Eventually(t, 30*time.Second, "deliveries under way before the reload", func() bool {
					rc.mu.Lock()
					defer rc.mu.Unlock()
					return rc.total >= 50
				})
			}
			changed := sub
			changed.Headers = map[string]string{"X-Generation": "2"}
			if err := d.Reload(ctx, []Subscription{changed}); err != nil {
				t.Fatalf("Reload: %v", err)
			}
		}
		if err := d.Dispatch(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	rc.wait(t, 60*time.Second)
	rc.checkOrder(t, keys)
}

// TestOrderedRetryIsNotClaimedBeforeItsKeyMovesOn: a retried ordered
// delivery stays owned by its worker until the key's state says it waits
// for a retry. Claimable as soon as its outcome was written (the worker
// waiting for routeMu, held here by a stand-in for a blocked dispatch),
// it was claimed and delivered meanwhile, and the key's waiting
// deliveries were split between memory and the journal: two in flight at
// once, out of order (found by review: [0 2 1]).
func TestOrderedRetryIsNotClaimedBeforeItsKeyMovesOn(t *testing.T) {
	store := newJournal(t)
	var mu sync.Mutex
	attempts := map[int]int{}
	inFlight := 0
	var overlap []int
	var order []int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var b orderBody
		_ = json.Unmarshal(body, &b)
		mu.Lock()
		attempts[b.Data.Seq]++
		n := attempts[b.Data.Seq]
		inFlight++
		if inFlight > 1 {
			overlap = append(overlap, b.Data.Seq)
		}
		mu.Unlock()
		if b.Data.Seq == 1 {
			time.Sleep(time.Second)
		}
		mu.Lock()
		inFlight--
		mu.Unlock()
		if b.Data.Seq == 0 && n == 1 {
			w.WriteHeader(500)
			return
		}
		mu.Lock()
		order = append(order, b.Data.Seq)
		mu.Unlock()
	}))
	defer srv.Close()
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: srv.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, Ordering: OrderEntity}},
		Journal:       store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second,
		RetrySchedule: []time.Duration{0, 0, 0}, Logger: testutil.Logger(t),
	})
	ctx := context.Background()
	if err := d.SyncOrder(ctx); err != nil {
		t.Fatal(err)
	}
	evs := orderEvents([]string{"k", "k", "k"})
	for _, ev := range evs {
		if err := d.Dispatch(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	// A dispatch holding routeMu for a while (waiting for room in another
	// subscription's queue, or for the journal writer).
	d.routeMu.Lock()
	time.Sleep(400 * time.Millisecond) // fault injection: the lock is held this long
	d.routeMu.Unlock()
	testutil.Eventually(t, 30*time.Second, "the three deliveries of k", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == 3
	})
	mu.Lock()
	defer mu.Unlock()
	t.Logf("delivered in order %v, attempts %v, overlaps %v", order, attempts, overlap)
	if len(overlap) > 0 {
		t.Errorf("two attempts of key k at once (seq %v)", overlap)
	}
	for i, s := range order {
		if s != i {
			t.Errorf("out of order: %v", order)
			break
		}
	}
}

// TestOrderedRecountBringsKeysBack: a key waits in the journal (its head
// failed and is due much later); another process delivers that head (an
// UPDATE of the journal here, as its claim and outcome would be). The
// count of this process errs upwards until its scheduler's recount reads
// the journal: then the key is back on the fast path, and not before.
func TestOrderedRecountBringsKeysBack(t *testing.T) {
	store := newJournal(t)
	rc := newOrderReceiver(t, 1, func(key string, seq, attempt int) bool { return seq == 0 && attempt == 1 }) // the head is delivered "elsewhere"
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.srv.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, Ordering: OrderEntity}},
		Journal:       store, Instance: "i1", PollInterval: 20 * time.Millisecond, Heartbeat: time.Second,
		RetrySchedule: []time.Duration{0, time.Hour}, Logger: testutil.Logger(t),
	})
	ctx := context.Background()
	if err := d.SyncOrder(ctx); err != nil {
		t.Fatal(err)
	}
	journalKeys := func() int { return d.Subscriptions()[0].Order.JournalKeys }
	evs := orderEvents([]string{"req_K", "req_K"})
	if err := d.Dispatch(ctx, evs[0]); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the key waiting in the journal for its head's retry", func() bool { return journalKeys() == 1 })
	// Several recounts (every 20 polls: 400 ms) while the head is pending:
	// the key stays in the journal.
	time.Sleep(1200 * time.Millisecond)
	if n := journalKeys(); n != 1 {
		t.Fatalf("keys in the journal = %d while the head is still pending there, want 1", n)
	}
	// Another process delivers the head.
	if _, err := store.Pool().Exec(ctx, `UPDATE dzhook.deliveries SET state = 'delivered', owner = NULL WHERE subscription_id = 'crm'`); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the key back on the fast path after a recount", func() bool { return journalKeys() == 0 })
	// Its next delivery goes out from memory, at once.
	if err := d.Dispatch(ctx, evs[1]); err != nil {
		t.Fatal(err)
	}
	rc.wait(t, 10*time.Second)
}
