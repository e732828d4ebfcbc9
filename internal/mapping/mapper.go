package mapping

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/ids"
)

// Defaults of MapperConfig.
const (
	DefaultLookupTimeout = 2 * time.Second
	// MaxEventData is the largest data an event may carry (1 MiB, as
	// compact JSON): an event whose data is larger, from a row or from
	// the outbox, is rejected (dzhook.rejections), not delivered. Without
	// a bound, a comment with a pasted log made a body receivers refuse
	// (the signer's Verifier takes 2 MiB: a 413, a final failure, on
	// every retry by hand); with it, the largest body dzhook sends is the
	// envelope around 1 MiB.
	MaxEventData = 1 << 20
	// MaxOutboxPayload is the largest outbox payload accepted.
	MaxOutboxPayload = MaxEventData
)

// MapperConfig is the input of NewMapper.
type MapperConfig struct {
	// Mapping says which tables and columns hold DZDESK's entities.
	Mapping Config
	// Source distinguishes this database's event ids from another's.
	Source ids.Source
	// Catalog lists the events that exist, custom ones included.
	Catalog *catalog.Catalog
	// OutboxTable is the schema-qualified outbox table, or "" for none.
	OutboxTable string
	// MessagePrefix selects the pg_logical_emit_message messages that are
	// events. Defaults to "dzdesk".
	MessagePrefix string
	// Users looks up emails on a cache miss; nil means every miss gives a
	// null email.
	Users UserLookup
	// CacheSize bounds the email cache. Defaults to 50,000 users.
	CacheSize int
	// LookupTimeout bounds one batched email lookup. Defaults to 2 s.
	LookupTimeout time.Duration
	// Schemas checks the data of custom events declared with a schema
	// (custom_events[].schema); an outbox row or message that breaks it is
	// rejected. nil checks nothing.
	Schemas DataValidator
	// Logger; defaults to slog.Default().
	Logger *slog.Logger
}

// DataValidator checks an application-written event's data against the
// schema its declaration gives, and returns nil for an event without one.
// Its error says where the data is wrong (a JSON pointer into data).
type DataValidator interface {
	ValidateData(event string, data []byte) error
}

// Rejection is an outbox row or message that could not become an event.
// It is recorded and skipped; the stream goes on.
type Rejection struct {
	// What names the rejected input, e.g. "public.dzhook_outbox row 17".
	What   string
	Reason string
}

func (r *Rejection) Error() string { return r.What + ": " + r.Reason }

// Mapper turns committed row changes into DZDESK events. It is used from
// one goroutine (the stream's), except for the email cache, which is safe
// to share.
type Mapper struct {
	mc        MapperConfig // as given to NewMapper, defaults applied
	cfg       Config
	source    ids.Source
	catalog   *catalog.Catalog
	people    *people
	log       *slog.Logger
	outbox    string
	prefix    string
	timeout   time.Duration
	tables    map[string]entityKind
	noOldWarn atomic.Bool
	// lookupFailed counts the events sent with null emails since the last
	// WARN, at lookupToldAt; no lookup is made until lookupPausedUntil
	// (resolvePeople). The stream's goroutine alone uses them.
	lookupFailed      int
	lookupToldAt      time.Time
	lookupPausedUntil time.Time
	// noOldUserWarn: users updates without old values, said once.
	noOldUserWarn atomic.Bool
	keyWarn       atomic.Bool // an outbox key column that is not text, said once
	// notBoolTold: the table.column and values notBool has said (the
	// stream's goroutine alone uses it).
	notBoolTold map[string]struct{}

	// scratch and data are reused for every event: an event costs one
	// allocation for its body and one for its id, and a change one for its
	// events' key.
	scratch []byte
	data    []byte
	// oversized lists the events of the change being mapped that were
	// left out for data over MaxEventData.
	oversized []string
	bigData   int
}

type entityKind uint8

const (
	kindNone entityKind = iota
	kindRequest
	kindUser
	kindComment
	kindSLA
	kindOutbox
)

