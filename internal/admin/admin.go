// Package admin is dzhook's operator-facing HTTP server: the JSON API
// (subscriptions, delivery history, retries, test sends, pause and
// resume), /metrics, /healthz and /readyz, and the dashboard.
//
// The bodies of the requests and answers are the types of package api;
// the functions of convert.go build them from the dispatcher's, the
// journal's and the catalog's types.
//
// Every /v1 endpoint needs "Authorization: Bearer <admin.token>", compared
// in constant time, except the API's OpenAPI description (GET
// /v1/openapi.yaml, api/openapi.yaml, and /v1/openapi.json); /healthz, /readyz and the
// dashboard's static files are open, /metrics is open unless
// admin.metrics_public is false. Errors are JSON, {"error": "…"}, naming
// the problem: 400 for a bad parameter or body, 401 without the token, 404
// for an unknown delivery or subscription, 405 naming the methods a path
// has, 409 for a delivery being attempted right now or a change the
// current state refuses (a subscription defined in config.yaml, an id in
// use, no secrets key), 413 for a body over 16 KiB, 501 for runtime
// subscriptions on a server without them, 503 when the journal cannot be
// reached. A body with problems is a 400 that lists them with their fields
// as well: {"error": "…", "errors": [{"field": "url", "problem": "…"}]}.
// Bad input never gets a 500. A query string is read whole or refused: a
// pair Go's parser would drop (a ';', a bad escape), a parameter the
// endpoint does not read, one given twice or empty is a 400 naming it,
// before anything is done (request.go).
package admin

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	apidoc "github.com/dzdesk/dzhook/api"
	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/schemas"
)

// Deliverer is what the API needs from the dispatcher.
type Deliverer interface {
	Subscriptions() []fanout.SubscriptionStatus
	SubscriptionIDs() []string
	HasSubscription(id string) bool
	RetryNow(ctx context.Context, deliveryID string) (fanout.AttemptReport, error)
	RetryFailed(ctx context.Context, subscription string, since, until *time.Time) (int, error)
	SendTest(ctx context.Context, subscription string, ev fanout.Event) (fanout.AttemptReport, error)
	Pause(ctx context.Context, subscription string) error
	Resume(ctx context.Context, subscription string) (int, error)
}

// History is what the API needs from the journal.
type History interface {
	ListDeliveries(ctx context.Context, f journal.DeliveryFilter) ([]journal.Delivery, string, error)
	GetDelivery(ctx context.Context, id string) (journal.Delivery, []byte, []journal.Attempt, error)
	Backlogs(ctx context.Context) (map[string]journal.Backlog, error)
	WaitedBehind(ctx context.Context, id string, limit int) ([]string, error)
}

// Schemas is what the API needs from the events' JSON Schemas
// (*schemas.Set).
type Schemas interface {
	// Document returns an event's schema document, or false when it has
	// none.
	Document(name string) ([]byte, bool)
}

// Config is the input of New.
type Config struct {
	// Token is the bearer token of the API; empty refuses every /v1 call
	// (with a message saying how to set it).
	Token         string
	MetricsPublic bool
	Deliverer     Deliverer
	History       History
	Catalog       *catalog.Catalog
	// Sample builds a test event of a type. A *SampleError says why an
	// event has no test data (answered 422).
	Sample func(eventType string) (fanout.Event, error)
	// Ready reports why dzhook is not ready (nil when it is).
	Ready    func(ctx context.Context) error
	Registry *prometheus.Registry
	// Dashboard is served at /; nil serves none.
	Dashboard fs.FS
	// Manager creates, changes and deletes the runtime subscriptions and
	// keeps the audit trail; nil answers those endpoints 501.
	Manager Manager
	// Replays serves the replay endpoints (replay.go); nil leaves them out.
	Replays Replayer
	// Retention is journal.retention: a replay's journal_from is never
	// older than that long ago. 0: unknown, journal_from is the oldest
	// event.
	Retention time.Duration
	// Schemas holds the JSON Schemas of the events, served at
	// GET /v1/events/{name}/schema; nil serves the built-in events' only.
	Schemas Schemas
	Logger  *slog.Logger

	// changeTimeout and attemptTimeout bound an operator's change and an
	// action that makes an attempt (changeTimeout, attemptTimeout when
	// zero); the tests shorten them.
	changeTimeout, attemptTimeout time.Duration
}

// builtinSchemas serves the built-in events' schemas when Config.Schemas
// is nil.
type builtinSchemas struct{}

func (builtinSchemas) Document(name string) ([]byte, bool) { return schemas.Builtin(name) }

// Server is the admin HTTP server.
type Server struct {
	cfg Config
	mux *http.ServeMux
	log *slog.Logger
}

