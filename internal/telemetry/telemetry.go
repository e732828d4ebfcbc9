// Package telemetry builds dzhook's OpenTelemetry tracing: an SDK tracer
// provider exporting over OTLP/HTTP, or nothing at all when tracing is
// off (the default), so that the delivery path makes no span.
//
// Tracing is on when telemetry.otlp_endpoint is set, or when the
// environment names a collector the standard way
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT): a
// platform that injects those variables expects its services to trace.
// OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none keep it off
// whatever is set. The configured endpoint replaces the environment's;
// every other OTEL_* variable the SDK and the exporter know (service
// name, resource attributes, sampler, batch processor, exporter headers,
// timeout, compression, certificates) applies as they define it.
//
// The spans themselves are internal/fanout's (fanout/trace.go).
package telemetry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// DefaultServiceName is service.name unless OTEL_SERVICE_NAME (or
// service.name in OTEL_RESOURCE_ATTRIBUTES) says otherwise.
const DefaultServiceName = "dzhook"

// tracesPath is what OTLP/HTTP appends to a collector's base URL.
const tracesPath = "/v1/traces"

// Config is the input of New.
type Config struct {
	// Endpoint is telemetry.otlp_endpoint: a collector's base URL
	// (http://otel-collector:4318), to which /v1/traces is appended, as
	// to OTEL_EXPORTER_OTLP_ENDPOINT. "": the environment decides.
	Endpoint string
	// Version is service.version.
	Version string
	// LookupEnv reads the environment; defaults to os.LookupEnv. (The
	// SDK and the exporter read the other OTEL_* variables themselves.)
	LookupEnv func(string) (string, bool)
	// Logger is told of spans that could not be exported and of
	// settings dzhook does not follow; defaults to slog.Default().
	Logger *slog.Logger
}

// Tracing is a process's tracer provider while tracing is on. A nil
// *Tracing is tracing off: its Provider is nil, its Shutdown does
// nothing.
type Tracing struct {
	provider *sdktrace.TracerProvider
}

// Enabled reports whether cfg and the environment turn tracing on.
func Enabled(cfg Config) bool {
	env := lookup(cfg)
	if v, _ := env("OTEL_SDK_DISABLED"); strings.EqualFold(strings.TrimSpace(v), "true") {
		return false
	}
	if v, _ := env("OTEL_TRACES_EXPORTER"); strings.EqualFold(strings.TrimSpace(v), "none") {
		return false
	}
	if cfg.Endpoint != "" {
		return true
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if v, ok := env(name); ok && strings.TrimSpace(v) != "" {
			return true
		}
	}
	return false
}

func lookup(cfg Config) func(string) (string, bool) {
	if cfg.LookupEnv != nil {
		return cfg.LookupEnv
	}
	return os.LookupEnv
}

// New returns the tracing cfg and the environment ask for: nil (and no
// error) when tracing is off. Nothing is dialled here: the exporter
// connects when it first sends.
func New(ctx context.Context, cfg Config) (*Tracing, error) {
	if !Enabled(cfg) {
		return nil, nil
	}
	log := cmp.Or(cfg.Logger, slog.Default()).With("component", "telemetry")
	env := lookup(cfg)
	for _, name := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if v, ok := env(name); ok && strings.TrimSpace(v) != "" && strings.TrimSpace(v) != "http/protobuf" {
			log.Warn("dzhook exports spans over OTLP/HTTP (http/protobuf) only; the variable is ignored", "variable", name, "value", v)
		}
	}
	// The SDK reports failed exports (a collector down) only through
	// OpenTelemetry's process-wide handler, by default the standard
	// log package: to dzhook's log instead. One process runs one
	// engine, so the last one set is the one in use.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: spans not exported", "err", err)
	}))
	var opts []otlptracehttp.Option
	if cfg.Endpoint != "" {
		u, err := TracesURL(cfg.Endpoint)
		if err != nil {
			return nil, err
		}
		opts = append(opts, otlptracehttp.WithEndpointURL(u))
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP exporter: %w", err)
	}
	// dzhook's name and version first; the environment's
	// (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) override them.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", DefaultServiceName), attribute.String("service.version", cfg.Version)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("telemetry: resource (OTEL_RESOURCE_ATTRIBUTES): %w", err)
	}
	// No sampler given: the SDK's default reads OTEL_TRACES_SAMPLER and
	// OTEL_TRACES_SAMPLER_ARG (parent-based, always on, when unset); the
	// batcher reads OTEL_BSP_*.
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return &Tracing{provider: tp}, nil
}

// TracesURL is the URL spans are sent to for a collector's base URL:
// /v1/traces appended to its path.
func TracesURL(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", errors.New("telemetry: otlp_endpoint is not an http:// or https:// URL")
	}
	u.Path = path.Join("/", u.Path, tracesPath)
	u.RawPath = ""
	return u.String(), nil
}

// Provider returns the tracer provider, or nil when tracing is off (an
// untyped nil, so that fanout sees tracing off).
func (t *Tracing) Provider() trace.TracerProvider {
	if t == nil {
		return nil
	}
	return t.provider
}

// Shutdown sends the spans not yet exported, within ctx, and stops the
// provider.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.provider.Shutdown(ctx)
}
