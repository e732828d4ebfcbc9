package mapping

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/ids"
)

// FuzzOutboxMessage feeds arbitrary pg_logical_emit_message contents to the
// Mapper. Whatever the content, Map must not panic, and must give either a
// Rejection and no event, or exactly one event whose body is the envelope:
// valid JSON, keys id, event, timestamp, data in that order, the event a
// name of the catalog and data a JSON object.
func FuzzOutboxMessage(f *testing.F) {
	over := func(n int) []byte {
		// {"event":"order.shipped","data":{"pad":"aaa…"}} of n bytes.
		head, tail := `{"event":"order.shipped","data":{"pad":"`, `"}}`
		return []byte(head + strings.Repeat("a", n-len(head)-len(tail)) + tail)
	}
	for _, seed := range [][]byte{
		[]byte(`{"event":"order.shipped","data":{"order":"ord_1","items":[1,2,{"sku":"a"}]}}`),
		[]byte(`{"event":"order.shipped"}`),
		[]byte(`{"data":{},"event":"order.shipped"}`),
		[]byte(` { "event" : "order.shipped" , "data" : { "a" : [ 1 , 2 ] , "b" : null } } `),
		[]byte(`{"event":"order.shipped","data":{"text":"line\u2028break \"quoted\" </script>"}}`),
		[]byte(`{"EVENT":"order.shipped","Data":{"case":"insensitive"}}`),
		[]byte(`{"event":"x.y","event":"order.shipped","data":{},"data":{"last":"wins"}}`),
		[]byte(`{"event":"order.shipped","data":{},"extra":1}`),
		[]byte(`{"event":"order.shipped","key":"ord_9","data":{}}`),
		[]byte(`{"event":"order.shipped","key":null,"data":{}}`),
		// Not events.
		[]byte(`{"event":"order.shipped","data":[1,2]}`),
		[]byte(`{"event":"order.shipped","data":"text"}`),
		[]byte(`{"event":"order.shipped","data":null}`),
		[]byte(`{"event":"order.shipped","data":1e400}`),
		[]byte(`{"event":"not.declared","data":{}}`),
		[]byte(`{"event":"nodot","data":{}}`),
		[]byte(`{"event":"","data":{}}`),
		[]byte(`{"event":null,"data":{}}`),
		[]byte(`{"event":1,"data":{}}`),
		[]byte(`{"data":{}}`),
		[]byte(`{"event":"order.shipped","key":9,"data":{}}`),
		[]byte(`{"event":"order.shipped","key":["ord_9"],"data":{}}`),
		[]byte(`{"event":"order.shipped","data":{}} trailing`),
		[]byte(`{"event":"order.shipped","data":{"unterminated":`),
		[]byte(`[]`),
		[]byte(`null`),
		[]byte(`"order.shipped"`),
		[]byte(``),
		// Invalid UTF-8, in the data and in the name.
		[]byte("{\"event\":\"order.shipped\",\"data\":{\"name\":\"caf\xe9 \xff\xfe\"}}"),
		[]byte("{\"event\":\"order.shipped\xff\",\"data\":{}}"),
		[]byte("\xff\xfe{\"event\":\"order.shipped\"}"),
		// Sizes around the limit.
		over(MaxOutboxPayload),
		over(MaxOutboxPayload + 1),
	} {
		f.Add(seed)
	}
	cat, err := catalog.New(catalog.Event{Name: "order.shipped"})
	if err != nil {
		f.Fatal(err)
	}
	commit := time.Date(2024, 1, 15, 14, 30, 0, 123, time.UTC)
	f.Fuzz(func(t *testing.T, content []byte) {
		m := NewMapper(MapperConfig{
			Mapping: DefaultConfig(), Source: ids.NewSource("1"), Catalog: cat,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		c := &cdc.Change{
			Op:         cdc.OpMessage,
			Message:    &cdc.Message{Prefix: "dzdesk", Content: content, Transactional: true, LSN: 1},
			CommitLSN:  1,
			CommitTime: commit,
		}
		events, rej := m.Map(context.Background(), c, nil)
		if rej != nil {
			if len(events) != 0 {
				t.Fatalf("a rejection (%v) with %d events", rej, len(events))
			}
			if rej.What == "" || rej.Reason == "" {
				t.Fatalf("rejection without a subject or a reason: %+v", rej)
			}
			if !utf8.ValidString(rej.Error()) {
				t.Fatalf("rejection is not valid UTF-8: %q", rej.Error())
			}
			return
		}
		if len(events) != 1 {
			t.Fatalf("Map gave %d events and no rejection, want 1", len(events))
		}
		ev := events[0]
		if !cat.Has(ev.Type) {
			t.Fatalf("event %q is not in the catalog", ev.Type)
		}
		var env struct {
			Data json.RawMessage `json:"data"`
		}
		if len(content) > maxRawPayload || json.Unmarshal(ev.Body, &env) != nil || len(env.Data) > MaxOutboxPayload {
			t.Fatalf("a %d-byte content, its data %d bytes, over the limits, became an event", len(content), len(env.Data))
		}
		if !strings.HasPrefix(ev.ID, "whk_") || len(ev.ID) != 30 {
			t.Fatalf("event id %q, want whk_ and 26 characters", ev.ID)
		}
		if !ev.Timestamp.Equal(commit) || ev.CommitLSN != 1 {
			t.Fatalf("timestamp %v, commit LSN %v: want the change's", ev.Timestamp, ev.CommitLSN)
		}
		checkEnvelope(t, ev)
		// The body passes on what the content's data holds; when the
		// content is valid UTF-8, so is the body (RFC 8259 asks for it).
		if utf8.Valid(content) && !utf8.Valid(ev.Body) {
			t.Fatalf("valid UTF-8 content gave a body that is not: %q", ev.Body)
		}
	})
}

// checkEnvelope checks that an event's body is exactly one JSON object
// with the keys id, event, timestamp, data, in that order, agreeing with
// the event's fields, and data a JSON object.
func checkEnvelope(t *testing.T, ev Event) {
	t.Helper()
	if !json.Valid(ev.Body) {
		t.Fatalf("body is not valid JSON: %q", ev.Body)
	}
	dec := json.NewDecoder(bytes.NewReader(ev.Body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("body does not start an object: %v, %v", tok, err)
	}
	values := map[string]json.RawMessage{}
	for _, want := range []string{"id", "event", "timestamp", "data"} {
		tok, err := dec.Token()
		if err != nil || tok != want {
			t.Fatalf("key %v (%v), want %q: body %q", tok, err, want, ev.Body)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("value of %q: %v", want, err)
		}
		values[want] = v
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		t.Fatalf("keys after data: %v, %v (body %q)", tok, err, ev.Body)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("bytes after the envelope: %v (body %q)", err, ev.Body)
	}
	var id, event, ts string
	if json.Unmarshal(values["id"], &id) != nil || id != ev.ID {
		t.Fatalf("id %s, want %q", values["id"], ev.ID)
	}
	if json.Unmarshal(values["event"], &event) != nil || event != ev.Type {
		t.Fatalf("event %s, want %q", values["event"], ev.Type)
	}
	if json.Unmarshal(values["timestamp"], &ts) != nil || ts != ev.Timestamp.UTC().Truncate(time.Second).Format(time.RFC3339) {
		t.Fatalf("timestamp %s, want %v to the second", values["timestamp"], ev.Timestamp)
	}
	if data := values["data"]; len(data) == 0 || data[0] != '{' {
		t.Fatalf("data %q is not an object", data)
	}
}
