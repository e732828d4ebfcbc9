package listen_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/listen"
	"github.com/dzdesk/dzhook/signer"
)

var (
	secret  = []byte("listen-secret-0123456789")
	arrival = time.Date(2024, 1, 15, 14, 30, 0, 123e6, time.UTC)
	body    = []byte(`{"id":"whk_abc123","event":"request.created","timestamp":"2024-01-15T14:30:00Z","data":{"title":"Café ☕"}}`)
)

// newHandler returns a handler printing into the returned buffer, with a
// fixed clock.
func newHandler(t *testing.T, cfg listen.Config) (*listen.Handler, *bytes.Buffer) {
	t.Helper()
	out := &bytes.Buffer{}
	if cfg.Secrets == nil {
		cfg.Secrets = [][]byte{secret}
	}
	if cfg.Out == nil {
		cfg.Out = out
	}
	if cfg.NowFunc == nil {
		cfg.NowFunc = func() time.Time { return arrival }
	}
	h, err := listen.NewHandler(cfg)
	if err != nil {
		t.Fatalf("NewHandler: %v", err)
	}
	return h, out
}

// signed returns a POST of b signed with secret, as dzhook sends it.
func signed(b []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/webhook", bytes.NewReader(b))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set(signer.HeaderSignature, signer.Sign(secret, b))
	r.Header.Set(signer.HeaderEvent, "request.created")
	r.Header.Set(signer.HeaderDelivery, "dlv_1")
	r.Header.Set(signer.HeaderAttempt, "1")
	return r
}

func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

func TestSignedPOST(t *testing.T) {
	h, out := newHandler(t, listen.Config{})
	rec := serve(h, signed(body))
	if rec.Code != http.StatusOK || rec.Body.String() != "ok\n" {
		t.Errorf("answer = %d %q, want 200 %q", rec.Code, rec.Body, "ok\n")
	}
	want := "2024-01-15T14:30:00.123Z request.created whk_abc123 attempt=1 verified -> 200\n"
	if got := out.String(); got != want {
		t.Errorf("printed %q, want %q", got, want)
	}
}

func TestRejected(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 201)
	tests := []struct {
		name       string
		req        func() *http.Request
		wantStatus int
		wantLine   string
	}{
		{"tampered body", func() *http.Request {
			r := signed(bytes.Replace(body, []byte("☕"), []byte("☔"), 1))
			r.Header.Set(signer.HeaderSignature, signer.Sign(secret, body))
			return r
		}, http.StatusUnauthorized, "2024-01-15T14:30:00.123Z request.created whk_abc123 attempt=1 INVALID (invalid signature) -> 401\n"},
		{"wrong secret", func() *http.Request {
			r := signed(body)
			r.Header.Set(signer.HeaderSignature, signer.Sign([]byte("not-the-secret"), body))
			return r
		}, http.StatusUnauthorized, "2024-01-15T14:30:00.123Z request.created whk_abc123 attempt=1 INVALID (invalid signature) -> 401\n"},
		{"missing signature", func() *http.Request {
			r := signed(body)
			r.Header.Del(signer.HeaderSignature)
			return r
		}, http.StatusUnauthorized, "2024-01-15T14:30:00.123Z request.created whk_abc123 attempt=1 INVALID (missing signature) -> 401\n"},
		{"malformed signature", func() *http.Request {
			r := signed(body)
			r.Header.Set(signer.HeaderSignature, "sha1=abc")
			return r
		}, http.StatusUnauthorized, "2024-01-15T14:30:00.123Z request.created whk_abc123 attempt=1 INVALID (malformed signature: want sha256=<64 hex digits>) -> 401\n"},
		{"GET", func() *http.Request {
			return httptest.NewRequest(http.MethodGet, "/webhook", nil)
		}, http.StatusMethodNotAllowed, "2024-01-15T14:30:00.123Z - - attempt=- INVALID (GET not allowed) -> 405\n"},
		{"body too large", func() *http.Request {
			return signed(big)
		}, http.StatusRequestEntityTooLarge, "2024-01-15T14:30:00.123Z request.created - attempt=1 INVALID (body over 200 bytes) -> 413\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Status and FailRate apply to verified requests only.
			h, out := newHandler(t, listen.Config{MaxBodyBytes: 200, Status: http.StatusTeapot, FailRate: 1})
			rec := serve(h, tt.req())
			if rec.Code != tt.wantStatus {
				t.Errorf("status = %d, want %d", rec.Code, tt.wantStatus)
			}
			if got := out.String(); got != tt.wantLine {
				t.Errorf("printed %q, want %q", got, tt.wantLine)
			}
		})
	}
}

