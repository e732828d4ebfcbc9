package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// The scaleout scenario's workload (issue 17): scaleoutSubs subscriptions
// each matching every event, a receiver that takes scaleoutService to
// answer, scaleoutConcurrency attempts in flight per subscription and
// process. One process can then deliver at most
// 20 x 4 / 40 ms = 2,000 deliveries/s, three 6,000/s.
//
// 40 ms is close to fanout's fastReceiver (50 ms): while a receiver's
// attempts average under it, the streaming process waits for room in the
// subscription's queue (nothing goes to the journal for the standbys to
// claim); when the machine is loaded enough that they average more, the
// deliveries that find the queue full are journaled unowned and any
// process claims them. The mean attempt duration and the share claimed
// from the journal are reported, so a run says which of the two it saw.
const (
	scaleoutSubs        = 20
	scaleoutConcurrency = 4
	scaleoutService     = 40 * time.Millisecond
)

// scaleoutRun is one catch-up of the scaleout workload.
type scaleoutRun struct {
	label      string
	procs      int
	share      bool
	deliveries int
	took       time.Duration
	received   int64 // verified 200s, duplicates included
	distinct   int
	bad        int64 // signatures that did not verify
	// byProc: attempts journaled by each process (index = start order),
	// from dzhook.attempts.instance; nil when the column does not exist.
	byProc    []int64
	unmatched int64 // attempts whose instance is none of the processes
	attempts  int64 // all journaled attempts
	noteProc  string
	streaming int // index of the process that held the slot (-1: unknown)
	cpu       []float64
	logIssues []int // warning and error lines in each process's log, standby notice excluded
	claimed   int64 // deliveries claimed from the journal (claim set)
	// meanMS: the journaled attempts' mean duration; slow: how many took
	// 50 ms or more (fanout's fastReceiver, see scaleoutService).
	meanMS float64
	slow   int64
	// idleCPU, idlePG: with one process, after the catch-up, its CPU and
	// PostgreSQL's for it (walsender and journal backends) while nothing
	// happens, in % of a core: what an idle dzhook costs with 20
	// subscriptions (rates measures it with one). -1: not measured.
	idleCPU, idlePG float64
	started         time.Time // when the first process was started
}

func (r scaleoutRun) rate() float64 { return float64(r.deliveries) / r.took.Seconds() }

// scaleout runs the same catch-up (rows/25 events, each delivered to 20
// subscriptions by a receiver that takes 40 ms to answer) with one dzhook
// process, then with three started with the same configuration on the
// same journal (one streams, two wait as standbys for the slot and claim
// due work from the journal), and, when this dzhook knows the key, with
// three and delivery.share_first_attempts: true. Deliveries/s of each,
// the ratio three / one, and how many attempts each process made.
func (b *bench) scaleout(ctx context.Context) error {
	events := max(100, b.rows/25/100*100) // whole 100-row transactions: one process takes ~40 s, so the processes' start (~1 s until they know of each other) weighs little
	one, err := b.scaleoutOnce(ctx, "1 process", 1, false, events)
	if err != nil {
		return fmt.Errorf("1 process: %w", err)
	}
	three, err := b.scaleoutOnce(ctx, "3 processes", 3, false, events)
	if err != nil {
		return fmt.Errorf("3 processes: %w", err)
	}
	runs := []scaleoutRun{one, three}
	shareNote := ""
	if ok, why, err := b.knowsShareFirstAttempts(); err != nil {
		return err
	} else if ok {
		share, err := b.scaleoutOnce(ctx, "3 processes, share_first_attempts", 3, true, events)
		if err != nil {
			return fmt.Errorf("3 processes, share_first_attempts: %w", err)
		}
		runs = append(runs, share)
	} else {
		shareNote = "share_first_attempts run skipped: " + why
		fmt.Fprintf(os.Stderr, "   scaleout: %s\n", shareNote)
	}

	label := fmt.Sprintf("%d subscriptions x %d events, %s receiver, concurrency %d", scaleoutSubs, events, scaleoutService, scaleoutConcurrency)
	for _, r := range runs {
		note := fmt.Sprintf("%d deliveries in %.1f s; limit %d/s", r.deliveries, r.took.Seconds(),
			int(float64(r.procs*scaleoutSubs*scaleoutConcurrency)/scaleoutService.Seconds()))
		if r.procs > 1 && !r.share && shareNote != "" {
			note += "; " + shareNote
		}
		if r.byProc == nil && r.noteProc != "" {
			note += "; attempts by process not measured: " + r.noteProc
		}
		b.add(Result{Scenario: "scaleout", Metric: fmt.Sprintf("%s, %s: deliveries", r.label, label), Value: r.rate(), Unit: "deliveries/s", Note: note})
	}
	b.goal("scaleout", fmt.Sprintf("idle with %d subscriptions: dzhook CPU", scaleoutSubs), one.idleCPU, "% of a core", 0.5, false,
		fmt.Sprintf("one process, after its catch-up; PostgreSQL for it (walsender + journal backends): %.2f%% of a core", one.idlePG))
	for _, r := range runs[1:] {
		b.goal("scaleout", r.label+" / 1 process deliveries/s", r.rate()/one.rate(), "x", 2.5, true, "")
	}
	for _, r := range runs {
		b.goal("scaleout", r.label+": duplicate arrivals", float64(r.received-int64(r.distinct)), "deliveries", 1, false,
			fmt.Sprintf("%d verified 200s for %d distinct delivery ids; %d bad signatures", r.received, r.distinct, r.bad))
		b.add(Result{Scenario: "scaleout", Metric: r.label + ": deliveries claimed from the journal", Value: pct100(r.claimed, r.deliveries), Unit: "%",
			Note: fmt.Sprintf("%d of %d (claim set in dzhook.deliveries)", r.claimed, r.deliveries)})
		b.add(Result{Scenario: "scaleout", Metric: r.label + ": mean attempt duration", Value: r.meanMS, Unit: "ms",
			Note: fmt.Sprintf("%.1f%% of %d journaled attempts took 50 ms or more", pct100(r.slow, int(r.attempts)), r.attempts)})
		for i := range r.procs {
			role := ""
			switch {
			case r.procs == 1:
			case i == r.streaming:
				role = " (streaming)"
			case r.streaming >= 0:
				role = " (standby)"
			}
			name := fmt.Sprintf("%s: process %d%s", r.label, i+1, role)
			b.add(Result{Scenario: "scaleout", Metric: name + ": CPU", Value: r.cpu[i], Unit: "s",
				Note: fmt.Sprintf("%d warning/error lines in its log (the standby notice aside)", r.logIssues[i])})
			if r.byProc != nil {
				b.add(Result{Scenario: "scaleout", Metric: name + ": attempts", Value: float64(r.byProc[i]), Unit: "attempts",
					Note: fmt.Sprintf("%.1f%% of %d journaled attempts", pct100(r.byProc[i], int(r.attempts)), r.attempts)})
			}
		}
		if r.unmatched > 0 {
			b.add(Result{Scenario: "scaleout", Metric: r.label + ": attempts of no process started here", Value: float64(r.unmatched), Unit: "attempts"})
		}
	}
	return nil
}

