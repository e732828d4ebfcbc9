package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
)

var (
	subscriptionIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	states                = statesOf(journal.States)
)

const (
	defaultLimit = 50
	maxLimit     = 500
	maxBody      = 16 << 10
	// maxOrderingKey bounds the ordering_key filter, in bytes: a stored
	// key is at most 256 bytes (mapping.MaxKey), a replay's with its
	// "replay:<id>:" before it.
	maxOrderingKey = 512
	// maxWaitedBehind is how many of the deliveries that waited behind an
	// ordered one its detail lists.
	maxWaitedBehind = 20
)

func statesOf(js []journal.State) []string {
	out := make([]string, len(js))
	for i, st := range js {
		out[i] = string(st)
	}
	return out
}

func (s *Server) events(w http.ResponseWriter, _ *http.Request, _ query) {
	events := s.cfg.Catalog.Events()
	out := api.EventList{Events: make([]api.Event, 0, len(events))}
	for _, e := range events {
		out.Events = append(out.Events, eventOf(e))
	}
	writeJSON(w, http.StatusOK, out)
}

// eventSchema answers an event's JSON Schema document as
// application/schema+json, or 404 for an event that is not in the catalog
// or a custom event declared without a schema.
func (s *Server) eventSchema(w http.ResponseWriter, r *http.Request, _ query) {
	name := r.PathValue("name")
	doc, ok := s.cfg.Schemas.Document(name)
	if !ok || !s.cfg.Catalog.Has(name) {
		if e, known := s.cfg.Catalog.Lookup(name); known && e.Custom {
			writeError(w, http.StatusNotFound, fmt.Sprintf("custom event %q is declared without a schema (custom_events[].schema)", name))
			return
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("no event %q (GET /v1/events lists them)", clip(name)))
		return
	}
	w.Header().Set("Content-Type", "application/schema+json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(doc)
}

// journalTimeout bounds each read of the journal an API request makes: a
// journal that does not answer (its packets dropped) gets a 503 naming it,
// not a request that hangs.
const journalTimeout = 5 * time.Second

// attemptTimeout bounds an action that makes an attempt and answers with
// its outcome (a retry, a test send): the journal's claim, the attempt
// (up to delivery.timeout, which validation holds to at most 50 s,
// config.MaxDeliveryTimeout) and its journaling, under the server's 60 s
// WriteTimeout, so a journal that stops answering gets a 503, not a
// request that hangs. Config.attemptTimeout changes it for the tests.
const attemptTimeout = 55 * time.Second

// journalCtx is the context of one journal read for a request.
func journalCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), journalTimeout)
}

// views returns every subscription with its backlog in the journal.
func (s *Server) views(r *http.Request) ([]api.Subscription, error) {
	ctx, cancel := journalCtx(r)
	defer cancel()
	backlog, err := s.cfg.History.Backlogs(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var out []api.Subscription
	for _, st := range s.cfg.Deliverer.Subscriptions() {
		out = append(out, subscriptionOf(st, backlog[st.ID], now))
	}
	return out, nil
}

func (s *Server) subscriptions(w http.ResponseWriter, r *http.Request, _ query) {
	views, err := s.views(r)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	list := api.SubscriptionList{Subscriptions: views, CanCreate: true}
	if err := s.canCreate(); err != nil {
		list.CanCreate, list.CannotCreate = false, err.Error()
	}
	writeJSON(w, http.StatusOK, list)
}

// canCreate is nil when POST /v1/subscriptions can create a
// subscription, else why not.
func (s *Server) canCreate() error {
	if s.cfg.Manager == nil {
		return errors.New(errNoManager)
	}
	return s.cfg.Manager.CanCreate()
}

// pathSubscriptionID validates the form of the {id} of the path.
func pathSubscriptionID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if !subscriptionIDPattern.MatchString(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("subscription id %q is malformed (lowercase letters, digits, - and _)", clip(id)))
		return "", false
	}
	return id, true
}

// subscriptionID validates the {id} of the path: a subscription this
// process delivers to.
func (s *Server) subscriptionID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id, ok := pathSubscriptionID(w, r)
	if !ok {
		return "", false
	}
	if !s.cfg.Deliverer.HasSubscription(id) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such subscription: %q", id))
		return "", false
	}
	return id, true
}

