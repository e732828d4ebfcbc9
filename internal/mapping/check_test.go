package mapping

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/pgtest"
)

// checkPool is a pool on a fresh database holding the reference schema
// and then stmts.
func checkPool(t *testing.T, stmts ...string) *pgxpool.Pool {
	t.Helper()
	db := pgtest.NewDB(t)
	db.Exec(t, append([]string{dzsql.Schema}, stmts...)...)
	pool, err := pgxpool.New(context.Background(), db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// TestCheckResolvesDomainsOfDomains: a time column of a domain over a
// domain over timestamptz passes, as the stream reads it as a time; one
// over a domain over text is still refused, naming its own type.
func TestCheckResolvesDomainsOfDomains(t *testing.T) {
	pool := checkPool(t,
		`CREATE DOMAIN utc_time AS timestamptz`,
		`CREATE DOMAIN audit_time AS utc_time NOT NULL`,
		`CREATE DOMAIN label AS text`,
		`CREATE DOMAIN short_label AS label CHECK (length(VALUE) < 40)`,
		`ALTER TABLE requests ALTER COLUMN updated_at TYPE audit_time`,
		`ALTER TABLE request_slas ALTER COLUMN target_at TYPE audit_time`,
		`ALTER TABLE requests ADD COLUMN opened_on short_label`)
	ctx := context.Background()
	mc := DefaultConfig()
	if err := mc.Check(ctx, pool); err != nil {
		t.Fatalf("Check with a domain over a domain over timestamptz = %v, want nil", err)
	}
	mc.Requests.Columns.CreatedAt = "opened_on"
	want := `mapping.requests.columns.created_at: column "opened_on" of public.requests is short_label, not a timestamp type`
	if err := mc.Check(ctx, pool); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Check with a domain over a domain over text = %v, want %q", err, want)
	}
}

// TestCheckRefusesGeneratedColumns: pgoutput never sends a generated
// column, so one mapped would pass the start and stall the stream at the
// table's first change; Check refuses it at its path. A generated column
// the mapping does not name is fine.
func TestCheckRefusesGeneratedColumns(t *testing.T) {
	pool := checkPool(t,
		`ALTER TABLE users ADD COLUMN first_name text, ADD COLUMN last_name text`,
		`ALTER TABLE users ADD COLUMN full_name text GENERATED ALWAYS AS (first_name || ' ' || last_name) STORED`)
	ctx := context.Background()
	mc := DefaultConfig()
	if err := mc.Check(ctx, pool); err != nil {
		t.Fatalf("Check with an unmapped generated column = %v, want nil", err)
	}
	mc.Users.Columns.Name = "full_name"
	want := `mapping.users.columns.name: column "full_name" of public.users is GENERATED: PostgreSQL 15 does not replicate generated columns; map a stored column`
	if err := mc.Check(ctx, pool); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Check = %v, want %q", err, want)
	}
}

// TestCheckOutbox: an outbox table without a text event and a json, jsonb
// or text payload (outboxRow would reject every row) is one Misfit at
// outbox.table naming the columns; the reference outbox, one with a
// domain or an enum, and a table that does not exist give none.
func TestCheckOutbox(t *testing.T) {
	pool := checkPool(t,
		`CREATE TABLE app_events (id bigserial PRIMARY KEY, event_type text, data jsonb)`,
		`CREATE TABLE int_payload (id bigserial PRIMARY KEY, event text, payload integer)`,
		`CREATE TABLE generated_event (id bigserial PRIMARY KEY, kind text, event text GENERATED ALWAYS AS (kind || '.created') STORED, payload text)`,
		`CREATE DOMAIN event_name AS varchar(100)`,
		`CREATE DOMAIN short_name AS event_name`,
		`CREATE TYPE event_kind AS ENUM ('order.shipped')`,
		`CREATE TABLE domain_outbox (id bigserial PRIMARY KEY, event short_name, payload json)`,
		`CREATE TABLE enum_outbox (id bigserial PRIMARY KEY, event event_kind, payload text)`)
	ctx := context.Background()
	for _, tc := range []struct{ table, want string }{
		{"public.dzhook_outbox", ""},
		{"public.domain_outbox", ""},
		{"public.enum_outbox", ""},
		{"public.no_such_table", ""},
		{"public.app_events", `outbox.table: outbox table public.app_events: no column "event", no column "payload"; outbox rows need a column event (text) and a column payload (json, jsonb or text), or every row is rejected`},
		{"public.int_payload", `outbox.table: outbox table public.int_payload: column "payload" is integer, not json, jsonb or a text type;`},
		{"public.generated_event", `outbox.table: outbox table public.generated_event: column "event" is GENERATED (PostgreSQL 15 does not replicate generated columns);`},
	} {
		t.Run(tc.table, func(t *testing.T) {
			got, err := CheckOutbox(ctx, pool, tc.table)
			switch {
			case err != nil:
				t.Fatal(err)
			case tc.want == "" && got != nil:
				t.Errorf("CheckOutbox = %v, want nil", got)
			case tc.want != "" && (got == nil || !strings.Contains(got.Error(), tc.want)):
				t.Errorf("CheckOutbox = %v, want %q", got, tc.want)
			}
		})
	}
}

