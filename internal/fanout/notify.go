package fanout

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/dzdesk/dzhook/internal/beat"
	"github.com/dzdesk/dzhook/internal/journal"
)

// NotifyConfig is where the admin is told of state changes.
type NotifyConfig struct {
	// URL receives a JSON POST; empty means notifications are only
	// logged (and counted in metrics).
	URL string
	// Secret signs the POST like a delivery (X-DZDESK-Signature); empty
	// sends it unsigned.
	Secret []byte
}

// Notification kinds.
const (
	NotifyFailing   = "failing"
	NotifyRecovered = "recovered"
	NotifyDisabled  = "disabled"
)

// notificationBody is what notify.url receives. Text makes a Slack
// incoming webhook show it as is; the other fields are for programs.
type notificationBody struct {
	Text            string    `json:"text"`
	Type            string    `json:"type"`
	Subscription    string    `json:"subscription"`
	State           string    `json:"state"`
	PreviousState   string    `json:"previous_state"`
	LastStatusCode  int       `json:"last_status_code,omitempty"`
	LastError       string    `json:"last_error,omitempty"`
	ResponseExcerpt string    `json:"response_excerpt,omitempty"`
	At              time.Time `json:"at"`
}

// Notifier sends the journal's notifications to notify.url: messages to
// the admin about subscriptions that became failing, recovered or were
// disabled. They are written to the journal with the state change that
// causes them, so a crash loses none, and any instance may send them.
type Notifier struct {
	cfg    NotifyConfig
	store  Store
	log    *slog.Logger
	wake   chan struct{}
	client *retryablehttp.Client
	// timeout, poll and userAgent as the dispatcher's Config says.
	timeout   time.Duration
	poll      time.Duration
	userAgent string
}

func newNotifier(cfg Config) *Notifier {
	n := &Notifier{
		cfg: cfg.Notify, store: cfg.Journal, log: cfg.Logger.With("component", "notifier"), wake: make(chan struct{}, 1),
		timeout: cfg.Timeout, poll: cfg.PollInterval, userAgent: cfg.UserAgent,
	}
	if n.cfg.URL != "" {
		n.client = newEgressClient(cfg.egress(2)) // delivery.proxy and ca_file apply; no client certificate
	}
	return n
}

// Wake makes Run look for due notifications now (after a batch that
// wrote one: journal.WriterConfig.OnNotify).
func (n *Notifier) Wake() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// message builds the notification of a state change, or nil when no
// notify.url is set.
func (n *Notifier) message(id string, prev, state journal.Health, why string, res attemptResult) *journal.NotificationRow {
	if n.cfg.URL == "" {
		return nil
	}
	kind := NotifyFailing
	switch state {
	case journal.Healthy:
		kind = NotifyRecovered
	case journal.Disabled:
		kind = NotifyDisabled
	}
	lastError := res.Error
	if res.ErrorClass == ClassTransform {
		// CEL's errors can quote the event's values (a customer's email),
		// which stay out of the admin's channel as out of logs (found by a
		// review); the delivery's history has the text.
		lastError = "the transform failed; the delivery's history says why"
	}
	b := notificationBody{
		Type: "subscription." + kind, Subscription: id, State: string(state), PreviousState: string(prev),
		LastStatusCode: res.Status, LastError: lastError, ResponseExcerpt: excerpt(res.Body, 300), At: res.At,
	}
	switch kind {
	case NotifyFailing:
		b.Text = fmt.Sprintf(":rotating_light: dzhook: webhook subscription *%s* is failing: %s (last answer: %s). Deliveries go on being attempted; failed ones can be retried by hand.", id, why, answer(res))
	case NotifyRecovered:
		b.Text = fmt.Sprintf(":white_check_mark: dzhook: webhook subscription *%s* has recovered (HTTP %d).", id, res.Status)
	case NotifyDisabled:
		b.Text = fmt.Sprintf(":no_entry: dzhook: webhook subscription *%s* was disabled: its receiver answered 410 Gone. Resume it when the endpoint is back.", id)
	}
	body, err := json.Marshal(b)
	if err != nil {
		return nil
	}
	return &journal.NotificationRow{SubscriptionID: id, Kind: kind, Body: body}
}

func answer(res attemptResult) string {
	if res.Status != 0 {
		return fmt.Sprintf("HTTP %d", res.Status)
	}
	return res.ErrorClass + " error"
}