func (s *Server) subscription(w http.ResponseWriter, r *http.Request, _ query) {
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

// ParseSpan reads a length of time as the API takes one: a Go duration
// ("90m", "24h") or whole days ("7d", which Go durations lack; a day is
// 24h, at most 36500 of them). since/until (that long ago) and a secret
// rotation's overlap read it alike: an overlap of 7d was refused while
// since=7d was taken.
func ParseSpan(v string) (time.Duration, bool) {
	if d, err := time.ParseDuration(v); err == nil {
		return d, true
	}
	if days, ok := strings.CutSuffix(v, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 && n <= 36500 {
			return time.Duration(n) * 24 * time.Hour, true
		}
	}
	return 0, false
}

// parseTime reads since/until: RFC 3339, or a duration meaning that long
// ago ("2h", "30m"). Any time is a bound, the zero time too: an absent
// parameter is the only "no bound".
func parseTime(name, v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if d, ok := ParseSpan(v); ok && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%s: %q is neither an RFC 3339 time (2024-01-15T14:30:00Z) nor a duration ago (2h, 7d)", name, clip(v))
}

// rangeParams reads since and until; nil is a parameter not given.
func rangeParams(q query) (since, until *time.Time, err error) {
	now := time.Now()
	for _, p := range []struct {
		name string
		to   **time.Time
	}{{"since", &since}, {"until", &until}} {
		v, ok := q[p.name]
		if !ok {
			continue
		}
		t, err := parseTime(p.name, v, now)
		if err != nil {
			return nil, nil, err
		}
		*p.to = &t
	}
	if since != nil && until != nil && !since.Before(*until) {
		return nil, nil, fmt.Errorf("since must be before until")
	}
	return since, until, nil
}

func (s *Server) deliveries(w http.ResponseWriter, r *http.Request, q query) {
	f := journal.DeliveryFilter{Subscriptions: s.cfg.Deliverer.SubscriptionIDs(), Limit: defaultLimit}
	if v := q["subscription"]; v != "" {
		if !subscriptionIDPattern.MatchString(v) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("subscription: no such subscription %q", clip(v)))
			return
		}
		// One deleted or removed from config.yaml is listed while the
		// journal keeps its history (its cancelled deliveries).
		f.Subscription, f.Departed = v, !s.cfg.Deliverer.HasSubscription(v)
	}
	if v := q["status"]; v != "" {
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
	if v := q["event"]; v != "" {
		if !s.cfg.Catalog.Has(v) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("event: %q is not an event of the catalog", clip(v)))
			return
		}
		f.Event = v
	}
	if v := q["ordering_key"]; v != "" {
		if err := checkOrderingKey(v); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		f.OrderingKey = v
	}
	var err error
	if f.Since, f.Until, err = rangeParams(q); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if v := q["limit"]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %q is not a number from 1 to %d", clip(v), maxLimit))
			return
		}
		f.Limit = n
	}
	f.Cursor = q["cursor"]
	if len(f.Cursor) > 512 {
		writeError(w, http.StatusBadRequest, "cursor: not a cursor from a previous page")
		return
	}
	ctx, cancel := journalCtx(r)
	defer cancel()
	list, next, err := s.cfg.History.ListDeliveries(ctx, f)
	if errors.Is(err, journal.ErrNoHistory) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("subscription: no such subscription %q", clip(f.Subscription)))
		return
	}
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	out := api.DeliveryList{Deliveries: make([]api.Delivery, 0, len(list)), NextCursor: next} // [] rather than null
	for _, d := range list {
		out.Deliveries = append(out.Deliveries, deliveryOf(d))
	}
	writeJSON(w, http.StatusOK, out)
}

// checkOrderingKey refuses an ordering_key filter no stored key can
// equal: PostgreSQL's text holds neither invalid UTF-8 nor NUL, and
// would answer the query with an error (a 503) rather than nothing.
func checkOrderingKey(v string) error {
	switch {
	case len(v) > maxOrderingKey:
		return fmt.Errorf("ordering_key: %d bytes, over the %d an ordering key can have", len(v), maxOrderingKey)
	case !utf8.ValidString(v) || strings.ContainsRune(v, 0):
		return fmt.Errorf("ordering_key: %q is not text an ordering key can hold (invalid UTF-8 or NUL)", clip(v))
	}
	return nil
}

func (s *Server) deliveryID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if !ids.IsDeliveryID(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("delivery id %q is malformed (dlv_…)", clip(id)))
		return "", false
	}
	return id, true
}

