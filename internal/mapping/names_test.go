package mapping

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/jackc/pgx/v5/pgxpool"
)

// namesMapping maps a schema whose columns are not plain ASCII
// identifiers: état (which PostgreSQL takes unquoted), and names quoted at
// CREATE, with spaces, a hyphen or capitals.
func namesMapping() Config {
	c := zeroCodeMapping()
	c.Requests.Columns.ID = "Ticket No"
	c.Requests.Columns.Status = "état"
	c.Requests.Columns.Priority = "Urgency"
	c.Users.Columns.Email = "E-Mail"
	c.SLAs.Columns.ID = "SLA Nr"
	c.SLAs.Columns.TargetAt = "échéance"
	return c
}

// TestColumnNamesAsPostgreSQLStoresThem: columns named état and
// "Ticket No" were refused as "not a plain PostgreSQL identifier",
// though every query quotes the names it is given. They are mapped and
// streamed, the requester's email is looked up from "E-Mail", and the SLA
// clock's queries read "SLA Nr" and échéance. Names are compared with the
// catalog exactly: Urgency maps "Urgency", not urgency.
func TestColumnNamesAsPostgreSQLStoresThem(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t,
		`CREATE TABLE agents (agent_no bigint PRIMARY KEY, "E-Mail" text, full_name text, kind text, status text NOT NULL DEFAULT 'enabled', joined timestamptz)`,
		`CREATE TABLE tickets ("Ticket No" bigint PRIMARY KEY, subject text, état text, "Urgency" text, urgency text, opened_by bigint, owner bigint, last_editor bigint, opened timestamptz, modified timestamptz)`,
		`CREATE TABLE notes (note_no bigint PRIMARY KEY, ticket bigint, writer bigint, content text, private boolean, written timestamptz)`,
		`CREATE TABLE ticket_slas ("SLA Nr" bigint PRIMARY KEY, ticket bigint, kind text, began timestamptz, échéance timestamptz, done timestamptz)`,
		`CREATE TABLE dzhook_outbox (id bigserial PRIMARY KEY, event text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`,
	)
	mc := namesMapping()
	if ps := mc.Validate(); len(ps) > 0 {
		t.Fatalf("Validate: %v", ps)
	}
	p := startPipeline(t, db, mc)
	db.Exec(t,
		`INSERT INTO agents (agent_no, "E-Mail", full_name) VALUES (7, 'jane@company.com', 'Jane Doe')`,
		`INSERT INTO tickets ("Ticket No", subject, état, "Urgency", urgency, opened_by) VALUES (123, 'Printer', 'OPEN', 'P1', 'lower', 7)`,
		`UPDATE tickets SET état = 'WORKING' WHERE "Ticket No" = 123`,
	)
	events, _ := p.wait(t, 4, 0)
	var types []string
	for _, e := range events {
		types = append(types, e.Type)
	}
	if want := []string{"user.created", "request.created", "request.updated", "request.status_changed"}; !slices.Equal(types, want) {
		t.Fatalf("events %v, want %v", types, want)
	}
	created := string(events[1].Body)
	for _, want := range []string{`"id":"req_123"`, `"status":"open"`, `"priority":"high"`, `"email":"jane@company.com"`} {
		if !strings.Contains(created, want) {
			t.Errorf("request.created lacks %s: %s", want, created)
		}
	}
	if body := string(events[3].Body); !strings.Contains(body, `"previousStatus":"open","newStatus":"in_progress"`) {
		t.Errorf("status change %s", body)
	}

	// The SLA clock's queries name the SLA table's columns.
	db.Exec(t, `INSERT INTO ticket_slas VALUES (1, 123, 'resolution', now() - interval '1 hour', now() + interval '1 hour', NULL)`)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	src, err := NewSLASource(ctx, pool, &mc)
	if err != nil {
		t.Fatal(err)
	}
	open, err := src.OpenSLAs(ctx, "", 10)
	if err != nil || len(open) != 1 || open[0].ID != "1" || time.Until(open[0].TargetAt) < 59*time.Minute {
		t.Errorf("OpenSLAs = %+v, %v; want SLA 1, due in an hour", open, err)
	}
	cur, err := src.Current(ctx, []string{"1"})
	if err != nil || cur["1"].Completed {
		t.Errorf("Current = %+v, %v; want SLA 1 open", cur, err)
	}

	// Exactly as stored: "urgency" is not "Urgency", nor "ticket no"
	// "Ticket No".
	mc.Requests.Columns.Priority = "URGENCY"
	mc.Requests.Columns.ID = "ticket no"
	err = mc.Check(ctx, pool)
	for _, want := range []string{
		`mapping.requests.columns.priority: column "URGENCY" not found in public.tickets`,
		`mapping.requests.columns.id: column "ticket no" not found in public.tickets`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check with names in other cases: %v; want %s", err, want)
		}
	}
}

// TestValidateColumnNames: a column name PostgreSQL would truncate (over
// 63 bytes) or cannot hold (NUL) is refused at its path, naming why.
func TestValidateColumnNames(t *testing.T) {
	mc := DefaultConfig()
	mc.Requests.Columns.Status = strings.Repeat("é", 32) // 64 bytes
	mc.Users.Columns.Name = "na\x00me"
	mc.Comments.Columns.Body = strings.Repeat("b", 63)
	mc.SLAs.Columns.SLAType = "Type de SLA"
	var got []string
	for _, p := range mc.Validate() {
		got = append(got, p.Error())
	}
	want := []string{
		`mapping.requests.columns.status: "` + strings.Repeat("é", 32) + `" is 64 bytes long: PostgreSQL keeps at most 63 of a name (it truncates a longer one)`,
		`mapping.users.columns.name: "na\x00me" contains a NUL character, which no PostgreSQL name can`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("Validate = %q, want %q", got, want)
	}
}
