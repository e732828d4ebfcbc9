package config

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/net/http/httpguts"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/filter"
	"github.com/dzdesk/dzhook/internal/transform"
	"github.com/dzdesk/dzhook/schemas"
	"github.com/dzdesk/dzhook/signer"
)

// tooShort reports whether a secret or token is shorter than
// MinSecretLength once the spaces at either end are left out: sixteen
// spaces are no secret.
func tooShort(s string) bool { return len(strings.TrimSpace(s)) < MinSecretLength }

// MinDeliveryTimeout and MaxDeliveryTimeout bound delivery.timeout. An
// operator's attempt (dzhook retry ID, a test send, the dashboard's
// "Send test") is answered with its outcome within the admin API's
// attemptTimeout (55 s, under its 60 s write timeout), which also holds
// the journal's claim and record: a longer timeout answered 503 while
// the attempt went on. Below the floor no receiver can answer (1ns was
// accepted).
const (
	MinDeliveryTimeout = 100 * time.Millisecond
	MaxDeliveryTimeout = 50 * time.Second
)

// MinRetention is the shortest journal.retention: history is pruned
// hourly, and a shorter retention pruned deliveries before an operator
// could look at them (1ns was accepted). Tests that need less build the
// journal's Retention themselves.
const MinRetention = time.Hour

// MinSecretLength is the shortest webhook secret dzhook accepts: 16
// characters, since a guessable secret makes signatures worthless.
const MinSecretLength = 16

var (
	subscriptionID = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	sqlIdentifier  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)
	// slotName is PostgreSQL's rule for replication slot names
	// (ReplicationSlotValidateName), narrower than an identifier's.
	slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
)

// reservedHeaders are set by dzhook on every delivery; a subscription's
// static headers may not replace them, so a signature can't be spoofed.
var reservedHeaders = []string{
	"content-type", "content-length", "user-agent", "host",
	"x-dzdesk-signature", "x-dzdesk-event", "x-dzdesk-delivery", "x-dzdesk-attempt",
	"webhook-id", "webhook-timestamp", "webhook-signature",
}

// hopByHopHeaders are about the connection, not the request: HTTP/2
// refuses a request carrying one (every attempt to such a receiver
// failed), and HTTP/1.1 drops or misreads them (found by a review).
var hopByHopHeaders = []string{
	"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
}

// Catalog returns the events this configuration knows: DZDESK's eleven plus
// its custom events.
func (c *Config) Catalog() (*catalog.Catalog, error) {
	custom := make([]catalog.Event, len(c.CustomEvents))
	for i, e := range c.CustomEvents {
		custom[i] = catalog.Event{Name: e.Name, Description: e.Description}
	}
	return catalog.New(custom...)
}

// Schemas returns the JSON Schemas of this configuration's events:
// DZDESK's and those of the custom events declared with a schema.
func (c *Config) Schemas() (*schemas.Set, error) {
	custom := map[string]any{}
	for _, e := range c.CustomEvents {
		if e.Schema != nil {
			custom[e.Name] = e.Schema
		}
	}
	return schemas.New(custom)
}

// TestSample is a custom event's test data (Data), or why it has none
// (Refused, a message that names the setting to give).
type TestSample struct {
	Data    []byte
	Refused string
}

// defaultTestData is a custom event's test data when nothing says
// otherwise: it shows a receiver what a test is, whatever the event.
const defaultTestData = `{"sample":true}`

// TestSamples returns the test data of each custom event: its example,
// else the first of its schema's "examples" that satisfies the schema,
// else {"sample": true} when the schema accepts it. A test of an event
// whose schema refuses all of them is refused rather than sent: the
// receiver would be handed data the event never carries.
func (c *Config) TestSamples(set *schemas.Set) map[string]TestSample {
	out := make(map[string]TestSample, len(c.CustomEvents))
	for i, e := range c.CustomEvents {
		if e.Example != nil {
			if data, err := json.Marshal(e.Example); err == nil {
				out[e.Name] = TestSample{Data: data}
				continue
			}
		}
		if found := schemaExample(set, e); found != nil {
			out[e.Name] = TestSample{Data: found}
			continue
		}
		err := set.ValidateData(e.Name, []byte(defaultTestData))
		if err == nil {
			out[e.Name] = TestSample{Data: []byte(defaultTestData)}
			continue
		}
		out[e.Name] = TestSample{Refused: fmt.Sprintf("%s: its schema refuses the test data %s (%v): give custom_events[%d].example, data the schema accepts", e.Name, defaultTestData, err, i)}
	}
	return out
}

