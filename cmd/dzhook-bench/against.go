package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"
)

// -against compares two binaries: the rates scenario runs on both at the
// same time, each in a bench process of its own (its own PostgreSQL,
// receiver and paced load), and every figure of the second is printed
// beside the first's with the median of their ratio over the rounds.
// Side by side, both runs see the same moments of this shared machine:
// two copies of one binary gave B/A 1.014 at 500 tx/s and 1.016 at 2,000
// this way (medians of two rounds), where runs one after the other ranged
// 1.08–1.66 s per 10,000 events at 500 tx/s within the hour
// (BENCHMARKS.md, fifth stop of issue 17). The rounds alternate which
// process starts first; their phases drift apart by a few seconds anyway
// (each starts its own cluster), so the alternation only keeps a bias of
// the start from always favouring one side.
//
// Only rates compares this way, and only its CPU figures: a catch-up or a
// fan-out takes every core it can, and two at once would measure each
// other; live measures latency only. And the two PostgreSQL clusters share
// the disk: at 2,000 tx/s each (fsync on) their commits wait on each
// other's flushes, so the latencies of a side-by-side run are not the
// binaries' (p99 of 140–330 ms in both, against 2 ms alone).
//
// Settings from the environment (BENCH_*) reach both runs; to give B one
// of its own, point -against at a script that sets it and execs the
// binary.

// roundLimit bounds one round: the whole rates scenario, both runs,
// takes about three minutes here.
const roundLimit = 20 * time.Minute

// stopWait is how long a run stopped by the other's failure (or by
// roundLimit) has to remove its throwaway cluster before it is killed.
const stopWait = time.Minute

// pairRun is what -against runs: the rates scenario on a and on b, rounds
// times, with the scenario's own flags (passed on as given).
type pairRun struct {
	scenario string
	a, b     string
	rounds   int
	pass     []string // -rates, -rows, -separate-journal, as given
}

// checkPair refuses what cannot be compared, naming the flag.
func checkPair(p pairRun) error {
	switch {
	case p.scenario != "rates":
		return fmt.Errorf("-against compares the rates scenario only (its CPU per event), not %q: the others take every core they can, or measure latency only", p.scenario)
	case p.rounds < 1:
		return fmt.Errorf("-rounds: %d is not a count of rounds (at least 1)", p.rounds)
	case !fileExists(p.a):
		return fmt.Errorf("-binary: %s not found", p.a)
	case !fileExists(p.b):
		return fmt.Errorf("-against: %s not found", p.b)
	}
	return nil
}

// runPair runs the rounds and prints each, then the medians. SIGINT or
// SIGTERM stops the round under way (its runs remove their clusters).
func runPair(p pairRun) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "dzhook-bench-pair-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	var rounds [][2]*Report
	for i := range p.rounds {
		first := "A"
		if i%2 == 1 {
			first = "B"
		}
		fmt.Fprintf(os.Stderr, "round %d of %d: %s on A and B at once (%s starts first)\n", i+1, p.rounds, p.scenario, first)
		pair, err := runRound(ctx, self, work, p, i)
		if err != nil {
			return fmt.Errorf("round %d: %w", i+1, err)
		}
		rounds = append(rounds, pair)
		fmt.Printf("round %d of %d (%s started first)\n", i+1, p.rounds, first)
		printPair(pairRows([][2]*Report{pair}))
	}
	fmt.Printf("\nmedian over %d rounds: A %s, B %s\n", p.rounds, p.a, p.b)
	printPair(pairRows(rounds))
	fmt.Println("(compare CPU: both runs share the disk, so their latencies include each other's commits)")
	return nil
}

// runRound runs round i: both binaries at once, B first in odd rounds. A
// run that fails stops the other; so does roundLimit.
func runRound(parent context.Context, self, work string, p pairRun, i int) ([2]*Report, error) {
	var pair [2]*Report
	ctx, cancel := context.WithTimeout(parent, roundLimit)
	defer cancel()
	bins := [2]string{p.a, p.b}
	order := []int{0, 1}
	if i%2 == 1 {
		order = []int{1, 0}
	}
	var cmds [2]*exec.Cmd
	var logs [2]bytes.Buffer
	var outs [2]string
	done := make(chan int, 2)
	errs := make([]error, 2)
	started := 0
	stopped := -1 // the run stopped because the other failed
	for _, k := range order {
		outs[k] = filepath.Join(work, fmt.Sprintf("round%d-%c.json", i+1, 'a'+k))
		args := append([]string{"-scenario", p.scenario, "-binary", bins[k], "-out", outs[k]}, p.pass...)
		cmds[k] = exec.CommandContext(ctx, self, args...)
		cmds[k].Stdout, cmds[k].Stderr = &logs[k], &logs[k]
		// A stopped run is told to stop (SIGTERM: a run started with
		// SIGINT ignored, as a shell's background job is, keeps it
		// ignored), removes its cluster and work directory (benchMain),
		// and is killed if it has not ended within stopWait.
		cmd := cmds[k]
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = stopWait
		if err := cmds[k].Start(); err != nil {
			errs[k] = err
			if started == 1 {
				stopped = 1 - k
			}
			cancel()
			break
		}
		started++
		go func(k int) {
			errs[k] = cmds[k].Wait()
			done <- k
		}(k)
	}
	for range started {
		if k := <-done; errs[k] != nil && ctx.Err() == nil {
			stopped = 1 - k
			cancel() // the other run measures nothing useful now
		}
	}
	var failed []error
	for k, err := range errs {
		switch {
		case err == nil, k == stopped:
		case parent.Err() != nil:
			failed = append(failed, fmt.Errorf("%s: stopped by a signal", bins[k]))
		case ctx.Err() == context.DeadlineExceeded:
			failed = append(failed, fmt.Errorf("%s: not done within %s", bins[k], roundLimit))
		default:
			failed = append(failed, fmt.Errorf("%s: %v: %s", bins[k], err, tail(logs[k].String(), 600)))
		}
	}
	if err := errors.Join(failed...); err != nil {
		return pair, err
	}
	for k := range pair {
		var err error
		if pair[k], err = readReport(outs[k]); err != nil {
			return pair, err
		}
	}
	return pair, nil
}

