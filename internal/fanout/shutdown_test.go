package fanout

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

type downStore struct{}

func (downStore) Write(ctx context.Context, b *journal.Batch) error {
	return errors.New("journal unreachable")
}

// TestShutdownWithJournalUnreachable: with the journal unreachable and
// the writer's queue full, workers block putting their outcomes. The
// shutdown stops them after the delivery timeout (and gives up on the
// journal after the drain timeout) instead of waiting for ever: the
// engine stops the writer only after the dispatcher has returned.
func TestShutdownWithJournalUnreachable(t *testing.T) {
	t.Parallel()
	store := newJournal(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { time.Sleep(300 * time.Millisecond) }))
	defer srv.Close()
	w, err := journal.NewWriter(journal.WriterConfig{Store: downStore{}, Owner: "i1", QueueSize: 2, DrainTimeout: 500 * time.Millisecond, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{
		Subscriptions: []Subscription{{ID: "crm", URL: srv.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		Journal:       store, Records: w, Instance: "i1", Timeout: time.Second, Logger: testutil.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopWriter := context.WithCancel(context.Background())
	writerDone := make(chan error, 1)
	go func() { writerDone <- w.Run(wctx) }()
	// As the engine does: the writer stops after the dispatcher, and the
	// test waits for it (it logs until it returns).
	defer func() {
		stopWriter()
		<-writerDone
	}()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	sctx, stopStream := context.WithCancel(context.Background())
	go func() {
		for _, ev := range orderEvents([]string{"a", "b", "c", "d", "e", "f", "g", "h"}) {
			if err := d.Dispatch(sctx, ev); err != nil {
				return
			}
		}
	}()
	time.Sleep(time.Second) // fault injection: let the outcomes fill the writer's queue
	stopStream()            // the stream stops first (same errgroup context in the engine)
	stop()
	select {
	case <-done:
		t.Log("Dispatcher.Run returned")
	case <-time.After(60 * time.Second):
		t.Error("Dispatcher.Run did not return 60 s after cancellation: the engine would never stop the writer")
	}
}

// hungReceiver accepts requests and never answers them while the test
// runs; it counts the requests it got.
type hungReceiver struct {
	*httptest.Server
	got atomic.Int64
}

func newHungReceiver(t *testing.T) *hungReceiver {
	rc := &hungReceiver{}
	release := make(chan struct{})
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc.got.Add(1)
		select {
		case <-release:
		case <-r.Context().Done(): // the attempt timed out
		}
	}))
	t.Cleanup(rc.Close)
	t.Cleanup(func() { close(release) }) // runs first: Close waits for the handlers
	return rc
}

// deliveryRow is a delivery as the journal holds it, with its attempt rows.
type deliveryRow struct {
	id, state   string
	attempts    int
	owner       *string
	attemptRows int
}

func journaled(t *testing.T, store *journal.Store, subscription string) []deliveryRow {
	t.Helper()
	rows, err := store.Pool().Query(context.Background(), `
		SELECT d.id, d.state, d.attempts, d.owner, (SELECT count(*) FROM dzhook.attempts a WHERE a.delivery_id = d.id)
		FROM dzhook.deliveries d WHERE d.subscription_id = $1 ORDER BY d.id`, subscription)
	if err != nil {
		t.Fatal(err)
	}
	var out []deliveryRow
	for rows.Next() {
		var r deliveryRow
		if err := rows.Scan(&r.id, &r.state, &r.attempts, &r.owner, &r.attemptRows); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// unanswered lists what is wrong with n deliveries that must each be in
// the journal, pending, owned by nobody, attempted at most once, attempted
// of them in all (those in flight when the subscription stopped).
func unanswered(rows []deliveryRow, n, attempted int) []string {
	if len(rows) != n {
		return []string{fmt.Sprintf("journal holds %d deliveries, want %d", len(rows), n)}
	}
	var bad []string
	tried := 0
	for _, r := range rows {
		if r.state != string(journal.Pending) || r.owner != nil || r.attempts > 1 || r.attemptRows != r.attempts {
			owner := "<nil>"
			if r.owner != nil {
				owner = *r.owner
			}
			bad = append(bad, fmt.Sprintf("%s: state %s, owner %s, attempts %d, attempt rows %d; want pending, no owner, at most 1 attempt",
				r.id, r.state, owner, r.attempts, r.attemptRows))
		}
		tried += r.attempts
	}
	if tried != attempted {
		bad = append(bad, fmt.Sprintf("%d attempts journaled, want %d (those in flight at the stop)", tried, attempted))
	}
	return bad
}

// TestStopStartsNoNewAttempt: with a receiver that hangs and many
// deliveries queued, a stopping dispatcher (shutdown, or a reload that
// removes the subscription) starts no attempt after the stop: the
// receiver gets only the requests that were in flight, the stop takes
// the delivery timeout and a little more, and every delivery is left
// pending in the journal, released, attempted at most once. A worker's
// select between its stop and its queue used to pick at random, and kept
// starting attempts, each as long as the delivery timeout.
func TestStopStartsNoNewAttempt(t *testing.T) {
	t.Parallel()
	const (
		workers    = 8 // a worker chose its stop first with probability 1/2
		deliveries = 40
		timeout    = 2 * time.Second
		slack      = 3 * time.Second
	)
	for _, tc := range []struct {
		name     string
		ordering Ordering
		reload   bool
	}{
		{"shutdown", "", false},
		{"shutdown/ordered", OrderEntity, false},
		{"reload", "", true},
		{"reload/ordered", OrderEntity, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newJournal(t)
			rc := newHungReceiver(t)
			logger := testutil.Logger(t)
			w, err := journal.NewWriter(journal.WriterConfig{Store: store, Owner: "i1", Logger: logger})
			if err != nil {
				t.Fatal(err)
			}
			sub := Subscription{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, Ordering: tc.ordering}
			d, err := New(Config{
				Subscriptions: []Subscription{sub}, Journal: store, Records: w, Instance: "i1",
				Timeout: timeout, Concurrency: workers, PollInterval: 50 * time.Millisecond, Heartbeat: time.Second, Logger: logger,
			})
			if err != nil {
				t.Fatal(err)
			}
			wctx, stopWriter := context.WithCancel(context.Background())
			wdone := make(chan error, 1)
			go func() { wdone <- w.Run(wctx) }()
			ctx, stop := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx) }()
			stopped := false
			var runReturned time.Time
			stopAll := func() {
				if stopped {
					return
				}
				stopped = true
				stop()
				select {
				case err := <-done:
					runReturned = time.Now()
					if err != nil {
						t.Errorf("Dispatcher.Run: %v", err)
					}
				case <-time.After(timeout + 30*time.Second):
					t.Error("Dispatcher.Run did not return")
				}
				stopWriter()
				if err := <-wdone; err != nil {
					t.Errorf("Writer.Run: %v", err)
				}
			}
			t.Cleanup(stopAll)

			if err := d.SyncOrder(context.Background()); err != nil {
				t.Fatal(err)
			}
			var keys []string
			for i := range deliveries {
				keys = append(keys, fmt.Sprintf("req_%d", i%(deliveries/2))) // ordered: half wait behind their key
			}
			for _, ev := range orderEvents(keys) {
				if err := d.Dispatch(context.Background(), ev); err != nil {
					t.Fatal(err)
				}
			}
			testutil.Eventually(t, 10*time.Second, "every worker's attempt in flight", func() bool { return rc.got.Load() == workers })
			inFlight := int(rc.got.Load())

			checkTook := func(took time.Duration) {
				if took > timeout+slack {
					t.Errorf("stopping took %s, want at most the delivery timeout %s + %s", took.Round(time.Millisecond), timeout, slack)
				}
			}
			began := time.Now()
			if tc.reload {
				if err := d.Reload(context.Background(), nil); err != nil {
					t.Fatalf("Reload: %v", err)
				}
				checkTook(time.Since(began))
			} else {
				// The dispatcher's stop, not the journal writer's drain
				// after it (slow on a loaded host, and not what is tested).
				stopAll()
				checkTook(runReturned.Sub(began))
			}
			// The workers have ended: no request can start after this.
			if got := int(rc.got.Load()); got != inFlight {
				t.Errorf("receiver got %d requests, want %d: %d attempts started after the stop", got, inFlight, got-inFlight)
			}
			if tc.reload {
				// What the removed subscription's queue held goes back to
				// the journal at once; the deliveries held by the writer
				// (first attempts, written with their outcome) within a
				// second.
				var rows []deliveryRow
				deadline := time.Now().Add(10 * time.Second)
				for {
					rows = journaled(t, store, "crm")
					if len(unanswered(rows, deliveries, inFlight)) == 0 || time.Now().After(deadline) {
						break
					}
					select {
					case <-time.After(50 * time.Millisecond):
					case <-done:
						t.Fatal("Dispatcher.Run returned")
					}
				}
				for _, p := range unanswered(rows, deliveries, inFlight) {
					t.Error("after the reload: " + p)
				}
				stopAll()
				if got := int(rc.got.Load()); got != inFlight {
					t.Errorf("after the shutdown, receiver got %d requests, want %d", got, inFlight)
				}
				return
			}
			for _, p := range unanswered(journaled(t, store, "crm"), deliveries, inFlight) {
				t.Error("after the shutdown: " + p)
			}
		})
	}
}
