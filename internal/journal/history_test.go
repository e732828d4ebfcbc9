package journal

import (
	"context"
	"slices"
	"testing"
	"time"
)

// keyedBatch is one ordered delivery per id, of key, for sub, created
// a millisecond apart from now on.
func keyedBatch(now time.Time, sub, key string, ids ...string) *Batch {
	b := &Batch{}
	for i, id := range ids {
		b.Events = append(b.Events, EventRow{ID: "whk_" + id, Type: "request.updated", Body: []byte(`{}`), OccurredAt: now})
		b.Deliveries = append(b.Deliveries, DeliveryRow{ID: "dlv_" + id, EventID: "whk_" + id, SubscriptionID: sub,
			EventType: "request.updated", State: "pending", NextAttemptAt: now, CreatedAt: now.Add(time.Duration(i) * time.Millisecond),
			Ordered: true, OrderingKey: key, Position: int64(i + 1)})
	}
	return b
}

// listIDs pages through ListDeliveries two at a time and returns every
// id, in the order listed.
func listIDs(t *testing.T, s *Store, f DeliveryFilter) []string {
	t.Helper()
	var got []string
	f.Limit = 2
	for range 10 {
		list, next, err := s.ListDeliveries(context.Background(), f)
		if err != nil {
			t.Fatalf("ListDeliveries(%+v): %v", f, err)
		}
		for _, d := range list {
			got = append(got, d.ID)
		}
		if next == "" {
			return got
		}
		f.Cursor = next
	}
	t.Fatalf("ListDeliveries(%+v) did not end in 10 pages", f)
	return nil
}

// TestListDeliveriesOfAKey: the ordering key filter lists the deliveries
// of that key as stored, newest first and across pages, of every
// subscription or of one, finished ones too, and with the other filters;
// a replay's deliveries of the entity ("replay:<id>:k") are another key.
func TestListDeliveriesOfAKey(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	at := time.Now().Add(-time.Minute)
	for _, b := range []*Batch{
		keyedBatch(at, "crm", "k", "crm_k1", "crm_k2", "crm_k3"),
		keyedBatch(at, "crm", "other", "crm_o1", "crm_o2"),
		keyedBatch(at, "erp", "k", "erp_k1"),
		keyedBatch(at, "crm", "replay:rpl_1:k", "crm_r1"),
	} {
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Write(ctx, &Batch{Updates: []DeliveryUpdate{{ID: "dlv_crm_k1", State: "delivered", Attempts: 1, LastStatus: 200, LastAttemptAt: time.Now()}}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		f    DeliveryFilter
		want []string
	}{
		{"every subscription", DeliveryFilter{Subscriptions: []string{"crm", "erp"}, OrderingKey: "k"},
			[]string{"dlv_crm_k3", "dlv_crm_k2", "dlv_erp_k1", "dlv_crm_k1"}},
		{"one subscription", DeliveryFilter{Subscription: "crm", OrderingKey: "k"}, []string{"dlv_crm_k3", "dlv_crm_k2", "dlv_crm_k1"}},
		{"delivered", DeliveryFilter{Subscription: "crm", OrderingKey: "k", State: Delivered}, []string{"dlv_crm_k1"}},
		{"pending", DeliveryFilter{Subscriptions: []string{"crm"}, OrderingKey: "k", State: Pending}, []string{"dlv_crm_k3", "dlv_crm_k2", "dlv_erp_k1"}},
		{"a replay's key", DeliveryFilter{Subscription: "crm", OrderingKey: "replay:rpl_1:k"}, []string{"dlv_crm_r1"}},
		{"a key with none", DeliveryFilter{Subscription: "crm", OrderingKey: "K"}, nil},
	} {
		if got := listIDs(t, s, c.f); !slices.Equal(got, c.want) {
			t.Errorf("%s: listed %v, want %v", c.name, got, c.want)
		}
	}
}
