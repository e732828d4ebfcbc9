package main

import (
	"context"
	"log/slog"
	"runtime"
	"time"
)

// Adapting the Go scheduler's processors to the load (adaptProcs).
const (
	procsEvery = 250 * time.Millisecond
	// procsBusy: more CPU than this (cores, over procsEvery) on one
	// processor, and dzhook runs on all of them.
	procsBusy = 0.6
	// procsCalm: less than this for eight periods (2 s), and it goes back
	// to one.
	procsCalm = 0.3
)

// adaptProcs runs the Go scheduler on one processor while dzhook is
// lightly loaded, and on all of them (GOMAXPROCS as the runtime chose it)
// while it is busy, until ctx ends.
//
// Why: at a helpdesk's usual rates events come one by one, and each
// passes through several goroutines (stream, pipeline, worker, the HTTP
// client's, journal writer). With two processors every hand-over wakes a
// sleeping thread on the other one, and on a virtual machine a thread's
// sleep and wake is the most expensive thing an event costs (~40 µs each,
// about ten per event): measured at 500 tx/s, one processor uses ~20%
// less CPU per event and cuts the 99th percentile at 2,000 tx/s by half.
// A catch-up or a wide fan-out needs both (fan-out delivers half as fast
// on one), so as soon as one processor is kept busy dzhook takes all;
// it returns to one after a calm stretch. GOMAXPROCS in the environment
// turns this off (the operator decided); so does a machine with one CPU.
func adaptProcs(ctx context.Context, getenv func(string) string, log *slog.Logger) {
	procsLoop(ctx, getenv, log, processCPU, procsEvery)
}

// procsLoop is adaptProcs with its clock of CPU time and its period.
func procsLoop(ctx context.Context, getenv func(string) string, log *slog.Logger, cpu func() time.Duration, every time.Duration) {
	all := runtime.GOMAXPROCS(0)
	if all < 2 || getenv("GOMAXPROCS") != "" {
		return
	}
	defer runtime.GOMAXPROCS(all)
	cur := 1
	runtime.GOMAXPROCS(cur)
	t := time.NewTicker(every)
	defer t.Stop()
	last, lastAt := cpu(), time.Now()
	var calmSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now, at := cpu(), time.Now()
		used := (now - last).Seconds() / at.Sub(lastAt).Seconds()
		last, lastAt = now, at
		switch {
		case cur == 1 && used > procsBusy:
			cur = all
			runtime.GOMAXPROCS(cur)
			calmSince = time.Time{}
			log.Debug("busy: the scheduler runs on every processor", "procs", cur, "cpu_cores", used)
		case cur > 1 && used < procsCalm:
			if calmSince.IsZero() {
				calmSince = at
			} else if at.Sub(calmSince) >= 8*every {
				cur = 1
				runtime.GOMAXPROCS(cur)
				log.Debug("calm: the scheduler runs on one processor", "cpu_cores", used)
			}
		default:
			calmSince = time.Time{}
		}
	}
}
