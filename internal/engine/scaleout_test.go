package engine

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// firstAttemptsBy counts, per instance (User-Agent), the first attempts
// of the receiver's events.
func firstAttemptsBy(rc *testutil.OrderReceiver) map[string]int {
	by := map[string]int{}
	for _, a := range rc.Attempts() {
		if a.N == 1 {
			by[a.Agent]++
		}
	}
	return by
}

// TestFullQueueSharedWithPeers: the streaming instance A cannot start a
// delivery soon (its subscription's queue of 8 is full, the receiver
// takes 20 ms and one attempt runs at a time), and another instance B is
// alive on the journal: the delivery is journaled unowned and due, and B
// makes first attempts too. Alone, A would wait for room (the receiver
// keeps up) and make every attempt itself.
func TestFullQueueSharedWithPeers(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewOrderReceiver(t, nil)
	rc.SetDelay(20 * time.Millisecond)
	cfg := testConfig(t, db, "  concurrency: 1\n  queue_size: 8", sub("crm", rc.URL, "request.created"))
	a := startAs(t, cfg, "A", 50*time.Millisecond)
	testutil.Eventually(t, 20*time.Second, "A streaming", func() bool { st := a.Stream().Stats(); return st.Connected && !st.Standby })
	b := startAs(t, cfg, "B", 50*time.Millisecond)
	testutil.Eventually(t, 20*time.Second, "B standing by", func() bool { return b.Stream().Stats().Standby })
	testutil.Eventually(t, 10*time.Second, "A seeing B alive", func() bool { return a.dispatcher.Peers() == 1 })

	const n = 200
	db.Exec(t, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) SELECT g, 'r', 1 FROM generate_series(1, %d) g`, n))
	rc.WaitDelivered(t, n, 60*time.Second)
	by := firstAttemptsBy(rc)
	t.Logf("first attempts by instance: %v", by)
	if by["dzhook/B"] == 0 {
		t.Fatalf("B made no first attempt (%v): a full queue was not shared with the live peer", by)
	}
	if by["dzhook/A"] == 0 {
		t.Errorf("A made no first attempt (%v)", by)
	}
	if got := by["dzhook/A"] + by["dzhook/B"]; got != n {
		t.Errorf("%d first attempts for %d events: some event was attempted first twice", got, n)
	}
}

// TestShareFirstAttemptsOrdered: with delivery.share_first_attempts every
// new delivery is journaled unowned and due; both instances claim first
// attempts, and ordering: entity holds across them: per request, events
// arrive in commit order, never two of a request at once.
func TestShareFirstAttemptsOrdered(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewOrderReceiver(t, nil)
	rc.SetDelay(10 * time.Millisecond)
	cfg := testConfig(t, db, "  share_first_attempts: true\n  concurrency: 2", sub("crm", rc.URL, "request.*", "ordering: entity"))
	a := startAs(t, cfg, "A", 50*time.Millisecond)
	testutil.Eventually(t, 20*time.Second, "A streaming", func() bool { st := a.Stream().Stats(); return st.Connected && !st.Standby })
	b := startAs(t, cfg, "B", 50*time.Millisecond)
	testutil.Eventually(t, 20*time.Second, "B standing by", func() bool { return b.Stream().Stats().Standby })
	testutil.Eventually(t, 10*time.Second, "A seeing B alive", func() bool { return a.dispatcher.Peers() == 1 })

	const keys, updates = 20, 10
	db.Exec(t, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) SELECT g, 'v0', 1 FROM generate_series(1, %d) g`, keys))
	for i := 1; i <= updates; i++ {
		db.Exec(t, fmt.Sprintf(`UPDATE requests SET title = 'v%d' WHERE id <= %d`, i, keys))
		// Pacing, not waiting for a result: updates keep coming while
		// both instances claim.
		time.Sleep(50 * time.Millisecond)
	}
	total := keys * (1 + updates)
	rc.WaitDelivered(t, total, 60*time.Second)
	perKey := rc.CheckOrder(t, func(k string) string { return k }, true)
	for k := 1; k <= keys; k++ {
		if got := len(perKey[fmt.Sprintf("req_%d", k)]); got != 1+updates {
			t.Errorf("req_%d: %d events delivered, want %d", k, got, 1+updates)
		}
	}
	by := firstAttemptsBy(rc)
	t.Logf("first attempts by instance: %v", by)
	if by["dzhook/A"] == 0 || by["dzhook/B"] == 0 {
		t.Errorf("first attempts by instance %v: both should take part", by)
	}
	if got := by["dzhook/A"] + by["dzhook/B"]; got != total {
		t.Errorf("%d first attempts for %d events", got, total)
	}
}

