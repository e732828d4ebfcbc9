// Package e2e tests the real dzhook binary as a subprocess against a real
// PostgreSQL and real HTTP receivers: crashes (kill -9), restarts and
// memory under a dead receiver.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dzhook-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "dzhook")
	out, err := exec.Command("go", "build", "-o", binary, "github.com/dzdesk/dzhook/cmd/dzhook").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build dzhook: %v\n%s", err, out)
		os.Exit(1)
	}
	code := pgtest.Main(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

const secret = "e2e-test-secret-0123456789"

// process is a running dzhook binary.
type process struct {
	cmd  *exec.Cmd
	done chan error
	log  string
}

// startDzhook runs `dzhook run --config path`, logging to a file that is
// printed if the test fails.
func startDzhook(t *testing.T, config string) *process {
	t.Helper()
	dir := os.Getenv("DZHOOK_E2E_LOGS") // keep the logs there, for debugging
	if dir == "" {
		dir = t.TempDir()
	}
	logPath := filepath.Join(dir, fmt.Sprintf("dzhook-%d.log", time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "run", "--config", config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, done: make(chan error, 1), log: logPath}
	go func() { p.done <- cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("dzhook log %s:\n%s", logPath, tail(string(b), 60))
		}
	})
	return p
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// kill sends SIGKILL and waits.
func (p *process) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop sends SIGTERM and returns the exit error.
func (p *process) stop(t *testing.T) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("dzhook did not exit within 30s of SIGTERM")
		return nil
	}
}

// rssMB reads the process's resident memory.
func (p *process) rssMB() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

func writeConfig(t *testing.T, db *pgtest.DB, url, delivery string) string {
	return writeConfigWith(t, db, url, delivery, "    events: [request.created]\n")
}

// writeConfigWith is writeConfig with the subscription's lines after its
// url and before its secret (events, ordering, …).
func writeConfigWith(t *testing.T, db *pgtest.DB, url, delivery, subscription string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	yaml := fmt.Sprintf(`source:
  dsn: %s
journal:
  heartbeat: 200ms
delivery:
  allow_insecure_http: true
%s
admin:
  listen: ""
log:
  level: debug
subscriptions:
  - id: crm
    url: %s
%s    secret: %s
`, db.DSN, delivery, url, subscription, secret)
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// setup runs `dzhook setup`: the slot must exist before the load, since
// changes committed before it are not in the stream.
func setup(t *testing.T, config string) {
	t.Helper()
	out, err := exec.Command(binary, "setup", "--config", config).CombinedOutput()
	if err != nil {
		t.Fatalf("dzhook setup: %v\n%s", err, out)
	}
}

func newDB(t *testing.T) *pgtest.DB {
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema, `INSERT INTO users (id, email) VALUES (1, 'john@company.com')`)
	return db
}

