package admin

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/schemas"
)

// TestEventSchema: GET /v1/events/{name}/schema answers the event's JSON
// Schema as application/schema+json, a custom event's with its data
// schema, and a JSON 404 for an unknown event or a custom event without a
// schema; it needs the token like every /v1 route and takes no query.
func TestEventSchema(t *testing.T) {
	cat, err := catalog.New(catalog.Event{Name: "order.shipped"}, catalog.Event{Name: "order.paid"})
	if err != nil {
		t.Fatal(err)
	}
	set, err := schemas.New(map[string]any{"order.shipped": map[string]any{"type": "object", "required": []any{"order"}}})
	if err != nil {
		t.Fatal(err)
	}
	builtin, _ := schemas.Builtin("request.created")
	shipped, _ := set.Document("order.shipped")
	for _, tc := range []struct {
		name         string
		set          Schemas
		path, token  string
		code         int
		contentType  string
		body, errMsg string
	}{
		{"built-in", set, "/v1/events/request.created/schema", "t", 200, "application/schema+json", string(builtin), ""},
		{"built-in without a set", nil, "/v1/events/sla.breach/schema", "t", 200, "application/schema+json", "", ""},
		{"custom with a schema", set, "/v1/events/order.shipped/schema", "t", 200, "application/schema+json", string(shipped), ""},
		{"custom without a schema", set, "/v1/events/order.paid/schema", "t", 404, "application/json", "", `custom event "order.paid" is declared without a schema (custom_events[].schema)`},
		{"unknown", set, "/v1/events/order.lost/schema", "t", 404, "application/json", "", `no event "order.lost" (GET /v1/events lists them)`},
		{"no token", set, "/v1/events/request.created/schema", "", 401, "application/json", "", ""},
		{"a query", set, "/v1/events/request.created/schema?pretty=1", "t", 400, "application/json", "", `unknown parameter "pretty"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := New(Config{Token: "t", Catalog: cat, Schemas: tc.set, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			req := httptest.NewRequest("GET", tc.path, nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			if rec.Code != tc.code || rec.Header().Get("Content-Type") != tc.contentType {
				t.Fatalf("got %d %s, want %d %s: %s", rec.Code, rec.Header().Get("Content-Type"), tc.code, tc.contentType, rec.Body)
			}
			if tc.body != "" && rec.Body.String() != tc.body {
				t.Errorf("body %s, want the schema document %s", rec.Body, tc.body)
			}
			if tc.code == 200 {
				var doc struct{ Title string }
				if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil || !strings.Contains(tc.path, "/"+doc.Title+"/") {
					t.Errorf("document titled %q (%v), want the event's", doc.Title, err)
				}
				return
			}
			var e api.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || !strings.Contains(e.Message, tc.errMsg) {
				t.Errorf("error %s (%v), want it to contain %q", rec.Body, err, tc.errMsg)
			}
		})
	}
}