func TestMethodNotAllowedSaysAllow(t *testing.T) {
	h, _ := newHandler(t, listen.Config{})
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodHead} {
		rec := serve(h, httptest.NewRequest(method, "/", nil))
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != http.MethodPost {
			t.Errorf("%s: %d Allow=%q, want 405 Allow=POST", method, rec.Code, rec.Header().Get("Allow"))
		}
	}
}

func TestLineFields(t *testing.T) {
	tests := []struct {
		name     string
		body     []byte
		headers  map[string]string
		wantLine string
	}{
		{"event from the body when the header is absent", body,
			map[string]string{signer.HeaderEvent: ""},
			"2024-01-15T14:30:00.123Z request.created whk_abc123 attempt=1 verified -> 200\n"},
		{"header wins over the body", body,
			map[string]string{signer.HeaderEvent: "request.updated", signer.HeaderAttempt: "3"},
			"2024-01-15T14:30:00.123Z request.updated whk_abc123 attempt=3 verified -> 200\n"},
		{"not JSON", []byte("hello"),
			map[string]string{signer.HeaderEvent: "", signer.HeaderAttempt: ""},
			"2024-01-15T14:30:00.123Z - - attempt=- verified -> 200\n"},
		{"values that could fake a line are quoted", []byte(`{"id":"whk_1\n2024-01-01T00:00:00.000Z x y attempt=1 verified","event":"a b"}`),
			map[string]string{signer.HeaderEvent: "", signer.HeaderAttempt: "1\x1b[31m"},
			"2024-01-15T14:30:00.123Z \"a b\" \"whk_1\\n2024-01-01T00:00:00.000Z x y attempt=1 verified\" attempt=\"1\\x1b[31m\" verified -> 200\n"},
		{"long values are cut", []byte(`{"id":"` + strings.Repeat("i", 100) + `"}`),
			map[string]string{signer.HeaderEvent: "e"},
			"2024-01-15T14:30:00.123Z e " + strings.Repeat("i", 80) + "… attempt=1 verified -> 200\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, out := newHandler(t, listen.Config{})
			r := signed(tt.body)
			for k, v := range tt.headers {
				r.Header.Set(k, v)
			}
			if rec := serve(h, r); rec.Code != http.StatusOK {
				t.Errorf("status = %d, want 200", rec.Code)
			}
			if got := out.String(); got != tt.wantLine {
				t.Errorf("printed %q,\nwant    %q", got, tt.wantLine)
			}
		})
	}
}

func TestVerbose(t *testing.T) {
	h, out := newHandler(t, listen.Config{Verbose: true})
	serve(h, signed([]byte(`{"id":"whk_1","event":"request.created","data":{"title":"Café ☕"}}`)))
	want := `2024-01-15T14:30:00.123Z request.created whk_1 attempt=1 verified -> 200
    {
      "id": "whk_1",
      "event": "request.created",
      "data": {
        "title": "Café ☕"
      }
    }
`
	if got := out.String(); got != want {
		t.Errorf("printed\n%s\nwant\n%s", got, want)
	}

	out.Reset()
	serve(h, signed([]byte("not json\x1b")))
	want = "2024-01-15T14:30:00.123Z request.created - attempt=1 verified -> 200\n    (not JSON) \"not json\\x1b\"\n"
	if got := out.String(); got != want {
		t.Errorf("printed %q, want %q", got, want)
	}
}