// insertRequests commits n requests (ids from 1), perTx per transaction,
// pausing between transactions.
func insertRequests(ctx context.Context, db *pgtest.DB, n, perTx int, pause time.Duration) error {
	for i := 1; i <= n; i += perTx {
		last := min(i+perTx-1, n)
		err := db.Cluster.Exec(ctx, db.Name, fmt.Sprintf(
			`INSERT INTO requests (id, title, requester_id) SELECT g, 'request ' || g, 1 FROM generate_series(%d, %d) g`, i, last))
		if err != nil {
			return err
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	return nil
}

// received indexes what a receiver got by request id: the envelope ids
// seen for each.
func received(reqs []testutil.Request) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, r := range reqs {
		var env struct {
			ID   string
			Data struct{ ID string } `json:"data"`
		}
		if json.Unmarshal(r.Body, &env) != nil {
			continue
		}
		if out[env.Data.ID] == nil {
			out[env.Data.ID] = map[string]bool{}
		}
		out[env.Data.ID][env.ID] = true
	}
	return out
}

// queryRow runs a one-row query on a connection of its own (polling loops
// call it many times).
func queryRow(t *testing.T, db *pgtest.DB, sql string, dst any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, sql).Scan(dst); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryInt(t *testing.T, db *pgtest.DB, sql string) int {
	t.Helper()
	var n int
	queryRow(t, db, sql, &n)
	return n
}

// TestCrashKill9 kills dzhook with SIGKILL at random moments during a
// 5,000-row load, five times, restarting it each time. Every event reaches
// the receiver at least once with the same id each time, and the journal
// holds each delivery once.
func TestCrashKill9(t *testing.T) {
	const rows = 5000
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := writeConfig(t, db, rc.URL, "  retry_schedule: [0s, 300ms, 1s, 1s, 1s, 1s, 1s, 1s]")
	setup(t, cfg)
	p := startDzhook(t, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	loaded := make(chan error, 1)
	go func() { loaded <- insertRequests(ctx, db, rows, 5, 4*time.Millisecond) }()
	for range 5 {
		time.Sleep(time.Duration(300+rand.IntN(700)) * time.Millisecond) // a random moment
		p.kill()
		p = startDzhook(t, cfg)
	}
	if err := <-loaded; err != nil {
		t.Fatal(err)
	}
	waitOrDiagnose(t, db, 30*time.Second, fmt.Sprintf("all %d events at the receiver", rows), func() bool {
		return len(received(rc.Requests())) >= rows
	})
	got := received(rc.Requests())
	dups := 0
	for i := 1; i <= rows; i++ {
		ids := got[fmt.Sprintf("req_%d", i)]
		if len(ids) != 1 {
			t.Errorf("req_%d arrived under %d event ids %v, want exactly one stable id", i, len(ids), ids)
		}
	}
	dups = len(rc.Requests()) - rows
	testutil.Eventually(t, 60*time.Second, "every delivery journaled as delivered", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`) == rows
	})
	if n, distinct := queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries`), queryInt(t, db, `SELECT count(DISTINCT (event_id, subscription_id)) FROM dzhook.deliveries`); n != rows || distinct != rows {
		t.Errorf("journal holds %d deliveries (%d distinct pairs), want %d", n, distinct, rows)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.events`); n != rows {
		t.Errorf("journal holds %d events, want %d", n, rows)
	}
	if err := p.stop(t); err != nil {
		t.Errorf("dzhook exited with %v after SIGTERM, want 0", err)
	}
	t.Logf("%d events, 5 kills: %d requests received, %d duplicates (at-least-once), 0 missing", rows, len(rc.Requests()), dups)
}

// waitOrDiagnose is testutil.Eventually that, on a timeout, prints the
// journal's and the slot's state.
func waitOrDiagnose(t *testing.T, db *pgtest.DB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			conn := db.Connect(t)
			rows, _ := conn.Query(context.Background(), `SELECT state || ' owner=' || coalesce(owner, '-') || ' n=' || count(*) FROM dzhook.deliveries GROUP BY state, owner
				UNION ALL SELECT 'slot confirmed ' || confirmed_flush_lsn::text || ' active ' || coalesce(active_pid::text, '-') || ' now ' || pg_current_wal_lsn()::text FROM pg_replication_slots
				UNION ALL SELECT 'instance ' || id || ' heartbeat ' || (now() - heartbeat_at)::text FROM dzhook.instances
				UNION ALL SELECT 'checkpoint ' || lsn::text FROM dzhook.checkpoints
				UNION ALL SELECT 'requests ' || count(*) FROM requests
				UNION ALL SELECT 'missing from events: ' || coalesce(string_agg(r.id::text, ',' ORDER BY r.id), 'none') FROM requests r
				  WHERE NOT EXISTS (SELECT 1 FROM dzhook.events e WHERE convert_from(e.body, 'UTF8')::json->'data'->>'id' = 'req_' || r.id)
				UNION ALL SELECT 'events without delivery: ' || count(*) FROM dzhook.events e WHERE NOT EXISTS (SELECT 1 FROM dzhook.deliveries d WHERE d.event_id = e.id)
				UNION ALL (SELECT 'not delivered ' || d.id || ' ' || d.state || ' owner=' || coalesce(d.owner, '-') || ' attempts=' || d.attempts ||
					' claim=' || coalesce(d.claim, '-') || ' updated ' || (now() - d.updated_at)::text || ' journaled attempts: ' ||
					coalesce((SELECT string_agg(a.attempt || ':' || coalesce(a.status_code::text, a.error_class, '?') || '@' || coalesce(a.instance, '-') || ' ' || (now() - a.at)::text, ', ' ORDER BY a.attempt, a.at)
						FROM dzhook.attempts a WHERE a.delivery_id = d.id), 'none')
					FROM dzhook.deliveries d WHERE d.state <> 'delivered' ORDER BY d.id LIMIT 20)`)
			var lines []string
			for rows.Next() {
				var l string
				_ = rows.Scan(&l)
				lines = append(lines, l)
			}
			rows.Close()
			t.Fatalf("timed out after %s waiting for %s; state:\n%s", timeout, what, strings.Join(lines, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freePort returns a port nothing listens on.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func slotLSN(t *testing.T, db *pgtest.DB, expr string) pglogrepl.LSN {
	var s string
	queryRow(t, db, expr, &s)
	lsn, _ := pglogrepl.ParseLSN(s)
	return lsn
}

// TestBoundedMemory: with the receiver down and 100,000 events, dzhook's
// memory stays bounded and the slot keeps advancing (the work waits in the
// journal); when the receiver comes back, everything is delivered.
func TestBoundedMemory(t *testing.T) {
	rows := 100_000
	if v, err := strconv.Atoi(os.Getenv("DZHOOK_E2E_MEMORY_ROWS")); err == nil && v > 0 {
		rows = v
	}
	db := newDB(t)
	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/hook", port)
	cfg := writeConfig(t, db, url, "  retry_schedule: [0s, 2s, 3s, 5s, 5s, 5s, 5s, 5s, 5s, 5s, 5s, 5s, 5s, 5s, 5s, 5s, 5s, 5s, 5s, 5s]\n  queue_size: 256")
	setup(t, cfg)
	p := startDzhook(t, cfg)

	var peak float64
	var mu sync.Mutex
	sampling, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		for sampling.Err() == nil {
			if r := p.rssMB(); r > 0 {
				mu.Lock()
				peak = max(peak, r)
				mu.Unlock()
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	if err := insertRequests(context.Background(), db, rows, 500, 0); err != nil {
		t.Fatal(err)
	}
	end := slotLSN(t, db, `SELECT pg_current_wal_lsn()::text`)
	waitProgressing(t, "confirmed_flush_lsn past the end of the load while the receiver is down", int64(end), func() int64 {
		return int64(slotLSN(t, db, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'dzhook'`))
	})
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'pending'`); n == 0 {
		t.Errorf("no pending deliveries in the journal while the receiver is down")
	}

	// The receiver comes back.
	rc := testutil.NewReceiverAt(t, fmt.Sprintf("127.0.0.1:%d", port))
	waitProgressing(t, fmt.Sprintf("all %d deliveries delivered", rows), int64(rows), func() int64 {
		return int64(queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`))
	})
	if got := len(received(rc.Requests())); got != rows {
		t.Errorf("receiver got %d distinct requests, want %d", got, rows)
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d events with the receiver down: peak RSS %.1f MB", rows, peak)
	if peak > 200 {
		t.Errorf("peak RSS %.1f MB, want < 200 MB", peak)
	}
	if err := p.stop(t); err != nil {
		t.Errorf("dzhook exited with %v after SIGTERM", err)
	}
}