// excerpt returns up to n bytes of b as valid UTF-8.
func excerpt(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// notifyBackoff is the delay before a notification's next try.
func notifyBackoff(attempts int) time.Duration {
	d := time.Second << min(attempts, 10)
	return min(d, 10*time.Minute)
}

// maxNotifyAttempts bounds the tries of one notification (about 3 h).
const maxNotifyAttempts = 24

// Run sends the journal's due notifications until ctx ends, retrying
// failures with backoff; a notification being sent when ctx ends is sent
// again later (by this or another instance). It runs beside the
// deliveries and never holds them up. Without notify.url it only waits.
func (n *Notifier) Run(ctx context.Context) error {
	if n.cfg.URL == "" {
		<-ctx.Done()
		return nil
	}
	t := beat.NewTicker(n.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-n.wake:
		}
		n.sendDue(ctx)
	}
}

// sendDue sends the due notifications one claim at a time: each is leased
// for twice the timeout of its one POST. Claimed 20 at a time, those sent
// after the first few, one after another, went past their lease, and
// another process sharing the journal claimed and sent them again.
func (n *Notifier) sendDue(ctx context.Context) {
	for ctx.Err() == nil {
		due, err := n.store.ClaimNotifications(ctx, 1, 2*n.timeout)
		if err != nil {
			if ctx.Err() == nil {
				n.log.Warn("claiming notifications failed", "err", err)
			}
			return
		}
		if len(due) == 0 {
			return
		}
		for _, m := range due {
			n.send(ctx, m)
		}
	}
}

// send posts one notification and records the outcome.
func (n *Notifier) send(ctx context.Context, m journal.Notification) {
	eventType := "subscription." + m.Kind
	if m.SubscriptionID == "" { // about dzhook itself: the kind is the type
		eventType = m.Kind
	}
	res := post(ctx, n.client, request{
		url: n.cfg.URL, body: m.Body, eventType: eventType, eventID: fmt.Sprintf("ntf_%d", m.ID),
		deliveryID: fmt.Sprintf("ntf_%d", m.ID), attempt: m.Attempts, secret: n.cfg.Secret, userAgent: n.userAgent,
	}, n.timeout, 512)
	var sendErr error
	if res.Status < 200 || res.Status >= 300 {
		sendErr = errors.New(cmp.Or(res.Error, fmt.Sprintf("HTTP %d", res.Status)))
	}
	next := time.Now().Add(notifyBackoff(m.Attempts))
	if sendErr != nil && m.Attempts >= maxNotifyAttempts {
		next = time.Now().Add(100 * 365 * 24 * time.Hour) // given up; kept for the record
		n.log.Error("admin notification given up", "subscription", m.SubscriptionID, "kind", m.Kind, "attempts", m.Attempts, "err", sendErr)
	} else if sendErr != nil {
		n.log.Warn("admin notification failed; retrying", "subscription", m.SubscriptionID, "kind", m.Kind, "attempt", m.Attempts, "err", sendErr)
	}
	if err := n.store.NotificationSent(ctx, m.ID, sendErr, next); err != nil && ctx.Err() == nil {
		n.log.Warn("recording a notification failed", "err", err)
	}
}

// System notification kinds: the stream stopped or refused to go on, for
// a reason only the operator can fix. They have no subscription.
const (
	NotifyStreamStalled = "stream.stalled"
	NotifyStreamGap     = "stream.gap"
	// NotifyTableMissing: a mapped table is not streamed (dropped,
	// renamed, or out of the publication).
	NotifyTableMissing = "stream.table_missing"
	// NotifyTableStreamed: tables told missing are streamed again.
	NotifyTableStreamed = "stream.table_streamed"
)

// systemBody is what notify.url receives for a system notification.
type systemBody struct {
	Text   string            `json:"text"`
	Type   string            `json:"type"`
	Detail map[string]string `json:"detail,omitempty"`
	At     time.Time         `json:"at"`
}

// NotifySystem queues a notification about dzhook itself (not one
// subscription) through the journal writer, like the subscriptions' ones,
// so it survives a crash and any instance sends it. text is the sentence
// the admin reads; it must name no secret. Callers send one per
// occurrence of a condition, not one per check.
func (d *Dispatcher) NotifySystem(ctx context.Context, kind, text string, detail map[string]string) error {
	if d.notifier.cfg.URL == "" {
		return nil
	}
	row, err := SystemNotification(kind, text, detail)
	if err != nil {
		return err
	}
	return d.records.Put(ctx, journal.Record{Notify: &row})
}

// SystemNotification is the journal row of a system notification, for
// those who write it to the journal themselves (a start that fails).
func SystemNotification(kind, text string, detail map[string]string) (journal.NotificationRow, error) {
	body, err := json.Marshal(systemBody{Text: ":rotating_light: dzhook: " + text, Type: kind, Detail: detail, At: time.Now().UTC()})
	return journal.NotificationRow{Kind: kind, Body: body}, err
}