// New returns the server's handler.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Schemas == nil {
		cfg.Schemas = builtinSchemas{}
	}
	cfg.changeTimeout = cmp.Or(cfg.changeTimeout, changeTimeout)
	cfg.attemptTimeout = cmp.Or(cfg.attemptTimeout, attemptTimeout)
	s := &Server{cfg: cfg, mux: http.NewServeMux(), log: cfg.Logger.With("component", "admin")}
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	metrics := http.Handler(http.NotFoundHandler())
	if cfg.Registry != nil {
		metrics = promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{})
	}
	if !cfg.MetricsPublic {
		metrics = s.auth(metrics)
	}
	s.mux.Handle("GET /metrics", metrics)
	// Each endpoint with the query parameters it reads and whether it
	// takes a body; anything else is refused (request.go).
	none := endpoint{}
	rng := endpoint{params: []string{"since", "until"}}
	list := endpoint{params: []string{"subscription", "status", "event", "ordering_key", "since", "until", "limit", "cursor"}}
	s.route("GET /v1/openapi.yaml", endpoint{public: true}, s.openapi)
	s.route("GET /v1/openapi.json", endpoint{public: true}, s.openapiJSON)
	s.route("GET /v1/events", none, s.events)
	s.route("GET /v1/events/{name}/schema", none, s.eventSchema)
	body := endpoint{body: true}
	s.route("GET /v1/subscriptions", none, s.subscriptions)
	s.route("POST /v1/subscriptions", body, s.createSubscription)
	s.route("GET /v1/subscriptions/{id}", none, s.subscription)
	s.route("PATCH /v1/subscriptions/{id}", body, s.updateSubscription)
	s.route("DELETE /v1/subscriptions/{id}", none, s.deleteSubscription)
	s.route("POST /v1/subscriptions/{id}/secret", body, s.rotateSecret)
	s.route("POST /v1/subscriptions/{id}/retry-failed", rng, s.retryFailed)
	s.route("POST /v1/subscriptions/{id}/test", body, s.test)
	s.route("POST /v1/subscriptions/{id}/pause", none, s.pause)
	s.route("POST /v1/subscriptions/{id}/resume", none, s.resume)
	s.route("GET /v1/deliveries", list, s.deliveries)
	s.route("GET /v1/deliveries/{id}", none, s.delivery)
	s.route("POST /v1/deliveries/{id}/retry", none, s.retry)
	s.route("GET /v1/audit", endpoint{params: []string{"limit", "cursor"}}, s.audit)
	if cfg.Replays != nil {
		s.replayRoutes()
	}
	if cfg.Dashboard != nil {
		s.mux.Handle("GET /", dashboardHandler(cfg.Dashboard))
	}
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		// A bug must not take the process down, and must not show a stack
		// to the client.
		if v := recover(); v != nil {
			s.log.Error("admin handler panicked", "path", r.URL.Path, "panic", v)
			writeError(w, http.StatusInternalServerError, "internal error")
		}
	}()
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	if strings.HasPrefix(r.URL.Path, "/v1/") {
		// Unknown /v1 paths and methods get JSON errors, not the mux's
		// text (and not the dashboard).
		// An unclean path (/v1/deliveries/., …/..) is answered 404 too:
		// the mux redirected it to another route (307), which a client
		// following redirects read as that route's answer (a
		// subscription printed as a replay).
		if _, pattern := s.mux.Handler(r); pattern == "" || !strings.Contains(pattern, "/v1/") || !cleanPath(r.URL.Path) {
			s.auth(http.HandlerFunc(s.noRoute)).ServeHTTP(w, r)
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

// cleanPath reports whether p is as the mux would clean it: no ., ..
// or empty segments.
func cleanPath(p string) bool {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// Serve serves on ln until ctx ends, then shuts down gracefully: requests
// in progress get 5 seconds to finish. It returns nil after a shutdown,
// else the error that stopped the server. The caller binds ln, so that an
// address that cannot be bound is an error at start.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 60 * time.Second, IdleTimeout: 2 * time.Minute}
	s.log.Info("admin API listening", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}

// noRoute answers a /v1 request no route takes: 405 naming the methods
// the path has, else 404.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	if path.Clean(r.URL.Path) != r.URL.Path {
		// The mux would redirect a probe of an unclean path elsewhere.
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
		return
	}
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete} {
		if m == r.Method {
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); strings.Contains(pattern, "/v1/") {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		use := allow[len(allow)-1]
		if len(allow) > 1 {
			use = strings.Join(allow[:len(allow)-1], ", ") + " or " + use
		}
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, use))
		return
	}
	writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
}

// auth requires the bearer token, compared in constant time: digests of
// the two are compared, so not even the token's length shows in the time
// an answer takes.
func (s *Server) auth(next http.Handler) http.Handler {
	off := s.cfg.Token == ""
	want := sha256.Sum256([]byte(s.cfg.Token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if off {
			writeError(w, http.StatusUnauthorized, "the admin API is off: set admin.token (or DZHOOK_ADMIN_TOKEN) to use it")
			return
		}
		got, ok := bearer(r.Header.Get("Authorization"))
		sum := sha256.Sum256([]byte(got))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="dzhook"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token (Authorization: Bearer <admin.token>)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearer returns the token of an Authorization header of the Bearer
// scheme, whose name is matched in any case (auth schemes are
// case-insensitive, RFC 9110 11.1), as net/http's BasicAuth does.
func bearer(auth string) (string, bool) {
	const prefix = "Bearer "
	if len(auth) < len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return "", false
	}
	return auth[len(prefix):], true
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, api.Health{Status: "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := s.cfg.Ready(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, api.Health{Reason: err.Error(), Status: "unavailable"})
			return
		}
	}
	writeJSON(w, http.StatusOK, api.Health{Status: "ready"})
}

// openapi serves api/openapi.yaml, the description of this API, without
// the token: clients are generated from it before they have one.
func (s *Server) openapi(w http.ResponseWriter, _ *http.Request, _ query) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(apidoc.YAML())
}

