package procs

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

func TestGovernorDecides(t *testing.T) {
	cfg := Config{MaxFunc: func() int { return 2 }, DownAfter: 4}.withDefaults()
	type step struct {
		s      sample
		n      int
		change bool
	}
	quiet := func(n int, change bool) step { return step{sample{load: 0.1, runs: 1000}, n, change} }
	load := func(l float64, n int, change bool) step { return step{sample{load: l, runs: 1000}, n, change} }
	toOne := []step{quiet(0, false), quiet(0, false), quiet(0, false), quiet(1, true)}
	cases := []struct {
		name  string
		steps []step
	}{
		{"quiet goes to one after DownAfter samples", append(toOne, quiet(0, false))},
		{"a busy sample in between starts the count again", []step{
			quiet(0, false), quiet(0, false), quiet(0, false), load(0.35, 0, false),
			quiet(0, false), quiet(0, false), quiet(0, false), quiet(1, true),
		}},
		{"on one, UpAfter busy samples in a row go back to the default", append(toOne,
			load(0.5, 0, false), // under Up
			load(0.7, 0, false), // one above: a GC's mark phase, maybe
			load(0.2, 0, false), // the count starts again
			load(0.7, 0, false),
			load(0.9, 0, true), // the default
		)},
		{"on one, goroutines waiting to run go back to the default at once", append(toOne,
			step{sample{load: 0.3, waits: 3, runs: 100}, 0, false},  // fewer than Waits
			step{sample{load: 0.3, waits: 5, runs: 1000}, 0, false}, // under 1% of those sampled
			step{sample{load: 0.3, waits: 10, runs: 1000}, 0, true}, // both: the default
		)},
		{"a catch-up stays on the default", []step{
			load(1.4, 0, false), load(1.9, 0, false), load(1.2, 0, false), load(1.5, 0, false), load(1.1, 0, false),
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := newGovernor(cfg)
			for i, s := range c.steps {
				n, change := g.next(s.s)
				if n != s.n || change != s.change {
					t.Fatalf("sample %d (%+v): got (%d, %v), want (%d, %v)", i, s.s, n, change, s.n, s.change)
				}
			}
		})
	}
}

// A load that needs the other core again soon after each return to one
// makes the governor wait twice as long each time before the next, up
// to a minute; a long stay on one starts from DownAfter again.
func TestGovernorHoldsAgainstFlapping(t *testing.T) {
	cfg := Config{MaxFunc: func() int { return 2 }}.withDefaults()
	g := newGovernor(cfg)
	quiet := sample{load: 0.1, runs: 1000}
	waiting := sample{load: 0.3, waits: 50, runs: 1000}
	// downAfter counts the quiet samples until one processor is set.
	downAfter := func() int {
		for i := 1; i <= 10*g.maxHold; i++ {
			if n, change := g.next(quiet); change {
				if n != 1 {
					t.Fatalf("set %d going quiet", n)
				}
				return i
			}
		}
		t.Fatal("never went to one")
		return 0
	}
	want := cfg.DownAfter
	for round := 0; round < 8; round++ {
		if got := downAfter(); got != want {
			t.Fatalf("round %d: one after %d quiet samples, want %d", round, got, want)
		}
		if _, change := g.next(waiting); !change {
			t.Fatalf("round %d: waiting goroutines kept one processor", round)
		}
		want = min(2*want, g.maxHold)
	}
	if want != g.maxHold {
		t.Fatalf("the hold never reached its bound: %d, bound %d", want, g.maxHold)
	}
	downAfter()
	for range g.calm { // a long stay on one
		if _, change := g.next(quiet); change {
			t.Fatal("changed while quiet on one")
		}
	}
	if _, change := g.next(waiting); !change {
		t.Fatal("waiting goroutines kept one processor")
	}
	if got := downAfter(); got != cfg.DownAfter {
		t.Fatalf("after a long stay on one: %d quiet samples, want DownAfter %d", got, cfg.DownAfter)
	}
}

