package cdc

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

var referenceTables = []string{"public.users", "public.requests", "public.comments", "public.request_slas"}

// recorder is a Handler that keeps everything it is handed and, with
// autoAck, acknowledges each transaction at once.
type recorder struct {
	mu      sync.Mutex
	changes []*Change
	commits []Commit
	autoAck bool
	stream  *Stream
	changed chan struct{}
	// gate, when set, holds every change until it is closed: the
	// handler's backpressure; blocked is signalled when a change waits
	// there. delay is each change's handling time.
	gate    chan struct{}
	blocked chan struct{}
	delay   time.Duration
}

// hold sets a gate on the changes from now on and returns it.
func (r *recorder) hold() chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gate = make(chan struct{})
	return r.gate
}

// heldByReader waits until a change is held at r's gate and checks that
// the reader itself is processing it.
func heldByReader(t *testing.T, s *Stream, r *recorder) {
	t.Helper()
	select {
	case <-r.blocked:
	case <-time.After(30 * time.Second):
		t.Fatal("no change reached the handler")
	}
	if s.inlining.Load() == nil {
		t.Fatal("the reader is not processing the blocked change itself")
	}
}

// warmUp streams one transaction through s and waits for it, so the
// session's start is processed and the processor is idle.
func warmUp(t *testing.T, db *pgtest.DB, r *recorder) {
	t.Helper()
	_, co := r.snapshot()
	db.Exec(t, `INSERT INTO users (id, email) VALUES (-1, 'warm@x')`)
	r.waitCommits(t, len(co)+1)
}

func newRecorder(autoAck bool) *recorder {
	return &recorder{autoAck: autoAck, changed: make(chan struct{}, 1), blocked: make(chan struct{}, 1)}
}

func (r *recorder) HandleChange(ctx context.Context, c *Change) error {
	r.mu.Lock()
	gate := r.gate
	r.mu.Unlock()
	if gate != nil {
		select {
		case r.blocked <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if r.delay > 0 {
		time.Sleep(r.delay) // a handler's work, not a wait for a condition
	}
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
	return nil
}

func (r *recorder) HandleCommit(_ context.Context, c Commit) error {
	r.mu.Lock()
	r.commits = append(r.commits, c)
	r.mu.Unlock()
	if r.autoAck {
		r.stream.Ack(c.CommitLSN)
	}
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return nil
}

// waitChanges waits until at least n changes arrived.
func (r *recorder) waitChanges(t *testing.T, n int) []*Change {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		ch, _ := r.snapshot()
		if len(ch) >= n {
			return ch
		}
		select {
		case <-r.changed:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %d changes; got %d", n, len(ch))
		}
	}
}

func (r *recorder) snapshot() ([]*Change, []Commit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Change(nil), r.changes...), append([]Commit(nil), r.commits...)
}

// waitCommits waits until at least n transactions arrived.
func (r *recorder) waitCommits(t *testing.T, n int) ([]*Change, []Commit) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		ch, co := r.snapshot()
		if len(co) >= n {
			return ch, co
		}
		select {
		case <-r.changed:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %d transactions; got %d", n, len(co))
		}
	}
}

// setupRef creates the reference schema, publication and slot in a fresh
// database.
func setupRef(t *testing.T) *pgtest.DB {
	t.Helper()
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema)
	runSetup(t, db, SetupConfig{Slot: "dzhook", Publication: "dzhook", Tables: referenceTables,
		FullIdentity: []string{"public.users", "public.requests", "public.request_slas"}})
	return db
}

func runSetup(t *testing.T, db *pgtest.DB, cfg SetupConfig) SetupReport {
	t.Helper()
	conn := db.Connect(t)
	rep, err := Setup(context.Background(), conn, cfg)
	if err != nil {
		t.Fatalf("setup: %v", err)
	}
	return rep
}

// startStream runs a stream on the database's dzhook slot until the test
// ends, and returns it.
func startStream(t *testing.T, db *pgtest.DB, h *recorder) *Stream {
	t.Helper()
	return startStreamDrain(t, db, h, 300*time.Millisecond)
}

// startStreamDrain is startStream with the given DrainTimeout.
func startStreamDrain(t *testing.T, db *pgtest.DB, h *recorder, drain time.Duration) *Stream {
	t.Helper()
	return startStreamWith(t, db, h, func(c *Config) { c.DrainTimeout = drain })
}

// startStreamWith is startStream with the configuration changed by set.
func startStreamWith(t *testing.T, db *pgtest.DB, h *recorder, set func(*Config)) *Stream {
	t.Helper()
	cfg := Config{DSN: db.DSN, Slot: "dzhook", Publication: "dzhook", Handler: h, Logger: testLogger(t),
		StatusInterval: 200 * time.Millisecond, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, LagInterval: 200 * time.Millisecond,
		DrainTimeout: 300 * time.Millisecond}
	set(&cfg)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.stream = s
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return after cancellation")
		}
	}
	t.Cleanup(stop)
	t.Cleanup(func() { streamStops.Delete(s) })
	streamStops.Store(s, stop)
	return s
}

// streamStops lets a test stop a stream before its end (*Stream to its
// stop function). A sync.Map: tests that run in parallel start streams
// at once (a plain map was a data race, found in the race run).
var streamStops sync.Map

func stopStream(s *Stream) {
	stop, _ := streamStops.Load(s)
	stop.(func())()
}

