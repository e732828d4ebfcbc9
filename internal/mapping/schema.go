package mapping

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/dzdesk/dzhook/internal/cdc"
)

// This file compares the mapping with the tables as they are: as the
// replication stream describes them (Fit, at every relation message, so
// a column renamed, dropped or retyped mid-stream stops the stream before
// the first change that lacks it), and as the catalog and the publication
// hold them now (CheckPublished, for tables dropped, renamed or left out
// of the publication, which the stream never says).
//
// What the mapping needs of a column:
//
//   - that it exists, under the configured name;
//   - for the columns payloads show as times (created_at, updated_at)
//     and the SLA clock computes with (started_at, target_at): a
//     timestamp type (timestamptz, timestamp, date, or a domain over
//     one). Any other type would reach receivers as raw text in a field
//     DZDESK documents as RFC 3339, or leave SLA timers unarmed.
//
// Every other column may change type: its value is shown as it decodes
// (ids and names as text, booleans, numbers), which is what a payload
// can carry. A type change there is the schema owner's decision, not a
// loss.

// Misfit is a mapped column or table that a relation, as the stream
// describes it, does not provide.
type Misfit struct {
	// Path is the YAML path of what the mapping names, e.g.
	// mapping.requests.columns.status.
	Path string
	// Table is the schema-qualified table; Column is "" for a table.
	Table, Column string
	Message       string
}

func (m Misfit) Error() string { return m.Path + ": " + m.Message }

// isTimeOID reports whether values of the (base) type decode as times.
func isTimeOID(oid uint32) bool {
	return oid == pgtype.TimestamptzOID || oid == pgtype.TimestampOID || oid == pgtype.DateOID
}

// entityOf returns the mapped entity of a table.
func (c *Config) entityOf(table string) (entity, bool) {
	for _, e := range c.entities() {
		if c.Qualify(e.table) == table {
			return e, true
		}
	}
	return entity{}, false
}

// Entity returns the mapping key of the entity a table holds
// ("requests", "users", "comments", "request_slas"), or "" for a table
// the mapping does not name (the outbox included).
func (m *Mapper) Entity(table string) string {
	e, ok := m.cfg.entityOf(table)
	if !ok {
		return ""
	}
	return e.key
}

// Fit reports what the mapping needs of rel that rel, as the stream
// describes it, lacks: a mapped column not there (renamed or dropped), or
// a time column no longer of a timestamp type. A relation the mapping
// does not name fits.
func (m *Mapper) Fit(rel *cdc.Relation) []Misfit {
	table := rel.QualifiedName()
	e, ok := m.cfg.entityOf(table)
	if !ok {
		return nil
	}
	var out []Misfit
	for _, col := range e.columns {
		if col.name == "" {
			continue
		}
		path := "mapping." + e.key + ".columns." + col.path
		i, ok := rel.Index(col.name)
		if !ok {
			out = append(out, Misfit{Path: path, Table: table, Column: col.name,
				Message: fmt.Sprintf("column %q is no longer in %s (renamed or dropped)", col.name, table)})
			continue
		}
		if col.time && !isTimeOID(rel.Columns[i].BaseTypeOID) {
			out = append(out, Misfit{Path: path, Table: table, Column: col.name,
				Message: fmt.Sprintf("column %q of %s is no longer a timestamp type (type OID %d)", col.name, table, rel.Columns[i].TypeOID)})
		}
	}
	return out
}

// Mapping returns the mapping the Mapper was built with.
func (m *Mapper) Mapping() Config { return m.cfg }

// WithMapping returns a new Mapper like m (same source, catalog, outbox
// and logger) for another mapping, with its own email cache fed by users.
// It is how a reloaded mapping takes effect: a Mapper is cheap to build.
func (m *Mapper) WithMapping(c Config, users UserLookup) *Mapper {
	mc := m.mc
	mc.Mapping, mc.Users = c, users
	return NewMapper(mc)
}

// CheckPublished reports the mapped tables the stream cannot see: tables
// that do not exist (dropped, or renamed: the stream never says so) and
// tables that exist but are not in the publication (a table recreated
// after a DROP is not added back). Each is a Misfit at the table's YAML
// path.
//
// also are tables beside the mapping's to check the same way (the outbox),
// each with its path.
func (c *Config) CheckPublished(ctx context.Context, q Querier, publication string, also ...Watched) ([]Misfit, error) {
	published := map[string]bool{}
	rows, err := q.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, publication)
	if err != nil {
		return nil, fmt.Errorf("read publication %s: %w", publication, err)
	}
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return nil, err
		}
		published[t] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read publication %s: %w", publication, err)
	}
	var out []Misfit
	watched := make([]Watched, 0, 4+len(also))
	for _, e := range c.entities() {
		watched = append(watched, Watched{Path: "mapping." + e.key + ".table", Table: c.Qualify(e.table)})
	}
	watched = append(watched, also...)
	shape, err := c.publishedShape(ctx, q, publication, watched, published)
	if err != nil {
		return nil, err
	}
	out = append(out, shape...)
	for _, w := range watched {
		table := w.Table
		if published[table] {
			continue
		}
		exists, err := TableExists(ctx, q, table)
		if err != nil {
			return nil, err
		}
		msg := fmt.Sprintf("table %s is not in publication %s: its changes are not streamed (recreated after a DROP? run `dzhook setup`)", table, publication)
		if !exists {
			msg = fmt.Sprintf("table %s no longer exists (dropped or renamed): its changes are not streamed", table)
		}
		out = append(out, Misfit{Path: w.Path, Table: table, Message: msg})
	}
	return out, nil
}

