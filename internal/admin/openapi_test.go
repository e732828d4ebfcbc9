package admin

import (
	"bytes"
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"mime"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	yaml "go.yaml.in/yaml/v3"

	apidoc "github.com/dzdesk/dzhook/api"
	"github.com/dzdesk/dzhook/api/apitest"
)

// newChecked returns a server held to api/openapi.yaml: every request a
// test sends it, and every answer, must match the description (package
// apitest), so a route, parameter, status or field the description lacks
// fails the test that meets it. Every test of this package builds its
// server so.
func newChecked(t testing.TB, cfg Config) http.Handler {
	t.Helper()
	return apitest.Handler(t, New(cfg))
}

// TestOpenAPIServed: GET /v1/openapi.yaml answers api/openapi.yaml byte
// for byte, as YAML, without the token, even on a server whose API is
// off (no token set).
func TestOpenAPIServed(t *testing.T) {
	for _, token := range []string{"t", ""} {
		srv := newChecked(t, Config{Token: token})
		req := httptest.NewRequest(http.MethodGet, "/v1/openapi.yaml", nil)
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("token %q: GET /v1/openapi.yaml: got %d %s, want 200", token, rec.Code, rec.Body)
		}
		if got, want := rec.Header().Get("Content-Type"), "application/yaml"; got != want {
			t.Errorf("token %q: Content-Type: got %q, want %q", token, got, want)
		}
		if !bytes.Equal(rec.Body.Bytes(), apidoc.YAML()) {
			t.Errorf("token %q: the body differs from api/openapi.yaml", token)
		}
	}
}

// TestOpenAPIJSONServed: GET /v1/openapi.json answers api.JSON, as
// JSON, without the token.
func TestOpenAPIJSONServed(t *testing.T) {
	want, err := apidoc.JSON()
	if err != nil {
		t.Fatal(err)
	}
	srv := newChecked(t, Config{Token: "t"})
	req := httptest.NewRequest(http.MethodGet, "/v1/openapi.json", nil)
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /v1/openapi.json: got %d %s, want 200 application/json", rec.Code, rec.Header().Get("Content-Type"))
	}
	if !bytes.Equal(rec.Body.Bytes(), want) {
		t.Errorf("the body differs from api.JSON()")
	}
}

// TestOpenAPIRefusesQuery: the description's endpoint reads its request
// whole like the others (a query string is a 400).
func TestOpenAPIRefusesQuery(t *testing.T) {
	srv := newChecked(t, Config{})
	req := httptest.NewRequest(http.MethodGet, "/v1/openapi.yaml?format=json", nil)
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest {
		t.Errorf("GET /v1/openapi.yaml?format=json: got %d %s, want 400", rec.Code, rec.Body)
	}
}

// TestOpenAPIOpenEndpoints: the endpoints outside /v1 answer as
// described: /metrics open or behind the token, /readyz ready and not.
func TestOpenAPIOpenEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "dzhook_test_total", Help: "A counter."}))
	for _, tc := range []struct {
		name   string
		cfg    Config
		target string
		token  string
		want   int
	}{
		{"metrics public", Config{Registry: reg, MetricsPublic: true}, "/metrics", "", http.StatusOK},
		{"metrics with the token", Config{Token: "t", Registry: reg}, "/metrics", "t", http.StatusOK},
		{"metrics without the token", Config{Token: "t", Registry: reg}, "/metrics", "", http.StatusUnauthorized},
		{"metrics without a registry", Config{MetricsPublic: true}, "/metrics", "", http.StatusNotFound},
		{"ready", Config{}, "/readyz", "", http.StatusOK},
		{"not ready", Config{Ready: func(context.Context) error { return errors.New("the journal is not reachable") }}, "/readyz", "", http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newChecked(t, tc.cfg)
			req := httptest.NewRequest(http.MethodGet, tc.target, nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Errorf("GET %s: got %d %s, want %d", tc.target, rec.Code, rec.Body, tc.want)
			}
		})
	}
}

// TestOpenAPIHasEveryRoute: the routes the server registers (read from
// this package's source: every s.route and s.mux.Handle pattern) and the
// operations of api/openapi.yaml are the same, so a route no test calls
// cannot go undescribed either. The dashboard (GET /) is left out of the
// description.
func TestOpenAPIHasEveryRoute(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "route" && sel.Sel.Name != "Handle" && sel.Sel.Name != "HandleFunc") {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			pattern, err := strconv.Unquote(lit.Value)
			if err == nil && pattern != "GET /" {
				registered[pattern] = true
			}
			return true
		})
	}
	if len(registered) < 20 {
		t.Fatalf("found %d routes in the source, want every one: %v", len(registered), registered)
	}
	doc, err := apitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	described := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			described[method+" "+path] = true
		}
	}
	for pattern := range registered {
		if !described[pattern] {
			t.Errorf("the server registers %s; api/openapi.yaml lacks it", pattern)
		}
	}
	// Described ahead of its handler, which the event schemas' branch adds.
	const ahead = "GET /v1/events/{name}/schema"
	for op := range described {
		if !registered[op] && op != ahead {
			t.Errorf("api/openapi.yaml describes %s; the server has no such route", op)
		}
	}
}

// TestMetricsContentTypes: each content type api/openapi.yaml declares
// for GET /metrics is one the server answers when asked for it. The
// description listed application/openmetrics-text, which the handler
// (promhttp without EnableOpenMetrics) never serves.
func TestMetricsContentTypes(t *testing.T) {
	var doc struct {
		Paths map[string]struct {
			Get struct {
				Responses map[string]struct {
					Content map[string]any `yaml:"content"`
				} `yaml:"responses"`
			} `yaml:"get"`
		} `yaml:"paths"`
	}
	if err := yaml.Unmarshal(apidoc.YAML(), &doc); err != nil {
		t.Fatal(err)
	}
	declared := doc.Paths["/metrics"].Get.Responses["200"].Content
	if len(declared) == 0 {
		t.Fatal("api/openapi.yaml declares no content of GET /metrics' 200")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "dzhook_test_total", Help: "A counter."}))
	srv := New(Config{Registry: reg, MetricsPublic: true})
	for ct := range declared {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header.Set("Accept", ct)
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		got, _, err := mime.ParseMediaType(rec.Header().Get("Content-Type"))
		if rec.Code != http.StatusOK || err != nil || got != ct {
			t.Errorf("GET /metrics, Accept: %s: %d %s; the description declares %s", ct, rec.Code, rec.Header().Get("Content-Type"), ct)
		}
	}
}