func TestAnswers(t *testing.T) {
	tests := []struct {
		name       string
		cfg        listen.Config
		wantStatus int
	}{
		{"normal", listen.Config{}, http.StatusOK},
		{"status 500", listen.Config{Status: http.StatusInternalServerError}, http.StatusInternalServerError},
		{"status 410", listen.Config{Status: http.StatusGone}, http.StatusGone},
		{"status 202", listen.Config{Status: http.StatusAccepted}, http.StatusAccepted},
		{"fail rate 1, real randomness", listen.Config{FailRate: 1}, http.StatusInternalServerError},
		{"fail rate 0", listen.Config{FailRate: 0, RandFunc: func() float64 { return 0 }}, http.StatusOK},
		{"fail rate 0.5, draw 0.4", listen.Config{FailRate: 0.5, RandFunc: func() float64 { return 0.4 }}, http.StatusInternalServerError},
		{"fail rate 0.5, draw 0.5", listen.Config{FailRate: 0.5, RandFunc: func() float64 { return 0.5 }}, http.StatusOK},
		{"status wins over fail rate", listen.Config{Status: http.StatusTooManyRequests, FailRate: 1}, http.StatusTooManyRequests},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, out := newHandler(t, tt.cfg)
			// Several requests, so "fail rate 1" is not one lucky draw.
			for range 20 {
				if rec := serve(h, signed(body)); rec.Code != tt.wantStatus {
					t.Fatalf("status = %d, want %d", rec.Code, tt.wantStatus)
				}
			}
			wantSuffix := " verified -> " + strconv.Itoa(tt.wantStatus) + "\n"
			if line, _, _ := strings.Cut(out.String(), "\n"); !strings.HasSuffix(line+"\n", wantSuffix) {
				t.Errorf("printed %q, want a line ending %q", line, wantSuffix)
			}
		})
	}
}

