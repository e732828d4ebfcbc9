package fanout

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// statusSummary is what a subscription's status says of its past, minus
// what moves with the clock (the per-minute chart's window).
type statusSummary struct {
	State                        string
	LastSuccessAt, LastFailureAt time.Time
	LastStatus                   int
	LastError                    string
	Delivered, Failed, Retried   uint64
	SuccessRate, P50MS, P99MS    float64
	ChartDelivered, ChartFailed  int
}

func summary(t *testing.T, d *Dispatcher, id string) statusSummary {
	t.Helper()
	for _, st := range d.Subscriptions() {
		if st.ID != id {
			continue
		}
		s := statusSummary{State: string(st.State), LastStatus: st.LastStatus, LastError: st.LastError,
			Delivered: st.Stats.Delivered, Failed: st.Stats.Failed, Retried: st.Stats.Retried,
			SuccessRate: st.Stats.SuccessRate, P50MS: st.Stats.P50MS, P99MS: st.Stats.P99MS}
		if st.LastSuccessAt != nil {
			s.LastSuccessAt = *st.LastSuccessAt
		}
		if st.LastFailureAt != nil {
			s.LastFailureAt = *st.LastFailureAt
		}
		for _, m := range st.Stats.PerMinute {
			s.ChartDelivered += m.Delivered
			s.ChartFailed += m.Failed
		}
		return s
	}
	t.Fatalf("no subscription %q in the status", id)
	return statusSummary{}
}

// TestReloadKeepsStatistics: a reload keeps what the status of a
// subscription it keeps shows (counts, response times, chart, last answer,
// last success and failure), whether its configuration is the same or
// changed (a header). A changed subscription used to start with empty
// statistics and no last status or error.
func TestReloadKeepsStatistics(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	rc.SetRespond(func(n int, r *http.Request, body []byte) (int, http.Header, string) {
		if n == 3 {
			return http.StatusServiceUnavailable, nil, "busy"
		}
		return http.StatusOK, nil, "ok"
	})
	sub := Subscription{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}
	d := start(t, store, Config{
		Subscriptions: []Subscription{sub}, Journal: store, Instance: "i1", Concurrency: 1,
		RetrySchedule: []time.Duration{0, time.Hour}, Logger: testutil.Logger(t),
	})
	ctx := context.Background()
	for _, ev := range orderEvents([]string{"a", "b", "c"}) {
		if err := d.Dispatch(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 10*time.Second, "three attempts in the statistics", func() bool {
		s := summary(t, d, "crm")
		return s.Delivered+s.Retried == 3
	})
	before := summary(t, d, "crm")
	if before.Delivered != 2 || before.Retried != 1 || before.LastStatus != http.StatusServiceUnavailable ||
		before.LastSuccessAt.IsZero() || before.LastFailureAt.IsZero() || before.LastError == "" {
		t.Fatalf("before the reload: %+v, want 2 delivered, 1 retried, last status 503, a last success, failure and error", before)
	}

	changed := sub
	changed.Headers = map[string]string{"X-Tenant": "acme"}
	for _, step := range []struct {
		name string
		sub  Subscription
	}{{"same", sub}, {"header changed", changed}, {"back", sub}} {
		if err := d.Reload(ctx, []Subscription{step.sub}); err != nil {
			t.Fatalf("Reload (%s): %v", step.name, err)
		}
		if got := summary(t, d, "crm"); got != before {
			t.Errorf("after the reload (%s): status %+v, want %+v", step.name, got, before)
		}
	}
	// The subscription's next attempts count on top of what was kept.
	if err := d.Dispatch(ctx, orderEvents([]string{"d"})[0]); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the fourth attempt counted with the first three", func() bool {
		s := summary(t, d, "crm")
		return s.Delivered == 3 && s.Retried == 1 && s.LastStatus == http.StatusOK
	})
}

