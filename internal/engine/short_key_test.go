package engine

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/journal"
)

// TestStoredShortStandardKeyBlocksNoChange: a runtime subscription
// stored by an older dzhook with standard_webhooks and a whsec_ key of 12
// bytes (accepted then) could not be changed at all after the 16-byte
// rule: a PATCH that gives no secret (here active: false) was refused for
// the stored secret, where a stored URL or header refused since is not
// (found by a review). A rotation to a short key is still refused.
func TestStoredShortStandardKeyBlocksNoChange(t *testing.T) {
	e, created := runtimeSubscriptionOn(t, true)
	ctx := context.Background()
	m := e.Manager()
	// What the previous version stored: whsec_ + base64 of 12 bytes.
	mo := managerOf{e}
	rs, err := mo.current(created.ID)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := mo.seal(created.ID, sealedPart{Secret: "whsec_AAAAAAAAAAAAAAAA", URL: rs.cfg.URL})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := e.journal.RotateRuntime(ctx, created.ID, rs.rev, sealed, "", now, now, journal.AuditRow{Action: "rotate", Subscription: created.ID, Fields: []string{"secret"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.UpdateSubscription(ctx, created.ID, api.SubscriptionInput{Active: ptr(false)}, ""); err != nil {
		t.Errorf("PATCH {active: false} of a subscription whose stored key predates the 16-byte rule: %v; want it applied", err)
	}
	if _, err := m.RotateSecret(ctx, created.ID, api.SecretRotation{Secret: ptr("whsec_BBBBBBBBBBBBBBBB")}, ""); err == nil || !strings.Contains(err.Error(), "12 bytes") {
		t.Errorf("a rotation to a 12-byte key: %v, want refused", err)
	}
}
