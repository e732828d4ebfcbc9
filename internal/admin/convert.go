package admin

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

// The functions below turn domain types into the API's (package api), so
// that what the API shows is decided here and not by fields of fanout or
// the journal.

func eventOf(e catalog.Event) api.Event {
	return api.Event{Name: e.Name, Group: e.Group, Description: e.Description, Custom: e.Custom}
}

// utc is t in UTC (the API's times are; a time taken from the clock is in
// the host's zone).
func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// subscriptionOf adds the journal's backlog to a subscription's status.
func subscriptionOf(st fanout.SubscriptionStatus, b journal.Backlog, now time.Time) api.Subscription {
	v := api.Subscription{
		ID: st.ID, URL: st.URL, Events: st.Events, Active: st.Active, Paused: st.Paused,
		QueueWhileInactive: st.QueueWhileInactive, Filter: st.Filter, State: string(st.State),
		LastSuccessAt: utc(st.LastSuccessAt), LastFailureAt: utc(st.LastFailureAt), LastStatus: st.LastStatus, LastError: st.LastError,
		QueueDepth: st.QueueDepth, Stats: statsOf(st.Stats),
		Pending: b.Pending, Failed: b.Failed, Held: b.Held,
		Source: st.Source, Description: st.Description,
		Format: st.Format, Transform: st.Transform, Method: st.Method, RateLimit: st.RateLimit.String(),
		PacePerSecond:    math.Round(st.Pace*1000) / 1000,
		Traceparent:      st.Traceparent,
		StandardWebhooks: st.StandardWebhooks,
	}
	if !st.PreviousUntil.IsZero() {
		until, at := st.PreviousUntil.UTC(), st.SwitchAt.UTC()
		v.PreviousSecretValidUntil, v.SignatureSwitchAt = &until, &at
	}
	if v.Format == "" {
		v.Format = "dzdesk"
	}
	if v.Method == "" {
		v.Method = "POST"
	}
	if !st.PausedUntil.IsZero() {
		t := st.PausedUntil.UTC()
		v.PausedUntil = &t
	}
	if !b.OldestPending.IsZero() && b.OldestPending.Before(now) {
		v.OldestPendingSeconds = now.Sub(b.OldestPending).Seconds()
	}
	v.Ordering = string(st.Ordering)
	if v.Ordering == "" {
		v.Ordering = string(fanout.OrderNone)
	}
	if st.Ordering != "" && st.Ordering != fanout.OrderNone {
		v.OrderMemory = &api.OrderMemory{Keys: st.Order.Keys, Waiting: st.Order.Waiting, JournalKeys: st.Order.JournalKeys}
	}
	// The journal's count stands whatever the ordering is now: deliveries
	// made under an earlier ordering keep their key until they finish.
	v.BlockedKeys = b.BlockedKeys
	if b.BlockedKeys > 0 && !b.OldestBlocked.IsZero() {
		t := b.OldestBlocked.UTC()
		v.OldestBlockedAt = &t
	}
	if b.BlockedKeys > 0 && b.OldestBlockedHead != "" {
		key := b.OldestBlockedKey
		v.OldestBlockedKey, v.OldestBlockedHead = &key, b.OldestBlockedHead
	}
	return v
}

func statsOf(s fanout.Stats) api.Stats {
	out := api.Stats{Delivered: s.Delivered, Failed: s.Failed, Retried: s.Retried, SuccessRate: s.SuccessRate, P50MS: s.P50MS, P99MS: s.P99MS}
	if s.PerMinute != nil { // null stays null on the wire
		out.PerMinute = make([]api.MinuteCount, len(s.PerMinute))
		for i, m := range s.PerMinute {
			out.PerMinute[i] = api.MinuteCount{Minute: m.Minute, Delivered: m.Delivered, Failed: m.Failed}
		}
	}
	return out
}

func deliveryOf(d journal.Delivery) api.Delivery {
	v := api.Delivery{
		ID: d.ID, EventID: d.EventID, Event: d.Event, Subscription: d.Subscription, State: string(d.State), Attempts: d.Attempts,
		NextAttemptAt: d.NextAttemptAt, InFlight: d.InFlight, Test: d.Test,
		LastStatus: d.LastStatus, LastError: d.LastError, LastAttemptAt: d.LastAttemptAt,
		CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt, OrderingKey: d.OrderingKey,
	}
	if d.ReplayID != nil {
		v.ReplayID = *d.ReplayID
	}
	return v
}

// attemptOf shows an attempt's response body as text (invalid UTF-8
// replaced; the exact bytes in base64 beside it then).
func attemptOf(a journal.Attempt) api.Attempt {
	v := api.Attempt{
		Attempt: a.Attempt, At: a.At, Trigger: string(a.Trigger), StatusCode: a.StatusCode, DurationMS: a.DurationMS,
		ErrorClass: a.ErrorClass, Error: a.Error,
		ResponseBody: strings.ToValidUTF8(string(a.ResponseBody), "\uFFFD"),
	}
	if a.Instance != nil {
		v.Instance = *a.Instance
	}
	if !utf8.Valid(a.ResponseBody) {
		v.ResponseBodyBase64 = base64.StdEncoding.EncodeToString(a.ResponseBody)
	}
	return v
}

// payloadOf shows a delivery's body as JSON when it is JSON (byte for
// byte as it was sent, but compacted), else as a string.
func payloadOf(body []byte) json.RawMessage {
	if json.Valid(body) {
		return json.RawMessage(body)
	}
	s, _ := json.Marshal(string(body)) // a string always marshals
	return s
}

func reportOf(r fanout.AttemptReport) api.AttemptReport {
	return api.AttemptReport{
		DeliveryID: r.DeliveryID, EventID: r.EventID, Attempt: r.Attempt, StatusCode: r.StatusCode, Delivered: r.Delivered,
		DurationMS: r.DurationMS, ResponseBody: r.ResponseBody, ErrorClass: r.ErrorClass, Error: r.Error,
	}
}
