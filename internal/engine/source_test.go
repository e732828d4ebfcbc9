package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
	"github.com/dzdesk/dzhook/signer"
)

// hasRequest reports whether rc received request id's creation.
func hasRequest(rc *testutil.Receiver, id int) bool {
	for _, r := range rc.Requests() {
		if strings.Contains(string(r.Body), fmt.Sprintf(`"id":"req_%d"`, id)) {
			return true
		}
	}
	return false
}

// dropSlot drops the slot, ending the walsender that holds it first.
func dropSlot(t *testing.T, db *pgtest.DB, slot string) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, "slot "+slot+" dropped", func() bool {
		db.Exec(t, fmt.Sprintf(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '%s' AND active_pid IS NOT NULL`, slot))
		conn := db.Connect(t)
		defer conn.Close(context.Background())
		_, err := conn.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slot)
		return err == nil
	})
}

// TestGapWhenSlotDroppedWhileStopped: a slot dropped while dzhook is
// stopped, and created again by the next start, starts past the journal's
// position. The start refuses (naming both positions and the fix), records
// the gap and a notification once, until `setup --accept-gap` records the
// operator's acceptance; then dzhook streams again.
func TestGapWhenSlotDroppedWhileStopped(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := testConfigWith(t, db, "admin:\n  listen: \"\"\nnotify:\n  url: http://127.0.0.1:9/notify\n", "", sub("crm", rc.URL, "request.created"))
	_, stop := startStoppable(t, cfg)
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'before', 1)`)
	testutil.Eventually(t, 20*time.Second, "request 1 delivered", func() bool { return hasRequest(rc, 1) })
	stop()

	dropSlot(t, db, "dzhook")
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (2, 'in the gap', 1)`)

	for range 2 { // refused each time; recorded and notified once
		_, err := New(context.Background(), cfg, Options{Logger: testutil.Logger(t)})
		var gap *GapError
		if !errors.As(err, &gap) {
			t.Fatalf("start after the slot was dropped: %v, want a gap error", err)
		}
		for _, want := range []string{gap.From.String(), gap.To.String(), "dzhook setup --accept-gap", `slot "dzhook"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("gap error %q does not name %q", err, want)
			}
		}
	}
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.gaps WHERE accepted_at IS NULL AND to_lsn > from_lsn`); n != 1 {
		t.Errorf("%d unaccepted gaps recorded, want 1", n)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.notifications WHERE kind = 'stream.gap' AND subscription_id = ''`); n != 1 {
		t.Errorf("%d gap notifications queued, want 1", n)
	}

	actions, err := Setup(context.Background(), cfg, SetupOptions{AcceptGap: true})
	if err != nil || !strings.Contains(strings.Join(actions, "\n"), "accepted the gap") {
		t.Fatalf("setup --accept-gap: %v %q", err, actions)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.gaps WHERE accepted_at IS NOT NULL AND accepted_by LIKE '%accept-gap%'`); n != 1 {
		t.Errorf("%d accepted gaps recorded, want 1", n)
	}
	start(t, cfg)
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (3, 'after', 1)`)
	testutil.Eventually(t, 20*time.Second, "request 3 delivered after the gap was accepted", func() bool { return hasRequest(rc, 3) })
	if hasRequest(rc, 2) {
		t.Error("request 2, committed while there was no slot, was delivered: the test did not make a gap")
	}
}

