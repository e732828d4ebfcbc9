package fanout

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

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

// notification builds the message for a state change, or nil when no
// notify.url is set.
func (d *Dispatcher) notification(id, prev, state string, res attemptResult) *journal.NotificationRow {
	if d.cfg.Notify.URL == "" {
		return nil
	}
	kind := NotifyFailing
	switch state {
	case StateHealthy:
		kind = NotifyRecovered
	case StateDisabled:
		kind = NotifyDisabled
	}
	b := notificationBody{
		Type: "subscription." + kind, Subscription: id, State: state, PreviousState: prev,
		LastStatusCode: res.Status, LastError: res.Error, ResponseExcerpt: excerpt(res.Body, 300), At: res.At,
	}
	switch kind {
	case NotifyFailing:
		b.Text = fmt.Sprintf(":rotating_light: dzhook: webhook subscription *%s* is failing: a delivery used up its retry schedule (last answer: %s). Deliveries go on being attempted; failed ones can be retried by hand.", id, answer(res))
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

// notifyLoop sends the journal's due notifications, retrying failures with
// backoff. It runs beside the deliveries and never holds them up.
func (d *Dispatcher) notifyLoop(ctx context.Context) {
	if d.cfg.Notify.URL == "" {
		<-ctx.Done()
		return
	}
	client := newClient(d.cfg.Timeout, 2, d.cfg.DialContext, d.cfg.RootCAs)
	t := time.NewTicker(d.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.nwake:
		}
		due, err := d.cfg.Journal.ClaimNotifications(ctx, 20, 2*d.cfg.Timeout)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Warn("claiming notifications failed", "err", err)
			}
			continue
		}
		for _, n := range due {
			res := post(ctx, client, request{
				url: d.cfg.Notify.URL, body: n.Body, eventType: "subscription." + n.Kind, eventID: fmt.Sprintf("ntf_%d", n.ID),
				deliveryID: fmt.Sprintf("ntf_%d", n.ID), attempt: n.Attempts, secret: d.cfg.Notify.Secret, userAgent: d.cfg.UserAgent,
			}, d.cfg.Timeout, 512)
			var sendErr error
			if res.Status < 200 || res.Status >= 300 {
				sendErr = fmt.Errorf("%s", cmpOr(res.Error, fmt.Sprintf("HTTP %d", res.Status)))
			}
			next := time.Now().Add(notifyBackoff(n.Attempts))
			if sendErr != nil && n.Attempts >= maxNotifyAttempts {
				next = time.Now().Add(100 * 365 * 24 * time.Hour) // given up; kept for the record
				d.log.Error("admin notification given up", "subscription", n.SubscriptionID, "kind", n.Kind, "attempts", n.Attempts, "err", sendErr)
			} else if sendErr != nil {
				d.log.Warn("admin notification failed; retrying", "subscription", n.SubscriptionID, "kind", n.Kind, "attempt", n.Attempts, "err", sendErr)
			}
			if err := d.cfg.Journal.NotificationSent(ctx, n.ID, sendErr, next); err != nil && ctx.Err() == nil {
				d.log.Warn("recording a notification failed", "err", err)
			}
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
