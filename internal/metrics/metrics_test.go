package metrics

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

// TestBacklogGauges: the journal's backlog becomes per-subscription
// gauges, blocked ordering keys included, and is read once per
// backlogInterval however often Prometheus scrapes.
func TestBacklogGauges(t *testing.T) {
	reads := 0
	m := New(Sources{
		Subscriptions: func() []fanout.SubscriptionStatus {
			return []fanout.SubscriptionStatus{{ID: "crm", Ordering: fanout.OrderEntity}, {ID: "slack", Ordering: fanout.OrderNone}}
		},
		Backlogs: func(context.Context) (map[string]journal.Backlog, error) {
			reads++
			return map[string]journal.Backlog{"crm": {Pending: 4, BlockedKeys: 3}}, nil
		},
	})
	want := map[string]float64{"crm": 3, "slack": 0}
	for range 3 {
		mfs, err := m.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "dzhook_ordered_blocked_keys" {
				continue
			}
			if mf.GetType() != dto.MetricType_GAUGE {
				t.Errorf("dzhook_ordered_blocked_keys is a %v, want a gauge", mf.GetType())
			}
			for _, mt := range mf.GetMetric() {
				for _, l := range mt.GetLabel() {
					if l.GetName() == "subscription" {
						got[l.GetValue()] = mt.GetGauge().GetValue()
					}
				}
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("dzhook_ordered_blocked_keys: got %v, want %v", got, want)
		}
	}
	if reads != 1 {
		t.Errorf("the backlog was read %d times in three scrapes, want once (cached)", reads)
	}
}

// TestReplicationBytes: the slot's lag and retained WAL are gauges once
// the stream knows them, and absent before (-1), rather than a 0 that
// would read as "caught up".
func TestReplicationBytes(t *testing.T) {
	stats := StreamStats{LagBytes: -1, RetainedWALBytes: -1}
	m := New(Sources{Stream: func() StreamStats { return stats }})
	gauges := func() map[string]float64 {
		t.Helper()
		return gaugeValues(t, m, "dzhook_replication_lag_bytes", "dzhook_replication_retained_wal_bytes")
	}
	if got := gauges(); len(got) != 0 {
		t.Errorf("before the first poll: got %v, want neither gauge", got)
	}
	stats.LagBytes, stats.RetainedWALBytes = 4096, 1<<20
	want := map[string]float64{"dzhook_replication_lag_bytes": 4096, "dzhook_replication_retained_wal_bytes": 1 << 20}
	if got := gauges(); !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestHeartbeatGauges: the last journal heartbeat is a Unix timestamp
// and the processes alive count this one; both are absent until the
// first heartbeat, so absent() and time() - timestamp alerts can tell.
func TestHeartbeatGauges(t *testing.T) {
	var last time.Time
	m := New(Sources{Heartbeat: func() (time.Time, int) { return last, 2 }})
	gauges := func() map[string]float64 {
		t.Helper()
		return gaugeValues(t, m, "dzhook_heartbeat_timestamp_seconds", "dzhook_journal_instances")
	}
	if got := gauges(); len(got) != 0 {
		t.Errorf("before the first heartbeat: got %v, want neither gauge", got)
	}
	last = time.Unix(1_700_000_000, 500_000_000)
	want := map[string]float64{"dzhook_heartbeat_timestamp_seconds": 1_700_000_000.5, "dzhook_journal_instances": 3}
	if got := gauges(); !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// gaugeValues gathers m and returns the value of each of the named
// gauges that is exported (absent ones are left out); a named metric of
// another type fails the test.
func gaugeValues(t *testing.T, m *Metrics, names ...string) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if !slices.Contains(names, mf.GetName()) {
			continue
		}
		if mf.GetType() != dto.MetricType_GAUGE {
			t.Errorf("%s is a %v, want a gauge", mf.GetName(), mf.GetType())
		}
		got[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
	}
	return got
}

// TestObserverSeries: what fanout observes lands in the series of its
// subscription, event type, status code and outcome (the series are
// looked up once and kept: none may take another's counts).
func TestObserverSeries(t *testing.T) {
	m := New(Sources{})
	m.EventDispatched("request.created", 1)
	m.EventDispatched("request.created", 2)
	m.EventDispatched("user.deactivated", 1)
	m.DeliveryRecorded("a", journal.Pending)
	m.DeliveryRecorded("b", journal.Held)
	for range 2 {
		m.AttemptFinished("a", 10*time.Millisecond, 200, "", fanout.Delivered)
	}
	m.AttemptFinished("a", 5*time.Millisecond, 503, "http", fanout.Retry)
	m.AttemptFinished("b", time.Second, 0, "timeout", fanout.Retry)
	m.AttemptFinished("b", 20*time.Millisecond, 200, "", fanout.Delivered)

	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range mt.GetLabel() {
				key += " " + l.GetName() + "=" + l.GetValue()
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				got[key] = mt.GetCounter().GetValue()
			case dto.MetricType_HISTOGRAM:
				got[key] = float64(mt.GetHistogram().GetSampleCount())
			}
		}
	}
	want := map[string]float64{
		"dzhook_events_total event=request.created":                2,
		"dzhook_events_total event=user.deactivated":               1,
		"dzhook_deliveries_total outcome=queued subscription=a":    1,
		"dzhook_deliveries_total outcome=held subscription=b":      1,
		"dzhook_deliveries_total outcome=delivered subscription=a": 2,
		"dzhook_deliveries_total outcome=retry subscription=a":     1,
		"dzhook_deliveries_total outcome=retry subscription=b":     1,
		"dzhook_deliveries_total outcome=delivered subscription=b": 1,
		"dzhook_attempts_total code=200 subscription=a":            2,
		"dzhook_attempts_total code=503 subscription=a":            1,
		"dzhook_attempts_total code=0 subscription=b":              1,
		"dzhook_attempts_total code=200 subscription=b":            1,
		"dzhook_attempt_errors_total class=http subscription=a":    1,
		"dzhook_attempt_errors_total class=timeout subscription=b": 1,
		"dzhook_attempt_duration_seconds subscription=a":           3,
		"dzhook_attempt_duration_seconds subscription=b":           2,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok && (strings.HasPrefix(k, "dzhook_events") || strings.HasPrefix(k, "dzhook_deliveries") || strings.HasPrefix(k, "dzhook_attempt")) {
			t.Errorf("unexpected series %s = %v", k, v)
		}
	}
}