// openapiJSON serves the description as JSON, for tools that read only
// JSON.
func (s *Server) openapiJSON(w http.ResponseWriter, _ *http.Request, _ query) {
	raw, err := apidoc.JSON()
	if err != nil { // the embedded file is tested: not reached
		s.log.Error("openapi.json", "err", err)
		writeError(w, http.StatusInternalServerError, "internal error")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(raw)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, api.Error{Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// Compact, and without HTML escapes: a delivery's payload is shown
	// byte for byte as it was sent (the dashboard re-indents its text),
	// where "<" came out as "\u003c". Every answer is application/json,
	// never read as HTML.
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// journalError answers an error of the journal or dispatcher.
func (s *Server) journalError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, journal.ErrNotFound):
		msg := "no such delivery"
		if id := r.PathValue("id"); id != "" && strings.HasPrefix(r.URL.Path, "/v1/deliveries/") {
			msg += ": " + strconv.Quote(id)
		}
		writeError(w, http.StatusNotFound, msg)
	case errors.Is(err, journal.ErrBusy):
		writeError(w, http.StatusConflict, "this delivery is being attempted right now; try again in a moment")
	case errors.Is(err, journal.ErrEarlierSubscription), errors.Is(err, journal.ErrHeld), errors.As(err, new(*journal.BehindError)):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, journal.ErrBadCursor):
		writeError(w, http.StatusBadRequest, "cursor: not a cursor from a previous page")
	case errors.Is(err, fanout.ErrUnknownSubscription):
		writeError(w, http.StatusNotFound, err.Error())
	case journal.TookTooLong(err) && r.Context().Err() != nil && !errors.Is(r.Context().Err(), context.DeadlineExceeded):
		// The client left (a closed tab, the dashboard's own abort): its
		// statement was cancelled with it. Nothing was slow; no WARN.
		writeError(w, http.StatusServiceUnavailable, "the request was cancelled before the journal answered")
	case journal.TookTooLong(err):
		// A statement_timeout, or the request's deadline, which cancels
		// the statement in the server: the journal is there, and slow;
		// "could not be reached" sent the operator to look for an outage.
		s.log.Warn("admin request: the journal took too long to answer", "err", err)
		msg := "the journal took too long to answer; try again, or narrow the filters"
		if r.Method != http.MethodGet {
			msg = "the journal took too long to answer; the action may have been made: look before trying again"
		}
		writeError(w, http.StatusServiceUnavailable, msg)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		msg := "timed out waiting for the journal"
		if r.Method != http.MethodGet {
			msg += " (or the receiver); the action may have been made: look before trying again"
		}
		writeError(w, http.StatusServiceUnavailable, msg)
	default:
		s.log.Error("admin request failed", "err", err)
		writeError(w, http.StatusServiceUnavailable, "the journal could not be reached; see dzhook's log")
	}
}

// Manager changes the runtime subscriptions (stored in the journal,
// shared by every process on it) and keeps the audit trail. Its errors:
// *ValidationError (400), *ConflictError (409: a config.yaml id, an id in
// use, no secrets key), ErrNotFound (404).
type Manager interface {
	CreateSubscription(ctx context.Context, in api.SubscriptionInput, client string) (api.CreatedSubscription, error)
	UpdateSubscription(ctx context.Context, id string, in api.SubscriptionInput, client string) (api.Subscription, error)
	DeleteSubscription(ctx context.Context, id, client string) (api.Deleted, error)
	RotateSecret(ctx context.Context, id string, in api.SecretRotation, client string) (api.RotatedSecret, error)
	// CanCreate is nil when CreateSubscription can create a subscription
	// now, else the *ConflictError it would answer (no secrets key).
	CanCreate() error
	// Record adds an entry to the audit trail (pause, resume).
	Record(ctx context.Context, action, subscription, client string, fields []string) error
	Audit(ctx context.Context, limit int, cursor string) (api.AuditPage, error)
}

// ValidationError lists every problem of a subscription body.
type ValidationError struct{ Problems []api.FieldProblem }

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.Field + ": " + p.Problem
	}
	return strings.Join(parts, "; ")
}

// ConflictError is a request the current state refuses (409).
type ConflictError struct{ Message string }

func (e *ConflictError) Error() string { return e.Message }

// SampleError is an event that has no test data (422): the message
// names the setting that would give it.
type SampleError struct{ Message string }

func (e *SampleError) Error() string { return e.Message }

// ErrNotFound is an unknown subscription (404).
var ErrNotFound = errors.New("not found")