// publishedShape reports what setup refuses and a running dzhook must
// see too, since the stream cannot (pgoutput's messages carry neither):
// a publication no longer publishing updates or deletes (they were
// dropped without a word), a watched table published with a row filter
// (an UPDATE of a row leaving the filter reached dzhook as a DELETE) or
// a column list, and a table whose events need old values without
// REPLICA IDENTITY FULL (status_changed, assigned and deactivated never
// fired, with one WARN).
//
// A table not published is left to CheckPublished's own misfit: one
// problem per path (a table recreated out of the publication, without
// its identity, was two, and the watch took them for a new one at every
// check: a notification every 30 s).
func (c *Config) publishedShape(ctx context.Context, q Querier, publication string, watched []Watched, published map[string]bool) ([]Misfit, error) {
	var out []Misfit
	var version int
	if err := q.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return nil, fmt.Errorf("read the server's version: %w", err)
	}
	lists := `pr.prattrs IS NOT NULL, pr.prqual IS NOT NULL`
	if version < 150000 {
		lists = `false, false` // no column lists or row filters before 15
	}
	var ins, upd, del bool
	err := q.QueryRow(ctx, `SELECT pubinsert, pubupdate, pubdelete FROM pg_publication WHERE pubname = $1`, publication).Scan(&ins, &upd, &del)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		// No publication: every table is reported missing from it.
	case err != nil:
		return nil, fmt.Errorf("read publication %s: %w", publication, err)
	case !(ins && upd && del):
		out = append(out, Misfit{Path: "source.publication", Table: publication, Message: fmt.Sprintf(
			"publication %s no longer publishes inserts, updates and deletes: the changes it leaves out give no events; run ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate')",
			publication, pgx.Identifier{publication}.Sanitize())})
	}
	full := c.FullIdentityTables()
	for _, w := range watched {
		if !published[w.Table] {
			continue
		}
		schema, name, _ := strings.Cut(w.Table, ".")
		var ident string
		var columns, where bool
		err := q.QueryRow(ctx, `
			SELECT c.relreplident::text, coalesce(l.columns, false), coalesce(l.filter, false)
			  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			  LEFT JOIN LATERAL (SELECT `+lists+` FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
			                      WHERE p.pubname = $3 AND pr.prrelid = c.oid) AS l (columns, filter) ON true
			 WHERE n.nspname = $1 AND c.relname = $2`, schema, name, publication).Scan(&ident, &columns, &where)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // reported missing below
		}
		if err != nil {
			return nil, fmt.Errorf("read how %s is published: %w", w.Table, err)
		}
		whole := fmt.Sprintf("BEGIN; ALTER PUBLICATION %[1]s DROP TABLE %[2]s; ALTER PUBLICATION %[1]s ADD TABLE %[2]s; COMMIT;",
			pgx.Identifier{publication}.Sanitize(), pgx.Identifier{schema, name}.Sanitize())
		switch {
		case where:
			out = append(out, Misfit{Path: w.Path, Table: w.Table, Message: fmt.Sprintf(
				"table %s is published with a row filter (WHERE …): the changes it filters out give no events, and an update leaving the filter streams as a delete; publish the table whole: %s", w.Table, whole)})
		case columns:
			out = append(out, Misfit{Path: w.Path, Table: w.Table, Message: fmt.Sprintf(
				"table %s is published with a column list: the columns it leaves out are missing from the events; publish the table whole: %s", w.Table, whole)})
		case ident != "f" && slices.Contains(full, w.Table):
			out = append(out, Misfit{Path: w.Path, Table: w.Table, Message: fmt.Sprintf(
				"table %s lost REPLICA IDENTITY FULL: its changes stream without old values, so status, assignee and active changes give no events; run ALTER TABLE %s REPLICA IDENTITY FULL",
				w.Table, pgx.Identifier{schema, name}.Sanitize())})
		}
	}
	return out, nil
}

// Watched is a table CheckPublished checks, with its configuration path.
type Watched struct {
	Path, Table string
}
