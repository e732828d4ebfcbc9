// Package config loads and validates dzhook's configuration: a YAML file,
// DZHOOK_… environment overrides and ${NAME} references inside values. It
// is the only package that knows koanf.
//
// Loading is strict: an unknown key, a value of the wrong type, an
// unresolved ${NAME} and every semantic mistake are collected and reported
// together, each with its YAML path, so an operator fixes a file in one
// pass rather than one error per restart.
package config

import (
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/internal/transform"
)

// Defaults, in one place. The documentation of each field repeats them.
const (
	DefaultConfigPath        = "./config.yaml"
	DefaultSlot              = "dzhook"
	DefaultPublication       = "dzhook"
	DefaultJournalSchema     = journal.DefaultSchema
	DefaultRetention         = 30 * 24 * time.Hour
	DefaultHeartbeat         = fanout.DefaultHeartbeat
	DefaultTimeout           = fanout.DefaultTimeout
	DefaultResponseBodyLimit = fanout.DefaultBodyLimit
	DefaultConcurrency       = fanout.DefaultConcurrency
	DefaultQueueSize         = fanout.DefaultQueueSize
	DefaultAdminListen       = "127.0.0.1:8080"
	DefaultWarningPercent    = 75
	DefaultSLACheckInterval  = 5 * time.Second
	DefaultLogLevel          = "info"
	DefaultLogFormat         = "text"
	DefaultOutboxTable       = "dzhook_outbox"
	DefaultMessagePrefix     = "dzdesk"
)

// DefaultRetrySchedule is DZDESK's documented retry policy: attempt 1
// immediately, then after 1 minute, 5 minutes, 30 minutes and 2 hours.
// The delivery defaults are the components' own (fanout, journal): one
// source, which the configuration names.
var DefaultRetrySchedule = fanout.DefaultRetrySchedule

// Config is the whole configuration of one dzhook process.
type Config struct {
	// Source is the DZDESK database whose changes dzhook streams.
	Source Source `koanf:"source"`
	// Journal is where deliveries, attempts and checkpoints are kept.
	Journal Journal `koanf:"journal"`
	// Delivery governs every HTTP attempt.
	Delivery Delivery `koanf:"delivery"`
	// Admin is the HTTP API, dashboard and metrics server.
	Admin Admin `koanf:"admin"`
	// Notify is where the admin is told that a subscription changed state.
	Notify Notify `koanf:"notify"`
	// SLA configures the clock behind sla.warning and sla.breach.
	SLA SLA `koanf:"sla"`
	// Outbox configures the application-written events.
	Outbox Outbox `koanf:"outbox"`
	// Mapping says which tables and columns hold DZDESK's entities.
	// Defaults to the reference schema (deploy/sql/dzdesk-schema.sql).
	Mapping mapping.Config `koanf:"mapping"`
	// Log configures dzhook's own log lines.
	Log Log `koanf:"log"`
	// Secrets holds the keys that encrypt the secrets of subscriptions
	// created through the API, in the journal.
	Secrets Secrets `koanf:"secrets"`
	// Telemetry configures OpenTelemetry traces. Defaults to off.
	Telemetry Telemetry `koanf:"telemetry"`
	// CustomEvents declares events beyond DZDESK's eleven, emitted through
	// the outbox table or pg_logical_emit_message. Names look like
	// entity.action. Defaults to none.
	CustomEvents []CustomEvent `koanf:"custom_events"`
	// Subscriptions are the webhook endpoints and what each receives.
	Subscriptions []Subscription `koanf:"subscriptions"`
}

// Source is the DZDESK PostgreSQL database.
type Source struct {
	// DSN is a libpq connection string or URL for the DZDESK database.
	// The role needs REPLICATION (see deploy/sql/role.sql). Required.
	DSN Secret `koanf:"dsn"`
	// Slot is the logical replication slot dzhook owns: lower-case
	// letters, digits and _, at most 63 (PostgreSQL's rule for slot
	// names). Defaults to "dzhook".
	Slot string `koanf:"slot"`
	// Publication lists the tables dzhook reads. Defaults to "dzhook".
	Publication string `koanf:"publication"`
	// AutoSetup makes `dzhook run` create the publication and slot and set
	// REPLICA IDENTITY when they are missing, as `dzhook setup` does.
	// Defaults to true.
	AutoSetup bool `koanf:"auto_setup"`
}

