package engine

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/api/apitest"
	"github.com/dzdesk/dzhook/internal/admin"
	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/testutil"
)

const apiToken = "tok-0123456789abcdef"

// apiServer serves e's admin API held to api/openapi.yaml (package
// apitest): every answer these tests read is checked against the
// description too.
func apiServer(t *testing.T, e *Engine, cfg *config.Config) string {
	t.Helper()
	cat, err := cfg.Catalog()
	if err != nil {
		t.Fatal(err)
	}
	set, err := cfg.Schemas()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(apitest.Handler(t, admin.New(admin.Config{Token: apiToken, Deliverer: e.dispatcher, History: e.journal,
		Catalog: cat, Sample: e.sample, Replays: e.dispatcher, Ready: e.Ready, Registry: e.metrics.Registry,
		Logger: testutil.Logger(t), Schemas: set, Manager: e.Manager()})))
	t.Cleanup(srv.Close)
	return srv.URL
}

// call sends method path with body (JSON unless nil) to the API at base
// and returns the status and the answer.
func call(t *testing.T, base, method, path string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, base+path, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, out
}

// TestEmptySecretThroughTheAPI: a secret given as "" on create or on
// rotation is refused with a message that speaks of the API ("leave it
// out"), not the configuration file's ${NAME} advice, which a JSON body
// has no use for (found by a review).
func TestEmptySecretThroughTheAPI(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := runtimeConfig(t, db)
	e := start(t, cfg)
	base := apiServer(t, e, cfg)
	const want = "secret: must not be empty; leave it out to have one generated"

	code, body := call(t, base, "POST", "/v1/subscriptions", map[string]any{"url": rc.URL, "events": []string{"request.created"}, "secret": ""})
	if code != http.StatusBadRequest || !strings.Contains(string(body), want) || strings.Contains(string(body), "${NAME}") {
		t.Errorf("create with secret \"\": %d %s, want 400 saying %q", code, body, want)
	}
	code, body = call(t, base, "POST", "/v1/subscriptions", map[string]any{"url": rc.URL, "events": []string{"request.created"}})
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	var created api.CreatedSubscription
	if err := json.Unmarshal(body, &created); err != nil {
		t.Fatal(err)
	}
	code, body = call(t, base, "POST", "/v1/subscriptions/"+created.ID+"/secret", map[string]any{"secret": ""})
	if code != http.StatusBadRequest || !strings.Contains(string(body), want) || strings.Contains(string(body), "${NAME}") {
		t.Errorf("rotation to secret \"\": %d %s, want 400 saying %q", code, body, want)
	}
}
