package testutil

import "go.opentelemetry.io/otel/sdk/trace/tracetest"

// SpansNamed returns the ended spans called name, in the order they ended.
func SpansNamed(spans tracetest.SpanStubs, name string) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}