func slotConfirmedLSN(t *testing.T, db *pgtest.DB) pglogrepl.LSN {
	t.Helper()
	var s string
	conn := db.Connect(t)
	defer conn.Close(context.Background()) // waitConfirmed calls this 20 times a second
	if err := conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'dzhook'`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// waitConfirmed waits until the slot's confirmed_flush_lsn satisfies ok.
func waitConfirmed(t *testing.T, db *pgtest.DB, what string, ok func(pglogrepl.LSN) bool) pglogrepl.LSN {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		lsn := slotConfirmedLSN(t, db)
		if ok(lsn) {
			return lsn
		}
		if time.Now().After(deadline) {
			t.Fatalf("confirmed_flush_lsn %s: timed out waiting for %s", lsn, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func value(t *testing.T, c *Change, tuple Tuple, col string) any {
	t.Helper()
	v, ok := c.Relation.Get(tuple, col)
	if !ok {
		t.Fatalf("%s %s: no column %q", c.Op, c.Relation.QualifiedName(), col)
	}
	if v.State != Present {
		return v.State
	}
	return v.V
}

func TestReferenceTables(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	startStream(t, db, rec)

	db.Exec(t,
		`INSERT INTO users (id, email, name) VALUES (1, 'john@company.com', 'John'), (2, 'jane@company.com', 'Jane')`,
		`INSERT INTO requests (id, title, requester_id) VALUES (10, 'Cannot access email', 1)`,
		`UPDATE requests SET status = 'in_progress', assigned_to_id = 2, updated_by_id = 2 WHERE id = 10`,
		`INSERT INTO comments (id, request_id, author_id, body) VALUES (100, 10, 2, 'Looking into it')`,
		`INSERT INTO request_slas (id, request_id, sla_type, target_at) VALUES (7, 10, 'resolution', now() + interval '4 hours')`,
		`UPDATE request_slas SET completed_at = now() WHERE id = 7`,
		`UPDATE users SET active = false WHERE id = 1`,
		`DELETE FROM comments WHERE id = 100`,
		`DELETE FROM request_slas WHERE id = 7`,
		`DELETE FROM requests WHERE id = 10`,
	)
	changes, commits := rec.waitCommits(t, 10)
	if len(changes) != 11 {
		t.Fatalf("got %d changes, want 11", len(changes))
	}
	type want struct {
		table string
		op    Op
	}
	wants := []want{
		{"public.users", OpInsert}, {"public.users", OpInsert}, {"public.requests", OpInsert}, {"public.requests", OpUpdate},
		{"public.comments", OpInsert}, {"public.request_slas", OpInsert}, {"public.request_slas", OpUpdate}, {"public.users", OpUpdate},
		{"public.comments", OpDelete}, {"public.request_slas", OpDelete}, {"public.requests", OpDelete},
	}
	for i, w := range wants {
		if got := (want{changes[i].Relation.QualifiedName(), changes[i].Op}); got != w {
			t.Errorf("change %d = %v, want %v", i, got, w)
		}
	}
	// The two-row insert is one transaction: one commit LSN, ordinals 0, 1.
	if changes[0].CommitLSN != changes[1].CommitLSN || changes[0].Ordinal != 0 || changes[1].Ordinal != 1 {
		t.Errorf("multi-row insert: LSNs %s %s ordinals %d %d; want one LSN, ordinals 0 1", changes[0].CommitLSN, changes[1].CommitLSN, changes[0].Ordinal, changes[1].Ordinal)
	}
	if got := value(t, changes[0], changes[0].New, "email"); got != "john@company.com" {
		t.Errorf("users insert email = %v", got)
	}
	upd := changes[3]
	for col, w := range map[string][2]any{"status": {"open", "in_progress"}, "assigned_to_id": {Null, int64(2)}, "title": {"Cannot access email", "Cannot access email"}} {
		if o, n := value(t, upd, upd.Old, col), value(t, upd, upd.New, col); o != w[0] || n != w[1] {
			t.Errorf("requests update %s: old %v new %v, want %v %v", col, o, n, w[0], w[1])
		}
	}
	if got := value(t, changes[7], changes[7].Old, "active"); got != true {
		t.Errorf("users update old active = %v, want true", got)
	}
	if got := value(t, changes[7], changes[7].New, "active"); got != false {
		t.Errorf("users update new active = %v, want false", got)
	}
	// comments has the default replica identity: a delete carries the key only.
	del := changes[8]
	if got := value(t, del, del.Old, "id"); got != int64(100) {
		t.Errorf("comments delete old id = %v, want 100", got)
	}
	if v, _ := del.Relation.Get(del.Old, "body"); v.State != Null {
		t.Errorf("comments delete old body state = %v, want Null (not sent under the default identity)", v.State)
	}
	// requests has REPLICA IDENTITY FULL: a delete carries the whole row.
	rdel := changes[10]
	if got := value(t, rdel, rdel.Old, "title"); got != "Cannot access email" {
		t.Errorf("requests delete old title = %v", got)
	}
	if ts, ok := value(t, changes[2], changes[2].New, "created_at").(time.Time); !ok || ts.Location() != time.UTC || time.Since(ts) > time.Minute {
		t.Errorf("created_at = %v, want a recent UTC time", ts)
	}
	for i := 1; i < len(commits); i++ {
		if commits[i].CommitLSN <= commits[i-1].CommitLSN || commits[i].EndLSN <= commits[i].CommitLSN {
			t.Errorf("commit %d: LSN %s end %s after %s: want increasing", i, commits[i].CommitLSN, commits[i].EndLSN, commits[i-1].CommitLSN)
		}
	}
}

func TestTransactionsAndOrder(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	startStream(t, db, rec)
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'a@x'), (2, 'b@x'), (3, 'c@x')`)
	// A multi-statement transaction.
	db.Exec(t, `BEGIN; INSERT INTO requests (id, title, requester_id) VALUES (1, 'one', 1);
		UPDATE requests SET priority = 'high' WHERE id = 1; INSERT INTO comments (request_id, author_id, body) VALUES (1, 2, 'c'); COMMIT`)

	// A started first but commits after B: the stream follows commit order.
	ctx := context.Background()
	a, b := db.Connect(t), db.Connect(t)
	mustExec := func(c *pgx.Conn, sql string) {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	mustExec(a, "BEGIN")
	mustExec(a, "INSERT INTO users (id, email) VALUES (10, 'first-started@x')")
	mustExec(b, "BEGIN")
	mustExec(b, "INSERT INTO users (id, email) VALUES (11, 'second-started@x')")
	mustExec(b, "COMMIT")
	mustExec(a, "COMMIT")

	changes, _ := rec.waitCommits(t, 4)
	if len(changes) != 8 {
		t.Fatalf("got %d changes, want 8", len(changes))
	}
	for i := 0; i < 3; i++ {
		if changes[i].CommitLSN != changes[0].CommitLSN || changes[i].Ordinal != i {
			t.Errorf("multi-row insert change %d: LSN %s ordinal %d", i, changes[i].CommitLSN, changes[i].Ordinal)
		}
	}
	for i := 3; i < 6; i++ {
		if changes[i].CommitLSN != changes[3].CommitLSN || changes[i].Ordinal != i-3 || changes[i].XID != changes[3].XID {
			t.Errorf("multi-statement change %d: LSN %s ordinal %d", i, changes[i].CommitLSN, changes[i].Ordinal)
		}
	}
	if got := []any{value(t, changes[6], changes[6].New, "email"), value(t, changes[7], changes[7].New, "email")}; !reflect.DeepEqual(got, []any{"second-started@x", "first-started@x"}) {
		t.Errorf("order = %v, want the transaction that committed first first", got)
	}
}

// randomText returns n bytes of incompressible text, so PostgreSQL stores
// it out of line (TOAST) rather than compressing it inline.
func randomText(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)[:n]
}

