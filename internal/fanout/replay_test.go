package fanout

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// countingReplays is the journal, counting how often the replay loop asks
// it for running replays.
type countingReplays struct {
	*journal.Store
	asked atomic.Int64
}

func (c *countingReplays) RunningReplays(ctx context.Context) ([]journal.Replay, error) {
	c.asked.Add(1)
	return c.Store.RunningReplays(ctx)
}

// TestReplayLoopIdle: with no replay running, the loop asks the journal
// once per poll interval, not every 200 ms (an idle process's largest
// source of wake-ups and queries).
func TestReplayLoopIdle(t *testing.T) {
	store := newJournal(t)
	replays := &countingReplays{Store: store}
	rc := testutil.NewReceiver(t)
	start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("replay-idle-secret-0123456789"), Active: true}},
		Journal:       store, Replays: replays, Instance: "i1", PollInterval: 500 * time.Millisecond, Heartbeat: time.Second,
	})
	const window = 2 * time.Second
	time.Sleep(window) // the measurement: how often the idle loop asks in this time
	// Every 500 ms: 4 in 2 s (a loaded host makes fewer, never more);
	// every 200 ms would be 10.
	if n := replays.asked.Load(); n > 6 {
		t.Errorf("the idle replay loop asked for running replays %d times in %v, want at most 6 (one per 500 ms poll interval)", n, window)
	}
}

// failingReplays is the journal, except that the steps of one replay
// fail (a journal error on that replay alone).
type failingReplays struct {
	*journal.Store
	failID  atomic.Value // string
	failAll atomic.Bool  // until failID is known
	failed  atomic.Int64
}

func (f *failingReplays) StepReplay(ctx context.Context, id string, batch, bound int, plan journal.ReplayPlan) (journal.ReplayStep, error) {
	if f.failAll.Load() || id == f.failID.Load() {
		f.failed.Add(1)
		return journal.ReplayStep{}, errors.New("injected: this replay's step fails")
	}
	return f.Store.StepReplay(ctx, id, batch, bound, plan)
}

// TestReplayStepFailureHoldsBackNoOther: a replay whose steps fail does
// not stop the replays of other subscriptions; it is retried.
func TestReplayStepFailureHoldsBackNoOther(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	past := time.Now().Add(-time.Minute)
	b := &journal.Batch{}
	for i := range 3 {
		id := fmt.Sprintf("whk_%d", i)
		b.Events = append(b.Events, journal.EventRow{ID: id, Type: "request.created", Body: []byte(`{"id":"` + id + `"}`), OccurredAt: past})
	}
	if err := store.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	replays := &failingReplays{Store: store}
	replays.failID.Store("")
	replays.failAll.Store(true) // the loop may step a's replay before its id is known
	ra, rb := testutil.NewReceiver(t), testutil.NewReceiver(t)
	d := start(t, store, Config{
		Subscriptions: []Subscription{
			{ID: "a", URL: ra.URL, Events: []string{"*"}, Secret: []byte("replay-fail-secret-0123456789"), Active: true},
			{ID: "b", URL: rb.URL, Events: []string{"*"}, Secret: []byte("replay-fail-secret-0123456789"), Active: true},
		},
		Journal: store, Replays: replays, Instance: "i1", PollInterval: 100 * time.Millisecond, Heartbeat: time.Second,
	})
	window := ReplayRequest{Since: past.Add(-time.Hour), Until: time.Now(), Types: []string{"request.created"}, RequestedBy: "test"}
	// a's replay first: the loop takes the running replays oldest first.
	window.Subscription = "a"
	first, _, err := d.StartReplay(ctx, window)
	if err != nil {
		t.Fatal(err)
	}
	replays.failID.Store(first.ID)
	replays.failAll.Store(false)
	window.Subscription = "b"
	if _, _, err := d.StartReplay(ctx, window); err != nil {
		t.Fatal(err)
	}
	rb.Wait(t, 3, 10*time.Second)
	testutil.Eventually(t, 10*time.Second, "a's replay retried", func() bool { return replays.failed.Load() >= 2 })
	if n := len(ra.Requests()); n != 0 {
		t.Errorf("a's receiver got %d requests from a replay whose steps all failed", n)
	}
	// Its journal back, a's replay goes on.
	replays.failID.Store("")
	ra.Wait(t, 3, 10*time.Second)
}

