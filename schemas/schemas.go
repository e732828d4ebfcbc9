// Package schemas holds the JSON Schemas (draft 2020-12) of the webhooks
// dzhook sends: one document per DZDESK event (request.created.json, …),
// each describing the whole envelope {"id","event","timestamp","data"} and
// its data. The files in this directory are the source; they are embedded,
// so `dzhook events --schema` and the admin API's
// GET /v1/events/{name}/schema serve the same bytes.
//
// The schemas describe the reference mapping (deploy/sql and the mapping's
// defaults): ids carry its prefixes (req_, usr_, cmt_), and every field it
// fills is required. A deployment with another mapping may send other
// prefixes or leave fields out. Objects are open (no additionalProperties:
// false): dzhook may add fields, and a receiver should ignore those it does
// not know.
//
// A Set adds the custom events a configuration declares with a schema of
// their data (custom_events[].schema) and validates payloads against
// either. Receivers written in Go can use it too:
//
//	set, _ := schemas.New(nil)
//	err := set.Validate(body) // the event named in the body
package schemas

import (
	"bytes"
	"cmp"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

//go:embed *.json
var files embed.FS

// BaseURL is where the built-in documents say they live (their $id).
const BaseURL = "https://raw.githubusercontent.com/dzdesk/dzhook/main/schemas/"

// Builtin returns the document of a built-in event as it is stored, or
// false when name is not one of DZDESK's events.
func Builtin(name string) ([]byte, bool) {
	if strings.ContainsAny(name, "/\\") {
		return nil, false
	}
	b, err := files.ReadFile(name + ".json")
	if err != nil {
		return nil, false
	}
	return b, true
}

// Set is the compiled schemas of a configuration's events: DZDESK's and
// the custom events declared with a data schema. It is safe for
// concurrent use.
type Set struct {
	docs     map[string][]byte
	builtin  map[string]*builtinSchema
	compiled map[string]*jsonschema.Schema // custom events: the envelope
	data     map[string]*jsonschema.Schema // custom events: their data schema alone
}

// builtinSchema is a built-in event's schema, compiled when a body of
// that event is first validated: a running dzhook only serves the
// documents and validates custom events' data, and compiling all of them
// was a twentieth of its start. The documents compile (TestBuiltinsCompile).
type builtinSchema struct {
	once sync.Once
	url  string
	doc  []byte
	sch  *jsonschema.Schema
	err  error
}

func (b *builtinSchema) compiled() (*jsonschema.Schema, error) {
	b.once.Do(func() { b.sch, b.err = compile(b.url, b.doc) })
	return b.sch, b.err
}

// New reads the built-in schemas and compiles, for each custom event in
// custom, the envelope around its data schema. A custom schema that does
// not compile is an error naming the event.
func New(custom map[string]any) (*Set, error) {
	s := &Set{docs: map[string][]byte{}, builtin: map[string]*builtinSchema{}, compiled: map[string]*jsonschema.Schema{}, data: map[string]*jsonschema.Schema{}}
	entries, err := files.ReadDir(".")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		name := strings.TrimSuffix(e.Name(), ".json")
		b, _ := files.ReadFile(e.Name())
		s.docs[name], s.builtin[name] = b, &builtinSchema{url: BaseURL + e.Name(), doc: b}
	}
	for _, name := range slices.Sorted(maps.Keys(custom)) {
		if _, ok := s.docs[name]; ok {
			return nil, fmt.Errorf("schema of %s: a built-in event's schema cannot be replaced", name)
		}
		c, err := compileCustom(name, custom[name])
		if err != nil {
			return nil, err
		}
		s.docs[name], s.compiled[name], s.data[name] = c.doc, c.envelope, c.data
	}
	return s, nil
}

// CompileData checks a custom event's data schema as configuration
// validation does: it compiles alone and inside the envelope. The error
// says why not.
func CompileData(name string, schema any) error {
	_, err := compileCustom(name, schema)
	return err
}

