// Package api defines the bodies of dzhook's admin API, once, for the
// server (internal/admin), the CLI (cmd/dzhook) and the tests. The
// dashboard's JavaScript (internal/dashboard/static/app.js) reads the same
// names.
//
// These types are the wire format and nothing else: the server converts
// its domain types (fanout's subscription status and attempt reports, the
// journal's deliveries and attempts, the catalog's events) into them, so
// a change inside dzhook does not change what operators' scripts read.
// The order of the fields is the order of the keys on the wire; answers
// that were once encoded from maps keep their keys in alphabetical
// order. internal/admin/testdata/api.golden pins every answer byte for
// byte.
//
// Times are RFC 3339 in UTC. A pointer field is null when the value is
// absent (a delivery never attempted has "last_status": null); fields
// marked omitempty are left out instead.
package api

import (
	"encoding/json"
	"time"
)

// Error is the body of every answer that is not 2xx:
// {"error": "no such delivery: \"dlv_…\""}. The message names the
// problem, in words meant for the operator.
type Error struct {
	Message string `json:"error"`
}

// Health is the answer of /healthz ({"status": "ok"}) and /readyz
// ({"status": "ready"}, or 503 with {"status": "unavailable", "reason":
// "…"}). These two need no token.
type Health struct {
	// Reason says why dzhook is not ready; absent when it is.
	Reason string `json:"reason,omitempty"`
	// Status is "ok" (/healthz), "ready" or "unavailable" (/readyz).
	Status string `json:"status"`
}

// EventList is the answer of GET /v1/events: the event catalog, built-in
// events first, then the configuration's custom events.
type EventList struct {
	Events []Event `json:"events"`
}

// Event is an event type of the catalog.
type Event struct {
	// Name is the event type, e.g. "request.created".
	Name string `json:"name"`
	// Group is the part before the dot: "request", "sla", "user", or the
	// entity of a custom event.
	Group string `json:"group"`
	// Description says what fires the event.
	Description string `json:"description"`
	// Custom is true for events declared in the configuration (outbox
	// rows and logical decoding messages); absent for built-in events.
	Custom bool `json:"custom,omitempty"`
}

// SubscriptionList is the answer of GET /v1/subscriptions, in the order
// of the configuration.
type SubscriptionList struct {
	Subscriptions []Subscription `json:"subscriptions"`
	// CanCreate says whether POST /v1/subscriptions can create a
	// subscription now; CannotCreate says why not (no secrets.key to
	// encrypt its secret, no runtime subscriptions in this server), and
	// is absent when it can. The dashboard offers "Add webhook" by it:
	// the refusal came only at Save, after the form was filled in.
	CanCreate    bool   `json:"can_create"`
	CannotCreate string `json:"cannot_create,omitempty"`
}

