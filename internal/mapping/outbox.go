package mapping

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/dzdesk/dzhook/internal/catalog"
	"strings"
	"unicode/utf8"

	"github.com/dzdesk/dzhook/internal/cdc"
)

// outboxRow turns an insert into the outbox table into the event it names,
// with the payload as data and the optional key column as its ordering
// key. Deletes (the application may delete the row in the same
// transaction) and updates are ignored.
func (m *Mapper) outboxRow(c *cdc.Change, out []Event) ([]Event, *Rejection) {
	if c.Op != cdc.OpInsert {
		return out, nil
	}
	what := fmt.Sprintf("%s row %s", c.Relation.QualifiedName(), idOf(c, c.New, "id"))
	ev, _ := col(c, c.New, "event")
	pv, _ := col(c, c.New, "payload")
	name, ok := ev.V.(string)
	if !ok || ev.State != cdc.Present {
		return out, &Rejection{What: what, Reason: "column event is null or not text"}
	}
	var payload []byte
	switch p := pv.V.(type) {
	case json.RawMessage:
		payload = p
	case string:
		payload = []byte(p)
	default:
		return out, &Rejection{What: what, Reason: "column payload is null or not json/jsonb/text"}
	}
	return m.custom(c, out, what, name, m.outboxKey(c), payload)
}

// outboxKey reads the row's optional key column. Outbox tables made before
// keys existed have none, and a null or empty key means unordered. A key
// column that is not text (or varchar, uuid: what decodes as a string)
// gives no key either: its type is the table's, so rejecting would reject
// every row; it is logged once instead.
func (m *Mapper) outboxKey(c *cdc.Change) string {
	v, ok := col(c, c.New, "key")
	if !ok || v.State != cdc.Present {
		return ""
	}
	key, ok := v.V.(string)
	if !ok && !m.keyWarn.Swap(true) {
		m.log.Warn("outbox column key is not text, so outbox events get no ordering key: make it text", "table", c.Relation.QualifiedName())
	}
	return key
}

// message turns a pg_logical_emit_message with the configured prefix into
// an event: its content must be {"event":"entity.action","data":{…}},
// with an optional "key":"…" as its ordering key.
func (m *Mapper) message(c *cdc.Change, out []Event) ([]Event, *Rejection) {
	msg := c.Message
	if msg == nil || msg.Prefix != m.prefix {
		return out, nil
	}
	what := fmt.Sprintf("logical message %q at %s", msg.Prefix, msg.LSN)
	if len(msg.Content) > maxRawPayload {
		return out, &Rejection{What: what, Reason: fmt.Sprintf("content of %d bytes is over the %d MiB a message may have (its data: 1 MiB, compact)", len(msg.Content), maxRawPayload>>20)}
	}
	if !utf8.Valid(msg.Content) {
		return out, &Rejection{What: what, Reason: "content is not valid UTF-8"}
	}
	// Exact keys: encoding/json would also take "EVENT" or "Data".
	var content map[string]json.RawMessage
	if err := json.Unmarshal(msg.Content, &content); err != nil {
		return out, &Rejection{What: what, Reason: "content is not a JSON object {\"event\":…, \"data\":{…}}: " + err.Error()}
	}
	var event string
	if raw, ok := content["event"]; !ok || json.Unmarshal(raw, &event) != nil {
		return out, &Rejection{What: what, Reason: `content has no "event" string`}
	}
	// A key that is not a string is rejected, as an "event" that is not a
	// string is: the message is one value the application wrote, so a
	// wrong type is a bug to show in the rejections, not a reason to
	// deliver the event silently out of order. null is no key, like the
	// outbox's NULL.
	var key *string
	if raw, ok := content["key"]; ok && json.Unmarshal(raw, &key) != nil {
		return out, &Rejection{What: what, Reason: `content's "key" is not a string`}
	}
	data, ok := content["data"]
	if !ok {
		data = json.RawMessage("{}")
	}
	return m.custom(c, out, what, event, deref(key), data)
}

