package fanout

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// waitHeld waits until the journal's one delivery is journaled as held.
func waitHeld(t *testing.T, store *journal.Store) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, "the delivery journaled as held", func() bool {
		var n int
		_ = store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM dzhook.deliveries WHERE state = 'held'`).Scan(&n)
		return n == 1
	})
}

// TestResumeThroughAPeerReleasesWhatTheStreamHeld: an operator resumes a
// paused queue_while_inactive subscription through a process that does
// not stream (b). The streaming process (a) records deliveries as held
// until it adopts the resume (syncFlags, after its next heartbeat); b's
// release ran before, so a releases them when it adopts the resume.
// They used to stay held for ever, and on an ordered subscription a held
// head holds back its key (found by a review, 2026-12-06).
func TestResumeThroughAPeerReleasesWhatTheStreamHeld(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	sub := Subscription{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, QueueWhileInactive: true}
	a := start(t, store, Config{Subscriptions: []Subscription{sub}, Journal: store, Instance: "a", PollInterval: 50 * time.Millisecond,
		Heartbeat: time.Hour}) // syncFlags only when called here
	testutil.Eventually(t, 10*time.Second, "a loaded its state", func() bool { return a.loaded.Load() })
	b, err := New(Config{Subscriptions: []Subscription{sub}, Journal: store, Records: discardRecorder{}, Instance: "b", Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Pause(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Resume(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	// a streams an event before it has adopted the resume: held.
	if err := a.Dispatch(ctx, orderEvents([]string{"k"})[0]); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, store)
	a.syncFlags(ctx) // what a's heartbeat does within a second
	if a.reg.Load().byID["crm"].paused {
		t.Fatal("a did not adopt the resume")
	}
	rc.Wait(t, 1, 10*time.Second)
}

// TestReloadThatActivatesReleasesHeld: the README's promise for
// `active: false` with queue_while_inactive: its deliveries wait (held)
// and go out when it is active again, here made active by a reload.
func TestReloadThatActivatesReleasesHeld(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	sub := Subscription{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: false, QueueWhileInactive: true}
	d := start(t, store, Config{Subscriptions: []Subscription{sub}, Journal: store, Instance: "a", PollInterval: 50 * time.Millisecond, Heartbeat: time.Hour})
	if err := d.Dispatch(ctx, orderEvents([]string{"k"})[0]); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, store)
	sub.Active = true
	if err := d.Reload(ctx, []Subscription{sub}); err != nil {
		t.Fatal(err)
	}
	rc.Wait(t, 1, 10*time.Second)
}

// TestStartReleasesHeldOfAnActiveSubscription: a subscription made
// active while no process ran (the configuration edited between two
// runs) gets the deliveries held for it.
func TestStartReleasesHeldOfAnActiveSubscription(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	sub := Subscription{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: false, QueueWhileInactive: true}
	first, stop := startStoppable(t, store, Config{Subscriptions: []Subscription{sub}, Journal: store, Instance: "a", PollInterval: 50 * time.Millisecond, Heartbeat: time.Hour})
	if err := first.Dispatch(ctx, orderEvents([]string{"k"})[0]); err != nil {
		t.Fatal(err)
	}
	stop() // its writer's drain journals the held delivery
	var n int
	if err := store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'held'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("held deliveries after the first run: %d (%v), want 1", n, err)
	}
	sub.Active = true
	start(t, store, Config{Subscriptions: []Subscription{sub}, Journal: store, Instance: "b", PollInterval: 50 * time.Millisecond, Heartbeat: time.Hour})
	rc.Wait(t, 1, 10*time.Second)
}

// TestReleaseHeldInTheJournalsClock: held deliveries released by a
// resume are due at once even when the process that recorded them (its
// clock in created_at) runs ten minutes ahead of the journal. They
// waited those ten minutes.
func TestReleaseHeldInTheJournalsClock(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	sub := Subscription{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, QueueWhileInactive: true}
	d := start(t, store, Config{Subscriptions: []Subscription{sub}, Journal: store, Instance: "a", PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond,
		NowFunc: func() time.Time { return time.Now().Add(10 * time.Minute) }})
	testutil.Eventually(t, 10*time.Second, "the clocks' difference measured", func() bool {
		return time.Duration(d.sched.skew.Load()) < -9*time.Minute
	})
	if err := d.Pause(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	if err := d.Dispatch(ctx, orderEvents([]string{"k"})[0]); err != nil {
		t.Fatal(err)
	}
	if n, err := d.Resume(ctx, "crm"); err != nil || n != 1 {
		t.Fatalf("Resume = %d, %v; want 1 held delivery released", n, err)
	}
	rc.Wait(t, 1, 10*time.Second)
}

// failingRelease is the journal with ReleaseHeld failing, counted.
type failingRelease struct {
	*journal.Store
	calls atomic.Int64
}

func (f *failingRelease) ReleaseHeld(context.Context, string) (int, error) {
	f.calls.Add(1)
	return 0, errors.New("the journal is away")
}

// TestFailedReleaseRetriedOnItsTimer: a release that fails (the journal
// away) is tried again a second later, not at once: a first version
// woke itself with each retry and made 400,000 calls a second (a review,
// 2026-12-06).
func TestFailedReleaseRetriedOnItsTimer(t *testing.T) {
	store := &failingRelease{Store: newJournal(t)}
	rc := testutil.NewReceiver(t)
	sub := Subscription{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, QueueWhileInactive: true}
	start(t, store.Store, Config{Subscriptions: []Subscription{sub}, Journal: store, Instance: "a", PollInterval: 50 * time.Millisecond, Heartbeat: time.Hour})
	testutil.Eventually(t, 10*time.Second, "the start's release tried", func() bool { return store.calls.Load() > 0 })
	first := store.calls.Load()
	time.Sleep(3 * heldRetry) // a window to count in, not a wait for an event
	if n := store.calls.Load() - first; n < 1 || n > 4 {
		t.Fatalf("%d releases tried in %s after the first failed; want one per %s", n, 3*heldRetry, heldRetry)
	}
}