// NewMapper returns a Mapper.
func NewMapper(cfg MapperConfig) *Mapper {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.LookupTimeout <= 0 {
		cfg.LookupTimeout = DefaultLookupTimeout
	}
	if cfg.MessagePrefix == "" {
		cfg.MessagePrefix = "dzdesk"
	}
	if cfg.Catalog == nil {
		cfg.Catalog, _ = catalog.New()
	}
	mc := cfg.Mapping
	m := &Mapper{
		mc: cfg, cfg: mc, source: cfg.Source, catalog: cfg.Catalog, people: newPeople(cfg.CacheSize, cfg.Users),
		log: cfg.Logger.With("component", "mapping"), outbox: cfg.OutboxTable, prefix: cfg.MessagePrefix,
		timeout: cfg.LookupTimeout,
		tables: map[string]entityKind{
			mc.Qualify(mc.Requests.Table): kindRequest,
			mc.Qualify(mc.Users.Table):    kindUser,
			mc.Qualify(mc.Comments.Table): kindComment,
			mc.Qualify(mc.SLAs.Table):     kindSLA,
		},
	}
	if cfg.OutboxTable != "" {
		m.tables[cfg.OutboxTable] = kindOutbox
	}
	return m
}

// IsSLA reports whether c is a change of the SLA table, which the SLA
// clock consumes (it fires no event by itself).
func (m *Mapper) IsSLA(c *cdc.Change) bool {
	return c.Relation != nil && m.tables[c.Relation.QualifiedName()] == kindSLA
}

// Map appends to out the events that c fires, in the order they fire, and
// returns it. An outbox row or message that cannot become an event is
// returned as a Rejection (with no events): record it and go on.
func (m *Mapper) Map(ctx context.Context, c *cdc.Change, out []Event) ([]Event, *Rejection) {
	m.oversized, m.bigData = m.oversized[:0], 0
	if c.Op == cdc.OpMessage {
		return m.message(c, out)
	}
	if c.Relation == nil {
		return out, nil
	}
	var idColumn string
	switch m.tables[c.Relation.QualifiedName()] {
	case kindRequest:
		out, idColumn = m.request(ctx, c, out), m.cfg.Requests.Columns.ID
	case kindUser:
		out, idColumn = m.user(c, out), m.cfg.Users.Columns.ID
	case kindComment:
		out, idColumn = m.comment(ctx, c, out), m.cfg.Comments.Columns.ID
	case kindOutbox:
		return m.outboxRow(c, out)
	}
	if len(m.oversized) > 0 {
		t := c.New
		if t == nil {
			t = c.Old
		}
		return out, &Rejection{
			What:   fmt.Sprintf("%s row %s (%s)", c.Relation.QualifiedName(), idOf(c, t, idColumn), strings.Join(m.oversized, ", ")),
			Reason: fmt.Sprintf("data of %d bytes (compact JSON) is over the %d MiB an event may carry", m.bigData, MaxEventData>>20),
		}
	}
	return out, nil
}

// An event's place among those one change fires: the last part of its
// id. Each kind has its own, whatever else the change fires: counted, a
// request.assigned took the index request.status_changed had when a
// mapping edit (values.status) made the status change fire or not, and a
// transaction journaled but not yet checkpointed at a crash, mapped again
// by the process started with the new mapping, gave a new event the id of
// one already journaled (the journal dropped it as known, its retry sent
// the other's body, a receiver deduplicating by id dropped it). The
// places are the indexes the kinds had when they all fire, so an
// unchanged mapping keeps its ids, but for a request.assigned without a
// status change (1 before).
const (
	placeEntity   = 0 // *.created, *.updated, *.deleted, request.commented, an outbox or custom event
	placeStatus   = 1 // request.status_changed, user.deactivated
	placeAssigned = 2 // request.assigned
)

// emit serializes one event with its ordering key and appends it; place
// is its place among the change's events (placeEntity, …).
func (m *Mapper) emit(out []Event, c *cdc.Change, place int, event, key string, data []byte) []Event {
	if len(data) > MaxEventData {
		m.oversized = append(m.oversized, event)
		m.bigData = max(m.bigData, len(data))
		return out
	}
	id := m.source.NewID(c.CommitLSN, c.Ordinal, place)
	m.scratch = envelope(m.scratch[:0], id, event, c.CommitTime, data)
	body := make([]byte, len(m.scratch))
	copy(body, m.scratch)
	if cap(data) > cap(m.data) {
		m.data = data[:0] // keep the larger buffer for the next event
	}
	return append(out, Event{ID: id, Type: event, Timestamp: c.CommitTime, Body: body, CommitLSN: c.CommitLSN, Key: key})
}

