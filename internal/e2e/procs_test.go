package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/procs"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// processorLine is the governor's debug line (internal/procs) for each
// processor count it set.
var processorLine = regexp.MustCompile(`msg=processors gomaxprocs=(\d+)`)

// processorChanges is the processor counts the governor set, in order,
// from the binary's log.
func processorChanges(t *testing.T, p *process) []string {
	t.Helper()
	b, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range processorLine.FindAllSubmatch(b, -1) {
		got = append(got, string(m[1]))
	}
	return got
}

// TestProcessorsFollowTheLoad: the binary goes to one processor while
// idle, takes every core back for a catch-up, delivers all of it, and
// goes back to one once the backlog is gone.
func TestProcessorsFollowTheLoad(t *testing.T) {
	if procs.Pinned() {
		// The binary inherits it, and its governor is off, as documented;
		// the processors the binary would take without it are not known
		// here. Under CI that is a failure, not a pass.
		pgtest.Unavailable(t, "GOMAXPROCS is set in the environment: the binary's governor is off, as documented; unset it to test the governor")
	}
	cores := runtime.GOMAXPROCS(0) // the test's default: the binary's too
	if cores < 2 {
		t.Fatalf("this test needs 2 processors or more (GOMAXPROCS %d): on one there is nothing to govern", cores)
	}
	const rows = 40000
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := writeConfig(t, db, rc.URL, "")
	setup(t, cfg)
	p := startDzhook(t, cfg)
	all := fmt.Sprint(cores)
	changes := func() []string { return processorChanges(t, p) }
	var before int // changes before the load
	testutil.Eventually(t, 30*time.Second, "one processor while idle", func() bool {
		c := changes()
		before = len(c)
		return before > 0 && c[before-1] == "1"
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Big transactions: each comes from the stream at once, a backlog.
	if err := insertRequests(ctx, db, rows, rows/4, 0); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, fmt.Sprintf("all %d events at the receiver", rows), func() bool {
		return len(received(rc.Requests())) >= rows
	})
	testutil.Eventually(t, 30*time.Second, "every core for the catch-up, then one again", func() bool {
		c := changes()
		return len(c) >= before+2 && c[before] == all && c[len(c)-1] == "1"
	})
	if got := received(rc.Requests()); len(got) != rows {
		t.Errorf("%d requests at the receiver, want %d", len(got), rows)
	}
	if err := p.stop(t); err != nil {
		t.Errorf("dzhook exited with %v after SIGTERM, want 0", err)
	}
	t.Logf("processor counts set: %v", changes())
}