func TestGovernorLeavesOneProcessorAlone(t *testing.T) {
	g := newGovernor(Config{MaxFunc: func() int { return 1 }}.withDefaults())
	for i := 0; i < 10; i++ {
		if _, change := g.next(sample{}); change {
			t.Fatalf("sample %d: a change on a machine of one processor", i)
		}
	}
}

// The runtime's scheduling delays are read: counts that only grow, and
// as many long ones as the bound lets through.
func TestSchedWaits(t *testing.T) {
	read := schedWaits(0)
	long0, all0 := read()
	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() { defer wg.Done(); runtime.Gosched() }()
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		long, all := read()
		if long < long0 || all < all0 {
			t.Fatalf("counts went back: long %d→%d, all %d→%d", long0, long, all0, all)
		}
		if all > all0 {
			if long <= long0 || long > all { // a bound of 0 lets the delays through
				t.Fatalf("bound 0: %d long of %d (before: %d of %d)", long, all, long0, all0)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no scheduling delay sampled for 200 goroutines in 5 s")
		}
		runtime.Gosched()
	}
	if long, all := schedWaits(time.Hour)(); long != 0 || all == 0 {
		t.Fatalf("bound 1 h: %d long of %d sampled", long, all)
	}
}

// fakeLoad is a process for Run: a CPU clock the test drives, whose
// every reading adds what the load used in an interval (two cores while
// busy, nothing otherwise), and the counts Run sets.
type fakeLoad struct {
	interval   time.Duration
	busy       atomic.Bool
	cpu, reads atomic.Int64
	mu         sync.Mutex
	sets       []int
	cancel     context.CancelFunc
	done       chan error
}

