package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/api/apitest"
	"github.com/dzdesk/dzhook/internal/admin"
	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

// fakeReplays is the admin API's Replayer in memory. Every replay's
// window holds two events, and the journal keeps an hour of them. Each
// GET of a running replay makes one more delivery: delivered, except to
// "flaky" (failed) and "down" (pending, as the server has them: a replay
// is done once its deliveries are made; each GET after that fails one,
// their last attempt); a replay into "gone" fails at its first GET.
type fakeReplays struct {
	mu   sync.Mutex
	reqs []fanout.ReplayRequest
	list []*journal.Replay // oldest first
}

const fakeWindow = 2

func (f *fakeReplays) StartReplay(_ context.Context, req fanout.ReplayRequest) (journal.Replay, journal.ReplayWindow, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	now := time.Now()
	rp := &journal.Replay{
		ID: "rpl_" + strings.Repeat("a", 15) + string(rune('b'+len(f.list))), Subscription: req.Subscription,
		Since: req.Since, Until: req.Until, Patterns: req.Patterns, Types: req.Types, State: journal.ReplayRunning,
		Matched: fakeWindow, RequestedBy: req.RequestedBy, CreatedAt: now, UpdatedAt: now, Deliveries: map[journal.State]int{},
	}
	f.list = append(f.list, rp)
	oldest := now.Add(-time.Hour)
	return *rp, journal.ReplayWindow{Matched: fakeWindow, Oldest: &oldest}, nil
}

func (f *fakeReplays) find(sub, id string) (*journal.Replay, error) {
	for _, rp := range f.list {
		if rp.ID == id && rp.Subscription == sub {
			return rp, nil
		}
	}
	return nil, journal.ErrNotFound
}

func (f *fakeReplays) GetReplay(_ context.Context, sub, id string) (journal.Replay, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rp, err := f.find(sub, id)
	if err != nil {
		return journal.Replay{}, err
	}
	if rp.State == journal.ReplayDone && rp.Deliveries[journal.Pending] > 0 {
		rp.Deliveries[journal.Pending]--
		rp.Deliveries[journal.Failed]++
	}
	if rp.State == journal.ReplayRunning {
		now := time.Now()
		switch rp.Subscription {
		case "down":
			rp.Scanned, rp.Created = rp.Scanned+1, rp.Created+1
			rp.Deliveries[journal.Pending]++
		case "gone":
			rp.State, rp.Reason, rp.FinishedAt = journal.ReplayFailed, "the subscription was deleted", &now
		case "flaky":
			rp.Scanned, rp.Created = rp.Scanned+1, rp.Created+1
			rp.Deliveries[journal.Failed]++
		default:
			rp.Scanned, rp.Created = rp.Scanned+1, rp.Created+1
			rp.Deliveries[journal.Delivered]++
		}
		if rp.Scanned == rp.Matched {
			rp.State, rp.FinishedAt = journal.ReplayDone, &now
		}
	}
	return *rp, nil
}

func (f *fakeReplays) ListReplays(_ context.Context, sub string, limit int) ([]journal.Replay, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []journal.Replay
	for _, rp := range slices.Backward(f.list) {
		if rp.Subscription == sub && len(out) < limit {
			out = append(out, *rp)
		}
	}
	return out, nil
}

func (f *fakeReplays) CancelReplay(_ context.Context, sub, id, _ string) (journal.Replay, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rp, err := f.find(sub, id)
	if err != nil {
		return journal.Replay{}, 0, err
	}
	if rp.State != journal.ReplayRunning {
		return *rp, 0, journal.ErrReplayFinished
	}
	now := time.Now()
	rp.State, rp.FinishedAt = journal.ReplayCancelled, &now
	n := rp.Matched - rp.Scanned
	rp.Deliveries[journal.Cancelled] += n
	return *rp, n, nil
}

// startReplayAPI serves the admin API over fakeSubs, with the
// subscriptions crm, flaky and gone, and fakeReplays.
func startReplayAPI(t *testing.T) (*fakeReplays, string) {
	t.Helper()
	cat, err := catalog.New()
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeSubs()
	for _, id := range []string{"flaky", "gone", "down"} {
		f.subs = append(f.subs, fanout.SubscriptionStatus{ID: id, URL: "https://" + id + ".example.com/hook", Events: []string{"*"},
			Active: true, State: journal.Healthy, Ordering: fanout.OrderNone, Source: "runtime"})
	}
	r := &fakeReplays{}
	// The CLI's requests and the answers are held to api/openapi.yaml.
	srv := httptest.NewServer(apitest.Handler(t, admin.New(admin.Config{Token: cliToken, Deliverer: f, History: f, Manager: f, Catalog: cat, Replays: r,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})))
	t.Cleanup(srv.Close)
	return r, srv.URL
}