func TestUnchangedToast(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	startStream(t, db, rec)
	long := randomText(40_000)
	db.Exec(t,
		`INSERT INTO users (id, email) VALUES (1, 'a@x')`,
		fmt.Sprintf(`INSERT INTO requests (id, title, description, requester_id) VALUES (1, 't', '%s', 1)`, long),
		fmt.Sprintf(`INSERT INTO comments (id, request_id, author_id, body) VALUES (1, 1, 1, '%s')`, long),
		`UPDATE requests SET status = 'pending' WHERE id = 1`,
		`UPDATE comments SET internal = true WHERE id = 1`,
	)
	changes, _ := rec.waitCommits(t, 5)
	upd := changes[3]
	if got := value(t, upd, upd.New, "status"); got != "pending" {
		t.Fatalf("status = %v", got)
	}
	// REPLICA IDENTITY FULL: the old tuple supplies the real text.
	if got, _ := value(t, upd, upd.New, "description").(string); got != long {
		t.Errorf("requests description after a status-only update: %d bytes, want the original %d", len(got), len(long))
	}
	// Default identity: no old tuple, so the column is Unchanged, never NULL.
	cupd := changes[4]
	if v, _ := cupd.NewValue("body"); v.State != Unchanged {
		t.Errorf("comments body after an update of another column: state %v, want Unchanged", v.State)
	}
	if got := value(t, cupd, cupd.New, "internal"); got != true {
		t.Errorf("internal = %v", got)
	}
}

func TestTypes(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t,
		`CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')`,
		`CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0)`,
		`CREATE TABLE typed (id int PRIMARY KEY, n numeric, j jsonb, js json, ts timestamptz, tsz timestamp, d date, ints int[],
			m mood, moods mood[], p positive_int, b1 boolean, b2 boolean, nul text, f float8, fnan float8, u uuid, iv interval, big bigint, sm smallint, ch char(10), chs char(6)[])`,
	)
	runSetup(t, db, SetupConfig{Slot: "dzhook", Publication: "dzhook", Tables: []string{"public.typed"}})
	rec := newRecorder(true)
	startStream(t, db, rec)
	db.Exec(t, `INSERT INTO typed VALUES (1, 123456789012345678901234567890.123456789, '{"b": {"z": [1, 2, {"y": null}]}, "a": "é"}', '{"keep":  "spacing"}',
		'2024-01-15 20:00:00.123456+05:30', '2024-01-15 14:30:00', '2024-02-29', '{1,2,NULL,-4}', 'happy', '{ok,sad}', 42, true, false, NULL,
		2.5, 'NaN', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day 02:00:00', -9223372036854775808, -32768, ' OPEN', '{ab,"c d"}')`)
	changes, _ := rec.waitCommits(t, 1)
	c := changes[0]
	get := func(col string) any { return value(t, c, c.New, col) }
	checks := map[string]any{
		"n":     "123456789012345678901234567890.123456789",
		"ts":    time.Date(2024, 1, 15, 14, 30, 0, 123456000, time.UTC),
		"tsz":   time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC),
		"d":     time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC),
		"ints":  []any{int64(1), int64(2), nil, int64(-4)},
		"m":     "happy",
		"moods": []any{"ok", "sad"},
		"p":     int64(42),
		"b1":    true,
		"b2":    false,
		"nul":   Null,
		"f":     2.5,
		"fnan":  "NaN",
		"u":     "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
		"big":   int64(-9223372036854775808),
		"sm":    int64(-32768),
		"ch":    " OPEN", // char(n) without its padding, as its cast to text
		"chs":   []any{"ab", "c d"},
	}
	for col, want := range checks {
		got := get(col)
		if ts, ok := got.(time.Time); ok {
			if w, _ := want.(time.Time); !ts.Equal(w) || ts.Location() != time.UTC {
				t.Errorf("%s = %v, want %v in UTC", col, ts, w)
			}
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v (%T), want %#v (%T)", col, got, got, want, want)
		}
	}
	j, ok := get("j").(json.RawMessage)
	var parsed map[string]any
	if !ok || json.Unmarshal(j, &parsed) != nil || parsed["a"] != "é" {
		t.Errorf("jsonb = %#v, want raw JSON with nested keys", get("j"))
	}
	if js, _ := get("js").(json.RawMessage); string(js) != `{"keep":  "spacing"}` {
		t.Errorf("json = %q, want the text as stored", js)
	}
	if iv, ok := get("iv").(string); !ok || iv != "1 day 02:00:00" {
		t.Errorf("interval = %#v, want PostgreSQL's text", get("iv"))
	}
}

// TestResume acknowledges transaction k, stops, commits more and starts
// again: the first change seen is the first one after k, and none is
// missing.
func TestResume(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(false)
	s := startStream(t, db, rec)
	for i := 1; i <= 5; i++ {
		db.Exec(t, fmt.Sprintf(`INSERT INTO users (id, email) VALUES (%d, 'u%d@x')`, i, i))
	}
	_, commits := rec.waitCommits(t, 5)
	s.Ack(commits[2].CommitLSN) // transactions 1..3 are durable
	waitConfirmed(t, db, "the end of transaction 3", func(l pglogrepl.LSN) bool { return l >= commits[2].EndLSN })
	stopStream(s)
	if got := slotConfirmedLSN(t, db); got >= commits[3].CommitLSN {
		t.Fatalf("confirmed_flush_lsn %s passed unacknowledged transaction 4 at %s", got, commits[3].CommitLSN)
	}
	for i := 6; i <= 7; i++ {
		db.Exec(t, fmt.Sprintf(`INSERT INTO users (id, email) VALUES (%d, 'u%d@x')`, i, i))
	}
	rec2 := newRecorder(true)
	startStream(t, db, rec2)
	changes, _ := rec2.waitCommits(t, 4)
	var ids []any
	for _, c := range changes {
		ids = append(ids, value(t, c, c.New, "id"))
	}
	if want := []any{int64(4), int64(5), int64(6), int64(7)}; !reflect.DeepEqual(ids, want) {
		t.Errorf("after restart got users %v, want %v", ids, want)
	}
}

// TestStopWaitsForAcknowledgements: a stopped stream keeps the slot until
// the handler acknowledges what it was handed, and tells PostgreSQL, so
// whoever takes the slot next starts after it.
func TestStopWaitsForAcknowledgements(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(false)
	s := startStreamDrain(t, db, rec, 30*time.Second)
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'a@x')`)
	_, commits := rec.waitCommits(t, 1)
	stopped := make(chan struct{})
	go func() { stopStream(s); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("the stream stopped with a transaction unacknowledged")
	case <-time.After(300 * time.Millisecond):
	}
	s.Ack(commits[0].CommitLSN)
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Error("the stream did not stop once everything was acknowledged")
		<-stopped // stopStream gives up after 30 s, reporting before the test ends
		return
	}
	if got := slotConfirmedLSN(t, db); got < commits[0].EndLSN {
		t.Errorf("confirmed_flush_lsn %s after stopping, want the acknowledged transaction's end %s", got, commits[0].EndLSN)
	}
}

// TestStopEndsAWaitingReceive: a stream waiting for the next message
// stops at once when its context ends, not when the receive's deadline
// (here an hour away) passes or the server next sends something.
func TestStopEndsAWaitingReceive(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	s := startStreamWith(t, db, rec, func(c *Config) { c.StatusInterval, c.recheck = time.Hour, time.Hour })
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'a@x')`)
	rec.waitCommits(t, 1)
	stopped := make(chan struct{})
	go func() { stopStream(s); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Error("the stream did not stop within 10 s of its context ending")
		<-stopped // stopStream gives up after 30 s, reporting before the test ends
	}
}

