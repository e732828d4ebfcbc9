package fanout

import (
	"context"
	"sync"
	"testing"
	"time"

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
	for _, o := range []Ordering{OrderEntity, OrderNone} {
		t.Run(string(o), func(t *testing.T) {
			store := newJournal(t)
			ctx := context.Background()
			rc, release := heldReceiver(t, false) // A's E1 in flight until release
			sa := &stalledStore{Store: store}
			cfgA := ordered(sa, rc.URL, o, 0, time.Hour)
			cfgA.Instance, cfgA.Concurrency = "iA", 1
			a := start(t, store, cfgA)
			if err := a.SyncOrder(ctx); err != nil {
				t.Fatal(err)
			}
			evs := orderEvents([]string{"req_1", "req_1", "req_1", "req_1", "req_1"})
			for _, ev := range evs {
				if err := a.Dispatch(ctx, ev); err != nil {
					t.Fatal(err)
				}
			}
			rc.Wait(t, 1, 10*time.Second)
			testutil.Eventually(t, 10*time.Second, "A's five deliveries journaled as its own", func() bool {
				var n int
				_ = store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE owner = 'iA' AND state = 'pending'`).Scan(&n)
				return n == 5
			})
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
	store := newJournal(t)
	ctx := context.Background()
	rc, release := heldReceiver(t, false) // A's first attempt in flight until release
	sa, sb := &stalledStore{Store: store}, &stalledStore{Store: store}
	cfg := func(s Store, instance string) Config {
		c := ordered(s, rc.URL, OrderNone, 0, time.Hour)
		c.Instance, c.Concurrency = instance, 1
		return c
	}
	a := start(t, store, cfg(sa, "iA"))
	b := start(t, store, cfg(sb, "iB"))
	testutil.Eventually(t, 10*time.Second, "A and B know of each other", func() bool { return a.Peers() == 1 && b.Peers() == 1 })
	// The first in flight before the others are routed: with B alive, A
	// keeps in memory what its one worker starts soon (4 queued at
	// most) and journals the rest unowned for any process to claim. Sent
	// at once, the fifth went to the journal whenever the worker had not
	// yet taken the first off the queue (a loaded CI host), and B claimed
	// it (found in CI).
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
