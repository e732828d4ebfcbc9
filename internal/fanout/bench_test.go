package fanout

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/signer"
)

// discardRecorder takes records and writes nothing: the benchmarks
// measure fanout's own work, not the journal's.
type discardRecorder struct{}

func (discardRecorder) Put(context.Context, journal.Record) error { return nil }
func (discardRecorder) Wait(context.Context, <-chan error) error  { return nil }
func (discardRecorder) Barrier(context.Context) error             { return nil }

// benchConfig is a Config for benchmarks: no journal is read (a typed
// nil Store), records are discarded. cfg's tracing is the caller's.
func benchConfig(cfg Config, subs ...Subscription) Config {
	cfg.Subscriptions = subs
	cfg.Journal = (*journal.Store)(nil)
	cfg.Records = discardRecorder{}
	cfg.Instance = "bench"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// benchAttempt measures one attempt (the request to a local receiver
// answering 204, the outcome put to the recorder) with cfg's tracing.
func benchAttempt(b *testing.B, cfg Config, traceparent bool) {
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rc.Close()
	d, err := New(benchConfig(cfg, Subscription{ID: "bench", URL: rc.URL + "/hook?token=x", Events: []string{"*"},
		Secret: []byte("0123456789abcdef"), Active: true, Traceparent: traceparent}))
	if err != nil {
		b.Fatal(err)
	}
	s := d.reg.Load().byID["bench"]
	body := []byte(`{"id":"evt_1","event":"request.updated","data":{"id":"req_1"}}`)
	ctx := context.Background()
	var sg signer.Signer // as a worker has
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t := &task{deliveryID: "dlv_1", eventID: "evt_1", eventType: "request.updated", body: body, trigger: journal.TriggerAuto, test: true}
		if res, _ := d.deliver.attempt(ctx, s, t, &sg); res.Status != http.StatusNoContent {
			b.Fatalf("status %d, %s", res.Status, res.Error)
		}
	}
}

// benchDispatch measures routing one event to an inactive subscription
// (a skipped delivery row, no worker involved) with cfg's tracing.
func benchDispatch(b *testing.B, cfg Config) {
	d, err := New(benchConfig(cfg, Subscription{ID: "bench", URL: "https://example.com/hook", Events: []string{"request.*"},
		Secret: []byte("0123456789abcdef"), Active: false}))
	if err != nil {
		b.Fatal(err)
	}
	ev := Event{ID: "evt_1", Type: "request.updated", Body: []byte(`{"id":"evt_1"}`), Key: "req_1"}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := d.Dispatch(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAttempt(b *testing.B)  { benchAttempt(b, Config{}, false) }
func BenchmarkDispatch(b *testing.B) { benchDispatch(b, Config{}) }
