package admin

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/fanout"
)

// stuckDeliverer's actions wait for the journal, which never answers:
// they end only with their context.
type stuckDeliverer struct{ checkedDeliverer }

func (stuckDeliverer) RetryNow(ctx context.Context, _ string) (fanout.AttemptReport, error) {
	<-ctx.Done()
	return fanout.AttemptReport{}, ctx.Err()
}

func (stuckDeliverer) RetryFailed(ctx context.Context, _ string, _, _ *time.Time) (int, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

func (stuckDeliverer) SendTest(ctx context.Context, _ string, _ fanout.Event) (fanout.AttemptReport, error) {
	<-ctx.Done()
	return fanout.AttemptReport{}, ctx.Err()
}

func (stuckDeliverer) Pause(ctx context.Context, _ string) error {
	<-ctx.Done()
	return ctx.Err()
}

func (stuckDeliverer) Resume(ctx context.Context, _ string) (int, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

// TestActionsBoundedWhenTheJournalHangs: an operator's action (pause,
// resume, retry, retry-failed, test) whose journal work never ends
// answers 503 once its bound passes, saying the action may have been
// made, instead of a request that hangs while the journal is away (the
// dashboard's buttons stayed busy; only reads had a bound).
func TestActionsBoundedWhenTheJournalHangs(t *testing.T) {
	cat, err := catalog.New()
	if err != nil {
		t.Fatal(err)
	}
	srv := newChecked(t, Config{
		changeTimeout: 200 * time.Millisecond, attemptTimeout: 300 * time.Millisecond,
		Token: "t", Deliverer: stuckDeliverer{checkedDeliverer{t: t, cat: cat}}, History: checkedHistory{t: t, cat: cat}, Catalog: cat,
		Sample: func(eventType string) (fanout.Event, error) {
			return fanout.Event{ID: "whk_sample", Type: eventType, Body: []byte(`{}`)}, nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	for _, target := range []string{
		"/v1/subscriptions/crm/pause", "/v1/subscriptions/crm/resume", "/v1/subscriptions/crm/retry-failed",
		"/v1/subscriptions/crm/test", "/v1/deliveries/dlv_2uclu222222257gue222222222abcdefghijklm/retry",
	} {
		done := make(chan *httptest.ResponseRecorder, 1)
		go func() {
			var body io.Reader
			if strings.HasSuffix(target, "/test") {
				body = strings.NewReader(`{}`)
			}
			req := httptest.NewRequest(http.MethodPost, target, body)
			req.Header.Set("Authorization", "Bearer t")
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			done <- rec
		}()
		select {
		case rec := <-done:
			if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "may have been made") {
				t.Errorf("POST %s with the journal away: %d %s, want 503 saying the action may have been made", target, rec.Code, rec.Body)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("POST %s with the journal away: no answer after 10s", target)
		}
	}
}

// TestJournalTookTooLong: a statement the journal cancelled (SQLSTATE
// 57014: a statement_timeout of the journal's role, or the request's
// deadline, which the journal's pool cancels in the server) answers 503
// saying the journal took too long, not that it could not be reached,
// which sent the operator looking for an outage; a change cut so may have
// been made.
func TestJournalTookTooLong(t *testing.T) {
	canceled := fmt.Errorf("list deliveries: %w", &pgconn.PgError{Severity: "ERROR", Code: "57014", Message: "canceling statement due to statement timeout"})
	srv, s := newSpyServer(t)
	s.listErr = canceled
	for _, target := range []string{"/v1/deliveries", "/v1/deliveries?subscription=crm&status=cancelled"} {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		req.Header.Set("Authorization", "Bearer t")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "the journal took too long to answer") ||
			strings.Contains(rec.Body.String(), "could not be reached") {
			t.Errorf("GET %s cut by the journal: %d %s, want 503 saying the journal took too long to answer", target, rec.Code, rec.Body)
		}
	}
	// The client gone (its request's context ended): its statement was
	// cancelled with it, and nothing was slow: not told (nor logged) as
	// the journal taking too long.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequest(http.MethodGet, "/v1/deliveries", nil).WithContext(ctx)
	req.Header.Set("Authorization", "Bearer t")
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	if body := rec.Body.String(); !strings.Contains(body, "cancelled before the journal answered") || strings.Contains(body, "took too long") {
		t.Errorf("GET by a client that left: %d %s, want it told as cancelled, not as the journal taking too long", rec.Code, body)
	}
	srv, s = newSpyServer(t)
	s.m.err = canceled
	req = httptest.NewRequest(http.MethodPatch, "/v1/subscriptions/billing", strings.NewReader(`{"url":"http://x"}`))
	req.Header.Set("Authorization", "Bearer t")
	rec = httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "may have been made") {
		t.Errorf("PATCH cut by the journal: %d %s, want 503 saying the change may have been made", rec.Code, rec.Body)
	}
}
