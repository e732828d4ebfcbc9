package fanout

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
	"github.com/dzdesk/dzhook/signer"
)

// stalledStore is a process's view of the journal that can stall: while
// stalled, its heartbeat and claims do not reach the journal (the
// process stopped, SIGSTOP, or the journal away for it); they go on when
// it resumes. Its writer writes as before.
type stalledStore struct {
	*journal.Store
	mu    sync.Mutex
	gate  chan struct{} // nil: not stalled
	calls int           // Claim calls that reached the journal
}

func (s *stalledStore) stall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate == nil {
		s.gate = make(chan struct{})
	}
}

func (s *stalledStore) resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate != nil {
		close(s.gate)
		s.gate = nil
	}
}

func (s *stalledStore) wait(ctx context.Context) {
	s.mu.Lock()
	g := s.gate
	s.mu.Unlock()
	if g != nil {
		select {
		case <-g:
		case <-ctx.Done():
		}
	}
}

func (s *stalledStore) claims() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func (s *stalledStore) Heartbeat(ctx context.Context, i string, w time.Duration) (int, time.Time, error) {
	s.wait(ctx)
	return s.Store.Heartbeat(ctx, i, w)
}

func (s *stalledStore) Peers(ctx context.Context, i string, w time.Duration) (int, time.Time, error) {
	s.wait(ctx)
	return s.Store.Peers(ctx, i, w)
}

func (s *stalledStore) Claim(ctx context.Context, w []journal.ClaimWant, o, tok string, st time.Duration) ([]journal.Claimed, error) {
	s.wait(ctx)
	c, err := s.Store.Claim(ctx, w, o, tok, st)
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	return c, err
}

// TestStalledProcessDropsWhatWasTakenOver: process A has E1 of a key in
// flight and E2..E5 behind it in memory (ordering: entity: waiting behind
// the key; none: queued), all journaled as A's. A's heartbeat stalls for
// longer than three heartbeats; B takes the deliveries over and sends
// E1..E5. When A runs again and its E1 attempt ends, it must send none
// of E2..E5 again: it waits at its fence, asks the journal, and drops
// them. (It used to send them all a second time, and under entity
// ordering beside B's.)
func TestStalledProcessDropsWhatWasTakenOver(t *testing.T) {
	t.Parallel()
	for _, o := range []Ordering{OrderEntity, OrderNone} {
		t.Run(string(o), func(t *testing.T) {
			store := newJournal(t)
			rc, release := heldReceiver(t, false) // A's E1 in flight until release
			sa := &stalledStore{Store: store}
			cfgA := ordered(sa, rc.URL, o, 0, time.Hour)
			cfgA.Instance, cfgA.Concurrency = "iA", 1
			// A's E1 outlasts B's takeover: with the default 5 s, a start
			// of B slower by a second (found by a review) timed it out
			// first, its retry an hour away, and B had nothing to send.
			cfgA.Timeout = time.Minute
			a := start(t, store, cfgA)
			holdKey(t, store, a, rc, 5)
			sa.stall()
			cfgB := ordered(store, rc.URL, o, 0, time.Hour)
			cfgB.Instance = "iB"
			start(t, store, cfgB)
			rc.Wait(t, 6, 20*time.Second) // B took E1..E5 over and sent them
			sa.resume()
			release() // A's E1 attempt ends
			s := a.reg.Load().byID["crm"]
			// The recheck waits journal.ClaimTimeout (B alive) before the
			// fence opens.
			testutil.Eventually(t, journal.ClaimTimeout+20*time.Second, "A done with what it held", func() bool {
				return a.sched.fence.open(time.Now()) && s.queued() == 0 && s.busy[0].Load() == 0 && !s.ord.holdsAny()
			})
			sent := map[string]int{}
			for _, r := range rc.Requests() {
				sent[r.Header.Get(signer.HeaderDelivery)]++
			}
			if n := len(rc.Requests()); n != 6 {
				t.Errorf("receiver got %d requests (%v), want 6: A's E1 in flight when B took over, and B's E1..E5", n, sent)
			}
		})
	}
}

