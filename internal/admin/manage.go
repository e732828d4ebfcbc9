package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/journal"
)

// The endpoints of the runtime subscriptions (create, change, delete,
// rotate the secret) and of the audit trail. They hand the request to the
// Manager and answer its errors: *ValidationError 400 with every problem,
// *ConflictError 409, ErrNotFound 404, anything else as a journal error.
// A secret is shown in two answers only (the creation's and the
// rotation's) and is never logged.

// changeTimeout bounds a change: it writes the journal and applies the
// change in this process (a delete also cancels the subscription's
// pending deliveries, which can be many), and an operator's action on the
// deliveries (pause, resume, retry-failed). Config.changeTimeout changes
// it for the tests.
const changeTimeout = 30 * time.Second

// errNoManager is the answer of the endpoints of runtime subscriptions on
// a server without a Manager.
const errNoManager = "runtime subscriptions are not available in this server: subscriptions are defined in config.yaml only"

// manager returns the Manager, or answers 501 without one: the server
// was built without it, which no request can change.
func (s *Server) manager(w http.ResponseWriter) (Manager, bool) {
	if s.cfg.Manager == nil {
		writeError(w, http.StatusNotImplemented, errNoManager)
		return nil, false
	}
	return s.cfg.Manager, true
}

// client is the address a request came from, for the audit trail: the
// host of the connection's peer. X-Forwarded-For is not read: any client
// can send it, and dzhook does not know which proxies, if any, stand in
// front of it, so it would let a client write any address it likes in the
// trail.
func client(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// record adds a pause or resume to the audit trail. It is done: a trail
// that cannot be written is logged, not answered.
func (s *Server) record(r *http.Request, action, id string) {
	if s.cfg.Manager == nil {
		return
	}
	// The pause is made even if the client has gone: record it anyway.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), journalTimeout)
	defer cancel()
	if err := s.cfg.Manager.Record(ctx, action, id, client(r), nil); err != nil {
		s.log.Error("audit trail not written", "action", action, "subscription", id, "err", err)
	}
}

// managerError answers an error of the Manager.
func (s *Server) managerError(w http.ResponseWriter, r *http.Request, err error) {
	var ve *ValidationError
	var ce *ConflictError
	switch {
	case errors.As(err, &ve):
		writeProblems(w, ve.Problems)
	case errors.As(err, &ce):
		writeError(w, http.StatusConflict, ce.Message)
	case errors.Is(err, ErrNotFound):
		msg := "no such subscription"
		if id := r.PathValue("id"); id != "" {
			msg += fmt.Sprintf(": %q", id)
		}
		writeError(w, http.StatusNotFound, msg)
	case r.Method != http.MethodGet && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || journal.TookTooLong(err)):
		// The journal may have taken the change before the time ran out.
		writeError(w, http.StatusServiceUnavailable, "timed out: the journal could not be reached in time; the change may have been made (see GET /v1/audit)")
	default:
		s.journalError(w, r, err)
	}
}

// writeProblems answers 400 with every problem of a body.
func writeProblems(w http.ResponseWriter, ps []api.FieldProblem) {
	out := api.ValidationErrors{Errors: ps}
	if out.Errors == nil {
		out.Errors = []api.FieldProblem{} // [] rather than null
	}
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = p.Field + ": " + p.Problem
	}
	switch len(ps) {
	case 0:
		out.Message = "the body has problems"
	case 1:
		out.Message = parts[0]
	default:
		out.Message = fmt.Sprintf("%d problems: %s", len(ps), strings.Join(parts, "; "))
	}
	writeJSON(w, http.StatusBadRequest, out)
}

// readSubscriptionBody reads the body of a create or change: the
// api.SubscriptionInput, and the names of the fields given. A field given
// as null is refused (it would read as left out).
func readSubscriptionBody(w http.ResponseWriter, r *http.Request) (api.SubscriptionInput, map[string]bool, error) {
	var in api.SubscriptionInput
	raw, err := readRaw(w, r)
	if err != nil {
		return in, nil, err
	}
	// A null would read as "left out": say what is meant instead, before
	// decodeObject's general refusal of it.
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) == nil {
		for k, v := range fields {
			if string(v) == "null" {
				return in, nil, fmt.Errorf("%q is null: leave the field out to keep its value, or give one", clip(k))
			}
		}
	}
	if err := decodeObject(raw, &in); err != nil {
		return in, nil, err
	}
	given := make(map[string]bool, len(fields))
	for k := range fields {
		given[k] = true
	}
	return in, given, nil
}

