package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

// Replayer starts, shows and cancels replays of journaled events into a
// subscription. *fanout.Dispatcher is one.
type Replayer interface {
	StartReplay(ctx context.Context, req fanout.ReplayRequest) (journal.Replay, journal.ReplayWindow, error)
	GetReplay(ctx context.Context, subscription, id string) (journal.Replay, error)
	ListReplays(ctx context.Context, subscription string, limit int) ([]journal.Replay, error)
	CancelReplay(ctx context.Context, subscription, id, by string) (journal.Replay, int, error)
}

var replayIDPattern = regexp.MustCompile(`^rpl_[2-7a-z]{16}$`)

// maxReplayList is how many replays the list shows (newest first).
const maxReplayList = 50

func (s *Server) replayRoutes() {
	none := endpoint{}
	s.route("POST /v1/subscriptions/{id}/replay", endpoint{body: true}, s.startReplay)
	s.route("GET /v1/subscriptions/{id}/replays", none, s.replays)
	s.route("GET /v1/subscriptions/{id}/replays/{rid}", none, s.replay)
	s.route("DELETE /v1/subscriptions/{id}/replays/{rid}", none, s.cancelReplay)
	s.route("POST /v1/subscriptions/{id}/replays/{rid}/cancel", none, s.cancelReplay)
}

func (s *Server) startReplay(w http.ResponseWriter, r *http.Request, _ query) {
	id, ok := s.subscriptionID(w, r)
	if !ok {
		return
	}
	// api.ReplayRequest, with a member left out told from an empty one:
	// an empty until or events list is a mistake (a script's unset
	// variable), and read as absent it widened the replay to now or to
	// every event type (found by a review).
	var body struct {
		Since  string    `json:"since"`
		Until  *string   `json:"until"`
		Events *[]string `json:"events"`
	}
	if err := readBody(w, r, &body); err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, errBodyTooLarge) {
			status = http.StatusRequestEntityTooLarge
		}
		writeError(w, status, `body: want {"since": "24h", "until": "…", "events": ["request.*"]}: `+clip(err.Error()))
		return
	}
	now := time.Now()
	req := fanout.ReplayRequest{Subscription: id, Until: now, RequestedBy: client(r)}
	if body.Since == "" {
		writeError(w, http.StatusBadRequest, `since: required (an RFC 3339 time, or a duration ago: "24h", "7d")`)
		return
	}
	var err error
	if req.Since, err = parseTime("since", body.Since, now); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if body.Until != nil {
		if *body.Until == "" {
			writeError(w, http.StatusBadRequest, `until: is empty: give an RFC 3339 time or a duration ago, or leave it out for now`)
			return
		}
		if req.Until, err = parseTime("until", *body.Until, now); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	if !req.Since.Before(req.Until) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("since: %s is not before until (%s)", req.Since.UTC().Format(time.RFC3339), req.Until.UTC().Format(time.RFC3339)))
		return
	}
	// The globs select event types of the catalog, as a subscription's
	// events do; left out: the whole catalog, which the subscription's
	// own events then narrow.
	patterns := []string{"*"}
	if body.Events != nil {
		if len(*body.Events) == 0 {
			writeError(w, http.StatusBadRequest, `events: is empty: give event types or globs ("request.*"), or leave it out for every event the subscription receives`)
			return
		}
		patterns = *body.Events
		req.Patterns = patterns
	}
	for i, p := range patterns {
		names, err := s.cfg.Catalog.Match(p)
		if err != nil || len(names) == 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("events[%d]: %q is not an event of the catalog nor a glob that selects one (GET /v1/events lists them)", i, clip(p)))
			return
		}
		for _, n := range names {
			if !slices.Contains(req.Types, n) {
				req.Types = append(req.Types, n)
			}
		}
	}
	ctx, cancel := journalCtx(r)
	defer cancel()
	rp, win, err := s.cfg.Replays.StartReplay(ctx, req)
	if errors.Is(err, fanout.ErrNothingToReplay) {
		writeError(w, http.StatusBadRequest, "events: "+err.Error())
		return
	}
	if oe := (*journal.ReplayOverlapError)(nil); errors.As(err, &oe) {
		writeError(w, http.StatusConflict, fmt.Sprintf("%v; each of its events would be sent twice: wait for it to finish, or cancel it first (dzhook replay cancel %s %s, or DELETE /v1/subscriptions/%s/replays/%s)",
			err, id, oe.Running.ID, id, oe.Running.ID))
		return
	}
	if err != nil {
		s.replayError(w, r, err)
		return
	}
	out := replayOf(rp)
	out.JournalFrom = journalFrom(win.Oldest, now, s.cfg.Retention)
	switch {
	case out.JournalFrom == nil:
		out.Note = "the journal holds no events: nothing to replay"
	case req.Since.Before(*out.JournalFrom):
		// The oldest event may be younger than journal.retention (a young
		// journal): the note says what the journal holds, not why.
		out.Note = fmt.Sprintf("the journal keeps events from %s (for journal.retention, and only those a subscription received then); the window holds %d of them",
			out.JournalFrom.Format(time.RFC3339), win.Matched)
	case win.Matched == 0:
		out.Note = "the window holds no events of these types (the journal keeps only the events a subscription received then)"
	}
	writeJSON(w, http.StatusAccepted, out)
}