// Journal is the durable store of events, deliveries and attempts.
type Journal struct {
	// DSN of the journal database. Defaults to source.dsn, so the journal
	// lives beside DZDESK's tables in its own schema.
	DSN Secret `koanf:"dsn"`
	// Schema holds the journal's tables. Defaults to "dzhook".
	Schema string `koanf:"schema"`
	// Retention is how long finished deliveries and their attempts are
	// kept, at least 1h (MinRetention). Defaults to 720h (30 days).
	Retention time.Duration `koanf:"retention"`
	// Heartbeat is how often this process tells the journal it is alive.
	// Deliveries a process was attempting when it died are taken over
	// after three missed heartbeats. Defaults to 5s.
	Heartbeat time.Duration `koanf:"heartbeat"`
}

// Delivery governs how dzhook calls receivers.
type Delivery struct {
	// Timeout bounds one attempt, from dial to the end of the response:
	// from 100ms to 50s, as an operator's attempt (a manual retry, a test
	// send) is answered within the admin API's 55 s. Defaults to 5s, as DZDESK's documentation asks receivers to answer
	// within 5 seconds.
	Timeout time.Duration `koanf:"timeout"`
	// RetrySchedule is the delay before each attempt, counted from the
	// failed attempt before it; the first is 0s (made at once). Its length
	// is the number of attempts. Defaults to [0s, 1m, 5m, 30m, 2h].
	RetrySchedule []time.Duration `koanf:"retry_schedule"`
	// AllowInsecureHTTP accepts http:// URLs (local tests only). Defaults
	// to false: https only.
	AllowInsecureHTTP bool `koanf:"allow_insecure_http"`
	// ResponseBodyLimit is how many bytes of each response body are kept
	// in the history, at most 1048576; 0 keeps none (for answers that may
	// carry personal data). Defaults to 4096.
	ResponseBodyLimit int `koanf:"response_body_limit"`
	// Concurrency is how many attempts may be in flight per subscription.
	// Defaults to 16.
	Concurrency int `koanf:"concurrency"`
	// QueueSize bounds each subscription's in-memory queue; when it is
	// full, deliveries wait in the journal instead. Defaults to 1024.
	QueueSize int `koanf:"queue_size"`
	// ShareFirstAttempts journals every new delivery unowned and due, so
	// that every dzhook process on the journal takes part in first
	// attempts, not only the one that streams. Without it, deliveries
	// whose subscription's queue is full take that way (and, while other
	// processes are alive, the stream does not wait for room). Defaults
	// to false: first attempts from memory, the fastest path for one
	// process.
	ShareFirstAttempts bool `koanf:"share_first_attempts"`
	// BlockPrivateNetworks refuses receivers (and notify.url) on loopback
	// and private addresses, checked on the address actually dialled.
	// Link-local and cloud metadata addresses are refused always.
	// Defaults to false.
	BlockPrivateNetworks bool `koanf:"block_private_networks"`
	// AllowNetworks are CIDRs allowed despite BlockPrivateNetworks, e.g.
	// [10.1.2.0/24]. Defaults to none.
	AllowNetworks []string `koanf:"allow_networks"`
	// Proxy is the forward proxy deliveries and notifications go
	// through: http://host:port, or https://host:port for TLS to the
	// proxy, with user:password@ for Proxy-Authorization (so a secret).
	// https:// receivers are reached through a CONNECT tunnel, http://
	// ones by absolute-form requests. The proxy must pass the egress
	// guard like a receiver, and receivers' addresses are still
	// resolved and checked by dzhook. The environment's HTTPS_PROXY and
	// HTTP_PROXY are never used. A subscription's proxy replaces it.
	// Defaults to none: receivers are dialled directly.
	Proxy Secret `koanf:"proxy"`
	// CAFile is a PEM bundle of certificate authorities trusted, besides
	// the system's roots, to sign receivers' (and an https proxy's)
	// certificates: a company's private CA. Read at start. Defaults to
	// none: the system's roots alone.
	CAFile string `koanf:"ca_file"`
	// CAReplaceSystem trusts CAFile's authorities alone, not the
	// system's roots. Defaults to false.
	CAReplaceSystem bool `koanf:"ca_replace_system"`
}

