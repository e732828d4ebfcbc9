package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// logLines collects the engine's JSON log, shown when the test fails.
type logLines struct{ testutil.SyncBuffer }

// count returns how many lines at level have every attribute of want.
func (l *logLines) count(level string, want map[string]string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["level"] != level {
			continue
		}
		ok := true
		for k, v := range want {
			ok = ok && fmt.Sprint(m[k]) == v
		}
		if ok {
			n++
		}
	}
	return n
}

// startLogged runs an engine whose log the test reads, until stop or the
// end of the test. stop returns how long the engine took to stop.
func startLogged(t *testing.T, cfg *config.Config) (e *Engine, logs *logLines, stop func() time.Duration) {
	t.Helper()
	logs = &logLines{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("engine log:\n%s", logs.String())
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	e, err := New(ctx, cfg, Options{Logger: slog.New(slog.NewJSONHandler(logs, nil)), Version: "test", PollInterval: 50 * time.Millisecond,
		Heartbeat: 200 * time.Millisecond, StatusInterval: 200 * time.Millisecond, SchemaInterval: 200 * time.Millisecond})
	if err != nil {
		cancel()
		t.Fatalf("engine: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var once sync.Once
	var took time.Duration
	stop = func() time.Duration {
		once.Do(func() {
			began := time.Now()
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("engine Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("engine did not stop within 30s")
			}
			took = time.Since(began)
		})
		return took
	}
	t.Cleanup(func() { stop() })
	return e, logs, stop
}

// readyz returns /readyz's status and body.
func readyz(t *testing.T, e *Engine) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + e.AdminAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape returns /metrics.
func scrape(t *testing.T, e *Engine) string {
	t.Helper()
	resp, err := http.Get("http://" + e.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// statusLoad inserts requests and moves each from open to in_progress,
// one transaction each, until stopped. When the status column is renamed
// under it, it goes on with the new name.
type statusLoad struct {
	created, changed atomic.Int64
	column           atomic.Value // the status column's name
	quit, done       chan struct{}
	err              error
}

func startStatusLoad(t *testing.T, dsn string) *statusLoad {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	l := &statusLoad{quit: make(chan struct{}), done: make(chan struct{})}
	l.column.Store("status")
	go func() {
		defer close(l.done)
		defer conn.Close(context.Background())
		ctx := context.Background()
		for {
			select {
			case <-l.quit:
				return
			case <-time.After(5 * time.Millisecond): // pacing, about 100 rows a second
			}
			var id int64
			if l.err = conn.QueryRow(ctx, `INSERT INTO requests (title, requester_id) VALUES ('load', 1) RETURNING id`).Scan(&id); l.err != nil {
				return
			}
			l.created.Add(1)
			for try := 0; ; try++ {
				col := l.column.Load().(string)
				_, l.err = conn.Exec(ctx, fmt.Sprintf(`UPDATE requests SET %s = 'in_progress', updated_by_id = 2 WHERE id = $1`, col), id)
				var pgErr *pgconn.PgError
				if errors.As(l.err, &pgErr) && pgErr.Code == "42703" && try == 0 { // undefined_column: renamed
					l.column.Store(map[string]string{"status": "state", "state": "status"}[col])
					continue
				}
				break
			}
			if l.err != nil {
				return
			}
			l.changed.Add(1)
		}
	}()
	return l
}

func (l *statusLoad) stop(t *testing.T) (created, changed int) {
	t.Helper()
	select {
	case <-l.quit:
	default:
		close(l.quit)
	}
	<-l.done
	if l.err != nil {
		t.Fatalf("load: %v", l.err)
	}
	return int(l.created.Load()), int(l.changed.Load())
}

// checkAllEvents waits until rc has a request.created for each of created
// rows, with its status, and a request.status_changed for each of
// changed, with both statuses; and no event twice.
func checkAllEvents(t *testing.T, rc *testutil.Receiver, created, changed int) {
	t.Helper()
	type data struct {
		ID             string  `json:"id"`
		Status         *string `json:"status"`
		PreviousStatus *string `json:"previousStatus"`
		NewStatus      *string `json:"newStatus"`
	}
	count := func() (map[string]int, []string) {
		seen, byType := map[string]bool{}, map[string]int{}
		var bad []string
		for _, r := range rc.Requests() {
			var env struct {
				ID    string `json:"id"`
				Event string `json:"event"`
				Data  data   `json:"data"`
			}
			if err := json.Unmarshal(r.Body, &env); err != nil {
				bad = append(bad, string(r.Body))
				continue
			}
			if seen[env.ID] {
				bad = append(bad, "twice: "+string(r.Body))
			}
			seen[env.ID] = true
			byType[env.Event]++
			d := env.Data
			switch env.Event {
			case "request.created":
				if d.Status == nil || *d.Status != "open" {
					bad = append(bad, string(r.Body))
				}
			case "request.status_changed":
				if d.PreviousStatus == nil || *d.PreviousStatus != "open" || d.NewStatus == nil || *d.NewStatus != "in_progress" {
					bad = append(bad, string(r.Body))
				}
			}
		}
		return byType, bad
	}
	testutil.Eventually(t, 60*time.Second, fmt.Sprintf("%d request.created and %d request.status_changed", created, changed), func() bool {
		n, _ := count()
		return n["request.created"] >= created && n["request.status_changed"] >= changed
	})
	n, bad := count()
	if n["request.created"] != created || n["request.status_changed"] != changed {
		t.Errorf("got %v, want %d created and %d status_changed", n, created, changed)
	}
	for _, b := range bad {
		t.Errorf("event with a missing or wrong field: %s", b)
	}
}

// stallConfig is the configuration of the stall tests; mapping is added
// as a top-level section.
func stallConfig(t *testing.T, db *pgtest.DB, rc, admin *testutil.Receiver, mapping string) *config.Config {
	notify := fmt.Sprintf("notify:\n  url: %s\n", admin.URL)
	return testConfigWith(t, db, adminSection+notify+mapping, "", sub("crm", rc.URL, "request.created, request.status_changed"))
}

const stateMapping = "mapping:\n  requests:\n    columns:\n      status: state\n"

// waitStalled waits until the engine reports the stall of the renamed
// status column everywhere it should: ERROR, /readyz, metric and one
// notification in the journal.
func waitStalled(t *testing.T, e *Engine, db *pgtest.DB, logs *logLines) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, "the stall reported at /readyz", func() bool {
		code, body := readyz(t, e)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "stalled") && strings.Contains(body, "mapping.requests.columns.status")
	})
	// The log line and the metric come right after /readyz changes, from
	// the same goroutine: waited for, not read at once.
	stallFields := map[string]string{"path": "mapping.requests.columns.status", "table": "public.requests", "column": "status"}
	testutil.Eventually(t, 10*time.Second, "the stall's ERROR line", func() bool { return logs.count("ERROR", stallFields) > 0 })
	if n := logs.count("ERROR", stallFields); n != 1 {
		t.Errorf("%d ERROR lines naming mapping.requests.columns.status, public.requests and status; want 1", n)
	}
	testutil.Eventually(t, 10*time.Second, `dzhook_stream_stalled{reason="mapping"} 1 at /metrics`, func() bool {
		return strings.Contains(scrape(t, e), `dzhook_stream_stalled{reason="mapping"} 1`)
	})
	testutil.Eventually(t, 10*time.Second, "the stall notification journaled", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.notifications WHERE kind = 'stream.stalled'`) == 1
	})
}

// TestRenamedColumnStallsUntilReload: a mapped column renamed under load
// stops the stream before the first change without it, loudly, and
// acknowledges nothing past it; a reload that does not fit leaves it
// stalled; a reload that maps the new name resumes from the same change,
// and every committed row gives its events, with their fields.
func TestRenamedColumnStallsUntilReload(t *testing.T) {
	db := newDB(t)
	rc, admin := testutil.NewReceiver(t), testutil.NewReceiver(t)
	e, logs, _ := startLogged(t, stallConfig(t, db, rc, admin, ""))
	load := startStatusLoad(t, db.DSN)
	t.Cleanup(func() { load.stop(t) })
	testutil.Eventually(t, 30*time.Second, "events streaming", func() bool { return len(rc.Requests()) >= 20 })

	db.Exec(t, `ALTER TABLE requests RENAME COLUMN status TO state`)
	waitStalled(t, e, db, logs)
	// Rows keep coming while the stream waits; none of them is
	// acknowledged: the slot stays before the rename.
	before := load.created.Load()
	testutil.Eventually(t, 30*time.Second, "rows committed while stalled", func() bool { return load.created.Load() >= before+20 })
	_, body := readyz(t, e)
	_, rest, _ := strings.Cut(body, "stalled at ")
	stalledAt, _, _ := strings.Cut(rest, ":")
	if n := queryInt(t, db, `SELECT count(*) FROM pg_replication_slots WHERE confirmed_flush_lsn > $1::pg_lsn`, stalledAt); n != 0 {
		t.Errorf("the slot was acknowledged past the stalled change's commit (%s)", stalledAt)
	}

	// A mapping that does not fit the table is rejected; still stalled.
	wrong := stallConfig(t, db, rc, admin, "mapping:\n  requests:\n    columns:\n      status: stat\n")
	if err := e.Reload(context.Background(), wrong); err == nil || !strings.Contains(err.Error(), `column "stat" not found`) ||
		!strings.Contains(err.Error(), "the stream stays stalled") {
		t.Errorf("reload of a mapping that does not fit while stalled: %v, want it refused, saying the stream stays stalled", err)
	}
	if code, _ := readyz(t, e); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz %d after a reload that does not fix the mapping, want 503", code)
	}

	if err := e.Reload(context.Background(), stallConfig(t, db, rc, admin, stateMapping)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "/readyz 200 after the fixing reload", func() bool {
		code, _ := readyz(t, e)
		return code == http.StatusOK
	})
	created, changed := load.stop(t)
	checkAllEvents(t, rc, created, changed)
	testutil.Eventually(t, 10*time.Second, `dzhook_stream_stalled{reason="mapping"} 0 at /metrics after the stall`, func() bool {
		return strings.Contains(scrape(t, e), `dzhook_stream_stalled{reason="mapping"} 0`)
	})
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.notifications WHERE kind = 'stream.stalled'`); n != 1 {
		t.Errorf("%d stall notifications, want 1 (one per stall)", n)
	}
}

// TestStalledStreamStopsAndRestartsFixed: a stalled engine stops
// promptly, and started again with the fixed mapping it resumes from the
// change it stopped at: nothing lost, nothing without its fields.
func TestStalledStreamStopsAndRestartsFixed(t *testing.T) {
	db := newDB(t)
	rc, admin := testutil.NewReceiver(t), testutil.NewReceiver(t)
	e, logs, stop := startLogged(t, stallConfig(t, db, rc, admin, ""))
	load := startStatusLoad(t, db.DSN)
	t.Cleanup(func() { load.stop(t) })
	testutil.Eventually(t, 30*time.Second, "events streaming", func() bool { return len(rc.Requests()) >= 20 })
	db.Exec(t, `ALTER TABLE requests RENAME COLUMN status TO state`)
	waitStalled(t, e, db, logs)
	created, changed := load.stop(t)
	if took := stop(); took > 10*time.Second {
		t.Errorf("a stalled engine took %s to stop", took)
	}
	startLogged(t, stallConfig(t, db, rc, admin, stateMapping))
	checkAllEvents(t, rc, created, changed)
}

// TestDroppedMappedTableIsLoud: a dropped mapped table is reported
// (ERROR, /readyz 503, metric, one notification) while the other tables
// go on streaming; it clears once the table is back in the publication.
func TestDroppedMappedTableIsLoud(t *testing.T) {
	db := newDB(t)
	rc, admin := testutil.NewReceiver(t), testutil.NewReceiver(t)
	e, logs, _ := startLogged(t, stallConfig(t, db, rc, admin, ""))
	// A standby beside it checks the tables too, and tells nobody: each
	// process sent its own notification.
	standby, _, _ := startLogged(t, stallConfig(t, db, rc, admin, ""))
	testutil.Eventually(t, 30*time.Second, "the second process on standby", func() bool { return standby.Stream().Stats().Standby })
	db.Exec(t, `DROP TABLE comments`)
	testutil.Eventually(t, 30*time.Second, "the dropped table at /readyz", func() bool {
		code, body := readyz(t, e)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "mapping.comments.table")
	})
	droppedFields := map[string]string{"path": "mapping.comments.table", "table": "public.comments"}
	testutil.Eventually(t, 10*time.Second, "the dropped table's ERROR line", func() bool { return logs.count("ERROR", droppedFields) > 0 })
	if n := logs.count("ERROR", droppedFields); n != 1 {
		t.Errorf("%d ERROR lines naming mapping.comments.table and public.comments, want 1", n)
	}
	testutil.Eventually(t, 10*time.Second, "dzhook_mapped_tables_unstreamed 1 at /metrics", func() bool {
		return strings.Contains(scrape(t, e), "dzhook_mapped_tables_unstreamed 1")
	})
	testutil.Eventually(t, 10*time.Second, "the notification journaled", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.notifications WHERE kind = 'stream.table_missing'`) == 1
	})
	db.Exec(t, `INSERT INTO requests (title, requester_id) VALUES ('still streaming', 1)`)
	rc.Wait(t, 1, 20*time.Second)

	// Recreated, but not yet in the publication: the same problem for
	// another reason. The log says so; nothing says it is streamed again,
	// and no second notification goes out.
	db.Exec(t, `CREATE TABLE comments (id bigserial PRIMARY KEY, request_id bigint, author_id bigint, body text, internal boolean, created_at timestamptz)`)
	testutil.Eventually(t, 30*time.Second, "the new reason logged", func() bool {
		return logs.count("ERROR", map[string]string{"path": "mapping.comments.table", "msg": "a mapped table is still not streamed, now for another reason"}) == 1
	})
	if code, _ := readyz(t, e); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz %d while the recreated table is out of the publication, want 503", code)
	}
	if n := logs.count("INFO", map[string]string{"msg": "a mapped table is streamed again"}); n != 0 {
		t.Errorf("%d lines say the table is streamed again while it is out of the publication", n)
	}

	db.Exec(t, `ALTER PUBLICATION dzhook ADD TABLE comments`)
	testutil.Eventually(t, 30*time.Second, "/readyz 200 once the table is back", func() bool {
		code, _ := readyz(t, e)
		return code == http.StatusOK
	})
	testutil.Eventually(t, 10*time.Second, "streamed again, said once", func() bool {
		return logs.count("INFO", map[string]string{"msg": "a mapped table is streamed again"}) == 1
	})
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.notifications WHERE kind = 'stream.table_missing'`); n != 1 {
		t.Errorf("%d notifications, want 1 (one per problem, not per check)", n)
	}
	// And that it cleared, once, by the process that streams.
	testutil.Eventually(t, 10*time.Second, "the table streamed again, notified", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.notifications WHERE kind = 'stream.table_streamed'`) >= 1
	})
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.notifications WHERE kind = 'stream.table_streamed'`); n != 1 {
		t.Errorf("%d stream.table_streamed notifications, want 1", n)
	}
}

// TestTruncateOfMappedTableWarns: pgoutput sends TRUNCATE, DZDESK has no
// event for it: a WARN names the table, and the stream goes on.
func TestTruncateOfMappedTableWarns(t *testing.T) {
	db := newDB(t)
	rc, admin := testutil.NewReceiver(t), testutil.NewReceiver(t)
	_, logs, _ := startLogged(t, stallConfig(t, db, rc, admin, ""))
	db.Exec(t, `TRUNCATE comments`, `INSERT INTO requests (title, requester_id) VALUES ('after the truncate', 1)`)
	rc.Wait(t, 1, 20*time.Second)
	if n := logs.count("WARN", map[string]string{"table": "public.comments", "msg": "TRUNCATE of a mapped table: no event fires for the rows it removed"}); n != 1 {
		t.Errorf("%d WARN lines naming the truncated public.comments, want 1", n)
	}
}

// TestDropAfterAReloadStalls: the mapping a reload replaced maps only
// changes from before the reload's ALTER. A column the new mapping needs,
// dropped later, stalls the stream; the replaced mapping, which fits the
// table again, used to map those changes silently, with the field taken
// from the column the reload had moved away from.
func TestDropAfterAReloadStalls(t *testing.T) {
	db := newDB(t)
	rc, admin := testutil.NewReceiver(t), testutil.NewReceiver(t)
	e, _, _ := startLogged(t, stallConfig(t, db, rc, admin, ""))
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'title one', 1)`)
	rc.Wait(t, 1, 30*time.Second)
	db.Exec(t, `ALTER TABLE requests ADD COLUMN subject text`)
	if err := e.Reload(context.Background(), stallConfig(t, db, rc, admin, "mapping:\n  requests:\n    columns:\n      title: subject\n")); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO requests (id, title, subject, requester_id) VALUES (2, 'title two', 'subject two', 1)`)
	rc.Wait(t, 2, 30*time.Second)
	if body := string(rc.Requests()[1].Body); !strings.Contains(body, `"title":"subject two"`) {
		t.Fatalf("after the reload: %s, want the title from subject", body)
	}
	db.Exec(t, `ALTER TABLE requests DROP COLUMN subject`,
		`INSERT INTO requests (id, title, requester_id) VALUES (3, 'title three', 1)`)
	testutil.Eventually(t, 30*time.Second, "the stall at /readyz", func() bool {
		code, body := readyz(t, e)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "mapping.requests.columns.title")
	})
	for _, r := range rc.Requests() {
		if strings.Contains(string(r.Body), "title three") {
			t.Errorf("a change without the mapped column subject was mapped with the replaced mapping: %s", r.Body)
		}
	}
}

