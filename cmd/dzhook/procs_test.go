package main

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestProcsFollowLoad: one processor while calm, all of them as soon as
// the process keeps one busy, one again after a calm stretch, and all of
// them when it stops. A fake clock of CPU time stands for the load.
func TestProcsFollowLoad(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
	all := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(all)
	var busy atomic.Bool
	var used atomic.Int64
	start := time.Now()
	last := start
	cpu := func() time.Duration { // called from the loop's goroutine only
		now := time.Now()
		if busy.Load() {
			used.Add(int64(now.Sub(last))) // one core, all the time
		}
		last = now
		return time.Duration(used.Load())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		procsLoop(ctx, func(string) string { return "" }, testutil.Logger(t), cpu, 10*time.Millisecond)
	}()
	testutil.Eventually(t, 5*time.Second, "one processor while calm", func() bool { return runtime.GOMAXPROCS(0) == 1 })
	busy.Store(true)
	testutil.Eventually(t, 5*time.Second, "every processor while busy", func() bool { return runtime.GOMAXPROCS(0) == all })
	busy.Store(false)
	testutil.Eventually(t, 5*time.Second, "one processor after a calm stretch", func() bool { return runtime.GOMAXPROCS(0) == 1 })
	cancel()
	<-done
	if got := runtime.GOMAXPROCS(0); got != all {
		t.Fatalf("GOMAXPROCS %d after the loop stopped, want %d back", got, all)
	}
}

// TestProcsLeftAloneWithGOMAXPROCS: an operator's GOMAXPROCS wins.
func TestProcsLeftAloneWithGOMAXPROCS(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
	all := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(all)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		procsLoop(ctx, func(k string) string {
			if k == "GOMAXPROCS" {
				return "2"
			}
			return ""
		}, testutil.Logger(t), func() time.Duration { return 0 }, 10*time.Millisecond)
	}()
	// Calm all along: without the variable the loop would go to one
	// processor within its first period.
	for {
		if got := runtime.GOMAXPROCS(0); got != all {
			t.Fatalf("GOMAXPROCS changed to %d with the variable set", got)
		}
		select {
		case <-ctx.Done():
			<-done
			return
		case <-time.After(time.Millisecond):
		}
	}
}
