package fanout

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// The pause and the disabled state live in the journal and in each
// process's memory; these tests hold the two together through reloads,
// two operators at once, and a resume cut short.

func journalPaused(t *testing.T, store *journal.Store, id string) bool {
	t.Helper()
	var paused bool
	if err := store.Pool().QueryRow(context.Background(), `SELECT paused FROM dzhook.subscriptions WHERE id = $1`, id).Scan(&paused); err != nil {
		t.Fatal(err)
	}
	return paused
}

func heldCount(t *testing.T, store *journal.Store) int {
	t.Helper()
	var n int
	if err := store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM dzhook.deliveries WHERE state = 'held'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func memPaused(d *Dispatcher, id string) bool {
	for _, s := range d.Subscriptions() {
		if s.ID == id {
			return s.Paused
		}
	}
	return false
}

func flagsSub(url string) Subscription {
	return Subscription{ID: "crm", URL: url, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, QueueWhileInactive: true}
}

// gatedPause holds the first SetPaused(paused == block), after its
// journal write, until release is closed.
type gatedPause struct {
	*journal.Store
	block   bool
	arrived chan struct{}
	release chan struct{}
	once    sync.Once
}

func newGatedPause(store *journal.Store, block bool) *gatedPause {
	return &gatedPause{Store: store, block: block, arrived: make(chan struct{}), release: make(chan struct{})}
}

func (g *gatedPause) SetPaused(ctx context.Context, id string, paused bool) error {
	err := g.Store.SetPaused(ctx, id, paused)
	if paused == g.block {
		g.once.Do(func() {
			close(g.arrived)
			<-g.release
		})
	}
	return err
}

// dispatchWhilePaused dispatches one event and waits for it to be
// journaled as held (or to reach the receiver, which fails the test).
func dispatchWhilePaused(t *testing.T, d *Dispatcher, store *journal.Store, rc *testutil.Receiver, ev Event, held int) {
	t.Helper()
	if err := d.Dispatch(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the event held or sent", func() bool {
		return heldCount(t, store) == held || len(rc.Requests()) > 0
	})
	if n := len(rc.Requests()); n > 0 {
		t.Fatalf("the paused subscription's receiver got %d requests", n)
	}
}

