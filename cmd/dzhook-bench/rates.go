package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// rateSteps are the paced rates of the rates scenario (tx/s) and how long
// each runs: long enough for a few thousand events at every rate.
type rateStep struct {
	rate int
	dur  time.Duration
}

var rateSteps = []rateStep{{100, 20 * time.Second}, {500, 10 * time.Second}, {1000, 10 * time.Second}, {2000, 10 * time.Second}}

// rateGoals are issue 17's goals at the rates that have them: dzhook's CPU
// per 10,000 events (s) and the commit -> received p99 (ms); 0 is none.
var rateGoals = map[int]struct{ cpu, p99 float64 }{
	500:  {cpu: 1.0, p99: 2},
	1000: {p99: 3},
	2000: {cpu: 0.8, p99: 5},
}

// rates measures what one event costs at the rates a helpdesk produces
// (issue 17): dzhook idle, then single-row transactions paced at each of
// rateSteps, one after the other on one running dzhook. For each: commit
// -> received p50/p95/p99, dzhook's CPU per 10,000 events, and PostgreSQL's
// CPU spent for dzhook (the walsender and the journal's backends, read
// from /proc: the journal's cost is part of dzhook's cost).
func (b *bench) rates(ctx context.Context) error {
	w, cleanup, err := b.prepare(ctx, []subSpec{{id: "bench", path: "/bench"}})
	if err != nil {
		return err
	}
	defer cleanup()
	d, err := b.start(w.config)
	if err != nil {
		return err
	}
	running := true
	defer func() {
		if running {
			d.stop()
		}
	}()
	warm := w.rc.expect(200)
	if _, err := b.paced(ctx, w.dsn, 1_000_000, 200, time.Second); err != nil {
		return err
	}
	select {
	case <-warm:
	case <-time.After(time.Minute):
		return fmt.Errorf("warm-up: the 200 events did not arrive within a minute")
	}

	// Idle: nothing committed for 10 s (after the warm-up settled).
	time.Sleep(2 * time.Second)
	cpu0, _ := d.usage()
	const idleFor = 10 * time.Second
	time.Sleep(idleFor)
	cpu1, _ := d.usage()
	b.goal("rates", "idle: dzhook CPU", (cpu1-cpu0)/idleFor.Seconds()*100, "% of a core", 0.5, false, "")

	from := 0
	dzhookCPU := map[int]float64{}
	for _, step := range rateSteps {
		n := step.rate * int(step.dur.Seconds())
		reached := w.rc.expect(n)
		pg0, err := b.pgCPU(ctx, w.db)
		if err != nil {
			return err
		}
		cpu0, _ := d.usage()
		committed, err := b.paced(ctx, w.dsn, from, step.rate, step.dur)
		if err != nil {
			return err
		}
		select {
		case <-reached:
		case <-time.After(time.Minute):
			return fmt.Errorf("rates: %d tx/s: only %d of %d events arrived", step.rate, w.rc.received(), n)
		}
		cpu1, _ := d.usage()
		pg1, err := b.pgCPU(ctx, w.db)
		if err != nil {
			return err
		}
		from += n
		_, byReq := w.rc.arrivals()
		lat := latencies(committed, byReq, "/bench")
		per10k := (cpu1 - cpu0) / float64(n) * 10000
		dzhookCPU[step.rate] = per10k
		label := fmt.Sprintf("%d tx/s", step.rate)
		note := fmt.Sprintf("%.1f%% of a core", (cpu1-cpu0)/step.dur.Seconds()*100)
		g := rateGoals[step.rate]
		if g.cpu > 0 {
			b.goal("rates", label+": dzhook CPU per 10,000 events", per10k, "s", g.cpu, false, note)
		} else {
			b.add(Result{Scenario: "rates", Metric: label + ": dzhook CPU per 10,000 events", Value: per10k, Unit: "s", Note: note})
		}
		b.add(Result{Scenario: "rates", Metric: label + ": commit -> received p50", Value: pct(lat, 0.50), Unit: "ms"})
		b.add(Result{Scenario: "rates", Metric: label + ": commit -> received p95", Value: pct(lat, 0.95), Unit: "ms"})
		if g.p99 > 0 {
			b.goal("rates", label+": commit -> received p99", pct(lat, 0.99), "ms", g.p99, false, "")
		} else {
			b.add(Result{Scenario: "rates", Metric: label + ": commit -> received p99", Value: pct(lat, 0.99), Unit: "ms"})
		}
		b.add(Result{Scenario: "rates", Metric: label + ": PostgreSQL CPU for dzhook per 10,000 events", Value: pg1.since(pg0) / float64(n) * 10000, Unit: "s",
			Note: "walsender + journal backends"})
	}

	// The floor (floor.go) at each rate, with dzhook stopped: the same
	// paced inserts, read from a slot of its own and POSTed signed to the
	// same receiver by the least code that can.
	running = false
	if err := d.stop(); err != nil {
		return err
	}
	for _, step := range rateSteps {
		n := step.rate * int(step.dur.Seconds())
		perEvent, lat, err := b.floorStep(ctx, w, from, step)
		if err != nil {
			return err
		}
		from += n
		label := fmt.Sprintf("%d tx/s", step.rate)
		b.add(Result{Scenario: "rates", Metric: label + ": floor CPU per 10,000 events", Value: perEvent, Unit: "s",
			Note: "pglogrepl + a signed POST per event on one goroutine, no journal"})
		b.add(Result{Scenario: "rates", Metric: label + ": floor commit -> received p99", Value: pct(lat, 0.99), Unit: "ms"})
		b.add(Result{Scenario: "rates", Metric: label + ": dzhook CPU per event / floor's", Value: dzhookCPU[step.rate] / perEvent, Unit: "x"})
	}
	return nil
}