// schemaExample is the first object of e's schema's "examples" (JSON
// Schema's annotation) that satisfies the schema, or nil.
func schemaExample(set *schemas.Set, e CustomEvent) []byte {
	list, _ := e.Schema["examples"].([]any)
	for _, x := range list {
		if _, ok := x.(map[string]any); !ok {
			continue
		}
		data, err := json.Marshal(x)
		if err == nil && set.ValidateData(e.Name, data) == nil {
			return data
		}
	}
	return nil
}

// validate adds every semantic mistake of c to ps. A value that came
// from a reference (in refs) is shown as that reference.
func (c *Config) validate(ps *Problems, refs references) {
	if !c.Source.DSN.IsSet() {
		ps.add("source.dsn", "required: the DZDESK database to stream from (e.g. postgres://dzhook@db/dzdesk), or set DZHOOK_SOURCE_DSN")
	} else {
		checkDSN(ps, "source.dsn", c.Source.DSN)
	}
	if c.Journal.DSN.IsSet() {
		checkDSN(ps, "journal.dsn", c.Journal.DSN)
	}
	if !slotName.MatchString(c.Source.Slot) {
		ps.add("source.slot", "%s is not a replication slot name: PostgreSQL allows only lower-case letters, digits and _ (at most 63)", refs.show("source.slot", c.Source.Slot))
	}
	checkIdentifier(ps, refs, "source.publication", c.Source.Publication)
	checkIdentifier(ps, refs, "journal.schema", c.Journal.Schema)
	if c.Journal.Retention < MinRetention {
		ps.add("journal.retention", "is %s: must be at least 1h (history is pruned hourly), e.g. 720h", c.Journal.Retention)
	}
	if c.Journal.Heartbeat < 100*time.Millisecond || c.Journal.Heartbeat > time.Minute {
		ps.add("journal.heartbeat", "must be between 100ms and 1m, e.g. 5s")
	}

	d := c.Delivery
	switch {
	case d.Timeout < MinDeliveryTimeout:
		ps.add("delivery.timeout", "is %s: must be at least %s, time to connect and be answered, e.g. 5s", d.Timeout, MinDeliveryTimeout)
	case d.Timeout > MaxDeliveryTimeout:
		ps.add("delivery.timeout", "is %s: must be at most %s: a manual retry, a test send and the dashboard's \"Send test\" wait for their attempt within the admin API's 55 s, and answered 503 while a longer one went on (DZDESK asks receivers to answer within 5 s)", d.Timeout, MaxDeliveryTimeout)
	}
	if len(d.RetrySchedule) == 0 {
		ps.add("delivery.retry_schedule", "must list at least one attempt, e.g. [0s, 1m, 5m, 30m, 2h]")
	}
	for i, delay := range d.RetrySchedule {
		switch {
		case delay < 0:
			ps.add(fmt.Sprintf("delivery.retry_schedule[%d]", i), "must not be negative")
		case i == 0 && delay != 0:
			// The first attempt leaves as the event is read (DZDESK's
			// "immediately"); a delay here was accepted and never waited.
			ps.add("delivery.retry_schedule[0]", "is %s: the first attempt is made at once, so it must be 0s (the delays after failed attempts follow it)", delay)
		}
	}
	if d.ResponseBodyLimit < 0 || d.ResponseBodyLimit > 1<<20 {
		ps.add("delivery.response_body_limit", "must be between 0 and 1048576 bytes")
	}
	if d.Concurrency < 1 || d.Concurrency > 1024 {
		ps.add("delivery.concurrency", "must be between 1 and 1024")
	}
	if d.QueueSize < 1 || d.QueueSize > 1<<20 {
		ps.add("delivery.queue_size", "must be between 1 and 1048576")
	}
	for i, n := range d.AllowNetworks {
		p := fmt.Sprintf("delivery.allow_networks[%d]", i)
		prefix, err := netip.ParsePrefix(n)
		if err != nil {
			ps.add(p, "%s is not a network in CIDR form (e.g. 10.1.2.0/24)", refs.show(p, n))
		} else if msg := fanout.AllowProblem(prefix); msg != "" {
			// Accepted, it opened nothing, and the refusals still said
			// "add it to delivery.allow_networks".
			ps.add(p, "%s %s", refs.show(p, n), msg)
		}
	}
	checkProxy(ps, "delivery.proxy", d.Proxy)
	if d.CAFile != "" {
		if _, err := fanout.ReadCertificates(d.CAFile); err != nil {
			ps.add("delivery.ca_file", "%s", fileProblem(refs.show("delivery.ca_file", d.CAFile), err))
		}
	} else if d.CAReplaceSystem {
		ps.add("delivery.ca_replace_system", "needs delivery.ca_file: without it no receiver's certificate could be verified")
	}

	if c.Admin.Listen != "" {
		host, port, err := net.SplitHostPort(c.Admin.Listen)
		n, perr := strconv.Atoi(port)
		switch {
		case err != nil || port == "":
			ps.add("admin.listen", "%s is not host:port (e.g. 127.0.0.1:8080)", refs.show("admin.listen", c.Admin.Listen))
		case perr != nil || n < 0 || n > 65535:
			ps.add("admin.listen", "%s: the port must be a number from 0 to 65535", refs.show("admin.listen", c.Admin.Listen))
		case !c.Admin.Token.IsSet() && !IsLoopback(host):
			listen := c.Admin.Listen
			if _, ok := refs["admin.listen"]; ok {
				listen = refs.show("admin.listen", listen)
			}
			ps.add("admin.token", "required when admin.listen (%s) is not a loopback address: the admin API can retry and pause deliveries", listen)
		}
	}
	if t := c.Admin.Token.Reveal(); t != "" && tooShort(t) {
		ps.add("admin.token", "too short: use at least %d random characters, spaces at either end not counted (it allows retrying, pausing and reading every delivery)", MinSecretLength)
	} else if t != strings.TrimSpace(t) || strings.ContainsFunc(t, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		// HTTP trims a header value's spaces, so no request matched a
		// token with one at either end, nor one with a line break
		// (found by a review). (A space inside works, though dzhook's
		// CLI refuses to send it: it is no bearer token's character.)
		ps.add("admin.token", "has a space at either end, a line break or a control character: no request can carry it; remove it (a value read from a file often ends in a newline)")
	}
	if s := c.Notify.Secret.Reveal(); s != "" && tooShort(s) {
		ps.add("notify.secret", "too short: use at least %d random characters (spaces at either end do not count)", MinSecretLength)
	}
	if e := c.Telemetry.OTLPEndpoint; e != "" {
		if msg := checkOTLPEndpoint(e); msg != "" {
			ps.add("telemetry.otlp_endpoint", "%s", msg)
		}
	}
	if c.Notify.URL.IsSet() {
		if msg := checkURL(c.Notify.URL.Reveal(), c.Delivery.AllowInsecureHTTP, true, notifyUserInfo); msg != "" {
			// The URL is a credential (Slack); the message never quotes it.
			ps.add("notify.url", "%s", msg)
		} else if msg := c.refusedAddress(c.Notify.URL.Reveal()); msg != "" {
			ps.add("notify.url", "%s", msg)
		}
	}
	for i, p := range c.SLA.WarningPercent {
		// Written as "not inside" so that NaN, for which every comparison
		// is false, is outside too.
		if !(p > 0 && p < 100) {
			ps.add(fmt.Sprintf("sla.warning_percent[%d]", i), "must be between 0 and 100 (exclusive), e.g. 75")
		} else if i > 0 && p <= c.SLA.WarningPercent[i-1] {
			ps.add(fmt.Sprintf("sla.warning_percent[%d]", i), "thresholds must be in increasing order, each once")
		}
	}
	if d := c.SLA.CheckInterval; d < 100*time.Millisecond || d > 30*time.Second {
		ps.add("sla.check_interval", "must be between 100ms and 30s: SLA events fire at most this long after their moment")
	}
	if c.Outbox.Table != "" {
		checkQualifiedName(ps, refs, "outbox.table", c.Outbox.Table)
		// The outbox's rows are read as outbox rows, whatever else the
		// table is: naming a mapped table there turned every comment (or
		// request) into a rejected outbox row, and its events were lost.
		if key, ok := c.Mapping.TableOf(c.Mapping.Qualify(c.Outbox.Table)); ok {
			ps.add("outbox.table", "%s is the table of mapping.%s: its rows would be read as outbox rows and their events lost; name a table of its own (README: Outbox)", refs.show("outbox.table", c.Outbox.Table), key)
		}
	}
	for _, p := range c.Mapping.Validate() {
		// A message may name a table with its schema: any of mapping's
		// references may be in it.
		ps.add(p.Path, "%s", refs.scrub("mapping", p.Message, "is not a valid name here"))
	}
	if c.Outbox.MessagePrefix == "" {
		ps.add("outbox.message_prefix", "must not be empty")
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		ps.add("log.level", "%s is not one of debug, info, warn, error", refs.show("log.level", c.Log.Level))
	}
	if !slices.Contains([]string{"text", "json"}, c.Log.Format) {
		ps.add("log.format", "%s is not one of text, json", refs.show("log.format", c.Log.Format))
	}

	for i, k := range append([]Secret{c.Secrets.Key}, c.Secrets.Keys...) {
		path := "secrets.key"
		if i > 0 {
			path = fmt.Sprintf("secrets.keys[%d]", i-1)
		}
		if !k.IsSet() {
			if i > 0 {
				c.secretsProblem(ps, path, "empty")
			}
			continue
		}
		if b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(k.Reveal())); err != nil || len(b) != 32 {
			c.secretsProblem(ps, path, "not 32 bytes of base64")
		}
	}

	cat, err := c.Catalog()
	if err != nil {
		ps.add("custom_events", "%s", refs.scrub("custom_events", strings.TrimPrefix(err.Error(), "custom events: "), "is not a valid custom event name"))
		cat, _ = catalog.New() // validate subscriptions against the built-in events
	}
	for i, e := range c.CustomEvents {
		if e.Schema == nil {
			continue
		}
		if err := schemas.CompileData(e.Name, e.Schema); err != nil {
			ps.add(fmt.Sprintf("custom_events[%d].schema", i), "%s", strings.TrimPrefix(err.Error(), "schema of "+e.Name+": "))
			continue
		}
		if e.Example == nil {
			continue
		}
		data, err := json.Marshal(e.Example)
		if err != nil {
			ps.add(fmt.Sprintf("custom_events[%d].example", i), "cannot be written as JSON: %v", err)
			continue
		}
		if err := schemas.ValidateWith(e.Name, e.Schema, data); err != nil {
			ps.add(fmt.Sprintf("custom_events[%d].example", i), "breaks custom_events[%d].schema: %v", i, err)
		}
	}
	seen := make(map[string]int)
	for i, s := range c.Subscriptions {
		c.validateSubscription(ps, refs, fmt.Sprintf("subscriptions[%d]", i), s, cat)
		if s.ID == "" {
			continue
		}
		if j, dup := seen[s.ID]; dup {
			p := fmt.Sprintf("subscriptions[%d].id", i)
			ps.add(p, "%s is already the id of subscriptions[%d]", refs.show(p, s.ID), j)
		} else {
			seen[s.ID] = i
		}
	}
}

