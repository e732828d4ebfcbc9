// Package enginetest starts a whole dzhook in-process for the tests of the
// packages around the engine (the CLI, the dashboard): the configuration
// from YAML, the engine running until the test ends.
package enginetest

import (
	"context"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/engine"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// Start parses yaml, starts an engine and stops it when the test ends.
// Options's Logger and Version default to the test's log and "test".
func Start(t *testing.T, yaml string, opts engine.Options) *engine.Engine {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), nil)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if opts.Logger == nil {
		opts.Logger = testutil.Logger(t)
	}
	if opts.Version == "" {
		opts.Version = "test"
	}
	ctx, cancel := context.WithCancel(context.Background())
	e, err := engine.New(ctx, cfg, opts)
	if err != nil {
		cancel()
		t.Fatalf("engine: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("engine Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("engine did not stop within 30s")
		}
	})
	return e
}