// Subscription is a subscription as the API shows it: its configuration
// (the URL without credentials), its health, this process's recent
// statistics, and the journal's backlog. It is also the answer of
// GET /v1/subscriptions/{id}.
type Subscription struct {
	ID                 string   `json:"id"`
	URL                string   `json:"url"`
	Events             []string `json:"events"`
	Active             bool     `json:"active"`
	Paused             bool     `json:"paused"`
	QueueWhileInactive bool     `json:"queue_while_inactive"`
	// Filter is the subscription's filter expression; absent without one.
	Filter string `json:"filter,omitempty"`
	// State is the health state: "healthy", "failing" or "disabled".
	State         string     `json:"state"`
	LastSuccessAt *time.Time `json:"last_success_at"`
	LastFailureAt *time.Time `json:"last_failure_at"`
	// LastStatus is the HTTP status of the last attempt (any process's);
	// absent when it got none.
	LastStatus int `json:"last_status,omitempty"`
	// LastError describes the last failed attempt (any process's);
	// absent when none failed.
	LastError string `json:"last_error,omitempty"`
	// QueueDepth is how many deliveries wait in memory for a worker.
	QueueDepth int   `json:"queue_depth"`
	Stats      Stats `json:"stats"`
	// Pending, Failed and Held count the journal's deliveries in those
	// states.
	Pending int `json:"pending"`
	Failed  int `json:"failed"`
	Held    int `json:"held"`
	// OldestPendingSeconds is how long the oldest due delivery has waited
	// (0 when none is due).
	OldestPendingSeconds float64 `json:"oldest_pending_seconds"`
	// Ordering is the order the subscription keeps: "none" (parallel, no
	// order promised), "entity" (in stream order per key: a request, a
	// user) or "subscription" (one at a time, in stream order).
	Ordering string `json:"ordering"`
	// Format is the body's shape: "dzdesk" (the envelope), "slack",
	// "teams" or "discord"; Transform the CEL expression that makes the
	// body instead, absent without one.
	Format    string `json:"format"`
	Transform string `json:"transform,omitempty"`
	// Method is the HTTP method of its attempts: "POST" or "PUT".
	Method string `json:"method"`
	// RateLimit is its rate limit ("50/s", "600/m"); absent without one.
	// PacePerSecond is the pace this process keeps now (lower than the
	// limit after 429 answers, or shared with other processes) and
	// PausedUntil when a Retry-After holds its attempts; both absent
	// without a rate limit.
	RateLimit     string     `json:"rate_limit,omitempty"`
	PacePerSecond float64    `json:"pace_per_second,omitempty"`
	PausedUntil   *time.Time `json:"paused_until,omitempty"`
	// Source is where the subscription is defined: "config" (config.yaml,
	// read-only through the API) or "runtime" (created through the API).
	Source string `json:"source"`
	// Description is the runtime subscription's note; absent without one.
	Description string `json:"description,omitempty"`
	// Traceparent: its attempts carry a W3C traceparent header while
	// tracing is on; absent when false.
	Traceparent bool `json:"traceparent,omitempty"`
	// StandardWebhooks: its attempts also carry the Standard Webhooks
	// headers (webhook-id, webhook-timestamp, webhook-signature).
	StandardWebhooks bool `json:"standard_webhooks"`
	// PreviousSecretValidUntil and SignatureSwitchAt show a secret
	// rotation's overlap while it runs: when the previous secret stops
	// being valid (webhook-signature carries a signature with each until
	// then), and when X-DZDESK-Signature is made with the new secret (in
	// the past after "activate": "now"). Both absent without an overlap.
	// The secrets themselves are shown only by the answers that issue
	// them.
	PreviousSecretValidUntil *time.Time `json:"previous_secret_valid_until,omitempty"`
	SignatureSwitchAt        *time.Time `json:"signature_switch_at,omitempty"`
	// BlockedKeys counts, from the journal, the ordering keys whose head
	// waits for a retry and holds back the later deliveries of its key (0
	// without ordering); OldestBlockedAt is when the oldest of those heads
	// was created, null when no key is blocked.
	BlockedKeys     int        `json:"blocked_keys"`
	OldestBlockedAt *time.Time `json:"oldest_blocked_at"`
	// OldestBlockedKey and OldestBlockedHead name the oldest blocked
	// head's key, as stored ("" under ordering "subscription"), and the
	// head: the delivery to look at, or retry, to let the key go on.
	// Both absent when no key is blocked.
	OldestBlockedKey  *string `json:"oldest_blocked_key,omitempty"`
	OldestBlockedHead string  `json:"oldest_blocked_head,omitempty"`
	// OrderMemory is what this process holds of the subscription's keys
	// in memory; absent without ordering.
	OrderMemory *OrderMemory `json:"order_memory,omitempty"`
}

// OrderMemory is what the process that answers holds of an ordered
// subscription's keys. It shows the fast path: another process may hold
// other keys, and the journal (Subscription.BlockedKeys) is the authority.
type OrderMemory struct {
	// Keys is how many keys have deliveries in this process's memory or
	// known to wait in the journal.
	Keys int `json:"keys"`
	// Waiting is how many deliveries wait in memory behind an earlier
	// delivery of their key.
	Waiting int `json:"waiting"`
	// JournalKeys is how many of the keys wait in the journal (for a
	// retry, after a spill, while paused).
	JournalKeys int `json:"journal_keys"`
}

// Stats is a subscription's recent delivery history, as this process saw
// it since it started.
type Stats struct {
	// Delivered, Failed and Retried count attempts: 2xx, final failures,
	// failures to retry.
	Delivered uint64 `json:"delivered"`
	Failed    uint64 `json:"failed"`
	Retried   uint64 `json:"retried"`
	// SuccessRate is the share of 2xx among the attempts of the last hour,
	// from 0 to 1; -1 without attempts.
	SuccessRate float64 `json:"success_rate"`
	// P50MS and P99MS are response times of the last 512 attempts, in
	// milliseconds.
	P50MS float64 `json:"p50_ms"`
	P99MS float64 `json:"p99_ms"`
	// PerMinute is the last 60 minutes, oldest first.
	PerMinute []MinuteCount `json:"per_minute"`
}