// Admin is the operator-facing HTTP server.
type Admin struct {
	// Listen is the address of the admin API, dashboard and /metrics.
	// Defaults to 127.0.0.1:8080. Empty disables the server.
	Listen string `koanf:"listen"`
	// Token is the bearer token of the admin API. Required when Listen is
	// not a loopback address.
	Token Secret `koanf:"token"`
	// MetricsPublic serves /metrics without the token. Defaults to true.
	MetricsPublic bool `koanf:"metrics_public"`
}

// Notify is the admin notification endpoint.
type Notify struct {
	// URL receives a signed JSON POST (Slack-compatible "text" field) when
	// a subscription becomes failing, recovers or is disabled. Treated as
	// a secret, since a Slack webhook URL is a credential. Defaults to
	// none: notifications are only logged.
	URL Secret `koanf:"url"`
	// Secret signs notifications like deliveries. Defaults to none
	// (unsigned).
	Secret Secret `koanf:"secret"`
}

// SLA configures the SLA clock.
type SLA struct {
	// WarningPercent is the share of started_at → target_at after which
	// sla.warning fires: one number, or a list for several warnings.
	// Defaults to 75.
	WarningPercent []float64 `koanf:"warning_percent"`
	// CheckInterval is how often due SLA timers are looked for; an event
	// fires at most this long after its moment. Defaults to 5s.
	CheckInterval time.Duration `koanf:"check_interval"`
}

// Outbox configures application-written events.
type Outbox struct {
	// Table is the insert-only outbox table; empty disables it. Defaults
	// to "dzhook_outbox" (used only when the table exists).
	Table string `koanf:"table"`
	// MessagePrefix is the pg_logical_emit_message prefix dzhook turns
	// into events. Defaults to "dzdesk".
	MessagePrefix string `koanf:"message_prefix"`
}

// Log configures dzhook's log output.
type Log struct {
	// Level is debug, info, warn or error. Defaults to info.
	Level string `koanf:"level"`
	// Format is text or json. Defaults to text.
	Format string `koanf:"format"`
}

// Telemetry configures OpenTelemetry traces (internal/telemetry).
type Telemetry struct {
	// OTLPEndpoint is the base URL of an OTLP/HTTP collector, e.g.
	// http://otel-collector:4318: spans go to its /v1/traces. Setting it
	// turns tracing on; so does the standard OTEL_EXPORTER_OTLP_ENDPOINT
	// (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) variable, which this
	// replaces when both are set. OTEL_SDK_DISABLED=true or
	// OTEL_TRACES_EXPORTER=none keep tracing off whatever is set. The
	// other OTEL_* variables (service name, resource attributes,
	// sampler, exporter headers, timeout) apply as the OpenTelemetry SDK
	// defines them. Defaults to none: tracing off, no span is made.
	OTLPEndpoint string `koanf:"otlp_endpoint"`
}

// Secrets are the keys of the runtime subscriptions' secrets at rest
// (AES-256-GCM). Without one, subscriptions cannot be created through the
// API.
type Secrets struct {
	// Key is one key: 32 random bytes, base64 (openssl rand -base64 32),
	// typically ${file:/run/secrets/dzhook-key}. When set, it is the key
	// that encrypts. Defaults to none.
	Key Secret `koanf:"key"`
	// Keys are more keys, for rotation: every one decrypts, and the first
	// encrypts only when Key is not set. To rotate, put the new key in
	// Key, move the old one into Keys and restart; once the start logs
	// that every runtime subscription is sealed with secrets.key, the old
	// one can be dropped. Defaults to none.
	Keys []Secret `koanf:"keys"`
}

// All returns the keys in order, the one that encrypts first (Key when
// set); each is validated base64 of 32 bytes.
func (s Secrets) All() [][]byte {
	var out [][]byte
	for _, k := range append([]Secret{s.Key}, s.Keys...) {
		if !k.IsSet() {
			continue
		}
		if b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(k.Reveal())); err == nil && len(b) == 32 {
			out = append(out, b)
		}
	}
	return out
}

// Sealing returns the setting of the key that encrypts, as an operator
// writes it: "secrets.key" when Key is set, else "secrets.keys[0]"; ""
// without a key.
func (s Secrets) Sealing() string {
	switch {
	case s.Key.IsSet():
		return "secrets.key"
	case len(s.Keys) > 0:
		return "secrets.keys[0]"
	}
	return ""
}

