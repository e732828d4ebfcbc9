// Package procs runs the Go scheduler on one processor while the
// process's load fits in one, and on all of them otherwise.
//
// Why: a helpdesk produces events one at a time most of the day, so
// dzhook is idle between two events. Each goroutine readied while a
// processor is idle (a channel send to a worker, several goroutines
// ready at once in the network poller) makes the runtime wake a second
// thread (wakep), which spins, finds nothing to do and sleeps again: a
// futex wake, two context switches and a cold cache per event, about
// half of them useless (BENCHMARKS.md, issue 17: 0.5 threads woken for
// nothing per event at 500 tx/s). With one processor there is no second
// one to wake. A catch-up, a replay or a wide fan-out needs every core,
// so the governor gives them back as soon as the process is busy.
//
// The governor samples the process's CPU time (user and system, every
// thread) and the runtime's scheduling delays every Interval. On one
// processor, UpAfter samples in a row above Up of a core (a GC's mark
// phase, which takes every idle moment of the one processor, is
// shorter), or one sample in which goroutines waited Wait or more to
// run (bursts, a CPU quota, other processes taking the core), restore
// the runtime's default (runtime.SetDefaultGOMAXPROCS: the machine's or
// container's limit, kept up to date by the runtime). On the default,
// a second of samples below Down of a core goes back to one. A load
// that needs the other core again within seconds of each return makes
// the governor wait twice as long each time before the next (up to a
// minute): each switch stops the world, and waits for a GC in progress.
//
// Idle on one processor (below Idle of a core, no goroutine kept waiting)
// it samples every IdleInterval instead: each sample wakes the process,
// and at 100 ms the samples were most of an idle process's wakes (a wake
// of the scheduler's thread and one of the runtime's monitor, ten times a
// second). Load that comes then is seen within IdleInterval and the
// samples are at Interval again; one processor keeps up with a
// catch-up's start meanwhile (BENCHMARKS.md: a quota of one core).
//
// GOMAXPROCS set in the environment is the operator's choice: the
// governor then does nothing.
package procs

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"time"

	"github.com/dzdesk/dzhook/internal/beat"
)

// one is whether the scheduler runs on one processor, as the governor or
// the environment set it.
var one atomic.Bool

func init() { one.Store(runtime.GOMAXPROCS(0) == 1) }

// One reports whether the scheduler runs on one processor (as the
// governor or GOMAXPROCS set it): a goroutine readied then wakes no
// other thread, so a channel is the cheapest hand-over between two
// goroutines (internal/fanout's idle workers sleep on one then).
func One() bool { return one.Load() }

// Defaults of Config.
const (
	DefaultInterval  = 100 * time.Millisecond
	DefaultUp        = 0.6 // of a core, sampled on one processor
	DefaultUpAfter   = 2   // samples in a row above Up (a GC's mark phase is shorter)
	DefaultWait      = time.Millisecond
	DefaultWaits     = 4    // goroutines seen waiting Wait or more in a sample
	DefaultDown      = 0.3  // of a core, sampled on every processor
	DefaultDownAfter = 10   // samples in a row (a second at DefaultInterval)
	DefaultIdle      = 0.02 // of a core, sampled on one processor
	DefaultIdleEvery = time.Second
)

// Config tunes the governor; zero fields take the defaults.
type Config struct {
	Interval time.Duration
	Up       float64
	UpAfter  int
	// Wait and Waits: on one processor, a sample in which Waits
	// goroutines (and 1% of those sampled) waited Wait or more to run
	// restores the default at once, whatever the load: work that comes
	// in bursts, a quota that caps the load below Up, or a machine
	// whose other processes take the core.
	Wait      time.Duration
	Waits     int
	Down      float64
	DownAfter int
	// Idle and IdleInterval: on one processor, after a sample below Idle
	// of a core in which no goroutine waited Wait or more, the next
	// sample comes after IdleInterval (not Interval). Samples are
	// counted in Intervals for the hold against flapping.
	Idle         float64
	IdleInterval time.Duration

	// For tests: the process's CPU time so far; the scheduling delays
	// seen so far (long: Wait or more; all: every one sampled); and what
	// sets the processors (n 0: the runtime's default). Defaults:
	// getrusage, the runtime's /sched/latencies:seconds, and
	// runtime.GOMAXPROCS and runtime.SetDefaultGOMAXPROCS.
	CPUFunc   func() time.Duration
	WaitsFunc func() (long, all uint64)
	SetFunc   func(n int)
	// MaxFunc reports the runtime's default count (tests); defaults to
	// runtime.GOMAXPROCS(0) read while the default is set.
	MaxFunc func() int
}

func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Up <= 0 {
		c.Up = DefaultUp
	}
	if c.UpAfter <= 0 {
		c.UpAfter = DefaultUpAfter
	}
	if c.Wait <= 0 {
		c.Wait = DefaultWait
	}
	if c.Waits <= 0 {
		c.Waits = DefaultWaits
	}
	if c.Down <= 0 {
		c.Down = DefaultDown
	}
	if c.DownAfter <= 0 {
		c.DownAfter = DefaultDownAfter
	}
	if c.Idle <= 0 {
		c.Idle = DefaultIdle
	}
	if c.IdleInterval <= 0 {
		c.IdleInterval = DefaultIdleEvery
	}
	c.IdleInterval = max(c.IdleInterval, c.Interval)
	if c.CPUFunc == nil {
		c.CPUFunc = processCPU
	}
	if c.WaitsFunc == nil {
		c.WaitsFunc = schedWaits(c.Wait)
	}
	if c.SetFunc == nil {
		c.SetFunc = setProcs
	}
	if c.MaxFunc == nil {
		c.MaxFunc = func() int { return runtime.GOMAXPROCS(0) }
	}
	return c
}