// ValidateWith checks data against a custom event's data schema as
// configuration gives it (a declaration's example, before any Set is
// built). Errors are CompileData's or ValidateData's.
func ValidateWith(name string, schema any, data []byte) error {
	c, err := compileCustom(name, schema)
	if err != nil {
		return err
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("data is not JSON: %w", err)
	}
	return validate(c.data, v)
}

// custom is a custom event's compiled schemas.
type custom struct {
	doc            []byte
	envelope, data *jsonschema.Schema
}

func compileCustom(name string, schema any) (custom, error) {
	wrap := func(err error) (custom, error) { return custom{}, fmt.Errorf("schema of %s: %w", name, err) }
	m, ok := schema.(map[string]any)
	if !ok {
		return wrap(errors.New("must be a JSON Schema object"))
	}
	if at, f := unknownFormat(m, ""); at != "" || f != "" {
		// Asserted formats the validator does not know check nothing:
		// a typo (date_time) or one it lacks (credit-card) passed any
		// value, silently.
		return wrap(fmt.Errorf("at %s: format %q is not one dzhook checks (%s)", cmp.Or(at, "/"), f, strings.Join(slices.Sorted(maps.Keys(knownFormats)), ", ")))
	}
	if at, id := relativeID(m, "", false); at != "" {
		// Resolved against dzhook's own base (a URN, not hierarchical),
		// one failed with "duplicate id urn:dzhook:event:…", naming
		// neither the keyword nor the fix.
		return wrap(fmt.Errorf("at %s: %q is not an absolute URI: give one (e.g. https://example.com/schemas/order.json) or none", at, id))
	}
	b, err := json.Marshal(m)
	if err != nil {
		return wrap(err)
	}
	data, err := compile(customURL(name)+":data", b)
	if err != nil {
		return wrap(err)
	}
	doc, err := customDocument(name, m)
	if err != nil {
		return wrap(err)
	}
	env, err := compile(customURL(name), doc)
	if err != nil {
		return wrap(err)
	}
	return custom{doc: doc, envelope: env, data: data}, nil
}

// knownFormats are the formats the validator checks.
var knownFormats = map[string]bool{
	"date-time": true, "date": true, "time": true, "duration": true, "period": true, "email": true, "hostname": true,
	"ipv4": true, "ipv6": true, "uri": true, "iri": true, "uri-reference": true, "iri-reference": true, "uri-template": true,
	"uuid": true, "json-pointer": true, "relative-json-pointer": true, "semver": true,
}

// unknownFormat finds a "format" keyword in v whose value the validator
// does not know, and returns its JSON pointer and value.
func unknownFormat(v any, at string) (string, string) {
	switch v := v.(type) {
	case map[string]any:
		if f, ok := v["format"].(string); ok && !knownFormats[f] {
			return at + "/format", f
		}
		for _, k := range slices.Sorted(maps.Keys(v)) {
			if p, f := unknownFormat(v[k], at+"/"+k); f != "" {
				return p, f
			}
		}
	case []any:
		for i, x := range v {
			if p, f := unknownFormat(x, at+"/"+strconv.Itoa(i)); f != "" {
				return p, f
			}
		}
	}
	return "", ""
}

// relativeID finds an "$id" in the schema v with a relative path (not
// empty, not a fragment alone: draft-07's anchors, "#item") and no
// absolute "$id" above it to resolve against (based), and returns its
// JSON pointer and value. It looks only where schemas are (schemaMaps,
// schemaOne, schemaLists): elsewhere an "$id" is data or an annotation.
func relativeID(v any, at string, based bool) (string, string) {
	m, ok := v.(map[string]any)
	if !ok {
		return "", ""
	}
	if id, ok := m["$id"].(string); ok && id != "" && !strings.HasPrefix(id, "#") {
		u, err := url.Parse(id)
		switch {
		case err == nil && u.IsAbs():
			based = true
		case !based || err != nil:
			return at + "/$id", id
		}
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		var subs map[string]any
		switch x := m[k].(type) {
		case map[string]any:
			switch {
			case schemaMaps[k]:
				subs = x
			case schemaOne[k]:
				subs = map[string]any{"": x}
			}
		case []any:
			if schemaLists[k] {
				subs = make(map[string]any, len(x))
				for i, y := range x {
					subs[strconv.Itoa(i)] = y
				}
			}
		}
		for _, name := range slices.Sorted(maps.Keys(subs)) {
			p := at + "/" + k
			if name != "" || !schemaOne[k] {
				p += "/" + name
			}
			if p, id := relativeID(subs[name], p, based); p != "" {
				return p, id
			}
		}
	}
	return "", ""
}