func (c *Config) secretsProblem(ps *Problems, path, what string) {
	ps.add(path, "%s: a key is 32 random bytes in base64, e.g. from `openssl rand -base64 32`", what)
}

// ValidateSubscription checks one subscription as the file's are checked
// (a subscription created or changed through the API): every problem,
// with paths relative to the subscription ("url", "events[1]").
func (c *Config) ValidateSubscription(s Subscription) Problems {
	var ps Problems
	cat, err := c.Catalog()
	if err != nil {
		cat, _ = catalog.New()
	}
	c.validateSubscription(&ps, nil, "", s, cat)
	for i := range ps {
		ps[i].Path = strings.TrimPrefix(ps[i].Path, ".")
	}
	return ps
}

func (c *Config) validateSubscription(ps *Problems, refs references, path string, s Subscription, cat *catalog.Catalog) {
	switch {
	case s.ID == "":
		ps.add(path+".id", "required: a short name such as crm or slack-alerts")
	case !subscriptionID.MatchString(s.ID):
		ps.add(path+".id", "%s must be lowercase letters, digits, - and _ (at most 63)", refs.show(path+".id", s.ID))
	}
	if s.URL == "" {
		ps.add(path+".url", "required: the receiver's https:// endpoint")
	} else {
		// A URL from a reference is checked as a secret one: the
		// message quotes no part of it (its scheme, its port).
		_, ref := refs[path+".url"]
		if msg := checkURL(s.URL, c.Delivery.AllowInsecureHTTP, ref, "put them in the subscription's headers"); msg != "" {
			ps.add(path+".url", "%s", msg)
		} else if msg := c.refusedAddress(s.URL); msg != "" {
			// An address the egress guard refuses failed every attempt,
			// retried for hours before the subscription turned failing.
			ps.add(path+".url", "%s", msg)
		}
	}
	preset := s.Format != "" && s.Format != transform.FormatDZDESK
	switch {
	case !s.Secret.IsSet() && preset && !s.StandardWebhooks:
		// Slack, Teams and Discord do not check a signature: their
		// webhook URL is the credential.
	case !s.Secret.IsSet():
		ps.add(path+".secret", "required: the key receivers verify X-DZDESK-Signature with (use ${NAME} to read it from the environment)")
	default:
		checkWebhookSecret(ps, path+".secret", s.Secret.Reveal(), s.StandardWebhooks, true)
	}
	checkPreviousSecret(ps, path, s)
	if len(s.Events) == 0 {
		ps.add(path+".events", "required: list event names or patterns, e.g. [request.created, sla.*]")
	}
	for i, e := range s.Events {
		p := fmt.Sprintf("%s.events[%d]", path, i)
		names, err := cat.Match(e)
		switch {
		case err != nil:
			ps.add(p, "%s", refs.scrub(p, err.Error(), "is not a valid pattern"))
		case len(names) > 0:
		case catalog.IsPattern(e):
			what := "pattern " + strconv.Quote(e)
			if _, ok := refs[p]; ok {
				what = refs.show(p, e) + ", a pattern,"
			}
			ps.add(p, "%s matches no event of the catalog", what)
		default:
			msg := fmt.Sprintf("%s is not a DZDESK event", refs.show(p, e))
			if near := suggestEvent(e, cat); near != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", near)
			} else {
				msg += " (see `dzhook events`; custom events must be declared under custom_events)"
			}
			ps.add(p, "%s", msg)
		}
	}
	if s.Filter != "" {
		if _, err := filter.Compile(s.Filter); err != nil {
			ps.add(path+".filter", "%s", refs.scrub(path+".filter", err.Error(), "is not a valid CEL expression"))
		}
	}
	if !slices.Contains(transform.Formats, s.Format) {
		ps.add(path+".format", "%s is not a format: use one of %s", refs.show(path+".format", s.Format), strings.Join(transform.Formats, ", "))
	}
	if s.Transform != "" {
		if _, err := transform.New(s.Transform, ""); err != nil {
			ps.add(path+".transform", "%s", refs.scrub(path+".transform", err.Error(), "is not a valid transform"))
		}
	}
	if m := strings.ToUpper(s.Method); m != "POST" && m != "PUT" {
		ps.add(path+".method", "%s: use POST or PUT", refs.show(path+".method", s.Method))
	}
	if s.RateLimit != "" {
		if _, err := fanout.ParseRate(s.RateLimit); err != nil {
			ps.add(path+".rate_limit", "%s", refs.scrub(path+".rate_limit", err.Error(), "is not a rate limit: a count from 1 to 100000, then /s or /m, e.g. 50/s or 600/m"))
		}
	}
	if !slices.Contains(Orderings, s.Ordering) {
		ps.add(path+".ordering", "%s is not an ordering: use one of %s", refs.show(path+".ordering", s.Ordering), strings.Join(Orderings, ", "))
	}
	checkProxy(ps, path+".proxy", s.Proxy)
	checkClientTLS(ps, refs, path+".tls", s.TLS)
	seen := map[string]string{} // canonical name → the name as written, first in sorted order
	for _, name := range sortedKeys(anyMap(s.Headers)) {
		p := path + ".headers." + name
		canonical := http.CanonicalHeaderKey(name)
		first, dup := seen[canonical]
		if !dup {
			seen[canonical] = name
		}
		switch {
		case !httpguts.ValidHeaderFieldName(name):
			ps.add(p, "%q is not a valid header name", name)
		case dup:
			// Both would be sent as one header, with either value.
			ps.add(p, "is the same header as %s (header names are case-insensitive): keep one", first)
		case slices.Contains(reservedHeaders, strings.ToLower(name)):
			ps.add(p, "%s is set by dzhook and cannot be overridden", http.CanonicalHeaderKey(name))
		case slices.Contains(hopByHopHeaders, strings.ToLower(name)) &&
			!(strings.EqualFold(name, "te") && s.Headers[name].Reveal() == "trailers"):
			// (TE: trailers, as written, is the one value HTTP/2 allows:
			// Go's server refuses "Trailers".)
			ps.add(p, "%s is a header of the connection, not of the request: HTTP/2 receivers refuse it, and HTTP/1.1 drops it; remove it", http.CanonicalHeaderKey(name))
		case !httpguts.ValidHeaderFieldValue(s.Headers[name].Reveal()):
			ps.add(p, "value must not contain control characters (line breaks, NUL, DEL; a tab is allowed)")
		}
	}
}