// journalFrom is from when the journal keeps the events subscriptions
// received: its oldest event, or retention ago when that is later (nil:
// it holds none). The few events retention keeps longer (their delivery
// held while a subscription is paused, or retried by hand) are not
// where the journal starts: read as its start, one of them made a
// window reaching into what retention pruned get no note (found by a
// review).
func journalFrom(oldest *time.Time, now time.Time, retention time.Duration) *time.Time {
	if oldest == nil {
		return nil
	}
	from := oldest.UTC()
	if kept := now.Add(-retention).UTC(); retention > 0 && kept.After(from) {
		from = kept
	}
	return &from
}

// replayID validates the {rid} of the path.
func replayID(w http.ResponseWriter, r *http.Request) (string, bool) {
	rid := r.PathValue("rid")
	if !replayIDPattern.MatchString(rid) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("replay id %q is malformed (rpl_…)", clip(rid)))
		return "", false
	}
	return rid, true
}

func (s *Server) replays(w http.ResponseWriter, r *http.Request, _ query) {
	id, ok := pathSubscriptionID(w, r)
	if !ok {
		return
	}
	ctx, cancel := journalCtx(r)
	defer cancel()
	list, err := s.cfg.Replays.ListReplays(ctx, id, maxReplayList)
	if err != nil {
		s.replayError(w, r, err)
		return
	}
	// A subscription gone from this process is listed while the journal
	// keeps replays of it (replayOrGone says why).
	if len(list) == 0 && !s.cfg.Deliverer.HasSubscription(id) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such subscription: %q (nor a replay of it in the journal)", id))
		return
	}
	out := api.ReplayList{Replays: make([]api.Replay, 0, len(list))}
	for _, rp := range list {
		out.Replays = append(out.Replays, replayOf(rp))
	}
	writeJSON(w, http.StatusOK, out)
}

// replayOrGone validates the {id} and {rid} of a path naming one replay.
// The subscription need not be one this process delivers to: a replay
// fails when its subscription is gone from the registry (config.yaml
// edited, a runtime subscription deleted) and the deliveries it made
// wait in the journal, sent if the subscription comes back; the replay
// is shown, and a cancel stops them, meanwhile. (Both answered "no such
// subscription": the deliveries could not be stopped before the
// subscription was back. Found by a review.) The journal answers
// ErrNotFound when it holds no such replay of the subscription.
func replayOrGone(w http.ResponseWriter, r *http.Request) (id, rid string, ok bool) {
	if id, ok = pathSubscriptionID(w, r); !ok {
		return "", "", false
	}
	if rid, ok = replayID(w, r); !ok {
		return "", "", false
	}
	return id, rid, true
}

func (s *Server) replay(w http.ResponseWriter, r *http.Request, _ query) {
	id, rid, ok := replayOrGone(w, r)
	if !ok {
		return
	}
	ctx, cancel := journalCtx(r)
	defer cancel()
	rp, err := s.cfg.Replays.GetReplay(ctx, id, rid)
	if err != nil {
		s.replayError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, replayOf(rp))
}

func (s *Server) cancelReplay(w http.ResponseWriter, r *http.Request, _ query) {
	id, rid, ok := replayOrGone(w, r)
	if !ok {
		return
	}
	ctx, cancel := journalCtx(r)
	defer cancel()
	rp, _, err := s.cfg.Replays.CancelReplay(ctx, id, rid, client(r))
	if errors.Is(err, journal.ErrReplayFinished) {
		writeError(w, http.StatusConflict, fmt.Sprintf("replay %s is %s and none of its deliveries waits: nothing to cancel", rid, rp.State))
		return
	}
	if err != nil {
		s.replayError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, replayOf(rp))
}

func (s *Server) replayError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, journal.ErrNotFound) && !s.cfg.Deliverer.HasSubscription(r.PathValue("id")):
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such replay of subscription %q: %q (nor such a subscription)", r.PathValue("id"), r.PathValue("rid")))
	case errors.Is(err, journal.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such replay of subscription %q: %q", r.PathValue("id"), r.PathValue("rid")))
	case errors.Is(err, fanout.ErrReplaysOff):
		writeError(w, http.StatusNotFound, err.Error())
	default:
		s.journalError(w, r, err)
	}
}

func replayOf(rp journal.Replay) api.Replay {
	v := api.Replay{
		ID: rp.ID, Subscription: rp.Subscription, Since: rp.Since.UTC(), Until: rp.Until.UTC(),
		Events: rp.Patterns, Types: rp.Types, State: string(rp.State),
		Matched: rp.Matched, Scanned: rp.Scanned, Created: rp.Created,
		Delivered: rp.Deliveries[journal.Delivered], Failed: rp.Deliveries[journal.Failed],
		Pending: rp.Deliveries[journal.Pending] + rp.Deliveries[journal.Held], Skipped: rp.Deliveries[journal.Skipped] + rp.Deliveries[journal.Cancelled],
		RequestedBy: rp.RequestedBy, Reason: rp.Reason, CreatedAt: rp.CreatedAt.UTC(), FinishedAt: rp.FinishedAt,
	}
	if v.Events == nil {
		v.Events = []string{}
	}
	if v.Types == nil {
		v.Types = []string{}
	}
	return v
}
