package mapping

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/ids"
)

func keyMapper(t *testing.T) *Mapper {
	t.Helper()
	cat, err := catalog.New(catalog.Event{Name: "order.shipped"})
	if err != nil {
		t.Fatal(err)
	}
	return NewMapper(MapperConfig{
		Mapping: DefaultConfig(), Source: ids.NewSource("1"), Catalog: cat, OutboxTable: "public.dzhook_outbox",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
}

// outboxInsert is an insert into an outbox table with the given columns
// after id, event and payload.
func outboxInsert(extra []string, values ...cdc.Value) *cdc.Change {
	names := append([]string{"id", "event", "payload"}, extra...)
	cols := make([]cdc.Column, len(names))
	for i, n := range names {
		cols[i] = cdc.Column{Name: n}
	}
	row := append(cdc.Tuple{{V: int64(17)}, {V: "order.shipped"}, {V: `{"order":"ord_9"}`}}, values...)
	return &cdc.Change{Op: cdc.OpInsert, Relation: cdc.NewRelation(1, "public", "dzhook_outbox", 'd', cols), New: row,
		CommitLSN: 0x16B3748, CommitTime: time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)}
}

func message(content string) *cdc.Change {
	return &cdc.Change{Op: cdc.OpMessage, Message: &cdc.Message{Prefix: "dzdesk", Content: []byte(content), Transactional: true, LSN: 1},
		CommitLSN: 1, CommitTime: time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)}
}

// TestCustomKeys: outbox rows and messages carry an optional key; without
// one, or with an empty one, the event is unordered. A message whose key is
// not a string is rejected, as one whose event is not a string is.
func TestCustomKeys(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change *cdc.Change
		want   string
		reject bool
	}{
		{"outbox, key", outboxInsert([]string{"key"}, cdc.Value{V: "ord_9"}), "ord_9", false},
		{"outbox, NULL key", outboxInsert([]string{"key"}, cdc.Value{State: cdc.Null}), "", false},
		{"outbox, empty key", outboxInsert([]string{"key"}, cdc.Value{V: ""}), "", false},
		{"outbox, no key column", outboxInsert(nil), "", false},
		{"outbox, key column not text", outboxInsert([]string{"key"}, cdc.Value{V: int64(9)}), "", false},
		{"outbox, key column after created_at", outboxInsert([]string{"created_at", "key"}, cdc.Value{V: time.Now()}, cdc.Value{V: "ord_9"}), "ord_9", false},
		{"message, key", message(`{"event":"order.shipped","key":"ord_9","data":{"order":"ord_9"}}`), "ord_9", false},
		{"message, key after data", message(`{"event":"order.shipped","data":{},"key":"ord_9"}`), "ord_9", false},
		{"message, no key", message(`{"event":"order.shipped","data":{}}`), "", false},
		{"message, null key", message(`{"event":"order.shipped","key":null,"data":{}}`), "", false},
		{"message, empty key", message(`{"event":"order.shipped","key":"","data":{}}`), "", false},
		{"message, KEY is not key", message(`{"event":"order.shipped","KEY":"ord_9","data":{}}`), "", false},
		{"message, number key", message(`{"event":"order.shipped","key":9,"data":{}}`), "", true},
		{"message, object key", message(`{"event":"order.shipped","key":{"id":"ord_9"},"data":{}}`), "", true},
		{"message, true key", message(`{"event":"order.shipped","key":true,"data":{}}`), "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs, rej := keyMapper(t).Map(context.Background(), tc.change, nil)
			if tc.reject {
				if rej == nil || len(evs) != 0 {
					t.Fatalf("got %d events and rejection %v, want a rejection", len(evs), rej)
				}
				if want := `content's "key" is not a string`; rej.Reason != want {
					t.Errorf("reason %q, want %q", rej.Reason, want)
				}
				return
			}
			if rej != nil || len(evs) != 1 {
				t.Fatalf("got %d events and rejection %v, want one event", len(evs), rej)
			}
			if evs[0].Key != tc.want {
				t.Errorf("key %q, want %q", evs[0].Key, tc.want)
			}
		})
	}
}

// TestKeyOfDeleteWithoutOldRow: a delete under the default replica
// identity carries only the old key columns; the key comes from them.
func TestKeyOfDeleteWithoutOldRow(t *testing.T) {
	rel := cdc.NewRelation(1, "public", "requests", 'd', []cdc.Column{{Name: "id"}, {Name: "title"}})
	c := &cdc.Change{Op: cdc.OpDelete, Relation: rel, Old: cdc.Tuple{{V: int64(123)}, {State: cdc.Null}}, CommitLSN: 1}
	evs, _ := keyMapper(t).Map(context.Background(), c, nil)
	if len(evs) != 1 || evs[0].Type != catalog.RequestDeleted || evs[0].Key != "req_123" {
		t.Fatalf("events %+v, want request.deleted with key req_123", evs)
	}
}

// TestKeyOfRowWithoutID: a row whose id is null gets no key, not a bare
// prefix that would queue every such row behind one another.
func TestKeyOfRowWithoutID(t *testing.T) {
	rel := cdc.NewRelation(1, "public", "users", 'f', []cdc.Column{{Name: "id"}, {Name: "email"}})
	c := &cdc.Change{Op: cdc.OpInsert, Relation: rel, New: cdc.Tuple{{State: cdc.Null}, {V: "a@b.c"}}, CommitLSN: 1}
	evs, _ := keyMapper(t).Map(context.Background(), c, nil)
	if len(evs) != 1 || evs[0].Key != "" {
		t.Fatalf("events %+v, want one with no key", evs)
	}
}

// TestSLAEventKeys: SLA events are ordered with their request's events.
func TestSLAEventKeys(t *testing.T) {
	m := keyMapper(t)
	start := time.Date(2024, 1, 15, 8, 0, 0, 0, time.UTC)
	base := Timer{SLAID: "7", RequestID: "123", SLAType: "resolution", StartedAt: start, TargetAt: start.Add(10 * time.Hour)}
	timers := SLATimers(base, []float64{75}, start, time.Time{})
	if len(timers) != 2 {
		t.Fatalf("timers %+v, want a warning and a breach", timers)
	}
	for _, tm := range timers {
		if ev := m.SLAEvent(tm); ev.Key != "req_123" {
			t.Errorf("%s: key %q, want req_123", ev.Type, ev.Key)
		}
	}
}
