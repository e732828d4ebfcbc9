package admin

import (
	"context"
	"io"
	"log/slog"
	"net/http"
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