// TestStatusWhileHandlerBlocks: while the handler holds the stream back
// and the reader waits to hand over the next message, the stream keeps
// reporting its position to PostgreSQL (every StatusInterval/2), so the
// walsender does not time the connection out (wal_sender_timeout).
// TestStatusWhileHandlerBlocks: while the handler applies backpressure the
// stream keeps reporting its position, so the server never times it out,
// whether the reader is processing the blocked message itself (the
// processor was idle) or waits to hand one to a busy processor.
func TestStatusWhileHandlerBlocks(t *testing.T) {
	waitStatus := func(t *testing.T, s *Stream, busy int64) {
		t.Helper()
		before := s.Stats().StatusUpdates
		testutil.Eventually(t, 10*time.Second, "3 status updates while the handler blocks", func() bool {
			return s.Stats().StatusUpdates >= before+3
		})
		if n := s.busy.Load(); n != busy {
			t.Fatalf("the reader has %d messages handed over or in hand while the handler blocks, want %d", n, busy)
		}
	}
	t.Run("in the reader", func(t *testing.T) {
		db := setupRef(t)
		rec := newRecorder(true)
		s := startStreamWith(t, db, rec, func(c *Config) { c.StatusInterval = 200 * time.Millisecond })
		warmUp(t, db, rec)
		gate := rec.hold()
		defer close(gate) // before the stream's stop (cleanup), which waits for the handler
		db.Exec(t, `INSERT INTO users (id, email) SELECT g, 'u' || g || '@x' FROM generate_series(1, 1000) g`)
		// The processor was idle: the reader processes the first change
		// itself, and reads nothing more until the handler returns.
		heldByReader(t, s, rec)
		waitStatus(t, s, 1)
		if ch, _ := rec.snapshot(); len(ch) != 1 {
			t.Fatalf("%d changes handled past the warm-up's and the blocked one", len(ch)-1)
		}
	})

	t.Run("handed over", func(t *testing.T) {
		db := setupRef(t)
		rec := newRecorder(true)
		gate := make(chan struct{})
		// The processor's goroutine is busy with the session's start, so
		// every message is handed to it.
		s := startStreamWith(t, db, rec, func(c *Config) {
			c.StatusInterval = 200 * time.Millisecond
			c.OnSession = func(ctx context.Context) {
				select {
				case <-gate:
				case <-ctx.Done():
				}
			}
		})
		defer close(gate)
		// More messages than the reader's queue to the processor holds (256).
		db.Exec(t, `INSERT INTO users (id, email) SELECT g, 'u' || g || '@x' FROM generate_series(1, 1000) g`)
		// The reader is waiting in enqueue once the queue is full, the
		// session's start is with the processor and one message in the
		// reader's hand.
		testutil.Eventually(t, 30*time.Second, "258 messages handed over or in hand (queue full)", func() bool { return s.busy.Load() >= 256+2 })
		waitStatus(t, s, 256+2)
	})
}

// TestInterruptWhileTheReaderProcesses: Interrupt ends the session at once
// even while the reader itself waits for the handler (the journal being
// down, it may wait long): the server sees the connection closed. Once the
// handler returns, the stream connects again and hands on the rest, every
// change once.
func TestInterruptWhileTheReaderProcesses(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	s := startStream(t, db, rec)
	warmUp(t, db, rec)
	gate := rec.hold()
	opened := false
	defer func() {
		if !opened {
			close(gate)
		}
	}()
	db.Exec(t, `INSERT INTO users (id, email) SELECT g, 'u' || g || '@x' FROM generate_series(1, 50) g`)
	heldByReader(t, s, rec)
	conn := db.Connect(t)
	active := func() bool {
		var a bool
		if err := conn.QueryRow(context.Background(), `SELECT active FROM pg_replication_slots WHERE slot_name = 'dzhook'`).Scan(&a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	if !active() {
		t.Fatal("the slot is not active while streaming")
	}
	s.Interrupt(errors.New("journal down"))
	testutil.Eventually(t, 5*time.Second, "the slot inactive after Interrupt, while the handler blocks", func() bool { return !active() })
	// While the handler still blocks, the stream says why it is not
	// connected.
	if st := s.Stats(); st.Connected || st.Problem == "" {
		t.Errorf("after the interrupt closed the connection: Connected=%v Problem=%q, want false and the reason", st.Connected, st.Problem)
	}
	opened = true
	close(gate)
	changes, _ := rec.waitCommits(t, 2)
	if len(changes) != 51 {
		t.Fatalf("%d changes handed on after the warm-up's, want 50 (each once)", len(changes)-1)
	}
	for i, c := range changes[1:] {
		if got := value(t, c, c.New, "id"); got != int64(i+1) {
			t.Fatalf("change %d is user %v, want %d", i, got, i+1)
		}
	}
	if s.Stats().Reconnects == 0 {
		t.Error("the stream did not connect again after the interrupt")
	}
}

// failingHandler refuses its first commit and records every call after it.
type failingHandler struct {
	mu     sync.Mutex
	failed bool
	after  []string
	fail   chan struct{}
}

func (h *failingHandler) HandleChange(_ context.Context, c *Change) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failed {
		h.after = append(h.after, "change "+string(c.Op))
	}
	return nil
}

func (h *failingHandler) HandleCommit(_ context.Context, c Commit) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failed {
		h.after = append(h.after, "commit "+c.CommitLSN.String())
		return nil
	}
	h.failed = true
	close(h.fail)
	return errors.New("journal refused the commit")
}

