package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func report(figures ...any) *Report {
	r := &Report{}
	for i := 0; i < len(figures); i += 2 {
		r.Results = append(r.Results, Result{Metric: figures[i].(string), Value: figures[i+1].(float64), Unit: "s"})
	}
	return r
}

func TestPairRowsMedianOfRatios(t *testing.T) {
	rounds := [][2]*Report{
		{report("cpu", 1.0, "p99", 2.0, "only A", 1.0), report("cpu", 0.9, "p99", 2.0)},
		{report("cpu", 1.2, "p99", 0.0), report("cpu", 1.2, "p99", 1.0, "only B", 3.0)},
		{report("cpu", 1.0, "p99", 1.0), report("cpu", 0.5, "p99", 1.5)},
	}
	rows := pairRows(rounds)
	if len(rows) != 2 {
		t.Fatalf("rows %+v: want cpu and p99 only (a figure one side lacks is left out)", rows)
	}
	cpu, p99 := rows[0], rows[1]
	if cpu.metric != "cpu" || len(cpu.a) != 3 || cpu.ratio != 0.9 {
		t.Errorf("cpu %+v: want three rounds and the median of 0.9, 1, 0.5", cpu)
	}
	// A's 0 gives no ratio: the median is of the two others (1 and 1.5).
	if p99.metric != "p99" || len(p99.b) != 3 || p99.ratio != 1.25 {
		t.Errorf("p99 %+v: want the median 1.25 of the rounds where A is not 0", p99)
	}
	if got := pairRows(nil); got != nil {
		t.Errorf("no rounds: %+v", got)
	}
}

func TestCheckPairNamesTheFlag(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "dzhook")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ok := pairRun{scenario: "rates", a: bin, b: bin, rounds: 2}
	if err := checkPair(ok); err != nil {
		t.Fatalf("a valid pair refused: %v", err)
	}
	for _, tc := range []struct {
		change func(*pairRun)
		want   string
	}{
		{func(p *pairRun) { p.scenario = "catchup" }, `-against: scenario "catchup"`},
		{func(p *pairRun) { p.rounds = 0 }, "-rounds: 0"},
		{func(p *pairRun) { p.a = bin + ".missing" }, "-binary: " + bin + ".missing not found"},
		{func(p *pairRun) { p.b = bin + ".gone" }, "-against: " + bin + ".gone not found"},
	} {
		p := ok
		tc.change(&p)
		err := checkPair(p)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("checkPair(%+v) = %v, want it to say %q", p, err, tc.want)
		}
	}
}
