package fanout

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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

func TestParseRate(t *testing.T) {
	for in, want := range map[string]Rate{"50/s": {50, time.Second}, "600/m": {600, time.Minute}, " 1 / s ": {1, time.Second}} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "50", "50/h", "0/s", "-1/s", "x/s", "50/", "/s", "1000000/s"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) accepted", in)
		}
	}
}

// TestPacer: starts are spaced evenly; a 429 halves the pace and holds
// starts until its Retry-After; the pace comes back, doubling every
// recoverEvery without another 429; other processes alive share it.
func TestPacer(t *testing.T) {
	peers := int64(0)
	p := newPacer(Rate{Count: 100, Per: time.Second}, func() int64 { return 1 + peers })
	t0 := time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)
	for i := range 5 {
		if at := p.take(t0); !at.Equal(t0.Add(time.Duration(i) * 10 * time.Millisecond)) {
			t.Fatalf("start %d at %s, want every 10ms", i, at.Sub(t0))
		}
	}
	now := t0.Add(time.Second)
	began := now.Add(-50 * time.Millisecond) // the 429's attempt started before it came
	p.throttled(now, began, 2*time.Second)
	if pace, until := p.pace(now); pace != 50 || !until.Equal(now.Add(2*time.Second)) {
		t.Fatalf("after a 429: %v/s paused until %s, want 50/s until +2s", pace, until.Sub(now))
	}
	if at := p.take(now); !at.Equal(now.Add(2 * time.Second)) {
		t.Fatalf("a start during the pause at %s", at.Sub(now))
	}
	// The 429s of the other attempts that were in flight answer the old
	// pace, which the first one corrected: no further halving.
	for range 10 {
		p.throttled(now.Add(time.Millisecond), began.Add(time.Millisecond), 0)
	}
	if pace, _ := p.pace(now); pace != 50 {
		t.Fatalf("a burst of 429s from attempts in flight: %v/s, want 50 (halved once)", pace)
	}
	// A 429 to an attempt started at the slower pace halves it again.
	later := now.Add(3 * time.Second)
	p.throttled(later, later.Add(-10*time.Millisecond), 0)
	if pace, _ := p.pace(later); pace != 25 {
		t.Fatalf("a 429 at the slower pace: %v/s, want 25", pace)
	}
	if pace, _ := p.pace(later.Add(recoverEvery)); pace != 50 {
		t.Fatalf("after %s: %v/s, want 50", recoverEvery, pace)
	}
	if pace, _ := p.pace(later.Add(10 * recoverEvery)); pace != 100 {
		t.Fatalf("long after: %v/s, want the limit, 100", pace)
	}
	at := later.Add(20 * recoverEvery)
	for range 20 {
		at = at.Add(time.Second)
		p.throttled(at, at.Add(-time.Millisecond), 0)
	}
	if pace, _ := p.pace(at); pace != 100.0/maxSlowdown {
		t.Fatalf("429 after 429: %v/s, want the floor %v", pace, 100.0/maxSlowdown)
	}
	// A slowdown re-spaces the starts workers already took: each takes
	// its start again after one new interval.
	q := newPacer(Rate{Count: 100, Per: time.Second}, func() int64 { return 1 })
	for range 3 {
		q.take(t0)
	}
	q.throttled(t0, t0.Add(-time.Millisecond), 0)
	if paused, _ := q.pace(t0); paused != 50 {
		t.Fatalf("pace %v", paused)
	}
	if at := q.take(t0); at.Before(t0.Add(20 * time.Millisecond)) {
		t.Fatalf("the next start after a 429 at +%s, want the new interval (20ms) or later", at.Sub(t0))
	}
	peers = 3
	if pace, _ := p.pace(at.Add(time.Hour)); pace != 25 {
		t.Fatalf("4 processes: %v/s each, want 25", pace)
	}
}

