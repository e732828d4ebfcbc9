package e2e

import (
	"context"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestOrderedKill9 kills the dzhook binary with SIGKILL twice during a
// load of 40 requests updated 25 times each, and once more after it while
// deliveries wait for their retries, restarting it each time. The
// receiver fails the first attempt of about one event in seven.
//
// What "in order" means across a crash: delivery is at least once, so an
// event delivered before a kill may be delivered again after it (the
// stream sends again what the journal had not acknowledged, or a
// delivery's outcome was lost with the process). That repeat is allowed.
// What must never happen is a later event of a key delivered before an
// earlier one of the same key was delivered for the first time. So the
// test dedupes by event id, keeps each event's first successful delivery,
// and asserts that per key those come in commit order (event ids sort as
// the stream does), and that every event was delivered.
func TestOrderedKill9(t *testing.T) {
	const keys, rounds = 40, 25
	db := newDB(t)
	rc := testutil.NewOrderReceiver(t, func(a testutil.Attempt) bool {
		h := fnv.New32a()
		h.Write([]byte(a.EventID))
		return a.N == 1 && h.Sum32()%7 == 0
	})
	cfg := writeConfigWith(t, db, rc.URL, "  retry_schedule: [0s, 300ms, 1s, 1s, 1s, 1s, 1s, 1s]", "    events: [request.*]\n    ordering: entity\n")
	setup(t, cfg)
	p := startDzhook(t, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	loaded := make(chan error, 1)
	go func() {
		err := db.Cluster.Exec(ctx, db.Name, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) SELECT g, 'v0', 1 FROM generate_series(1, %d) g`, keys))
		for r := 1; r <= rounds && err == nil; r++ {
			err = db.Cluster.Exec(ctx, db.Name, fmt.Sprintf(`UPDATE requests SET title = 'v%d' WHERE id <= %d`, r, keys))
			time.Sleep(100 * time.Millisecond) // pacing: the load spans the kills
		}
		loaded <- err
	}()
	for range 2 {
		time.Sleep(time.Duration(400+rand.IntN(600)) * time.Millisecond) // a random moment of the load
		p.kill()
		p = startDzhook(t, cfg)
	}
	if err := <-loaded; err != nil {
		t.Fatal(err)
	}
	// Once more while deliveries wait in the journal for their retries.
	waitOrDiagnose(t, db, 10*time.Second, "a delivery waiting for its retry", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'pending' AND attempts > 0`) > 0
	})
	p.kill()
	p = startDzhook(t, cfg)

	events := keys * (1 + rounds)
	waitOrDiagnose(t, db, 30*time.Second, fmt.Sprintf("all %d events delivered", events), func() bool {
		return len(rc.Delivered()) >= events
	})
	perKey := rc.CheckOrder(t, func(k string) string { return k }, false)
	for k := 1; k <= keys; k++ {
		// What arrived, in the order it first arrived: v0 (created), then
		// every update's title in commit order; a lost event beside a
		// repeated one kept the count.
		var titles []string
		for _, a := range perKey[fmt.Sprintf("req_%d", k)] {
			titles = append(titles, a.Title)
		}
		var want []string
		for r := 0; r <= rounds; r++ {
			want = append(want, fmt.Sprintf("v%d", r))
		}
		if !slices.Equal(titles, want) {
			t.Errorf("req_%d: titles first delivered %v, want %v", k, titles, want)
		}
	}
	attempts := rc.Attempts()
	failed := 0
	for _, a := range attempts {
		if a.Status/100 != 2 {
			failed++
		}
	}
	if err := p.stop(t); err != nil {
		t.Errorf("dzhook exited with %v after SIGTERM, want 0", err)
	}
	t.Logf("%d events, 3 kills: %d attempts, %d answered 500, %d repeats of delivered events (at-least-once)",
		events, len(attempts), failed, len(attempts)-failed-events)
}