// costlyFilter runs near its budget on costlyBody: a comparison of two
// lists of 120,000 numbers, 1,600 times.
const costlyFilter = `data.l.all(i, data.l.all(j, data.a != data.b))`

var costlyBody = func() string {
	zeros := strings.TrimSuffix(strings.Repeat("0,", 40), ",")
	long := strings.TrimSuffix(strings.Repeat("0,", 120_000), ",")
	return `{"id":"whk_1","event":"order.shipped","timestamp":"2024-01-15T14:30:00Z","data":{"l":[` + zeros + `],"a":[[` + long + `]],"b":[[` + long[:len(long)-1] + `1]]}}`
}()

// replaySub is subscription s to every event, with filter ("": none).
func replaySub(t *testing.T, filter string) *sub {
	t.Helper()
	s, err := compile(Subscription{ID: "s", URL: "https://example.com", Events: []string{"*"}, Active: true, Filter: filter},
		&Config{QueueSize: 8, Concurrency: 1}, func() int64 { return 1 })
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestReplayFilterWithinTheBudget: a replayed event's filter runs within
// the stream's budget, inside the replay step's transaction: a costly one
// stops there, does not match, and is told as a filter failure. (Without
// a deadline this filter ran 22 s in a review, holding the step's
// transaction and the retention steps waiting on its lock, and matched
// an event the stream had stopped at the budget.)
func TestReplayFilterWithinTheBudget(t *testing.T) {
	s := replaySub(t, costlyFilter)
	body := costlyBody
	cheap := `{"id":"whk_2","event":"order.shipped","timestamp":"2024-01-15T14:30:00Z","data":{"l":[0],"a":[1],"b":[2]}}`
	var told []string
	failed := func(_ *sub, ev Event, err error) { told = append(told, ev.ID+": "+err.Error()) }
	start := time.Now()
	rows, _ := replayPlan(s, time.Now(), failed)(journal.Replay{ID: "rpl_1"}, 0, []journal.ReplayEvent{
		{ID: "whk_1", Type: "order.shipped", Body: []byte(body), OccurredAt: time.Now()},
		{ID: "whk_2", Type: "order.shipped", Body: []byte(cheap), OccurredAt: time.Now()},
	})
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the replay step's filters ran %s; the stream stops an event's at %s", took, filterBudget)
	}
	if len(rows) != 1 || rows[0].EventID != "whk_2" {
		t.Errorf("replay planned %d deliveries, want whk_2's only", len(rows))
	}
	if len(told) != 1 || !strings.HasPrefix(told[0], "whk_1: ") {
		t.Errorf("filter failures told: %q, want whk_1's", told)
	}
}

// TestReplayStepEndsWhenItsTimeIsUp: a replay step whose filter runs
// near its budget on every event ends with the events it looked at once
// replayStepTime is spent, the rest left to the next step: a batch of
// such events held the step's transaction (and the retention steps
// waiting on its lock) for the batch times the budget. The journal then
// moves the cursor past those only, and the next step goes on from there.
func TestReplayStepEndsWhenItsTimeIsUp(t *testing.T) {
	defer func(was time.Duration) { replayStepTime = was }(replayStepTime)
	replayStepTime = 150 * time.Millisecond
	s := replaySub(t, costlyFilter)
	events := make([]journal.ReplayEvent, 20)
	for i := range events {
		events[i] = journal.ReplayEvent{ID: fmt.Sprintf("whk_%d", i+1), Type: "order.shipped", Body: []byte(costlyBody), OccurredAt: time.Now()}
	}
	start := time.Now()
	_, used := replayPlan(s, time.Now(), func(*sub, Event, error) {})(journal.Replay{ID: "rpl_1"}, 0, events)
	took := time.Since(start)
	if used < 1 || used >= len(events) {
		t.Fatalf("the step looked at %d of %d events, each near the filter's %s; want it to end once %s is spent", used, len(events), filterBudget, replayStepTime)
	}
	if limit := replayStepTime + 2*filterBudget + time.Second; took > limit {
		t.Errorf("the step took %s, want under %s", took, limit)
	}
	// Without a filter, every event is looked at: nothing is costly.
	if rows, used := replayPlan(replaySub(t, ""), time.Now(), func(*sub, Event, error) {})(journal.Replay{ID: "rpl_1"}, 0, events); used != len(events) || len(rows) != len(events) {
		t.Errorf("without a filter the step looked at %d and planned %d of %d events", used, len(rows), len(events))
	}
}
