package signer_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/signer"
)

func TestVerifierVerify(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	stdKey := mustStandardKey(t, "whsec_c3RhbmRhcmQta2V5LTAxMjM0NTY3ODk=")
	dz := func(body []byte) string { return signer.Sign(testSecret, body) }
	std := func(ts time.Time, body []byte) http.Header {
		return standardHeaders("msg_1", ts.Unix(), signer.SignStandard(stdKey, "msg_1", ts, body))
	}
	both := func(ts time.Time, body []byte) http.Header {
		h := std(ts, body)
		h.Set(signer.HeaderSignature, dz(body))
		return h
	}
	onlyDZ := func(body []byte) http.Header {
		h := http.Header{}
		h.Set(signer.HeaderSignature, dz(body))
		return h
	}
	fixed := func() time.Time { return now }

	tests := []struct {
		name string
		v    signer.Verifier
		h    http.Header
		want error
	}{
		{"nothing configured", signer.Verifier{}, both(now, testBody), signer.ErrNoSecret},
		{"dzdesk only", signer.Verifier{Secrets: [][]byte{testSecret}}, onlyDZ(testBody), nil},
		{"dzdesk only, missing signature", signer.Verifier{Secrets: [][]byte{testSecret}}, http.Header{}, signer.ErrMissingSignature},
		{"dzdesk only, tampered", signer.Verifier{Secrets: [][]byte{testSecret}}, onlyDZ([]byte("{}")), signer.ErrInvalidSignature},
		{"dzdesk only, standard headers ignored without keys", signer.Verifier{Secrets: [][]byte{testSecret}, NowFunc: fixed},
			func() http.Header { h := onlyDZ(testBody); h.Set(signer.HeaderWebhookSignature, "v1,bogus"); return h }(), nil},
		{"both configured, standard headers absent", signer.Verifier{Secrets: [][]byte{testSecret}, StandardKeys: [][]byte{stdKey}, NowFunc: fixed}, onlyDZ(testBody), nil},
		{"both configured, both valid", signer.Verifier{Secrets: [][]byte{testSecret}, StandardKeys: [][]byte{stdKey}, NowFunc: fixed}, both(now, testBody), nil},
		{"both configured, standard present but stale", signer.Verifier{Secrets: [][]byte{testSecret}, StandardKeys: [][]byte{stdKey}, NowFunc: fixed}, both(now.Add(-time.Hour), testBody), signer.ErrTimestampTooOld},
		{"both configured, partial standard headers", signer.Verifier{Secrets: [][]byte{testSecret}, StandardKeys: [][]byte{stdKey}, NowFunc: fixed},
			func() http.Header { h := both(now, testBody); h.Del(signer.HeaderWebhookID); return h }(), signer.ErrMissingHeader},
		{"both configured, dzdesk missing", signer.Verifier{Secrets: [][]byte{testSecret}, StandardKeys: [][]byte{stdKey}, NowFunc: fixed}, std(now, testBody), signer.ErrMissingSignature},
		{"standard required, absent", signer.Verifier{Secrets: [][]byte{testSecret}, StandardKeys: [][]byte{stdKey}, RequireStandard: true, NowFunc: fixed}, onlyDZ(testBody), signer.ErrMissingHeader},
		{"standard required, no keys", signer.Verifier{Secrets: [][]byte{testSecret}, RequireStandard: true, NowFunc: fixed}, both(now, testBody), signer.ErrNoSecret},
		{"standard only", signer.Verifier{StandardKeys: [][]byte{stdKey}, NowFunc: fixed}, std(now, testBody), nil},
		{"standard only, headers absent", signer.Verifier{StandardKeys: [][]byte{stdKey}, NowFunc: fixed}, onlyDZ(testBody), signer.ErrMissingHeader},
		{"custom tolerance, inside", signer.Verifier{StandardKeys: [][]byte{stdKey}, Tolerance: time.Hour, NowFunc: fixed}, std(now.Add(-59*time.Minute), testBody), nil},
		{"custom tolerance, outside", signer.Verifier{StandardKeys: [][]byte{stdKey}, Tolerance: time.Second, NowFunc: fixed}, std(now.Add(2*time.Second), testBody), signer.ErrTimestampTooNew},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.v.Verify(tt.h, testBody)
			if !errors.Is(got, tt.want) || (tt.want == nil) != (got == nil) {
				t.Errorf("Verify() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestVerifierDefaultClock(t *testing.T) {
	key := []byte("standard-key-0123456789")
	now := time.Now()
	v := signer.Verifier{StandardKeys: [][]byte{key}}
	h := standardHeaders("msg_1", now.Unix(), signer.SignStandard(key, "msg_1", now, testBody))
	if err := v.Verify(h, testBody); err != nil {
		t.Errorf("Verify() with the real clock = %v, want nil", err)
	}
}

func TestMiddleware(t *testing.T) {
	v := &signer.Verifier{Secrets: [][]byte{testSecret}, MaxBodyBytes: 1024}
	var gotBody []byte
	var called bool
	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		called = true
		var err error
		if gotBody, err = io.ReadAll(r.Body); err != nil {
			t.Errorf("next: read body: %v", err)
		}
		if r.ContentLength != int64(len(gotBody)) {
			t.Errorf("next: ContentLength = %d, want %d", r.ContentLength, len(gotBody))
		}
		io.WriteString(w, "handled")
	}))
	big := bytes.Repeat([]byte("x"), 1025)

	tests := []struct {
		name       string
		v          *signer.Verifier
		body       []byte
		sig        string
		wantStatus int
		wantBody   string
		wantCalled bool
	}{
		{"valid", v, testBody, signer.Sign(testSecret, testBody), http.StatusOK, "handled", true},
		{"missing signature", v, testBody, "", http.StatusUnauthorized, "missing signature\n", false},
		{"tampered", v, []byte("{}"), signer.Sign(testSecret, testBody), http.StatusUnauthorized, "invalid signature\n", false},
		{"malformed", v, testBody, "md5=abc", http.StatusUnauthorized, "malformed signature: want sha256=<64 hex digits>\n", false},
		{"too large", v, big, signer.Sign(testSecret, big), http.StatusRequestEntityTooLarge, "request body too large\n", false},
		{"limit is inclusive", v, big[:1024], signer.Sign(testSecret, big[:1024]), http.StatusOK, "handled", true},
		{"no secret", &signer.Verifier{}, testBody, signer.Sign(testSecret, testBody), http.StatusInternalServerError, "signature verification is not configured\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called, gotBody = false, nil
			h := h
			if tt.v != v {
				h = tt.v.Middleware(http.NotFoundHandler())
			}
			req := httptest.NewRequest(http.MethodPost, "/webhook", bytes.NewReader(tt.body))
			if tt.sig != "" {
				req.Header.Set(signer.HeaderSignature, tt.sig)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.wantStatus {
				t.Errorf("status = %d, want %d", rec.Code, tt.wantStatus)
			}
			if got := rec.Body.String(); got != tt.wantBody {
				t.Errorf("body = %q, want %q", got, tt.wantBody)
			}
			if called != tt.wantCalled {
				t.Errorf("next called = %v, want %v", called, tt.wantCalled)
			}
			if tt.wantCalled && !bytes.Equal(gotBody, tt.body) {
				t.Errorf("next read %q, want the verified body %q", gotBody, tt.body)
			}
		})
	}
}

