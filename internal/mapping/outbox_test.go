package mapping

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/schemas"
)

// TestCustomSchemaRejects: an outbox row or message whose data breaks its
// event's declared schema is rejected with the schema error's pointer; one
// that keeps to it, or whose event declares no schema, becomes an event.
func TestCustomSchemaRejects(t *testing.T) {
	set, err := schemas.New(map[string]any{"order.shipped": map[string]any{
		"type":       "object",
		"required":   []any{"order"},
		"properties": map[string]any{"order": map[string]any{"type": "string", "pattern": "^ord_"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.New(catalog.Event{Name: "order.shipped"}, catalog.Event{Name: "order.paid"})
	if err != nil {
		t.Fatal(err)
	}
	m := NewMapper(MapperConfig{
		Mapping: DefaultConfig(), Source: ids.NewSource("1"), Catalog: cat, OutboxTable: "public.dzhook_outbox",
		Schemas: set, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	row := func(event, payload string) *cdc.Change {
		c := outboxInsert(nil)
		c.New[1], c.New[2] = cdc.Value{V: event}, cdc.Value{V: payload}
		return c
	}
	for _, tc := range []struct {
		name   string
		change *cdc.Change
		reason string // "" for an event
	}{
		{"outbox, valid", row("order.shipped", `{"order": "ord_9", "extra": 1}`), ""},
		{"outbox, wrong pattern", row("order.shipped", `{"order": "9"}`), `data breaks the schema of order.shipped (custom_events[].schema): at /order: does not match pattern "^ord_"`},
		{"outbox, missing property", row("order.shipped", `{}`), `at /order: missing property 'order'`},
		{"outbox, no schema declared", row("order.paid", `{"anything": [1]}`), ""},
		{"message, valid", message(`{"event":"order.shipped","data":{"order":"ord_9"}}`), ""},
		{"message, wrong type", message(`{"event":"order.shipped","data":{"order":9}}`), `at /order: got number, want string`},
		{"message, no data", message(`{"event":"order.shipped"}`), `at /order: missing property 'order'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs, rej := m.Map(context.Background(), tc.change, nil)
			switch {
			case tc.reason == "" && (rej != nil || len(evs) != 1):
				t.Errorf("got %v and %d events, want one event", rej, len(evs))
			case tc.reason != "" && (rej == nil || !strings.Contains(rej.Reason, tc.reason) || len(evs) != 0):
				t.Errorf("got %v and %d events, want a rejection with %q", rej, len(evs), tc.reason)
			}
		})
	}
}
