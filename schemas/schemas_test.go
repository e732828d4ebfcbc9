package schemas_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/schemas"
	"github.com/jackc/pglogrepl"
)

func newSet(t *testing.T, custom map[string]any) *schemas.Set {
	t.Helper()
	s, err := schemas.New(custom)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Every catalog event has a schema, and nothing else has one.
func TestEveryCatalogEventHasASchema(t *testing.T) {
	s := newSet(t, nil)
	var want []string
	for _, e := range catalog.Builtin() {
		want = append(want, e.Name)
		doc, ok := schemas.Builtin(e.Name)
		if !ok {
			t.Errorf("%s: no schemas/%s.json", e.Name, e.Name)
			continue
		}
		var d struct {
			Schema string `json:"$schema"`
			ID     string `json:"$id"`
			Title  string `json:"title"`
		}
		if err := json.Unmarshal(doc, &d); err != nil {
			t.Fatalf("%s: %v", e.Name, err)
		}
		if d.Schema != "https://json-schema.org/draft/2020-12/schema" || d.ID != schemas.BaseURL+e.Name+".json" || d.Title != e.Name {
			t.Errorf("%s: $schema %q, $id %q, title %q", e.Name, d.Schema, d.ID, d.Title)
		}
	}
	slices.Sort(want)
	if got := s.Names(); !slices.Equal(got, want) {
		t.Errorf("schemas of %v, want %v", got, want)
	}
	if _, ok := schemas.Builtin("../schemas/request.created"); ok {
		t.Error("Builtin reads a path")
	}
}

// The ids dzhook makes match the envelope's id pattern.
func TestEnvelopeIDs(t *testing.T) {
	s := newSet(t, nil)
	src := ids.NewSource("7301234567890123456")
	for _, id := range []string{
		src.NewID(pglogrepl.LSN(0x16B3748), 3, 0),
		src.NewID(pglogrepl.LSN(^uint64(0)), 1<<31, 255),
		src.NewTimedID("sla", "9", "breach", "123"),
		ids.TestEventID(),
	} {
		if err := s.Validate(mapping.Sample(catalog.SLABreach, id, time.Now())); err != nil {
			t.Errorf("id %s: %v", id, err)
		}
	}
}

// Every golden file of the mapping's tests validates against its event's
// schema (the placeholders made real), and every field in it is one the
// schema describes: the schemas are open to new fields, so only this
// catches a field added to the mapping and not to its schema.
func TestGoldenFilesValidate(t *testing.T) {
	s := newSet(t, nil)
	paths, err := filepath.Glob("../internal/mapping/testdata/*.golden.json")
	if err != nil {
		t.Fatal(err)
	}
	id := ids.NewSource("x").NewID(pglogrepl.LSN(42), 1, 0)
	seen := map[string]bool{}
	for _, p := range paths {
		event := strings.TrimSuffix(filepath.Base(p), ".golden.json")
		if strings.HasPrefix(event, "outbox.") {
			continue // custom events: no built-in schema
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		body := strings.NewReplacer(`"whk_ID"`, `"`+id+`"`, `"COMMIT_TIME"`, `"2024-01-15T14:35:00Z"`).Replace(string(b))
		if err := s.Validate([]byte(body)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		checkDescribed(t, p, event, []byte(body))
		seen[event] = true
	}
	for _, e := range catalog.Builtin() {
		if !seen[e.Name] && !strings.HasPrefix(e.Name, "sla.") { // SLA events have no golden file
			t.Errorf("no golden file of %s checked", e.Name)
		}
	}
}

// Sample, the body of every test send, validates for every event.
func TestSamplesValidate(t *testing.T) {
	s := newSet(t, nil)
	for _, e := range catalog.Builtin() {
		body := mapping.Sample(e.Name, ids.TestEventID(), time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC))
		if err := s.Validate(body); err != nil {
			t.Errorf("%s: %v", e.Name, err)
		}
		checkDescribed(t, "Sample", e.Name, body)
	}
}

// SLA events as the SLA clock makes them validate.
func TestSLAEventsValidate(t *testing.T) {
	s := newSet(t, nil)
	m := mapping.NewMapper(mapping.MapperConfig{Mapping: mapping.DefaultConfig()})
	target := time.Date(2024, 1, 15, 18, 0, 0, 0, time.UTC)
	for _, tm := range mapping.SLATimers(mapping.Timer{SLAID: "9", RequestID: "123", SLAType: "resolution",
		StartedAt: target.Add(-8 * time.Hour), TargetAt: target}, []float64{50, 75, 90}, target.Add(-8*time.Hour), time.Time{}) {
		ev := m.SLAEvent(tm)
		if err := s.Validate(ev.Body); err != nil {
			t.Errorf("%s (%s): %v: %s", ev.Type, tm.Kind, err, ev.Body)
		}
		checkDescribed(t, "SLAEvent", ev.Type, ev.Body)
	}
}

// checkDescribed fails for a property of data (or of an object in it)
// that the event's schema does not list.
func checkDescribed(t *testing.T, where, event string, body []byte) {
	t.Helper()
	doc, _ := schemas.Builtin(event)
	var schema struct {
		Properties struct {
			Data struct {
				Properties map[string]json.RawMessage `json:"properties"`
			} `json:"data"`
		} `json:"properties"`
		Defs struct {
			PersonFields struct {
				Properties map[string]json.RawMessage `json:"properties"`
			} `json:"personFields"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(doc, &schema); err != nil {
		t.Fatal(err)
	}
	var env struct{ Data map[string]any }
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatal(err)
	}
	for k, v := range env.Data {
		if _, ok := schema.Properties.Data.Properties[k]; !ok {
			t.Errorf("%s: %s: data.%s is not in the schema", where, event, k)
		}
		if person, ok := v.(map[string]any); ok {
			for pk := range person {
				if _, ok := schema.Defs.PersonFields.Properties[pk]; !ok {
					t.Errorf("%s: %s: data.%s.%s is not in the schema", where, event, k, pk)
				}
			}
		}
	}
}

// Hand-made payloads that break the schema fail, each at the pointer of
// what is wrong.
func TestInvalidPayloads(t *testing.T) {
	s := newSet(t, nil)
	good := string(mapping.Sample(catalog.RequestAssigned, ids.TestEventID(), time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)))
	for _, tc := range []struct {
		name, old, new, pointer, message string
	}{
		{"missing required field", `"title":"Cannot access email",`, ``, "/data/title", "missing property"},
		{"wrong id pattern", `"id":"req_123"`, `"id":"123"`, "/data/id", "does not match pattern"},
		{"wrong user id pattern", `"requester":{"id":"usr_123"`, `"requester":{"id":"req_123"`, "/data/requester/id", "does not match pattern"},
		{"bad date-time", `"createdAt":"2024-01-15T14:00:00Z"`, `"createdAt":"2024-01-15 14:00"`, "/data/createdAt", "date-time"},
		{"a time not in UTC", `"createdAt":"2024-01-15T14:00:00Z"`, `"createdAt":"2024-01-15T16:00:00+02:00"`, "/data/createdAt", "does not match pattern"},
		{"a time with fractions", `"timestamp":"2024-01-15T14:30:00Z"`, `"timestamp":"2024-01-15T14:30:00.123Z"`, "/timestamp", "does not match pattern"},
		{"null where not allowed", `"requester":{"id":"usr_123","email":"john@company.com"}`, `"requester":null`, "/data/requester", "null"},
		{"wrong event id", `"id":"whk_test_`, `"id":"evt_`, "/id", "does not match pattern"},
		{"wrong type", `"status":"open"`, `"status":3`, "/data/status", "want string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := strings.Replace(good, tc.old, tc.new, 1)
			if body == good {
				t.Fatalf("%q is not in the sample %s", tc.old, good)
			}
			err := s.Validate([]byte(body))
			var ve *schemas.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("got %v, want a ValidationError", err)
			}
			if ve.Pointer != tc.pointer || !strings.Contains(ve.Message, tc.message) {
				t.Errorf("got %q at %q, want %q at %q", ve.Message, ve.Pointer, tc.message, tc.pointer)
			}
		})
	}
	if err := s.Validate([]byte(`{"event":"order.shipped"}`)); !errors.Is(err, schemas.ErrNoSchema) {
		t.Errorf("unknown event: got %v, want ErrNoSchema", err)
	}
}

func TestCustomSchemas(t *testing.T) {
	custom := map[string]any{"order.shipped": map[string]any{
		"type":     "object",
		"required": []any{"orderId", "shippedAt"},
		"properties": map[string]any{
			"orderId":   map[string]any{"type": "string", "pattern": "^ord_"},
			"shippedAt": map[string]any{"type": "string", "format": "date-time"},
		},
	}}
	s := newSet(t, custom)
	doc, ok := s.Document("order.shipped")
	if !ok || !strings.Contains(string(doc), `"const": "order.shipped"`) || !strings.Contains(string(doc), `"orderId"`) {
		t.Fatalf("document: %v %s", ok, doc)
	}
	for _, tc := range []struct{ data, pointer string }{
		{`{"orderId":"ord_9","shippedAt":"2024-01-15T14:30:00Z","extra":1}`, "-"},
		{`{"orderId":"9","shippedAt":"2024-01-15T14:30:00Z"}`, "/orderId"},
		{`{"orderId":"ord_9"}`, "/shippedAt"},
		{`{"orderId":"ord_9","shippedAt":"yesterday"}`, "/shippedAt"},
	} {
		err := s.ValidateData("order.shipped", []byte(tc.data))
		var ve *schemas.ValidationError
		switch {
		case tc.pointer == "-" && err != nil:
			t.Errorf("%s: %v", tc.data, err)
		case tc.pointer != "-" && (!errors.As(err, &ve) || ve.Pointer != tc.pointer):
			t.Errorf("%s: got %v, want an error at %s", tc.data, err, tc.pointer)
		}
		body := `{"id":"whk_test_0123456789abcdef01234567","event":"order.shipped","timestamp":"2024-01-15T14:30:00Z","data":` + tc.data + `}`
		err = s.Validate([]byte(body))
		switch {
		case tc.pointer == "-" && err != nil:
			t.Errorf("envelope %s: %v", tc.data, err)
		case tc.pointer != "-" && (!errors.As(err, &ve) || ve.Pointer != "/data"+tc.pointer):
			t.Errorf("envelope %s: got %v, want an error at /data%s", tc.data, err, tc.pointer)
		}
	}
	if err := s.ValidateData("invoice.paid", []byte(`[1]`)); err != nil {
		t.Errorf("an event without a schema takes any data: %v", err)
	}

	for _, bad := range []any{
		map[string]any{"type": "objekt"},
		map[string]any{"$ref": "https://example.com/remote.json"},
		map[string]any{"pattern": "("},
		"object",
	} {
		if _, err := schemas.New(map[string]any{"order.shipped": bad}); err == nil || !strings.Contains(err.Error(), "schema of order.shipped") {
			t.Errorf("schema %v: got %v, want an error naming the event", bad, err)
		}
	}
	if _, err := schemas.New(map[string]any{"request.created": map[string]any{}}); err == nil {
		t.Error("a built-in event's schema was replaced")
	}
	// A format the validator does not check (a typo, one it lacks) passed
	// any value; a property named format is no keyword.
	_, err := schemas.New(map[string]any{"order.shipped": map[string]any{"properties": map[string]any{
		"at": map[string]any{"type": "string", "format": "date_time"}}}})
	if err == nil || !strings.Contains(err.Error(), `at /properties/at/format: format "date_time" is not one dzhook checks`) {
		t.Errorf("an unknown format: %v", err)
	}
	if _, err := schemas.New(map[string]any{"order.shipped": map[string]any{"properties": map[string]any{
		"format": map[string]any{"type": "string"}, "at": map[string]any{"format": "date-time"}}}}); err != nil {
		t.Errorf("a property named format, a known format: %v", err)
	}
}

// A custom schema that refers inside itself ($defs, a draft-07
// definitions with its $schema, its own $id) works alone and inside the
// envelope: its references resolve against it, not against the envelope.
func TestCustomSchemaReferences(t *testing.T) {
	str := map[string]any{"type": "string"}
	for _, sch := range []map[string]any{
		{"type": "object", "$defs": map[string]any{"x": str}, "properties": map[string]any{"a": map[string]any{"$ref": "#/$defs/x"}}},
		{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "definitions": map[string]any{"x": str}, "properties": map[string]any{"a": map[string]any{"$ref": "#/definitions/x"}}},
		{"$id": "https://example.com/order.json", "type": "object", "$defs": map[string]any{"x": str}, "properties": map[string]any{"a": map[string]any{"$ref": "#/$defs/x"}}},
	} {
		if err := schemas.CompileData("order.shipped", sch); err != nil {
			t.Errorf("%v: %v", sch, err)
			continue
		}
		s := newSet(t, map[string]any{"order.shipped": sch})
		var ve *schemas.ValidationError
		if err := s.ValidateData("order.shipped", []byte(`{"a":1}`)); !errors.As(err, &ve) || ve.Pointer != "/a" {
			t.Errorf("%v: data: got %v, want an error at /a", sch, err)
		}
		body := `{"id":"whk_test_0123456789abcdef01234567","event":"order.shipped","timestamp":"2024-01-15T14:30:00Z","data":{"a":1}}`
		if err := s.Validate([]byte(body)); !errors.As(err, &ve) || ve.Pointer != "/data/a" {
			t.Errorf("%v: envelope: got %v, want an error at /data/a", sch, err)
		}
	}
}

// TestCustomSchemaRelativeID: a relative $id with no absolute one above
// it, at the root or inside, is refused naming where it is and what to
// give; it failed with "duplicate id urn:dzhook:event:…" (found by a
// review). Absolute ones, relative ones under an absolute one, and "$id"
// in values that are data, pass.
func TestCustomSchemaRelativeID(t *testing.T) {
	obj := func(kv ...any) map[string]any {
		m := map[string]any{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	for _, c := range []struct {
		schema map[string]any
		at     string // "" when it compiles
	}{
		{obj("$id", "order.json", "type", "object"), "at /$id: \"order.json\""},
		{obj("type", "object", "$defs", obj("item", obj("$id", "item.json", "type", "string"))), "at /$defs/item/$id: \"item.json\""},
		{obj("$id", "https://example.com/order.json", "$defs", obj("item", obj("$id", "item.json", "type", "string"))), ""},
		{obj("$id", "urn:example:order", "type", "object"), ""},
		{obj("type", "object", "const", obj("$id", "x"), "examples", []any{obj("$id", "y")}), ""},
		{obj("not", obj("$id", "n.json")), "at /not/$id"},
		{obj("allOf", []any{obj("type", "object"), obj("$id", "a.json")}), "at /allOf/1/$id"},
		{obj("properties", obj("$id", obj("type", "string"), "item", obj("items", obj("$id", "i.json")))), "at /properties/item/items/$id"},
		// draft-07's anchors, empty and fragment ids, annotations: as
		// before.
		{obj("$schema", "http://json-schema.org/draft-07/schema#", "definitions", obj("item", obj("$id", "#item", "type", "string")),
			"properties", obj("a", obj("$ref", "#item"))), ""},
		{obj("$id", "", "type", "object"), ""},
		{obj("$id", "#", "type", "object"), ""},
		{obj("type", "object", "x-example", obj("$id", "abc"), "example", obj("$id", "def")), ""},
	} {
		_, err := schemas.New(map[string]any{"order.shipped": c.schema})
		switch {
		case c.at == "" && err != nil:
			t.Errorf("%v: %v", c.schema, err)
		case c.at != "" && (err == nil || !strings.Contains(err.Error(), c.at) || !strings.Contains(err.Error(), "absolute URI")):
			t.Errorf("%v: %v, want it refused %s", c.schema, err, c.at)
		}
	}
}

// FuzzValidate: any body or data validates or fails with an error, never
// a panic.
func FuzzValidate(f *testing.F) {
	s, err := schemas.New(map[string]any{"order.shipped": map[string]any{"type": "object", "required": []any{"order"}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(mapping.Sample(catalog.RequestAssigned, ids.TestEventID(), time.Unix(0, 0))))
	f.Add([]byte(`{"event":"order.shipped","data":{"order":[]}}`))
	f.Add([]byte(`{"event":7}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = s.Validate(b)
		_ = s.ValidateData("order.shipped", b)
	})
}

// An application may write a built-in event's name in the outbox or a
// message: its data is held to the built-in schema, which receivers are
// told ({"whatever": 1} went out as an sla.breach). Pointers are
// relative to the data.
func TestBuiltinDataFromTheApplication(t *testing.T) {
	s := newSet(t, nil)
	err := s.ValidateData(catalog.SLABreach, []byte(`{"whatever":1}`))
	var ve *schemas.ValidationError
	if !errors.As(err, &ve) || !strings.Contains(ve.Message, "requestId") || strings.HasPrefix(ve.Pointer, "/data") {
		t.Errorf("sla.breach with {\"whatever\":1}: %v, want its missing properties, relative to the data", err)
	}
	for _, e := range catalog.Builtin() {
		var env struct {
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(mapping.Sample(e.Name, ids.TestEventID(), time.Now()), &env); err != nil {
			t.Fatal(err)
		}
		if err := s.ValidateData(e.Name, env.Data); err != nil {
			t.Errorf("%s's sample data: %v", e.Name, err)
		}
	}
}