// progressStall is how long waitProgressing waits for the next progress.
const progressStall = time.Minute

// waitProgressing waits until get() reaches want, and fails once it has
// not moved for progressStall. The bound is on a stall, not on the
// whole: TestBoundedMemory's 100,000 deliveries took 46 s on a 2-core
// machine at load 6, and past its 3 minutes on a CI machine at load 14,
// while a stuck stream or delivery still fails within a minute. get is
// asked once a second: a count over the journal's 100,000 rows every
// 20 ms (testutil.Eventually's pace) was load of its own.
func waitProgressing(t *testing.T, what string, want int64, get func() int64) {
	t.Helper()
	got, moved := get(), time.Now()
	for got < want {
		if time.Since(moved) > progressStall {
			t.Fatalf("waiting for %s: at %d of %d, and no progress for %s", what, got, want, progressStall)
		}
		time.Sleep(time.Second) // the pace of the reads, not a wait for an event
		if n := get(); n > got {
			got, moved = n, time.Now()
		}
	}
}

// TestIdleWAL: with no DZDESK writes while another database of the cluster
// writes a lot of WAL (an idle hour's worth, compressed), the slot keeps
// little of it: the idle stream acknowledges keepalives.
func TestIdleWAL(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := writeConfig(t, db, rc.URL, "")
	setup(t, cfg)
	p := startDzhook(t, cfg)
	other := pgtest.NewDB(t)
	other.Exec(t, `CREATE TABLE noise (v text)`)
	start := slotLSN(t, db, `SELECT pg_current_wal_lsn()::text`)
	const written = 128 << 20
	for slotLSN(t, db, `SELECT pg_current_wal_lsn()::text`)-start < written {
		other.Exec(t, `INSERT INTO noise SELECT repeat(md5(g::text), 32) FROM generate_series(1, 20000) g`, `DELETE FROM noise`)
	}
	var retained int64
	testutil.Eventually(t, 90*time.Second, "the slot to retain less than 16 MiB", func() bool {
		queryRow(t, db, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'dzhook'`, &retained)
		return retained < 16<<20
	})
	t.Logf("idle: %d MiB of WAL written by another database; the slot retains %.1f MiB", written>>20, float64(retained)/(1<<20))
	if err := p.stop(t); err != nil {
		t.Errorf("dzhook exited with %v", err)
	}
}

// TestSIGTERMWithHungReceiver: with a receiver that never answers and
// deliveries queued behind the attempts in flight, dzhook stops on
// SIGTERM within the delivery timeout and a little more, starts no
// attempt after the signal, and leaves every delivery pending in the
// journal, released, attempted at most once. A stopping worker used to
// take queued deliveries at random and start an attempt with each, so the
// exit took several delivery timeouts.
func TestSIGTERMWithHungReceiver(t *testing.T) {
	const (
		rows    = 40
		workers = 8 // a stopping worker used to choose its stop first with probability 1/2
		timeout = 3 * time.Second
		slack   = 4 * time.Second
	)
	db := newDB(t)
	var got atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // first: Close waits for the handlers
	cfg := writeConfig(t, db, srv.URL, fmt.Sprintf("  timeout: %s\n  concurrency: %d", timeout, workers))
	setup(t, cfg)
	p := startDzhook(t, cfg)
	if err := insertRequests(context.Background(), db, rows, rows, 0); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "every worker's attempt in flight", func() bool { return got.Load() == workers })
	// And the whole transaction handed on (its events are journaled at
	// once, their deliveries held while in memory): a SIGTERM before the
	// stream handed the last row would leave it, rightly, to the next
	// start (nothing acknowledged), and this test counts all of them.
	testutil.Eventually(t, 30*time.Second, "every event journaled", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.events`) == rows
	})

	began := time.Now()
	if err := p.stop(t); err != nil {
		t.Errorf("dzhook exited with %v after SIGTERM, want 0", err)
	}
	if took := time.Since(began); took > timeout+slack {
		t.Errorf("dzhook took %s to stop after SIGTERM, want at most the delivery timeout %s + %s", took.Round(time.Millisecond), timeout, slack)
	}
	if n := got.Load(); n != workers {
		t.Errorf("receiver got %d requests, want the %d in flight at SIGTERM: %d attempts started after it", n, workers, n-workers)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'pending' AND owner IS NULL AND attempts <= 1`); n != rows {
		t.Errorf("%d deliveries pending, released, attempted at most once; want all %d", n, rows)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.attempts`); n != workers {
		t.Errorf("journal holds %d attempts, want the %d in flight at SIGTERM", n, workers)
	}
}