// run starts Run on cfg with the fake clock and setter; stop ends it.
func (f *fakeLoad) run(t *testing.T, cfg Config) {
	cfg.Interval = f.interval
	cfg.CPUFunc = func() time.Duration {
		f.reads.Add(1)
		if f.busy.Load() {
			return time.Duration(f.cpu.Add(int64(2 * f.interval)))
		}
		return time.Duration(f.cpu.Load())
	}
	cfg.WaitsFunc = func() (uint64, uint64) { return 0, 0 }
	cfg.SetFunc = func(n int) { f.mu.Lock(); f.sets = append(f.sets, n); f.mu.Unlock() }
	cfg.MaxFunc = func() int { return 2 }
	var ctx context.Context
	ctx, f.cancel = context.WithCancel(context.Background())
	t.Cleanup(f.cancel)
	f.done = make(chan error, 1)
	go func() { f.done <- Run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
}

func (f *fakeLoad) stop(t *testing.T) {
	t.Helper()
	f.cancel()
	if err := <-f.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// waitSets waits for Run to have set want, in order.
func (f *fakeLoad) waitSets(t *testing.T, want ...int) {
	t.Helper()
	got := func() []int {
		f.mu.Lock()
		defer f.mu.Unlock()
		return append([]int(nil), f.sets...)
	}
	testutil.Eventually(t, 5*time.Second, fmt.Sprintf("sets %v", want), func() bool { return len(got()) >= len(want) })
	if g := got(); !slices.Equal(g[:len(want)], want) {
		t.Fatalf("sets %v, want %v", g, want)
	}
}

// Run with a CPU clock the test drives: quiet, then busy, then
// cancelled while on one processor, which restores the default.
func TestRunSwitchesAndRestores(t *testing.T) {
	f := &fakeLoad{interval: 5 * time.Millisecond}
	f.run(t, Config{IdleInterval: f.interval}) // the fake load is per reading, not per second
	f.waitSets(t, 1)
	f.busy.Store(true)
	f.waitSets(t, 1, 0)
	f.busy.Store(false)
	f.waitSets(t, 1, 0, 1)
	f.stop(t)
	f.waitSets(t, 1, 0, 1, 0) // cancelled on one processor: the default again
}

// Idle on one processor, the samples come every IdleInterval; on the
// default, or with load or waiting goroutines, every Interval. A long
// sample counts as the Intervals it covered against flapping.
func TestGovernorSamplesSlowerWhenIdle(t *testing.T) {
	cfg := Config{Interval: 100 * time.Millisecond, IdleInterval: time.Second, MaxFunc: func() int { return 2 }}.withDefaults()
	g := newGovernor(cfg)
	idle := sample{load: 0.001, runs: 100}
	if got, isIdle := g.wait(idle); got != cfg.Interval || isIdle {
		t.Fatalf("idle on the default: next sample in %v (idle %v), want Interval %v", got, isIdle, cfg.Interval)
	}
	for range cfg.DownAfter {
		g.next(idle)
	}
	if !g.one {
		t.Fatal("not on one processor after DownAfter idle samples")
	}
	for _, c := range []struct {
		s    sample
		want time.Duration
	}{
		{idle, time.Second},
		{sample{load: 0.05, runs: 100}, cfg.Interval},            // above Idle
		{sample{load: 0.001, waits: 1, runs: 100}, cfg.Interval}, // a goroutine waited
	} {
		if got, isIdle := g.wait(c.s); got != c.want || isIdle != (c.want == time.Second) {
			t.Errorf("on one, sample %+v: next in %v (idle %v), want %v", c.s, got, isIdle, c.want)
		}
	}
	// Idle samples of a second each count as ten Intervals: half a
	// minute of them is a long stay (calm), so the next return to one
	// waits DownAfter samples again, not twice that.
	for range 30 {
		if _, change := g.next(sample{load: 0.001, runs: 100, ticks: 10}); change {
			t.Fatal("changed while idle on one")
		}
	}
	if _, change := g.next(sample{load: 0.3, waits: 50, runs: 1000}); !change {
		t.Fatal("waiting goroutines kept one processor")
	}
	if g.hold != cfg.DownAfter {
		t.Errorf("after 30 s idle on one: hold %d samples, want DownAfter %d (a long stay)", g.hold, cfg.DownAfter)
	}
}

// Run samples slowly while idle on one processor, and load that comes
// then brings back the fast samples and the default.
func TestRunSamplesSlowerWhenIdle(t *testing.T) {
	f := &fakeLoad{interval: 5 * time.Millisecond}
	f.run(t, Config{IdleInterval: 100 * time.Millisecond, DownAfter: 2})
	f.waitSets(t, 1)
	// Let the first idle sample's wait begin, then count for 600 ms: at
	// 100 ms a sample, about 6 readings; at 5 ms it would be 120.
	time.Sleep(150 * time.Millisecond)
	before := f.reads.Load()
	time.Sleep(600 * time.Millisecond)
	if n := f.reads.Load() - before; n > 12 {
		t.Errorf("%d CPU readings in 600 ms idle on one processor, want about 6 (IdleInterval 100 ms)", n)
	}
	f.busy.Store(true)
	f.waitSets(t, 1, 0)
	f.stop(t)
}

// The real setter: one processor, then the runtime's default again.
func TestSetProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before); one.Store(before == 1) })
	// The default, which SetDefaultGOMAXPROCS computes from the machine
	// (not from the environment's GOMAXPROCS, nor go test's -cpu).
	runtime.SetDefaultGOMAXPROCS()
	def := runtime.GOMAXPROCS(0)
	setProcs(1)
	if got := runtime.GOMAXPROCS(0); got != 1 || !One() {
		t.Fatalf("after setProcs(1): %d processors, One %v", got, One())
	}
	setProcs(0)
	if got := runtime.GOMAXPROCS(0); got != def || One() != (def == 1) {
		t.Fatalf("after setProcs(0): %d processors (One %v), want the default %d", got, One(), def)
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