// TestRateLimitPaces: 2,000 events come at 400/s to two subscriptions.
// The one with rate_limit: 100/s receives them at 100/s ± 10%; what
// waits beyond its budget waits in the journal, not in memory (its
// queue never holds more than a second's budget while the journal holds
// most of the backlog); the other subscription gets every event at
// once.
func TestRateLimitPaces(t *testing.T) {
	store := newJournal(t)
	limited, free := testutil.NewReceiver(t), testutil.NewReceiver(t)
	secret := []byte("rate-limit-secret-0123456789")
	d := start(t, store, Config{
		Subscriptions: []Subscription{
			{ID: "limited", URL: limited.URL, Events: []string{"*"}, Secret: secret, Active: true, RateLimit: Rate{Count: 100, Per: time.Second}},
			{ID: "free", URL: free.URL, Events: []string{"*"}, Secret: secret, Active: true},
		},
		Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second, Logger: testutil.Logger(t),
		QueueSize: 1024, Concurrency: 16,
	})
	const n = 2000
	pairs := make([]string, 0, 2*n)
	for i := range n {
		pairs = append(pairs, "request.updated", fmt.Sprintf(`{"id":"req_%d"}`, i))
	}
	evs := envelopes(pairs...)
	var mu sync.Mutex
	sentAt := map[string]time.Time{}
	// Watch the limited subscription's memory and the journal's backlog.
	stopWatch := make(chan struct{})
	var maxQueued, maxPending int
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(50 * time.Millisecond):
			}
			for _, s := range d.Subscriptions() {
				if s.ID == "limited" {
					maxQueued = max(maxQueued, s.QueueDepth)
				}
			}
			if b, err := store.Backlogs(context.Background()); err == nil {
				maxPending = max(maxPending, b["limited"].Pending)
			}
		}
	}()
	began := time.Now()
	for i := 0; i < n; i += 20 {
		for _, ev := range evs[i : i+20] {
			mu.Lock()
			sentAt[ev.ID] = time.Now()
			mu.Unlock()
			if err := d.Dispatch(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(50 * time.Millisecond) // the source's pace: 400 events/s
	}
	// The source's pace is its own: 5 s for 2,000 events. Had the stream
	// waited for room in the limited subscription's queue, it would have
	// gone at that subscription's pace (20 s), and the other one with it.
	// (Waiting would take 19 s: the limited queue holds 100. The bound
	// leaves a loaded host time to spare.)
	dispatched := time.Since(began)
	if dispatched > 15*time.Second {
		t.Errorf("dispatching took %s: the stream waited for the rate-limited subscription", dispatched)
	}
	freeReqs := free.Wait(t, n, 30*time.Second)
	reqs := limited.Wait(t, n, 40*time.Second)
	close(stopWatch)
	<-watched

	// The pace, from the 100th arrival (the start is a burst of none:
	// starts are spaced from the first) to the last.
	span := reqs[n-1].At.Sub(reqs[99].At)
	rate := float64(n-100) / span.Seconds()
	t.Logf("limited: %.1f deliveries/s; at most %d in memory, %d pending in the journal", rate, maxQueued, maxPending)
	// The pacer's promise is the ceiling; the floor only catches a pace
	// gone wrong (a share or slowdown miscounted halves it), since on a
	// loaded host the claims from the journal may lag behind the pace.
	if rate < 75 || rate > 110 {
		t.Errorf("limited subscription received %.1f/s, want at most 100 (+10%% for the arrivals' jitter) and not far below", rate)
	}
	if maxQueued > 100 {
		t.Errorf("up to %d deliveries waited in memory; the budget of a second is 100", maxQueued)
	}
	// The backlog when dispatching ended: what came, less what the pace
	// let through and the queue's budget. At least half of it must have
	// waited in the journal (the watcher samples every 50 ms).
	if backlog := n - int(100*dispatched.Seconds()) - 100; maxPending < backlog/2 {
		t.Errorf("at most %d deliveries waited in the journal; the backlog (about %d) belongs there", maxPending, backlog)
	}
	lat := make([]time.Duration, 0, n)
	for _, r := range freeReqs {
		var env struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(r.Body, &env); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		lat = append(lat, r.At.Sub(sentAt[env.ID]))
		mu.Unlock()
	}
	slices.Sort(lat)
	p99 := lat[len(lat)*99/100]
	t.Logf("free: p50 %s, p99 %s", lat[len(lat)/2], p99)
	// make bench measures isolation's p99 (under 10 ms); here, under the
	// race detector beside other packages' tests, the bound is what a
	// stream held up by the limited subscription would break: waiting
	// for room in its queue would add up to 100 ms per event.
	if p99 > 2*time.Second {
		t.Errorf("the other subscription's p99 is %s: the rate limit held it up", p99)
	}
}

// TestRateLimit429: a 429 with Retry-After from a rate-limited receiver
// holds the subscription's next attempts until then, and halves its pace.
func TestRateLimit429(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	rc.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		if n == 3 {
			return http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}}, "slow down"
		}
		return http.StatusOK, nil, "ok"
	})
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("rate-limit-secret-0123456789"), Active: true,
			RateLimit: Rate{Count: 20, Per: time.Second}}},
		Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second, Logger: testutil.Logger(t),
		// One worker: the next start is taken after the 429 was read. With
		// more, one may start 50 ms after the third, its 429 still on the
		// way: the pacer does not hold what already started.
		Concurrency:   1,
		RetrySchedule: []time.Duration{0, 100 * time.Millisecond, 100 * time.Millisecond},
	})
	pairs := []string{}
	for i := range 6 {
		pairs = append(pairs, "request.updated", fmt.Sprintf(`{"id":"req_%d"}`, i))
	}
	dispatchAll(t, d, envelopes(pairs...))
	rc.Wait(t, 3, 10*time.Second)
	var st SubscriptionStatus
	testutil.Eventually(t, 5*time.Second, "the pace halved", func() bool {
		st = d.Subscriptions()[0]
		return st.Pace == 10
	})
	if st.PausedUntil.IsZero() {
		t.Errorf("no pause after a 429 with Retry-After")
	}
	reqs := rc.Wait(t, 7, 20*time.Second) // six deliveries, one of them twice
	if gap := reqs[3].At.Sub(reqs[2].At); gap < 950*time.Millisecond {
		t.Errorf("the next attempt came %s after the 429's Retry-After: 1", gap)
	}
}

