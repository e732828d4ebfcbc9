package procs

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGovernorDecides(t *testing.T) {
	cfg := Config{MaxFunc: func() int { return 2 }, DownAfter: 4}.withDefaults()
	type step struct {
		load   float64
		n      int
		change bool
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"quiet goes to one after DownAfter samples", []step{
			{0.1, 0, false}, {0.1, 0, false}, {0.1, 0, false}, {0.1, 1, true},
			{0.1, 0, false}, // stays
		}},
		{"a busy sample in between starts the count again", []step{
			{0.1, 0, false}, {0.1, 0, false}, {0.1, 0, false}, {0.35, 0, false},
			{0.1, 0, false}, {0.1, 0, false}, {0.1, 0, false}, {0.1, 1, true},
		}},
		{"on one, busy goes back to the default at once", []step{
			{0, 0, false}, {0, 0, false}, {0, 0, false}, {0, 1, true},
			{0.5, 0, false}, // under Up: stays on one
			{0.61, 0, true}, // the default
			{0.1, 0, false}, // and the count starts from nothing
			{0.1, 0, false}, {0.1, 0, false}, {0.1, 1, true},
		}},
		{"a catch-up stays on the default", []step{
			{1.4, 0, false}, {1.9, 0, false}, {1.2, 0, false}, {1.5, 0, false}, {1.1, 0, false},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := governor{cfg: cfg}
			for i, s := range c.steps {
				n, change := g.next(s.load)
				if n != s.n || change != s.change {
					t.Fatalf("sample %d (load %.2f): got (%d, %v), want (%d, %v)", i, s.load, n, change, s.n, s.change)
				}
			}
		})
	}
}

func TestGovernorLeavesOneProcessorAlone(t *testing.T) {
	g := governor{cfg: Config{MaxFunc: func() int { return 1 }}.withDefaults()}
	for i := 0; i < 10; i++ {
		if _, change := g.next(0); change {
			t.Fatalf("sample %d: a change on a machine of one processor", i)
		}
	}
}

// Run with a CPU clock the test drives: quiet, then busy, then
// cancelled while on one processor, which restores the default.
func TestRunSwitchesAndRestores(t *testing.T) {
	var (
		mu   sync.Mutex
		sets []int
		cpu  atomic.Int64 // ns the fake process used
	)
	busy := atomic.Bool{}
	interval := 5 * time.Millisecond
	cfg := Config{
		Interval: interval,
		CPUFunc: func() time.Duration {
			// Each reading adds what the load would have used in an
			// interval: two cores when busy, nothing when quiet.
			if busy.Load() {
				return time.Duration(cpu.Add(int64(2 * interval)))
			}
			return time.Duration(cpu.Load())
		},
		SetFunc: func(n int) { mu.Lock(); sets = append(sets, n); mu.Unlock() },
		MaxFunc: func() int { return 2 },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	waitSets := func(want ...int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			got := append([]int(nil), sets...)
			mu.Unlock()
			if len(got) >= len(want) {
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("sets %v, want %v", got, want)
					}
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("sets %v after 5 s, want %v", got, want)
			}
			time.Sleep(interval)
		}
	}
	waitSets(1)
	busy.Store(true)
	waitSets(1, 0)
	busy.Store(false)
	waitSets(1, 0, 1)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	waitSets(1, 0, 1, 0) // cancelled on one processor: the default again
}

// The real setter: one processor, then the runtime's default again.
func TestSetProcs(t *testing.T) {
	def := runtime.GOMAXPROCS(0) // the environment's GOMAXPROCS, if set, is the default too
	setProcs(1)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("after setProcs(1): %d processors", got)
	}
	setProcs(0)
	if got := runtime.GOMAXPROCS(0); got != def {
		t.Fatalf("after setProcs(0): %d processors, want the default %d", got, def)
	}
}

func TestProcessCPUAdvances(t *testing.T) {
	before := processCPU()
	deadline := time.Now().Add(5 * time.Second)
	x := 0
	for processCPU() <= before {
		for i := 0; i < 1_000_000; i++ {
			x += i
		}
		if time.Now().After(deadline) {
			t.Fatalf("the process's CPU time did not move in 5 s of work (%d)", x)
		}
	}
}

func TestPinnedByTheEnvironment(t *testing.T) {
	t.Setenv("GOMAXPROCS", "2")
	if !Pinned() {
		t.Error("GOMAXPROCS=2 in the environment: not pinned")
	}
	t.Setenv("GOMAXPROCS", "")
	if Pinned() {
		t.Error("GOMAXPROCS empty: pinned")
	}
}
