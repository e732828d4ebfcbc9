package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dzdesk/dzhook/internal/api"
)

// benchAdminToken is the admin API's token when a scenario turns it on.
const benchAdminToken = "bench-admin-token-0123456789abcdef"

// The replay scenario's live load: replayRate tx/s for replayLiveFor,
// once without a replay and once while one runs.
const (
	replayRate    = 200
	replayLiveFor = 12 * time.Second
)

// replay journals rows/5 request creations delivered to subscription a,
// adds subscription b by a configuration reload, then commits live
// transactions at a steady rate twice: once with nothing else going on,
// and once while a replay sends all the journaled events to b. It reports
// the live events' commit -> received latency at a and at b in both
// stretches, and the replay's throughput.
func (b *bench) replay(ctx context.Context) error {
	n := b.rows / 5
	db, dsn, err := b.newDB(ctx)
	if err != nil {
		return err
	}
	defer b.cluster.DropDatabase(ctx, db)
	rc, err := newReceiver()
	if err != nil {
		return err
	}
	defer rc.close()
	admin, err := freeAddr()
	if err != nil {
		return err
	}
	subA := subSpec{id: "a", path: "/a"}
	subB := subSpec{id: "b", path: "/b"}
	config, err := b.writeConfig(dsn, []subSpec{subA}, rc.url, admin)
	if err != nil {
		return err
	}
	if err := b.setup(config); err != nil {
		return err
	}

	// The history: n events delivered to a, and journaled.
	if err := b.load(ctx, db, 0, n, 100); err != nil {
		return err
	}
	reached := rc.expect(n)
	d, err := b.start(config)
	if err != nil {
		return err
	}
	defer d.stop()
	select {
	case <-reached:
	case err := <-d.done:
		return fmt.Errorf("dzhook exited: %v", err)
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("the history did not reach a in 5 minutes")
	}
	if err := waitJournaled(ctx, journalDSN(config, b.cluster.DSN(db)), n); err != nil {
		return err
	}

	// The replay's window ends here: the history, not the live events
	// committed below.
	until := time.Now()

	// b joins: the same file, rewritten, and SIGHUP.
	both, err := b.writeConfig(dsn, []subSpec{subA, subB}, rc.url, admin)
	if err != nil {
		return err
	}
	if err := os.Rename(both, config); err != nil {
		return err
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return err
	}
	adm := &adminAPI{base: "http://" + admin}
	if err := adm.waitSubscription(ctx, "b", 30*time.Second); err != nil {
		return err
	}

	// Warm-up: b's connections.
	warm := rc.expect(2 * 200)
	if _, err := b.paced(ctx, dsn, 1_000_000, 200, time.Second); err != nil {
		return err
	}
	select {
	case <-warm:
	case <-time.After(time.Minute):
		return fmt.Errorf("warm-up: the live events did not arrive")
	}

	// Without a replay.
	live := replayRate * int(replayLiveFor.Seconds())
	reached = rc.expect(2 * live)
	quiet, err := b.paced(ctx, dsn, 2_000_000, replayRate, replayLiveFor)
	if err != nil {
		return err
	}
	select {
	case <-reached:
	case <-time.After(time.Minute):
		return fmt.Errorf("without a replay: only %d of %d live deliveries arrived", rc.received(), 2*live)
	}
	_, byReq := rc.arrivals()
	quietA, quietB := latencies(quiet, byReq, "/a"), latencies(quiet, byReq, "/b")

	// During a replay of the n events into b.
	reached = rc.expect(n + 2*live)
	started := time.Now()
	rp, err := adm.startReplay(ctx, "b", until)
	if err != nil {
		return err
	}
	if rp.Matched != n {
		return fmt.Errorf("replay %s matched %d events, want the %d of the history", rp.ID, rp.Matched, n)
	}
	busy, err := b.paced(ctx, dsn, 3_000_000, replayRate, replayLiveFor)
	if err != nil {
		return err
	}
	select {
	case <-reached:
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("replay %s: only %d of %d deliveries arrived", rp.ID, rc.received(), n+2*live)
	}
	first, byReq := rc.arrivals()
	// The replay's deliveries: their ids end with the replay's.
	suffix := "_" + strings.TrimPrefix(rp.ID, "rpl_")
	var ended time.Time
	replayed := 0
	for dlv, at := range first {
		if strings.HasSuffix(dlv, suffix) {
			replayed++
			if at.After(ended) {
				ended = at
			}
		}
	}
	if replayed != n {
		return fmt.Errorf("replay %s: b received %d of its deliveries, want %d", rp.ID, replayed, n)
	}
	// Only the live events committed while the replay was still sending.
	during := map[int]time.Time{}
	for id, at := range busy {
		if at.Before(ended) {
			during[id] = at
		}
	}
	busyA, busyB := latencies(during, byReq, "/a"), latencies(during, byReq, "/b")
	took := ended.Sub(started)

	label := fmt.Sprintf("%d tx/s", replayRate)
	quietNote := fmt.Sprintf("%d live events in %s, no replay", len(quiet), replayLiveFor)
	busyNote := fmt.Sprintf("%d live events committed during the replay's %.1f s", len(during), took.Seconds())
	for _, sub := range []struct {
		name        string
		quiet, busy []time.Duration
	}{{"a (not replayed to)", quietA, busyA}, {"b (replayed to)", quietB, busyB}} {
		b.add(Result{Scenario: "replay", Metric: fmt.Sprintf("%s, %s without a replay: p50", label, sub.name), Value: pct(sub.quiet, 0.50), Unit: "ms", Note: quietNote})
		b.add(Result{Scenario: "replay", Metric: fmt.Sprintf("%s, %s without a replay: p99", label, sub.name), Value: pct(sub.quiet, 0.99), Unit: "ms", Note: quietNote})
		b.add(Result{Scenario: "replay", Metric: fmt.Sprintf("%s, %s during the replay: p50", label, sub.name), Value: pct(sub.busy, 0.50), Unit: "ms", Note: busyNote})
		b.goal("replay", fmt.Sprintf("%s, %s during the replay: p99", label, sub.name), pct(sub.busy, 0.99), "ms", 10, false, busyNote)
		b.add(Result{Scenario: "replay", Metric: fmt.Sprintf("%s, %s during the replay: max", label, sub.name), Value: pct(sub.busy, 1), Unit: "ms", Note: busyNote})
		b.goal("replay", fmt.Sprintf("%s, %s: p99 during / without", label, sub.name), pct(sub.busy, 0.99)/pct(sub.quiet, 0.99), "x", 2, false, "")
	}
	b.add(Result{Scenario: "replay", Metric: fmt.Sprintf("replay of %d events into b: deliveries", n), Value: float64(n) / took.Seconds(), Unit: "deliveries/s",
		Note: fmt.Sprintf("request -> last replayed event received %.1f s, with %d live tx/s", took.Seconds(), replayRate)})
	return nil
}

