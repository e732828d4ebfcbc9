package engine

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// The end-to-end tests of ordered delivery (subscriptions[].ordering):
// a real stream from PostgreSQL, real receivers, the engine as `dzhook
// run` assembles it. The receiver (testutil.OrderReceiver) tells the
// order from the event ids, which sort as the stream does; its data.id is
// the request id, the ordering key of every request.* event.

// keyX is the request whose head fails in the tests below.
const keyX = "req_1"

// orderWorkload is what the workload below committed: the number of
// events it fired, and when each other request's INSERT committed.
type orderWorkload struct {
	events    int
	committed map[string]time.Time // request id → its INSERT's commit
}

// runOrderWorkload commits request X (id 1), then 50 updates of X (every
// tenth also changes its status), each in its own transaction, between
// which the other requests (ids from 1000) are inserted, others/50 per
// transaction; every fifth other request is updated once, later.
func runOrderWorkload(t *testing.T, db *pgtest.DB, others int) orderWorkload {
	t.Helper()
	ctx := context.Background()
	conn := db.Connect(t)
	w := orderWorkload{committed: map[string]time.Time{}}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO requests (id, title, requester_id) VALUES (1, 'X v0', 1)`)
	w.events++
	per := max(1, others/50)
	next := 1000
	status := "open"
	for i := 1; i <= 50; i++ {
		if i%10 == 0 {
			status = map[string]string{"open": "in_progress", "in_progress": "open"}[status]
			w.events++ // request.status_changed
		}
		exec(`UPDATE requests SET title = $1, status = $2 WHERE id = 1`, fmt.Sprintf("X v%d", i), status)
		w.events++
		if next < 1000+others {
			last := min(next+per, 1000+others)
			exec(`INSERT INTO requests (id, title, requester_id) SELECT g, 'other ' || g, 1 FROM generate_series($1::int, $2::int - 1) g`, next, last)
			now := time.Now()
			for id := next; id < last; id++ {
				w.committed[fmt.Sprintf("req_%d", id)] = now
			}
			w.events += last - next
			if next >= 1000+5*per { // update earlier ones: their keys get a second event
				exec(`UPDATE requests SET title = title || ' (edited)' WHERE id >= $1 AND id < $2 AND id % 5 = 0`, next-5*per, last-5*per)
				w.events += countMultiples(next-5*per, last-5*per, 5)
			}
			next = last
		}
	}
	return w
}

func countMultiples(from, to, k int) int {
	n := 0
	for i := from; i < to; i++ {
		if i%k == 0 {
			n++
		}
	}
	return n
}

// failXCreatedOnce answers 500 to the first attempt of X's request.created.
func failXCreatedOnce(a testutil.Attempt) bool {
	return a.Key == keyX && a.Type == "request.created" && a.N == 1
}

// headRetry returns X's head's second attempt.
func headRetry(t *testing.T, rc *testutil.OrderReceiver) testutil.Attempt {
	t.Helper()
	for _, a := range rc.Attempts() {
		if a.Key == keyX && a.Type == "request.created" && a.N == 2 {
			return a
		}
	}
	t.Fatal("X's request.created was never attempted a second time")
	return testutil.Attempt{}
}

// TestOrderedEntityEndToEnd: under ordering: entity, X's request.created
// fails until every other event has been delivered, retried every 200 ms
// meanwhile; X's 50 updates wait behind it and arrive after it, in commit
// order, each attempted only after the previous one of X was answered
// 2xx. The 1,000 other requests (and their updates) do not wait for X:
// the receiver lets X's head through only once all of them were
// delivered, so were any of them waiting behind X, neither would ever
// come (X's head exhausts its attempts, and the wait for every event
// fails). No window of time decides it, so a loaded machine cannot
// either.
func TestOrderedEntityEndToEnd(t *testing.T) {
	db := newDB(t)
	// others is the number of events of the other keys, known once the
	// workload committed; until then (0) X's head fails regardless.
	var others atomic.Int64
	var rc *testutil.OrderReceiver
	rc = testutil.NewOrderReceiver(t, func(a testutil.Attempt) bool {
		if a.Key != keyX || a.Type != "request.created" {
			return false
		}
		want := others.Load()
		if want == 0 {
			return true
		}
		n := int64(0)
		for _, d := range rc.Delivered() {
			if d.Key != keyX {
				n++
			}
		}
		return n < want
	})
	// 300 attempts at least 200 ms apart (a minute or more): X's head
	// outlasts the others' delivery however slow the machine; were they
	// waiting for it, the wait below gives up first, after 40 s.
	schedule := "  retry_schedule: [0s" + strings.Repeat(", 200ms", 300) + "]"
	start(t, testConfig(t, db, schedule, sub("crm", rc.URL, "request.*", "ordering: entity")))
	began := time.Now()
	w := runOrderWorkload(t, db, 1000)
	const xEvents = 1 + 50 + 5 // created, 50 updated, 5 status_changed
	others.Store(int64(w.events - xEvents))
	rc.WaitDelivered(t, w.events, 40*time.Second)
	t.Logf("%d events delivered in %v", w.events, time.Since(began).Round(time.Millisecond))

	perKey := rc.CheckOrder(t, func(k string) string { return k }, true)
	if got := len(perKey[keyX]); got != xEvents {
		t.Errorf("X: %d events delivered, want %d (created, 50 updated, 5 status_changed)", got, xEvents)
	}
	// X's head failed at least once, and the others went on meanwhile:
	// delivered after its first failure (all but, at most, some of the
	// first transaction's, racing X's first attempt).
	retry := headRetry(t, rc)
	var firstFail testutil.Attempt
	for _, a := range rc.Attempts() {
		if a.Key == keyX && a.Type == "request.created" && a.N == 1 {
			firstFail = a
		}
	}
	if firstFail.Status/100 == 2 {
		t.Fatalf("X's head was delivered at its first attempt: the test's failure did not happen")
	}
	during := 0
	var lat []time.Duration
	for k, as := range perKey {
		if k == keyX {
			continue
		}
		for _, a := range as {
			if a.Start > firstFail.End && a.End < perKey[keyX][0].Start {
				during++
			}
			if a.Type == "request.created" {
				lat = append(lat, a.At.Sub(w.committed[k]))
			}
		}
	}
	if n := w.events - xEvents; during < n/2 {
		t.Errorf("only %d of the %d other events were delivered while X's head was failing", during, n)
	}
	t.Logf("X's head: first failure at %s, second attempt at %s, %d attempts in all; %d of the others' events delivered meanwhile",
		firstFail.At.Sub(began).Round(time.Millisecond), retry.At.Sub(began).Round(time.Millisecond), headAttempts(rc), during)
	logLatency(t, "other requests beside the blocked key", lat)
}

// headAttempts counts the attempts of X's request.created.
func headAttempts(rc *testutil.OrderReceiver) int {
	n := 0
	for _, a := range rc.Attempts() {
		if a.Key == keyX && a.Type == "request.created" {
			n++
		}
	}
	return n
}

// TestOrderedSubscriptionEndToEnd: under ordering: subscription the whole
// subscription is one FIFO: the receiver gets every event in commit
// order, one attempt at a time, and X's failed head holds back all that
// follows it until its retry succeeds.
func TestOrderedSubscriptionEndToEnd(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewOrderReceiver(t, failXCreatedOnce)
	start(t, testConfig(t, db, "  retry_schedule: [0s, 2s, 2s]\n  concurrency: 8", sub("audit", rc.URL, "request.*", "ordering: subscription")))
	began := time.Now()
	w := runOrderWorkload(t, db, 500)
	rc.WaitDelivered(t, w.events, 40*time.Second)
	t.Logf("%d events delivered in %v", w.events, time.Since(began).Round(time.Millisecond))

	all := rc.CheckOrder(t, func(string) string { return "" }, true)[""]
	if len(all) != w.events {
		t.Errorf("%d events delivered, want %d", len(all), w.events)
	}
	if n := rc.MaxInFlight(); n != 1 {
		t.Errorf("%d attempts were in progress at once, want one at a time (concurrency 8 does not apply)", n)
	}
	// X's request.created is the first event: nothing is delivered
	// before its retry succeeds.
	retry := headRetry(t, rc)
	for _, a := range rc.Attempts() {
		if a.Start < retry.Start && a.Status/100 == 2 {
			t.Errorf("%s of %s was delivered while the head of the subscription waited for its retry", a.Type, a.Key)
			break
		}
	}
}

// logLatency logs the percentiles of lat (attempt start minus commit).
func logLatency(t *testing.T, what string, lat []time.Duration) {
	t.Helper()
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("%s: %d deliveries, latency p50 %v p99 %v max %v", what, len(lat),
		lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)*99/100].Round(time.Millisecond), slices.Max(lat).Round(time.Millisecond))
}

// TestOrderedPauseResume: a paused subscription with queue_while_inactive
// and ordering: entity holds the deliveries of six requests, created and
// then updated in turns; on resume they go out oldest first per key, in
// order, one attempt of a key at a time, and the updates committed right
// after the resume go out after the held ones of their keys. One key's
// request.created fails until every delivery of the other keys has
// arrived: its key waits for the retry, the others do not (were they
// waiting behind it, neither would ever arrive, and the wait for all of
// them fails).
func TestOrderedPauseResume(t *testing.T) {
	db := newDB(t)
	const failKey = "req_3"
	const keys, rounds = 6, 8
	others := (keys - 1) * (2 + rounds) // created, rounds updates, one after the resume
	var rc *testutil.OrderReceiver
	rc = testutil.NewOrderReceiver(t, func(a testutil.Attempt) bool {
		if a.Key != failKey || a.Type != "request.created" {
			return false
		}
		n := 0
		for _, d := range rc.Delivered() {
			if d.Key != failKey {
				n++
			}
		}
		return a.N == 1 || n < others
	})
	// Up to 100 retries 200 ms apart: the failing head outlasts the
	// others' delivery however slow the machine.
	e := start(t, testConfig(t, db, "  retry_schedule: [0s"+strings.Repeat(", 200ms", 100)+"]",
		sub("crm", rc.URL, "request.*", "ordering: entity", "queue_while_inactive: true")))
	ctx := context.Background()
	if err := e.Dispatcher().Pause(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) SELECT g, 'v0', 1 FROM generate_series(1, %d) g`, keys))
	for r := 1; r <= rounds; r++ {
		for k := 1; k <= keys; k++ {
			db.Exec(t, fmt.Sprintf(`UPDATE requests SET title = 'v%d' WHERE id = %d`, r, k))
		}
	}
	held := keys * (1 + rounds)
	testutil.Eventually(t, 20*time.Second, fmt.Sprintf("%d deliveries held", held), func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'held'`) == held
	})
	if n := len(rc.Attempts()); n != 0 {
		t.Fatalf("a paused subscription received %d attempts", n)
	}
	n, err := e.Dispatcher().Resume(ctx, "crm")
	if err != nil || n != held {
		t.Fatalf("resume released %d held deliveries (err %v), want %d", n, err, held)
	}
	// New deliveries of the same keys while the held ones drain.
	for k := 1; k <= keys; k++ {
		db.Exec(t, fmt.Sprintf(`UPDATE requests SET title = 'after resume' WHERE id = %d`, k))
	}
	total := held + keys
	rc.WaitDelivered(t, total, 30*time.Second)

	perKey := rc.CheckOrder(t, func(k string) string { return k }, true)
	for k := 1; k <= keys; k++ {
		key := fmt.Sprintf("req_%d", k)
		if got := len(perKey[key]); got != 2+rounds {
			t.Errorf("%s: %d events delivered, want %d", key, got, 2+rounds)
		}
	}
	// The failing key's head was retried, and its key's later deliveries
	// came after it (CheckOrder); the other keys arrived meanwhile, by
	// the receiver's construction.
	retried := false
	for _, a := range rc.Attempts() {
		retried = retried || a.Key == failKey && a.Type == "request.created" && a.N == 2
	}
	if !retried {
		t.Fatalf("%s's head was never retried", failKey)
	}
}

// startAs runs an engine whose requests say "dzhook/<version>" and whose
// scheduler claims due work every poll (and when nudged).
func startAs(t *testing.T, cfg *config.Config, version string, poll time.Duration) *Engine {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	// A heartbeat of 1 s: an instance's deliveries in flight are taken
	// over once its heartbeat is 3 s old. Shorter (it was 200 ms: 600 ms)
	// a slow journal write on a loaded machine could make a live peer look
	// dead, and its attempts be made twice; none of these tests is about
	// takeover, and a peer is still seen within a second.
	e, err := New(ctx, cfg, Options{Logger: testutil.Logger(t), Version: version, PollInterval: poll, Heartbeat: time.Second, StatusInterval: 200 * time.Millisecond})
	if err != nil {
		cancel()
		t.Fatalf("engine %s: %v", version, err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("engine %s Run: %v", version, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("engine %s did not stop within 30s", version)
		}
	})
	return e
}

// TestOrderedTwoInstances: two engines share the journal; A streams (and
// makes every new delivery), B waits for the slot and claims due retries.
// The request.created of five requests fails twice, and each of them gets
// ten updates, committed over two seconds, that wait behind it. A claims due work every 300 ms, B every
// 50 ms, so both take retries and what follows them, often racing for the
// same key's head; whichever instance makes an attempt, each key's events
// arrive in commit order, never two of a key at once, and the other
// requests flow.
func TestOrderedTwoInstances(t *testing.T) {
	db := newDB(t)
	failing := func(key string) bool { return key >= "req_1" && key <= "req_5" && len(key) == 5 }
	rc := testutil.NewOrderReceiver(t, func(a testutil.Attempt) bool {
		return failing(a.Key) && a.Type == "request.created" && a.N <= 2
	})
	cfg := testConfig(t, db, "  retry_schedule: [0s, 1s, 1s, 1s]", sub("crm", rc.URL, "request.*", "ordering: entity"))
	a := startAs(t, cfg, "A", 300*time.Millisecond)
	testutil.Eventually(t, 20*time.Second, "A streaming", func() bool { st := a.Stream().Stats(); return st.Connected && !st.Standby })
	b := startAs(t, cfg, "B", 50*time.Millisecond)
	testutil.Eventually(t, 20*time.Second, "B standing by", func() bool { return b.Stream().Stats().Standby })

	db.Exec(t, `INSERT INTO requests (id, title, requester_id) SELECT g, 'v0', 1 FROM generate_series(1, 5) g`)
	for i := 1; i <= 10; i++ {
		db.Exec(t, fmt.Sprintf(`UPDATE requests SET title = 'v%d' WHERE id BETWEEN 1 AND 5`, i),
			fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) SELECT g, 'other', 1 FROM generate_series(%d, %d) g`, 1000+10*i, 1009+10*i))
		// Pacing, not waiting for a result: the later updates reach A
		// while B retries and drains their keys.
		time.Sleep(200 * time.Millisecond)
	}
	total := 5*11 + 100
	rc.WaitDelivered(t, total, 30*time.Second)

	perKey := rc.CheckOrder(t, func(k string) string { return k }, true)
	by := map[string]int{}
	for k := 1; k <= 5; k++ {
		key := fmt.Sprintf("req_%d", k)
		if got := len(perKey[key]); got != 11 {
			t.Errorf("%s: %d events delivered, want 11", key, got)
		}
	}
	for _, at := range rc.Attempts() {
		if failing(at.Key) && (at.Type != "request.created" || at.N > 1) {
			by[at.Agent]++ // claimed from the journal, by either instance
		}
	}
	t.Logf("attempts of the failing keys after their first: %v", by)
	if by["dzhook/B"] == 0 {
		t.Errorf("instance B made none of the retries and what waited behind them (%v): they were not shared", by)
	}
}