const subscriptionBodyWant = `{"url": "https://…", "events": ["request.*"], …}`

func (s *Server) createSubscription(w http.ResponseWriter, r *http.Request, _ query) {
	m, ok := s.manager(w)
	if !ok {
		return
	}
	in, _, err := readSubscriptionBody(w, r)
	if err != nil {
		bodyError(w, subscriptionBodyWant, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.changeTimeout)
	defer cancel()
	out, err := m.CreateSubscription(ctx, in, client(r))
	if err != nil {
		s.managerError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/subscriptions/"+url.PathEscape(out.ID))
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) updateSubscription(w http.ResponseWriter, r *http.Request, _ query) {
	m, ok := s.manager(w)
	if !ok {
		return
	}
	id, ok := pathSubscriptionID(w, r)
	if !ok {
		return
	}
	in, given, err := readSubscriptionBody(w, r)
	if err != nil {
		bodyError(w, subscriptionBodyWant, err)
		return
	}
	var ps []api.FieldProblem
	if given["id"] {
		ps = append(ps, api.FieldProblem{Field: "id", Problem: "cannot be changed: create a new subscription and delete this one"})
	}
	if given["secret"] {
		ps = append(ps, api.FieldProblem{Field: "secret", Problem: "is changed by rotation: POST /v1/subscriptions/" + id + "/secret"})
	}
	if len(ps) > 0 {
		writeProblems(w, ps)
		return
	}
	if len(given) == 0 {
		writeError(w, http.StatusBadRequest, "body: no field to change; give the fields to change, e.g. {\"active\": false}")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.changeTimeout)
	defer cancel()
	out, err := m.UpdateSubscription(ctx, id, in, client(r))
	if err != nil {
		s.managerError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) deleteSubscription(w http.ResponseWriter, r *http.Request, _ query) {
	m, ok := s.manager(w)
	if !ok {
		return
	}
	id, ok := pathSubscriptionID(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.changeTimeout)
	defer cancel()
	out, err := m.DeleteSubscription(ctx, id, client(r))
	if err != nil {
		s.managerError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) rotateSecret(w http.ResponseWriter, r *http.Request, _ query) {
	m, ok := s.manager(w)
	if !ok {
		return
	}
	id, ok := pathSubscriptionID(w, r)
	if !ok {
		return
	}
	const want = `{"secret": "…", "overlap": "24h", "activate": "end_of_overlap"}, or no body`
	raw, err := readRaw(w, r)
	if err != nil {
		bodyError(w, want, err)
		return
	}
	var in api.SecretRotation
	if len(strings.TrimSpace(string(raw))) > 0 { // no body: every default
		if err := decodeObject(raw, &in); err != nil {
			bodyError(w, want, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.changeTimeout)
	defer cancel()
	out, err := m.RotateSecret(ctx, id, in, client(r))
	if err != nil {
		s.managerError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) audit(w http.ResponseWriter, r *http.Request, q query) {
	m, ok := s.manager(w)
	if !ok {
		return
	}
	limit := defaultLimit
	if v := q["limit"]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %q is not a number from 1 to %d", clip(v), maxLimit))
			return
		}
		limit = n
	}
	cursor := q["cursor"]
	if len(cursor) > 512 {
		writeError(w, http.StatusBadRequest, "cursor: not a cursor from a previous page")
		return
	}
	ctx, cancel := journalCtx(r)
	defer cancel()
	page, err := m.Audit(ctx, limit, cursor)
	if err != nil {
		s.managerError(w, r, err)
		return
	}
	if page.Entries == nil {
		page.Entries = []api.AuditEntry{} // [] rather than null
	}
	writeJSON(w, http.StatusOK, page)
}
