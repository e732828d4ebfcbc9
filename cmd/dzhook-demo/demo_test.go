package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/pgtest"
)

// TestDemoOnce runs `make demo DEMO_ONCE=1`'s program: the whole story,
// until every expected event arrived verified at the listener.
func TestDemoOnce(t *testing.T) {
	if _, err := pgtest.FindBin(); err != nil {
		pgtest.Unavailable(t, "%v", err)
	}
	bin := filepath.Join(t.TempDir(), "dzhook")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/dzdesk/dzhook/cmd/dzhook").CombinedOutput(); err != nil {
		t.Fatalf("build dzhook: %v\n%s", err, out)
	}
	// The demo prints a lot: to the test's log (shown with -v or on failure).
	if err := run(testWriter{t}, bin, true, 90*time.Second); err != nil {
		t.Fatal(err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestDemoConfig: the demo's configuration is valid, and its
// subscription holds what arrives while it is paused, so the README's
// `dzhook pause demo; dzhook resume demo` ("deliveries wait, then go
// out oldest first") is true there: by default they are skipped. It has
// a secrets.key, so the API creates subscriptions there (the README's
// curl walkthrough, dzhook subscriptions create): without one, 409.
func TestDemoConfig(t *testing.T) {
	key := secretsKey()
	if key == secretsKey() {
		t.Errorf("secretsKey gave %q twice", key)
	}
	yaml := demoConfig("postgres://postgres@127.0.0.1:5432/dzdesk", 8080, "0123456789abcdef0123456789abcdef", 9000, "demo-0123456789ab", key)
	cfg, err := config.Parse([]byte(yaml), nil)
	if err != nil {
		t.Fatalf("the demo's configuration: %v\n%s", err, yaml)
	}
	if len(cfg.Subscriptions) != 1 || !cfg.Subscriptions[0].QueueWhileInactive {
		t.Errorf("subscriptions %+v, want one with queue_while_inactive", cfg.Subscriptions)
	}
	if got := cfg.Secrets.Key.Reveal(); got != key {
		t.Errorf("secrets.key is %d characters, want the key given", len(got))
	}
}