// TestNoHandlerCallAfterAnError: once the processor's goroutine got an
// error from the handler, the reader, which sees it only at its next look,
// must not process a message itself on the failed processor's state.
func TestNoHandlerCallAfterAnError(t *testing.T) {
	db := setupRef(t)
	h := &failingHandler{fail: make(chan struct{})}
	gate := make(chan struct{})
	sessions := make(chan struct{}, 1)
	cfg := Config{DSN: db.DSN, Slot: "dzhook", Publication: "dzhook", Handler: h, Logger: testLogger(t),
		StatusInterval: 2 * time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		LagInterval: time.Second, DrainTimeout: 300 * time.Millisecond,
		OnSession: func(ctx context.Context) {
			select {
			case sessions <- struct{}{}:
			default:
			}
			select { // the processor's goroutine is busy: what comes is handed over
			case <-gate:
			case <-ctx.Done():
			}
		}}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-sessions:
	case <-time.After(30 * time.Second):
		t.Fatal("no session started")
	}
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'a@x')`)
	// The session's start, then begin, relation, insert, commit.
	testutil.Eventually(t, 30*time.Second, "4 messages handed over", func() bool { return s.busy.Load() >= 4 })
	// Let a periodic status go after the walsender's keepalive, so it
	// does not ping the reader (which would look at the error) before
	// the next data: time passing is the condition here.
	time.Sleep(2500 * time.Millisecond)
	close(gate)
	select {
	case <-h.fail:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler was never called")
	}
	// Within the reader's recheck (1 s), before it looks at the error.
	db.Exec(t, `SELECT pg_logical_emit_message(false, 'p', 'after the failure')`)
	select {
	case err := <-done:
		if err == nil {
			t.Error("Run returned nil after the handler's error")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the handler's error")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.after) > 0 {
		t.Errorf("the handler was called after it returned an error: %s", strings.Join(h.after, ", "))
	}
}

// TestLargeTransactionIsHandedOver: the reader processes messages itself
// only while they come one by one; in a catch-up it hands them to the
// processor's goroutine, which works beside it, rows larger than pgconn's
// read buffer included. Order holds across both.
func TestLargeTransactionIsHandedOver(t *testing.T) {
	t.Run("small rows", func(t *testing.T) { testHandedOver(t, `'u' || g || '@x'`) })
	t.Run("12 KB rows", func(t *testing.T) { testHandedOver(t, `repeat(md5(g::text), 375) || '@x'`) })
}

func testHandedOver(t *testing.T, email string) {
	db := setupRef(t)
	rec := newRecorder(true)
	rec.delay = 100 * time.Microsecond // slower than the server sends: messages wait in the buffer
	s := startStream(t, db, rec)
	warmUp(t, db, rec)
	before := s.inlined.Load()
	db.Exec(t, `INSERT INTO users (id, email) VALUES (0, 'first@x')`)
	rec.waitCommits(t, 2)
	if s.inlined.Load() == before {
		t.Fatal("a lone transaction was not processed by the reader")
	}
	before = s.inlined.Load()
	const n = 3000
	db.Exec(t, `INSERT INTO users (id, email) SELECT g, `+email+` FROM generate_series(1, 3000) g`)
	changes, _ := rec.waitCommits(t, 3)
	if len(changes) != n+2 {
		t.Fatalf("%d changes after the warm-up's, want %d", len(changes)-1, n+1)
	}
	for i, c := range changes[1:] {
		if got := value(t, c, c.New, "id"); got != int64(i) {
			t.Fatalf("change %d is user %v, want %d", i, got, i)
		}
	}
	// The stream's messages: a begin, 3,000 inserts, a commit.
	if got := s.inlined.Load() - before; got > n/2 {
		t.Fatalf("the reader processed %d messages of a %d-row transaction itself; want most handed over", got, n)
	}
}

// TestDurability withholds acknowledgements: confirmed_flush_lsn must never
// pass the first unacknowledged commit, even after status updates.
func TestDurability(t *testing.T) {
	db := setupRef(t)
	start := slotConfirmedLSN(t, db)
	rec := newRecorder(false)
	s := startStream(t, db, rec)
	for i := 1; i <= 3; i++ {
		db.Exec(t, fmt.Sprintf(`INSERT INTO users (id, email) VALUES (%d, 'u%d@x')`, i, i))
	}
	_, commits := rec.waitCommits(t, 3)
	// The server has heard about everything we received (write position):
	// status updates were sent while nothing was acknowledged.
	conn := db.Connect(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var write string
		err := conn.QueryRow(context.Background(), `SELECT coalesce(write_lsn::text, '0/0') FROM pg_stat_replication WHERE application_name = 'dzhook'`).Scan(&write)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			t.Fatal(err)
		}
		if w, _ := pglogrepl.ParseLSN(write); w >= commits[2].EndLSN {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("write position never reached %s", commits[2].EndLSN)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := slotConfirmedLSN(t, db); got != start {
		t.Fatalf("confirmed_flush_lsn moved to %s with nothing acknowledged (started at %s)", got, start)
	}
	s.Ack(commits[0].CommitLSN)
	got := waitConfirmed(t, db, "the end of transaction 1", func(l pglogrepl.LSN) bool { return l >= commits[0].EndLSN })
	if got > commits[1].CommitLSN {
		t.Fatalf("confirmed_flush_lsn %s passed unacknowledged transaction 2 at %s", got, commits[1].CommitLSN)
	}
}

// TestPostgresRestart restarts the server in the middle of a stream of
// single-row transactions: the reader reconnects and nothing is lost or
// handed on twice.
func TestPostgresRestart(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	s := startStream(t, db, rec)
	const n = 300
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inserted := make(chan error, 1)
	go func() { inserted <- insertUsersThroughRestarts(ctx, db, n) }()
	rec.waitChanges(t, n/3)
	if err := db.Cluster.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := <-inserted; err != nil {
		t.Fatal(err)
	}
	changes := rec.waitChanges(t, n)
	seen := map[any]int{}
	for _, c := range changes {
		seen[value(t, c, c.New, "id")]++
	}
	for i := 1; i <= n; i++ {
		if seen[int64(i)] != 1 {
			t.Errorf("user %d seen %d times, want once", i, seen[int64(i)])
		}
	}
	if s.Stats().Reconnects == 0 {
		t.Error("Stats().Reconnects = 0 after a PostgreSQL restart")
	}
}

// insertUsersThroughRestarts commits users 1..n, one per transaction,
// reconnecting when the server goes away. A commit whose outcome was lost
// with the connection is checked before it is retried.
func insertUsersThroughRestarts(ctx context.Context, db *pgtest.DB, n int) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for i := 1; i <= n; {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if conn == nil {
			c, err := pgx.Connect(ctx, db.DSN)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			conn = c
		}
		_, err := conn.Exec(ctx, `INSERT INTO users (id, email) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`, i, fmt.Sprintf("u%d@x", i))
		if err != nil {
			conn.Close(context.Background())
			conn = nil
			continue // ON CONFLICT makes the retry of an ambiguous commit harmless
		}
		i++
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// TestAcknowledgementsReportedWhileBusy: while transactions keep coming
// and one is always waiting for its acknowledgement (so neither the
// status interval nor the recheck, an hour here, nor an idle keepalive
// reports anything), what is acknowledged reaches PostgreSQL within
// about a second, and again after that: at most one report a second, but
// one each second while there is something new.
func TestAcknowledgementsReportedWhileBusy(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(false)
	s := startStreamWith(t, db, rec, func(c *Config) { c.StatusInterval, c.recheck = time.Hour, time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ctx.Err() == nil; i++ {
			_ = db.Cluster.Exec(ctx, db.Name, fmt.Sprintf(`INSERT INTO users (email) VALUES ('busy%d@x')`, i))
			time.Sleep(20 * time.Millisecond)
		}
	}()
	defer func() { cancel(); <-done }()
	for round := 1; round <= 3; round++ {
		// Every transaction but the last is acknowledged.
		_, commits := rec.waitCommits(t, 10*round)
		last := commits[len(commits)-2]
		s.Ack(last.CommitLSN)
		acked := time.Now()
		waitConfirmed(t, db, fmt.Sprintf("round %d: the end of transaction %d", round, len(commits)-1), func(l pglogrepl.LSN) bool { return l >= last.EndLSN })
		// About a second; 5 s leaves a loaded machine its delays (the
		// report's wake, the walsender, a connection per look), and a
		// report left to the status interval takes an hour.
		if took := time.Since(acked); took > 5*time.Second {
			t.Fatalf("round %d: acknowledged position reported after %v, want about a second at most", round, took)
		}
		if got := slotConfirmedLSN(t, db); got > last.EndLSN {
			t.Fatalf("round %d: confirmed_flush_lsn %s passed the end of the last acknowledged transaction, %s", round, got, last.EndLSN)
		}
	}
}

// TestIdleAdvances: with nothing published but WAL written in another
// database, the slot's confirmed position still advances, so an idle
// DZDESK never makes PostgreSQL keep WAL.
func TestIdleAdvances(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	startStream(t, db, rec)
	before := slotConfirmedLSN(t, db)
	other := pgtest.NewDB(t)
	other.Exec(t, `CREATE TABLE noise (v text)`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			_ = other.Cluster.Exec(ctx, other.Name, `INSERT INTO noise SELECT repeat('x', 100) FROM generate_series(1, 100)`)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	waitConfirmed(t, db, "an advance past "+before.String(), func(l pglogrepl.LSN) bool { return l > before+16*1024 })
}

// TestLagAndRetainedWAL: the lag poller reports both distances from the
// current WAL position: to confirmed_flush_lsn (lag) and to restart_lsn
// (what the slot keeps on disk), which is never the shorter.
func TestLagAndRetainedWAL(t *testing.T) {
	db := setupRef(t)
	s := startStream(t, db, newRecorder(true))
	db.Exec(t, `INSERT INTO users (email) VALUES ('lag@example.com')`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := s.Stats()
		if st.LagBytes >= 0 && st.RetainedBytes >= 0 {
			if st.RetainedBytes < st.LagBytes {
				t.Errorf("retained %d bytes, lag %d: restart_lsn is never past confirmed_flush_lsn", st.RetainedBytes, st.LagBytes)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: lag %d, retained %d, want both known (>= 0)", st.LagBytes, st.RetainedBytes)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAddColumnMidStream(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	startStream(t, db, rec)
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'a@x')`)
	rec.waitCommits(t, 1)
	db.Exec(t, `ALTER TABLE users ADD COLUMN nickname text DEFAULT 'none'`,
		`INSERT INTO users (id, email, nickname) VALUES (2, 'b@x', 'bee')`)
	changes, _ := rec.waitCommits(t, 2)
	if _, ok := changes[0].NewValue("nickname"); ok {
		t.Error("the change before ALTER TABLE has a nickname column")
	}
	if got := value(t, changes[1], changes[1].New, "nickname"); got != "bee" {
		t.Errorf("nickname = %v, want bee", got)
	}
}

