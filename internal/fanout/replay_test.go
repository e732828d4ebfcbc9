package fanout

import (
	"context"
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
