package admin

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/catalog"
)

// TestResponseBodyRendering: the journal keeps a response body as the
// bytes received; the API shows it as text, with invalid UTF-8 replaced
// and the exact bytes in response_body_base64 beside it. A payload that
// is not JSON is shown as a string.
func TestResponseBodyRendering(t *testing.T) {
	cat, err := catalog.New()
	if err != nil {
		t.Fatal(err)
	}
	srv := newChecked(t, Config{
		Token: "t", Deliverer: checkedDeliverer{t: t, cat: cat}, History: checkedHistory{t: t, cat: cat},
		Catalog: cat, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	get := func(id string) api.DeliveryDetail {
		t.Helper()
		req := httptest.NewRequest(http.MethodGet, "/v1/deliveries/"+id, nil)
		req.Header.Set("Authorization", "Bearer t")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", id, rec.Code, rec.Body)
		}
		var out api.DeliveryDetail
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("GET %s: %v in %s", id, err, rec.Body)
		}
		return out
	}

	out := get("dlv_1")
	attempts := out.Attempts
	if len(attempts) != 2 {
		t.Fatalf("attempts = %+v, want the fake's two", attempts)
	}
	// checkedHistory's first attempt answered "\xff\xfe ok": one
	// replacement character for the run of invalid bytes.
	if got, want := attempts[0].ResponseBody, "\uFFFD ok"; got != want {
		t.Errorf("response_body = %q, want %q", got, want)
	}
	if b := attempts[0].ResponseBodyBase64; b != base64.StdEncoding.EncodeToString([]byte("\xff\xfe ok")) {
		t.Errorf("response_body_base64 = %q, want the exact bytes", b)
	} else if raw, _ := base64.StdEncoding.DecodeString(b); string(raw) != "\xff\xfe ok" {
		t.Errorf("response_body_base64 decodes to %q", raw)
	}
	if got := attempts[1]; got.ResponseBody != "plain" || got.ResponseBodyBase64 != "" {
		t.Errorf("valid UTF-8 body: %q with base64 %q, want it as is and no base64", got.ResponseBody, got.ResponseBodyBase64)
	}
	if p := out.Payload; len(p) == 0 || p[0] != '{' {
		t.Errorf("payload = %s, want the envelope as JSON", p)
	}

	// A payload that is not JSON is a JSON string, not broken output.
	var payload string
	if err := json.Unmarshal(get("dlv_1_raw").Payload, &payload); err != nil || payload != "not json \uFFFD" {
		t.Errorf("payload = %q (%v), want the text with invalid UTF-8 replaced", payload, err)
	}
}

// exactBody is a body that JSON.parse and an HTML-escaping encoder would
// both change: an integer above 2^53, a trailing zero, integer-like keys
// after another, and "<", ">" and "&".
const exactBody = `{"2":"<b>Tom & Jerry</b>","b":9007199254740993,"1":10.50}`

// TestPayloadAsSent: GET /v1/deliveries/{id} gives the payload and the
// body sent as the bytes the receiver got (compact JSON stays as it is),
// for the dashboard to show them re-indented only. The encoder escaped
// "<" as \u003c (found by a review).
func TestPayloadAsSent(t *testing.T) {
	srv := newChecked(t, Config{Token: "t", Deliverer: fullDeliverer{}, History: fullHistory{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	req := httptest.NewRequest(http.MethodGet, "/v1/deliveries/dlv_1_exact", nil)
	req.Header.Set("Authorization", "Bearer t")
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /v1/deliveries/dlv_1_exact: %d %s", rec.Code, rec.Body)
	}
	for _, member := range []string{`"payload":` + exactBody, `"sent":` + exactBody} {
		if !strings.Contains(rec.Body.String(), member) {
			t.Errorf("the answer has no %s:\n%s", member, rec.Body)
		}
	}
}