// TestJoiningPeerGetsAShareOfTheQueue: A streams alone and queues a
// backlog (its receiver keeps up, so it waits for room rather than
// journaling); when B appears, A gives back part of its queue for B to
// claim and keeps its own share (half, with two processes). Giving back
// all of it made both wait for the journal to write it (make bench
// SCENARIO=scaleout: a second with no attempts at all).
func TestJoiningPeerGetsAShareOfTheQueue(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewOrderReceiver(t, nil)
	rc.SetDelay(20 * time.Millisecond)
	cfg := testConfig(t, db, "  concurrency: 1\n  queue_size: 1000", sub("crm", rc.URL, "request.created"))
	a := startAs(t, cfg, "A", 50*time.Millisecond)
	testutil.Eventually(t, 20*time.Second, "A streaming", func() bool { st := a.Stream().Stats(); return st.Connected && !st.Standby })

	const n = 400
	db.Exec(t, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) SELECT g, 'r', 1 FROM generate_series(1, %d) g`, n))
	testutil.Eventually(t, 20*time.Second, "A delivering", func() bool { return len(rc.Delivered()) >= 5 })
	// Slower answers while B starts and A learns of it (a start and a
	// heartbeat, seconds on a loaded machine): at 20 ms A alone drains
	// its 400 in 8 s, and a slow start found nothing left to share.
	rc.SetDelay(200 * time.Millisecond)
	b := startAs(t, cfg, "B", 50*time.Millisecond)
	var before int // delivered when A learned of B: the rest was queued
	testutil.Eventually(t, 10*time.Second, "A seeing B alive", func() bool {
		before = len(rc.Delivered())
		return a.dispatcher.Peers() == 1
	})
	rc.SetDelay(20 * time.Millisecond)
	if b.Stream().Stats().Connected && !b.Stream().Stats().Standby {
		t.Fatal("B streams: A should hold the slot")
	}
	rc.WaitDelivered(t, n, 60*time.Second)

	by := firstAttemptsBy(rc)
	t.Logf("first attempts by instance: %v; %d delivered before A learned of B", by, before)
	if by["dzhook/B"] == 0 {
		// Seen twice in CI (2026-12-06): A's claim sized before it saw
		// B ran after the share and took it all back (fixed: the share
		// runs between two claims, on the scheduler's goroutine; fanout's
		// TestClaimSizedAloneTakesBackNothingShared). If it comes again,
		// say what the journal saw.
		var claimed, claimedLate, attemptsA, attemptsB int
		if err := db.Connect(t).QueryRow(context.Background(), `SELECT
				count(*) FILTER (WHERE d.claim IS NOT NULL),
				count(*) FILTER (WHERE d.claim IS NOT NULL AND d.next_attempt_at > d.created_at + interval '1 second'),
				(SELECT count(*) FROM dzhook.attempts WHERE instance = $1),
				(SELECT count(*) FROM dzhook.attempts WHERE instance = $2)
			FROM dzhook.deliveries d`, a.instance, b.instance).Scan(&claimed, &claimedLate, &attemptsA, &attemptsB); err != nil {
			t.Logf("journal not read: %v", err)
		}
		t.Fatalf("B made no first attempt (%v): A's queue was not shared; journal: %d deliveries claimed from it (%d due over a second after they were made), attempts by A %d, by B %d; A's peers %d, B's %d",
			by, claimed, claimedLate, attemptsA, attemptsB, a.dispatcher.Peers(), b.dispatcher.Peers())
	}
	if got := by["dzhook/A"] + by["dzhook/B"]; got != n {
		t.Errorf("%d first attempts for %d events: some event was attempted first twice", got, n)
	}
	// What A gave back was claimed from the journal (claim set), by
	// either instance; what it kept went from memory.
	var given int
	if err := db.Connect(t).QueryRow(context.Background(), `SELECT count(claim) FROM dzhook.deliveries`).Scan(&given); err != nil {
		t.Fatal(err)
	}
	queued := n - before
	t.Logf("%d of the %d queued when B appeared were given back to the journal", given, queued)
	if given == 0 || given > queued*3/4 {
		t.Errorf("A gave back %d of %d queued deliveries, want about half (its share kept)", given, queued)
	}
}
