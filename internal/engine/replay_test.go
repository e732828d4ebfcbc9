package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
	"github.com/dzdesk/dzhook/signer"
)

// The replay tests: events journaled for one subscription ("crm") are
// replayed into another ("late") that did not exist when they happened.

// journalRequests commits n requests, one transaction each, and waits
// until crm received them; it returns crm's bodies by event id.
func journalRequests(t *testing.T, db *pgtest.DB, crm *testutil.Receiver, n int) map[string][]byte {
	t.Helper()
	conn := db.Connect(t)
	for i := range n {
		if _, err := conn.Exec(context.Background(), `INSERT INTO requests (id, title, requester_id) VALUES ($1, $2, 1)`, 100+i, fmt.Sprintf("request %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	bodies := map[string][]byte{}
	for _, r := range crm.Wait(t, n, 60*time.Second) {
		bodies[eventID(t, r.Body)] = r.Body
	}
	if len(bodies) != n {
		t.Fatalf("crm received %d distinct events, want %d", len(bodies), n)
	}
	// Received is not yet journaled: the writer holds a delivery up to a
	// second to write it with its outcome. A replay reads the journal.
	testutil.Eventually(t, 10*time.Second, "the events journaled", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.events`) >= n
	})
	return bodies
}

func eventID(t *testing.T, body []byte) string {
	t.Helper()
	var env struct{ ID string }
	if err := json.Unmarshal(body, &env); err != nil || env.ID == "" {
		t.Fatalf("body %q is no envelope: %v", body, err)
	}
	return env.ID
}

// replayConfig has crm, and late when withLate, with the admin API on.
func replayConfig(t *testing.T, db *pgtest.DB, crm, late string, withLate bool, lateExtra ...string) *config.Config {
	subs := []string{sub("crm", crm, "request.*")}
	if withLate {
		subs = append(subs, sub("late", late, "request.*", lateExtra...))
	}
	return testConfigWith(t, db, adminSection, "", subs...)
}

// startReplay asks for a replay of the last hour into late; 202.
func startReplay(t *testing.T, a *adminClient) api.Replay {
	t.Helper()
	code, raw := a.call("POST", "/v1/subscriptions/late/replay", adminToken, `{"since": "1h", "events": ["request.*"]}`)
	if code != http.StatusAccepted {
		t.Fatalf("POST replay: %d %s", code, raw)
	}
	var rp api.Replay
	if err := json.Unmarshal(raw, &rp); err != nil {
		t.Fatal(err)
	}
	return rp
}

// ofReplay keeps the requests of a replay's deliveries (the receiver of
// a subscription that existed all along also got the live ones).
func ofReplay(reqs []testutil.Request, rid string) []testutil.Request {
	var out []testutil.Request
	for _, r := range reqs {
		if strings.HasSuffix(r.Header.Get(signer.HeaderDelivery), "_"+strings.TrimPrefix(rid, "rpl_")) {
			out = append(out, r)
		}
	}
	return out
}

// waitReplayed waits until n requests of the replay arrived.
func waitReplayed(t *testing.T, rc *testutil.Receiver, rid string, n int, timeout time.Duration) []testutil.Request {
	t.Helper()
	testutil.Eventually(t, timeout, fmt.Sprintf("%d deliveries of %s received", n, rid), func() bool { return len(ofReplay(rc.Requests(), rid)) >= n })
	return ofReplay(rc.Requests(), rid)
}

// replayStates lists a replay's deliveries by state and owner, for failure messages.
func replayStates(t *testing.T, db *pgtest.DB, rid string) string {
	rows, err := db.Connect(t).Query(context.Background(), `SELECT state || CASE WHEN owner IS NULL THEN '' ELSE ' owned' END || ' ' || coalesce(last_error, ''), count(*) FROM dzhook.deliveries WHERE replay_id = $1 GROUP BY 1`, rid)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var st string
		var n int
		_ = rows.Scan(&st, &n)
		out = append(out, fmt.Sprintf("%s: %d", st, n))
	}
	return strings.Join(out, "; ")
}

func getReplay(t *testing.T, a *adminClient, id string) api.Replay {
	t.Helper()
	return answer[api.Replay](a, "GET", "/v1/subscriptions/late/replays/"+id, nil)
}

// TestReplayIntoNewSubscription: a subscription added after 200 events
// were delivered to crm receives those 200 from a replay: the same ids
// and bodies, signed with its own secret, in commit order (ordering:
// subscription), under replay delivery ids; the replay's progress says
// so, and the history marks the deliveries as the replay's.
func TestReplayIntoNewSubscription(t *testing.T) {
	db := newDB(t)
	crm, late := testutil.NewReceiver(t), testutil.NewReceiver(t)
	e, stop := startStoppable(t, replayConfig(t, db, crm.URL, late.URL, false))
	bodies := journalRequests(t, db, crm, 200)
	// An operator's test send is journaled as a sample event of a real
	// type: a replay must not send it as if it had happened.
	if code, raw := newAdminClient(t, e).call("POST", "/v1/subscriptions/crm/test", adminToken, `{"event": "request.created"}`); code != 200 {
		t.Fatalf("test send: %d %s", code, raw)
	}
	stop()

	// The subscription is created now, after the events.
	e = start(t, replayConfig(t, db, crm.URL, late.URL, true, "ordering: subscription"))
	a := newAdminClient(t, e)
	rp := startReplay(t, a)
	if rp.State != "running" || rp.Matched != 200 || !strings.HasPrefix(rp.ID, "rpl_") || rp.Subscription != "late" {
		t.Errorf("replay answer = %+v, want running, 200 matched", rp)
	}
	// Only the replay's deliveries: the last transaction before the stop
	// may be streamed again after it (its checkpoint not yet written),
	// and then reaches late live as well.
	reqs := waitReplayed(t, late, rp.ID, 200, 60*time.Second)
	var order []string
	for _, r := range reqs {
		id := eventID(t, r.Body)
		if want, ok := bodies[id]; !ok || string(want) != string(r.Body) {
			t.Errorf("late received event %s with body %q; crm got %q", id, r.Body, want)
		}
		if err := signer.Verify(r.Header.Get(signer.HeaderSignature), r.Body, []byte(secret)); err != nil {
			t.Errorf("signature of %s: %v", id, err)
		}
		if dlv := r.Header.Get(signer.HeaderDelivery); !strings.HasSuffix(dlv, "_"+strings.TrimPrefix(rp.ID, "rpl_")) {
			t.Errorf("X-DZDESK-Delivery %s is not a delivery of replay %s", dlv, rp.ID)
		}
		order = append(order, id)
	}
	// Event ids of one database sort as their commits do.
	if !sort.StringsAreSorted(order) {
		t.Errorf("late received the events out of commit order: %v", order)
	}
	if len(order) != 200 {
		t.Errorf("late received %d requests, want 200", len(order))
	}
	testutil.Eventually(t, 10*time.Second, "the replay done with 200 delivered", func() bool {
		got := getReplay(t, a, rp.ID)
		return got.State == "done" && got.Delivered == 200 && got.Created == 200 && got.FinishedAt != nil
	})
	list := answer[api.ReplayList](a, "GET", "/v1/subscriptions/late/replays", nil)
	if len(list.Replays) != 1 || list.Replays[0].ID != rp.ID {
		t.Errorf("replays of late = %+v", list.Replays)
	}
	hist := answer[api.DeliveryList](a, "GET", "/v1/deliveries?subscription=late&limit=500", nil)
	n := 0
	for _, d := range hist.Deliveries {
		if d.ReplayID == rp.ID {
			n++
		}
	}
	if n != 200 {
		t.Errorf("history shows %d deliveries of late with replay_id %s, want 200", n, rp.ID)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE subscription_id = 'crm' AND NOT test`); n != 200 {
		t.Errorf("crm has %d deliveries, want its 200 untouched", n)
	}
}

// TestReplayCancel: cancelling a replay stops it: its waiting deliveries
// are skipped with the reason, nothing more reaches the receiver beyond
// what was in flight, and a second cancel is 409.
func TestReplayCancel(t *testing.T) {
	db := newDB(t)
	crm, late := testutil.NewReceiver(t), testutil.NewReceiver(t)
	late.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) {
		time.Sleep(20 * time.Millisecond) // a slow receiver: the replay is still going when cancelled
		return 200, nil, "ok"
	})
	e := start(t, replayConfig(t, db, crm.URL, late.URL, true, "ordering: subscription"))
	journalRequests(t, db, crm, 200)
	a := newAdminClient(t, e)
	rp := startReplay(t, a)
	waitReplayed(t, late, rp.ID, 10, 30*time.Second)
	cancelled := answer[api.Replay](a, "POST", "/v1/subscriptions/late/replays/"+rp.ID+"/cancel", nil)
	if cancelled.State != "cancelled" || cancelled.FinishedAt == nil || !strings.Contains(cancelled.Reason, "cancelled") {
		t.Errorf("cancel answered %+v", cancelled)
	}
	if cancelled.Skipped == 0 {
		t.Errorf("cancel skipped nothing: %+v", cancelled)
	}
	testutil.Eventually(t, 10*time.Second, "no replay delivery left pending", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE replay_id = $1 AND state IN ('pending', 'held')`, rp.ID) == 0
	})
	got := len(ofReplay(late.Requests(), rp.ID))
	delivered := queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE replay_id = $1 AND state = 'delivered'`, rp.ID)
	if got >= 200 || got != delivered {
		t.Errorf("late received %d requests, %d delivered in the journal; want the same, fewer than 200", got, delivered)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE replay_id = $1 AND state = 'cancelled' AND last_error LIKE 'replay cancelled%'`, rp.ID); n != 200-delivered {
		t.Errorf("%d deliveries skipped by the cancel, want %d (%s)", n, 200-delivered, replayStates(t, db, rp.ID))
	}
	if code, _, raw := a.callError("DELETE", "/v1/subscriptions/late/replays/"+rp.ID, adminToken, nil); code != http.StatusConflict {
		t.Errorf("second cancel: %d %s, want 409", code, raw)
	}
}

// TestReplayResumesAfterRestart: an engine stopped in the middle of a
// replay leaves it running; the next start goes on from where it was,
// and every event reaches the receiver exactly once.
func TestReplayResumesAfterRestart(t *testing.T) {
	db := newDB(t)
	crm, late := testutil.NewReceiver(t), testutil.NewReceiver(t)
	late.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) {
		time.Sleep(10 * time.Millisecond)
		return 200, nil, "ok"
	})
	cfg := replayConfig(t, db, crm.URL, late.URL, true, "ordering: subscription")
	e, stop := startStoppable(t, cfg)
	journalRequests(t, db, crm, 200)
	rp := startReplay(t, newAdminClient(t, e))
	waitReplayed(t, late, rp.ID, 30, 30*time.Second)
	stop()
	if got := len(ofReplay(late.Requests(), rp.ID)); got >= 200 {
		t.Fatalf("the replay finished (%d received) before the engine stopped; the test proves nothing", got)
	}
	e = start(t, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay deliveries: %s", replayStates(t, db, rp.ID))
		}
	})
	reqs := waitReplayed(t, late, rp.ID, 200, 30*time.Second)
	a := newAdminClient(t, e)
	testutil.Eventually(t, 10*time.Second, "the replay done with 200 delivered", func() bool {
		got := getReplay(t, a, rp.ID)
		return got.State == "done" && got.Delivered == 200
	})
	seen := map[string]int{}
	var order []string
	for _, r := range ofReplay(late.Requests(), rp.ID) {
		id := eventID(t, r.Body)
		seen[id]++
		order = append(order, id)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("event %s received %d times", id, n)
		}
	}
	if len(seen) != 200 || len(reqs) < 200 || !sort.StringsAreSorted(order) {
		t.Errorf("received %d distinct events in %d requests, sorted %v; want 200 once each, in order", len(seen), len(reqs), sort.StringsAreSorted(order))
	}
}

// TestReplayValidation: the API refuses a bad request naming the field.
func TestReplayValidation(t *testing.T) {
	db := newDB(t)
	crm, late := testutil.NewReceiver(t), testutil.NewReceiver(t)
	e := start(t, replayConfig(t, db, crm.URL, late.URL, true, "active: false"))
	a := newAdminClient(t, e)
	for _, tc := range []struct {
		name, path, body string
		code             int
		want             string
	}{
		{"no since", "/v1/subscriptions/late/replay", `{}`, 400, "since: required"},
		{"bad since", "/v1/subscriptions/late/replay", `{"since": "yesterday"}`, 400, `since: "yesterday"`},
		{"bad until", "/v1/subscriptions/late/replay", `{"since": "2h", "until": "soon"}`, 400, `until: "soon"`},
		{"since after until", "/v1/subscriptions/late/replay", `{"since": "1h", "until": "2h"}`, 400, "since: "},
		{"unknown event", "/v1/subscriptions/late/replay", `{"since": "1h", "events": ["request.exploded"]}`, 400, "events[0]: \"request.exploded\""},
		{"bad glob", "/v1/subscriptions/late/replay", `{"since": "1h", "events": ["request.*", "user.["]}`, 400, "events[1]"},
		{"event the subscription does not receive", "/v1/subscriptions/late/replay", `{"since": "1h", "events": ["user.*"]}`, 400, "events: none of these events"},
		{"unknown field", "/v1/subscriptions/late/replay", `{"since": "1h", "from": "x"}`, 400, "body: "},
		// Given empty or null, the window's end or the types read as left
		// out widened the replay (to now, to every type).
		{"empty events", "/v1/subscriptions/late/replay", `{"since": "1h", "events": []}`, 400, "events: is empty"},
		{"null events", "/v1/subscriptions/late/replay", `{"since": "1h", "events": null}`, 400, "events: null"},
		{"empty until", "/v1/subscriptions/late/replay", `{"since": "1h", "until": ""}`, 400, "until: is empty"},
		{"null until", "/v1/subscriptions/late/replay", `{"since": "1h", "until": null}`, 400, "until: null"},
		{"null since", "/v1/subscriptions/late/replay", `{"since": null}`, 400, "since: null"},
		{"unknown subscription", "/v1/subscriptions/nope/replay", `{"since": "1h"}`, 404, "no such subscription"},
		{"unknown replay", "/v1/subscriptions/late/replays/rpl_2222222222222222", "", 404, "no such replay"},
		{"malformed replay", "/v1/subscriptions/late/replays/dlv_x", "", 400, "replay id"},
	} {
		method := "POST"
		var body any
		if tc.body != "" {
			body = tc.body
		} else {
			method = "GET"
		}
		code, apiErr, raw := a.callError(method, tc.path, adminToken, body)
		if code != tc.code || !strings.Contains(apiErr.Message, tc.want) {
			t.Errorf("%s: %d %s, want %d with %q", tc.name, code, raw, tc.code, tc.want)
		}
	}
	// An inactive subscription may be replayed to (its deliveries wait);
	// a window before the journal's oldest event says what it holds.
	code, raw := a.call("POST", "/v1/subscriptions/late/replay", adminToken, `{"since": "2h", "until": "1h"}`)
	var rp api.Replay
	if err := json.Unmarshal(raw, &rp); code != http.StatusAccepted || err != nil || rp.Note == "" || !slices.Contains(rp.Types, "request.created") {
		t.Errorf("replay of an empty window: %d %s, want 202 with a note", code, raw)
	}
}

// TestReplayLiveDeliveryNotBehindBacklog: while a replay of 3,000 events
// goes to a subscription whose receiver takes 5 ms per request, a live
// event committed in the middle of it reaches that receiver while the
// replay still has deliveries to send: the live delivery does not wait
// for the replay's backlog. Every replayed event arrives once.
func TestReplayLiveDeliveryNotBehindBacklog(t *testing.T) {
	const n = 3000
	db := newDB(t)
	crm, late := testutil.NewReceiver(t), testutil.NewReceiver(t)
	late.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) {
		time.Sleep(5 * time.Millisecond) // a slow receiver: the replay takes a while
		return 200, nil, "ok"
	})
	_, stop := startStoppable(t, replayConfig(t, db, crm.URL, late.URL, false))
	db.Exec(t, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) SELECT 100 + g, 'request ' || g, 1 FROM generate_series(0, %d) g`, n-1))
	// A last transaction of its own: it may be streamed again after the
	// restart (its checkpoint not yet written) and reach late live, a
	// single event; the 3,000 are behind the checkpoint by then.
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (99, 'marker', 1)`)
	crm.Wait(t, n+1, 60*time.Second)
	testutil.Eventually(t, 10*time.Second, "the events journaled", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.events`) >= n+1
	})
	stop()

	e := start(t, replayConfig(t, db, crm.URL, late.URL, true))
	a := newAdminClient(t, e)
	rp := startReplay(t, a)
	if rp.Matched != n+1 {
		t.Fatalf("the replay matched %d events, want %d", rp.Matched, n+1)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay deliveries: %s", replayStates(t, db, rp.ID))
		}
	})
	waitReplayed(t, late, rp.ID, 100, 30*time.Second)

	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1000000, 'live', 1)`)
	atCommit := len(ofReplay(late.Requests(), rp.ID))
	var atArrival int // replay deliveries received before the live one
	testutil.Eventually(t, 30*time.Second, "the live event received by late", func() bool {
		reqs := late.Requests()
		for i, r := range reqs {
			if strings.Contains(string(r.Body), `"id":"req_1000000"`) {
				atArrival = len(ofReplay(reqs[:i], rp.ID))
				return true
			}
		}
		return false
	})
	t.Logf("replay deliveries received: %d when the live event was committed, %d when it arrived, of %d", atCommit, atArrival, n+1)
	if atArrival >= n+1 {
		t.Errorf("the live event arrived after all %d replay deliveries: it waited for the replay's backlog", atArrival)
	}
	// Nor behind the replay deliveries the scheduler claimed into memory
	// (between half and all of the 1,024-place queue while the replay
	// runs): only those in flight, or taken in the moment the stream
	// needs to read the commit, go before it (the live lane).
	if ahead := atArrival - atCommit; ahead >= fanout.DefaultQueueSize/4 {
		t.Errorf("%d replay deliveries arrived between the live event's commit and its arrival: it waited behind the claimed ones", ahead)
	}

	reqs := waitReplayed(t, late, rp.ID, n+1, 120*time.Second)
	seen := map[string]int{}
	for _, r := range reqs {
		seen[eventID(t, r.Body)]++
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("event %s replayed %d times", id, c)
		}
	}
	if len(seen) != n+1 || len(reqs) != n+1 {
		t.Errorf("late received %d replay deliveries of %d distinct events, want %d once each", len(reqs), len(seen), n+1)
	}
	testutil.Eventually(t, 10*time.Second, "the replay done, every delivery delivered", func() bool {
		got := getReplay(t, a, rp.ID)
		return got.State == "done" && got.Delivered == n+1
	})
}

// TestFailedReplayOfAGoneSubscription: a replay whose subscription was
// removed from config.yaml, failed with its deliveries waiting in the
// journal, is shown and cancelled through the admin API of a process
// without the subscription; the cancel stops its deliveries. Both
// answered 404 "no such subscription": the deliveries could only be
// stopped once the subscription was back, when they went out. Found by a
// review.
func TestFailedReplayOfAGoneSubscription(t *testing.T) {
	db := newDB(t)
	crm, late := testutil.NewReceiver(t), testutil.NewReceiver(t)
	late.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) { return 503, nil, "down" })
	e, stop := startStoppable(t, replayConfig(t, db, crm.URL, late.URL, true))
	journalRequests(t, db, crm, 20)
	a := newAdminClient(t, e)
	rp := startReplay(t, a)
	testutil.Eventually(t, 30*time.Second, "the replay's 20 deliveries made", func() bool { return getReplay(t, a, rp.ID).Created == 20 })
	stop()
	// What the replayer does once late is missing a minute.
	if _, err := db.Connect(t).Exec(context.Background(), `UPDATE dzhook.replays SET state = 'failed', reason = 'subscription "late" no longer exists', finished_at = now() WHERE id = $1`, rp.ID); err != nil {
		t.Fatal(err)
	}
	a = newAdminClient(t, start(t, replayConfig(t, db, crm.URL, late.URL, false)))
	if got := getReplay(t, a, rp.ID); got.State != "failed" || got.Pending != 20 {
		t.Errorf("GET the failed replay: %s, %d pending; want failed, 20 pending (%s)", got.State, got.Pending, replayStates(t, db, rp.ID))
	}
	cancelled := answer[api.Replay](a, "DELETE", "/v1/subscriptions/late/replays/"+rp.ID, nil)
	if cancelled.State != "cancelled" || cancelled.Skipped != 20 || cancelled.Pending != 0 {
		t.Errorf("cancel the failed replay: %s, %d skipped, %d pending; want cancelled, 20 skipped (%s)", cancelled.State, cancelled.Skipped, cancelled.Pending, replayStates(t, db, rp.ID))
	}
	if code, e, raw := a.callError("GET", "/v1/subscriptions/late/replays/rpl_aaaaaaaaaaaaaaab", adminToken, nil); code != http.StatusNotFound || !strings.Contains(e.Message, "rpl_aaaaaaaaaaaaaaab") {
		t.Errorf("GET a replay the journal does not hold of a gone subscription: %d %s, want 404 naming it", code, raw)
	}
}