// The keywords whose values are schemas: a map of them, one, or a list
// (2020-12 and draft-07's).
var (
	schemaMaps = map[string]bool{"properties": true, "patternProperties": true, "$defs": true, "definitions": true, "dependentSchemas": true, "dependencies": true}
	schemaOne  = map[string]bool{"items": true, "additionalItems": true, "additionalProperties": true, "contains": true, "propertyNames": true,
		"not": true, "if": true, "then": true, "else": true, "unevaluatedItems": true, "unevaluatedProperties": true, "contentSchema": true}
	schemaLists = map[string]bool{"allOf": true, "anyOf": true, "oneOf": true, "prefixItems": true, "items": true}
)

func customURL(name string) string { return "urn:dzhook:event:" + name }

// compile compiles one document, with formats asserted (a date-time that
// is not one fails) and no loading of other documents: a $ref may only
// point inside the document, so validation never reaches the network or
// the file system.
func compile(url string, doc []byte) (*jsonschema.Schema, error) {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	c.UseLoader(noLoader{})
	if err := c.AddResource(url, v); err != nil {
		return nil, err
	}
	sch, err := c.Compile(url)
	var bad *jsonschema.SchemaValidationError
	if errors.As(err, &bad) {
		// Say where the schema is wrong, not the metaschema's story.
		return nil, fmt.Errorf("not a valid JSON Schema: %w", first(bad.Err))
	}
	return sch, err
}

// noLoader refuses every document the compiler would fetch.
type noLoader struct{}

func (noLoader) Load(url string) (any, error) {
	return nil, fmt.Errorf("%s: schemas may only refer inside themselves", url)
}

// customDocument is a custom event's schema document: the envelope every
// event has, with the configured schema as data. The data schema gets an
// $id of its own when it has none (an embedded resource), so that its
// references ("#/$defs/…") resolve inside it, as they did alone, and not
// against the envelope.
func customDocument(name string, data map[string]any) ([]byte, error) {
	if _, ok := data["$id"]; !ok {
		data = maps.Clone(data)
		data["$id"] = customURL(name) + ":data"
	}
	doc := map[string]any{
		"$schema":     "https://json-schema.org/draft/2020-12/schema",
		"$id":         customURL(name),
		"title":       name,
		"description": "The webhook dzhook POSTs for the custom event " + name + ": the envelope, with data as the application wrote it to the outbox, checked against custom_events[].schema before it is sent.",
		"type":        "object",
		"required":    []string{"id", "event", "timestamp", "data"},
		"properties": map[string]any{
			"id":        map[string]any{"type": "string", "pattern": "^whk_([2-7a-z]{26}|test_[0-9a-f]{24})$"},
			"event":     map[string]any{"const": name},
			"timestamp": map[string]any{"type": "string", "format": "date-time"},
			"data":      data,
		},
	}
	return json.MarshalIndent(doc, "", "  ")
}

// Document returns the schema document of an event, or false when the
// set has none for it (not an event, or a custom event declared without
// a schema).
func (s *Set) Document(name string) ([]byte, bool) {
	b, ok := s.docs[name]
	return b, ok
}

// Names returns the events the set has a schema of, sorted.
func (s *Set) Names() []string { return slices.Sorted(maps.Keys(s.docs)) }

// ErrNoSchema is returned for an event the set has no schema of.
var ErrNoSchema = errors.New("no schema")