func TestMiddlewareOverHTTP(t *testing.T) {
	v := &signer.Verifier{Secrets: [][]byte{testSecret}}
	srv := httptest.NewServer(v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		io.WriteString(w, strconv.Itoa(len(body)))
	})))
	defer srv.Close()

	post := func(sig string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL, bytes.NewReader(testBody))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(signer.HeaderSignature, sig)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, body := post(signer.Sign(testSecret, testBody)); code != http.StatusOK || body != strconv.Itoa(len(testBody)) {
		t.Errorf("signed POST = %d %q, want 200 %q", code, body, strconv.Itoa(len(testBody)))
	}
	if code, body := post(signer.Sign([]byte("wrong"), testBody)); code != http.StatusUnauthorized || body != "invalid signature" {
		t.Errorf("wrongly signed POST = %d %q, want 401 %q", code, body, "invalid signature")
	}
}

// TestMiddlewareTakesTheLargestEvent: the largest event dzhook sends (an
// outbox row's data of mapping.MaxOutboxPayload, in the envelope) passes
// the Middleware's default bound: at 1 MiB it was answered 413, which
// dzhook records as a final failure.
func TestMiddlewareTakesTheLargestEvent(t *testing.T) {
	data := `{"blob":"` + strings.Repeat("a", mapping.MaxOutboxPayload-len(`{"blob":""}`)) + `"}`
	body := []byte(`{"id":"whk_4lpp67ijo3twdwxlcm3gdvjotw","event":"order.shipped","timestamp":"2024-01-15T14:30:00Z","data":` + data + `}`)
	secret := []byte("a-receiver-secret-0123456789")
	v := &signer.Verifier{Secrets: [][]byte{secret}}
	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
	req := httptest.NewRequest(http.MethodPost, "/webhook", bytes.NewReader(body))
	req.Header.Set(signer.HeaderSignature, signer.Sign(secret, body))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Errorf("a delivery of %d bytes (data at dzhook's outbox limit): %d %q", len(body), rec.Code, rec.Body.String())
	}
}