// rolePool makes a login role of the given attributes for db's test,
// dropped at the end, and returns it with a pool that connects as it.
func rolePool(t *testing.T, db *pgtest.DB, attrs string) (*pgxpool.Pool, string) {
	t.Helper()
	role := "r" + db.Name
	db.Exec(t, `CREATE ROLE `+role+` LOGIN `+attrs)
	t.Cleanup(func() {
		ctx := context.Background()
		_ = db.Cluster.Exec(ctx, db.Name, `DROP OWNED BY `+role)
		_ = db.Cluster.Exec(ctx, "postgres", `DROP ROLE IF EXISTS `+role)
	})
	dsn := strings.Replace(db.DSN, "postgres@", role+"@", 1)
	if !strings.Contains(dsn, role+"@") {
		t.Fatalf("cannot make a DSN for role %s from %s", role, db.DSN)
	}
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, role
}

// TestCheckRefusesRoleWithoutSelect: a role that cannot SELECT from the
// users or SLA tables started cleanly, then sent every email null and
// logged 'permission denied' from the SLA clock forever. Check refuses it
// at each table's path, giving the GRANT; the tables dzhook only streams
// (requests, comments) need no SELECT.
func TestCheckRefusesRoleWithoutSelect(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema)
	pool, role := rolePool(t, db, "REPLICATION")
	ctx := context.Background()
	mc := DefaultConfig()
	err := mc.Check(ctx, pool)
	for _, want := range []string{
		"mapping.users.table: role " + role + " cannot SELECT column id, email of public.users (a user it cannot read is sent with a null email): GRANT SELECT (id, email) ON public.users TO " + role,
		"mapping.request_slas.table: role " + role + " cannot SELECT column id, request_id, sla_type, started_at, target_at, completed_at of public.request_slas",
		"GRANT SELECT (id, request_id, sla_type, started_at, target_at, completed_at) ON public.request_slas TO " + role,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check as a role without SELECT = %v, want %q", err, want)
		}
	}
	if err != nil && (strings.Contains(err.Error(), "mapping.requests.") || strings.Contains(err.Error(), "mapping.comments.")) {
		t.Errorf("Check = %v, want nothing about requests or comments, which dzhook does not query", err)
	}
	// A grant of the columns the email lookup reads is enough (every
	// mapped column was asked for, found by a review); one missing is
	// named.
	db.Exec(t, `GRANT SELECT (id) ON users TO `+role, `GRANT SELECT ON request_slas TO `+role)
	want := "mapping.users.table: role " + role + " cannot SELECT column email of public.users"
	if err := mc.Check(ctx, pool); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "request_slas") {
		t.Errorf("Check with SELECT on users' id alone = %v, want %q alone", err, want)
	}
	db.Exec(t, `GRANT SELECT (email) ON users TO `+role)
	if err := mc.Check(ctx, pool); err != nil {
		t.Errorf("Check after the GRANT = %v, want nil", err)
	}
	// SELECT on a table of a schema the role cannot use reads nothing.
	db.Exec(t, `REVOKE USAGE ON SCHEMA public FROM PUBLIC`)
	want = "mapping.users.table: role " + role + " has no USAGE on schema public, so it cannot read public.users (a user it cannot read is sent with a null email): GRANT USAGE ON SCHEMA public TO " + role
	if err := mc.Check(ctx, pool); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Check without USAGE on the schema = %v, want %q", err, want)
	}
}