// TestReloadClosesRetiredConnections: a subscription replaced by a reload
// closes its kept-alive connections once its workers are done, instead of
// leaving them open until the idle sweep (minutes).
func TestReloadClosesRetiredConnections(t *testing.T) {
	store := newJournal(t)
	var closed atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateClosed {
			closed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	sub := Subscription{ID: "crm", URL: srv.URL + "/hook", Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}
	d := start(t, store, Config{
		Subscriptions: []Subscription{sub}, Journal: store, Instance: "i1", Concurrency: 1,
		RetrySchedule: []time.Duration{0, time.Hour}, Logger: testutil.Logger(t),
	})
	ctx := context.Background()
	if err := d.Dispatch(ctx, orderEvents([]string{"a"})[0]); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the first delivery", func() bool { return summary(t, d, "crm").Delivered == 1 })
	if n := closed.Load(); n != 0 {
		t.Fatalf("%d connections closed before the reload, want the delivery's kept alive", n)
	}
	changed := sub
	changed.Headers = map[string]string{"X-Tenant": "acme"} // a new subscription value: the old one is retired
	if err := d.Reload(ctx, []Subscription{changed}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the retired subscription's idle connection closed", func() bool { return closed.Load() == 1 })
}

// gatedReleases is a recorder whose releases wait for open (or for their
// context to end, as the writer's Put waits for room in its queue).
type gatedReleases struct {
	Recorder
	open         chan struct{}
	waiting      chan struct{} // closed when a release first waits
	gaveUp       chan struct{} // closed when a release's context ended first
	once, onceUp sync.Once
}

func (g *gatedReleases) Put(ctx context.Context, r journal.Record) error {
	if len(r.Release) > 0 {
		g.once.Do(func() { close(g.waiting) })
		select {
		case <-g.open:
		case <-ctx.Done():
			g.onceUp.Do(func() { close(g.gaveUp) })
			return ctx.Err()
		}
	}
	return g.Recorder.Put(ctx, r)
}

// TestReloadGivesBackPastItsCaller: what a replaced subscription had
// queued goes back to the journal even when the reload's caller stops
// waiting (an API request ended) while the journal's queue has no room,
// and the reload returns when its caller stops waiting. The queue used to
// be drained and then dropped with the caller's context: owned by this
// live instance, which no other process claims, until it stopped; and
// waiting on the workers' context instead, the reload (and the runtime
// subscriptions' lock its callers hold) waited as long as the writer.
func TestReloadGivesBackPastItsCaller(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	hold := make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release) // a test failing before its end must not leave the receiver's Close waiting for ever
	rc.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		if n == 1 {
			<-hold // the first attempt is in flight while the others wait in the queue
		}
		return http.StatusOK, nil, "ok"
	})
	gate := &gatedReleases{open: make(chan struct{}), waiting: make(chan struct{}), gaveUp: make(chan struct{})}
	sub := Subscription{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}
	d, stop := startRecordingThrough(t, store, Config{
		Subscriptions: []Subscription{sub}, Journal: store, Instance: "i1", Concurrency: 1,
		RetrySchedule: []time.Duration{0, time.Hour}, PollInterval: 50 * time.Millisecond, Logger: testutil.Logger(t),
	}, func(w Recorder) Recorder { gate.Recorder = w; return gate })
	t.Cleanup(stop)
	ctx := context.Background()
	for _, ev := range orderEvents([]string{"a", "b", "c"}) {
		if err := d.Dispatch(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	rc.Wait(t, 1, 10*time.Second)
	changed := sub
	changed.Headers = map[string]string{"X-Tenant": "acme"} // the old subscription is retired
	rctx, cancel := context.WithCancel(ctx)
	reloaded := make(chan error, 1)
	old := d.reg.Load().byID["crm"]
	go func() { reloaded <- d.Reload(rctx, []Subscription{changed}) }()
	// Retired before its worker finishes the attempt in flight: else the
	// worker takes the queued deliveries itself, and nothing is drained.
	testutil.Eventually(t, 10*time.Second, "the old subscription retired", old.isRetired)
	release() // the retired worker finishes its attempt and stops
	select {
	case <-gate.waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("the reload did not give back the queued deliveries")
	}
	cancel() // the caller gives up
	select {
	case err := <-reloaded:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reload still waits for the journal's queue 5 s after its caller gave up")
	}
	close(gate.open)
	rc.Wait(t, 3, 15*time.Second)
}

// TestReloadReleaseKeepsKeyOrder: an ordered subscription's queue, given
// back by a reload whose caller gives up while the journal's queue has no
// room, is released before any later delivery of its keys reaches the
// journal: released in the background, a later delivery of the same key
// went out first.
func TestReloadReleaseKeepsKeyOrder(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	hold := make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release) // a test failing before its end must not leave the receiver's Close waiting for ever
	rc.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		if n == 1 {
			<-hold
		}
		return http.StatusOK, nil, "ok"
	})
	gate := &gatedReleases{open: make(chan struct{}), waiting: make(chan struct{}), gaveUp: make(chan struct{})}
	sub := Subscription{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, Ordering: OrderEntity}
	d, stop := startRecordingThrough(t, store, Config{
		Subscriptions: []Subscription{sub}, Journal: store, Instance: "i1", Concurrency: 1, Heartbeat: time.Second,
		RetrySchedule: []time.Duration{0, time.Hour}, PollInterval: 50 * time.Millisecond, Logger: testutil.Logger(t),
	}, func(w Recorder) Recorder { gate.Recorder = w; return gate })
	t.Cleanup(stop)
	ctx := context.Background()
	if err := d.SyncOrder(ctx); err != nil {
		t.Fatal(err)
	}
	evs := orderEvents([]string{"x", "k", "k", "k"})
	for _, ev := range evs[:3] { // x in flight; k, k wait in the queue
		if err := d.Dispatch(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	rc.Wait(t, 1, 10*time.Second)
	changed := sub
	changed.Headers = map[string]string{"X-Tenant": "acme"}
	rctx, cancel := context.WithCancel(ctx)
	reloaded := make(chan error, 1)
	old := d.reg.Load().byID["crm"]
	go func() { reloaded <- d.Reload(rctx, []Subscription{changed}) }()
	testutil.Eventually(t, 10*time.Second, "the old subscription retired", old.isRetired)
	release()
	select {
	case <-gate.waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("the reload did not give back the queued deliveries")
	}
	cancel() // the caller gives up; the release waits for room
	dispatched := make(chan error, 1)
	go func() { dispatched <- d.Dispatch(ctx, evs[3]) }() // the next of k, routed meanwhile
	select {
	case <-dispatched:
		t.Fatal("a delivery of the key was routed before the release was put")
	case <-time.After(300 * time.Millisecond):
	}
	close(gate.open)
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
	if err := <-dispatched; err != nil {
		t.Fatal(err)
	}
	reqs := rc.Wait(t, 4, 15*time.Second)
	var got []string
	for _, r := range reqs {
		var ev struct{ ID string }
		_ = json.Unmarshal(r.Body, &ev)
		got = append(got, ev.ID)
	}
	if len(got) != 4 || got[1] != evs[1].ID || got[2] != evs[2].ID || got[3] != evs[3].ID {
		t.Errorf("arrivals %v, want %v, %v, %v after x (k's in stream order)", got, evs[1].ID, evs[2].ID, evs[3].ID)
	}
}