// TestLateOutcomeDoesNotUndoTheTakeover: A's attempt of E1 is in flight
// when A stalls and B takes E1 over, making the same attempt. A's late
// failure lands while B's attempt is still in flight: it must not be
// recorded over B's ownership, nor B's success after it thrown away
// (the delivery was then sent again by A's retry, after the key's later
// E2 and E3, and the history showed A's 500 as the attempt). The
// history shows B's attempt, the delivery is delivered once by B,
// nothing of the key arrives after E3, and A's failure (its schedule's
// last attempt) does not mark the subscription failing.
func TestLateOutcomeDoesNotUndoTheTakeover(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	holdA, holdB := make(chan struct{}), make(chan struct{})
	var onceA, onceB sync.Once
	relA := func() { onceA.Do(func() { close(holdA) }) }
	relB := func() { onceB.Do(func() { close(holdB) }) }
	t.Cleanup(relA)
	t.Cleanup(relB)
	rc.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		switch n {
		case 1:
			<-holdA
			return http.StatusInternalServerError, nil, "A's attempt"
		case 2:
			<-holdB
		}
		return http.StatusOK, nil, "ok"
	})
	sa := &stalledStore{Store: store}
	// A's schedule is one attempt: its late 500 would use it up, and mark
	// the subscription failing over a delivery B made.
	cfgA := ordered(sa, rc.URL, OrderEntity, 0)
	cfgA.Instance, cfgA.Concurrency, cfgA.Timeout = "iA", 1, time.Minute
	a := start(t, store, cfgA)
	evs := holdKey(t, store, a, rc, 3)
	sa.stall()
	cfgB := ordered(store, rc.URL, OrderEntity, 0, 3*time.Second)
	cfgB.Instance, cfgB.Timeout = "iB", time.Minute
	start(t, store, cfgB)
	reqs := rc.Wait(t, 2, 20*time.Second) // B took E1 over; its attempt in flight
	e1 := reqs[0].Header.Get(signer.HeaderDelivery)
	if got := reqs[1].Header.Get(signer.HeaderDelivery); got != e1 {
		t.Fatalf("second request %s, want B's attempt of E1 %s", got, e1)
	}
	attemptRows := func() string {
		var h string
		_ = store.Pool().QueryRow(ctx, `SELECT coalesce(string_agg(attempt || ':' || coalesce(status_code, 0) || ':' || instance, ',' ORDER BY attempt), '')
			FROM dzhook.attempts WHERE delivery_id = $1`, e1).Scan(&h)
		return h
	}
	relA() // A's attempt ends (500) while B's is in flight; A's writer writes
	testutil.Eventually(t, 10*time.Second, "A's outcome handed to its writer and written", func() bool {
		var busy bool
		for i := range a.reg.Load().byID["crm"].busy {
			busy = busy || a.reg.Load().byID["crm"].busy[i].Load() != 0
		}
		return !busy
	})
	written := make(chan error, 1) // a barrier: what A put before it is written
	if err := a.records.Put(ctx, journal.Record{Spilled: true, Done: written}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-written:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("A's writer did not write")
	}
	if h := attemptRows(); h != "" {
		t.Errorf("A's late attempt recorded over B's ownership: %s", h)
	}
	states, err := store.SubscriptionStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range states {
		if st.State != journal.Healthy {
			t.Errorf("A's late outcome made %s %s", st.ID, st.State)
		}
	}
	relB() // B's attempt: 200, then E2 and E3
	names := map[string]string{}
	for i, ev := range evs {
		names[ids.DeliveryIDTagged(ev.ID, a.reg.Load().byID["crm"].tag)] = []string{"E1", "E2", "E3"}[i]
	}
	testutil.Eventually(t, 20*time.Second, "E1, E2 and E3 delivered", func() bool {
		var n int
		_ = store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`).Scan(&n)
		return n == 3
	})
	var order []string
	for _, r := range rc.Requests() {
		order = append(order, names[r.Header.Get(signer.HeaderDelivery)]+"#"+r.Header.Get(signer.HeaderAttempt))
	}
	if want := []string{"E1#1", "E1#1", "E2#1", "E3#1"}; !slices.Equal(order, want) {
		t.Errorf("arrivals %v, want %v", order, want)
	}
	if h := attemptRows(); h != "1:200:iB" {
		t.Errorf("E1's history %q, want B's attempt alone (1:200:iB)", h)
	}
}

// TestStaleOutcomeAppliedCountsForHealth: A's heartbeat goes stale while
// its attempt is in flight, and nobody takes the delivery over. The
// attempt, its schedule's last, fails: applied by the journal (A still
// owns the delivery), it must mark the subscription failing as any
// exhausted delivery does (skipped for every outcome made while stale,
// such a window, a journal restart, hid it: found by a review).
func TestStaleOutcomeAppliedCountsForHealth(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	hold := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	t.Cleanup(release)
	rc.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) {
		<-hold
		return http.StatusInternalServerError, nil, "down"
	})
	sa := &stalledStore{Store: store}
	cfg := ordered(sa, rc.URL, OrderNone, 0) // one attempt
	cfg.Instance, cfg.Timeout = "iA", time.Minute
	a := start(t, store, cfg)
	evs := orderEvents([]string{"req_1"})
	if err := a.Dispatch(ctx, evs[0]); err != nil {
		t.Fatal(err)
	}
	rc.Wait(t, 1, 10*time.Second)
	sa.stall()
	testutil.Eventually(t, 10*time.Second, "A's fence closed", func() bool { return !a.sched.fence.open(time.Now()) })
	release()
	testutil.Eventually(t, 10*time.Second, "the subscription failing in the journal", func() bool {
		states, err := store.SubscriptionStates(ctx)
		return err == nil && len(states) == 1 && states[0].State == journal.Failing
	})
	if s, attempts, _ := deliveryState(t, store, deliveryID(evs[0])); s != "failed" || attempts != 1 {
		t.Errorf("the delivery: %s after %d attempts, want failed after 1", s, attempts)
	}
}

// holdKey routes n deliveries of key req_1 through a (instance iA, one
// worker): the first is in flight at rc, the others wait behind it, and
// all n are journaled as iA's. It returns their events.
func holdKey(t *testing.T, store *journal.Store, a *Dispatcher, rc *testutil.Receiver, n int) []Event {
	t.Helper()
	ctx := context.Background()
	if err := a.SyncOrder(ctx); err != nil {
		t.Fatal(err)
	}
	evs := orderEvents(slices.Repeat([]string{"req_1"}, n))
	for _, ev := range evs {
		if err := a.Dispatch(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	rc.Wait(t, 1, 10*time.Second)
	testutil.Eventually(t, 10*time.Second, "A's deliveries journaled as its own", func() bool {
		var k int
		_ = store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE owner = 'iA' AND state = 'pending'`).Scan(&k)
		return k == n
	})
	return evs
}

