// Package apitest holds the admin API to its OpenAPI description
// (api/openapi.yaml) in tests: Handler wraps the server so that every
// request a test sends, and every answer, is checked against the
// description, and a mismatch fails the test.
//
// The check is strict both ways. A request the description takes must
// get a status the description lists for its operation, with a body of
// the schema it gives (the schemas refuse fields they do not list). A
// request the description refuses (a parameter it does not list, one
// given twice, a value out of its schema, a body it does not take, no
// token where one is needed) must get a 4xx the description lists. A
// path or method the description lacks must get the server's JSON 404 or
// 405 (401 without a token): a route the server has and the description
// lacks fails. Paths outside /v1 that the description lacks (the
// dashboard's files) are not checked.
//
// It uses github.com/getkin/kin-openapi: openapi3 loads and validates the
// description (OpenAPI 3.1, its schemas checked as JSON Schema 2020-12),
// openapi3filter validates requests and answers.
package apitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/dzdesk/dzhook/api"
)

// Load parses and validates api/openapi.yaml as OpenAPI 3.1, examples
// included unless opts say otherwise.
func Load(opts ...openapi3.ValidationOption) (*openapi3.T, error) {
	doc, err := openapi3.NewLoader().LoadFromData(api.YAML())
	if err != nil {
		return nil, fmt.Errorf("load openapi.yaml: %w", err)
	}
	if !doc.IsOpenAPI31OrLater() {
		return nil, fmt.Errorf("openapi.yaml is OpenAPI %s, want 3.1", doc.OpenAPI)
	}
	if err := doc.Validate(context.Background(), opts...); err != nil {
		return nil, fmt.Errorf("validate openapi.yaml: %w", err)
	}
	return doc, nil
}

// Handler returns h checked against the description: each request it
// serves, and its answer, that do not match the description fail t.
func Handler(t testing.TB, h http.Handler) http.Handler {
	t.Helper()
	d, err := loaded()
	if err != nil {
		t.Fatal(err)
	}
	return &checker{t: t, description: d, next: h}
}

// description is the loaded document and its router, read-only once
// made, so shared by every Handler and safe for concurrent use.
type description struct {
	doc    *openapi3.T
	router routers.Router
}

// loaded loads the description once per test binary: the file is
// embedded and never changes, and parsing it for every server a test
// builds cost most of the tests' time. The examples are checked once,
// by api's TestDescriptionIsValid, for the same reason.
var loaded = sync.OnceValues(func() (*description, error) {
	doc, err := Load(openapi3.DisableExamplesValidation())
	if err != nil {
		return nil, err
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	return &description{doc: doc, router: router}, nil
})

type checker struct {
	*description
	t    testing.TB
	next http.Handler
}

func (c *checker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		_ = r.Body.Close()
	}
	// The server and the validator each read the body.
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := httptest.NewRecorder()
	c.next.ServeHTTP(rec, r)
	what := r.Method + " " + r.URL.RequestURI()
	if err := c.check(r, body, rec); err != nil {
		c.t.Errorf("%s: %d: the exchange does not match api/openapi.yaml: %v\nthe answer: %s", what, rec.Code, err, clip(rec.Body.String()))
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// check checks one exchange against the description.
func (c *checker) check(r *http.Request, body []byte, rec *httptest.ResponseRecorder) error {
	req := r.Clone(context.Background())
	req.Body = http.NoBody
	if len(bytes.TrimSpace(body)) == 0 {
		// A blank body is none: the server reads a JSON body only after
		// trimming it, and the description's bodies are JSON.
		body = nil
	} else {
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	if len(body) > 0 && req.Header.Get("Content-Type") == "" {
		// The server reads bodies as JSON whatever their Content-Type.
		req.Header.Set("Content-Type", "application/json")
	}
	route, pathParams, err := c.router.FindRoute(req)
	if err != nil {
		return c.checkNoRoute(req, err, rec)
	}
	opts := &openapi3filter.Options{
		MultiError:                        true,
		RejectWhenRequestBodyNotSpecified: true,
		IncludeResponseStatus:             true,
		AuthenticationFunc:                bearer,
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: pathParams, Route: route, Options: opts}
	reqErr := errors.Join(checkQuery(route.Operation, req.URL.RawQuery), openapi3filter.ValidateRequest(context.Background(), in))
	if reqErr != nil && (rec.Code < 400 || rec.Code >= 500) {
		return fmt.Errorf("the description refuses the request (%v), the server answered %d", reqErr, rec.Code)
	}
	respIn := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 rec.Code,
		Header:                 rec.Header(),
		Options:                opts,
	}
	respIn.SetBodyBytes(rec.Body.Bytes())
	if err := openapi3filter.ValidateResponse(context.Background(), respIn); err != nil {
		if reqErr != nil {
			return fmt.Errorf("%w (the description refuses the request too: %v)", err, reqErr)
		}
		return err
	}
	return nil
}

// checkNoRoute checks the answer to a path or method the description
// lacks: the server's JSON 404 or 405, or 401 without the token.
func (c *checker) checkNoRoute(req *http.Request, routeErr error, rec *httptest.ResponseRecorder) error {
	if !strings.HasPrefix(req.URL.Path, "/v1/") {
		return nil // the dashboard's files, not described
	}
	if clean := path.Clean(req.URL.Path); clean != req.URL.Path && rec.Code/100 == 3 {
		// net/http's mux redirects an unclean path to its clean form.
		if loc := rec.Header().Get("Location"); !strings.HasPrefix(loc, clean) {
			return fmt.Errorf("redirect to %q, want %q", loc, clean)
		}
		return nil
	}
	// 405 when the description has the path with another method.
	want := http.StatusNotFound
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete} {
		probe := req.Clone(context.Background())
		probe.Method = m
		if _, _, err := c.router.FindRoute(probe); err == nil {
			want = http.StatusMethodNotAllowed
		}
	}
	noToken := bearer(context.Background(), &openapi3filter.AuthenticationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req}}) != nil
	if rec.Code != want && !(rec.Code == http.StatusUnauthorized && noToken) {
		return fmt.Errorf("the description has no %s %s (%v), the server answered %d, want %d", req.Method, req.URL.Path, routeErr, rec.Code, want)
	}
	schema := c.doc.Components.Schemas["Error"]
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		return fmt.Errorf("Content-Type %q, want application/json", ct)
	}
	var v any
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		return err
	}
	return c.doc.ValidateSchemaJSON(schema.Value, v)
}

// checkQuery refuses what OpenAPI lets through and the server does not:
// a parameter the operation does not list, one given twice, a query
// string that does not parse whole.
func checkQuery(op *openapi3.Operation, raw string) error {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return fmt.Errorf("query %q: %w", raw, err)
	}
	var errs []error
	for name, vs := range q {
		p := op.Parameters.GetByInAndName(openapi3.ParameterInQuery, name)
		if p == nil {
			errs = append(errs, fmt.Errorf("query parameter %q is not one of the operation's", name))
		}
		if len(vs) > 1 {
			errs = append(errs, fmt.Errorf("query parameter %q is given %d times", name, len(vs)))
		}
	}
	return errors.Join(errs...)
}

// bearer is the bearer scheme as the description has it: a token is
// given, after the scheme's name in any case (HTTP auth schemes are
// case-insensitive). Whether it is the right one only the server knows
// (401).
func bearer(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	const prefix = "Bearer "
	auth := in.RequestValidationInput.Request.Header.Get("Authorization")
	if len(auth) <= len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return errors.New("no bearer token")
	}
	return nil
}

func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}