func TestLogicalMessages(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	startStream(t, db, rec)
	db.Exec(t, `SELECT pg_logical_emit_message(true, 'dzdesk', '{"event":"order.shipped"}')`,
		`SELECT pg_logical_emit_message(false, 'other', 'raw')`)
	changes, _ := rec.waitCommits(t, 2)
	if len(changes) != 2 || changes[0].Op != OpMessage || changes[1].Op != OpMessage {
		t.Fatalf("changes = %v", changes)
	}
	m := changes[0].Message
	if !m.Transactional || m.Prefix != "dzdesk" || string(m.Content) != `{"event":"order.shipped"}` {
		t.Errorf("transactional message = %+v", m)
	}
	if m := changes[1].Message; m.Transactional || m.Prefix != "other" || string(m.Content) != "raw" {
		t.Errorf("non-transactional message = %+v", m)
	}
}

// TestNonTransactionalMessageInsideTransaction: a non-transactional
// message emitted inside an open transaction arrives before that
// transaction, and its record can end exactly where the transaction's
// commit record starts. Neither may hide the other, in the stream or after
// a restart that acknowledged the message but not the transaction.
func TestNonTransactionalMessageInsideTransaction(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(false)
	s := startStream(t, db, rec)
	conn := db.Connect(t)
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO users (id, email) VALUES (1, 'a@x')`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_logical_emit_message(false, 'dzdesk', 'now')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	changes, commits := rec.waitCommits(t, 2)
	if len(changes) != 2 || changes[0].Op != OpMessage || changes[1].Op != OpInsert {
		t.Fatalf("changes = %v, want the message then the insert", changes)
	}
	if commits[0].CommitLSN >= commits[1].CommitLSN {
		t.Fatalf("message keyed %s, not before the transaction's commit %s", commits[0].CommitLSN, commits[1].CommitLSN)
	}
	// Acknowledge the message only: the transaction must come back.
	s.Ack(commits[0].CommitLSN)
	waitConfirmed(t, db, "the message's end", func(l pglogrepl.LSN) bool { return l >= commits[0].EndLSN })
	stopStream(s)
	if got := slotConfirmedLSN(t, db); got > commits[1].CommitLSN {
		t.Fatalf("confirmed_flush_lsn %s passed the unacknowledged transaction at %s", got, commits[1].CommitLSN)
	}
	rec2 := newRecorder(true)
	startStream(t, db, rec2)
	db.Exec(t, `INSERT INTO users (id, email) VALUES (2, 'b@x')`)
	changes, _ = rec2.waitCommits(t, 2)
	var ids []any
	for _, c := range changes {
		if c.Op != OpInsert {
			t.Fatalf("after restart got %v, want only the two inserts", c.Op)
		}
		ids = append(ids, value(t, c, c.New, "id"))
	}
	if want := []any{int64(1), int64(2)}; !reflect.DeepEqual(ids, want) {
		t.Errorf("after restart got users %v, want %v", ids, want)
	}
}

func TestSetupIsIdempotentAndChecks(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema, `ALTER TABLE requests REPLICA IDENTITY DEFAULT`)
	cfg := SetupConfig{Slot: "dzhook", Publication: "dzhook", Tables: referenceTables, FullIdentity: []string{"public.requests"}}

	check := cfg
	check.CheckOnly = true
	conn := db.Connect(t)
	_, err := Setup(context.Background(), conn, check)
	for _, want := range []string{`publication "dzhook" does not exist`, "table public.requests needs REPLICA IDENTITY FULL", "ALTER TABLE \"public\".\"requests\" REPLICA IDENTITY FULL"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("check-only setup error = %v, want it to contain %q", err, want)
		}
	}

	rep := runSetup(t, db, cfg)
	if len(rep.Actions) != 3 {
		t.Errorf("first setup actions = %q, want publication, identity, slot", rep.Actions)
	}
	if rep := runSetup(t, db, cfg); len(rep.Actions) != 0 {
		t.Errorf("second setup actions = %q, want none", rep.Actions)
	}

	// A publication that lacks a mapped table gets it added.
	db.Exec(t, `ALTER PUBLICATION dzhook DROP TABLE comments`)
	if rep := runSetup(t, db, cfg); len(rep.Actions) != 1 || !strings.Contains(rep.Actions[0], "added public.comments") {
		t.Errorf("setup actions = %q, want public.comments added", rep.Actions)
	}

	// A slot of another plugin is refused with the fix.
	db.Exec(t, `SELECT pg_create_logical_replication_slot('wrong_plugin', 'test_decoding')`)
	other := cfg
	other.Slot = "wrong_plugin"
	if _, err := Setup(context.Background(), conn, other); err == nil || !strings.Contains(err.Error(), `uses plugin "test_decoding"`) {
		t.Errorf("setup with a test_decoding slot: %v", err)
	}

	// A missing table is named.
	missing := cfg
	missing.Tables = append(missing.Tables, "public.tickets")
	if _, err := Setup(context.Background(), conn, missing); err == nil || !strings.Contains(err.Error(), "table public.tickets does not exist") {
		t.Errorf("setup with a missing table: %v", err)
	}
}

// TestSetupGivesKeylessTablesAnIdentity: a published table without a
// replica identity (an outbox without a primary key) gets REPLICA
// IDENTITY FULL before it is published: published as it was, the
// application's own UPDATEs and DELETEs on it failed ("cannot update
// table ... because it does not have a replica identity"). A check-only
// setup names the statement and changes nothing.
func TestSetupGivesKeylessTablesAnIdentity(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema, `CREATE TABLE box (event text, payload jsonb)`, `CREATE TABLE keyed (id bigint PRIMARY KEY)`,
		`ALTER TABLE keyed REPLICA IDENTITY NOTHING`)
	cfg := SetupConfig{Slot: "dzhook", Publication: "dzhook", Tables: append(slices.Clone(referenceTables), "public.box", "public.keyed"),
		FullIdentity: []string{"public.requests"}}
	check := cfg
	check.CheckOnly = true
	conn := db.Connect(t)
	_, err := Setup(context.Background(), conn, check)
	for _, want := range []string{"table public.box needs a replica identity", `ALTER TABLE "public"."box" REPLICA IDENTITY FULL`, "table public.keyed needs a replica identity"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("check-only setup error = %v, want it to contain %q", err, want)
		}
	}
	if err := conn.QueryRow(context.Background(), `SELECT 1 FROM pg_publication WHERE pubname = 'dzhook'`).Scan(new(int)); err == nil {
		t.Error("a check-only setup made the publication")
	}
	rep := runSetup(t, db, cfg)
	if !slices.ContainsFunc(rep.Actions, func(a string) bool { return strings.Contains(a, "set REPLICA IDENTITY FULL on public.box") }) {
		t.Errorf("setup actions = %q, want public.box given an identity", rep.Actions)
	}
	db.Exec(t, `INSERT INTO box VALUES ('order.shipped', '{}')`, `INSERT INTO keyed VALUES (1)`,
		`UPDATE box SET payload = '{"a":1}'`, `DELETE FROM box`, `UPDATE keyed SET id = 2`, `DELETE FROM keyed`)

	// A keyless table published before (by an older dzhook) has lived with
	// it: a check refuses nothing about it, so a start that worked still
	// does.
	db.Exec(t, `CREATE TABLE old_box (event text)`, `ALTER PUBLICATION dzhook ADD TABLE old_box`)
	check.Tables = append(cfg.Tables, "public.old_box")
	if _, err := Setup(context.Background(), conn, check); err != nil {
		t.Errorf("check-only setup with a keyless table published before: %v", err)
	}
}

func TestSetupRoleWithoutReplication(t *testing.T) {
	db := pgtest.NewDB(t)
	role := "noreplication_" + db.Name
	db.Exec(t, dzsql.Schema, fmt.Sprintf(`CREATE ROLE %s LOGIN`, role))
	t.Cleanup(func() { _ = db.Cluster.Exec(context.Background(), "postgres", "DROP ROLE IF EXISTS "+role) })
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, strings.Replace(db.DSN, "postgres@", role+"@", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = Setup(ctx, conn, SetupConfig{Slot: "dzhook", Publication: "dzhook", Tables: referenceTables})
	if err == nil || !strings.Contains(err.Error(), "lacks the REPLICATION attribute") || !strings.Contains(err.Error(), "ALTER ROLE") {
		t.Fatalf("setup as a role without REPLICATION: %v", err)
	}
	// The replication connection, which dzhook setup and run open first,
	// names the fix too (it gave PostgreSQL's "must be superuser or
	// replication role to start walsender" alone).
	_, err = ConnectReplication(ctx, strings.Replace(db.DSN, "postgres@", role+"@", 1))
	if err == nil || !strings.Contains(err.Error(), "ALTER ROLE") || !strings.Contains(err.Error(), role) {
		t.Fatalf("a replication connection as a role without REPLICATION: %v", err)
	}
}

// TestStandby: a second stream on a slot in use waits rather than steals.
func TestStandby(t *testing.T) {
	db := setupRef(t)
	rec1 := newRecorder(true)
	s1 := startStream(t, db, rec1)
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'a@x')`)
	rec1.waitCommits(t, 1)

	rec2 := newRecorder(true)
	s2 := startStream(t, db, rec2)
	deadline := time.Now().Add(30 * time.Second)
	for !s2.Stats().Standby {
		if time.Now().After(deadline) {
			t.Fatal("the second stream never reported standby")
		}
		time.Sleep(20 * time.Millisecond)
	}
	db.Exec(t, `INSERT INTO users (id, email) VALUES (2, 'b@x')`)
	rec1.waitCommits(t, 2)
	if _, co := rec2.snapshot(); len(co) != 0 {
		t.Fatalf("the standby stream received %d transactions while the first held the slot", len(co))
	}
	// Its tries for the slot, a dozen in a second of watching (backoff
	// from 50 ms), are no reconnects: a healthy pair showed a steady
	// reconnect rate.
	time.Sleep(time.Second)
	if n := s2.Stats().Reconnects; n != 0 {
		t.Errorf("the standby counted %d reconnects, never having streamed", n)
	}
	stopStream(s1)
	db.Exec(t, `INSERT INTO users (id, email) VALUES (3, 'c@x')`)
	changes, _ := rec2.waitCommits(t, 1)
	if got := value(t, changes[len(changes)-1], changes[len(changes)-1].New, "id"); got != int64(3) {
		t.Errorf("standby took over and saw user %v last, want 3", got)
	}
}

