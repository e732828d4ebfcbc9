package deploy_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// rolePassword is the dzhook role's password in these tests (pgtest's
// cluster trusts every connection; the password only has to be accepted).
const rolePassword = "role-password-for-tests"

// psqlPath finds psql: beside the server binaries, or on PATH.
func psqlPath(t *testing.T) string {
	t.Helper()
	if dir, err := pgtest.FindBin(); err == nil {
		if p := filepath.Join(dir, "psql"); fileExists(p) {
			return p
		}
	}
	p, err := exec.LookPath("psql")
	if err != nil {
		pgtest.Unavailable(t, "psql (postgresql-client) not found: %v", err)
	}
	return p
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// pgEnv is the libpq environment that reaches db as the superuser.
func pgEnv(t *testing.T, db *pgtest.DB, psql string) []string {
	t.Helper()
	return []string{
		"PATH=" + filepath.Dir(psql) + string(os.PathListSeparator) + os.Getenv("PATH"),
		"PGHOST=127.0.0.1",
		"PGPORT=" + strconv.Itoa(db.Cluster.Port),
		"PGUSER=postgres",
		"PGDATABASE=" + db.Name,
		"PGCONNECT_TIMEOUT=10",
		"LC_ALL=C",
	}
}

// runPsql runs psql as the superuser on db and returns its exit code and
// output.
func runPsql(t *testing.T, db *pgtest.DB, args ...string) (int, string) {
	t.Helper()
	psql := psqlPath(t)
	cmd := exec.Command(psql, append([]string{"-X", "-v", "ON_ERROR_STOP=1", "-q"}, args...)...)
	cmd.Env = pgEnv(t, db, psql)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("psql: %v", err)
	}
	return 0, string(out)
}