// MinuteCount is one minute of a subscription's chart.
type MinuteCount struct {
	// Minute is the minute's start.
	Minute    time.Time `json:"minute"`
	Delivered int       `json:"delivered"`
	Failed    int       `json:"failed"`
}

// DeliveryList is the answer of GET /v1/deliveries: one page of the
// history, newest first.
type DeliveryList struct {
	Deliveries []Delivery `json:"deliveries"`
	// NextCursor is the cursor parameter of the next page; "" on the last
	// page.
	NextCursor string `json:"next_cursor"`
}

// Delivery is one delivery of an event to a subscription, as the history
// shows it.
type Delivery struct {
	// ID is the delivery id, "dlv_…", also sent as X-DZDESK-Delivery.
	ID      string `json:"id"`
	EventID string `json:"event_id"`
	// Event is the event type.
	Event        string `json:"event"`
	Subscription string `json:"subscription"`
	// State is "pending", "delivered", "failed", "skipped" or "held".
	State    string `json:"state"`
	Attempts int    `json:"attempts"`
	// NextAttemptAt is when a pending delivery is due; null in the other
	// states.
	NextAttemptAt *time.Time `json:"next_attempt_at"`
	// InFlight is true while an instance is attempting the delivery.
	InFlight bool `json:"in_flight"`
	// Test marks a delivery of `dzhook test` (POST …/test).
	Test          bool       `json:"test"`
	LastStatus    *int       `json:"last_status"`
	LastError     *string    `json:"last_error"`
	LastAttemptAt *time.Time `json:"last_attempt_at"`
	CreatedAt     time.Time  `json:"created_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	// OrderingKey is the key that orders the delivery among its
	// subscription's: a request or user id under ordering "entity", ""
	// under "subscription"; null when the delivery is unordered.
	OrderingKey *string `json:"ordering_key"`
	// ReplayID is the replay that made the delivery ("rpl_…"); absent
	// for the stream's deliveries and tests.
	ReplayID string `json:"replay_id,omitempty"`
}

// DeliveryDetail is the answer of GET /v1/deliveries/{id}: the delivery,
// its attempts oldest first, and the payload it sends.
type DeliveryDetail struct {
	Attempts []Attempt `json:"attempts"`
	Delivery Delivery  `json:"delivery"`
	// Payload is the signed body, as JSON when it is JSON, else as a JSON
	// string (invalid UTF-8 replaced).
	Payload json.RawMessage `json:"payload"`
	// Sent is the body the delivery sends when it is not the payload:
	// what its subscription's transform (or format) made of it at the
	// first attempt, kept for every retry and signed; absent otherwise.
	Sent json.RawMessage `json:"sent,omitempty"`
	// WaitedBehindIt lists, oldest first, the deliveries of the same key
	// that waited behind this one while it was unfinished (its retries
	// held them back); empty for an unordered delivery. At most 20 are
	// listed; WaitedBehindMore is true when there were more.
	WaitedBehindIt   []string `json:"waited_behind_it"`
	WaitedBehindMore bool     `json:"waited_behind_more,omitempty"`
	// WaitingBehind is, for a pending ordered delivery that is not its
	// key's head, the delivery it waits for: the head it is parked behind
	// while that one waits for its retry, else its key's first unfinished
	// delivery. Absent otherwise (a head, a finished, held or unordered
	// delivery).
	WaitingBehind string `json:"waiting_behind,omitempty"`
}

// Attempt is one attempt of a delivery.
type Attempt struct {
	// Attempt numbers the attempts of the delivery from 1.
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	// Trigger is what made the attempt: "auto", "manual" or "test".
	Trigger string `json:"trigger"`
	// Instance is the id of the dzhook instance that made the attempt
	// (hostname-pid-random, as logged at its start); absent for
	// attempts journaled before dzhook recorded it.
	Instance string `json:"instance,omitempty"`
	// StatusCode is the receiver's HTTP status; null without an answer.
	StatusCode *int `json:"status_code"`
	DurationMS int  `json:"duration_ms"`
	// ErrorClass and Error say why the attempt failed; null when it
	// succeeded.
	ErrorClass *string `json:"error_class"`
	Error      *string `json:"error"`
	// ResponseBody is the start of the receiver's answer as text, invalid
	// UTF-8 replaced by U+FFFD.
	ResponseBody string `json:"response_body"`
	// ResponseBodyBase64 is the exact bytes of ResponseBody when they are
	// not valid UTF-8; absent otherwise.
	ResponseBodyBase64 string `json:"response_body_base64,omitempty"`
}

// AttemptReport is the answer of POST /v1/deliveries/{id}/retry and of
// POST /v1/subscriptions/{id}/test: what the attempt made on the
// operator's request got.
type AttemptReport struct {
	DeliveryID string `json:"delivery_id"`
	EventID    string `json:"event_id"`
	Attempt    int    `json:"attempt"`
	// StatusCode is the receiver's HTTP status; 0 without an answer.
	StatusCode int  `json:"status_code"`
	Delivered  bool `json:"delivered"`
	// DurationMS is how long the attempt took, in milliseconds.
	DurationMS   float64 `json:"duration_ms"`
	ResponseBody string  `json:"response_body"`
	// ErrorClass and Error say why the attempt failed; absent when it
	// did not.
	ErrorClass string `json:"error_class,omitempty"`
	Error      string `json:"error,omitempty"`
}

// TestRequest is the body of POST /v1/subscriptions/{id}/test. Unknown
// fields are refused.
type TestRequest struct {
	// Event is the type of the sample event to send. Defaults to
	// "request.created".
	Event string `json:"event"`
}

// RetryFailedResponse is the answer of
// POST /v1/subscriptions/{id}/retry-failed.
type RetryFailedResponse struct {
	// Scheduled is how many failed deliveries were scheduled for one more
	// attempt.
	Scheduled    int    `json:"scheduled"`
	Subscription string `json:"subscription"`
	// Held says why the scheduled deliveries wait instead of going out
	// now: "paused" or "disabled" (a 410 turned the subscription off):
	// they go out on resume; "inactive" (active: false): once it is
	// active again. Absent when they go out now.
	Held string `json:"held,omitempty"`
}

// PauseResponse is the answer of POST /v1/subscriptions/{id}/pause.
type PauseResponse struct {
	// Paused is true.
	Paused       bool   `json:"paused"`
	Subscription string `json:"subscription"`
	// NewDeliveries says what becomes of the events that arrive while it
	// is paused: NewHeld (queue_while_inactive: true) or NewSkipped.
	// Deliveries already in the journal wait for the resume either way.
	NewDeliveries string `json:"new_deliveries"`
}

// PauseResponse.NewDeliveries: an operator who paused expecting the
// events to wait must learn at the pause, not at the resume, that they
// are skipped (the default).
const (
	NewHeld    = "held"    // recorded as held; out on resume, oldest first
	NewSkipped = "skipped" // recorded as skipped, never sent
)

// ResumeResponse is the answer of POST /v1/subscriptions/{id}/resume.
type ResumeResponse struct {
	// Paused is false.
	Paused bool `json:"paused"`
	// Released is how many held deliveries were released.
	Released     int    `json:"released"`
	Subscription string `json:"subscription"`
}

// SubscriptionInput is the body of POST /v1/subscriptions (create) and
// PATCH /v1/subscriptions/{id} (change): a field left out keeps its value
// (PATCH) or its default (POST). ID and Secret are refused by PATCH (the
// secret changes through POST …/secret).
type SubscriptionInput struct {
	ID                 *string            `json:"id,omitempty"`
	URL                *string            `json:"url,omitempty"`
	Events             *[]string          `json:"events,omitempty"`
	Secret             *string            `json:"secret,omitempty"`
	Active             *bool              `json:"active,omitempty"`
	QueueWhileInactive *bool              `json:"queue_while_inactive,omitempty"`
	Filter             *string            `json:"filter,omitempty"`
	Headers            *map[string]string `json:"headers,omitempty"`
	StandardWebhooks   *bool              `json:"standard_webhooks,omitempty"`
	Ordering           *string            `json:"ordering,omitempty"`
	Transform          *string            `json:"transform,omitempty"`
	Format             *string            `json:"format,omitempty"`
	Method             *string            `json:"method,omitempty"`
	RateLimit          *string            `json:"rate_limit,omitempty"`
	Traceparent        *bool              `json:"traceparent,omitempty"`
	Description        *string            `json:"description,omitempty"`
}

// FieldProblem is one validation problem of a request body: the field
// (a JSON path such as "url" or "events[1]") and what is wrong with it.
type FieldProblem struct {
	Field   string `json:"field"`
	Problem string `json:"problem"`
}

// ValidationErrors is the 400 answer to a body with problems: every one,
// with its field. Message sums them up in one line, so that a client that
// reads only "error" (as it does for every other answer that is not 2xx)
// still shows what is wrong.
type ValidationErrors struct {
	Message string         `json:"error"`
	Errors  []FieldProblem `json:"errors"`
}

// CreatedSubscription is the 201 answer to POST /v1/subscriptions: the
// subscription, and its secret, shown in this answer only.
type CreatedSubscription struct {
	Subscription
	Secret string `json:"secret"`
}

// SecretRotation is the body of POST /v1/subscriptions/{id}/secret.
type SecretRotation struct {
	// Secret is the new secret; generated when absent.
	Secret *string `json:"secret,omitempty"`
	// Overlap is how long the old secret stays valid, as a Go duration
	// ("24h", the default).
	Overlap *string `json:"overlap,omitempty"`
	// Activate says when X-DZDESK-Signature (one signature) switches to
	// the new secret: "now" or "end_of_overlap" (the default). Standard
	// Webhooks deliveries carry both signatures during the overlap.
	Activate *string `json:"activate,omitempty"`
}

// RotatedSecret is the answer to a rotation: the new secret, shown once.
type RotatedSecret struct {
	Secret string `json:"secret"`
	// PreviousValidUntil is when the old secret, and those an earlier
	// rotation's overlap still kept, stop being used.
	PreviousValidUntil time.Time `json:"previous_valid_until"`
	// SignatureSwitchAt is when X-DZDESK-Signature uses the new secret.
	SignatureSwitchAt time.Time `json:"signature_switch_at"`
}

// Deleted is the answer to DELETE /v1/subscriptions/{id}.
type Deleted struct {
	ID string `json:"id"`
	// Cancelled counts the pending and held deliveries cancelled.
	Cancelled int `json:"cancelled"`
}

// AuditEntry is one change to the subscriptions (GET /v1/audit).
type AuditEntry struct {
	ID           int64     `json:"id"`
	At           time.Time `json:"at"`
	Action       string    `json:"action"` // create, update, rotate, delete, pause, resume
	Subscription string    `json:"subscription"`
	// Fields names the fields changed, never their secret values.
	Fields []string `json:"fields,omitempty"`
	// Client is the address the request came from.
	Client string `json:"client"`
}

// AuditPage is the answer to GET /v1/audit, newest first.
type AuditPage struct {
	Entries []AuditEntry `json:"entries"`
	// NextCursor continues the listing; absent at the end.
	NextCursor string `json:"next_cursor,omitempty"`
}

// ReplayRequest is the body of POST /v1/subscriptions/{id}/replay: re-send
// the journaled events of [since, until) to the subscription.
type ReplayRequest struct {
	// Since is required: an RFC 3339 time, or a duration ago ("24h", "7d").
	Since string `json:"since"`
	// Until is the end of the window, excluded; now when absent.
	Until string `json:"until,omitempty"`
	// Events are event types or globs ("request.*"); every event the
	// subscription receives when absent.
	Events []string `json:"events,omitempty"`
}

// Replay is a replay and its progress: the answer of POST …/replay (202),
// GET /v1/subscriptions/{id}/replays/{rid} and of a cancel.
type Replay struct {
	// ID is "rpl_…".
	ID           string    `json:"id"`
	Subscription string    `json:"subscription"`
	Since        time.Time `json:"since"`
	Until        time.Time `json:"until"`
	// Events are the globs asked for ([] for all); Types the event types
	// they select among the subscription's.
	Events []string `json:"events"`
	Types  []string `json:"types"`
	// State is "running" (making deliveries), "done" (all made; see the
	// counts for how far they got), "cancelled" or "failed".
	State string `json:"state"`
	// Matched counts the window's events of those types when the replay
	// was asked for; Scanned those looked at so far; Created the
	// deliveries made (the subscription's filter may leave some out).
	Matched int `json:"matched"`
	Scanned int `json:"scanned"`
	Created int `json:"created"`
	// The replay's deliveries by state: Pending includes held ones;
	// Skipped are those a cancel stopped.
	Delivered   int        `json:"delivered"`
	Failed      int        `json:"failed"`
	Pending     int        `json:"pending"`
	Skipped     int        `json:"skipped"`
	RequestedBy string     `json:"requested_by"`
	Reason      string     `json:"reason,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	FinishedAt  *time.Time `json:"finished_at"`
	// JournalFrom (POST only) is from when the journal keeps events: its
	// oldest event, or journal.retention ago when that is later (an
	// event kept longer, its delivery still waiting, does not count);
	// Note says when the window starts before it (journal.retention
	// pruned the rest) or holds nothing.
	JournalFrom *time.Time `json:"journal_from,omitempty"`
	Note        string     `json:"note,omitempty"`
}

// ReplayList is the answer of GET /v1/subscriptions/{id}/replays: the
// latest replays, newest first.
type ReplayList struct {
	Replays []Replay `json:"replays"`
}
