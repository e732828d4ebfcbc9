package engine

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestTestSendTakesReloadedPrefixes: a test send after a reload that
// changed mapping.requests.id_prefix carries the new prefix, as live
// events do (it kept the start's).
func TestTestSendTakesReloadedPrefixes(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	e := start(t, testConfigWith(t, db, adminSection, "", sub("crm", rc.URL, "request.*")))
	next := testConfigWith(t, db, adminSection+"mapping:\n  requests:\n    id_prefix: tkt_\n", "", sub("crm", rc.URL, "request.*"))
	if err := e.Reload(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'one', 1)`)
	reqs := rc.Wait(t, 1, 20*time.Second)
	if !strings.Contains(string(reqs[0].Body), `"id":"tkt_1"`) {
		t.Fatalf("live event after the reload: %s, want tkt_1", reqs[0].Body)
	}
	a := newAdminClient(t, e)
	answer[api.AttemptReport](a, "POST", "/v1/subscriptions/crm/test", api.TestRequest{Event: "request.created"})
	reqs = rc.Wait(t, 2, 20*time.Second)
	if body := string(reqs[1].Body); !strings.Contains(body, `"id":"tkt_123"`) || strings.Contains(body, "req_") {
		t.Errorf("test event after the reload: %s, want tkt_123", body)
	}
}
