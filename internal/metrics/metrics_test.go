package metrics

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

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
