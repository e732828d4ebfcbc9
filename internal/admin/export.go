package admin

import (
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

// SubscriptionOf is a subscription as the API shows it, without the
// journal's backlog (the answer to a change: the manager has the status,
// not the counts).
func SubscriptionOf(st fanout.SubscriptionStatus) api.Subscription {
	return subscriptionOf(st, journal.Backlog{}, time.Now())
}
