package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// -against compares two binaries: the scenario runs on both at the same
// time, each in a bench process of its own (its own PostgreSQL, receiver
// and load), and every figure of the second is printed beside the
// first's with their ratio. Side by side, both runs see the same moment
// of this shared machine: two runs of one binary at 500 and 2,000 tx/s
// differed by 1–6% this way, where runs one after the other differed by
// up to 20% within the hour (BENCHMARKS.md, "Comparing two builds"). The
// rounds alternate which of the two starts first.
//
// Only the paced scenarios compare this way: a catch-up or a fan-out
// takes every core it can, and two at once would measure each other. And
// only their CPU: the two PostgreSQL clusters share the disk, and at
// 2,000 tx/s each (fsync on) their commits wait on each other's flushes,
// so the latencies of a side-by-side run are not the binaries' (p99 of
// 140–330 ms in both, against 2 ms alone).
var pairedScenarios = []string{"rates", "live"}

// pairRun is what -against runs: scenario on a and on b, rounds times,
// with the scenario's own flags (passed on as given).
type pairRun struct {
	scenario string
	a, b     string
	rounds   int
	pass     []string // -rates, -rate, -live-for, as given
}

// checkPair refuses what cannot be compared, naming the flag.
func checkPair(p pairRun) error {
	switch {
	case !slices.Contains(pairedScenarios, p.scenario):
		return fmt.Errorf("-against: scenario %q cannot be compared side by side (it takes every core it can); use one of %s", p.scenario, strings.Join(pairedScenarios, ", "))
	case p.rounds < 1:
		return fmt.Errorf("-rounds: %d is not a count of rounds (at least 1)", p.rounds)
	case !fileExists(p.a):
		return fmt.Errorf("-binary: %s not found", p.a)
	case !fileExists(p.b):
		return fmt.Errorf("-against: %s not found", p.b)
	}
	return nil
}

// runPair runs the rounds and prints each, then the medians.
func runPair(p pairRun) error {
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
		bins := [2]string{p.a, p.b}
		order := []int{0, 1}
		if i%2 == 1 {
			order = []int{1, 0}
		}
		cmds := make([]*exec.Cmd, 2)
		logs := make([]*bytes.Buffer, 2)
		outs := make([]string, 2)
		for _, k := range order {
			outs[k] = filepath.Join(work, fmt.Sprintf("round%d-%c.json", i+1, 'a'+k))
			args := append([]string{"-scenario", p.scenario, "-binary", bins[k], "-out", outs[k]}, p.pass...)
			cmds[k] = exec.Command(self, args...)
			logs[k] = &bytes.Buffer{}
			cmds[k].Stdout, cmds[k].Stderr = logs[k], logs[k]
			if err := cmds[k].Start(); err != nil {
				for _, c := range cmds {
					if c != nil && c.Process != nil {
						_ = c.Process.Kill()
						_ = c.Wait()
					}
				}
				return err
			}
		}
		var errs []error
		for k, c := range cmds {
			if err := c.Wait(); err != nil {
				errs = append(errs, fmt.Errorf("round %d, %s: %v: %s", i+1, bins[k], err, tail(logs[k].String(), 600)))
			}
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		var pair [2]*Report
		for k := range pair {
			if pair[k], err = readReport(outs[k]); err != nil {
				return fmt.Errorf("round %d: %w", i+1, err)
			}
		}
		rounds = append(rounds, pair)
		fmt.Printf("round %d of %d (%s started first)\n", i+1, p.rounds, filepath.Base(bins[order[0]]))
		printPair(pairRows([][2]*Report{pair}))
	}
	fmt.Printf("\nmedian over %d rounds: A %s, B %s\n", p.rounds, p.a, p.b)
	printPair(pairRows(rounds))
	fmt.Println("(compare CPU: both runs share the disk, so their latencies include each other's commits)")
	return nil
}

// pairRow is one figure of both binaries over the rounds, and the median
// of B/A (0 when A's figure was 0 every time).
type pairRow struct {
	metric, unit string
	a, b         []float64
	ratio        float64
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
		row.ratio = median(ratios)
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
		if r.ratio != 0 {
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

// tail is the end of a child's log, for its error.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}

// compareBinaries is -against: the exit code.
func compareBinaries(scenario, a, b string, rounds int) int {
	abs := func(p string) string {
		if x, err := filepath.Abs(p); err == nil {
			return x
		}
		return p
	}
	p := pairRun{scenario: scenario, a: abs(a), b: abs(b), rounds: rounds}
	// The scenario's own flags go to both runs as given.
	flag.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "rates", "rate", "live-for", "rows":
			p.pass = append(p.pass, "-"+f.Name, f.Value.String())
		}
	})
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
