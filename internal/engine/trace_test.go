package engine

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestTracesEndToEnd: a row committed in DZDESK's database becomes an
// event span whose first attempt is its child, with the HTTP client span
// inside; a runtime subscription created with traceparent sends the
// client span's context, and the API shows the setting and changes it.
func TestTracesEndToEnd(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	e, _ := startWith(t, runtimeConfig(t, db), Options{TracerProvider: tp})
	ctx := context.Background()

	created, err := e.Manager().CreateSubscription(ctx, api.SubscriptionInput{URL: ptr(rc.URL + "/hook?token=abc"),
		Events: ptr([]string{"request.created"}), Traceparent: ptr(true)}, "")
	if err != nil {
		t.Fatal(err)
	}
	if !created.Traceparent {
		t.Error("created subscription does not show traceparent")
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (8, 'Traced', 1)`)
	reqs := rc.Wait(t, 1, 20*time.Second)

	var spans tracetest.SpanStubs
	testutil.Eventually(t, 10*time.Second, "event, attempt and client spans", func() bool {
		spans = exp.GetSpans()
		return len(testutil.SpansNamed(spans, "dzhook.event")) == 1 && len(testutil.SpansNamed(spans, "dzhook.attempt")) == 1 && len(testutil.SpansNamed(spans, "POST")) == 1
	})
	ev, at, cl := testutil.SpansNamed(spans, "dzhook.event")[0], testutil.SpansNamed(spans, "dzhook.attempt")[0], testutil.SpansNamed(spans, "POST")[0]
	if at.Parent.SpanID() != ev.SpanContext.SpanID() || cl.Parent.SpanID() != at.SpanContext.SpanID() {
		t.Errorf("tree: attempt's parent %v (event %v), client's parent %v (attempt %v)",
			at.Parent.SpanID(), ev.SpanContext.SpanID(), cl.Parent.SpanID(), at.SpanContext.SpanID())
	}
	for _, kv := range at.Attributes {
		if kv.Key == fanout.AttrSubscriptionID && kv.Value.AsString() != created.ID {
			t.Errorf("attempt's subscription %q, want %q", kv.Value.AsString(), created.ID)
		}
	}
	sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(ctx, propagation.HeaderCarrier(reqs[0].Header)))
	if sc.TraceID() != ev.SpanContext.TraceID() || sc.SpanID() != cl.SpanContext.SpanID() {
		t.Errorf("traceparent %q: want trace %v, span %v", reqs[0].Header.Get("Traceparent"), ev.SpanContext.TraceID(), cl.SpanContext.SpanID())
	}
	st, err := e.Manager().UpdateSubscription(ctx, created.ID, api.SubscriptionInput{Traceparent: ptr(false)}, "")
	if err != nil {
		t.Fatal(err)
	}
	if st.Traceparent {
		t.Error("traceparent still shown after a change to false")
	}
}
