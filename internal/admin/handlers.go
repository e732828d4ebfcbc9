package admin

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

var (
	deliveryIDPattern     = regexp.MustCompile(`^dlv_[0-9a-z_]{1,120}$`)
	subscriptionIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	states                = []string{"pending", "delivered", "failed", "skipped", "held"}
)

const (
	defaultLimit = 50
	maxLimit     = 500
	maxBody      = 16 << 10
)

func (s *Server) events(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"events": s.cfg.Catalog.Events()})
}

// subscriptionView adds the journal's backlog to a subscription's status.
type subscriptionView struct {
	fanout.SubscriptionStatus
	Pending int `json:"pending"`
	Failed  int `json:"failed"`
	Held    int `json:"held"`
	// OldestPendingSeconds is how long the oldest due delivery waits.
	OldestPendingSeconds float64 `json:"oldest_pending_seconds"`
}

func (s *Server) views(r *http.Request) ([]subscriptionView, error) {
	backlog, err := s.cfg.History.Backlogs(r.Context())
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var out []subscriptionView
	for _, st := range s.cfg.Deliverer.Subscriptions() {
		b := backlog[st.ID]
		v := subscriptionView{SubscriptionStatus: st, Pending: b.Pending, Failed: b.Failed, Held: b.Held}
		if !b.OldestPending.IsZero() && b.OldestPending.Before(now) {
			v.OldestPendingSeconds = now.Sub(b.OldestPending).Seconds()
		}
		out = append(out, v)
	}
	return out, nil
}

func (s *Server) subscriptions(w http.ResponseWriter, r *http.Request) {
	views, err := s.views(r)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"subscriptions": views})
}

// subscriptionID validates the {id} of the path.
func (s *Server) subscriptionID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if !subscriptionIDPattern.MatchString(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("subscription id %q is malformed (lowercase letters, digits, - and _)", clip(id)))
		return "", false
	}
	if !s.cfg.Deliverer.HasSubscription(id) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such subscription: %q", id))
		return "", false
	}
	return id, true
}

func (s *Server) subscription(w http.ResponseWriter, r *http.Request) {
	id, ok := s.subscriptionID(w, r)
	if !ok {
		return
	}
	views, err := s.views(r)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	for _, v := range views {
		if v.ID == id {
			writeJSON(w, http.StatusOK, v)
			return
		}
	}
	writeError(w, http.StatusNotFound, fmt.Sprintf("no such subscription: %q", id))
}

// clip shortens user input echoed in an error.
func clip(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// parseTime reads since/until: RFC 3339, or a duration meaning that long
// ago ("2h", "30m").
func parseTime(name, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if days, ok := strings.CutSuffix(v, "d"); ok { // 7d: days, which Go durations lack
		if n, err := strconv.Atoi(days); err == nil && n >= 0 && n <= 36500 {
			return now.AddDate(0, 0, -n), nil
		}
	}
	return time.Time{}, fmt.Errorf("%s: %q is neither an RFC 3339 time (2024-01-15T14:30:00Z) nor a duration ago (2h, 7d)", name, clip(v))
}

// rangeParams reads since and until.
func rangeParams(q map[string][]string) (since, until time.Time, err error) {
	now := time.Now()
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	if since, err = parseTime("since", get("since"), now); err != nil {
		return
	}
	if until, err = parseTime("until", get("until"), now); err != nil {
		return
	}
	if !since.IsZero() && !until.IsZero() && !since.Before(until) {
		err = fmt.Errorf("since must be before until")
	}
	return
}

var knownListParams = map[string]bool{"subscription": true, "status": true, "event": true, "since": true, "until": true, "limit": true, "cursor": true}

func (s *Server) deliveries(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	for k, v := range q {
		if !knownListParams[k] {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown parameter %q (use subscription, status, event, since, until, limit, cursor)", clip(k)))
			return
		}
		if len(v) > 1 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("parameter %q is given %d times; give it once", clip(k), len(v)))
			return
		}
	}
	f := journal.DeliveryFilter{Subscriptions: s.cfg.Deliverer.SubscriptionIDs(), Limit: defaultLimit}
	if v := q.Get("subscription"); v != "" {
		if !subscriptionIDPattern.MatchString(v) || !s.cfg.Deliverer.HasSubscription(v) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("subscription: no such subscription %q", clip(v)))
			return
		}
		f.Subscription = v
	}
	if v := q.Get("status"); v != "" {
		ok := false
		for _, st := range states {
			ok = ok || v == st
		}
		if !ok {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("status: %q is not one of %s", clip(v), strings.Join(states, ", ")))
			return
		}
		f.State = journal.State(v)
	}
	if v := q.Get("event"); v != "" {
		if !s.cfg.Catalog.Has(v) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("event: %q is not an event of the catalog", clip(v)))
			return
		}
		f.Event = v
	}
	var err error
	if f.Since, f.Until, err = rangeParams(q); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %q is not a number from 1 to %d", clip(v), maxLimit))
			return
		}
		f.Limit = n
	}
	f.Cursor = q.Get("cursor")
	if len(f.Cursor) > 512 {
		writeError(w, http.StatusBadRequest, "cursor: not a cursor from a previous page")
		return
	}
	list, next, err := s.cfg.History.ListDeliveries(r.Context(), f)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	if list == nil {
		list = []journal.Delivery{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"deliveries": list, "next_cursor": next})
}