// pairRow is one figure of both binaries over the rounds, and the median
// of B/A over the rounds where A's was not 0 (hasRatio: there were some).
type pairRow struct {
	metric, unit string
	a, b         []float64
	ratio        float64
	hasRatio     bool
}

// pairRows pairs the figures both reports of every round have, in the
// order of the first round's A.
func pairRows(rounds [][2]*Report) []pairRow {
	if len(rounds) == 0 {
		return nil
	}
	var rows []pairRow
	for _, r := range rounds[0][0].Results {
		row := pairRow{metric: r.Metric, unit: r.Unit}
		var ratios []float64
		for _, pair := range rounds {
			a, okA := figure(pair[0], r.Metric)
			b, okB := figure(pair[1], r.Metric)
			if !okA || !okB {
				continue
			}
			row.a, row.b = append(row.a, a), append(row.b, b)
			if a != 0 {
				ratios = append(ratios, b/a)
			}
		}
		if len(row.a) == 0 {
			continue
		}
		row.ratio, row.hasRatio = median(ratios), len(ratios) > 0
		rows = append(rows, row)
	}
	return rows
}

// figure is a report's value of metric.
func figure(r *Report, metric string) (float64, bool) {
	for _, x := range r.Results {
		if x.Metric == metric {
			return x.Value, true
		}
	}
	return 0, false
}

// median of xs (0 for none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func printPair(rows []pairRow) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "METRIC\tA\tB\tUNIT\tB/A\n")
	for _, r := range rows {
		ratio := "-"
		if r.hasRatio {
			ratio = strconv.FormatFloat(r.ratio, 'f', 3, 64)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.metric, values(r.a), values(r.b), r.unit, ratio)
	}
	_ = tw.Flush()
}

func values(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.FormatFloat(x, 'f', 3, 64)
	}
	return strings.Join(s, " ")
}

func readReport(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// tail is the end of a child's log, for its error, cut at a character.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	i := len(s) - n
	for i < len(s) && !utf8.RuneStart(s[i]) {
		i++
	}
	return "…" + s[i:]
}

// compareBinaries is -against: the exit code. The default scenario (all)
// means rates here.
func compareBinaries(scenario, a, b string, rounds int) int {
	if scenario == "all" {
		scenario = "rates"
	}
	abs := func(p string) string {
		if x, err := filepath.Abs(p); err == nil {
			return x
		}
		return p
	}
	p := pairRun{scenario: scenario, a: abs(a), b: abs(b), rounds: rounds}
	var refused []string
	p.pass, refused = pairFlags(flag.CommandLine)
	if len(refused) > 0 {
		fmt.Fprintf(os.Stderr, "dzhook-bench: -against does not take %s: it prints a comparison of the rates scenario and writes no file\n", strings.Join(refused, ", "))
		return 2
	}
	if err := checkPair(p); err != nil {
		fmt.Fprintf(os.Stderr, "dzhook-bench: %v\n", err)
		return 2
	}
	if err := runPair(p); err != nil {
		fmt.Fprintf(os.Stderr, "dzhook-bench: %v\n", err)
		return 1
	}
	return 0
}

// pairFlags sorts the flags set on fs: the scenario's own go to both runs
// as given (pass); those that would make both write one file, or that
// this mode does not honour, are refused rather than dropped.
func pairFlags(fs *flag.FlagSet) (pass, refused []string) {
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "rates", "rows", "receiver":
			pass = append(pass, "-"+f.Name, f.Value.String())
		case "separate-journal":
			pass = append(pass, "-"+f.Name+"="+f.Value.String())
		case "out", "cpuprofile", "v", "rate", "live-for":
			refused = append(refused, "-"+f.Name)
		}
	})
	return pass, refused
}