// TestGapWhenSlotDroppedWhileRunning: the slot dropped under a running
// dzhook. The stream does not exit: /readyz says the slot is missing;
// once `dzhook setup` creates it again, the stream refuses the gap
// (/readyz says so) until it is accepted, then streams on.
func TestGapWhenSlotDroppedWhileRunning(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	admin := testutil.NewReceiver(t)
	cfg := testConfigWith(t, db, "admin:\n  listen: \"\"\nnotify:\n  url: "+admin.URL+"\n", "", sub("crm", rc.URL, "request.created"))
	e := start(t, cfg)
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'before', 1)`)
	testutil.Eventually(t, 20*time.Second, "request 1 delivered", func() bool { return hasRequest(rc, 1) })

	dropSlot(t, db, "dzhook")
	readyWith := func(what, want string) {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, what, func() bool {
			err := e.Ready(context.Background())
			return err != nil && strings.Contains(err.Error(), want)
		})
	}
	readyWith("/readyz names the missing slot", `replication slot "dzhook" does not exist`)
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (2, 'in the gap', 1)`)

	var gap *GapError
	if _, err := Setup(context.Background(), cfg, SetupOptions{}); !errors.As(err, &gap) {
		t.Fatalf("setup after the slot was dropped: %v, want a gap error", err)
	}
	readyWith("/readyz names the gap", "gap in the change stream")
	testutil.Eventually(t, 20*time.Second, "the admin notified of the gap", func() bool {
		for _, r := range admin.Requests() {
			if r.Header.Get(signer.HeaderEvent) == "stream.gap" && strings.Contains(string(r.Body), gap.To.String()) {
				return true
			}
		}
		return false
	})
	if _, err := Setup(context.Background(), cfg, SetupOptions{AcceptGap: true}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "streaming again", func() bool { return e.Ready(context.Background()) == nil })
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (3, 'after', 1)`)
	testutil.Eventually(t, 20*time.Second, "request 3 delivered", func() bool { return hasRequest(rc, 3) })
	if hasRequest(rc, 2) {
		t.Error("request 2, committed while there was no slot, was delivered: the test did not make a gap")
	}
}

// TestNoGapAfterIdleStretch: a stream idle while other WAL is written
// confirms the server's WAL end; a restart must not take that for a gap.
func TestNoGapAfterIdleStretch(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := testConfig(t, db, "", sub("crm", rc.URL, "request.created"))
	_, stop := startStoppable(t, cfg)
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'one', 1)`)
	testutil.Eventually(t, 20*time.Second, "request 1 delivered", func() bool { return hasRequest(rc, 1) })
	// WAL that is not in the publication, until the slot is confirmed
	// past the last transaction's end.
	end := queryInt(t, db, `SELECT (pg_current_wal_lsn() - '0/0')::bigint`)
	db.Exec(t, `CREATE TABLE other (x int)`)
	testutil.Eventually(t, 30*time.Second, "the slot confirmed past the idle stretch", func() bool {
		db.Exec(t, `INSERT INTO other SELECT 1`, `SELECT pg_switch_wal()`)
		return queryInt(t, db, `SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = 'dzhook'`) > end
	})
	stop()
	start(t, cfg)
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (2, 'two', 1)`)
	testutil.Eventually(t, 20*time.Second, "request 2 delivered after a restart", func() bool { return hasRequest(rc, 2) })
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.gaps`); n != 0 {
		t.Errorf("%d gaps recorded after an idle stretch, want 0", n)
	}
}