// checkOTLPEndpoint returns why raw is not an OTLP/HTTP collector's base
// URL, or "". The message never repeats the URL.
func checkOTLPEndpoint(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return "is not a valid URL"
	case u.Scheme != "http" && u.Scheme != "https":
		return "must be an http:// or https:// URL, e.g. http://otel-collector:4318"
	case u.Host == "" || u.Hostname() == "":
		return "has no host"
	case u.User != nil:
		return "must not contain credentials (user:password@): set OTEL_EXPORTER_OTLP_HEADERS instead"
	case u.RawQuery != "" || u.Fragment != "":
		return "must not have a query or fragment: it is a base URL, /v1/traces is appended"
	}
	return ""
}

// checkURL returns why raw is not an acceptable receiver URL, or "". The
// message never repeats the URL, which may hold a credential; with secret
// (notify.url, a Slack URL is one) it quotes no part of it at all.
// userInfo says where credentials go instead of the URL's user:password@.
func checkURL(raw string, allowHTTP, secret bool, userInfo string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "is not a valid URL"
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !allowHTTP {
			return "http:// is refused: use https://, or set delivery.allow_insecure_http: true for local testing"
		}
	case "":
		return "must be an absolute URL starting with https://"
	default:
		if secret {
			return "its scheme is not allowed: use https://"
		}
		return fmt.Sprintf("scheme %q is not allowed: use https://", u.Scheme)
	}
	if u.User != nil {
		return "must not contain credentials (user:password@): " + userInfo
	}
	if u.RawQuery == "REDACTED" || u.Path == "/REDACTED" {
		// What the API and the dashboard show in place of a token: saved
		// back, it replaced the receiver's real URL without a word.
		return "is the hidden form dzhook shows (?REDACTED or /REDACTED in place of a token): give the whole URL, or leave url out to keep the current one"
	}
	if u.Host == "" || u.Hostname() == "" {
		return "has no host"
	}
	if strings.Contains(u.Hostname(), "%") {
		return "host has an IPv6 zone (%…): receivers are reached by name or global address, never through an interface"
	}
	for _, r := range u.Hostname() {
		if r > 0x7e {
			return "host has non-ASCII characters: write an internationalized name in its punycode form (xn--…)"
		}
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			if secret {
				return "its port is not between 1 and 65535"
			}
			return fmt.Sprintf("port %q is not between 1 and 65535", p)
		}
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return "must not have a #fragment (it is never sent)"
	}
	return ""
}

