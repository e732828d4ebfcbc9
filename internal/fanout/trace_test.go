package fanout

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// traceToken stands for a credential in a receiver's URL: no span may
// carry it.
const traceToken = "TRACE-SECRET-51c2"

// attr returns a span's attribute, and whether it has it.
func attr(s tracetest.SpanStub, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// wantAttrs checks a span's attributes.
func wantAttrs(t *testing.T, s tracetest.SpanStub, want map[attribute.Key]any) {
	t.Helper()
	for k, w := range want {
		v, ok := attr(s, k)
		if !ok {
			t.Errorf("%s: no attribute %s", s.Name, k)
			continue
		}
		if got := v.AsInterface(); got != w {
			t.Errorf("%s: %s = %v, want %v", s.Name, k, got, w)
		}
	}
}

// TestTraces: an event dispatched to two subscriptions makes an event
// span; each first attempt is its child, with an HTTP client span
// inside; a retry (claimed from the journal) starts a trace of its own
// with the delivery's id. Attributes say event, subscription, delivery,
// attempt, status and error class, and none carries the URL's token.
// The subscription that opted in sends traceparent, the client span's
// context; the other sends none.
func TestTraces(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	traced := testutil.NewReceiver(t)
	traced.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		if n == 1 {
			return http.StatusInternalServerError, nil, "try again"
		}
		return http.StatusOK, nil, "ok"
	})
	plain := testutil.NewReceiver(t)
	d := start(t, store, Config{
		Subscriptions: []Subscription{
			{ID: "traced", URL: traced.URL + "/hook?token=" + traceToken, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, Traceparent: true},
			{ID: "plain", URL: plain.URL + "/hook?token=" + traceToken, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true},
		},
		Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond,
		RetrySchedule:  []time.Duration{0, 100 * time.Millisecond},
		TracerProvider: tp,
	})
	ev := Event{ID: "whk_trace1", Type: "request.created", Timestamp: time.Now().UTC(), Body: []byte(`{"id":"whk_trace1"}`)}
	if err := d.Dispatch(ctx, ev); err != nil {
		t.Fatal(err)
	}
	tracedReqs := traced.Wait(t, 2, 10*time.Second)
	plainReqs := plain.Wait(t, 1, 10*time.Second)
	var spans tracetest.SpanStubs
	testutil.Eventually(t, 10*time.Second, "an event span, three attempt and three client spans", func() bool {
		spans = exp.GetSpans()
		return len(testutil.SpansNamed(spans, spanEvent)) == 1 && len(testutil.SpansNamed(spans, spanAttempt)) == 3 && len(testutil.SpansNamed(spans, "POST")) == 3
	})

	evSpan := testutil.SpansNamed(spans, spanEvent)[0]
	wantAttrs(t, evSpan, map[attribute.Key]any{AttrEventType: "request.created", AttrEventID: ev.ID, AttrDeliveries: int64(2)})
	if evSpan.SpanKind != trace.SpanKindProducer {
		t.Errorf("event span kind %v, want producer", evSpan.SpanKind)
	}

	// Attempts by subscription and number.
	attempts := map[string]tracetest.SpanStub{}
	for _, s := range testutil.SpansNamed(spans, spanAttempt) {
		sub, _ := attr(s, AttrSubscriptionID)
		n, _ := attr(s, AttrAttempt)
		attempts[sub.AsString()+"#"+n.Emit()] = s
	}
	first, retry, other := attempts["traced#1"], attempts["traced#2"], attempts["plain#1"]
	for name, s := range map[string]tracetest.SpanStub{"traced#1": first, "traced#2": retry, "plain#1": other} {
		if s.Name == "" {
			t.Fatalf("no attempt span %s among %v", name, attempts)
		}
	}
	wantAttrs(t, first, map[attribute.Key]any{AttrEventType: "request.created", AttrEventID: ev.ID,
		AttrDeliveryID: ids.DeliveryID(ev.ID, "traced"), attrStatus: int64(500), attrErrorType: ClassHTTP, AttrOutcome: "retry", AttrTrigger: "auto"})
	wantAttrs(t, retry, map[attribute.Key]any{AttrDeliveryID: ids.DeliveryID(ev.ID, "traced"), attrStatus: int64(200), AttrOutcome: "delivered"})
	wantAttrs(t, other, map[attribute.Key]any{AttrDeliveryID: ids.DeliveryID(ev.ID, "plain"), attrStatus: int64(200)})
	if _, ok := attr(retry, attrErrorType); ok {
		t.Error("the successful retry's span has an error.type")
	}

	// The first attempts are the event span's children; the retry, made
	// from the journal, starts its own trace.
	for _, s := range []tracetest.SpanStub{first, other} {
		if s.Parent.SpanID() != evSpan.SpanContext.SpanID() || s.SpanContext.TraceID() != evSpan.SpanContext.TraceID() {
			t.Errorf("first attempt %v: parent %v, want the event span %v", s.Attributes, s.Parent.SpanID(), evSpan.SpanContext.SpanID())
		}
	}
	if retry.Parent.IsValid() || retry.SpanContext.TraceID() == evSpan.SpanContext.TraceID() {
		t.Errorf("retry: parent %v, trace %v; want a new trace", retry.Parent, retry.SpanContext.TraceID())
	}

	// Each attempt holds one HTTP client span.
	clients := map[trace.SpanID]tracetest.SpanStub{}
	for _, c := range testutil.SpansNamed(spans, "POST") {
		if c.SpanKind != trace.SpanKindClient {
			t.Errorf("client span kind %v", c.SpanKind)
		}
		clients[c.Parent.SpanID()] = c
	}
	for _, a := range []tracetest.SpanStub{first, retry, other} {
		c, ok := clients[a.SpanContext.SpanID()]
		if !ok {
			t.Fatalf("attempt %v has no client span", a.Attributes)
		}
		st, _ := attr(a, attrStatus)
		wantAttrs(t, c, map[attribute.Key]any{attrMethod: "POST", attrStatus: st.AsInterface(), attrHost: "127.0.0.1"})
		if u, _ := attr(c, attrURL); !strings.HasSuffix(u.AsString(), "/hook?REDACTED") {
			t.Errorf("client span url.full %q, want the URL as shown", u.AsString())
		}
	}

	// No attribute of any span carries the URL's token or a body.
	for _, s := range spans {
		for _, kv := range s.Attributes {
			if v := kv.Value.Emit(); strings.Contains(v, traceToken) || strings.Contains(v, "whk_trace1\"") {
				t.Errorf("%s: attribute %s = %q", s.Name, kv.Key, v)
			}
		}
	}

	// traceparent: the opted-in subscription's requests carry their
	// client span's context; the other's carry none.
	for i, r := range tracedReqs[:2] {
		a := first
		if i == 1 {
			a = retry
		}
		sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(ctx, propagation.HeaderCarrier(r.Header)))
		c := clients[a.SpanContext.SpanID()]
		if !sc.IsValid() || sc.TraceID() != a.SpanContext.TraceID() || sc.SpanID() != c.SpanContext.SpanID() {
			t.Errorf("request %d traceparent %q: want trace %v, span %v (the attempt's client span)", i+1, r.Header.Get("Traceparent"),
				a.SpanContext.TraceID(), c.SpanContext.SpanID())
		}
	}
	if h := plainReqs[0].Header.Get("Traceparent"); h != "" {
		t.Errorf("subscription without traceparent sent %q", h)
	}
}