// Validate checks a webhook body against the schema of the event its
// "event" field names. It returns a *ValidationError when the body breaks
// the schema, ErrNoSchema (wrapped) when the event has none.
func (s *Set) Validate(body []byte) error {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("body is not JSON: %w", err)
	}
	obj, _ := v.(map[string]any)
	name, _ := obj["event"].(string)
	sch, ok := s.compiled[name]
	if b, builtin := s.builtin[name]; builtin {
		if sch, err = b.compiled(); err != nil {
			return fmt.Errorf("schema of %s: %w", name, err)
		}
		ok = true
	}
	if !ok {
		return fmt.Errorf("event %q: %w", name, ErrNoSchema)
	}
	return validate(sch, v)
}

// ValidateData checks a custom event's data (an outbox payload) against
// the schema its declaration gives. An event without one accepts any
// data: it returns nil. Pointers in the error are relative to data.
//
// A built-in event's name written by the application (the outbox or a
// message may use the catalog's names) is held to its built-in schema:
// receivers are told those shapes, and {"event": "sla.breach", "data":
// {"whatever": 1}} went out as an sla.breach.
func (s *Set) ValidateData(name string, data []byte) error {
	if b, ok := s.builtin[name]; ok {
		sch, err := b.compiled()
		if err != nil {
			return fmt.Errorf("schema of %s: %w", name, err)
		}
		body := make([]byte, 0, len(data)+128)
		body = append(body, `{"id":"whk_aaaaaaaaaaaaaaaaaaaaaaaaaa","event":`...)
		body = strconv.AppendQuote(body, name)
		body = append(body, `,"timestamp":"2000-01-01T00:00:00Z","data":`...)
		body = append(body, data...)
		body = append(body, '}')
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("data is not JSON: %w", err)
		}
		err = validate(sch, v)
		if ve := (*ValidationError)(nil); errors.As(err, &ve) {
			return &ValidationError{Pointer: strings.TrimPrefix(ve.Pointer, "/data"), Message: ve.Message}
		}
		return err
	}
	sch, ok := s.data[name]
	if !ok {
		return nil
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("data is not JSON: %w", err)
	}
	return validate(sch, v)
}

// ValidationError is a value that breaks its schema: where (a JSON
// pointer into the value; a missing property's pointer names the
// property) and why. Only the first cause is kept: one to fix at a time.
type ValidationError struct {
	// Pointer is the JSON pointer (RFC 6901) of the offending value, ""
	// for the whole document.
	Pointer string
	// Message says what is wrong, e.g. "missing property 'title'".
	Message string
}

func (e *ValidationError) Error() string {
	p := e.Pointer
	if p == "" {
		p = "/"
	}
	return "at " + p + ": " + e.Message
}

var printer = message.NewPrinter(language.English)

func validate(sch *jsonschema.Schema, v any) error {
	return first(sch.Validate(v))
}

// first turns the validator's tree of causes into the first leaf's
// pointer and message; other errors pass as they are.
func first(err error) error {
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	for len(ve.Causes) > 0 {
		ve = ve.Causes[0]
	}
	loc := ve.InstanceLocation
	if r, ok := ve.ErrorKind.(*kind.Required); ok && len(r.Missing) > 0 {
		loc = append(slices.Clone(loc), r.Missing[0])
	}
	var p strings.Builder
	for _, tok := range loc {
		p.WriteByte('/')
		// A key is the data's: quoted as Go would where it holds what a
		// message cannot (a NUL, a line break), and cut when long.
		if len(tok) > 64 {
			tok = tok[:64] + "…"
		}
		if strings.ContainsFunc(tok, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			tok = strconv.Quote(tok)
		}
		p.WriteString(strings.NewReplacer("~", "~0", "/", "~1").Replace(tok))
	}
	msg := ve.ErrorKind.LocalizedString(printer)
	// The value itself is the data's, logged and journaled with the
	// rejection: not repeated where the keyword says enough (a card
	// number failing a token's pattern).
	switch k := ve.ErrorKind.(type) {
	case *kind.Pattern:
		msg = fmt.Sprintf("does not match pattern %q", k.Want)
	case *kind.Format:
		msg = fmt.Sprintf("is not a valid %s", k.Want)
	}
	return &ValidationError{Pointer: p.String(), Message: msg}
}