// notifyUserInfo is where a notification's credentials go: notify has
// no headers (a subscription's credentials go there), so only into the
// URL's path or query, which checkURL allows and which, notify.url being
// a secret, is never shown.
const notifyUserInfo = "notify has no headers to carry them; if the receiver takes a token in the URL's path or query (as Slack's and Discord's webhook URLs do), put it there, as notify.url is never shown; and set notify.secret to sign the notifications"

// checkProxy reports a proxy URL that dzhook cannot use. The URL may
// hold a password: the message never quotes it.
func checkProxy(ps *Problems, path string, proxy Secret) {
	if !proxy.IsSet() {
		return
	}
	if _, err := fanout.ParseProxy(proxy.Reveal()); err != nil {
		ps.add(path, "%v", err)
	}
}

// checkClientTLS reports a client certificate whose files do not make a
// pair, at the file at fault.
func checkClientTLS(ps *Problems, refs references, path string, c ClientTLS) {
	certFile, keyFile := refs.show(path+".cert_file", c.CertFile), refs.show(path+".key_file", c.KeyFile)
	switch {
	case c.CertFile == "" && c.KeyFile == "":
		return
	case c.KeyFile == "":
		ps.add(path+".key_file", "required with cert_file: the private key of the client certificate")
		return
	case c.CertFile == "":
		ps.add(path+".cert_file", "required with key_file: the client certificate (PEM)")
		return
	}
	if _, err := fanout.ReadCertificates(c.CertFile); err != nil {
		ps.add(path+".cert_file", "%s", fileProblem(certFile, err))
		return
	}
	certPEM, err := fanout.ReadPEM(c.CertFile)
	if err != nil {
		ps.add(path+".cert_file", "%s", fileProblem(certFile, err))
		return
	}
	keyPEM, err := fanout.ReadPEM(c.KeyFile)
	if err != nil {
		ps.add(path+".key_file", "%s", fileProblem(keyFile, err))
		return
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		ps.add(path+".key_file", "%s does not go with cert_file %s: %v", keyFile, certFile, err)
	}
}