// TestRateLimitOrdered: a rate-limited subscription with ordering:
// entity keeps each key's order while it paces, through the journal
// (most of its deliveries wait there) and a retry.
func TestRateLimitOrdered(t *testing.T) {
	store := newJournal(t)
	var keys []string
	for i := range 300 {
		keys = append(keys, fmt.Sprintf("req_%d", i%5))
	}
	evs := orderEvents(keys)
	rc := testutil.NewOrderReceiver(t, failFirst(1, nthOf(evs, "req_2", 3)))
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("rate-limit-secret-0123456789"), Active: true,
			Ordering: OrderEntity, RateLimit: Rate{Count: 200, Per: time.Second}}},
		Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second, Logger: testutil.Logger(t),
		RetrySchedule: []time.Duration{0, 200 * time.Millisecond, 200 * time.Millisecond},
	})
	start := time.Now()
	dispatchAll(t, d, evs)
	rc.WaitDelivered(t, len(evs), 30*time.Second)
	rc.CheckOrder(t, same, true)
	if took := time.Since(start); took < 1400*time.Millisecond {
		t.Errorf("301 attempts at 200/s took %s", took)
	}
}

// TestRateLimitOneWorker: with one worker and a small limit, the queue
// has one place; the scheduler still claims from the journal: the
// retry of a delivery whose first attempt failed, and what spilled
// while the worker waited its turn.
func TestRateLimitOneWorker(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	rc.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		if n == 1 {
			return http.StatusServiceUnavailable, nil, "down"
		}
		return http.StatusOK, nil, "ok"
	})
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "slack", URL: rc.URL, Events: []string{"*"}, Secret: []byte("rate-limit-secret-0123456789"), Active: true,
			RateLimit: Rate{Count: 1, Per: time.Second}}},
		Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second, Logger: testutil.Logger(t),
		Concurrency: 1, RetrySchedule: []time.Duration{0, 100 * time.Millisecond, 100 * time.Millisecond},
	})
	if got := d.reg.Load().byID["slack"].size; got != 1 {
		t.Fatalf("queue of %d places, want 1 (the test is about a queue of one)", got)
	}
	dispatchAll(t, d, envelopes("request.updated", `{"id":"req_1"}`, "request.updated", `{"id":"req_2"}`, "request.updated", `{"id":"req_3"}`))
	rc.Wait(t, 4, 20*time.Second) // three deliveries, the first twice
	// The pacer spaces the attempts' starts, journaled as attempts.at.
	// Arrival times at the receiver are not what it controls: on a loaded
	// host one request can spend most of a second between its start and
	// the receiver, and arrive just before the next one.
	var starts []time.Time
	testutil.Eventually(t, 10*time.Second, "four attempts journaled", func() bool {
		starts = starts[:0]
		rows, err := store.Pool().Query(context.Background(), `SELECT a.at FROM dzhook.attempts a
			JOIN dzhook.deliveries d ON d.id = a.delivery_id WHERE d.subscription_id = 'slack' ORDER BY a.at`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var at time.Time
			if err := rows.Scan(&at); err != nil {
				t.Fatal(err)
			}
			starts = append(starts, at)
		}
		return len(starts) == 4
	})
	for i := 1; i < len(starts); i++ {
		// The pacer spaces the places it hands out; the journaled start is
		// stamped a moment after the place is reached, later on a loaded
		// host. Halving the interval fails at 500 ms.
		if gap := starts[i].Sub(starts[i-1]); gap < 800*time.Millisecond {
			t.Errorf("attempts %d and %d started %s apart at 1/s", i, i+1, gap)
		}
	}
}