// CustomEvent declares an event outside DZDESK's catalog.
type CustomEvent struct {
	// Name looks like entity.action, e.g. order.shipped. Required.
	Name string `koanf:"name"`
	// Description is shown in the dashboard. Optional.
	Description string `koanf:"description"`
	// Schema is a JSON Schema (draft 2020-12 unless it says otherwise)
	// of the event's data, written inline as a YAML (or JSON) mapping. It
	// must compile, and may refer only inside itself. An outbox row or
	// logical message whose data breaks it is rejected (recorded in the
	// journal's rejections, logged, not delivered), and `dzhook events
	// --schema` and GET /v1/events/{name}/schema serve it inside the
	// envelope. Defaults to none: any JSON object is delivered.
	Schema map[string]any `koanf:"schema"`
	// Example is the data of the event's test deliveries (POST
	// /v1/subscriptions/{id}/test, the dashboard's "Send test"),
	// written inline as a YAML (or JSON) mapping; it must satisfy Schema.
	// Defaults to the first of the schema's own "examples" that satisfies
	// it, else {"sample": true}; when the schema refuses that too, a test
	// of the event is refused (422) and names this setting.
	Example map[string]any `koanf:"example"`
}

// Subscription is one webhook endpoint.
type Subscription struct {
	// ID names the subscription in the API, history and metrics: lowercase
	// letters, digits, - and _. Required, unique.
	ID string `koanf:"id"`
	// URL receives the POSTs; https only unless
	// delivery.allow_insecure_http. Required.
	URL string `koanf:"url"`
	// Events are exact event names or globs (request.*, *). Required.
	Events []string `koanf:"events"`
	// Secret signs every delivery (X-DZDESK-Signature; a whsec_ secret is
	// base64-decoded for the Standard Webhooks signature). Required, at
	// least 16 characters.
	Secret Secret `koanf:"secret"`
	// PreviousSecret is the secret Secret replaced, valid until
	// PreviousSecretUntil (a rotation's overlap, as the API's rotate
	// gives runtime subscriptions): Standard Webhooks deliveries carry a
	// signature with each, and X-DZDESK-Signature keeps the previous one
	// until then. Both or neither. Defaults to none: a changed secret
	// signs every attempt at once, retries of earlier events included.
	PreviousSecret Secret `koanf:"previous_secret"`
	// PreviousSecretUntil ends the overlap: an RFC 3339 time.
	PreviousSecretUntil string `koanf:"previous_secret_until"`
	// Active false stops deliveries. Defaults to true.
	Active bool `koanf:"active"`
	// QueueWhileInactive keeps the deliveries of an inactive or paused
	// subscription and sends them, oldest first, on resume; otherwise they
	// are recorded as skipped. Defaults to false.
	QueueWhileInactive bool `koanf:"queue_while_inactive"`
	// Filter is a CEL expression over the envelope (id, event, timestamp,
	// data) that must be true for a delivery, e.g.
	// data.priority in ["high", "urgent"]. Defaults to none.
	Filter string `koanf:"filter"`
	// Headers are static headers added to every POST; values may be
	// ${NAME} references. Defaults to none.
	Headers map[string]Secret `koanf:"headers"`
	// StandardWebhooks adds the webhook-id, webhook-timestamp and
	// webhook-signature headers. Defaults to false.
	StandardWebhooks bool `koanf:"standard_webhooks"`
	// Transform is a CEL expression over the envelope (id, event,
	// timestamp, data) that gives the body to send: a map (a JSON
	// object) or a list; null, or skip in a branch of ?:, skips the
	// delivery (recorded as skipped). Computed once per delivery, at its
	// first attempt, and kept: retries send the same bytes, signed. It
	// overrides Format. Defaults to none: the envelope is sent.
	Transform string `koanf:"transform"`
	// Format is the body's shape: dzdesk (DZDESK's envelope), or a
	// built-in transform for a destination's incoming webhooks: slack,
	// teams or discord. Those destinations do not check DZDESK's
	// signature, so Secret is optional with them. Defaults to dzdesk.
	Format string `koanf:"format"`
	// Method is the HTTP method of every attempt: POST or PUT. Defaults
	// to POST.
	Method string `koanf:"method"`
	// RateLimit caps the deliveries started per second or minute, e.g.
	// 50/s or 600/m: beyond it deliveries wait in the journal, not in
	// memory, and go out as the budget allows. Defaults to none.
	RateLimit string `koanf:"rate_limit"`
	// Ordering is what order deliveries keep: "none" (in parallel, no
	// order promised), "entity" (the deliveries of one request or user
	// reach the receiver in stream order, each after the previous one
	// finished; different entities in parallel) or "subscription" (one at
	// a time, in stream order). Defaults to none.
	Ordering string `koanf:"ordering"`
	// Proxy replaces delivery.proxy for this subscription's deliveries
	// (same form, also a secret). Defaults to delivery.proxy.
	Proxy Secret `koanf:"proxy"`
	// TLS is the client certificate presented to a receiver that asks
	// for one (mutual TLS). Defaults to none.
	TLS ClientTLS `koanf:"tls"`
	// Traceparent adds a W3C traceparent header to every attempt,
	// carrying the attempt's HTTP client span, so the receiver's own
	// trace continues dzhook's. Only while tracing is on (telemetry).
	// Defaults to false.
	Traceparent bool `koanf:"traceparent"`
}

