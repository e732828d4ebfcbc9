package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// shared is the cluster of the current test binary. Package state is
// acceptable here: a test binary is one process with one cluster, and Main
// owns its lifetime.
var shared struct {
	once    sync.Once
	cluster *Cluster
	err     error
}

// Main runs the package's tests and then removes the cluster, if any test
// started one. Use it from TestMain: os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if shared.cluster != nil {
		shared.cluster.Close()
	}
	return code
}

// Shared returns the test binary's cluster, starting it on first use.
// Without PostgreSQL it skips the test, or fails it when CI=true, since a
// missing dependency must never pass as a skipped suite in CI.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	shared.once.Do(func() { shared.cluster, shared.err = Start(Options{}) })
	if shared.err != nil {
		Unavailable(t, "PostgreSQL: %v", shared.err)
	}
	// The product's contract is PostgreSQL 15; FindBin falls back to any
	// version, which a developer may want, but CI must not pass on it.
	if v := shared.cluster.Version / 10000; v != 15 && InCI() {
		t.Fatalf("CI=%s: the tests ran on PostgreSQL %d, not 15 (install postgresql-15, or set PG_BIN)", os.Getenv("CI"), v)
	}
	return shared.cluster
}

// Unavailable stops a test whose external dependency is missing: a skip on
// a developer's machine, a failure under CI=true.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=%s and a dependency is missing: "+format, append([]any{os.Getenv("CI")}, args...)...)
	}
	t.Skipf("skipped, a dependency is missing (CI=true makes this a failure): "+format, args...)
}

// InCI reports whether the tests run under CI: CI set to a true value
// (true, 1, True), as every CI service sets it. Compared with "true"
// alone, CI=1 skipped every database test and the run passed.
func InCI() bool {
	ci, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && ci
}

// DB is a fresh database in the shared cluster, dropped with the test.
type DB struct {
	// Name of the database.
	Name string
	// DSN connects to it as the superuser.
	DSN string
	// Cluster serves it.
	Cluster *Cluster
}

// NewDB creates an empty database for t. At the end of the test it drops
// the replication slots that live in it (a leaked slot holds WAL) and the
// database itself.
func NewDB(t testing.TB) *DB {
	t.Helper()
	c := Shared(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "t_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.DropDatabase(ctx, name); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	return &DB{Name: name, DSN: c.DSN(name), Cluster: c}
}

// Exec runs statements in database db.
func (c *Cluster) Exec(ctx context.Context, db string, sql ...string) error {
	conn, err := pgx.Connect(ctx, c.DSN(db))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, s := range sql {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// DropDatabase drops db and the replication slots in it, ending the
// sessions that hold them.
func (c *Cluster) DropDatabase(ctx context.Context, db string) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for range 50 {
		_, err = conn.Exec(ctx, `
			SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
			 WHERE database = $1 AND active_pid IS NOT NULL`, db)
		if err != nil {
			return err
		}
		_, err = conn.Exec(ctx, `
			SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
			 WHERE database = $1 AND NOT active`, db)
		if err == nil {
			var left int
			if err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, db).Scan(&left); err == nil && left == 0 {
				break
			}
		}
		time.Sleep(100 * time.Millisecond) // a terminated walsender takes a moment to release its slot
	}
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)")
	return err
}

// Exec runs statements in the test's database and fails the test on error.
func (d *DB) Exec(t testing.TB, sql ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := d.Cluster.Exec(ctx, d.Name, sql...); err != nil {
		t.Fatalf("exec: %v", err)
	}
}

// Hold begins a transaction on a connection of its own and runs sql in it,
// for the test to hold the locks it takes while it runs something beside
// it; the transaction is rolled back with the test unless it ended before.
func (d *DB) Hold(t testing.TB, sql string) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := d.Connect(t).Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return tx
}

// Connect opens a connection to the test's database, closed with the test.
func (d *DB) Connect(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, d.DSN)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