func (s *Server) delivery(w http.ResponseWriter, r *http.Request, _ query) {
	id, ok := s.deliveryID(w, r)
	if !ok {
		return
	}
	ctx, cancel := journalCtx(r)
	defer cancel()
	d, body, attempts, err := s.cfg.History.GetDelivery(ctx, id)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	out := api.DeliveryDetail{Attempts: make([]api.Attempt, 0, len(attempts)), Delivery: deliveryOf(d), Payload: payloadOf(body),
		WaitedBehindIt: []string{}} // [] rather than null
	if d.Sent != nil {
		out.Sent = payloadOf(d.Sent)
	}
	if d.WaitingBehind != nil {
		out.WaitingBehind = *d.WaitingBehind
	}
	for _, a := range attempts {
		out.Attempts = append(out.Attempts, attemptOf(a))
	}
	if d.OrderingKey != nil { // an unordered delivery held nothing back
		// One more than shown tells whether the list is cut.
		waited, err := s.cfg.History.WaitedBehind(ctx, id, maxWaitedBehind+1)
		if err != nil {
			s.journalError(w, r, err)
			return
		}
		if len(waited) > maxWaitedBehind {
			waited, out.WaitedBehindMore = waited[:maxWaitedBehind], true
		}
		out.WaitedBehindIt = append(out.WaitedBehindIt, waited...)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) retry(w http.ResponseWriter, r *http.Request, _ query) {
	id, ok := s.deliveryID(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.attemptTimeout)
	defer cancel()
	rep, err := s.cfg.Deliverer.RetryNow(ctx, id)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, reportOf(rep))
}

func (s *Server) retryFailed(w http.ResponseWriter, r *http.Request, q query) {
	id, ok := s.subscriptionID(w, r)
	if !ok {
		return
	}
	since, until, err := rangeParams(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.changeTimeout)
	defer cancel()
	n, err := s.cfg.Deliverer.RetryFailed(ctx, id, since, until)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	out := api.RetryFailedResponse{Scheduled: n, Subscription: id}
	if n > 0 {
		// Scheduled, and held until a resume: the answer said
		// "scheduled" alone while nothing went out (found by a review).
		out.Held = heldBy(s.cfg.Deliverer, id)
	}
	writeJSON(w, http.StatusOK, out)
}

// heldBy says why a subscription's due deliveries wait (the
// dispatcher's Held): "paused", "inactive" (active: false), "disabled" (a
// 410 turned it off; the retry an operator makes once that receiver is
// fixed, said to go out now, waited for a resume: found by a review), or
// "" when they go out.
func heldBy(d Deliverer, id string) string {
	for _, st := range d.Subscriptions() {
		if st.ID == id {
			return st.Held
		}
	}
	return ""
}

func (s *Server) test(w http.ResponseWriter, r *http.Request, _ query) {
	id, ok := s.subscriptionID(w, r)
	if !ok {
		return
	}
	// api.TestRequest, with the event left out told from an empty one: an
	// empty name is a mistake (it sent request.created), not the default.
	var in struct {
		Event *string `json:"event"`
	}
	if err := readBody(w, r, &in); err != nil {
		bodyError(w, `{"event": "request.created"}`, err)
		return
	}
	body := api.TestRequest{Event: "request.created"}
	if in.Event != nil {
		if *in.Event == "" {
			writeError(w, http.StatusBadRequest, `event: is empty: give an event of the catalog, or leave it out for "request.created"`)
			return
		}
		body.Event = *in.Event
	}
	if !s.cfg.Catalog.Has(body.Event) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("event: %q is not an event of the catalog", clip(body.Event)))
		return
	}
	ev, err := s.cfg.Sample(body.Event)
	if se := (*SampleError)(nil); errors.As(err, &se) {
		writeError(w, http.StatusUnprocessableEntity, "event: "+se.Message)
		return
	} else if err != nil {
		writeError(w, http.StatusInternalServerError, "event: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.attemptTimeout)
	defer cancel()
	rep, err := s.cfg.Deliverer.SendTest(ctx, id, ev)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, reportOf(rep))
}

func (s *Server) pause(w http.ResponseWriter, r *http.Request, _ query) {
	id, ok := s.subscriptionID(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.changeTimeout)
	defer cancel()
	if err := s.cfg.Deliverer.Pause(ctx, id); err != nil {
		s.journalError(w, r, err)
		return
	}
	s.record(r, "pause", id)
	out := api.PauseResponse{Paused: true, Subscription: id, NewDeliveries: api.NewSkipped}
	if queuesWhileInactive(s.cfg.Deliverer, id) {
		out.NewDeliveries = api.NewHeld
	}
	writeJSON(w, http.StatusOK, out)
}

// queuesWhileInactive reports whether a subscription keeps, as held, the
// deliveries of events that arrive while it is paused or inactive
// (queue_while_inactive); without it they are skipped.
func queuesWhileInactive(d Deliverer, id string) bool {
	for _, st := range d.Subscriptions() {
		if st.ID == id {
			return st.QueueWhileInactive
		}
	}
	return false
}

func (s *Server) resume(w http.ResponseWriter, r *http.Request, _ query) {
	id, ok := s.subscriptionID(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.changeTimeout)
	defer cancel()
	n, err := s.cfg.Deliverer.Resume(ctx, id)
	if err != nil {
		s.journalError(w, r, err)
		return
	}
	s.record(r, "resume", id)
	writeJSON(w, http.StatusOK, api.ResumeResponse{Paused: false, Released: n, Subscription: id})
}