// TestCheckRowLevelSecurity: with row-level security on the users and SLA
// tables, dzhook's queries saw no rows, with no error, while the stream
// sent every row: emails went out null, SLA timers were cancelled as if
// their SLAs were deleted. Check refuses a role RLS limits, giving the
// policy that lets it read every row, and accepts the role once such a
// policy exists, unless a restrictive policy still limits it. The
// tables' owner (without FORCE) and a superuser read every row.
func TestCheckRowLevelSecurity(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema,
		`ALTER TABLE users ADD COLUMN tenant text NOT NULL DEFAULT 'acme'`,
		`ALTER TABLE request_slas ADD COLUMN tenant text NOT NULL DEFAULT 'acme'`,
		`ALTER TABLE users ENABLE ROW LEVEL SECURITY`,
		`ALTER TABLE request_slas ENABLE ROW LEVEL SECURITY`,
		`CREATE POLICY tenant_users ON users USING (tenant = current_setting('app.tenant', true))`,
		`CREATE POLICY tenant_slas ON request_slas USING (tenant = current_setting('app.tenant', true))`)
	pool, role := rolePool(t, db, "REPLICATION NOBYPASSRLS")
	db.Exec(t, `GRANT SELECT ON users, requests, comments, request_slas TO `+role)
	ctx := context.Background()
	mc := DefaultConfig()

	err := mc.Check(ctx, pool)
	for _, want := range []string{
		"mapping.users.table: row-level security on public.users hides rows from role " + role + ", and dzhook must read every row",
		"CREATE POLICY dzhook_read ON public.users FOR SELECT TO " + role + " USING (true)",
		"mapping.request_slas.table: row-level security on public.request_slas hides rows",
		"CREATE POLICY dzhook_read ON public.request_slas FOR SELECT TO " + role + " USING (true)",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check under RLS = %v, want %q", err, want)
		}
	}

	// A permissive policy that applies to another role lets this one
	// read nothing more.
	db.Exec(t, `CREATE ROLE `+role+`_other`)
	t.Cleanup(func() {
		ctx := context.Background()
		_ = db.Cluster.Exec(ctx, db.Name, `DROP OWNED BY `+role+`_other`)
		_ = db.Cluster.Exec(ctx, "postgres", `DROP ROLE IF EXISTS `+role+`_other`)
	})
	db.Exec(t, `CREATE POLICY other_read ON users FOR SELECT TO `+role+`_other USING (true)`)
	if err := mc.Check(ctx, pool); err == nil || !strings.Contains(err.Error(), "mapping.users.table: row-level security") {
		t.Errorf("Check with a policy for another role = %v, want the users table refused", err)
	}

	// The fix the message gives, on both tables (and through PUBLIC on
	// one of them): the role reads every row, and passes.
	db.Exec(t,
		`CREATE POLICY dzhook_read ON users FOR SELECT TO `+role+` USING (true)`,
		`CREATE POLICY dzhook_read ON request_slas FOR ALL TO PUBLIC USING (true)`)
	if err := mc.Check(ctx, pool); err != nil {
		t.Errorf("Check with a permissive policy for the role = %v, want nil", err)
	}

	// A restrictive policy still hides rows whatever the permissive ones
	// allow.
	db.Exec(t, `CREATE POLICY tenant_only ON users AS RESTRICTIVE FOR SELECT TO `+role+` USING (tenant = 'acme')`)
	want := "mapping.users.table: row-level security on public.users limits the rows role " + role + " reads (restrictive policy tenant_only)"
	if err := mc.Check(ctx, pool); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Check with a restrictive policy = %v, want %q", err, want)
	}

	// The owner (here the superuser that made the tables) is not limited.
	admin, err := pgxpool.New(ctx, db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := mc.Check(ctx, admin); err != nil {
		t.Errorf("Check as the superuser owner = %v, want nil", err)
	}
}

// TestCheckRowLevelSecurityOwner: the tables' owner, no superuser, reads
// every row unless FORCE ROW LEVEL SECURITY applies the policies to it
// too.
func TestCheckRowLevelSecurityOwner(t *testing.T) {
	db := pgtest.NewDB(t)
	pool, role := rolePool(t, db, "REPLICATION NOBYPASSRLS")
	db.Exec(t, dzsql.Schema,
		`ALTER TABLE users OWNER TO `+role,
		`ALTER TABLE request_slas OWNER TO `+role,
		`ALTER TABLE users ENABLE ROW LEVEL SECURITY`,
		`CREATE POLICY nobody ON users USING (false)`)
	ctx := context.Background()
	mc := DefaultConfig()
	if err := mc.Check(ctx, pool); err != nil {
		t.Errorf("Check as the owner under RLS = %v, want nil", err)
	}
	db.Exec(t, `ALTER TABLE users FORCE ROW LEVEL SECURITY`)
	want := "mapping.users.table: row-level security on public.users hides rows from role " + role
	if err := mc.Check(ctx, pool); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Check as the owner under FORCE ROW LEVEL SECURITY = %v, want %q", err, want)
	}
}
