package fanout

import (
	"context"
	"testing"
	"time"
)

func TestGateWaitsOnlyForEarlierOperations(t *testing.T) {
	var g gate
	first := g.enter()
	until := g.mark()
	waited := make(chan error, 1)
	go func() { waited <- g.waitFor(context.Background(), until) }()
	// An operation entering after the wait began does not hold it up.
	later := g.enter()
	select {
	case err := <-waited:
		t.Fatalf("wait returned (%v) while an earlier operation was in progress", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.leave(first)
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("wait = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("wait did not return after the earlier operation left, with a later one still in progress")
	}
	g.leave(later)
}

func TestGateWaitEndsWithItsContext(t *testing.T) {
	var g gate
	g.enter()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := g.wait(ctx); err != context.DeadlineExceeded {
		t.Fatalf("wait with an operation stuck = %v, want context.DeadlineExceeded", err)
	}
	var idle gate
	if err := idle.wait(context.Background()); err != nil {
		t.Fatalf("wait with nothing in progress = %v", err)
	}
}
