package transform

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/dzdesk/dzhook/internal/mapping"
)

// receiver plays the three destinations over real HTTP: a POST of JSON to
// /slack, /teams or /discord is checked against that destination's
// documented required fields and limits, and answered as the destination
// does (Slack 200 "ok", Teams 202, Discord 204), or 400 with the
// problems.
type receiver struct {
	mu       sync.Mutex
	accepted map[string]int // per destination
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	dest := strings.TrimPrefix(r.URL.Path, "/")
	var validate func([]byte) error
	for _, p := range presetFormats {
		if p.format == dest {
			validate = p.validate
		}
	}
	switch {
	case validate == nil:
		http.NotFound(w, r)
		return
	case r.Method != http.MethodPost:
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	case r.Header.Get("Content-Type") != "application/json":
		http.Error(w, "want application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := validate(body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	rc.accepted[dest]++
	rc.mu.Unlock()
	switch dest {
	case FormatSlack:
		_, _ = io.WriteString(w, "ok")
	case FormatTeams:
		w.WriteHeader(http.StatusAccepted)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func post(t *testing.T, url string, body []byte) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(answer)
}

// Each preset's body for every event, POSTed to a receiver that checks it
// against its destination's documented required fields, is accepted.
func TestPresetReceiverAcceptsEveryEvent(t *testing.T) {
	rc := &receiver{accepted: map[string]int{}}
	srv := httptest.NewServer(rc)
	defer srv.Close()

	raws := [][]byte{
		// Unusual data as well as the samples.
		envelope("request.created", `{"id":"req_<&>","title":"`+strings.Repeat("long ", 2000)+`"}`),
		envelope("sla.breach", `{"requestId":{"not":"a string"},"breachedAt":null}`),
		envelope("invoice.payment_failed", `{"amount":12.5,"currency":"EUR","customer":{"name":"@everyone"}}`),
	}
	for _, name := range sampleEvents() {
		raws = append(raws, mapping.Sample(name, "whk_sample", sampleTime))
	}
	for _, p := range presetFormats {
		for _, raw := range raws {
			body := applyPreset(t, p.format, raw)
			if code, answer := post(t, srv.URL+"/"+p.format, body); code/100 != 2 {
				t.Errorf("%s %.80s: the receiver answered %d %s", p.format, raw, code, answer)
			}
		}
	}
	for _, p := range presetFormats {
		if got, want := rc.accepted[p.format], len(raws); got != want {
			t.Errorf("%s: the receiver accepted %d bodies, want %d", p.format, got, want)
		}
	}
}

// The receiver refuses what its destination would: it is not a receiver
// that takes anything.
func TestPresetReceiverRefuses(t *testing.T) {
	rc := &receiver{accepted: map[string]int{}}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	tests := []struct {
		dest, body, want string
	}{
		{FormatSlack, `{"channel":"#support"}`, "needs a non-empty text"},
		{FormatSlack, `{"text":"a","blocks":[{"type":"section","text":{"type":"mrkdwn","text":"` + strings.Repeat("a", 3001) + `"}}]}`, "3001 characters"},
		{FormatTeams, `{"text":"hello"}`, `type: is null or missing`},
		{FormatDiscord, `{"content":"` + strings.Repeat("a", 2001) + `"}`, "content: is 2001"},
		{FormatDiscord, `{}`, "needs a non-empty content"},
	}
	for _, tc := range tests {
		code, answer := post(t, srv.URL+"/"+tc.dest, []byte(tc.body))
		if code != http.StatusBadRequest || !strings.Contains(answer, tc.want) {
			t.Errorf("%s %.60s: got %d %q, want 400 naming %q", tc.dest, tc.body, code, answer, tc.want)
		}
	}
	if len(rc.accepted) != 0 {
		t.Errorf("the receiver accepted %v, want nothing", rc.accepted)
	}
}
