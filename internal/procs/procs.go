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
// thread) every Interval. On one processor, a sample above Up of a core
// restores the runtime's default (runtime.SetDefaultGOMAXPROCS: the
// machine's or container's limit, kept up to date by the runtime); on
// the default, DownAfter samples in a row below Down of a core go back
// to one. A burst waits at most one Interval for the other cores; the
// hysteresis keeps a load near the thresholds from switching often (each
// switch stops the world for some microseconds).
//
// GOMAXPROCS set in the environment is the operator's choice: the
// governor then does nothing.
package procs

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
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
	DefaultDown      = 0.3 // of a core, sampled on every processor
	DefaultDownAfter = 10  // samples in a row (a second at DefaultInterval)
)

// Config tunes the governor; zero fields take the defaults.
type Config struct {
	Interval  time.Duration
	Up, Down  float64
	DownAfter int

	// For tests: the process's CPU time so far, and what sets the
	// processors (n 0: the runtime's default). Defaults: getrusage,
	// runtime.GOMAXPROCS and runtime.SetDefaultGOMAXPROCS.
	CPUFunc func() time.Duration
	SetFunc func(n int)
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
	if c.Down <= 0 {
		c.Down = DefaultDown
	}
	if c.DownAfter <= 0 {
		c.DownAfter = DefaultDownAfter
	}
	if c.CPUFunc == nil {
		c.CPUFunc = processCPU
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
	g := governor{cfg: cfg}
	defer func() {
		if g.one {
			cfg.SetFunc(0)
		}
	}()
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	last, at := cfg.CPUFunc(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			cpu := cfg.CPUFunc()
			wall := now.Sub(at)
			if wall <= 0 {
				continue
			}
			load := float64(cpu-last) / float64(wall)
			last, at = cpu, now
			if n, change := g.next(load); change {
				cfg.SetFunc(n)
				log.Debug("processors", "gomaxprocs", runtime.GOMAXPROCS(0), "load", load)
			}
		}
	}
}

// governor is the decision, apart from the clock and the runtime.
type governor struct {
	cfg   Config
	one   bool // running on one processor
	quiet int  // samples in a row below Down, on the default
}

// next takes a sample (cores used since the last) and says what to set:
// n 1 for one processor, 0 for the default; change false for nothing.
func (g *governor) next(load float64) (n int, change bool) {
	if g.one {
		if load > g.cfg.Up {
			g.one, g.quiet = false, 0
			return 0, true
		}
		return 0, false
	}
	if load >= g.cfg.Down {
		g.quiet = 0
		return 0, false
	}
	g.quiet++
	if g.quiet < g.cfg.DownAfter || g.cfg.MaxFunc() <= 1 {
		return 0, false
	}
	g.one, g.quiet = true, 0
	return 1, true
}

// processCPU is the process's CPU time so far, every thread's.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func setProcs(n int) {
	if n == 0 {
		runtime.SetDefaultGOMAXPROCS()
	} else {
		runtime.GOMAXPROCS(n)
	}
	one.Store(runtime.GOMAXPROCS(0) == 1)
}
