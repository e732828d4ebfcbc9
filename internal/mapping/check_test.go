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