// Pinned reports whether the operator set GOMAXPROCS: the governor then
// leaves the count alone.
func Pinned() bool { return os.Getenv("GOMAXPROCS") != "" }

// Run governs the processor count until ctx ends, then restores the
// runtime's default and returns nil.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	cfg = cfg.withDefaults()
	g := newGovernor(cfg)
	defer func() {
		if g.one {
			cfg.SetFunc(0)
		}
	}()
	t := time.NewTimer(cfg.Interval)
	defer t.Stop()
	last, at := cfg.CPUFunc(), time.Now()
	lastLong, lastAll := cfg.WaitsFunc()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			// The clock is read beside the CPU time: a tick received late
			// (the processor was busy) still measures what it covers.
			cpu, now := cfg.CPUFunc(), time.Now()
			long, all := cfg.WaitsFunc()
			wall := now.Sub(at)
			if wall <= 0 {
				t.Reset(cfg.Interval)
				continue
			}
			s := sample{load: float64(cpu-last) / float64(wall), waits: long - lastLong, runs: all - lastAll,
				ticks: int((wall + cfg.Interval/2) / cfg.Interval)}
			last, at, lastLong, lastAll = cpu, now, long, all
			if n, change := g.next(s); change {
				cfg.SetFunc(n)
				log.Debug("processors", "gomaxprocs", runtime.GOMAXPROCS(0), "load", s.load, "waits", s.waits, "hold", g.hold)
			}
			if w, idle := g.wait(s); idle {
				t.Reset(beat.Until(w)) // with the other pollers (beat)
			} else {
				t.Reset(w)
			}
		}
	}
}

// sample is what the governor saw in one interval.
type sample struct {
	load  float64 // cores used
	waits uint64  // goroutines sampled that waited Config.Wait or more to run
	runs  uint64  // goroutines sampled
	ticks int     // Config.Intervals the sample covered (at least one is counted)
}

// governor is the decision, apart from the clock and the runtime.
type governor struct {
	cfg   Config
	one   bool // running on one processor
	quiet int  // samples in a row below Down, on the default
	busy  int  // samples in a row above Up, on one processor
	// hold is how many quiet samples go back to one: DownAfter, doubled
	// each time one processor was left within flap samples of taking it
	// (up to maxHold), DownAfter again after a stay of calm samples.
	hold, flap, maxHold, calm int
	n, downAt                 int // samples seen; the sample that went to one
}

func newGovernor(cfg Config) *governor {
	per := func(d time.Duration) int { return max(1, int(d/cfg.Interval)) }
	return &governor{cfg: cfg, hold: cfg.DownAfter, flap: per(5 * time.Second), maxHold: per(time.Minute), calm: per(30 * time.Second)}
}

// next takes a sample and says what to set: n 1 for one processor, 0 for
// the default; change false for nothing.
func (g *governor) next(s sample) (n int, change bool) {
	g.n += max(1, s.ticks)
	if g.one {
		if s.load > g.cfg.Up {
			g.busy++
		} else {
			g.busy = 0
		}
		waiting := s.waits >= uint64(g.cfg.Waits) && s.waits*100 >= s.runs
		if g.busy < g.cfg.UpAfter && !waiting {
			return 0, false
		}
		switch stayed := g.n - g.downAt; {
		case stayed <= g.flap:
			g.hold = min(2*g.hold, max(g.maxHold, g.cfg.DownAfter))
		case stayed >= g.calm:
			g.hold = g.cfg.DownAfter
		}
		g.one, g.busy, g.quiet = false, 0, 0
		return 0, true
	}
	if s.load >= g.cfg.Down {
		g.quiet = 0
		return 0, false
	}
	g.quiet++
	if g.quiet < g.hold || g.cfg.MaxFunc() <= 1 {
		return 0, false
	}
	g.one, g.quiet, g.downAt = true, 0, g.n
	return 1, true
}

// wait is how long after sample s (which next has taken) the next one
// comes: IdleInterval while idle on one processor (idle true), Interval
// otherwise.
func (g *governor) wait(s sample) (d time.Duration, idle bool) {
	if g.one && s.load < g.cfg.Idle && s.waits == 0 {
		return g.cfg.IdleInterval, true
	}
	return g.cfg.Interval, false
}

// schedWaits reads, from the runtime's sampled scheduling delays (the
// time goroutines spent ready to run before they ran), how many waited
// limit or more, and how many were sampled, so far.
func schedWaits(limit time.Duration) func() (long, all uint64) {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	bound := limit.Seconds()
	return func() (long, all uint64) {
		metrics.Read(s)
		if s[0].Value.Kind() != metrics.KindFloat64Histogram {
			return 0, 0
		}
		h := s[0].Value.Float64Histogram()
		for i, c := range h.Counts {
			all += c
			if h.Buckets[i] >= bound { // the bucket's lower bound
				long += c
			}
		}
		return long, all
	}
}

func setProcs(n int) {
	if n == 0 {
		runtime.SetDefaultGOMAXPROCS()
	} else {
		runtime.GOMAXPROCS(n)
	}
	one.Store(runtime.GOMAXPROCS(0) == 1)
}