// TestRateLimitPauseSurvivesReload: a change to a subscription that
// leaves its rate limit as it is (here its description, as an edit
// through the API does) keeps the pause a 429's Retry-After asked for.
func TestRateLimitPauseSurvivesReload(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	rc.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		if n == 1 {
			return http.StatusTooManyRequests, http.Header{"Retry-After": {"2"}}, "slow down"
		}
		return http.StatusOK, nil, "ok"
	})
	sub := Subscription{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("rate-limit-secret-0123456789"), Active: true,
		RateLimit: Rate{Count: 10, Per: time.Second}}
	d := start(t, store, Config{
		Subscriptions: []Subscription{sub}, Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second,
		Logger: testutil.Logger(t), RetrySchedule: []time.Duration{0, 100 * time.Millisecond, 100 * time.Millisecond},
	})
	dispatchAll(t, d, envelopes("request.updated", `{"id":"req_1"}`))
	first := rc.Wait(t, 1, 10*time.Second)[0]
	// The reload comes once the 429 was read: it is the pause it set that
	// must survive.
	testutil.Eventually(t, 10*time.Second, "the 429's pause in force", func() bool { return !d.Subscriptions()[0].PausedUntil.IsZero() })
	sub.Description = "edited"
	if err := d.Reload(context.Background(), []Subscription{sub}); err != nil {
		t.Fatal(err)
	}
	dispatchAll(t, d, envelopes("request.updated", `{"id":"req_2"}`))
	reqs := rc.Wait(t, 3, 20*time.Second)
	if gap := reqs[1].At.Sub(first.At); gap < 1900*time.Millisecond {
		t.Errorf("an attempt %s after the 429's Retry-After: 2, across a reload", gap)
	}
}

// TestRateLimitWaitEndsWithTheSubscription: a worker waiting for its
// turn when its subscription is removed gives the delivery back to the
// journal, pending and unowned (another process, or the subscription
// when it comes back, sends it), and the dispatcher stops at once.
func TestRateLimitWaitEndsWithTheSubscription(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	d := startPaced(t, store, rc.URL, Rate{Count: 1, Per: time.Minute}, 2)
	evs := envelopes("request.updated", `{"id":"req_1"}`, "request.updated", `{"id":"req_2"}`, "request.updated", `{"id":"req_3"}`)
	dispatchAll(t, d, evs)
	// The one turn goes to whichever worker takes it first: not
	// necessarily the first event's (the two workers take the first two
	// at once, and on a loaded host either may reach the pacer first).
	sent := rc.Wait(t, 1, 10*time.Second)[0].Body
	if err := d.Reload(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the two deliveries that waited, pending and unowned", func() bool {
		n := 0
		for _, ev := range evs {
			if bytes.Equal(ev.Body, sent) {
				continue
			}
			dl, _, _, err := store.GetDelivery(context.Background(), ids.DeliveryID(ev.ID, "crm"))
			if err == nil && dl.State == journal.Pending && !dl.InFlight {
				n++
			}
		}
		return n == 2
	})
	if n := len(rc.Requests()); n != 1 {
		t.Errorf("%d requests, want 1: the others waited for their turn", n)
	}
}