// TestReaddedSubscriptionKeepsItsPause: a paused subscription removed by
// a reload and added back by the next one is paused, as the journal says:
// it came back active, sending, and paused again at the next restart.
func TestReaddedSubscriptionKeepsItsPause(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	sub := flagsSub(rc.URL)
	d := start(t, store, Config{Subscriptions: []Subscription{sub}, Journal: store, Instance: "a", PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond})
	testutil.Eventually(t, 10*time.Second, "the journal's state loaded", d.loaded.Load)
	if err := d.Pause(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(ctx, []Subscription{sub}); err != nil {
		t.Fatal(err)
	}
	if !memPaused(d, "crm") {
		t.Fatalf("the subscription added back is not paused (the journal: paused %v)", journalPaused(t, store, "crm"))
	}
	dispatchWhilePaused(t, d, store, rc, orderEvents([]string{"k"})[0], 1)
}

// TestReloadDuringPauseKeepsIt: a reload that replaces the subscription
// (another operator's edit) while a pause writes the journal: the pause
// holds in memory too, not only on the subscription the reload retired.
func TestReloadDuringPauseKeepsIt(t *testing.T) {
	store := newJournal(t)
	g := newGatedPause(store, true)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	sub := flagsSub(rc.URL)
	d := start(t, store, Config{Subscriptions: []Subscription{sub}, Journal: g, Instance: "a", PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond})
	testutil.Eventually(t, 10*time.Second, "the journal's state loaded", d.loaded.Load)
	done := make(chan error, 1)
	go func() { done <- d.Pause(ctx, "crm") }()
	<-g.arrived
	edited := sub
	edited.Description = "edited by another operator"
	if err := d.Reload(ctx, []Subscription{edited}); err != nil {
		t.Fatal(err)
	}
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !memPaused(d, "crm") {
		t.Fatalf("paused in the journal (%v), not in memory", journalPaused(t, store, "crm"))
	}
	dispatchWhilePaused(t, d, store, rc, orderEvents([]string{"k"})[0], 1)
}

// TestPauseDuringResume: a pause asked for while a resume is between its
// journal write and its memory's. Interleaved, the resume's memory write
// came last: the journal paused, this process sending. One waits for the
// other; whichever order they take, the journal and memory agree.
func TestPauseDuringResume(t *testing.T) {
	store := newJournal(t)
	g := newGatedPause(store, false)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	d := start(t, store, Config{Subscriptions: []Subscription{flagsSub(rc.URL)}, Journal: g, Instance: "a", PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond})
	testutil.Eventually(t, 10*time.Second, "the journal's state loaded", d.loaded.Load)
	if err := d.Pause(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	resumed := make(chan error, 1)
	go func() { _, err := d.Resume(ctx, "crm"); resumed <- err }()
	<-g.arrived
	// The second operator's pause, given a second: interleaved, it is
	// done in milliseconds; waiting for the resume, it gives up.
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	paused := d.Pause(pctx, "crm")
	cancel()
	close(g.release)
	if err := <-resumed; err != nil {
		t.Fatal(err)
	}
	if j, m := journalPaused(t, store, "crm"), memPaused(d, "crm"); j != m {
		t.Fatalf("the journal says paused %v, memory %v (the second pause: %v)", j, m, paused)
	}
	if paused == nil {
		t.Fatal("the pause did not wait for the resume in progress")
	}
}

// cutResume ends the resume's context right after its journal write, as
// an operator's request that goes away does.
type cutResume struct {
	*journal.Store
	mu     sync.Mutex
	cancel context.CancelFunc
}

func (c *cutResume) SetPaused(ctx context.Context, id string, paused bool) error {
	err := c.Store.SetPaused(ctx, id, paused)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !paused && c.cancel != nil {
		c.cancel()
	}
	return err
}

// TestResumeCutShortReleasesHeld: a resume whose caller goes away after
// its journal write has resumed the subscription everywhere; its held
// deliveries go out all the same (they stayed held until a restart, and
// an operator who found it resumed had no reason to resume it again).
func TestResumeCutShortReleasesHeld(t *testing.T) {
	store := newJournal(t)
	c := &cutResume{Store: store}
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	d := start(t, store, Config{Subscriptions: []Subscription{flagsSub(rc.URL)}, Journal: c, Instance: "a", PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond})
	testutil.Eventually(t, 10*time.Second, "the journal's state loaded", d.loaded.Load)
	if err := d.Pause(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	dispatchWhilePaused(t, d, store, rc, orderEvents([]string{"k"})[0], 1)
	rctx, cancel := context.WithCancel(ctx)
	c.mu.Lock()
	c.cancel = cancel
	c.mu.Unlock()
	if _, err := d.Resume(rctx, "crm"); err == nil {
		t.Fatal("the resume cut short reported no error")
	}
	testutil.Eventually(t, 15*time.Second, "the held delivery sent", func() bool { return len(rc.Requests()) == 1 })
	if n := heldCount(t, store); n != 0 {
		t.Errorf("%d deliveries still held", n)
	}
}

// statesFailOnce fails the first SubscriptionStates once armed.
type statesFailOnce struct {
	*journal.Store
	mu  sync.Mutex
	arm bool
}

func (s *statesFailOnce) SubscriptionStates(ctx context.Context) ([]journal.SubscriptionRow, error) {
	s.mu.Lock()
	fail := s.arm
	s.arm = false
	s.mu.Unlock()
	if fail {
		return nil, context.DeadlineExceeded
	}
	return s.Store.SubscriptionStates(ctx)
}

// TestReaddedSubscriptionTakesItsPauseLater: a reload that cannot read
// the journal's pause and state adds the subscription all the same; the
// next heartbeat reads them, in a process alone on its journal too.
func TestReaddedSubscriptionTakesItsPauseLater(t *testing.T) {
	store := newJournal(t)
	f := &statesFailOnce{Store: store}
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	sub := flagsSub(rc.URL)
	d := start(t, store, Config{Subscriptions: []Subscription{sub}, Journal: f, Instance: "a", PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond})
	testutil.Eventually(t, 10*time.Second, "the journal's state loaded", d.loaded.Load)
	if err := d.Pause(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(ctx, nil); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.arm = true
	f.mu.Unlock()
	if err := d.Reload(ctx, []Subscription{sub}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the subscription added back paused", func() bool { return memPaused(d, "crm") })
	dispatchWhilePaused(t, d, store, rc, orderEvents([]string{"k"})[0], 1)
}

// registerFails fails the first n Registers, as a journal that blinks at
// the start does.
type registerFails struct {
	*journal.Store
	mu sync.Mutex
	n  int
}

func (r *registerFails) Register(ctx context.Context, instance string) error {
	r.mu.Lock()
	fail := r.n > 0
	r.n--
	r.mu.Unlock()
	if fail {
		return context.DeadlineExceeded
	}
	return r.Store.Register(ctx, instance)
}

// TestStartWaitsForTheJournal: a journal that does not answer when Run
// registers the instance is waited for: Run ended with an error (the
// process exited), after the start had already looked ready.
func TestStartWaitsForTheJournal(t *testing.T) {
	store := newJournal(t)
	r := &registerFails{Store: store, n: 2}
	rc := testutil.NewReceiver(t)
	d := start(t, store, Config{Subscriptions: []Subscription{flagsSub(rc.URL)}, Journal: r, Instance: "a", PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond})
	testutil.Eventually(t, 10*time.Second, "the dispatcher started", d.Started)
	if err := d.Dispatch(context.Background(), orderEvents([]string{"k"})[0]); err != nil {
		t.Fatal(err)
	}
	rc.Wait(t, 1, 10*time.Second)
}

// beatsCounted is statesFailOnce counting the heartbeats.
type beatsCounted struct {
	*statesFailOnce
	beats atomic.Int64
}

func (b *beatsCounted) Heartbeat(ctx context.Context, instance string, within time.Duration) (int, time.Time, error) {
	defer b.beats.Add(1)
	return b.statesFailOnce.Heartbeat(ctx, instance, within)
}

// TestReloadAsksForTheStateAfterItsSwap: the heartbeat's read asked for
// by a Reload that could not read the journal comes after the swap:
// asked before it, a heartbeat in between read the old set, without the
// added subscription, and took the ask; the subscription ran unpaused
// while the journal said paused, until a restart.
func TestReloadAsksForTheStateAfterItsSwap(t *testing.T) {
	store := newJournal(t)
	b := &beatsCounted{statesFailOnce: &statesFailOnce{Store: store}}
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	sub := flagsSub(rc.URL)
	d := start(t, store, Config{Subscriptions: []Subscription{sub}, Journal: b, Instance: "a", PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond})
	testutil.Eventually(t, 10*time.Second, "the journal's state loaded", d.loaded.Load)
	if err := d.Pause(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(ctx, nil); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.arm = true
	b.mu.Unlock()
	d.reloadMu.Lock() // the swap waits
	done := make(chan error, 1)
	go func() { done <- d.Reload(ctx, []Subscription{sub}) }()
	testutil.Eventually(t, 10*time.Second, "the reload's read failed", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return !b.arm
	})
	beats := b.beats.Load()
	testutil.Eventually(t, 10*time.Second, "two heartbeats before the swap", func() bool { return b.beats.Load() >= beats+2 })
	d.reloadMu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the subscription added back paused", func() bool { return memPaused(d, "crm") })
	dispatchWhilePaused(t, d, store, rc, orderEvents([]string{"k"})[0], 1)
}