// freeAddr is a loopback address with a port free now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitJournaled waits until the journal holds n events: a delivery is
// written with its outcome up to a second after it was received, and a
// replay reads the journal.
func waitJournaled(ctx context.Context, dsn string, n int) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var got int
	for range 300 {
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM dzhook.events`).Scan(&got); err != nil {
			return err
		}
		if got >= n {
			return nil
		}
		time.Sleep(100 * time.Millisecond) // polled: the journal has no notification for this
	}
	return fmt.Errorf("the journal holds %d of %d events after 30 s", got, n)
}

// adminAPI calls dzhook's admin API.
type adminAPI struct{ base string }

func (a *adminAPI) call(ctx context.Context, method, path, body string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+benchAdminToken)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

// waitSubscription waits until the running configuration has the
// subscription (a reload is asynchronous).
func (a *adminAPI) waitSubscription(ctx context.Context, id string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		code, raw, err := a.call(ctx, http.MethodGet, "/v1/subscriptions", "")
		if err == nil && code == http.StatusOK {
			var list api.SubscriptionList
			if json.Unmarshal(raw, &list) == nil && slices.ContainsFunc(list.Subscriptions, func(s api.Subscription) bool { return s.ID == id }) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("subscription %s not running %s after the reload (last answer %d %s, %v)", id, timeout, code, raw, err)
		}
		time.Sleep(100 * time.Millisecond) // polled: a reload says nothing to the caller
	}
}

// startReplay asks for a replay into the subscription of the request
// events from an hour ago until until.
func (a *adminAPI) startReplay(ctx context.Context, sub string, until time.Time) (api.Replay, error) {
	var rp api.Replay
	body := fmt.Sprintf(`{"since": "1h", "until": %q, "events": ["request.*"]}`, until.UTC().Format(time.RFC3339Nano))
	code, raw, err := a.call(ctx, http.MethodPost, "/v1/subscriptions/"+sub+"/replay", body)
	if err != nil {
		return rp, err
	}
	if code != http.StatusAccepted || json.Unmarshal(raw, &rp) != nil {
		return rp, fmt.Errorf("POST replay: %d %s", code, raw)
	}
	return rp, nil
}
