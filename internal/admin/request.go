package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"unicode/utf8"
)

// An endpoint of the API declares what it reads besides its path: the
// query parameters it accepts and whether it takes a body. The server
// checks the request against that before the handler runs, so that no
// handler sees a request it was not written for: a query string that does
// not parse whole, a parameter it does not read, a parameter given twice,
// a body it would ignore. Go's url.ParseQuery (and r.URL.Query()) silently
// drop a pair with a ';' or a bad escape, so a filter the operator wrote
// would vanish and an operation on many deliveries would widen: that is
// refused here, in one place, for every endpoint.
type endpoint struct {
	// params are the query parameters the endpoint reads; none refuses
	// any query string.
	params []string
	// body is true for the endpoints that read a JSON body; the others
	// refuse one.
	body bool
	// public is true for the endpoints open without the token (the API's
	// description).
	public bool
}

// query is a request's query string read whole: one non-empty value for
// each parameter given.
type query map[string]string

// handler is an API endpoint's handler: it gets the query checked
// against its endpoint.
type handler func(w http.ResponseWriter, r *http.Request, q query)

// paramError is a query string the server refuses: Param is the
// parameter it is about, and the message names it.
type paramError struct {
	Param string
	msg   string
}

func (e *paramError) Error() string { return e.msg }

// readQuery reads a raw query string whole against the parameters an
// endpoint accepts (pattern names the endpoint in messages). It stops at
// the first problem, in the order of the pairs, so a query of a million
// pairs costs no more than the endpoint's own parameters.
func readQuery(pattern, raw string, accepts []string) (query, error) {
	q := query{}
	for pair := range strings.SplitSeq(raw, "&") {
		if pair == "" {
			continue // "a=1&&b=2", a trailing "&": nothing lost
		}
		rawKey, _, _ := strings.Cut(pair, "=")
		name, err := url.QueryUnescape(rawKey)
		if err != nil {
			name = rawKey
		}
		// One pair at a time, so the error names the pair it is about.
		v, err := url.ParseQuery(pair)
		quoted := fmt.Sprintf("%q", clip(name))
		if err != nil {
			return nil, &paramError{name, fmt.Sprintf("parameter %s: %v; the query string must parse whole (escape ';' as %%3B, '%%' as %%25)", quoted, err)}
		}
		if !slices.Contains(accepts, name) {
			if len(accepts) == 0 {
				return nil, &paramError{name, fmt.Sprintf("unknown parameter %s: %s takes no parameters", quoted, pattern)}
			}
			return nil, &paramError{name, fmt.Sprintf("unknown parameter %s (use %s)", quoted, strings.Join(accepts, ", "))}
		}
		if _, dup := q[name]; dup {
			return nil, &paramError{name, fmt.Sprintf("parameter %s is given more than once; give it once", quoted)}
		}
		if v.Get(name) == "" {
			return nil, &paramError{name, fmt.Sprintf("parameter %s is empty; give a value or leave the parameter out", quoted)}
		}
		q[name] = v.Get(name)
	}
	return q, nil
}

// route registers an API endpoint, behind the token unless ep is public:
// the request's query and body are checked against ep before h runs.
func (s *Server) route(pattern string, ep endpoint, h handler) {
	checked := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, err := readQuery(pattern, r.URL.RawQuery, ep.params)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if !ep.body && hasBody(r) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("body: %s takes no body", pattern))
			return
		}
		h(w, r, q)
	})
	if ep.public {
		s.mux.Handle(pattern, checked)
		return
	}
	s.mux.Handle(pattern, s.auth(checked))
}

// hasBody reports whether a request carries a body (one byte of it is
// read, and the rest left to the server).
func hasBody(r *http.Request) bool {
	if r.ContentLength > 0 {
		return true
	}
	if r.ContentLength == 0 || r.Body == nil {
		return false
	}
	var b [1]byte // unknown length (chunked): look
	n, _ := io.ReadFull(r.Body, b[:])
	return n > 0
}

// errBodyTooLarge is answered 413 by the endpoints that read a body.
var errBodyTooLarge = errors.New("too large")

// readBody decodes a request's body, a single JSON object of at most
// maxBody bytes, into v, refusing fields v lacks. It refuses what
// json.Decoder alone would let through: null (which leaves v as it was),
// a value that is not an object, and anything after the object. A body
// over maxBody is errBodyTooLarge.
func readBody(w http.ResponseWriter, r *http.Request, v any) error {
	raw, err := readRaw(w, r)
	if err != nil {
		return err
	}
	return decodeObject(raw, v)
}

// readRaw reads a request's body whole, at most maxBody bytes (more is
// errBodyTooLarge).
func readRaw(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		return nil, fmt.Errorf("%w: the limit is %d bytes", errBodyTooLarge, mbe.Limit)
	}
	if err != nil {
		return nil, fmt.Errorf("unreadable: %v", err)
	}
	return raw, nil
}

// decodeObject decodes raw, a single JSON object, into v, refusing fields
// v lacks, null, a value that is not an object, anything after it, and
// text that is not UTF-8 (which encoding/json would take with U+FFFD in
// place of each bad byte, so a value would change unnoticed).
func decodeObject(raw []byte, v any) error {
	if trimmed := bytes.TrimSpace(raw); len(trimmed) == 0 {
		return errors.New("empty; want a JSON object")
	} else if trimmed[0] != '{' {
		return errors.New("not a JSON object")
	}
	if !utf8.Valid(raw) {
		return fmt.Errorf("not valid UTF-8 at offset %d; JSON text is UTF-8", invalidUTF8(raw))
	}
	if err := strictShape(raw, reflect.TypeOf(v)); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		// Go's text ("json: cannot unmarshal string into Go struct field
		// SubscriptionInput.queue_while…") left the field cut short.
		if te := (*json.UnmarshalTypeError)(nil); errors.As(err, &te) && te.Field != "" {
			return fmt.Errorf("%s: must be %s, not %s", te.Field, jsonKind(te.Type), map[string]string{"string": "a string", "number": "a number", "bool": "a boolean", "array": "a list", "object": "an object"}[te.Value])
		}
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("more after the JSON object; send one object")
	}
	return nil
}

// jsonKind names what a Go type takes in JSON.
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	}
	return t.String()
}

// invalidUTF8 is the offset of the first byte of b that is not valid
// UTF-8, or -1.
func invalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return -1
}

// bodyError answers a body readBody refused: 413 when too large, else
// 400, the message starting with "body: " and what was wanted.
func bodyError(w http.ResponseWriter, want string, err error) {
	status := http.StatusBadRequest
	if errors.Is(err, errBodyTooLarge) {
		status = http.StatusRequestEntityTooLarge
	}
	writeError(w, status, "body: want "+want+": "+clip(err.Error()))
}