// TestTracesOffByDefault: without a TracerProvider no span is made, not
// even through OpenTelemetry's global provider, and no traceparent is
// sent though the subscription asks for it.
func TestTracesOffByDefault(t *testing.T) {
	store := newJournal(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev); _ = tp.Shutdown(context.Background()) })

	rc := testutil.NewReceiver(t)
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "traced", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true, Traceparent: true}},
		Journal:       store, Instance: "i1", PollInterval: 50 * time.Millisecond,
	})
	if err := d.Dispatch(context.Background(), Event{ID: "whk_off1", Type: "request.created", Timestamp: time.Now().UTC(), Body: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	reqs := rc.Wait(t, 1, 10*time.Second)
	if h := reqs[0].Header.Get("Traceparent"); h != "" {
		t.Errorf("traceparent %q sent with tracing off", h)
	}
	if err := d.records.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(exp.GetSpans()); n != 0 {
		t.Errorf("%d spans with tracing off, want 0", n)
	}
}

// The benchmarks with tracing on: every span sampled and recorded (then
// dropped: no exporter), to compare with BenchmarkAttempt and
// BenchmarkDispatch (tracing off).
func BenchmarkAttemptTraced(b *testing.B) {
	benchAttempt(b, Config{TracerProvider: sdktrace.NewTracerProvider()}, true)
}

func BenchmarkDispatchTraced(b *testing.B) {
	benchDispatch(b, Config{TracerProvider: sdktrace.NewTracerProvider()})
}