// TestSecondSlotRefused: a second process configured with another slot on
// the same source and journal would deliver everything twice; it is
// refused at start, naming the slot already streaming, and creates no
// slot.
func TestSecondSlotRefused(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	start(t, testConfig(t, db, "", sub("crm", rc.URL, "request.created")))
	second := testConfigWith(t, db, "admin:\n  listen: \"\"\n", "", sub("crm", rc.URL, "request.created"))
	second.Source.Slot = "dzhook_second"
	_, err := New(context.Background(), second, Options{Logger: testutil.Logger(t)})
	if err == nil || !strings.Contains(err.Error(), `by replication slot "dzhook"`) || !strings.Contains(err.Error(), "a second time") {
		t.Fatalf("second slot on the same journal: %v, want a refusal naming slot dzhook", err)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'dzhook_second'`); n != 0 {
		t.Errorf("the refused start created its slot")
	}
}

// TestFailedJournalMigrationLeavesNoSlot: the journal is migrated before
// the slot is created, so a start that fails on the journal leaves no
// slot holding WAL.
func TestFailedJournalMigrationLeavesNoSlot(t *testing.T) {
	db := newDB(t)
	db.Exec(t, `CREATE SCHEMA dzhook`, `CREATE TABLE dzhook.events (in_the_way int)`)
	cfg := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
	if _, err := New(context.Background(), cfg, Options{Logger: testutil.Logger(t)}); err == nil {
		t.Fatal("start with a journal that cannot be migrated succeeded")
	}
	if n := queryInt(t, db, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); n != 0 {
		t.Errorf("the failed start left %d replication slot(s) holding WAL", n)
	}
}

// TestReadyNamesRevokedReplication: REPLICATION revoked from the source's
// role while dzhook runs: /readyz says so instead of "connecting".
func TestReadyNamesRevokedReplication(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	role := "dz_" + db.Name
	db.Exec(t, fmt.Sprintf(`CREATE ROLE %s LOGIN REPLICATION`, role), fmt.Sprintf(`GRANT SELECT ON ALL TABLES IN SCHEMA public TO %s`, role))
	cfg := testConfig(t, db, "", sub("crm", rc.URL, "request.created"))
	if _, err := Setup(context.Background(), cfg, SetupOptions{}); err != nil { // as the superuser
		t.Fatal(err)
	}
	cfg.Journal.DSN = cfg.JournalDSN()
	cfg.Source.DSN = config.Secret(strings.Replace(db.DSN, "postgres@", role+"@", 1))
	t.Cleanup(func() { db.Exec(t, fmt.Sprintf(`DROP OWNED BY %s`, role), fmt.Sprintf(`DROP ROLE %s`, role)) })
	e := start(t, cfg)
	testutil.Eventually(t, 20*time.Second, "streaming as the role", func() bool { return e.Ready(context.Background()) == nil })
	db.Exec(t, fmt.Sprintf(`ALTER ROLE %s NOREPLICATION`, role),
		`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'dzhook' AND active_pid IS NOT NULL`)
	testutil.Eventually(t, 30*time.Second, "/readyz names the permission", func() bool {
		err := e.Ready(context.Background())
		return err != nil && strings.Contains(err.Error(), "REPLICATION attribute")
	})
}

// TestReadsCheckedAsSourceRole: a source role that cannot SELECT from the
// users table started cleanly and sent every email null. The start and
// `dzhook setup` refuse it, giving the GRANT; setup with the owner's DSN
// checks it as source.dsn's role too, not the owner, who reads
// everything.
func TestReadsCheckedAsSourceRole(t *testing.T) {
	db := newDB(t)
	role := "dz_" + db.Name
	db.Exec(t, fmt.Sprintf(`CREATE ROLE %s LOGIN REPLICATION`, role), fmt.Sprintf(`GRANT SELECT ON request_slas TO %s`, role))
	t.Cleanup(func() { db.Exec(t, fmt.Sprintf(`DROP OWNED BY %s`, role), fmt.Sprintf(`DROP ROLE %s`, role)) })
	cfg := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
	cfg.Journal.DSN = cfg.JournalDSN()
	cfg.Source.DSN = config.Secret(strings.Replace(db.DSN, "postgres@", role+"@", 1))
	want := "mapping.users.table: role " + role + " cannot SELECT column id, email of public.users"
	fix := "GRANT SELECT (id, email) ON public.users TO " + role
	ctx := context.Background()
	for _, opts := range []SetupOptions{{CheckOnly: true}, {OwnerDSN: db.DSN}} {
		if _, err := Setup(ctx, cfg, opts); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), fix) {
			t.Errorf("setup (owner's DSN given: %v) = %v, want %q and %q", opts.OwnerDSN != "", err, want, fix)
		}
	}
	if _, err := New(ctx, cfg, Options{Logger: testutil.Logger(t)}); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("start = %v, want %q", err, want)
	}
	db.Exec(t, fmt.Sprintf(`GRANT SELECT ON users TO %s`, role))
	if _, err := Setup(ctx, cfg, SetupOptions{OwnerDSN: db.DSN}); err != nil {
		t.Errorf("setup with the owner's DSN after the GRANT = %v, want nil", err)
	}
}

// TestPublicationListsRefused: a publication that publishes a mapped
// table with a row filter or a column list is refused by setup and at
// start, naming the statement that publishes it whole. A row filter lost
// the events of the rows it filtered out without a word; beside a column
// list, setup's REPLICA IDENTITY FULL made PostgreSQL refuse the
// application's UPDATEs on the table.
func TestPublicationListsRefused(t *testing.T) {
	t.Run("row filter", func(t *testing.T) {
		db := newDB(t)
		db.Exec(t, `CREATE PUBLICATION dzhook FOR TABLE users, requests WHERE (priority = 'urgent'), comments, request_slas, dzhook_outbox`)
		cfg := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
		for _, check := range []bool{false, true} {
			_, err := Setup(context.Background(), cfg, SetupOptions{CheckOnly: check})
			if err == nil || !strings.Contains(err.Error(), "public.requests with a row filter") || !strings.Contains(err.Error(), `ADD TABLE "public"."requests"`) {
				t.Errorf("setup (check only %v): %v, want the row filter refused with the statement", check, err)
			}
		}
		if _, err := New(context.Background(), cfg, Options{Logger: testutil.Logger(t)}); err == nil || !strings.Contains(err.Error(), "row filter") {
			t.Errorf("start: %v, want the row filter refused", err)
		}
	})
	t.Run("column list", func(t *testing.T) {
		db := newDB(t)
		db.Exec(t, `ALTER TABLE requests REPLICA IDENTITY DEFAULT`,
			`CREATE PUBLICATION dzhook FOR TABLE users, requests (id, title, status, priority, requester_id, assigned_to_id, created_at, updated_at), comments, request_slas, dzhook_outbox`,
			`INSERT INTO requests (id, title, requester_id) VALUES (1, 'one', 1)`)
		cfg := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
		_, err := Setup(context.Background(), cfg, SetupOptions{})
		if err == nil || !strings.Contains(err.Error(), "public.requests with a column list") {
			t.Errorf("setup: %v, want the column list refused", err)
		}
		db.Exec(t, `UPDATE requests SET status = 'closed' WHERE id = 1`) // the application still updates it
	})
}

// TestJournalPublishedRefused: a publication that publishes the journal's
// own tables, in the source database, is refused at setup and at start,
// with the statement that fixes it: each journal write came back through
// the stream as a transaction to journal (a write loop while idle). With
// the journal in another database the same publication is fine.
func TestJournalPublishedRefused(t *testing.T) {
	t.Run("all tables", func(t *testing.T) {
		db := newDB(t)
		db.Exec(t, `CREATE PUBLICATION dzhook FOR ALL TABLES`)
		cfg := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
		for _, check := range []bool{false, true} {
			_, err := Setup(context.Background(), cfg, SetupOptions{CheckOnly: check})
			if err == nil || !strings.Contains(err.Error(), `publishes the journal's own tables (dzhook.attempts,`) || !strings.Contains(err.Error(), `DROP PUBLICATION "dzhook"`) {
				t.Errorf("setup (check only %v): %v, want the journal's tables named and the fix", check, err)
			}
		}
		if _, err := New(context.Background(), cfg, Options{Logger: testutil.Logger(t)}); err == nil || !strings.Contains(err.Error(), "journal's own tables") {
			t.Errorf("start: %v, want the publication refused", err)
		}
	})
	t.Run("the journal's schema", func(t *testing.T) {
		db := newDB(t)
		cfg := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
		if _, err := Setup(context.Background(), cfg, SetupOptions{}); err != nil {
			t.Fatal(err)
		}
		db.Exec(t, `ALTER PUBLICATION dzhook ADD TABLES IN SCHEMA dzhook`)
		_, err := Setup(context.Background(), cfg, SetupOptions{})
		if err == nil || !strings.Contains(err.Error(), `ALTER PUBLICATION "dzhook" DROP TABLE dzhook.attempts, `) {
			t.Errorf("setup: %v, want the journal's tables named in the fix", err)
		}
	})
	t.Run("the journal in the mapped tables' schema", func(t *testing.T) {
		db := newDB(t)
		cfg := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
		cfg.Journal.Schema = "public"
		if _, err := Setup(context.Background(), cfg, SetupOptions{}); err != nil {
			t.Errorf("setup with journal.schema public and the publication setup makes: %v", err)
		}
		db.Exec(t, `ALTER PUBLICATION dzhook ADD TABLE public.deliveries`)
		_, err := Setup(context.Background(), cfg, SetupOptions{})
		if err == nil || !strings.Contains(err.Error(), `(public.deliveries; journal.schema "public"`) {
			t.Errorf("setup with the journal's deliveries published: %v, want them named, and them alone", err)
		}
	})
	t.Run("a journal in another database", func(t *testing.T) {
		db, journalDB := newDB(t), newDB(t)
		// A schema of the journal's name left in the source database (a
		// journal moved away) is not the journal.
		db.Exec(t, `CREATE SCHEMA dzhook`, `CREATE TABLE dzhook.deliveries (id text PRIMARY KEY)`, `CREATE PUBLICATION dzhook FOR ALL TABLES`)
		cfg := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
		cfg.Journal.DSN = config.Secret(journalDB.DSN)
		if _, err := Setup(context.Background(), cfg, SetupOptions{}); err != nil {
			t.Errorf("setup with the journal in another database: %v", err)
		}
	})
}