// holdsAny reports whether any key has a delivery in memory (false for
// an unordered subscription's nil state).
func (o *orderState) holdsAny() bool {
	if o == nil {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, ks := range o.keys {
		if ks.active != nil || len(ks.waiting) > 0 {
			return true
		}
	}
	return false
}

// TestFirstBackAfterAnOutageTakesNothingOver: two processes lose the
// journal for longer than three heartbeats (a restart, a failover). The
// first one back must not take over what the other holds in memory:
// its own contact with the journal was cut as well, so it cannot tell
// the other's stale row from a dead process's. A's five deliveries
// stay A's, and A sends them.
func TestFirstBackAfterAnOutageTakesNothingOver(t *testing.T) {
	t.Parallel()
	store := newJournal(t)
	ctx := context.Background()
	rc, release := heldReceiver(t, false) // A's first attempt in flight until release
	sa, sb := &stalledStore{Store: store}, &stalledStore{Store: store}
	cfg := func(s Store, instance string) Config {
		c := ordered(s, rc.URL, OrderNone, 0, time.Hour)
		c.Instance, c.Concurrency = instance, 1
		// A's first attempt outlasts the outage: with the default 5 s
		// it could time out before the release, and its retry, an hour
		// later by this schedule, never came within the test.
		c.Timeout = 30 * time.Second
		return c
	}
	a := start(t, store, cfg(sa, "iA"))
	// A's five are routed before B starts. With B alive, A keeps in
	// memory only what its one worker starts soon and journals the rest
	// unowned, and a dispatch that meets A's own claim in progress (it
	// holds the places it may fill) goes to the journal too: B claimed
	// the first one so, A's worker was free, and A sent the other four
	// before the outage (found in CI). Alone, A keeps what it does not
	// claim back itself.
	for i, ev := range orderEvents([]string{"a", "b", "c", "d", "e"}) {
		if err := a.Dispatch(ctx, ev); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			rc.Wait(t, 1, 10*time.Second)
		}
	}
	ownedBy := func(instance string) int {
		var n int
		if err := store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE owner = $1 AND state = 'pending'`, instance).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	testutil.Eventually(t, 30*time.Second, "A's five deliveries journaled as its own", func() bool { return ownedBy("iA") == 5 })
	b := start(t, store, cfg(sb, "iB"))
	testutil.Eventually(t, 10*time.Second, "A and B know of each other", func() bool { return a.Peers() == 1 && b.Peers() == 1 })
	if n := ownedBy("iA"); n != 5 || len(rc.Requests()) != 1 {
		t.Fatalf("A owns %d deliveries and the receiver got %d requests once B started, want 5 and 1", n, len(rc.Requests()))
	}
	sa.stall()
	sb.stall()
	testutil.Eventually(t, 10*time.Second, "A's heartbeat three heartbeats old", func() bool {
		var stale bool
		_ = store.Pool().QueryRow(ctx, `SELECT heartbeat_at < now() - interval '3500 milliseconds' FROM dzhook.instances WHERE id = 'iA'`).Scan(&stale)
		return stale
	})
	// B is back first and claims a few rounds before A is back.
	claims := sb.claims()
	sb.resume()
	testutil.Eventually(t, 10*time.Second, "B's claims after the outage", func() bool { return sb.claims() >= claims+3 })
	sa.resume()
	release()
	testutil.Eventually(t, journal.ClaimTimeout+20*time.Second, "the five delivered", func() bool {
		var n int
		_ = store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`).Scan(&n)
		return n == 5
	})
	var byB int
	if err := store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.attempts WHERE instance = 'iB'`).Scan(&byB); err != nil {
		t.Fatal(err)
	}
	if byB != 0 || len(rc.Requests()) != 5 {
		t.Errorf("B attempted %d of A's deliveries after the outage, the receiver got %d requests for 5: B took over A's work, want none", byB, len(rc.Requests()))
	}
}