func TestMissingSlotFailsAtStart(t *testing.T) {
	db := pgtest.NewDB(t)
	s, _ := New(Config{DSN: db.DSN, Slot: "nope", Publication: "nope", Handler: newRecorder(true)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), `replication slot "nope" does not exist`) || !strings.Contains(err.Error(), "dzhook setup") {
		t.Fatalf("Run = %v, want a missing-slot error naming the fix", err)
	}
}

// TestFirstSessionUsesTheHandedConnection: a replication connection
// handed in Config.Conn carries the first session (the walsender is its
// backend), and Run closes one no session took.
func TestFirstSessionUsesTheHandedConnection(t *testing.T) {
	db := setupRef(t)
	ctx := context.Background()
	conn, err := ConnectReplication(ctx, db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(true)
	startStreamWith(t, db, rec, func(c *Config) { c.Conn = conn })
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'u1@x')`)
	rec.waitCommits(t, 1)
	var pid uint32
	if err := db.Connect(t).QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'dzhook'`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if pid != conn.PID() {
		t.Fatalf("the slot is streamed by backend %d, not the handed connection's %d", pid, conn.PID())
	}

	unused, err := ConnectReplication(ctx, db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{DSN: db.DSN, Slot: "nope", Publication: "nope", Handler: newRecorder(true), Conn: unused, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(ctx); err == nil {
		t.Fatal("Run on a missing slot returned nil")
	}
	if !unused.IsClosed() {
		t.Error("Run returned without closing the connection no session took")
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testLogger writes log lines to the test's log, shown with -v or on
// failure.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestIdleStreamIsQuiet: an idle stream whose idle positions are made
// durable first (PersistIdle) answers the server's keepalives without a
// ping-pong. The walsender pings again as soon as it has an answer while
// the client reports both write and flush behind its sending position;
// an idle stream reported write = the end of the last data, and each
// reply brought the next ping at once: both processes busy (~60% of a
// core each) with nothing to send.
func TestIdleStreamIsQuiet(t *testing.T) {
	db := setupRef(t)
	rec := newRecorder(true)
	// Durable at once, as the journal makes it within a batch.
	s := startStreamWith(t, db, rec, func(c *Config) { c.PersistIdle = func(lsn pglogrepl.LSN) { go rec.stream.Ack(lsn) } })
	// A published change, then WAL the walsender decodes and skips (a
	// table outside the publication): its sending position moves past
	// the last data it sent.
	db.Exec(t, `INSERT INTO users (id, email) VALUES (1, 'a@company.com')`)
	rec.waitCommits(t, 1)
	db.Exec(t, `CREATE TABLE noise (v text)`, `INSERT INTO noise SELECT 'x' FROM generate_series(1, 100)`)
	deadline := time.Now().Add(30 * time.Second)
	for !s.idle() {
		if time.Now().After(deadline) {
			t.Fatal("the stream did not become idle")
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := s.Stats().StatusUpdates
	const window = 2 * time.Second
	time.Sleep(window) // the measured stretch: a count over time, not a wait for a condition
	sent := s.Stats().StatusUpdates - before
	// One every StatusInterval (200 ms), and a reply to each keepalive the
	// server sends on its own (every wal_sender_timeout/2 at most).
	if sent > 30 {
		t.Fatalf("%d status updates in %s of idleness: the stream ping-pongs with the walsender", sent, window)
	}
	t.Logf("%d status updates in %s idle", sent, window)
}

// TestSetupRefusesALostSlot: a slot whose WAL is lost (max_slot_wal_keep_size
// exceeded) fails setup, its check included, naming the fix: setup
// reported everything in place, and only the stream said so later.
func TestSetupRefusesALostSlot(t *testing.T) {
	t.Parallel()
	c, err := pgtest.Start(pgtest.Options{Settings: map[string]string{"max_slot_wal_keep_size": "1MB", "min_wal_size": "32MB", "max_wal_size": "32MB"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx := context.Background()
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE lost"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "lost", dzsql.Schema); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, c.DSN("lost"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	cfg := SetupConfig{Slot: "dzhook", Publication: "dzhook", Tables: referenceTables}
	if _, err := Setup(ctx, conn, cfg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := c.Exec(ctx, "lost", `CREATE TABLE IF NOT EXISTS filler (x text)`, `INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)`,
			`SELECT pg_switch_wal()`, `CHECKPOINT`); err != nil {
			t.Fatal(err)
		}
		var status string
		if err := conn.QueryRow(ctx, `SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'dzhook'`).Scan(&status); err != nil {
			t.Fatal(err)
		}
		if status == "lost" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot's WAL was not lost within a minute (wal_status %s)", status)
		}
	}
	for _, check := range []bool{true, false} {
		cfg.CheckOnly = check
		if _, err := Setup(ctx, conn, cfg); err == nil || !strings.Contains(err.Error(), "has lost required WAL") {
			t.Errorf("setup (check only %v) with a lost slot: %v, want it refused naming the fix", check, err)
		}
	}
}

// TestSlotOlderThanItsPublication: a slot made before its publication
// (Patroni's permanent slot, one made by hand) cannot decode the changes
// committed in between: the walsender says "publication does not exist"
// at every session. The stream says why, and how out, in /readyz's words.
func TestSlotOlderThanItsPublication(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema)
	db.Exec(t, `SELECT pg_create_logical_replication_slot('dzhook', 'pgoutput')`,
		`INSERT INTO users (id, email) VALUES (1, 'before@x')`)
	runSetup(t, db, SetupConfig{Slot: "dzhook", Publication: "dzhook", Tables: referenceTables,
		FullIdentity: []string{"public.users", "public.requests", "public.request_slas"}})
	s := startStreamWith(t, db, newRecorder(true), func(*Config) {})
	var problem string
	deadline := time.Now().Add(20 * time.Second)
	for ; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if problem = s.Problem(); strings.Contains(problem, "older than the publication") {
			break
		}
	}
	if !strings.Contains(problem, `the publication "dzhook" is missing as of a change the slot "dzhook" holds`) || !strings.Contains(problem, "--accept-gap") {
		t.Errorf("/readyz's reason %q, want the slot older than its publication, and the way out", problem)
	}
}