// TestPacerGivesBackItsPlaces: the starts reserved by workers that gave
// up (a reload retired their subscription and passed its pacer on) are
// given back: each held the pace back an interval, and at 1/m with 16
// workers an edit silenced the subscription for a quarter of an hour.
func TestPacerGivesBackItsPlaces(t *testing.T) {
	p := newPacer(Rate{Count: 1, Per: time.Second}, func() int64 { return 1 })
	t0 := time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)
	var starts []time.Time
	for range 8 {
		starts = append(starts, p.take(t0))
	}
	p.untake(starts[0], true) // the first one started
	p.untake(starts[5], false)
	if at := p.take(t0); !at.Equal(t0.Add(8 * time.Second)) {
		t.Fatalf("with starts reserved up to +7s, one given up in between: next at +%s, want +8s (no burst)", at.Sub(t0))
	}
	p.untake(t0.Add(8*time.Second), false)
	for _, at := range starts[1:] {
		p.untake(at, false)
	}
	if at := p.take(t0.Add(100 * time.Millisecond)); !at.Equal(t0.Add(time.Second)) {
		t.Errorf("every waiting start given up: the next at +%s, want +1s (an interval after the one made)", at.Sub(t0))
	}
}

// TestPauseStopsWhatIsQueued: a paused subscription's deliveries already
// in memory (queued, or waiting for their turn) go back to the journal
// unsent, and out after the resume, each once. They went on being sent:
// at 1/s with four workers, for seconds after the pause; at 1/m, for
// half an hour.
func TestPauseStopsWhatIsQueued(t *testing.T) {
	t.Parallel()
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	d := startPaced(t, store, rc.URL, Rate{Count: 1, Per: time.Second}, 4)
	var pairs []string
	for i := range 7 {
		pairs = append(pairs, "request.updated", fmt.Sprintf(`{"id":"req_%d"}`, i))
	}
	evs := envelopes(pairs...)
	dispatchAll(t, d, evs)
	rc.Wait(t, 1, 10*time.Second)
	if err := d.Pause(context.Background(), "crm"); err != nil {
		t.Fatal(err)
	}
	var sent int
	testutil.Eventually(t, 20*time.Second, "every delivery sent or back in the journal, pending and unowned", func() bool {
		sent = 0
		for _, ev := range evs {
			dl, _, _, err := store.GetDelivery(context.Background(), ids.DeliveryID(ev.ID, "crm"))
			switch {
			case err != nil:
				return false
			case dl.State == journal.Delivered:
				sent++
			case dl.State != journal.Pending || dl.InFlight:
				return false
			}
		}
		return true
	})
	if n := len(rc.Requests()); n != sent || sent > 3 {
		t.Errorf("%d requests, %d delivered after the pause; want the few started before it (at most 3)", n, sent)
	}
	if _, err := d.Resume(context.Background(), "crm"); err != nil {
		t.Fatal(err)
	}
	rc.Wait(t, len(evs), 30*time.Second)
	seen := map[string]int{}
	for _, r := range rc.Requests() {
		seen[r.Header.Get(signer.HeaderDelivery)]++
	}
	if len(seen) != len(evs) || len(rc.Requests()) != len(evs) {
		t.Errorf("%d requests for %d deliveries after the resume, want each of the %d once", len(rc.Requests()), len(seen), len(evs))
	}
}

// startPaced runs a dispatcher with one subscription, crm, to url, paced
// at limit, with concurrency workers.
func startPaced(t *testing.T, store *journal.Store, url string, limit Rate, concurrency int) *Dispatcher {
	t.Helper()
	sub := Subscription{ID: "crm", URL: url, Events: []string{"*"}, Secret: []byte("rate-limit-secret-0123456789"), Active: true, RateLimit: limit}
	return start(t, store, Config{
		Subscriptions: []Subscription{sub}, Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Second,
		Logger: testutil.Logger(t), Concurrency: concurrency,
	})
}