func pct100(part int64, whole int) float64 {
	if whole <= 0 || part < 0 {
		return -1
	}
	return float64(part) / float64(whole) * 100
}

// knowsShareFirstAttempts asks the binary (dzhook validate, strict about
// unknown keys) whether it has delivery.share_first_attempts.
func (b *bench) knowsShareFirstAttempts() (bool, string, error) {
	rc, err := newReceiver()
	if err != nil {
		return false, "", err
	}
	defer rc.close()
	path, err := b.scaleoutConfig(b.cluster.DSN("postgres"), rc.url, true)
	if err != nil {
		return false, "", err
	}
	defer os.Remove(path)
	out, err := exec.Command(b.binary, "validate", "--config", path).CombinedOutput()
	if err == nil {
		return true, "", nil
	}
	if bytes.Contains(out, []byte("delivery.share_first_attempts: unknown key")) {
		return false, "this dzhook rejects delivery.share_first_attempts (unknown key)", nil
	}
	return false, "", fmt.Errorf("dzhook validate of the share_first_attempts configuration: %v\n%s", err, out)
}

// scaleoutConfig writes the scenario's configuration: writeConfig's, with
// the concurrency (and share_first_attempts) in its delivery section.
func (b *bench) scaleoutConfig(dsn, url string, share bool) (string, error) {
	var specs []subSpec
	for i := range scaleoutSubs {
		specs = append(specs, subSpec{id: fmt.Sprintf("s%02d", i), path: fmt.Sprintf("/s%02d", i)})
	}
	path, err := b.writeConfig(dsn, specs, url, "")
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	delivery := fmt.Sprintf("delivery:\n  concurrency: %d\n", scaleoutConcurrency)
	if share {
		delivery += "  share_first_attempts: true\n"
	}
	patched := strings.Replace(string(data), "delivery:\n", delivery, 1)
	if patched == string(data) {
		return "", errors.New("scaleout: the configuration has no delivery section to extend")
	}
	return path, os.WriteFile(path, []byte(patched), 0o600)
}