// BenchmarkAttemptObserved: what the metrics cost an attempt.
func BenchmarkAttemptObserved(b *testing.B) {
	m := New(Sources{})
	b.ReportAllocs()
	for b.Loop() {
		m.DeliveryRecorded("crm", journal.Pending)
		m.AttemptFinished("crm", 3*time.Millisecond, 204, "", fanout.Delivered)
	}
}

// TestGoneSubscriptionsForgotten: the series of a subscription this
// process no longer runs (deleted, removed by a reload) leave /metrics at
// the next scrape; they stayed until the process restarted, for every
// subscription ever created through the API.
func TestGoneSubscriptionsForgotten(t *testing.T) {
	running := []fanout.SubscriptionStatus{{ID: "a"}, {ID: "b"}}
	m := New(Sources{Subscriptions: func() []fanout.SubscriptionStatus { return running }})
	for _, id := range []string{"a", "b"} {
		m.DeliveryRecorded(id, journal.Pending)
		m.AttemptFinished(id, 10*time.Millisecond, 503, "http", fanout.Retry)
		m.StateChanged(id, journal.Healthy, journal.Failing)
	}
	series := func() (a, b int) {
		mfs, err := m.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if !strings.HasPrefix(mf.GetName(), "dzhook_deliveries") && !strings.HasPrefix(mf.GetName(), "dzhook_attempt") && !strings.HasPrefix(mf.GetName(), "dzhook_subscription_transitions") {
				continue
			}
			for _, mt := range mf.GetMetric() {
				for _, l := range mt.GetLabel() {
					if l.GetName() == "subscription" && l.GetValue() == "a" {
						a++
					}
					if l.GetName() == "subscription" && l.GetValue() == "b" {
						b++
					}
				}
			}
		}
		return a, b
	}
	if a, b := series(); a == 0 || b != a {
		t.Fatalf("before: %d series of a, %d of b", a, b)
	}
	running = running[:1]
	series() // this scrape forgets b; the counters it gathered may still hold it
	if a, b := series(); a == 0 || b != 0 {
		t.Errorf("after b is gone: %d series of a, %d of b, want b's gone and a's kept", a, b)
	}
}

// TestActiveGauge: an inactive subscription's deliveries wait on purpose;
// the alert rules leave it out by dzhook_subscription_active (its oldest
// pending delivery's age grows for good, and paged).
func TestActiveGauge(t *testing.T) {
	m := New(Sources{Subscriptions: func() []fanout.SubscriptionStatus {
		return []fanout.SubscriptionStatus{{ID: "crm", Active: true}, {ID: "old"}}
	}})
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "dzhook_subscription_active" {
			for _, mt := range mf.GetMetric() {
				got[mt.GetLabel()[0].GetValue()] = mt.GetGauge().GetValue()
			}
		}
	}
	if want := map[string]float64{"crm": 1, "old": 0}; !maps.Equal(got, want) {
		t.Errorf("dzhook_subscription_active %v, want %v", got, want)
	}
}

// TestScrapedDescribed: every series collected at scrape time has its
// descriptor described, as a pedantic registry demands;
// dzhook_subscription_active was not.
func TestScrapedDescribed(t *testing.T) {
	m := New(Sources{})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(&scraped{m: m, src: Sources{
		Stream:        func() StreamStats { return StreamStats{LagBytes: 1, RetainedWALBytes: 1} },
		Subscriptions: func() []fanout.SubscriptionStatus { return []fanout.SubscriptionStatus{{ID: "crm", Active: true}} },
		Heartbeat:     func() (time.Time, int) { return time.Now(), 0 },
	}})
	if _, err := reg.Gather(); err != nil {
		t.Errorf("pedantic gather: %v", err)
	}
}
