package engine

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

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

// TestOrderedEntityEndToEnd: under ordering: entity, the first attempt of
// X's request.created fails and is retried 4 s later; X's 50 updates wait
// behind it and arrive after it, in commit order, each attempted only
// after the previous one of X was answered 2xx. The 1,000 other requests
// (and their updates) do not wait for X: every one of them is delivered
// before X's head is retried.
func TestOrderedEntityEndToEnd(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewOrderReceiver(t, failXCreatedOnce)
	start(t, testConfig(t, db, "  retry_schedule: [0s, 4s, 2s]", sub("crm", rc.URL, "request.*", "ordering: entity")))
	began := time.Now()
	w := runOrderWorkload(t, db, 1000)
	rc.WaitDelivered(t, w.events, 40*time.Second)
	t.Logf("%d events delivered in %v", w.events, time.Since(began).Round(time.Millisecond))

	perKey := rc.CheckOrder(t, func(k string) string { return k }, true)
	if got, want := len(perKey[keyX]), 1+50+5; got != want {
		t.Errorf("X: %d events delivered, want %d (created, 50 updated, 5 status_changed)", got, want)
	}
	retry := headRetry(t, rc)
	late := 0
	var lat []time.Duration
	for k, as := range perKey {
		if k == keyX {
			continue
		}
		for _, a := range as {
			if a.End > retry.Start {
				if late++; late <= 5 {
					t.Errorf("%s of %s was delivered after X's head was retried: it waited behind another key", a.Type, k)
				}
			}
			if a.Type == "request.created" {
				lat = append(lat, a.At.Sub(w.committed[k]))
			}
		}
	}
	logLatency(t, "other requests beside the blocked key", lat)
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
	w := runOrderWorkload(t, db, 200)
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