// floorStep runs the floor client through one rate step: its CPU per
// 10,000 events and its commit -> received latencies.
func (b *bench) floorStep(ctx context.Context, w *world, from int, step rateStep) (float64, []time.Duration, error) {
	n := step.rate * int(step.dur.Seconds())
	if err := b.cluster.Exec(ctx, w.db, `SELECT pg_create_logical_replication_slot('floor', 'pgoutput')`); err != nil {
		return 0, nil, err
	}
	defer b.dropSlot(ctx, w.db, "floor")
	reached := w.rc.expect(n)
	sep := "?"
	if strings.Contains(w.dsn, "?") {
		sep = "&"
	}
	p, err := startFloor(w.dsn+sep+"application_name=floor", "floor", w.rc.url+"/floor", n)
	if err != nil {
		return 0, nil, err
	}
	if err := b.waitStreaming(ctx, w.db, "floor", 30*time.Second); err != nil {
		p.kill()
		return 0, nil, err
	}
	committed, err := b.paced(ctx, w.dsn, from, step.rate, step.dur)
	if err != nil {
		p.kill()
		return 0, nil, err
	}
	cpu, err := p.wait(time.Minute)
	if err != nil {
		return 0, nil, err
	}
	<-reached
	_, byReq := w.rc.arrivals()
	return cpu / float64(n-1) * 10000, latencies(committed, byReq, "/floor"), nil
}

// dropSlot drops a slot once its walsender is gone (it outlives its
// client by a moment), trying for up to 10 s.
func (b *bench) dropSlot(ctx context.Context, db, slot string) {
	for deadline := time.Now().Add(10 * time.Second); ; {
		err := b.cluster.Exec(ctx, db, `SELECT pg_drop_replication_slot('`+slot+`')`)
		if err == nil || time.Now().After(deadline) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitStreaming waits until a walsender for application name app streams.
func (b *bench) waitStreaming(ctx context.Context, db, app string, limit time.Duration) error {
	conn, err := pgx.Connect(ctx, b.cluster.DSN(db))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(limit)
	for {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'`, app).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the %s client was not streaming after %v", app, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pgSample is the CPU seconds of each of dzhook's PostgreSQL backends
// (the walsender, the journal's and the catalog's connections) at one
// moment.
type pgSample map[int]float64

// since is the CPU the backends spent between s0 and s: a backend that
// started meanwhile counts whole.
func (s pgSample) since(s0 pgSample) float64 {
	total := 0.0
	for pid, cpu := range s {
		total += cpu - s0[pid]
	}
	return total
}

// pgCPU samples dzhook's backends of db: those whose application_name
// dzhook sets (dzhook, dzhook-journal, dzhook-catalog).
func (b *bench) pgCPU(ctx context.Context, db string) (pgSample, error) {
	conn, err := pgx.Connect(ctx, b.cluster.DSN(db))
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'dzhook%'`)
	if err != nil {
		return nil, err
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil, err
	}
	s := pgSample{}
	for _, pid := range pids {
		s[int(pid)] = procCPU(int(pid))
	}
	return s, nil
}

// procCPU is a process's utime + stime in seconds (0 if it is gone).
func procCPU(pid int) float64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) <= 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// pickRates keeps the steps of rateSteps named in list ("500,2000").
func pickRates(list string) []rateStep {
	var out []rateStep
	for _, f := range strings.Split(list, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r <= 0 {
			fmt.Fprintf(os.Stderr, "dzhook-bench: -rates: %q is not a rate\n", f)
			os.Exit(2)
		}
		if slices.ContainsFunc(out, func(s rateStep) bool { return s.rate == r }) {
			fmt.Fprintf(os.Stderr, "dzhook-bench: -rates: %d is given twice (its figures would share their names)\n", r)
			os.Exit(2)
		}
		dur := 10 * time.Second
		if r < 500 {
			dur = 20 * time.Second
		}
		out = append(out, rateStep{r, dur})
	}
	return out
}