// mustPsql is runPsql that fails the test on a non-zero exit.
func mustPsql(t *testing.T, db *pgtest.DB, args ...string) {
	t.Helper()
	if code, out := runPsql(t, db, args...); code != 0 {
		t.Fatalf("psql %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
}

// roleDSN connects to db as the dzhook role.
func roleDSN(db *pgtest.DB) string {
	return fmt.Sprintf("postgres://dzhook:%s@127.0.0.1:%d/%s?sslmode=disable", rolePassword, db.Cluster.Port, db.Name)
}

func queryOne[T any](t *testing.T, conn *pgx.Conn, sql string, args ...any) T {
	t.Helper()
	var v T
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// TestComposeInitAndLeastPrivilege runs compose/initdb.sh, which applies
// sql/role.sql and sql/publication.sql, on the reference schema (twice:
// they are idempotent), checks what the role may and may not do, and runs
// dzhook as that role with the Kubernetes configuration until it is ready,
// reloads on SIGHUP and drains on SIGTERM, as the manifests expect.
func TestComposeInitAndLeastPrivilege(t *testing.T) {
	db := pgtest.NewDB(t)
	psql := psqlPath(t)
	mustPsql(t, db, "-f", filepath.Join(env.deploy, "sql", "dzdesk-schema.sql"))

	// role.sql refuses to run without the password variable.
	if code, out := runPsql(t, db, "-f", filepath.Join(env.deploy, "sql", "role.sql")); code == 0 || !strings.Contains(out, "password") {
		t.Errorf("role.sql without -v password: exit %d, want a failure that asks for the password:\n%s", code, out)
	}

	for i := range 2 {
		cmd := exec.Command("/bin/sh", filepath.Join(env.deploy, "compose", "initdb.sh"))
		cmd.Env = append(pgEnv(t, db, psql),
			"POSTGRES_USER=postgres", "POSTGRES_DB="+db.Name,
			"DB_DZHOOK_PASSWORD="+rolePassword, "SQL_DIR="+filepath.Join(env.deploy, "sql"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("compose/initdb.sh, run %d: %v\n%s", i+1, err, out)
		}
	}

	su := db.Connect(t)
	var login, repl, super, createDB, createRole, bypassRLS bool
	err := su.QueryRow(context.Background(), `SELECT rolcanlogin, rolreplication, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = 'dzhook'`).
		Scan(&login, &repl, &super, &createDB, &createRole, &bypassRLS)
	if err != nil {
		t.Fatalf("role dzhook: %v", err)
	}
	if !login || !repl || super || createDB || createRole || bypassRLS {
		t.Errorf("role dzhook: login=%v replication=%v superuser=%v createdb=%v createrole=%v bypassrls=%v, want LOGIN REPLICATION only",
			login, repl, super, createDB, createRole, bypassRLS)
	}
	if owner := queryOne[string](t, su, `SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'dzhook'`); owner != "dzhook" {
		t.Errorf("schema dzhook is owned by %s, want dzhook", owner)
	}
	tables := []string{"users", "requests", "comments", "request_slas", "dzhook_outbox"}
	for _, tbl := range tables {
		for priv, want := range map[string]bool{"SELECT": true, "INSERT": false, "UPDATE": false, "DELETE": false, "TRUNCATE": false} {
			if got := queryOne[bool](t, su, `SELECT has_table_privilege('dzhook', $1, $2)`, "public."+tbl, priv); got != want {
				t.Errorf("dzhook %s on %s: %v, want %v", priv, tbl, got, want)
			}
		}
	}
	rows, err := su.Query(context.Background(), `SELECT tablename FROM pg_publication_tables WHERE pubname = 'dzhook' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := slices.Sorted(slices.Values(tables)); !slices.Equal(published, want) {
		t.Errorf("publication dzhook has %v, want %v", published, want)
	}
	for _, tbl := range []string{"users", "requests", "request_slas"} {
		if id := queryOne[string](t, su, `SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass`, "public."+tbl); id != "f" {
			t.Errorf("%s: REPLICA IDENTITY %q, want FULL", tbl, id)
		}
	}
	if plugin := queryOne[string](t, su, `SELECT plugin::text FROM pg_replication_slots WHERE slot_name = 'dzhook' AND database = current_database()`); plugin != "pgoutput" {
		t.Errorf("slot dzhook: plugin %q, want pgoutput", plugin)
	}

	// What only the owner may do stays out of reach.
	ctx := context.Background()
	role, err := pgx.Connect(ctx, roleDSN(db))
	if err != nil {
		t.Fatalf("connect as dzhook: %v", err)
	}
	defer role.Close(ctx)
	for _, stmt := range []string{
		`ALTER TABLE public.requests REPLICA IDENTITY DEFAULT`,
		`INSERT INTO public.users (email) VALUES ('x@example.com')`,
		`CREATE TABLE public.x (id int)`,
	} {
		if _, err := role.Exec(ctx, stmt); err == nil {
			t.Errorf("as dzhook, %s succeeded; the role has more than it needs", stmt)
		}
	}

	// dzhook as the role: setup --check passes and creates the journal,
	// which the role owns.
	composeEnv := map[string]string{
		"DZHOOK_SOURCE_DSN": roleDSN(db), "DZHOOK_ADMIN_TOKEN": "admin-token-for-tests",
		"RECEIVER_WEBHOOK_SECRET": "receiver-secret-for-tests",
	}
	composeConfig := filepath.Join(env.deploy, "compose", "config.yaml")
	for i := range 2 {
		r := dzhook(t, environList(composeEnv), "setup", "--check", "--config", composeConfig)
		if r.code != 0 {
			t.Fatalf("dzhook setup --check as the dzhook role (run %d): exit %d\n%s%s", i+1, r.code, r.stdout, r.stderr)
		}
		if i == 1 && !strings.Contains(r.stdout, "everything is in place") {
			t.Errorf("dzhook setup --check, second run: %q, want everything in place", r.stdout)
		}
	}
	if n := queryOne[int](t, su, `SELECT count(*)::int FROM pg_tables WHERE schemaname = 'dzhook' AND tableowner = 'dzhook'`); n == 0 {
		t.Errorf("no journal table owned by dzhook in schema dzhook")
	}
	if n := queryOne[int](t, su, `SELECT count(*)::int FROM pg_tables WHERE schemaname = 'dzhook' AND tableowner <> 'dzhook'`); n != 0 {
		t.Errorf("%d journal tables not owned by dzhook", n)
	}

	runKubernetesConfig(t, db)
}

// runKubernetesConfig runs `dzhook run` with the Kubernetes ConfigMap and
// the pod's environment (the DSN pointed at db, the admin server on a free
// loopback port): /readyz turns 200, SIGHUP reloads, SIGTERM drains within
// the unit's TimeoutStopSec.
func runKubernetesConfig(t *testing.T, db *pgtest.DB) {
	k := loadK8s(t)
	if len(k.sets) != 1 {
		t.Fatalf("%d StatefulSets in deploy/kubernetes, want 1", len(k.sets))
	}
	pod := asMap(get(k.sets[0], "spec", "template", "spec"))
	dz := container(pod, "dzhook")
	inv := checkInvocation(t, "dzhook container args", strs(dz, "args"))
	configYAML := mountedFile(t, "dzhook container", pod, dz, k, inv.flags["config"])
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(configYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	environ := k.containerEnv(t, "dzhook container", dz)
	environ["DZHOOK_SOURCE_DSN"] = roleDSN(db)
	environ["DZHOOK_ADMIN_LISTEN"] = addr
	delete(environ, "DZHOOK_CONFIG")

	cmd := exec.Command(env.bin, inv.sub, "--config", path)
	cmd.Env = environList(environ)
	var stderr testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	client := &http.Client{Timeout: 5 * time.Second}
	status := func(path string, token string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(30 * time.Second)
	for status("/readyz", "") != http.StatusOK {
		select {
		case err := <-exited:
			t.Fatalf("dzhook run as the dzhook role exited before it was ready: %v\n%s", err, stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("dzhook run as the dzhook role: /readyz not 200 within 30s\n%s", stderr.String())
		}
	}
	if s := status("/healthz", ""); s != http.StatusOK {
		t.Errorf("/healthz: %d", s)
	}
	if s := status("/v1/subscriptions", environ["DZHOOK_ADMIN_TOKEN"]); s != http.StatusOK {
		t.Errorf("/v1/subscriptions with the Secret's admin token: %d", s)
	}

	// SIGHUP reloads (systemd's ExecReload) and keeps running.
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, &stderr, "configuration reloaded", 10*time.Second)
	if s := status("/readyz", ""); s != http.StatusOK {
		t.Errorf("/readyz after SIGHUP: %d", s)
	}

	// SIGTERM drains within the unit's TimeoutStopSec.
	u := parseUnit(t, filepath.Join(env.deploy, "systemd", "dzhook.service"))
	budget, err := parseTimespan(u.one("Service", "TimeoutStopSec"))
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("dzhook run after SIGTERM: %v, want exit 0\n%s", err, stderr.String())
		}
		t.Logf("dzhook stopped %s after SIGTERM", time.Since(began).Round(time.Millisecond))
	case <-time.After(budget):
		t.Fatalf("dzhook run did not stop within TimeoutStopSec=%s of SIGTERM\n%s", budget, stderr.String())
	}
}

// TestSetupAsTableOwner is the other way to prepare the database: the
// tables' owner runs `dzhook setup` with the owner's DSN as source and the
// role's DSN as journal, so the journal still belongs to the role; the
// role then finds everything in place.
func TestSetupAsTableOwner(t *testing.T) {
	db := pgtest.NewDB(t)
	mustPsql(t, db, "-f", filepath.Join(env.deploy, "sql", "dzdesk-schema.sql"))
	mustPsql(t, db, "-v", "password="+rolePassword, "-f", filepath.Join(env.deploy, "sql", "role.sql"))

	composeConfig := filepath.Join(env.deploy, "compose", "config.yaml")
	base := map[string]string{
		"DZHOOK_ADMIN_TOKEN": "admin-token-for-tests", "RECEIVER_WEBHOOK_SECRET": "receiver-secret-for-tests",
		// Slot names are cluster-wide; the other test's database may still
		// hold "dzhook".
		"DZHOOK_SOURCE_SLOT": "dzhook_owner_setup",
	}
	owner := maps(base, map[string]string{"DZHOOK_SOURCE_DSN": db.DSN, "DZHOOK_JOURNAL_DSN": roleDSN(db)})
	if r := dzhook(t, environList(owner), "setup", "--config", composeConfig); r.code != 0 {
		t.Fatalf("dzhook setup as the owner, journal as the role: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	role := maps(base, map[string]string{"DZHOOK_SOURCE_DSN": roleDSN(db)})
	r := dzhook(t, environList(role), "setup", "--check", "--config", composeConfig)
	if r.code != 0 || !strings.Contains(r.stdout, "everything is in place") {
		t.Fatalf("dzhook setup --check as the role: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	su := db.Connect(t)
	if n := queryOne[int](t, su, `SELECT count(*)::int FROM pg_tables WHERE schemaname = 'dzhook' AND tableowner <> 'dzhook'`); n != 0 {
		t.Errorf("%d journal tables not owned by dzhook", n)
	}
}

// maps merges maps into a new one, later ones winning.
func maps(ms ...map[string]string) map[string]string {
	out := make(map[string]string)
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// waitFor waits until the buffer contains s.
func waitFor(t *testing.T, b *testutil.SyncBuffer, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(b.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("%q did not appear within %s:\n%s", s, timeout, b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSetupOwnerWithoutReplication: the tables' owner need not replicate
// (CloudNativePG's app owner cannot): `dzhook setup --owner-dsn-env`
// makes the publication and REPLICA IDENTITY with the owner's DSN and the
// slot with the dzhook role's, which replicates. With the owner's DSN as
// source.dsn, setup failed: the owner cannot make the slot.
func TestSetupOwnerWithoutReplication(t *testing.T) {
	db, ownerDSN := plainOwnerDB(t)
	// In another time zone than the role's: the same server all the same.
	ownerDSN += "&timezone=Asia/Tokyo"

	composeConfig := filepath.Join(env.deploy, "compose", "config.yaml")
	vars := map[string]string{
		"DZHOOK_ADMIN_TOKEN": "admin-token-for-tests", "RECEIVER_WEBHOOK_SECRET": "receiver-secret-for-tests",
		"DZHOOK_SOURCE_SLOT": "dzhook_plain_owner", "DZHOOK_SOURCE_DSN": roleDSN(db), "OWNER_DSN": ownerDSN,
	}
	r := dzhook(t, environList(vars), "setup", "--config", composeConfig, "--owner-dsn-env", "OWNER_DSN")
	if r.code != 0 || !strings.Contains(r.stdout, "created replication slot") {
		t.Fatalf("dzhook setup --owner-dsn-env: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	su := db.Connect(t)
	if n := queryOne[int](t, su, `SELECT count(*)::int FROM pg_class WHERE relname IN ('users', 'requests', 'request_slas') AND relreplident = 'f'`); n != 3 {
		t.Errorf("%d tables with REPLICA IDENTITY FULL, want 3", n)
	}
	if owner := queryOne[string](t, su, `SELECT pubowner::regrole::text FROM pg_publication WHERE pubname = 'dzhook'`); owner != "appowner" {
		t.Errorf("the publication is %s's, want the owner's", owner)
	}
	r = dzhook(t, environList(vars), "setup", "--check", "--config", composeConfig)
	if r.code != 0 || !strings.Contains(r.stdout, "everything is in place") {
		t.Errorf("dzhook setup --check as the role after: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	delete(vars, "OWNER_DSN")
	if r := dzhook(t, environList(vars), "setup", "--config", composeConfig, "--owner-dsn-env", "OWNER_DSN"); r.code != 2 || !strings.Contains(r.stderr, "OWNER_DSN is not set") {
		t.Errorf("--owner-dsn-env naming an unset variable: exit %d\n%s", r.code, r.stderr)
	}
}

// plainOwnerDB is a database whose tables belong to appowner, a role
// without REPLICATION, with the dzhook role of role.sql.
func plainOwnerDB(t *testing.T) (*pgtest.DB, string) {
	db := pgtest.NewDB(t)
	mustPsql(t, db, "-c", "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'appowner') THEN CREATE ROLE appowner LOGIN; END IF; END$$",
		"-c", fmt.Sprintf("GRANT CREATE ON DATABASE %q TO appowner", db.Name),
		"-c", "GRANT CREATE, USAGE ON SCHEMA public TO appowner")
	mustPsql(t, db, "-c", "SET ROLE appowner", "-f", filepath.Join(env.deploy, "sql", "dzdesk-schema.sql"))
	mustPsql(t, db, "-v", "password="+rolePassword, "-f", filepath.Join(env.deploy, "sql", "role.sql"))
	return db, fmt.Sprintf("postgres://appowner@127.0.0.1:%d/%s?sslmode=disable", db.Cluster.Port, db.Name)
}

// TestPublicationSQLAsPlainOwner: publication.sql run by an owner that
// may not replicate makes the publication and the identity, leaves the
// slot with a notice (it failed, exit 3, after committing the rest), and
// the role's `dzhook setup` makes the slot.
func TestPublicationSQLAsPlainOwner(t *testing.T) {
	db, _ := plainOwnerDB(t)
	// As on RDS, where rds_replication stands for REPLICATION: appowner
	// is not a member, and the check must still read one row.
	mustPsql(t, db, "-c", "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_replication') THEN CREATE ROLE rds_replication; END IF; END$$")
	code, out := runPsql(t, db, "-c", "SET ROLE appowner", "-f", filepath.Join(env.deploy, "sql", "publication.sql"))
	if code != 0 || !strings.Contains(out, "may not replicate") {
		t.Fatalf("publication.sql as appowner: exit %d\n%s", code, out)
	}
	vars := map[string]string{
		"DZHOOK_ADMIN_TOKEN": "admin-token-for-tests", "RECEIVER_WEBHOOK_SECRET": "receiver-secret-for-tests",
		"DZHOOK_SOURCE_SLOT": "dzhook", "DZHOOK_SOURCE_DSN": roleDSN(db),
	}
	r := dzhook(t, environList(vars), "setup", "--config", filepath.Join(env.deploy, "compose", "config.yaml"))
	if r.code != 0 || !strings.Contains(r.stdout, "created replication slot") {
		t.Fatalf("dzhook setup as the role: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	su := db.Connect(t)
	t.Cleanup(func() { su.Exec(context.Background(), `SELECT pg_drop_replication_slot('dzhook')`) })
}

// TestPublicationSQLAsRDSReplicationMember: an owner that may replicate
// through rds_replication (RDS's master user) makes the slot too (the
// script's check read every role and failed: exit 3).
func TestPublicationSQLAsRDSReplicationMember(t *testing.T) {
	db, _ := plainOwnerDB(t)
	mustPsql(t, db, "-c", "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_replication') THEN CREATE ROLE rds_replication; END IF; END$$",
		"-c", "GRANT rds_replication TO appowner")
	t.Cleanup(func() { runPsql(t, db, "-c", "REVOKE rds_replication FROM appowner") })
	// The role cannot make a slot (PostgreSQL knows no rds_replication):
	// the script's choice is what is checked, by the error it leads to.
	code, out := runPsql(t, db, "-c", "SET ROLE appowner", "-f", filepath.Join(env.deploy, "sql", "publication.sql"))
	if strings.Contains(out, "more than one row") || !strings.Contains(out, "must be superuser or replication role") {
		t.Errorf("publication.sql as an rds_replication member: exit %d\n%s\nwant it to try the slot", code, out)
	}
}
