package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// TestCLIAgainstAnOddServer: what the CLI sends and shows when a value is
// empty, the server redirects, or its text holds terminal escapes.
func TestCLIAgainstAnOddServer(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.RequestURI())
		mu.Unlock()
		switch {
		case strings.HasPrefix(r.URL.Path, "/moved"):
			http.Redirect(w, r, "https://elsewhere.example.com"+strings.TrimPrefix(r.URL.Path, "/moved"), http.StatusMovedPermanently)
		case r.URL.Path == "/v1/subscriptions/crm/pause":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte(`{"error":"boom \u001b]52;c;ZXZpbA==\u0007\u001b[2J"}`))
		case r.URL.Path == "/v1/deliveries/dlv_1":
			w.Write([]byte(`{"delivery":{"id":"dlv_1","state":"delivered"},"payload":{"title":"a` + "\u009b" + `31m"},"attempts":[]}`))
		default:
			w.Write([]byte(`{}`))
		}
	}))
	t.Cleanup(srv.Close)
	run := func(base, token string, args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		env := []string{"DZHOOK_ADMIN_URL=" + base, "DZHOOK_CONFIG=/nonexistent.yaml", "DZHOOK_ADMIN_TOKEN=" + token}
		code := runEnv(context.Background(), append([]string{"dzhook"}, args...), &out, &errb, env)
		return code, out.String(), errb.String()
	}
	requests := func() []string {
		mu.Lock()
		defer mu.Unlock()
		r := seen
		seen = nil
		return r
	}

	// An empty --since was dropped: every failed delivery retried.
	if code, _, errOut := run(srv.URL, cliToken, "retry", "--subscription", "crm", "--failed", "--since", ""); code != exitUsage || !strings.Contains(errOut, "--since is empty") {
		t.Errorf("retry --since '': exit %d %q, want 2 naming --since", code, errOut)
	}
	if code, _, errOut := run(srv.URL, cliToken, "deliveries", "--status", " "); code != exitUsage || !strings.Contains(errOut, "--status is empty") {
		t.Errorf("deliveries --status ' ': exit %d %q", code, errOut)
	}
	if code, _, errOut := run(srv.URL, cliToken, "replay", "crm", "--since", "1h", "--events", ""); code != exitUsage || !strings.Contains(errOut, "--events is empty") {
		t.Errorf("replay --events '': exit %d %q", code, errOut)
	}
	// Commas alone (unset variables in "$A,$B") named no type: every type
	// was replayed.
	if code, _, errOut := run(srv.URL, cliToken, "replay", "crm", "--since", "1h", "--events", ", "); code != exitUsage || !strings.Contains(errOut, "names no event type") {
		t.Errorf("replay --events ', ': exit %d %q", code, errOut)
	}
	if r := requests(); len(r) != 0 {
		t.Errorf("requests sent for refused command lines: %v", r)
	}

	// A redirect is not followed (a DELETE became a GET, read as done).
	code, out, errOut := run(srv.URL+"/moved", cliToken, "subscriptions", "delete", "crm")
	if code != exitFailure || strings.Contains(out, "deleted") || !strings.Contains(errOut, "redirect") {
		t.Errorf("delete answered 301: exit %d %q %q", code, out, errOut)
	}
	if r := requests(); len(r) != 1 || !strings.HasPrefix(r[0], "DELETE ") {
		t.Errorf("requests %v, want the one DELETE", r)
	}

	// The server's text is shown, not obeyed.
	if _, _, errOut := run(srv.URL, cliToken, "pause", "crm"); strings.ContainsAny(errOut, "\x1b\x07") {
		t.Errorf("an error with terminal escapes printed raw: %q", errOut)
	}
	if _, out, _ := run(srv.URL, cliToken, "deliveries", "show", "dlv_1"); strings.Contains(out, "\u009b") || !strings.Contains(out, `\u009b`) {
		t.Errorf("a payload's C1 control printed raw: %q", out)
	}

	// A token ending in a line break is named, not "cannot reach".
	if code, _, errOut := run(srv.URL, cliToken+"\n", "pause", "crm"); code != exitUsage || !strings.Contains(errOut, "DZHOOK_ADMIN_TOKEN") {
		t.Errorf("a token with a newline: exit %d %q", code, errOut)
	}
	if code, _, errOut := run(srv.URL, cliToken, "health", "--timeout", "-1s"); code != exitUsage || !strings.Contains(errOut, "--timeout") {
		t.Errorf("health --timeout -1s: exit %d %q", code, errOut)
	}
}
