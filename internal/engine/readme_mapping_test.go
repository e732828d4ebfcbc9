package engine

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/pgtest"
)

// TestReadmeMappingExample: the README's "Another schema, in YAML only"
// mapping loads and passes the catalog check against the schema it
// describes. It named no users.updated_at, so the default updated_at was
// looked for in agents, and the check refused it.
func TestReadmeMappingExample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "### Another schema, in YAML only")
	if !ok {
		t.Fatal("README: no section Another schema, in YAML only")
	}
	_, rest, _ = strings.Cut(rest, "```yaml\n")
	block, _, ok := strings.Cut(rest, "```")
	if !ok || !strings.HasPrefix(block, "mapping:") {
		t.Fatalf("README: the section's YAML block is not a mapping: %q", block)
	}
	db := pgtest.NewDB(t)
	db.Exec(t,
		`CREATE TABLE agents (agent_no bigint PRIMARY KEY, mail text, full_name text, kind text, status text NOT NULL DEFAULT 'enabled', joined timestamptz)`,
		`CREATE TABLE tickets (ticket_no bigint PRIMARY KEY, subject text, body text, state text, urgency text, opened_by bigint, owner bigint, last_editor bigint, opened timestamptz, modified timestamptz)`,
		`CREATE TABLE notes (note_no bigint PRIMARY KEY, ticket bigint, writer bigint, content text, visibility text NOT NULL DEFAULT 'public', written timestamptz)`,
		`CREATE TABLE ticket_slas (sla_no bigint PRIMARY KEY, ticket bigint, kind text, began timestamptz, due timestamptz, done timestamptz)`,
	)
	cfg, err := config.Parse([]byte("source:\n  dsn: "+db.DSN+"\n"+block), nil)
	if err != nil {
		t.Fatalf("the README's mapping does not load: %v", err)
	}
	conn := db.Connect(t)
	if err := cfg.Mapping.Check(context.Background(), conn); err != nil {
		t.Errorf("the README's mapping fails the catalog check: %v", err)
	}
}