// TestPublicationWithCapitals: a publication named with capitals (setup
// makes it quoted) is the one the stream reads. The stream named it
// unquoted, which pgoutput folds to lower case: "publication dzhook does
// not exist" at every session, nothing delivered, and the advice to drop
// the slot.
func TestPublicationWithCapitals(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	cfg := testConfig(t, db, "", sub("crm", rc.URL, "request.created"))
	cfg.Source.Publication = "DzHook"
	if _, err := Setup(context.Background(), cfg, SetupOptions{}); err != nil {
		t.Fatal(err)
	}
	start(t, cfg)
	db.Exec(t, `INSERT INTO requests (title, requester_id) VALUES ('capitals', 1)`)
	rc.Wait(t, 1, 20*time.Second)
}

// TestGapAfterSetupBeforeTheFirstRun: a slot dropped and created again
// between `dzhook setup` and the first start, after a transaction
// committed, is a gap: setup makes the slot's position the journal's.
// With no checkpoint the start took the new slot silently, and the
// transaction's events were lost.
func TestGapAfterSetupBeforeTheFirstRun(t *testing.T) {
	db := newDB(t)
	cfg := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
	if _, err := Setup(context.Background(), cfg, SetupOptions{}); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'after setup', 1)`)
	dropSlot(t, db, "dzhook")
	_, err := New(context.Background(), cfg, Options{Logger: testutil.Logger(t)})
	var gap *GapError
	if !errors.As(err, &gap) {
		t.Fatalf("a start after the slot was dropped and created again: %v, want a gap", err)
	}
}

// TestConcurrentSetups: setups run at once (the init containers of
// replicas starting together) each succeed, one after the other, and
// leave one slot and one publication.
func TestConcurrentSetups(t *testing.T) {
	db := newDB(t)
	cfg := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
	const n = 8
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := Setup(context.Background(), cfg, SetupOptions{})
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("a setup beside others: %v", err)
		}
	}
	if got := queryInt(t, db, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); got != 1 {
		t.Errorf("%d slots, want 1", got)
	}
}

// TestConcurrentSetupsTwoSlots: two setups on one source and journal with
// different slot names (a misconfigured second deployment), at once: one
// is refused as a second slot, before it makes one (each made its slot,
// and the refused one's stayed, holding WAL).
func TestConcurrentSetupsTwoSlots(t *testing.T) {
	for round := range 3 {
		db := newDB(t)
		a := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
		b := testConfig(t, db, "", sub("crm", "http://127.0.0.1:9/", "request.created"))
		// Slot names are the cluster's: each round its own.
		a.Source.Slot, b.Source.Slot = fmt.Sprintf("dzhook_a%d", round), fmt.Sprintf("dzhook_b%d", round)
		errs := make(chan error, 2)
		for _, cfg := range []*config.Config{a, b} {
			go func() {
				_, err := Setup(context.Background(), cfg, SetupOptions{})
				errs <- err
			}()
		}
		failed := 0
		for range 2 {
			if err := <-errs; err != nil {
				failed++
			}
		}
		if got := queryInt(t, db, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); failed != 1 || got != 1 {
			t.Errorf("round %d: %d setups refused, %d slots; want 1 and 1", round, failed, got)
		}
	}
}