// TestRestartAfterAMigration: dzhook stopped, the application writes, a
// migration renames a mapped column, more rows; started with the mapping
// written for the migrated schema, dzhook maps the rows from before the
// rename with the mapping then in force (recorded in the journal) and the
// others with the new one: every row's event, with its status. It used
// to stall for good at the first row from before the rename: the new
// mapping does not fit it, and the old one, which the live catalog no
// longer fits, could be neither started with nor reloaded.
func TestRestartAfterAMigration(t *testing.T) {
	db := newDB(t)
	rc, admin := testutil.NewReceiver(t), testutil.NewReceiver(t)
	_, _, stop := startLogged(t, stallConfig(t, db, rc, admin, ""))
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'before the stop', 1)`)
	rc.Wait(t, 1, 30*time.Second)
	stop()
	db.Exec(t,
		`INSERT INTO requests (id, title, status, requester_id) VALUES (2, 'written while dzhook was down', 'in_progress', 1)`,
		`ALTER TABLE requests RENAME COLUMN status TO state`,
		`INSERT INTO requests (id, title, state, requester_id) VALUES (3, 'after the migration', 'resolved', 1)`,
	)
	e, logs, _ := startLogged(t, stallConfig(t, db, rc, admin, stateMapping))
	// Waited for by content: the first run's event may come again (at
	// least once), so a count of three could be reached without them.
	for id, status := range map[string]string{"req_2": "in_progress", "req_3": "resolved"} {
		testutil.Eventually(t, 30*time.Second, "request.created for "+id+" with status "+status, func() bool {
			for _, r := range rc.Requests() {
				body := string(r.Body)
				if strings.Contains(body, `"id":"`+id+`"`) && strings.Contains(body, `"status":"`+status+`"`) {
					return true
				}
			}
			return false
		})
	}
	if code, body := readyz(t, e); code != http.StatusOK {
		t.Errorf("/readyz %d %s, want 200", code, body)
	}
	if n := logs.count("INFO", map[string]string{"table": "public.requests"}); n == 0 {
		t.Error("no INFO line saying the changes from before the rename were mapped with the mapping then in force")
	}
	// The rows from here on fit the new mapping: a later drop of the
	// renamed column is not mapped with the old mapping.
	db.Exec(t, `ALTER TABLE requests RENAME COLUMN state TO status`,
		`INSERT INTO requests (id, title, status, requester_id) VALUES (4, 'renamed back', 'open', 1)`)
	testutil.Eventually(t, 30*time.Second, "the stall at /readyz", func() bool {
		code, body := readyz(t, e)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "mapping.requests.columns.status")
	})
}

// TestRecreatedOutboxIsLoud: an outbox table dropped and created again
// (a migration) is out of the publication, and its rows are not streamed:
// that is said as for a mapped table (/readyz, an ERROR naming
// outbox.table), and it clears once the table is back. It was silent:
// only the mapped tables were checked.
func TestRecreatedOutboxIsLoud(t *testing.T) {
	db := newDB(t)
	rc, admin := testutil.NewReceiver(t), testutil.NewReceiver(t)
	cfg := testConfigWith(t, db, adminSection+fmt.Sprintf("notify:\n  url: %s\n", admin.URL)+"custom_events:\n  - name: order.shipped\n", "", sub("crm", rc.URL, "order.shipped"))
	e, logs, _ := startLogged(t, cfg)
	db.Exec(t, `INSERT INTO dzhook_outbox (event, payload) VALUES ('order.shipped', '{"order": "ord_1"}')`)
	rc.Wait(t, 1, 20*time.Second)
	db.Exec(t, `DROP TABLE dzhook_outbox`,
		`CREATE TABLE dzhook_outbox (id bigserial PRIMARY KEY, event text NOT NULL, payload jsonb NOT NULL DEFAULT '{}', key text, created_at timestamptz NOT NULL DEFAULT now())`)
	testutil.Eventually(t, 30*time.Second, "the recreated outbox at /readyz", func() bool {
		code, body := readyz(t, e)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "outbox.table")
	})
	if n := logs.count("ERROR", map[string]string{"path": "outbox.table", "table": "public.dzhook_outbox"}); n != 1 {
		t.Errorf("%d ERROR lines naming outbox.table, want 1", n)
	}
	db.Exec(t, `ALTER PUBLICATION dzhook ADD TABLE dzhook_outbox`,
		`INSERT INTO dzhook_outbox (event, payload) VALUES ('order.shipped', '{"order": "ord_2"}')`)
	rc.Wait(t, 2, 30*time.Second)
	testutil.Eventually(t, 30*time.Second, "/readyz 200 once the outbox is back", func() bool {
		code, _ := readyz(t, e)
		return code == http.StatusOK
	})
}

// TestOutboxWithoutItsColumnsRefused: an outbox table without event and
// payload (here made with other names) is refused by setup and the start,
// naming outbox.table and the columns. It passed both, and every row it
// received was rejected and acknowledged.
func TestOutboxWithoutItsColumnsRefused(t *testing.T) {
	db := newDB(t)
	db.Exec(t, `CREATE TABLE app_events (id bigserial PRIMARY KEY, event_type text NOT NULL, data jsonb NOT NULL)`)
	cfg := testConfigWith(t, db, "admin:\n  listen: \"\"\noutbox:\n  table: app_events\n", "", sub("crm", "http://127.0.0.1:1/x", "request.created"))
	const want = `outbox.table: outbox table public.app_events: no column "event", no column "payload"`
	if _, err := Setup(context.Background(), cfg, SetupOptions{}); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Setup = %v, want %q", err, want)
	}
	if e, err := New(context.Background(), cfg, Options{Logger: testutil.Logger(t)}); err == nil || !strings.Contains(err.Error(), want) {
		if err == nil {
			e.Close(context.Background())
		}
		t.Errorf("New = %v, want %q", err, want)
	}
}

// TestOutboxLosingItsColumnsIsLoud: an outbox column renamed while dzhook
// runs is said as a mapped table not streamed is (/readyz, an ERROR
// naming outbox.table and the column), and clears once it is back.
// Every row would otherwise be rejected without a word beyond each
// rejection.
func TestOutboxLosingItsColumnsIsLoud(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	e, logs, _ := startLogged(t, testConfigWith(t, db, adminSection, "", sub("crm", rc.URL, "request.created")))
	db.Exec(t, `ALTER TABLE dzhook_outbox RENAME COLUMN payload TO data`)
	testutil.Eventually(t, 30*time.Second, "the outbox without payload at /readyz", func() bool {
		code, body := readyz(t, e)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "outbox.table")
	})
	if n := logs.count("ERROR", map[string]string{"path": "outbox.table", "table": "public.dzhook_outbox",
		"problem": `outbox table public.dzhook_outbox: no column "payload"; outbox rows need a column event (text) and a column payload (json, jsonb or text), or every row is rejected`}); n != 1 {
		t.Errorf("%d ERROR lines naming outbox.table and its payload column, want 1", n)
	}
	db.Exec(t, `ALTER TABLE dzhook_outbox RENAME COLUMN data TO payload`)
	testutil.Eventually(t, 30*time.Second, "/readyz 200 once the column is back", func() bool {
		code, _ := readyz(t, e)
		return code == http.StatusOK
	})
}
