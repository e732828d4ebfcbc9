package metrics

import (
	"context"
	"errors"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

// readmeMetric finds a metric and its labels in the README's list:
// dzhook_queue_depth{subscription}.
var readmeMetric = regexp.MustCompile("`(dzhook_[a-z_]+)(?:\\{([a-z_,]+)\\})?`")

// TestReadmeListsEveryMetric: the README's Metrics paragraph names every
// series the registry exports, each with its labels, and nothing else. It
// had left out twelve, and the subscription label of four.
func TestReadmeListsEveryMetric(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	from := strings.Index(readme, "**Metrics**")
	if from < 0 {
		t.Fatal("README.md has no **Metrics** paragraph")
	}
	section := readme[from:]
	if end := strings.Index(section[len("**Metrics**"):], "\n**"); end >= 0 {
		section = section[:len("**Metrics**")+end]
	}
	documented := map[string][]string{}
	for _, m := range readmeMetric.FindAllStringSubmatch(section, -1) {
		var labels []string
		if m[2] != "" {
			labels = strings.Split(m[2], ",")
		}
		slices.Sort(labels)
		documented[m[1]] = labels
	}

	exported := exportedSeries(t)
	for name, labels := range exported {
		doc, ok := documented[name]
		switch {
		case !ok:
			t.Errorf("README.md, Metrics: %s{%s} is exported but not listed", name, strings.Join(labels, ","))
		case !slices.Equal(doc, labels):
			t.Errorf("README.md, Metrics: %s lists labels {%s}, the registry's are {%s}", name, strings.Join(doc, ","), strings.Join(labels, ","))
		}
	}
	for name := range documented {
		if _, ok := exported[name]; !ok {
			t.Errorf("README.md, Metrics: %s is listed but not exported", name)
		}
	}
}

// exportedSeries returns every dzhook_ metric the registry exports, with
// its label names (sorted), once every source has something to say and
// every observer method has been called.
func exportedSeries(t *testing.T) map[string][]string {
	t.Helper()
	m := New(Sources{
		Stream: func() StreamStats { return StreamStats{LagBytes: 1, RetainedWALBytes: 1} },
		Subscriptions: func() []fanout.SubscriptionStatus {
			return []fanout.SubscriptionStatus{{ID: "crm", Ordering: fanout.OrderEntity}}
		},
		Backlogs: func(context.Context) (map[string]journal.Backlog, error) {
			return map[string]journal.Backlog{"crm": {Pending: 1}}, nil
		},
		Heartbeat:           func() (time.Time, int) { return time.Now(), 1 },
		JournalFailingSince: func() time.Time { return time.Time{} },
	})
	m.EventDispatched("request.created", 1)
	m.DeliveryRecorded("crm", journal.Pending)
	m.AttemptFinished("crm", time.Millisecond, 500, "http", fanout.Retry)
	m.Unsent("crm", "transform", fanout.Failed)
	m.StateChanged("crm", journal.Healthy, journal.Failing)
	m.JournalFlushed(1, time.Millisecond, errors.New("journal down"))
	m.SetStalled("mapping", false)
	m.SetUnstreamedTables(0)
	m.Rejected()

	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "dzhook_") {
			continue
		}
		labels := map[string]bool{}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = true
			}
		}
		out[mf.GetName()] = slices.Sorted(maps.Keys(labels))
	}
	return out
}