func TestDelay(t *testing.T) {
	const delay = 80 * time.Millisecond
	h, out := newHandler(t, listen.Config{Delay: delay})
	start := time.Now()
	rec := serve(h, signed(body))
	if elapsed := time.Since(start); elapsed < delay {
		t.Errorf("answered after %s, want at least %s", elapsed, delay)
	}
	if rec.Code != http.StatusOK || !strings.Contains(out.String(), "verified -> 200") {
		t.Errorf("answer = %d, printed %q; want 200 and a verified line", rec.Code, out)
	}

	// A rejected request is answered at once: only verified ones wait.
	h, _ = newHandler(t, listen.Config{Delay: time.Hour})
	r := signed(body)
	r.Header.Del(signer.HeaderSignature)
	done := make(chan int, 1)
	go func() { done <- serve(h, r).Code }()
	select {
	case code := <-done:
		if code != http.StatusUnauthorized {
			t.Errorf("status = %d, want 401", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a rejected request waited for the delay")
	}
}

// lineWriter passes each Write to a channel.
type lineWriter chan string

func (w lineWriter) Write(p []byte) (int, error) {
	w <- string(p)
	return len(p), nil
}

func TestDelayEndsWhenClientGoes(t *testing.T) {
	lines := make(lineWriter, 1)
	h, _ := newHandler(t, listen.Config{Delay: time.Hour, Out: lines})
	srv := httptest.NewServer(h)
	defer srv.Close() // blocks until every handler has returned

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(signer.HeaderSignature, signer.Sign(secret, body))
	if resp, err := srv.Client().Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("got an answer (%d) before the hour-long delay", resp.StatusCode)
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request: %v, want a deadline error", err)
	}

	// The handler prints its line as it returns, so the line proves it
	// stopped waiting.
	select {
	case line := <-lines:
		if !strings.Contains(line, " verified -> client gone after ") {
			t.Errorf("printed %q, want a verified line ending in client gone", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler still waits after the client went away")
	}
}

func TestStandardWebhooksHeaders(t *testing.T) {
	key, err := signer.StandardKey("whsec_c3RhbmRhcmQta2V5LTAxMjM0NTY3ODk=")
	if err != nil {
		t.Fatal(err)
	}
	withStandard := func(ts time.Time) *http.Request {
		r := signed(body)
		r.Header.Set(signer.HeaderWebhookID, "msg_1")
		r.Header.Set(signer.HeaderWebhookTimestamp, strconv.FormatInt(ts.Unix(), 10))
		r.Header.Set(signer.HeaderWebhookSignature, signer.SignStandard(key, "msg_1", ts, body))
		return r
	}
	tests := []struct {
		name        string
		cfg         listen.Config
		req         *http.Request
		wantStatus  int
		wantVerdict string
	}{
		{"valid", listen.Config{StandardKeys: [][]byte{key}}, withStandard(arrival), http.StatusOK, "verified"},
		{"absent", listen.Config{StandardKeys: [][]byte{key}}, signed(body), http.StatusOK, "verified"},
		{"stale", listen.Config{StandardKeys: [][]byte{key}}, withStandard(arrival.Add(-10 * time.Minute)), http.StatusUnauthorized, "INVALID (timestamp too old: 10m0s behind the receiver's clock)"},
		{"no key: ignored", listen.Config{}, withStandard(arrival.Add(-10 * time.Minute)), http.StatusOK, "verified"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, out := newHandler(t, tt.cfg)
			if rec := serve(h, tt.req); rec.Code != tt.wantStatus {
				t.Errorf("status = %d, want %d", rec.Code, tt.wantStatus)
			}
			if want := " attempt=1 " + tt.wantVerdict + " -> "; !strings.Contains(out.String(), want) {
				t.Errorf("printed %q, want it to contain %q", out, want)
			}
		})
	}
}

func TestConcurrentRequestsPrintWholeLines(t *testing.T) {
	// A plain bytes.Buffer: unsynchronized writes would trip the race
	// detector and could interleave lines.
	var out bytes.Buffer
	h, _ := newHandler(t, listen.Config{Out: &out, Verbose: true, NowFunc: time.Now})
	srv := httptest.NewServer(h)
	defer srv.Close()

	const n = 32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			b := []byte(`{"id":"whk_` + strconv.Itoa(i) + `","event":"request.created"}`)
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL, bytes.NewReader(b))
			if err != nil {
				t.Error(err)
				return
			}
			req.Header.Set(signer.HeaderSignature, signer.Sign(secret, b))
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("status = %d, want 200", resp.StatusCode)
			}
		})
	}
	wg.Wait()
	srv.Close()

	// Each request: its line, then its 4-line body.
	entry := regexp.MustCompile(`^\S+Z request\.created whk_(\d+) attempt=- verified -> 200\n    \{\n      "id": "whk_(\d+)",\n      "event": "request.created"\n    \}\n`)
	rest := out.String()
	seen := map[string]bool{}
	for rest != "" {
		m := entry.FindStringSubmatch(rest)
		if m == nil || m[1] != m[2] {
			t.Fatalf("output is not whole entries at %q", rest[:min(len(rest), 200)])
		}
		seen[m[1]] = true
		rest = rest[len(m[0]):]
	}
	if len(seen) != n {
		t.Errorf("printed %d distinct entries, want %d", len(seen), n)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     listen.Config
		wantErr []string
	}{
		{"valid", listen.Config{Secrets: [][]byte{secret}, Status: 503, FailRate: 0.3, Delay: time.Second}, nil},
		{"no secret", listen.Config{}, []string{"a secret is required"}},
		{"empty secret", listen.Config{Secrets: [][]byte{{}}}, []string{"a secret is required"}},
		{"everything wrong at once", listen.Config{Status: 99, FailRate: 1.5, Delay: -time.Second, MaxBodyBytes: -1},
			[]string{"a secret is required", "status 99", "fail rate 1.5", "delay -1s", "max body bytes -1"}},
		{"status 600", listen.Config{Secrets: [][]byte{secret}, Status: 600}, []string{"status 600"}},
		{"status 101", listen.Config{Secrets: [][]byte{secret}, Status: 101}, []string{"status 101"}},
		{"fail rate NaN", listen.Config{Secrets: [][]byte{secret}, FailRate: math.NaN()}, []string{"fail rate NaN"}},
		{"fail rate negative", listen.Config{Secrets: [][]byte{secret}, FailRate: -0.1}, []string{"fail rate -0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := listen.NewHandler(tt.cfg)
			if (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("NewHandler() error = %v, want errors %q", err, tt.wantErr)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("NewHandler() error = %q, want it to mention %q", err, want)
				}
			}
		})
	}
}
