// Command dzhook-bench measures dzhook beside the limits of the machine it
// runs on, in one run: a minimal pglogrepl loop (the stream's limit) and a
// keep-alive Go client against the benchmark's receiver (the receiver's
// limit), then dzhook itself as a subprocess: catch-up, paced live
// latency, fan-out, isolation, ordered delivery and live latency during a
// replay, and delivery throughput of one and of three processes sharing a
// journal, with its memory and CPU. It starts a
// throwaway PostgreSQL 15 (fsync on) and uses the reference schema.
//
//	go run ./cmd/dzhook-bench [-scenario all|stream|receiver|catchup|live|rates|fanout|isolation|ordering|replay|scaleout]
//	go run ./cmd/dzhook-bench -scenario rates -binary A -against B [-rounds 3] [-rates 500,2000]
//
// It prints a table and writes bench/results.json. See BENCHMARKS.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dzdesk/dzhook/internal/pgtest"
)

// Result is one measured figure.
type Result struct {
	Scenario string  `json:"scenario"`
	Metric   string  `json:"metric"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Goal     string  `json:"goal,omitempty"`
	Met      *bool   `json:"met,omitempty"`
	Note     string  `json:"note,omitempty"`
	// Run is the scenario whose run produced the figure (resources come
	// from several).
	Run string `json:"run"`
}

// Report is bench/results.json.
type Report struct {
	StartedAt time.Time `json:"started_at"`
	Machine   string    `json:"machine"`
	Go        string    `json:"go"`
	Postgres  string    `json:"postgres"`
	Settings  string    `json:"settings"`
	Results   []Result  `json:"results"`
}

type bench struct {
	cluster *pgtest.Cluster
	binary  string
	work    string
	report  *Report
	rows    int
	rate    int
	liveFor time.Duration
	verbose bool
	profile string

	separateJournal bool
	journals        map[string]string // -separate-journal: source DSN -> its journal's DSN

	current     string // the scenario running now
	streamLimit float64
	receiverMax float64
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == floorArg {
		runFloorClient(os.Args[2:])
		return
	}
	os.Exit(benchMain())
}

// benchMain is the bench: the exit code. It returns rather than exits so
// that the cluster and the work directory are removed after a failure
// too; an interrupt (SIGINT, SIGTERM: a cancelled -against round, a
// Ctrl-C) removes them before the process ends.
func benchMain() int {
	scenario := flag.String("scenario", "all", "which scenario: all, stream, receiver, catchup, live, rates, fanout, isolation, ordering, replay, scaleout")
	onlyRates := flag.String("rates", "", "the rates scenario's rates, comma-separated (default 100,500,1000,2000)")
	out := flag.String("out", "bench/results.json", "where to write the results (merged with earlier scenarios)")
	binary := flag.String("binary", "bin/dzhook", "the dzhook binary to measure")
	rows := flag.Int("rows", 100_000, "rows of the catch-up workload (other scenarios scale theirs from it; scaleout: rows/25 events)")
	rate := flag.Int("rate", 1000, "transactions/s of the live scenario")
	liveFor := flag.Duration("live-for", 30*time.Second, "duration of the live scenario")
	verbose := flag.Bool("v", false, "show dzhook's log (at BENCH_LOG_LEVEL, default warn) and the scaleout scenario's attempts per process and half second")
	separate := flag.Bool("separate-journal", false, "put the journal in a database of its own (journal.dsn)")
	profile := flag.String("cpuprofile", "", "write dzhook's CPU profile of the last run to this `file`")
	against := flag.String("against", "", "compare: run the rates scenario on -binary and on this `binary` at the same time, -rounds times, and print B's CPU figures beside A's")
	rounds := flag.Int("rounds", 3, "rounds of an -against comparison")
	flag.StringVar(&receiverKind, "receiver", receiverKind, "the receiver's HTTP server: lean (the bench's own HTTP/1.1 loop) or net/http (the standard library's, as in runs before 2026-12-06's eleventh stop)")
	flag.Parse()
	// Sizes a scenario divides by, checked before anything starts.
	switch {
	case *rows < 100:
		fmt.Fprintf(os.Stderr, "dzhook-bench: -rows: %d: at least 100 (other scenarios take a share of it)\n", *rows)
		return 2
	case *rate < 1:
		fmt.Fprintf(os.Stderr, "dzhook-bench: -rate: %d is not a rate (transactions/s, at least 1)\n", *rate)
		return 2
	case *liveFor < time.Second:
		fmt.Fprintf(os.Stderr, "dzhook-bench: -live-for: %s: at least 1s\n", *liveFor)
		return 2
	case !slices.Contains(receiverKinds, receiverKind):
		fmt.Fprintf(os.Stderr, "dzhook-bench: -receiver: %q: one of %s\n", receiverKind, strings.Join(receiverKinds, ", "))
		return 2
	}
	if *onlyRates != "" {
		rateSteps = pickRates(*onlyRates)
	}
	if *against != "" {
		return compareBinaries(*scenario, *binary, *against, *rounds)
	}

	abs, err := filepath.Abs(*binary)
	if err != nil || !fileExists(abs) {
		fmt.Fprintf(os.Stderr, "dzhook-bench: %s not found: run `make build` first\n", *binary)
		return 2
	}
	cluster, err := pgtest.Start(pgtest.Options{Settings: map[string]string{
		"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on", "shared_buffers": "256MB", "max_wal_size": "4GB",
	}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "dzhook-bench: %v\n", err)
		return 1
	}
	work, _ := os.MkdirTemp("", "dzhook-bench-")
	// The cluster and the work directory go once, whoever gets there
	// first: the return below, or an interrupt (SIGINT, SIGTERM: -against
	// stops a run with SIGTERM and kills it a minute later), since the
	// scenarios' loops do not all watch a context. The dzhook processes
	// they started die with this one (Pdeathsig).
	var cleanOnce sync.Once
	cleanup := func() {
		cleanOnce.Do(func() {
			cluster.Close()
			_ = os.RemoveAll(work)
		})
	}
	defer cleanup()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "dzhook-bench: %v: removing the throwaway cluster and stopping\n", sig)
		cleanup()
		code := 130 // 128 + SIGINT
		if sig == syscall.SIGTERM {
			code = 143
		}
		os.Exit(code)
	}()

	where := "in the source database"
	if *separate {
		where = "in a database of its own (-separate-journal)"
	}
	b := &bench{cluster: cluster, binary: abs, work: work, rows: *rows, rate: *rate, liveFor: *liveFor, verbose: *verbose, profile: *profile, separateJournal: *separate,
		report: &Report{StartedAt: time.Now().UTC(), Machine: machine(), Go: runtime.Version(), Postgres: pgVersion(cluster),
			Settings: "PostgreSQL fsync=on synchronous_commit=on; dzhook journal " + where + "; 1 subscription unless stated; receiver " + receiverKind}}
	scenarios := []struct {
		name string
		run  func(context.Context) error
	}{
		{"stream", b.stream}, {"receiver", b.receiverLimit}, {"catchup", b.catchup},
		{"live", b.live}, {"rates", b.rates}, {"fanout", b.fanout}, {"isolation", b.isolation}, {"ordering", b.ordering}, {"replay", b.replay},
		{"scaleout", b.scaleout},
	}
	ctx := context.Background()
	ran := false
	for _, s := range scenarios {
		if *scenario != "all" && *scenario != s.name {
			continue
		}
		ran = true
		b.current = s.name
		fmt.Fprintf(os.Stderr, "== %s\n", s.name)
		if err := s.run(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "dzhook-bench: %s: %v\n", s.name, err)
			return 1
		}
	}
	if !ran {
		fmt.Fprintf(os.Stderr, "dzhook-bench: unknown scenario %q\n", *scenario)
		return 2
	}
	b.print()
	if err := b.write(*out); err != nil {
		fmt.Fprintf(os.Stderr, "dzhook-bench: %v\n", err)
		return 1
	}
	return 0
}

func (b *bench) add(r Result) {
	r.Run = b.current
	b.report.Results = append(b.report.Results, r)
	fmt.Fprintf(os.Stderr, "   %-10s %-44s %12.2f %s\n", r.Scenario, r.Metric, r.Value, r.Unit)
}

// goal records a figure with its goal; higher says whether bigger is
// better.
func (b *bench) goal(scenario, metric string, v float64, unit string, target float64, higher bool, note string) {
	met := v >= target
	goal := fmt.Sprintf(">= %g", target)
	if !higher {
		met = v < target
		goal = fmt.Sprintf("< %g", target)
	}
	b.add(Result{Scenario: scenario, Metric: metric, Value: v, Unit: unit, Goal: goal, Met: &met, Note: note})
}

func (b *bench) print() {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SCENARIO\tMETRIC\tVALUE\tUNIT\tGOAL\tMET\n")
	for _, r := range b.report.Results {
		met := ""
		if r.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*r.Met]
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%s\t%s\t%s\n", r.Scenario, r.Metric, r.Value, r.Unit, r.Goal, met)
	}
	_ = tw.Flush()
}

// write merges this run's results into the file: a scenario run alone
// replaces only its own rows.
func (b *bench) write(path string) error {
	var old Report
	if data, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(data, &old)
	}
	ran := map[string]bool{}
	for _, r := range b.report.Results {
		ran[r.Run] = true
	}
	var merged []Result
	for _, r := range old.Results {
		if !ran[r.Run] && r.Run != "" {
			merged = append(merged, r)
		}
	}
	b.report.Results = append(merged, b.report.Results...)
	order := []string{"stream", "receiver", "catchup", "live", "rates", "fanout", "isolation", "ordering", "replay", "scaleout", "resources"}
	slices.SortStableFunc(b.report.Results, func(x, y Result) int {
		return slices.Index(order, x.Scenario) - slices.Index(order, y.Scenario)
	})
	data, err := json.MarshalIndent(b.report, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		fmt.Sscanf(strings.SplitN(string(data), "\n", 2)[0], "MemTotal: %d kB", &kb)
		mem = fmt.Sprintf(", %.0f GiB", float64(kb)/(1<<20))
	}
	return fmt.Sprintf("%d cores (%s)%s, %s/%s", runtime.NumCPU(), model, mem, runtime.GOOS, runtime.GOARCH)
}

func pgVersion(c *pgtest.Cluster) string {
	out, err := exec.Command("sh", "-c", "psql --version").Output()
	if err != nil {
		return "PostgreSQL 15"
	}
	return strings.TrimSpace(string(out))
}
