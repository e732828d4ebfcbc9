package telemetry

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// env is an environment of the given variables only.
func env(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) { v, ok := vars[name]; return v, ok }
}

func TestEnabled(t *testing.T) {
	for _, tc := range []struct {
		name     string
		endpoint string
		vars     map[string]string
		want     bool
	}{
		{"nothing set: off", "", nil, false},
		{"otlp_endpoint", "http://collector:4318", nil, true},
		{"OTEL_EXPORTER_OTLP_ENDPOINT alone", "", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, true},
		{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT alone", "", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, true},
		{"empty variable", "", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, false},
		{"service name alone", "", map[string]string{"OTEL_SERVICE_NAME": "hooks"}, false},
		{"OTEL_SDK_DISABLED wins", "http://collector:4318", map[string]string{"OTEL_SDK_DISABLED": "true"}, false},
		{"OTEL_TRACES_EXPORTER=none wins", "", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Enabled(Config{Endpoint: tc.endpoint, LookupEnv: env(tc.vars)}); got != tc.want {
				t.Errorf("Enabled = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestTracesURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://collector:4318":          "http://collector:4318/v1/traces",
		"http://collector:4318/":         "http://collector:4318/v1/traces",
		"https://otel.example.com/otlp":  "https://otel.example.com/otlp/v1/traces",
		"https://otel.example.com/otlp/": "https://otel.example.com/otlp/v1/traces",
	} {
		if got, err := TracesURL(in); err != nil || got != want {
			t.Errorf("TracesURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// TestOffByDefault: with nothing configured New returns no tracing, and
// its provider is an untyped nil (fanout then makes no span).
func TestOffByDefault(t *testing.T) {
	tr, err := New(context.Background(), Config{LookupEnv: env(nil)})
	if err != nil || tr != nil {
		t.Fatalf("New = %v, %v; want nil, nil", tr, err)
	}
	if tr.Provider() != nil {
		t.Error("Provider of tracing off is not nil")
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestExportsToEndpoint: with otlp_endpoint set, spans reach an OTLP/HTTP
// receiver at its /v1/traces, as protobuf, with the service's name.
func TestExportsToEndpoint(t *testing.T) {
	var posts atomic.Int32
	var wrong atomic.Value
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" || len(body) == 0 {
			wrong.Store(r.Method + " " + r.URL.Path + " " + r.Header.Get("Content-Type"))
		}
		posts.Add(1)
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}))
	defer rc.Close()
	// The SDK reads the real environment: keep the test's own.
	t.Setenv("OTEL_SERVICE_NAME", "dzhook-test")
	ctx := context.Background()
	tr, err := New(ctx, Config{Endpoint: rc.URL, Version: "test"})
	if err != nil || tr == nil {
		t.Fatalf("New = %v, %v", tr, err)
	}
	if err := exportOne(tr); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := posts.Load(); got < 1 {
		t.Fatalf("OTLP receiver got %d requests, want at least 1", got)
	}
	if w := wrong.Load(); w != nil {
		t.Errorf("unexpected request: %v", w)
	}
}

// exportOne ends one span and shuts the tracer down, which flushes the
// batch to the collector; Shutdown's error.
func exportOne(tr *Tracing) error {
	ctx := context.Background()
	_, span := tr.Provider().Tracer("test").Start(ctx, "dzhook.event")
	span.End()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return tr.Shutdown(sctx)
}

// TestExportFailureLogged: spans the collector refuses are reported in
// dzhook's log (not the standard log package's), and a protocol dzhook
// does not speak is warned about.
func TestExportFailureLogged(t *testing.T) {
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
	}))
	defer rc.Close()
	var buf testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	ctx := context.Background()
	tr, err := New(ctx, Config{Endpoint: rc.URL, Logger: log,
		LookupEnv: env(map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})})
	if err != nil || tr == nil {
		t.Fatalf("New = %v, %v", tr, err)
	}
	_ = exportOne(tr) // the export fails: that is what is tested
	out := buf.String()
	for _, want := range []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "spans not exported"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}
