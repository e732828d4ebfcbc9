package pgtest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestLogicalReplication proves the cluster does what every cdc test needs:
// a pgoutput slot sees a committed insert of a published table.
func TestLogicalReplication(t *testing.T) {
	db := NewDB(t)
	db.Exec(t,
		`CREATE TABLE items (id bigserial PRIMARY KEY, name text)`,
		`CREATE PUBLICATION smoke FOR TABLE items`,
		`SELECT pg_create_logical_replication_slot('smoke_slot', 'pgoutput')`,
		`INSERT INTO items (name) VALUES ('hello-from-smoke-test')`,
	)
	conn := db.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := conn.Query(ctx, `SELECT data FROM pg_logical_slot_peek_binary_changes('smoke_slot', NULL, NULL,
		'proto_version', '1', 'publication_names', 'smoke')`)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []byte
	found := false
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, data[0])
		if data[0] == 'I' && strings.Contains(string(data), "hello-from-smoke-test") {
			found = true
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	// pgoutput: Begin, Relation, Insert, Commit.
	if got, want := string(kinds), "BRIC"; got != want || !found {
		t.Fatalf("message kinds = %q (insert with the row found: %v), want %q with the row", got, found, want)
	}
}

func TestSettings(t *testing.T) {
	db := NewDB(t)
	conn := db.Connect(t)
	ctx := context.Background()
	for name, want := range map[string]string{"wal_level": "logical", "max_replication_slots": "64", "max_wal_senders": "64"} {
		var got string
		if err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s = %s, want %s", name, got, want)
		}
	}
}

func TestRestartKeepsData(t *testing.T) {
	c, err := Start(Options{})
	if err != nil {
		Unavailable(t, "%v", err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.Exec(ctx, "postgres", "CREATE TABLE kept (v int)", "INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "postgres", "DO $$ BEGIN IF (SELECT v FROM kept) <> 42 THEN RAISE 'lost'; END IF; END $$"); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	dir := c.Dir
	c.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cluster directory %s still exists after Close (err %v)", dir, err)
	}
}

// TestClonePromoted: the promoted copy accepts writes on timeline 2, with
// the original's data and system identifier, while the original goes on
// on timeline 1.
func TestClonePromoted(t *testing.T) {
	c, err := Start(Options{})
	if err != nil {
		Unavailable(t, "%v", err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.Exec(ctx, "postgres", "CREATE TABLE kept (v int)", "INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	p, err := c.ClonePromoted()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	timeline := func(cl *Cluster) (tli int, sys string) {
		conn, err := pgx.Connect(ctx, cl.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if err := conn.QueryRow(ctx, "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int, system_identifier::text FROM pg_control_system()").Scan(&tli, &sys); err != nil {
			t.Fatal(err)
		}
		return tli, sys
	}
	if err := p.Exec(ctx, "postgres", "INSERT INTO kept VALUES (43)", "DO $$ BEGIN IF (SELECT count(*) FROM kept) <> 2 THEN RAISE 'lost'; END IF; END $$"); err != nil {
		t.Fatalf("write on the promoted copy: %v", err)
	}
	tp, sp := timeline(p)
	to, so := timeline(c)
	if tp != 2 || to != 1 || sp != so {
		t.Errorf("promoted copy on timeline %d of %s, original on %d of %s; want 2 and 1 of the same cluster", tp, sp, to, so)
	}
}
