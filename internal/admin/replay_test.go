package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

// windowReplays is a Replayer whose journal holds window.
type windowReplays struct{ window journal.ReplayWindow }

func (f windowReplays) StartReplay(_ context.Context, req fanout.ReplayRequest) (journal.Replay, journal.ReplayWindow, error) {
	return journal.Replay{ID: "rpl_aaaaaaaaaaaaaaab", Subscription: req.Subscription, Since: req.Since, Until: req.Until,
		Types: req.Types, State: journal.ReplayRunning, Matched: f.window.Matched, CreatedAt: time.Now()}, f.window, nil
}

func (windowReplays) GetReplay(context.Context, string, string) (journal.Replay, error) {
	return journal.Replay{}, journal.ErrNotFound
}

func (windowReplays) ListReplays(context.Context, string, int) ([]journal.Replay, error) {
	return nil, nil
}

func (windowReplays) CancelReplay(context.Context, string, string, string) (journal.Replay, int, error) {
	return journal.Replay{}, 0, journal.ErrNotFound
}

// TestReplayJournalFrom: a replay's journal_from is where the journal's
// history starts, its oldest event or journal.retention ago, whichever
// is later, and the note says so when the window reaches before it. An
// event retention keeps longer (its delivery held while the subscription
// is paused) made journal_from months old, and a window reaching into
// what retention pruned had no note. Found by a review.
func TestReplayJournalFrom(t *testing.T) {
	cat, err := catalog.New()
	if err != nil {
		t.Fatal(err)
	}
	const day = 24 * time.Hour
	now := time.Now()
	for _, tc := range []struct {
		name         string
		oldest       time.Duration // ago
		retention    time.Duration
		since        string
		wantFrom     time.Duration // ago
		wantNote     bool
		wantNoEvents bool
	}{
		{"one event kept past the retention", 60 * day, 30 * day, "50d", 30 * day, true, false},
		{"a window within the retention", 60 * day, 30 * day, "20d", 30 * day, false, false},
		{"a journal younger than the retention", 10 * day, 30 * day, "20d", 10 * day, true, false},
		{"the retention unknown", 60 * day, 0, "50d", 60 * day, false, false},
		{"an empty journal", -1, 30 * day, "1d", -1, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			win := journal.ReplayWindow{Matched: 3}
			if tc.oldest >= 0 {
				oldest := now.Add(-tc.oldest)
				win.Oldest = &oldest
			}
			srv := newChecked(t, Config{Token: "t", Deliverer: checkedDeliverer{t: t, cat: cat}, Catalog: cat, Replays: windowReplays{win},
				Retention: tc.retention, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			rec := send(t, srv, "POST", "/v1/subscriptions/crm/replay", `{"since":"`+tc.since+`"}`)
			if rec.Code != http.StatusAccepted {
				t.Fatalf("POST replay: %d %s, want 202", rec.Code, rec.Body)
			}
			var out api.Replay
			decodeStrict(t, rec, &out)
			switch {
			case tc.wantFrom < 0:
				if out.JournalFrom != nil {
					t.Errorf("journal_from %v, want none", out.JournalFrom)
				}
			case out.JournalFrom == nil:
				t.Errorf("journal_from absent, want %s ago", tc.wantFrom)
			default:
				if got := now.Sub(*out.JournalFrom); got < tc.wantFrom-time.Minute || got > tc.wantFrom+time.Minute {
					t.Errorf("journal_from %s ago, want %s ago", got.Round(time.Hour), tc.wantFrom)
				}
			}
			if got := out.Note != ""; got != tc.wantNote {
				t.Errorf("note %q, want one: %v", out.Note, tc.wantNote)
			}
			if tc.wantNote && !tc.wantNoEvents && (out.JournalFrom == nil || !strings.Contains(out.Note, "the journal keeps events from "+out.JournalFrom.Format(time.RFC3339))) {
				t.Errorf("note %q, want it to name journal_from %v", out.Note, out.JournalFrom)
			}
		})
	}
}

// journalReplays is a Replayer whose journal holds the replays listed,
// cancelled as journal.Store.CancelReplay does: one still going becomes
// cancelled, its pending deliveries skipped.
type journalReplays struct{ replays []journal.Replay }

func (f *journalReplays) find(sub, id string) int {
	return slices.IndexFunc(f.replays, func(r journal.Replay) bool { return r.Subscription == sub && r.ID == id })
}

func (f *journalReplays) StartReplay(context.Context, fanout.ReplayRequest) (journal.Replay, journal.ReplayWindow, error) {
	return journal.Replay{}, journal.ReplayWindow{}, errors.New("not used")
}

func (f *journalReplays) GetReplay(_ context.Context, sub, id string) (journal.Replay, error) {
	if i := f.find(sub, id); i >= 0 {
		return f.replays[i], nil
	}
	return journal.Replay{}, journal.ErrNotFound
}

func (f *journalReplays) ListReplays(_ context.Context, sub string, _ int) ([]journal.Replay, error) {
	var out []journal.Replay
	for _, r := range f.replays {
		if r.Subscription == sub {
			out = append(out, r)
		}
	}
	return out, nil
}

func (f *journalReplays) CancelReplay(_ context.Context, sub, id, _ string) (journal.Replay, int, error) {
	i := f.find(sub, id)
	if i < 0 {
		return journal.Replay{}, 0, journal.ErrNotFound
	}
	r := &f.replays[i]
	n := r.Deliveries[journal.Pending]
	if r.State != journal.ReplayRunning && n == 0 {
		return *r, 0, journal.ErrReplayFinished
	}
	r.State, r.Deliveries = journal.ReplayCancelled, map[journal.State]int{journal.Cancelled: n}
	return *r, n, nil
}

// TestReplayOfAGoneSubscription: a replay whose subscription this
// process no longer has (removed from config.yaml: the replay failed,
// its deliveries wait in the journal) is shown and cancelled, by DELETE
// and POST …/cancel, and listed; an id of neither a replay nor a
// subscription is a 404 naming both. They answered 404 "no such
// subscription", so the deliveries the README says a cancel stops could
// not be stopped before the subscription came back. Found by a review.
func TestReplayOfAGoneSubscription(t *testing.T) {
	cat, err := catalog.New()
	if err != nil {
		t.Fatal(err)
	}
	const rid = "rpl_aaaaaaaaaaaaaaab"
	for _, cancel := range []string{"DELETE /v1/subscriptions/gone/replays/" + rid, "POST /v1/subscriptions/gone/replays/" + rid + "/cancel"} {
		t.Run(cancel, func(t *testing.T) {
			replays := &journalReplays{[]journal.Replay{{ID: rid, Subscription: "gone", State: journal.ReplayFailed, Types: []string{"request.created"},
				Reason: `subscription "gone" no longer exists`, Created: 2, Deliveries: map[journal.State]int{journal.Pending: 2}, CreatedAt: time.Now()}}}
			srv := newChecked(t, Config{Token: "t", Deliverer: checkedDeliverer{t: t, cat: cat}, Catalog: cat, Replays: replays,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			rec := send(t, srv, "GET", "/v1/subscriptions/gone/replays/"+rid, "")
			var got api.Replay
			if rec.Code != http.StatusOK {
				t.Fatalf("GET the failed replay: %d %s, want 200", rec.Code, rec.Body)
			}
			if decodeStrict(t, rec, &got); got.State != "failed" || got.Pending != 2 {
				t.Errorf("GET the failed replay: %+v, want failed, 2 pending", got)
			}
			if rec := send(t, srv, "GET", "/v1/subscriptions/gone/replays", ""); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), rid) {
				t.Errorf("list the gone subscription's replays: %d %s, want 200 with %s", rec.Code, rec.Body, rid)
			}
			method, path, _ := strings.Cut(cancel, " ")
			rec = send(t, srv, method, path, "")
			if rec.Code != http.StatusOK {
				t.Fatalf("cancel the failed replay: %d %s, want 200", rec.Code, rec.Body)
			}
			if decodeStrict(t, rec, &got); got.State != "cancelled" || got.Skipped != 2 || got.Pending != 0 {
				t.Errorf("cancel the failed replay: %+v, want cancelled, its 2 deliveries skipped", got)
			}
			if rec := send(t, srv, method, path, ""); rec.Code != http.StatusConflict {
				t.Errorf("cancel it again: %d %s, want 409", rec.Code, rec.Body)
			}
		})
	}
	replays := &journalReplays{}
	srv := newChecked(t, Config{Token: "t", Deliverer: checkedDeliverer{t: t, cat: cat}, Catalog: cat, Replays: replays,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	for _, tc := range []struct{ method, path, want string }{
		{"GET", "/v1/subscriptions/nope/replays/" + rid, `no such replay of subscription "nope": "` + rid + `" (nor such a subscription)`},
		{"DELETE", "/v1/subscriptions/nope/replays/" + rid, `no such replay of subscription "nope": "` + rid + `" (nor such a subscription)`},
		{"POST", "/v1/subscriptions/nope/replays/" + rid + "/cancel", `no such replay of subscription "nope": "` + rid + `" (nor such a subscription)`},
		{"GET", "/v1/subscriptions/crm/replays/" + rid, `no such replay of subscription "crm": "` + rid + `"`},
		{"GET", "/v1/subscriptions/nope/replays", `no such subscription: "nope" (nor a replay of it in the journal)`},
	} {
		rec := send(t, srv, tc.method, tc.path, "")
		var e struct{ Error string }
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || rec.Code != http.StatusNotFound || e.Error != tc.want {
			t.Errorf("%s %s: %d %s, want 404 saying %s", tc.method, tc.path, rec.Code, rec.Body, tc.want)
		}
	}
	if rec := send(t, srv, "GET", "/v1/subscriptions/crm/replays", ""); rec.Code != http.StatusOK {
		t.Errorf("list the replays of a subscription with none: %d %s, want 200", rec.Code, rec.Body)
	}
}
