package fanout

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Tracing (Config.TracerProvider) makes three kinds of span:
//
//   - dzhook.event: one per dispatched event, from Dispatch until the
//     journal writer has made the event and its deliveries durable (held
//     first deliveries are written later, with their attempt's outcome:
//     their attempt spans cover that).
//   - dzhook.attempt: one per attempt. A first attempt made from memory
//     in the process that dispatched the event is the event span's
//     child; any other (a retry, a claim, an operator's retry or test)
//     starts a trace of its own, found by its delivery id.
//   - an HTTP client span (named by the method) inside the attempt,
//     whose context the traceparent header carries when the subscription
//     asks for it.
//
// Attributes name the event, subscription, delivery, attempt, status and
// error class; never a body, a header, or a URL but as shown (without
// user info, query, or a connector's path).
//
// With no TracerProvider the tracer is nil, and each path pays one nil
// check: no span, no context, no allocation.

// tracerName is the instrumentation scope of dzhook's delivery spans.
const tracerName = "github.com/dzdesk/dzhook/internal/fanout"

// Span and attribute names.
const (
	spanEvent   = "dzhook.event"
	spanAttempt = "dzhook.attempt"

	AttrEventType      = attribute.Key("dzhook.event.type")
	AttrEventID        = attribute.Key("dzhook.event.id")
	AttrDeliveries     = attribute.Key("dzhook.deliveries")
	AttrSubscriptionID = attribute.Key("dzhook.subscription.id")
	AttrDeliveryID     = attribute.Key("dzhook.delivery.id")
	AttrAttempt        = attribute.Key("dzhook.attempt")
	AttrTrigger        = attribute.Key("dzhook.trigger")
	AttrOutcome        = attribute.Key("dzhook.outcome")
	// Semantic conventions' names, for what they define.
	attrStatus    = attribute.Key("http.response.status_code")
	attrErrorType = attribute.Key("error.type")
	attrMethod    = attribute.Key("http.request.method")
	attrURL       = attribute.Key("url.full")
	attrHost      = attribute.Key("server.address")
	attrPort      = attribute.Key("server.port")
)

// tracer returns the tracer of cfg's provider, or nil when tracing is off.
func (cfg *Config) tracer() trace.Tracer {
	if cfg.TracerProvider == nil {
		return nil
	}
	return cfg.TracerProvider.Tracer(tracerName)
}

// eventSpan is the span of one dispatched event.
type eventSpan struct {
	span trace.Span
	// journaled: the record was put to the journal writer, which ends
	// the span once it is durable.
	journaled bool
}

// startEvent starts an event's span.
func startEvent(ctx context.Context, tr trace.Tracer, ev Event) *eventSpan {
	_, span := tr.Start(ctx, spanEvent, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		AttrEventType.String(ev.Type), AttrEventID.String(ev.ID)))
	return &eventSpan{span: span}
}

// end ends the span once the event's record is durable, or failed.
func (es *eventSpan) end(err error) {
	if err != nil {
		es.span.RecordError(err)
		es.span.SetStatus(codes.Error, "not journaled")
	}
	es.span.End()
}

// startAttempt starts an attempt's span: the event span's child when the
// task came from this process's dispatch, else a new trace.
func startAttempt(ctx context.Context, tr trace.Tracer, s *sub, t *task, n int) (context.Context, trace.Span) {
	opts := []trace.SpanStartOption{trace.WithAttributes(
		AttrEventType.String(t.eventType), AttrEventID.String(t.eventID), AttrSubscriptionID.String(s.cfg.ID),
		AttrDeliveryID.String(t.deliveryID), AttrAttempt.Int(n), AttrTrigger.String(string(t.trigger)))}
	if t.event != nil && !t.claimed {
		ctx = trace.ContextWithSpanContext(ctx, t.event.span.SpanContext())
	} else {
		opts = append(opts, trace.WithNewRoot())
	}
	return tr.Start(ctx, spanAttempt, opts...)
}

// endAttempt ends an attempt's span with its outcome.
func endAttempt(span trace.Span, res attemptResult, dec Decision) {
	if res.Status != 0 {
		span.SetAttributes(attrStatus.Int(res.Status))
	}
	span.SetAttributes(AttrOutcome.String(dec.Outcome.String()))
	if res.ErrorClass != "" {
		span.SetAttributes(attrErrorType.String(res.ErrorClass))
		span.SetStatus(codes.Error, res.ErrorClass)
	}
	span.End()
}

// clientSpan starts the HTTP client span of an attempt. shown is the
// URL as it may be shown (never the configured one: it may hold a token).
func clientSpan(ctx context.Context, tr trace.Tracer, method, raw, shown string) (context.Context, trace.Span) {
	attrs := []attribute.KeyValue{attrMethod.String(method), attrURL.String(shown)}
	if u, err := url.Parse(raw); err == nil {
		attrs = append(attrs, attrHost.String(u.Hostname()))
		port := u.Port()
		if port == "" && u.Scheme == "https" {
			port = "443"
		} else if port == "" {
			port = "80"
		}
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, attrPort.Int(p))
		}
	}
	return tr.Start(ctx, method, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
}

// endClient ends the client span with what the receiver answered.
func endClient(span trace.Span, res attemptResult) {
	if res.Status != 0 {
		span.SetAttributes(attrStatus.Int(res.Status))
	}
	if res.ErrorClass != "" {
		span.SetAttributes(attrErrorType.String(res.ErrorClass))
		span.SetStatus(codes.Error, res.ErrorClass)
	}
	span.End()
}

// injectTraceparent sets the W3C traceparent (and tracestate) headers
// from ctx's span, when it has a valid one.
func injectTraceparent(ctx context.Context, h http.Header) {
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(h))
}
