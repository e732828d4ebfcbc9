package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
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

func TestPairRowsKeepsRoundsThatHaveTheFigure(t *testing.T) {
	rounds := [][2]*Report{
		{report("cpu", 2.0, "idle", 0.0), report("cpu", 1.0, "idle", 0.3)},
		{report("cpu", 1.0), report("lat", 9.0)}, // no cpu for B: this round is left out of cpu
		{report("cpu", 1.0, "idle", 0.1), report("cpu", 1.0, "idle", 0.0)},
	}
	rows := pairRows(rounds)
	if len(rows) != 2 {
		t.Fatalf("rows %+v: want cpu and idle", rows)
	}
	cpu, idle := rows[0], rows[1]
	if len(cpu.a) != 2 || cpu.ratio != 0.75 || !cpu.hasRatio {
		t.Errorf("cpu %+v: want rounds 1 and 3 only, median of 0.5 and 1", cpu)
	}
	// A's idle was 0 in round 1 (no ratio), B's 0 in round 3: a ratio of 0
	// is a figure, not "none".
	if len(idle.a) != 2 || idle.ratio != 0 || !idle.hasRatio {
		t.Errorf("idle %+v: want one ratio, 0", idle)
	}
	if only := pairRows(rounds[:1]); len(only) != 2 || only[1].hasRatio {
		t.Errorf("round 1 alone: %+v: idle has no ratio (A was 0)", only)
	}
}

func TestTailCutsAtACharacter(t *testing.T) {
	// The last 4 bytes of "wörld" begin inside the ö: the cut moves on to
	// the next character.
	if got := tail("héllo wörld", 4); got != "…rld" {
		t.Errorf("tail = %q, want …rld", got)
	}
	if got := tail("héllo wörld", 5); got != "…örld" {
		t.Errorf("tail = %q, want …örld", got)
	}
	if got := tail("  short  ", 100); got != "short" {
		t.Errorf("tail of a short log = %q", got)
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
		{func(p *pairRun) { p.scenario = "catchup" }, `rates scenario only (its CPU per event), not "catchup"`},
		{func(p *pairRun) { p.scenario = "live" }, `not "live"`},
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

func TestPairFlagsPassesTheScenariosOwn(t *testing.T) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.String("scenario", "all", "")
	fs.String("rates", "", "")
	fs.Int("rows", 100_000, "")
	fs.Bool("separate-journal", false, "")
	fs.String("out", "", "")
	fs.Bool("v", false, "")
	fs.Int("rate", 1000, "")
	fs.String("against", "", "")
	fs.Int("rounds", 3, "")
	if err := fs.Parse([]string{"-scenario", "rates", "-rates", "500,2000", "-rows", "2000", "-separate-journal", "-against", "b", "-rounds", "2"}); err != nil {
		t.Fatal(err)
	}
	pass, refused := pairFlags(fs)
	if want := []string{"-rates", "500,2000", "-rows", "2000", "-separate-journal=true"}; !slices.Equal(pass, want) {
		t.Errorf("passed %q, want %q (the scenario's flags as given; -scenario, -against and -rounds are the pair's)", pass, want)
	}
	if len(refused) != 0 {
		t.Errorf("refused %q with none of the refused flags set", refused)
	}
	if err := fs.Parse([]string{"-out", "x.json", "-v", "-rate", "10", "-rows", "500"}); err != nil {
		t.Fatal(err)
	}
	pass, refused = pairFlags(fs)
	if want := []string{"-out", "-rate", "-v"}; !slices.Equal(refused, want) {
		t.Errorf("refused %q, want %q", refused, want)
	}
	if !slices.Contains(pass, "500") {
		t.Errorf("passed %q: -rows 500 is still the scenario's", pass)
	}
}

// A run that fails stops the other with SIGTERM (so that it removes its
// throwaway cluster), not a kill; the error names the one that failed.
// The bench processes are stood in for by a script.
func TestRunRoundInterruptsTheOther(t *testing.T) {
	dir := t.TempDir()
	ready, interrupted := filepath.Join(dir, "ready"), filepath.Join(dir, "interrupted")
	// $4 is -binary's value: A fails once B is ready to be interrupted;
	// B waits, and records the interrupt it takes.
	self := filepath.Join(dir, "bench.sh")
	script := `#!/bin/sh
case "$4" in
*/a) while [ ! -e ` + ready + ` ]; do sleep 0.02; done; echo "boom in A" >&2; exit 1;;
*) trap 'touch ` + interrupted + `; exit 143' TERM; touch ` + ready + `; while :; do sleep 0.02; done;;
esac
`
	if err := os.WriteFile(self, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	p := pairRun{scenario: "rates", a: filepath.Join(dir, "a"), b: filepath.Join(dir, "b"), rounds: 1}
	done := make(chan error, 1)
	go func() { _, err := runRound(context.Background(), self, dir, p, 0); done <- err }()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the round did not end within 30 s of A's failure")
	}
	if err == nil || !strings.Contains(err.Error(), "boom in A") || strings.Contains(err.Error(), p.b+":") {
		t.Errorf("round error %v: want A's failure and its log, not B's", err)
	}
	if _, statErr := os.Stat(interrupted); statErr != nil {
		t.Errorf("B was not interrupted (killed instead?): %v", statErr)
	}
}
