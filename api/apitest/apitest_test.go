package apitest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// recorder is a testing.TB that keeps the failures it is told.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestHandler: an exchange the description lacks fails the test (a
// field, a route, a parameter, a status, the token), and one it has does
// not.
func TestHandler(t *testing.T) {
	for _, tc := range []struct {
		name, method, target, token string
		status                      int
		body                        string
		want                        string // in the failure; "" for none
	}{
		{"described", "GET", "/healthz", "", 200, `{"status":"ok"}`, ""},
		{"field not described", "GET", "/healthz", "", 200, `{"status":"ok","uptime":3}`, "uptime"},
		{"required field missing", "GET", "/v1/events", "t", 200, `{}`, "doesn't match"},
		{"enum", "GET", "/healthz", "", 200, `{"status":"fine"}`, "doesn't match"},
		{"route not described", "GET", "/v1/widgets", "t", 200, `{}`, "the description has no GET /v1/widgets"},
		{"not found as described", "GET", "/v1/widgets", "t", 404, `{"error":"no such endpoint"}`, ""},
		{"method not described", "PUT", "/v1/events", "t", 404, `{"error":"no"}`, "want 405"},
		{"parameter not described", "GET", "/v1/audit?page=2", "t", 200, `{"entries":[]}`, `"page" is not one of the operation's`},
		{"parameter refused as described", "GET", "/v1/audit?page=2", "t", 400, `{"error":"unknown parameter \"page\""}`, ""},
		{"parameter twice", "GET", "/v1/audit?limit=2&limit=3", "t", 200, `{"entries":[]}`, "given 2 times"},
		{"parameter out of range", "GET", "/v1/audit?limit=501", "t", 200, `{"entries":[]}`, "refuses the request"},
		{"no token", "GET", "/v1/events", "", 200, `{"events":[]}`, "refuses the request"},
		{"status not described", "GET", "/v1/events", "t", 409, `{"error":"busy"}`, "status is not supported"},
		{"error body not described", "GET", "/v1/deliveries/dlv_1", "t", 404, `{"message":"no"}`, "doesn't match"},
		// An event's schema (another branch serves it) is application/schema+json.
		{"event schema", "GET", "/v1/events/request.created/schema", "t", 200, `{"type":"object"}`, ""},
		{"event schema not an object", "GET", "/v1/events/request.created/schema", "t", 200, `[]`, "doesn't match"},
		{"unknown event", "GET", "/v1/events/nope.nope/schema", "t", 404, `{"error":"no such event"}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{TB: t}
			h := Handler(rec, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				ct := "application/json"
				if strings.HasSuffix(tc.target, "/schema") && tc.status == 200 {
					ct = "application/schema+json"
				}
				w.Header().Set("Content-Type", ct)
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			req := httptest.NewRequest(tc.method, tc.target, nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			h.ServeHTTP(httptest.NewRecorder(), req)
			got := strings.Join(rec.errs, "\n")
			switch {
			case tc.want == "" && got != "":
				t.Errorf("got failures:\n%s\nwant none", got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Errorf("got failures:\n%s\nwant one with %q", got, tc.want)
			}
		})
	}
}
