package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/schemas"
)

// TestEventsSchema: `dzhook events --schema [EVENT]` prints one event's
// JSON Schema or every one keyed by name, custom events' from --config,
// and fails naming the problem for an unknown event or a custom event
// without a schema.
func TestEventsSchema(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "dzhook.yaml")
	yaml := `source: {dsn: "postgres://dzhook@127.0.0.1/dzdesk"}
custom_events:
  - name: order.shipped
    schema: {type: object, required: [order]}
  - name: order.paid
subscriptions:
  - {id: crm, url: "https://crm.example.com/hook", events: ["*"], secret: events-test-secret-0123456789}
`
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := runCmd(t, "events", "--schema", "request.created")
	want, _ := schemas.Builtin("request.created")
	if code != exitOK || out != string(want) {
		t.Errorf("--schema request.created: exit %d, stderr %q, printed\n%s\nwant schemas/request.created.json", code, errOut, out)
	}

	code, out, errOut = runCmd(t, "events", "--schema")
	var all map[string]map[string]any
	if err := json.Unmarshal([]byte(out), &all); code != exitOK || err != nil {
		t.Fatalf("--schema: exit %d, %v, stderr %q", code, err, errOut)
	}
	for _, e := range catalog.Builtin() {
		if all[e.Name]["title"] != e.Name {
			t.Errorf("--schema: %s missing or wrong: %v", e.Name, all[e.Name]["title"])
		}
	}
	if len(all) != len(catalog.Builtin()) {
		t.Errorf("--schema printed %d schemas, want %d", len(all), len(catalog.Builtin()))
	}

	// Flags after the event, and a custom event's envelope with its data
	// schema.
	code, out, errOut = runCmd(t, "events", "--schema", "order.shipped", "--config", cfg)
	var doc struct {
		Properties struct {
			Event struct{ Const string }
			Data  struct{ Required []string }
		}
	}
	if err := json.Unmarshal([]byte(out), &doc); code != exitOK || err != nil || doc.Properties.Event.Const != "order.shipped" || len(doc.Properties.Data.Required) != 1 {
		t.Errorf("--schema order.shipped --config: exit %d, %v, stderr %q, printed %s", code, err, errOut, out)
	}
	code, out, _ = runCmd(t, "events", "--config", cfg, "--schema")
	if err := json.Unmarshal([]byte(out), &all); code != exitOK || err != nil || all["order.shipped"] == nil || all["order.paid"] != nil {
		t.Errorf("--config --schema: exit %d, %v; want order.shipped and not order.paid (no schema) in %v", code, err, len(all))
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"events", "--schema", "order.shipped"}, exitFailure, `no event "order.shipped" (dzhook events lists them; custom events come from the configuration: --config, DZHOOK_CONFIG or ./config.yaml)`},
		{[]string{"events", "--schema", "order.paid", "--config", cfg}, exitFailure, "order.paid is a custom event declared without a schema (custom_events[].schema)"},
		{[]string{"events", "--schema", "a", "b"}, exitUsage, `unexpected argument "b"`},
		{[]string{"events", "request.created"}, exitUsage, `unexpected argument "request.created" (an event's schema: --schema EVENT)`},
	} {
		code, out, errOut := runCmd(t, tc.args...)
		if code != tc.code || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("dzhook %v: exit %d, stdout %q, stderr %q; want exit %d and %q", tc.args, code, out, errOut, tc.code, tc.want)
		}
	}
}

// TestEventsFindsTheConfiguration: dzhook events reads the configuration
// the other commands read (--config, else DZHOOK_CONFIG, else
// ./config.yaml), so its custom events are listed without --config; with
// no file there it lists DZDESK's events, and a file named with --config
// must exist. It read a file only when given --config.
func TestEventsFindsTheConfiguration(t *testing.T) {
	dir := t.TempDir()
	yaml := "source: {dsn: \"postgres://dzhook@127.0.0.1/dzdesk\"}\ncustom_events:\n  - name: order.shipped\n"
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "other.yaml"), []byte(strings.Replace(yaml, "order.shipped", "order.paid", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	events := func(environ []string, args ...string) (int, string, string) {
		t.Helper()
		var out, errb bytes.Buffer
		code := runEnv(context.Background(), append([]string{"dzhook", "events"}, args...), &out, &errb, environ)
		return code, out.String(), errb.String()
	}
	t.Chdir(dir)
	for _, tc := range []struct {
		name    string
		environ []string
		args    []string
		want    string
	}{
		{"./config.yaml", nil, nil, "order.shipped"},
		{"DZHOOK_CONFIG", []string{"DZHOOK_CONFIG=other.yaml"}, nil, "order.paid"},
		{"--config over DZHOOK_CONFIG", []string{"DZHOOK_CONFIG=other.yaml"}, []string{"--config", "config.yaml"}, "order.shipped"},
	} {
		code, out, errOut := events(tc.environ, tc.args...)
		if code != exitOK || !strings.Contains(out, tc.want) || !strings.Contains(out, "request.created") {
			t.Errorf("%s: exit %d, stderr %q; want %s and DZDESK's events in:\n%s", tc.name, code, errOut, tc.want, out)
		}
	}

	// No file: DZDESK's events, whether the default or DZHOOK_CONFIG
	// points nowhere; a missing --config file is an error.
	t.Chdir(t.TempDir())
	for _, environ := range [][]string{nil, {"DZHOOK_CONFIG=/nonexistent.yaml"}} {
		code, out, errOut := events(environ)
		if code != exitOK || !strings.Contains(out, "request.created") || strings.Contains(out, "order.") {
			t.Errorf("no file, env %v: exit %d, stderr %q, printed:\n%s", environ, code, errOut, out)
		}
	}
	if code, _, errOut := events(nil, "--config", "missing.yaml"); code != exitFailure || !strings.Contains(errOut, "missing.yaml") {
		t.Errorf("--config missing.yaml: exit %d, stderr %q; want 1 naming the file", code, errOut)
	}
}
