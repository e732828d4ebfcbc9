package fanout

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// A loop failing at every try is said once (then once a minute, with the
// count), and its recovery once.
func TestFailuresSaidOnce(t *testing.T) {
	var logs testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	var f failures
	for range 100 {
		f.failed(log, "claiming due deliveries failed; retrying", errors.New("connection refused"))
	}
	f.ok(log, "claiming works again")
	f.ok(log, "claiming works again")
	out := logs.String()
	if n := strings.Count(out, "level=WARN"); n != 1 {
		t.Errorf("%d WARN lines for 100 failures, want 1:\n%s", n, out)
	}
	if n := strings.Count(out, "works again"); n != 1 {
		t.Errorf("%d recovery lines, want 1", n)
	}
}