// entityKey is an entity's ordering key: its id as payloads show it,
// prefix included. A row without an id gets no key (unordered) rather
// than a bare prefix that would put every such row in one queue.
func entityKey(prefix, id string) string {
	if id == "" {
		return ""
	}
	return prefix + id
}

// keyOf is entityKey of an id column, built in one allocation: it is
// computed for every change of requests and users, the hot path.
func keyOf(c *cdc.Change, t cdc.Tuple, name, prefix string) string {
	v, ok := col(c, t, name)
	if !ok || v.State == cdc.Null {
		return ""
	}
	if n, ok := v.V.(int64); ok {
		var buf [32]byte
		return string(strconv.AppendInt(append(buf[:0], prefix...), n, 10))
	}
	return entityKey(prefix, text(v.V))
}

// col returns a mapped column's value; ok is false when the column is not
// mapped, not in the relation, or an unchanged TOAST value.
func col(c *cdc.Change, t cdc.Tuple, name string) (cdc.Value, bool) {
	if name == "" || t == nil {
		return cdc.Value{}, false
	}
	v, ok := c.Relation.Get(t, name)
	if !ok || v.State == cdc.Unchanged {
		return cdc.Value{}, false
	}
	return v, true
}

// text renders an id or a translated value as text.
func text(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	case bool:
		return strconv.FormatBool(x)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

// idOf returns the text of an id column, or "" when it is null or absent.
func idOf(c *cdc.Change, t cdc.Tuple, name string) string {
	v, ok := col(c, t, name)
	if !ok || v.State == cdc.Null {
		return ""
	}
	return text(v.V)
}

// changed reports whether any of the named columns differs between the old
// and new rows. An unchanged TOAST value is unchanged.
func changed(c *cdc.Change, names ...string) bool {
	for _, n := range names {
		nv, ok1 := col(c, c.New, n)
		ov, ok2 := col(c, c.Old, n)
		if ok1 && ok2 && !sameValue(ov, nv) {
			return true
		}
	}
	return false
}

// sameTranslated reports whether a column's old and new values, changed,
// are shown the same once values translates them: two statuses mapped to
// one (NEW and REOPENED both "open") are no status change to a receiver,
// which got previousStatus "open", newStatus "open".
func sameTranslated(c *cdc.Change, name string, values map[string]string) bool {
	if values == nil {
		return false
	}
	ov, ok1 := col(c, c.Old, name)
	nv, ok2 := col(c, c.New, name)
	if !ok1 || !ok2 || ov.State != cdc.Present || nv.State != cdc.Present {
		return false
	}
	shown := func(v cdc.Value) (string, bool) {
		if s, ok := values[text(v.V)]; ok {
			return s, true
		}
		s, ok := v.V.(string)
		return s, ok
	}
	a, okA := shown(ov)
	b, okB := shown(nv)
	return okA && okB && a == b
}

func sameValue(a, b cdc.Value) bool {
	if a.State != b.State {
		return false
	}
	switch x := a.V.(type) {
	case json.RawMessage:
		y, _ := b.V.(json.RawMessage)
		return bytes.Equal(x, y)
	case time.Time:
		y, ok := b.V.(time.Time)
		return ok && x.Equal(y)
	case []any, []byte:
		return reflect.DeepEqual(a.V, b.V)
	}
	return a.V == b.V
}

// resolvePeople looks up, in one batch, the emails of the users ids
// names. A failed lookup is logged and gives null emails.
//
// After a failure no lookup is made for lookupPause (a lookup that hangs
// held the stream LookupTimeout per event), and the failures are said at
// most every lookupToldEvery with their count (a WARN per event before).
func (m *Mapper) resolvePeople(ctx context.Context, ids ...string) {
	now := time.Now()
	if now.Before(m.lookupPausedUntil) {
		m.lookupFailed++
		return
	}
	err := m.people.resolve(ctx, m.timeout, ids)
	if err == nil || ctx.Err() != nil {
		return
	}
	m.lookupFailed++
	m.lookupPausedUntil = now.Add(lookupPause)
	if !m.lookupToldAt.IsZero() && now.Sub(m.lookupToldAt) < lookupToldEvery {
		return
	}
	m.log.Warn("user email lookup failed; sending null emails", "err", err, "events", m.lookupFailed,
		"paused_for", lookupPause.String())
	m.lookupFailed, m.lookupToldAt = 0, now
}

// How often a failing user lookup is tried, and said.
const (
	lookupPause     = 5 * time.Second
	lookupToldEvery = 10 * time.Minute
)

// appendPerson writes {"id":"usr_…","email":…} or null.
func (m *Mapper) appendPerson(b []byte, id string) []byte {
	if id == "" {
		return append(b, "null"...)
	}
	o := beginObj(b)
	o.key("id")
	o.b = appendString(o.b, m.cfg.Users.IDPrefix, id)
	if p, ok := m.people.get(id); ok && p.known {
		o.str("email", p.email)
	} else {
		o.null("email")
	}
	return o.end()
}

// appendMapped writes a column's value (translated through values when
// given) under key; an unmapped or unchanged-TOAST column is left out.
func appendMapped(o *obj, c *cdc.Change, t cdc.Tuple, key, name string, values map[string]string) {
	v, ok := mappedField(o, c, t, key, name)
	if !ok {
		return
	}
	if values != nil {
		if s, ok := values[text(v.V)]; ok {
			o.b = appendString(o.b, s)
			return
		}
	}
	// Every field written here is a string in DZDESK's schemas: an
	// untranslated integer status went out as 7 beside "open" in the same
	// field, against the schema. A value of another type is its text.
	switch x := v.V.(type) {
	case string:
		o.b = appendString(o.b, x)
	case time.Time:
		o.b = appendTime(o.b, x)
	case json.RawMessage:
		o.b = appendString(o.b, string(x))
	case int64, bool, float64:
		o.b = appendString(o.b, text(x))
	default: // arrays: their JSON, as text
		o.b = appendString(o.b, string(appendValue(nil, x)))
	}
}

// mappedField starts the field of column name under key: nothing for an
// unmapped or unchanged-TOAST column, null for a NULL one (written here);
// otherwise it returns the value for the caller to write.
func mappedField(o *obj, c *cdc.Change, t cdc.Tuple, key, name string) (cdc.Value, bool) {
	v, ok := col(c, t, name)
	if !ok {
		return v, false
	}
	o.key(key)
	if v.State == cdc.Null {
		o.b = append(o.b, "null"...)
		return v, false
	}
	return v, true
}

// appendBool writes v, a present value of column name, as a boolean,
// translated through values first (mapping.users.values.active,
// mapping.comments.values.internal, at path): a column of 0/1, 't'/'f'
// or 'Y'/'N' reads as one without a translation. A value that reads as
// no boolean is written as null, with a WARN naming the column and the
// value (notBool): written as it decoded, a visibility kept as text sent
// "internal":"internal", against the schema, and a channel's filter
// !(… data.internal == true) let the internal note through.
//
// Such a value is not refused at start, though a column's type sometimes
// makes it certain (an enum with a label no translation covers): a text
// or integer column can hold anything, and an enum gains labels (ALTER
// TYPE … ADD VALUE) under a running dzhook with no relation change for
// the schema watch to check, so the rule is needed per row anyway; and a
// label no row holds would have stopped the start for nothing. null
// stops nothing, and a filter on data.internal != false keeps it out.
func (m *Mapper) appendBool(o *obj, c *cdc.Change, t cdc.Tuple, v cdc.Value, name, path string, values map[string]string, idColumn string) {
	if b, ok := readBool(v, values); ok {
		o.b = strconv.AppendBool(o.b, b)
		return
	}
	o.b = append(o.b, "null"...)
	m.notBool(c, t, name, path, idColumn, text(v.V))
}

// readBool reads a present value as a boolean, through values first.
func readBool(v cdc.Value, values map[string]string) (b, ok bool) {
	s := text(v.V)
	if mapped, ok := values[s]; ok {
		s = mapped
	}
	return parseActive(s)
}

// maxNotBoolTold bounds the values notBool has said: each is said once
// (its fix, a translation, is the same for every row that holds it), and
// a column with this many is one mistake, already said.
const maxNotBoolTold = 100

// maxNotBoolShown is the longest such value the WARN shows.
const maxNotBoolShown = 16

// notBool logs, once per column and value, that a boolean field's value
// reads as no boolean and was sent as null.
func (m *Mapper) notBool(c *cdc.Change, t cdc.Tuple, name, path, idColumn, value string) {
	told := c.Relation.QualifiedName() + "." + name + "\x00" + value
	if _, ok := m.notBoolTold[told]; ok || len(m.notBoolTold) >= maxNotBoolTold {
		return
	}
	if m.notBoolTold == nil {
		m.notBoolTold = map[string]struct{}{}
	}
	m.notBoolTold[told] = struct{}{}
	// A flag's value is short; a longer one is more likely a column
	// mapped by mistake (a comment's body, an email), whose contents do
	// not belong in the log: its length is said instead (found by a
	// review).
	shown := value
	if len(shown) > maxNotBoolShown {
		shown = fmt.Sprintf("(%d bytes, not shown)", len(value))
	}
	m.log.Warn("boolean field's value reads as no boolean and has no translation; sent as null (said once per value, for the first 100 values): add it to "+path,
		"table", c.Relation.QualifiedName(), "id", idOf(c, t, idColumn), "column", name, "value", shown, "lsn", c.CommitLSN.String())
}

// appendTimeField writes a time column under key as RFC 3339 UTC, the
// only form DZDESK's payloads have. A value RFC 3339 cannot show
// (PostgreSQL's infinity and -infinity, years after 9999 or before 1, BC
// dates: the stream keeps them as PostgreSQL's text) is written as null,
// with a warning naming the row (table, id column value) and the column:
// a receiver never gets raw text in a time field. An unmapped or
// unchanged-TOAST column is left out, as appendMapped does.
func (m *Mapper) appendTimeField(o *obj, c *cdc.Change, t cdc.Tuple, key, name, idColumn string) {
	v, ok := col(c, t, name)
	if !ok {
		return
	}
	o.key(key)
	if v.State == cdc.Present {
		if ts, ok := v.V.(time.Time); ok && representable(ts) {
			o.b = appendTime(o.b, ts)
			return
		}
		m.log.Warn("timestamp not representable in RFC 3339 (infinity, or a year outside 1 to 9999); sent as null",
			"table", c.Relation.QualifiedName(), "id", idOf(c, t, idColumn), "column", name, "value", text(v.V), "lsn", c.CommitLSN.String())
	}
	o.b = append(o.b, "null"...)
}

// representable reports whether RFC 3339 can show t: a four-digit year.
func representable(t time.Time) bool {
	y := t.UTC().Year()
	return y >= 1 && y <= 9999
}

// request object: {id, title, status, priority, requester, assignedTo,
// createdAt, updatedAt} in the documentation's order, then extra keys.
func (m *Mapper) appendRequest(b []byte, c *cdc.Change, t cdc.Tuple, extra func(o *obj)) []byte {
	rc, rv := m.cfg.Requests.Columns, m.cfg.Requests.Values
	o := beginObj(b)
	o.key("id")
	o.b = appendString(o.b, m.cfg.Requests.IDPrefix, idOf(c, t, rc.ID))
	appendMapped(&o, c, t, "title", rc.Title, nil)
	appendMapped(&o, c, t, "status", rc.Status, rv.Status)
	appendMapped(&o, c, t, "priority", rc.Priority, rv.Priority)
	if rc.Requester != "" {
		o.key("requester")
		o.b = m.appendPerson(o.b, idOf(c, t, rc.Requester))
	}
	if rc.AssignedTo != "" {
		o.key("assignedTo")
		o.b = m.appendPerson(o.b, idOf(c, t, rc.AssignedTo))
	}
	m.appendTimeField(&o, c, t, "createdAt", rc.CreatedAt, rc.ID)
	m.appendTimeField(&o, c, t, "updatedAt", rc.UpdatedAt, rc.ID)
	if extra != nil {
		extra(&o)
	}
	return o.end()
}

func (m *Mapper) request(ctx context.Context, c *cdc.Change, out []Event) []Event {
	rc := m.cfg.Requests.Columns
	var data []byte
	// Every event of the change is about the request of the row it reads:
	// the new row, or the old one for a delete.
	row := c.New
	if c.Op == cdc.OpDelete {
		row = c.Old
	}
	key := keyOf(c, row, rc.ID, m.cfg.Requests.IDPrefix)
	switch c.Op {
	case cdc.OpInsert:
		m.resolvePeople(ctx, idOf(c, c.New, rc.Requester), idOf(c, c.New, rc.AssignedTo))
		data = m.appendRequest(m.data[:0], c, c.New, nil)
		return m.emit(out, c, placeEntity, catalog.RequestCreated, key, data)

	case cdc.OpUpdate:
		if c.Old == nil {
			// Without REPLICA IDENTITY FULL there is nothing to compare:
			// say so once, and report the update as such.
			if !m.noOldWarn.Swap(true) {
				m.log.Warn("requests updates carry no old values, so request.status_changed and request.assigned cannot fire: run ALTER TABLE ... REPLICA IDENTITY FULL (dzhook setup does it)", "table", c.Relation.QualifiedName())
			}
			m.resolvePeople(ctx, idOf(c, c.New, rc.Requester), idOf(c, c.New, rc.AssignedTo))
			return m.emit(out, c, placeEntity, catalog.RequestUpdated, key, m.appendRequest(m.data[:0], c, c.New, nil))
		}
		if !changed(c, rc.ID, rc.Title, rc.Status, rc.Priority, rc.Requester, rc.AssignedTo, rc.CreatedAt, rc.UpdatedAt) {
			return out // only unmapped columns changed
		}
		changedBy := idOf(c, c.New, rc.UpdatedBy)
		oldAssignee := idOf(c, c.Old, rc.AssignedTo)
		m.resolvePeople(ctx, idOf(c, c.New, rc.Requester), idOf(c, c.New, rc.AssignedTo), oldAssignee, changedBy)

		out = m.emit(out, c, placeEntity, catalog.RequestUpdated, key, m.appendRequest(m.data[:0], c, c.New, nil))
		if changed(c, rc.Status) && !sameTranslated(c, rc.Status, m.cfg.Requests.Values.Status) {
			rv := m.cfg.Requests.Values
			o := beginObj(m.data[:0])
			o.key("id")
			o.b = appendString(o.b, m.cfg.Requests.IDPrefix, idOf(c, c.New, rc.ID))
			appendMapped(&o, c, c.Old, "previousStatus", rc.Status, rv.Status)
			appendMapped(&o, c, c.New, "newStatus", rc.Status, rv.Status)
			o.key("changedBy")
			o.b = m.appendPerson(o.b, changedBy)
			out = m.emit(out, c, placeStatus, catalog.RequestStatusChanged, key, o.end())
		}
		if changed(c, rc.AssignedTo) {
			data = m.appendRequest(m.data[:0], c, c.New, func(o *obj) {
				o.key("previousAssignedTo")
				o.b = m.appendPerson(o.b, oldAssignee)
				o.key("changedBy")
				o.b = m.appendPerson(o.b, changedBy)
			})
			out = m.emit(out, c, placeAssigned, catalog.RequestAssigned, key, data)
		}
		return out

	case cdc.OpDelete:
		if c.Relation.ReplicaIdentity == 'f' {
			m.resolvePeople(ctx, idOf(c, c.Old, rc.Requester), idOf(c, c.Old, rc.AssignedTo))
			return m.emit(out, c, placeEntity, catalog.RequestDeleted, key, m.appendRequest(m.data[:0], c, c.Old, nil))
		}
		o := beginObj(m.data[:0])
		o.key("id")
		o.b = appendString(o.b, m.cfg.Requests.IDPrefix, idOf(c, c.Old, rc.ID))
		return m.emit(out, c, placeEntity, catalog.RequestDeleted, key, o.end())
	}
	return out
}

// activeOf reads the active column as a boolean.
func (m *Mapper) activeOf(c *cdc.Change, t cdc.Tuple) (active, ok bool) {
	v, ok := col(c, t, m.cfg.Users.Columns.Active)
	if !ok || v.State == cdc.Null {
		return false, false
	}
	return readBool(v, m.cfg.Users.Values.Active)
}

// parseActive reads a boolean as PostgreSQL and Go write it, in any case
// ('Y'/'N' too).
func parseActive(s string) (active, ok bool) {
	s = strings.ToLower(s)
	b, err := strconv.ParseBool(s)
	if err != nil {
		switch s {
		case "t", "yes", "y", "on":
			return true, true
		case "f", "no", "n", "off":
			return false, true
		}
		return false, false
	}
	return b, true
}

// user object: {id, email, name, role, active, createdAt}.
func (m *Mapper) appendUser(c *cdc.Change, t cdc.Tuple) []byte {
	uc := m.cfg.Users.Columns
	o := beginObj(m.data[:0])
	o.key("id")
	o.b = appendString(o.b, m.cfg.Users.IDPrefix, idOf(c, t, uc.ID))
	appendMapped(&o, c, t, "email", uc.Email, nil)
	appendMapped(&o, c, t, "name", uc.Name, nil)
	appendMapped(&o, c, t, "role", uc.Role, m.cfg.Users.Values.Role)
	if uc.Active != "" {
		o.key("active")
		if v, ok := col(c, t, uc.Active); ok && v.State == cdc.Present {
			m.appendBool(&o, c, t, v, uc.Active, "mapping.users.values.active", m.cfg.Users.Values.Active, uc.ID)
		} else {
			o.b = append(o.b, "null"...)
		}
	}
	m.appendTimeField(&o, c, t, "createdAt", uc.CreatedAt, uc.ID)
	return o.end()
}

// rememberUser keeps the email cache fresh from the users stream.
func (m *Mapper) rememberUser(c *cdc.Change) {
	uc := m.cfg.Users.Columns
	switch c.Op {
	case cdc.OpInsert, cdc.OpUpdate:
		id := idOf(c, c.New, uc.ID)
		if v, ok := col(c, c.New, uc.Email); ok && id != "" {
			if v.State == cdc.Null {
				m.people.put(id, "", false)
			} else {
				m.people.put(id, text(v.V), true)
			}
		}
	case cdc.OpDelete:
		if id := idOf(c, c.Old, uc.ID); id != "" {
			m.people.put(id, "", false)
		}
	}
}

func (m *Mapper) user(c *cdc.Change, out []Event) []Event {
	m.rememberUser(c)
	uc := m.cfg.Users.Columns
	key := keyOf(c, c.New, uc.ID, m.cfg.Users.IDPrefix)
	switch c.Op {
	case cdc.OpInsert:
		return m.emit(out, c, placeEntity, catalog.UserCreated, key, m.appendUser(c, c.New))
	case cdc.OpUpdate:
		if c.Old == nil && uc.Active != "" && !m.noOldUserWarn.Swap(true) {
			m.log.Warn("users updates carry no old values, so user.deactivated cannot fire: run ALTER TABLE ... REPLICA IDENTITY FULL (dzhook setup does it)", "table", c.Relation.QualifiedName())
		}
		// Only what the user object shows: an application that touches
		// updated_at (at every login) sent a user.updated each time, its
		// data unchanged (found by a review).
		if c.Old != nil && !changed(c, uc.ID, uc.Email, uc.Name, uc.Role, uc.Active, uc.CreatedAt) {
			return out
		}
		data := m.appendUser(c, c.New)
		out = m.emit(out, c, placeEntity, catalog.UserUpdated, key, data)
		wasActive, ok1 := m.activeOf(c, c.Old)
		isActive, ok2 := m.activeOf(c, c.New)
		if ok1 && ok2 && wasActive && !isActive {
			out = m.emit(out, c, placeStatus, catalog.UserDeactivated, key, data)
		}
	}
	return out
}

func (m *Mapper) comment(ctx context.Context, c *cdc.Change, out []Event) []Event {
	if c.Op != cdc.OpInsert {
		return out
	}
	cc := m.cfg.Comments.Columns
	author, request := idOf(c, c.New, cc.Author), idOf(c, c.New, cc.Request)
	m.resolvePeople(ctx, author)
	o := beginObj(m.data[:0])
	o.key("id")
	o.b = appendString(o.b, m.cfg.Comments.IDPrefix, idOf(c, c.New, cc.ID))
	o.key("requestId")
	o.b = appendString(o.b, m.cfg.Requests.IDPrefix, request)
	if cc.Author != "" {
		o.key("author")
		o.b = m.appendPerson(o.b, author)
	}
	appendMapped(&o, c, c.New, "body", cc.Body, nil)
	if v, ok := mappedField(&o, c, c.New, "internal", cc.Internal); ok {
		m.appendBool(&o, c, c.New, v, cc.Internal, "mapping.comments.values.internal", m.cfg.Comments.Values.Internal, cc.ID)
	}
	m.appendTimeField(&o, c, c.New, "createdAt", cc.CreatedAt, cc.ID)
	// A comment is ordered with its request's events, not on its own.
	return m.emit(out, c, placeEntity, catalog.RequestCommented, entityKey(m.cfg.Requests.IDPrefix, request), o.end())
}