// TestCLIReplay starts replays, follows them with --wait to each exit
// code, shows them and cancels one.
func TestCLIReplay(t *testing.T) {
	r, url := startReplayAPI(t)

	// Started: the id, the events of the window, and the note that the
	// journal does not reach back 24 h.
	code, out, errOut := cliRun(t, url, cliToken, "replay", "crm", "--since", "24h", "--events", "request.*, sla.*")
	if code != exitOK || !regexpMatch(out, `^replay rpl_a{15}b of crm started: 2 events from .* \(request\.\*, sla\.\*\)\n`) ||
		!strings.Contains(out, "note: the journal keeps events from ") || !strings.Contains(out, "dzhook replay status crm rpl_aaaaaaaaaaaaaaab") {
		t.Fatalf("replay: exit %d\n%s%s", code, out, errOut)
	}
	req := r.reqs[0]
	if got := time.Since(req.Since); got < 24*time.Hour-time.Minute || got > 24*time.Hour+time.Minute {
		t.Errorf("since sent: %s ago, want 24h", got)
	}
	if !slices.Equal(req.Patterns, []string{"request.*", "sla.*"}) || !slices.Contains(req.Types, "request.created") || !slices.Contains(req.Types, "sla.breach") ||
		slices.Contains(req.Types, "user.created") {
		t.Errorf("replay sent patterns %q, types %q", req.Patterns, req.Types)
	}

	// --json prints the API's answer, the note with it.
	code, out, _ = cliRun(t, url, cliToken, "replay", "start", "crm", "--since", "2020-01-01T00:00:00Z", "--until", "1h", "--json")
	var rp api.Replay
	if code != exitOK || json.Unmarshal([]byte(out), &rp) != nil || rp.ID != "rpl_aaaaaaaaaaaaaaac" || rp.State != "running" || rp.Note == "" {
		t.Errorf("replay --json: exit %d %q", code, out)
	}

	// --wait: a line per change of the progress, exit 0 when done with
	// every delivery delivered.
	code, out, errOut = cliRun(t, url, cliToken, "replay", "crm", "--since", "30m", "--wait")
	if code != exitOK || !strings.Contains(out, "rpl_aaaaaaaaaaaaaaad: running, scanned 0/2, created 0, delivered 0, pending 0, failed 0\n") ||
		!strings.Contains(out, "rpl_aaaaaaaaaaaaaaad: done, scanned 2/2, created 2, delivered 2, pending 0, failed 0\n") || strings.Contains(out, "note:") {
		t.Errorf("replay --wait: exit %d\n%s%s", code, out, errOut)
	}
	// Failed deliveries, or a failed replay: exit 1.
	code, out, _ = cliRun(t, url, cliToken, "replay", "flaky", "--since", "30m", "--wait")
	if code != exitFailure || !strings.Contains(out, "done, scanned 2/2, created 2, delivered 0, pending 0, failed 2") {
		t.Errorf("replay --wait into flaky: exit %d, want 1\n%s", code, out)
	}
	// Done, its deliveries still pending: it waits for their outcome (it
	// used to exit 0 there, a receiver down).
	code, out, _ = cliRun(t, url, cliToken, "replay", "down", "--since", "30m", "--wait")
	if code != exitFailure || !strings.Contains(out, "done, scanned 2/2, created 2, delivered 0, pending 2, failed 0") ||
		!strings.Contains(out, "done, scanned 2/2, created 2, delivered 0, pending 0, failed 2") {
		t.Errorf("replay --wait into down: exit %d, want 1 once its deliveries failed\n%s", code, out)
	}
	// --timeout bounds the wait (a receiver down kept it for hours); the
	// replay goes on.
	code, _, errOut = cliRun(t, url, cliToken, "replay", "down", "--since", "30m", "--wait", "--timeout", "10ms")
	if code != exitFailure || !strings.Contains(errOut, "stopped waiting; the replay goes on") {
		t.Errorf("replay --wait --timeout 10ms: exit %d %q, want 1, the replay going on", code, errOut)
	}
	if code, _, errOut := cliRun(t, url, cliToken, "replay", "down", "--since", "30m", "--timeout", "1h"); code != exitUsage {
		t.Errorf("replay --timeout without --wait: exit %d %q, want 2", code, errOut)
	}
	code, out, _ = cliRun(t, url, cliToken, "replay", "gone", "--since", "30m", "--wait", "--json")
	if code != exitFailure || json.Unmarshal([]byte(out), &rp) != nil || rp.State != "failed" || rp.Reason == "" {
		t.Errorf("replay --wait --json into gone: exit %d, want 1 and the last answer\n%s", code, out)
	}

	// status: the list, newest first, then one replay.
	code, out, _ = cliRun(t, url, cliToken, "replay", "status", "crm")
	if code != exitOK || !regexpMatch(out, `(?s)^REPLAY +STATE .*\nrpl_a{15}d +done .*\nrpl_a{15}c +running .*\nrpl_a{15}b +running .*request\.\*,sla\.\*`) {
		t.Errorf("replay status: exit %d\n%s", code, out)
	}
	code, out, _ = cliRun(t, url, cliToken, "replay", "status", "crm", "rpl_aaaaaaaaaaaaaaad")
	if code != exitOK || !regexpMatch(out, `(?m)^state: +done$`) || !regexpMatch(out, `(?m)^delivered: +2$`) || !regexpMatch(out, `(?m)^requested by: +127\.0\.0\.1$`) {
		t.Errorf("replay status of one: exit %d\n%s", code, out)
	}
	if code, out, _ := cliRun(t, url, cliToken, "replay", "status", "flaky"); code != exitOK || !strings.Contains(out, "rpl_") {
		t.Errorf("replay status flaky: exit %d\n%s", code, out)
	}

	// cancel: a running one; a finished one is a conflict (exit 1).
	code, out, errOut = cliRun(t, url, cliToken, "replay", "cancel", "crm", "rpl_aaaaaaaaaaaaaaab")
	if code != exitOK || !strings.Contains(out, "replay rpl_aaaaaaaaaaaaaaab of crm: cancelled; 0 deliveries made, 0 delivered, 2 skipped or cancelled") {
		t.Errorf("replay cancel: exit %d\n%s%s", code, out, errOut)
	}
	code, _, errOut = cliRun(t, url, cliToken, "replay", "cancel", "crm", "rpl_aaaaaaaaaaaaaaab")
	if code != exitFailure || !strings.Contains(errOut, "nothing to cancel (HTTP 409)") {
		t.Errorf("replay cancel again: exit %d %q, want 1", code, errOut)
	}
	if code, _, errOut := cliRun(t, url, cliToken, "replay", "status", "crm", "rpl_zzzzzzzzzzzzzzzz"); code != exitFailure || !strings.Contains(errOut, "no such replay") {
		t.Errorf("replay status of an unknown replay: exit %d %q, want 1", code, errOut)
	}

	// Bad usage, and what the API refuses: exit 2.
	for _, args := range [][]string{
		{"replay"},
		{"replay", "crm"},
		{"replay", "crm", "flaky", "--since", "1h"},
		{"replay", "crm", "--since", "yesterday"},
		{"replay", "crm", "--since", "1h", "--until", "2h"},
		{"replay", "crm", "--since", "1h", "--events", "nope.*"},
		{"replay", "crm", "--since", "1h", "--bogus"},
		{"replay", "status"},
		{"replay", "status", "crm", "not-a-replay-id"},
		{"replay", "cancel", "crm"},
	} {
		if code, _, errOut := cliRun(t, url, cliToken, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want 2\n%s", args, code, errOut)
		}
	}
	if code, _, errOut := cliRun(t, url, cliToken, "replay", "crm", "--since", "yesterday"); !strings.Contains(errOut, `since: "yesterday" is neither`) {
		t.Errorf("the API's reason for a bad --since: exit %d %q", code, errOut)
	}
	if code, _, _ := cliRun(t, url, cliToken, "replay", "ghost", "--since", "1h"); code != exitFailure {
		t.Errorf("replay into an unknown subscription: exit %d, want 1", code)
	}
}

func TestHelpListsReplay(t *testing.T) {
	code, out, _ := runCmd(t, "help")
	if code != exitOK || !strings.Contains(out, "  replay ") {
		t.Errorf("help: exit %d\n%s", code, out)
	}
	code, _, errOut := runCmd(t, "replay", "-h")
	if code != exitOK || !strings.Contains(errOut, "status SUBSCRIPTION [RID]") || !strings.Contains(errOut, "--wait") {
		t.Errorf("replay -h: exit %d\n%s", code, errOut)
	}
}
