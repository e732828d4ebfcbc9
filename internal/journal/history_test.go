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

// waitingBehind is GetDelivery's WaitingBehind of id, "" for none.
func waitingBehind(t *testing.T, s *Store, id string) string {
	t.Helper()
	d, _, _, err := s.GetDelivery(context.Background(), id)
	if err != nil {
		t.Fatalf("GetDelivery(%s): %v", id, err)
	}
	if d.WaitingBehind == nil {
		return ""
	}
	return *d.WaitingBehind
}

// TestGetDeliveryWaitingBehind: a pending ordered delivery that is not
// its key's head names what it waits for: the head it is parked behind,
// or, not parked, its key's head; once that head is finished and before
// Unpark, the key's next head, not the finished one. A head, a finished
// delivery, an unordered one and a held one name none.
func TestGetDeliveryWaitingBehind(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	for _, b := range []*Batch{orderedBatch("k", 0, 4), orderedBatch("fresh", 0, 2), pendingBatch("loose")} {
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	held := keyedBatch(time.Now(), "crm", "h", "held_1", "held_2")
	for i := range held.Deliveries {
		held.Deliveries[i].State = "held"
	}
	if err := s.Write(ctx, held); err != nil {
		t.Fatal(err)
	}
	// k's head failed its first attempt and waits an hour: the rest of k
	// is parked behind it.
	head := "dlv_k_000001"
	failFirstAttempt(t, s, head)
	if n, _, err := s.Park(ctx, []string{"crm"}, time.Minute, 100); err != nil || n != 3 {
		t.Fatalf("Park parked %d (err %v), want the 3 behind %s", n, err, head)
	}
	for id, want := range map[string]string{
		head: "", "dlv_k_000002": head, "dlv_k_000004": head,
		"dlv_fresh_000001": "", "dlv_fresh_000002": "dlv_fresh_000001", // not parked: the key's head
		"dlv_loose": "", "dlv_held_2": "",
	} {
		if got := waitingBehind(t, s, id); got != want {
			t.Errorf("%s waits behind %q, want %q", id, got, want)
		}
	}
	// The head is delivered; until Unpark, k's others still name it as
	// parked_behind, and wait for k's next head instead.
	if err := s.Write(ctx, &Batch{
		Updates:  []DeliveryUpdate{{ID: head, State: "delivered", Attempts: 2, LastStatus: 200, LastAttemptAt: time.Now()}},
		Attempts: []AttemptRow{{DeliveryID: head, Attempt: 2, At: time.Now(), Trigger: "manual", StatusCode: 200}},
	}); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{head: "", "dlv_k_000002": "", "dlv_k_000003": "dlv_k_000002", "dlv_k_000004": "dlv_k_000002"} {
		if got := waitingBehind(t, s, id); got != want {
			t.Errorf("after %s was delivered, %s waits behind %q, want %q", head, id, got, want)
		}
	}
}

// TestBacklogsCountBlockedHeads: a key counts as blocked when its head,
// its first unfinished delivery, waits for a retry (pending, attempted,
// not queued for a manual retry), and the oldest such head is named with
// its key. An attempted pending delivery behind a head not yet attempted
// blocks nothing, and neither does a failed head that a retry of failed
// deliveries made pending: both were counted.
func TestBacklogsCountBlockedHeads(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	at := time.Now().Add(-time.Hour)
	for _, b := range []*Batch{
		keyedBatch(at, "crm", "req_old", "old_1", "old_2"),
		keyedBatch(at.Add(time.Minute), "crm", "req_a", "a_1", "a_2"),
		keyedBatch(at.Add(2*time.Minute), "crm", "req_b", "b_1", "b_2"),
		keyedBatch(at.Add(3*time.Minute), "crm", "req_c", "c_1", "c_2"),
	} {
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	retry, now := time.Now().Add(time.Hour), time.Now()
	failed := func(id string, state State) DeliveryUpdate {
		return DeliveryUpdate{ID: id, State: state, Attempts: 1, NextAttemptAt: retry, LastStatus: 503, LastAttemptAt: now}
	}
	if err := s.Write(ctx, &Batch{Updates: []DeliveryUpdate{
		failed("dlv_old_1", Pending), failed("dlv_a_1", Pending), // heads waiting for their retry
		failed("dlv_b_2", Pending), // attempted, behind b_1, which is not
		failed("dlv_c_1", Failed),  // failed, then retried in bulk below
	}}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.RetryFailed(ctx, "crm", nil, nil, "self", time.Minute); err != nil || n != 1 {
		t.Fatalf("RetryFailed: %d (err %v), want c_1", n, err)
	}
	backlogs, err := s.Backlogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b := backlogs["crm"]
	if b.BlockedKeys != 2 || b.OldestBlockedKey != "req_old" || b.OldestBlockedHead != "dlv_old_1" || !b.OldestBlocked.Equal(at.Truncate(time.Microsecond)) {
		t.Errorf("blocked keys %d, oldest %q (head %q, created %v), want 2 (req_old and req_a), oldest req_old (head dlv_old_1, created %v)",
			b.BlockedKeys, b.OldestBlockedKey, b.OldestBlockedHead, b.OldestBlocked, at)
	}
}