func (b *bench) scaleoutOnce(ctx context.Context, label string, procs int, share bool, events int) (scaleoutRun, error) {
	run := scaleoutRun{label: label, procs: procs, share: share, deliveries: events * scaleoutSubs, streaming: -1, idleCPU: -1, idlePG: -1}
	db, dsn, err := b.newDB(ctx)
	if err != nil {
		return run, err
	}
	defer b.cluster.DropDatabase(ctx, db)
	rc, err := slowReceiver(scaleoutService)
	if err != nil {
		return run, err
	}
	defer rc.close()
	config, err := b.scaleoutConfig(dsn, rc.url, share)
	if err != nil {
		return run, err
	}
	if err := b.setup(config); err != nil {
		return run, err
	}
	if err := b.load(ctx, db, 0, events, 100); err != nil {
		return run, err
	}

	reached := rc.expect(run.deliveries)
	exited := make(chan error, procs)
	var ds []*loggedDzhook
	stopAll := func() error {
		var wg sync.WaitGroup
		errs := make([]error, len(ds))
		for i, d := range ds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = d.stop()
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	start := time.Now()
	run.started = start
	for i := range procs {
		d, err := b.startLogged(config, i+1)
		if err != nil {
			_ = stopAll()
			return run, err
		}
		ds = append(ds, d)
		go func() {
			<-d.exited
			exited <- fmt.Errorf("process %d exited: %v", i+1, d.err)
		}()
	}
	select {
	case <-reached:
	case err := <-exited:
		_ = stopAll()
		return run, err
	case <-time.After(10 * time.Minute):
		first, _ := rc.arrivals()
		_ = stopAll()
		return run, fmt.Errorf("catch-up did not finish in 10 minutes (%d of %d)", len(first), run.deliveries)
	}
	run.took = time.Since(start)
	for _, d := range ds {
		cpu, _ := d.usage()
		run.cpu = append(run.cpu, cpu)
	}
	if procs == 1 {
		// Idle: 2 s for the outcomes' flush (held up to 1 s), then 10 s
		// with nothing to do.
		time.Sleep(2 * time.Second)
		const idleFor = 10 * time.Second
		cpu0, _ := ds[0].usage()
		pg0, err := b.pgCPU(ctx, db)
		if err != nil {
			_ = stopAll()
			return run, err
		}
		time.Sleep(idleFor)
		cpu1, _ := ds[0].usage()
		pg1, err := b.pgCPU(ctx, db)
		if err != nil {
			_ = stopAll()
			return run, err
		}
		run.idleCPU = (cpu1 - cpu0) / idleFor.Seconds() * 100
		run.idlePG = pg1.since(pg0) / idleFor.Seconds() * 100
	}
	// Stopped before the journal is read: each flushes its outcomes.
	if err := stopAll(); err != nil {
		return run, err
	}
	run.received, run.bad = rc.total.Load(), rc.bad.Load()
	first, _ := rc.arrivals()
	run.distinct = len(first)
	for i, d := range ds {
		standby, issues := d.logSummary()
		run.logIssues = append(run.logIssues, issues)
		if procs > 1 && !standby {
			if run.streaming == -1 {
				run.streaming = i
			} else {
				run.streaming = -2 // two never stood by: unknown
			}
		}
	}
	if run.streaming < 0 {
		run.streaming = -1
	}
	if err := b.scaleoutJournal(ctx, journalDSN(config, dsn), ds, &run); err != nil {
		return run, err
	}
	return run, nil
}

// scaleoutJournal reads who made the attempts (dzhook.attempts.instance,
// journal version 10 on) and how many deliveries were claimed.
func (b *bench) scaleoutJournal(ctx context.Context, dsn string, ds []*loggedDzhook, run *scaleoutRun) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, `SELECT count(claim) FROM dzhook.deliveries`).Scan(&run.claimed); err != nil {
		return err
	}
	if err := conn.QueryRow(ctx, `SELECT count(*), coalesce(avg(duration_ms), 0), count(*) FILTER (WHERE duration_ms >= 50) FROM dzhook.attempts`).
		Scan(&run.attempts, &run.meanMS, &run.slow); err != nil {
		return err
	}
	var has bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns
		WHERE table_schema = 'dzhook' AND table_name = 'attempts' AND column_name = 'instance')`).Scan(&has); err != nil {
		return err
	}
	if !has {
		run.noteProc = "dzhook.attempts has no instance column (journal migration 0010 not in this dzhook)"
		fmt.Fprintf(os.Stderr, "   scaleout: %s: %s\n", run.label, run.noteProc)
		return nil
	}
	if b.verbose {
		if err := scaleoutTimeline(ctx, conn, ds, run); err != nil {
			return err
		}
	}
	rows, err := conn.Query(ctx, `SELECT coalesce(instance::text, ''), count(*) FROM dzhook.attempts GROUP BY 1`)
	if err != nil {
		return err
	}
	defer rows.Close()
	run.byProc = make([]int64, len(ds))
	for rows.Next() {
		var instance string
		var n int64
		if err := rows.Scan(&instance, &n); err != nil {
			return err
		}
		if i := processOf(instance, ds); i >= 0 {
			run.byProc[i] += n
		} else {
			run.unmatched += n
		}
	}
	return rows.Err()
}

// scaleoutTimeline shows (with -v) the attempts each process started in
// each half second since the processes were started, with their mean
// duration: where a run lost time (a process that joined late, a pause
// while work moved between processes).
func scaleoutTimeline(ctx context.Context, conn *pgx.Conn, ds []*loggedDzhook, run *scaleoutRun) error {
	rows, err := conn.Query(ctx, `SELECT floor(extract(epoch FROM at - $1::timestamptz) * 2)::int, coalesce(instance::text, ''), count(*), round(avg(duration_ms))::int
		  FROM dzhook.attempts GROUP BY 1, 2 ORDER BY 1, 2`, run.started)
	if err != nil {
		return err
	}
	defer rows.Close()
	line := map[int]string{}
	var halves []int
	for rows.Next() {
		var half, n, ms int
		var instance string
		if err := rows.Scan(&half, &instance, &n, &ms); err != nil {
			return err
		}
		if _, ok := line[half]; !ok {
			halves = append(halves, half)
		}
		line[half] += fmt.Sprintf("  process %d: %d (%d ms)", processOf(instance, ds)+1, n, ms)
	}
	for _, h := range halves {
		fmt.Fprintf(os.Stderr, "   scaleout: %s: %4.1f s%s\n", run.label, float64(h)/2, line[h])
	}
	return rows.Err()
}

// journalDSN is the journal's DSN in a configuration writeConfig wrote:
// journal.dsn with -separate-journal, else the source's.
func journalDSN(config, source string) string {
	data, err := os.ReadFile(config)
	if err != nil {
		return source
	}
	const key = "journal:\n  dsn: "
	s := string(data)
	i := strings.Index(s, key)
	if i < 0 {
		return source
	}
	dsn, _, _ := strings.Cut(s[i+len(key):], "\n")
	return dsn
}

// processOf finds the process of an instance id, hostname-pid-random
// (engine.newInstanceID): -1 when it is none of ds.
func processOf(instance string, ds []*loggedDzhook) int {
	f := strings.Split(instance, "-")
	if len(f) < 3 {
		return -1
	}
	pid, err := strconv.Atoi(f[len(f)-2])
	if err != nil {
		return -1
	}
	for i, d := range ds {
		if d.cmd.Process.Pid == pid {
			return i
		}
	}
	return -1
}

// loggedDzhook is a dzhook subprocess whose log is kept in a file (and
// shown, prefixed with its number, with -v).
type loggedDzhook struct {
	*dzhook
	log string
	// exited is closed when the process has exited, with err its
	// outcome (done carries it too, for stop).
	exited chan struct{}
	err    error
}

// startLogged is start for one of several processes: its log goes to a
// file, so the scenario can tell which process stood by.
func (b *bench) startLogged(config string, n int) (*loggedDzhook, error) {
	path := filepath.Join(b.work, fmt.Sprintf("scaleout-%d-%d.log", time.Now().UnixNano(), n))
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(b.binary, "run", "--config", config)
	cmd.Env = os.Environ()
	if g := os.Getenv("BENCH_GOGC"); g != "" {
		cmd.Env = append(cmd.Env, "GOGC="+g)
	}
	var out io.Writer = f
	if b.verbose {
		out = io.MultiWriter(f, &prefixWriter{prefix: fmt.Sprintf("[dzhook %d] ", n), w: os.Stderr})
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	d := &loggedDzhook{dzhook: &dzhook{cmd: cmd, done: make(chan error, 1)}, log: path, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		f.Close()
		close(d.exited)
		d.done <- d.err
	}()
	return d, nil
}

// logSummary reads the process's log (once it has exited): whether it
// waited as a standby, and how many other warning or error lines it has.
func (d *loggedDzhook) logSummary() (standby bool, issues int) {
	data, err := os.ReadFile(d.log)
	if err != nil {
		return false, -1
	}
	for _, l := range strings.Split(string(data), "\n") {
		switch {
		case strings.Contains(l, "standby: another process holds the replication slot"):
			standby = true
		case strings.Contains(l, "level=WARN"), strings.Contains(l, "level=ERROR"),
			strings.Contains(l, `"level":"WARN"`), strings.Contains(l, `"level":"ERROR"`):
			issues++
		}
	}
	return standby, issues
}

// prefixWriter writes each line with a prefix.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	w      io.Writer
	rest   []byte
}

func (p *prefixWriter) Write(data []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rest = append(p.rest, data...)
	for {
		i := bytes.IndexByte(p.rest, '\n')
		if i < 0 {
			break
		}
		if _, err := fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.rest[:i]); err != nil {
			return len(data), err
		}
		p.rest = p.rest[i+1:]
	}
	return len(data), nil
}