// fileProblem says why a PEM file named in the configuration (file, as
// shown in a message) is of no use: it cannot be read, or holds no
// certificate. The error of a failed read names the file itself: only
// its cause is kept.
func fileProblem(file string, err error) string {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return fmt.Sprintf("%s cannot be read: %v", file, pathErr.Err)
	}
	return fmt.Sprintf("%s: %v", file, err)
}

// checkDSN reports a connection string that pgx cannot parse, which
// `run` and `setup` refused only at their first connection. The message
// names the parameter at fault and quotes no part of the string
// (cdc.RedactDSNError): it may hold a password.
func checkDSN(ps *Problems, path string, dsn Secret) {
	// pgxpool's parser is pgconn's with the pool's and pgx's own
	// parameters: the journal's and the catalog's connections use it.
	if _, err := pgxpool.ParseConfig(dsn.Reveal()); err != nil && !readsAFile(err) {
		ps.add(path, "%v", cdc.RedactDSNError(err))
	}
}

// readsAFile reports whether a DSN's parse failed on a file it names (a
// CA, a client certificate or key, a service file), which the start reads
// where dzhook runs: validate may run on another machine (CI, a laptop),
// and every CLI command reading the configuration need not read the
// client key (found by a review, 2026-12-07). pgconn says which in its
// text only.
func readsAFile(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) ||
		strings.Contains(err.Error(), "failed to configure TLS (unable to read") || strings.Contains(err.Error(), "failed to read service")
}

