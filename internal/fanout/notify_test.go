package fanout

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestNotificationsSentOnceAcrossProcesses: two processes sharing the
// journal, and a notify.url slow to answer (within the timeout), send
// each notification once. Claimed 20 at a time with a lease of two
// timeouts, those a process reached after its first few were claimed by
// the other again (10 POSTs for 6 notifications in the review's run).
func TestNotificationsSentOnceAcrossProcesses(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	admin := testutil.NewReceiver(t)
	admin.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) {
		time.Sleep(700 * time.Millisecond) // slow, well within the 2 s timeout even on a loaded machine
		return http.StatusOK, nil, "ok"
	})
	const n = 10
	b := &journal.Batch{}
	for i := range n {
		b.Notifications = append(b.Notifications, journal.NotificationRow{Kind: "stream.stalled", Body: fmt.Appendf(nil, `{"text":"n%d"}`, i)})
	}
	if err := store.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	cfg := func(inst string) Config {
		return Config{Journal: store, Instance: inst, PollInterval: 50 * time.Millisecond, Timeout: 2 * time.Second, Notify: NotifyConfig{URL: admin.URL}}
	}
	d1, d2 := start(t, store, cfg("i1")), start(t, store, cfg("i2"))
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, d := range []*Dispatcher{d1, d2} {
		wg.Go(func() { _ = d.Notifier().Run(rctx) })
	}
	testutil.Eventually(t, 30*time.Second, "every notification sent", func() bool {
		var left int
		_ = store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.notifications WHERE sent_at IS NULL`).Scan(&left)
		return left == 0
	})
	cancel()
	wg.Wait()
	seen := map[string]int{}
	for _, r := range admin.Requests() {
		seen[r.Header.Get("X-DZDESK-Delivery")]++
	}
	if len(seen) != n {
		t.Errorf("%d notifications reached notify.url, want %d: %v", len(seen), n, seen)
	}
	for id, c := range seen {
		if c > 1 {
			t.Errorf("notification %s reached notify.url %d times, want once", id, c)
		}
	}
}