// ClientTLS is a subscription's client certificate: two PEM files, read
// again when they change (at most once a second, when a new connection
// is made), so a rotated certificate needs no restart; files that do not
// load keep the previous pair in use, with a warning.
type ClientTLS struct {
	// CertFile is the certificate, followed by any intermediate ones.
	// Required with key_file.
	CertFile string `koanf:"cert_file"`
	// KeyFile is its private key (PKCS #1, PKCS #8 or EC), unencrypted.
	// Required with cert_file.
	KeyFile string `koanf:"key_file"`
}

// Orderings are the values of subscriptions[].ordering.
var Orderings = []string{string(fanout.OrderNone), string(fanout.OrderEntity), string(fanout.OrderSubscription)}

// Default returns the configuration every file is laid over.
func Default() Config {
	return Config{
		Source:   Source{Slot: DefaultSlot, Publication: DefaultPublication, AutoSetup: true},
		Journal:  Journal{Schema: DefaultJournalSchema, Retention: DefaultRetention, Heartbeat: DefaultHeartbeat},
		Delivery: Delivery{Timeout: DefaultTimeout, RetrySchedule: append([]time.Duration(nil), DefaultRetrySchedule...), ResponseBodyLimit: DefaultResponseBodyLimit, Concurrency: DefaultConcurrency, QueueSize: DefaultQueueSize},
		Admin:    Admin{Listen: DefaultAdminListen, MetricsPublic: true},
		SLA:      SLA{WarningPercent: []float64{DefaultWarningPercent}, CheckInterval: DefaultSLACheckInterval},
		Outbox:   Outbox{Table: DefaultOutboxTable, MessagePrefix: DefaultMessagePrefix},
		Mapping:  mapping.DefaultConfig(),
		Log:      Log{Level: DefaultLogLevel, Format: DefaultLogFormat},
	}
}

// subscriptionDefaults are laid under every subscriptions[] entry.
func subscriptionDefaults() Subscription {
	return Subscription{Active: true, Ordering: string(fanout.OrderNone), Format: transform.FormatDZDESK, Method: "POST"}
}

// JournalDSN returns the journal's DSN: journal.dsn, or source.dsn.
func (c *Config) JournalDSN() Secret {
	if c.Journal.DSN.IsSet() {
		return c.Journal.DSN
	}
	return c.Source.DSN
}

// Summary is the one line `dzhook validate` prints for a good file.
func (c *Config) Summary() string {
	cat, _ := c.Catalog()
	active := 0
	for _, s := range c.Subscriptions {
		if s.Active {
			active++
		}
	}
	n := len(cat.Events())
	return fmt.Sprintf("%d subscriptions (%d active), %d events (%d built-in, %d custom)",
		len(c.Subscriptions), active, n, len(catalog.Builtin()), n-len(catalog.Builtin()))
}

// DefaultSubscription is a subscription with every default (one created
// through the API starts from it).
func DefaultSubscription() Subscription { return subscriptionDefaults() }
