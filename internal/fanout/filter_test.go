package fanout

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestFilterFailuresSaid: events a subscription's filter fails on (a
// field their data lacks) do not match it, and an operator at the
// default log level is told, once for a run of them, with their count;
// they were logged at debug only, so events went undelivered unexplained.
// Events the filter reads go out as before.
func TestFilterFailuresSaid(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	var logs testutil.SyncBuffer
	sub := Subscription{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true,
		Filter: `data.priority == "high"`}
	// A filter whose error quotes the event's data: the WARN leaves it out.
	hr := Subscription{ID: "hr", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true,
		Filter: `has(data.email) && timestamp(data.email) > timestamp("2020-01-01T00:00:00Z")`}
	ops := Subscription{ID: "ops", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true,
		Filter: `has(data.email) && {"a": 1}[data.email] == 1`} // "no such key: <the email>"
	d := start(t, store, Config{
		Subscriptions: []Subscription{sub, hr, ops}, Journal: store, Instance: "i1", Concurrency: 1,
		RetrySchedule: []time.Duration{0, time.Hour}, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	ctx := context.Background()
	evs := orderEvents([]string{"a", "b", "c", "d"}) // their data has no priority
	high := orderEvents([]string{"e"})[0]
	high.ID = "whk_high"
	high.Body = []byte(`{"id":"whk_high","event":"request.updated","timestamp":"2024-01-15T14:30:00Z","data":{"id":"e","priority":"high","email":"jane.private@company.com"}}`)
	for _, ev := range append(evs, high) {
		if err := d.Dispatch(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	rc.Wait(t, 1, 10*time.Second)
	if n := len(rc.Requests()); n != 1 || !strings.Contains(string(rc.Requests()[0].Body), "whk_high") {
		t.Errorf("%d deliveries, want the one event the filter matches", n)
	}
	out := logs.String()
	if n := strings.Count(out, "filter fails on some events"); n != 3 || !strings.Contains(out, "subscription=crm") || !strings.Contains(out, "subscription=hr") || !strings.Contains(out, "level=WARN") {
		t.Errorf("%d WARN lines about the failing filters, want 1 naming each subscription:\n%s", n, out)
	}
	if strings.Contains(out, "jane.private") {
		t.Errorf("the WARN quotes the event's data:\n%s", out)
	}
}

// TestACostlyFilterLeavesTheOthersTheirBudget: each subscription's filter
// has its own budget on an event. One subscription's keyword regex over a
// large comment (about a second here) spent a budget the event's filters
// shared, and another subscription's cheap filter after it was then not
// evaluated: the event it matched never reached it, and the WARN blamed
// its filter.
func TestACostlyFilterLeavesTheOthersTheirBudget(t *testing.T) {
	store := newJournal(t)
	kw, crm := testutil.NewReceiver(t), testutil.NewReceiver(t)
	d := start(t, store, Config{Subscriptions: []Subscription{
		{ID: "keywords", URL: kw.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true,
			Filter: `data.body.matches("(?i)\\b(outage|down|urgent|critical|sev1|p1)\\b")`},
		{ID: "crm", URL: crm.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true,
			Filter: `data.priority == "high"`},
	}, Journal: store, Instance: "i1", RetrySchedule: []time.Duration{0, time.Hour}, Logger: testutil.Logger(t)})
	ev := orderEvents([]string{"e"})[0]
	big := strings.Repeat("lorem ipsum dolor sit amet ", 120_000) // 3.2 MB, no keyword
	ev.Body = []byte(`{"id":"` + ev.ID + `","event":"request.updated","timestamp":"2024-01-15T14:30:00Z","data":{"id":"e","priority":"high","body":"` + big + `"}}`)
	if err := d.Dispatch(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	crm.Wait(t, 1, 30*time.Second)
}