func checkIdentifier(ps *Problems, refs references, path, v string) {
	if !sqlIdentifier.MatchString(v) {
		ps.add(path, "%s is not a plain PostgreSQL identifier (letters, digits, _; at most 63)", refs.show(path, v))
	}
}

// checkQualifiedName accepts table or schema.table.
func checkQualifiedName(ps *Problems, refs references, path, v string) {
	parts := strings.Split(v, ".")
	if len(parts) > 2 {
		ps.add(path, "%s must be table or schema.table", refs.show(path, v))
		return
	}
	for _, p := range parts {
		if !sqlIdentifier.MatchString(p) {
			ps.add(path, "%s is not a plain PostgreSQL identifier (letters, digits, _; at most 63)", refs.show(path, v))
			return
		}
	}
}

// IsLoopback reports whether host names this machine: localhost in any
// case, with a trailing dot, or a .localhost name (RFC 6761), or a
// loopback address.
func IsLoopback(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func suggestEvent(e string, cat *catalog.Catalog) string {
	var names []string
	for _, ev := range cat.Events() {
		names = append(names, ev.Name)
	}
	return suggest(e, names)
}

func anyMap[V any](m map[string]V) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// refusedAddress says why the egress guard refuses a URL whose host is an
// IP address or localhost, or "". The address is not quoted: the URL may be a secret's.
func (c *Config) refusedAddress(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	addr, err := netip.ParseAddr(u.Hostname())
	if err != nil && IsLoopback(u.Hostname()) {
		// Loopback by name, which the guard refuses at the dial; said
		// here too, as for 127.0.0.1 (found by a review).
		addr, err = netip.MustParseAddr("127.0.0.1"), nil
	}
	if err != nil {
		return ""
	}
	guard := &fanout.EgressGuard{BlockPrivate: c.Delivery.BlockPrivateNetworks}
	for _, n := range c.Delivery.AllowNetworks {
		if p, err := netip.ParsePrefix(n); err == nil {
			guard.Allow = append(guard.Allow, p)
		}
	}
	if msg := guard.Check(addr); msg != "" {
		return "its address is refused by the egress guard: " + msg
	}
	return ""
}

// MaxSecretOverlap is the longest overlap of a secret rotation: the API's
// (overlap) and a configuration file's (previous_secret_until).
const MaxSecretOverlap = 720 * time.Hour

// checkPreviousSecret checks a subscription's rotation overlap
// (previous_secret, previous_secret_until): both or neither, the secret
// held to what secret is, and a time.
func checkPreviousSecret(ps *Problems, path string, s Subscription) {
	prev, until := s.PreviousSecret.Reveal(), s.PreviousSecretUntil
	switch {
	case !s.PreviousSecret.IsSet() && until == "":
		return
	case !s.PreviousSecret.IsSet():
		ps.add(path+".previous_secret", "required with previous_secret_until: the secret receivers verified before secret replaced it")
	case until == "":
		ps.add(path+".previous_secret_until", "required with previous_secret: when the overlap ends, an RFC 3339 time such as 2024-01-16T14:30:00Z")
	}
	if until != "" {
		if t, err := time.Parse(time.RFC3339, until); err != nil {
			ps.add(path+".previous_secret_until", "%q is not an RFC 3339 time such as 2024-01-16T14:30:00Z", until)
		} else if time.Until(t) > MaxSecretOverlap {
			// A typo in the year kept the old secret (maybe the one
			// retired because it leaked) valid for ever, as the API's
			// rotation does not allow (found by a review).
			ps.add(path+".previous_secret_until", "%s is more than %s ahead: an overlap is at most that long, as the API's rotation allows", until, MaxSecretOverlap)
		}
	}
	switch {
	case !s.PreviousSecret.IsSet():
	case s.Secret.IsSet() && prev == s.Secret.Reveal():
		ps.add(path+".previous_secret", "is the same as secret: give the secret it replaced")
	default:
		// A key shorter than the rule may be what is being rotated away
		// from (accepted by an older dzhook): the overlap keeps it, as
		// receivers still verify with it.
		checkWebhookSecret(ps, path+".previous_secret", prev, s.StandardWebhooks, false)
	}
}

// checkWebhookSecret holds a subscription's signing secret (field) to
// its rules: long enough, and a whsec_<base64> one under
// standard_webhooks, whose key is long enough too when keyLength.
func checkWebhookSecret(ps *Problems, field, secret string, standard, keyLength bool) {
	switch {
	case tooShort(secret):
		ps.add(field, "too short: use at least %d random characters (spaces at either end do not count)", MinSecretLength)
	case standard && !strings.HasPrefix(secret, "whsec_"):
		ps.add(field, "standard_webhooks needs a whsec_<base64> secret, which Standard Webhooks libraries expect (e.g. whsec_ + `openssl rand -base64 32`)")
	case standard:
		// The key is what follows whsec_, decoded: the 16 characters
		// counted above include the prefix, and whsec_AAAAAAAAAA== (7
		// zero bytes) passed them (found by a review).
		key, err := signer.StandardKey(secret)
		switch {
		case err != nil:
			ps.add(field, "the part after whsec_ is not valid base64")
		case keyLength && len(key) < MinSecretLength:
			ps.add(field, "the key after whsec_ is %d bytes: use at least %d random bytes (Standard Webhooks recommends 24 to 64; e.g. whsec_ + `openssl rand -base64 32`)", len(key), MinSecretLength)
		}
	}
}