// attemptView is an attempt with its response body as text (invalid UTF-8
// replaced; the exact bytes in base64 beside it then).
type attemptView struct {
	journal.Attempt
	ResponseBody       string `json:"response_body"`
	ResponseBodyBase64 string `json:"response_body_base64,omitempty"`
}

func (s *Server) deliveryID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if !deliveryIDPattern.MatchString(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("delivery id %q is malformed (dlv_…)", clip(id)))
		return "", false
	}
	return id, true
}

func (s *Server) delivery(w http.ResponseWriter, r *http.Request) {
	id, ok := s.deliveryID(w, r)
	if !ok {
		return
	}
	d, body, attempts, err := s.cfg.History.GetDelivery(r.Context(), id)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	views := make([]attemptView, 0, len(attempts))
	for _, a := range attempts {
		v := attemptView{Attempt: a, ResponseBody: strings.ToValidUTF8(string(a.ResponseBody), "\uFFFD")}
		if !utf8.Valid(a.ResponseBody) {
			v.ResponseBodyBase64 = base64.StdEncoding.EncodeToString(a.ResponseBody)
		}
		views = append(views, v)
	}
	out := map[string]any{"delivery": d, "attempts": views}
	if json.Valid(body) {
		out["payload"] = json.RawMessage(body)
	} else {
		out["payload"] = string(body)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) retry(w http.ResponseWriter, r *http.Request) {
	id, ok := s.deliveryID(w, r)
	if !ok {
		return
	}
	rep, err := s.cfg.Deliverer.RetryNow(r.Context(), id)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (s *Server) retryFailed(w http.ResponseWriter, r *http.Request) {
	id, ok := s.subscriptionID(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	for k, v := range q {
		if k != "since" && k != "until" {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown parameter %q (use since, until)", clip(k)))
			return
		}
		if len(v) > 1 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("parameter %q is given %d times; give it once", clip(k), len(v)))
			return
		}
	}
	since, until, err := rangeParams(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	n, err := s.cfg.Deliverer.RetryFailed(r.Context(), id, since, until)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"subscription": id, "scheduled": n})
}

func (s *Server) test(w http.ResponseWriter, r *http.Request) {
	id, ok := s.subscriptionID(w, r)
	if !ok {
		return
	}
	var body struct {
		Event string `json:"event"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, `body: want {"event": "request.created"}: `+clip(err.Error()))
		return
	}
	if body.Event == "" {
		body.Event = "request.created"
	}
	if !s.cfg.Catalog.Has(body.Event) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("event: %q is not an event of the catalog", clip(body.Event)))
		return
	}
	rep, err := s.cfg.Deliverer.SendTest(r.Context(), id, s.cfg.Sample(body.Event))
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (s *Server) pause(w http.ResponseWriter, r *http.Request) {
	id, ok := s.subscriptionID(w, r)
	if !ok {
		return
	}
	if err := s.cfg.Deliverer.Pause(r.Context(), id); err != nil {
		s.journalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"subscription": id, "paused": true})
}

func (s *Server) resume(w http.ResponseWriter, r *http.Request) {
	id, ok := s.subscriptionID(w, r)
	if !ok {
		return
	}
	n, err := s.cfg.Deliverer.Resume(r.Context(), id)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"subscription": id, "paused": false, "released": n})
}