// MaxKey bounds an outbox row's or a message's ordering key, in bytes.
const MaxKey = 256

// maxRawPayload bounds an outbox payload or a message's content as
// written, before it is compacted and held to MaxOutboxPayload.
const maxRawPayload = 4 << 20

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// custom validates an application-written event and appends it.
func (m *Mapper) custom(c *cdc.Change, out []Event, what, name, key string, payload []byte) ([]Event, *Rejection) {
	if !utf8.Valid(payload) {
		return out, &Rejection{What: what, Reason: "payload is not valid UTF-8"}
	}
	// The key is stored in an indexed column: a NUL byte (which PostgreSQL
	// text cannot hold) or a key too long for the index would make the
	// journal refuse the whole batch, again and again, and hold the stream.
	switch {
	case strings.ContainsRune(key, 0):
		return out, &Rejection{What: what, Reason: "key contains a NUL character"}
	case len(key) > MaxKey:
		return out, &Rejection{What: what, Reason: fmt.Sprintf("key of %d bytes is over the %d-byte limit", len(key), MaxKey)}
	}
	if len(payload) > maxRawPayload {
		return out, &Rejection{What: what, Reason: fmt.Sprintf("payload of %d bytes is over the 1 MiB limit", len(payload))}
	}
	if !m.catalog.Has(name) {
		reason := fmt.Sprintf("event %q is not declared: add it under custom_events", name)
		if !strings.Contains(name, ".") {
			reason = fmt.Sprintf("event %q does not look like entity.action", name)
		}
		return out, &Rejection{What: what, Reason: reason}
	}
	// Compact: jsonb prints with spaces; an envelope is compact JSON.
	var compact bytes.Buffer
	if err := json.Compact(&compact, payload); err != nil || !bytes.HasPrefix(compact.Bytes(), []byte("{")) {
		return out, &Rejection{What: what, Reason: "payload is not a JSON object"}
	}
	// The limit is on the data as sent, compact, whatever the way in: a
	// jsonb outbox prints with spaces, a message as the application wrote
	// it, so the same data was refused from one and taken from the other.
	if compact.Len() > MaxOutboxPayload {
		return out, &Rejection{What: what, Reason: fmt.Sprintf("payload of %d bytes (compact) is over the 1 MiB limit", compact.Len())}
	}
	// jsonb keeps one of two members of a name; a message and a json or
	// text column keep both, which the schema and a receiver may read
	// differently (the schema checks the last, a receiver may take the
	// first).
	if at := duplicateKey(compact.Bytes()); at != "" {
		return out, &Rejection{What: what, Reason: fmt.Sprintf("payload gives the member at %s twice", at)}
	}
	// A built-in event's data is held to its schema, which describes the
	// reference mapping's ids (req_, usr_, cmt_): with other prefixes the
	// application's data follows its own, and is not checked.
	builtinOther := catalog.IsBuiltin(name) && !m.referenceIDs()
	if m.mc.Schemas != nil && !builtinOther {
		if err := m.mc.Schemas.ValidateData(name, compact.Bytes()); err != nil {
			where := "custom_events[].schema"
			if catalog.IsBuiltin(name) {
				where = "the built-in event's, schemas/" + name + ".json"
			}
			return out, &Rejection{What: what, Reason: fmt.Sprintf("data breaks the schema of %s (%s): %v", name, where, err)}
		}
	}
	return m.emit(out, c, placeEntity, name, key, compact.Bytes()), nil
}

// referenceIDs reports whether the mapping writes ids as the reference
// mapping does, which the built-in events' schemas describe.
func (m *Mapper) referenceIDs() bool {
	return m.cfg.Requests.IDPrefix == "req_" && m.cfg.Users.IDPrefix == "usr_" && m.cfg.Comments.IDPrefix == "cmt_"
}
