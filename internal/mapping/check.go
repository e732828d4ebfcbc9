package mapping

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Querier is what Check and the user lookup need from a connection or
// pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// TableOf returns the entity (requests, users, comments, request_slas)
// whose table is the schema-qualified table, if any.
func (c *Config) TableOf(table string) (string, bool) {
	for _, e := range c.entities() {
		if c.Qualify(e.table) == table {
			return e.key, true
		}
	}
	return "", false
}

// Tables returns the schema-qualified tables the stream must publish.
func (c *Config) Tables() []string {
	var out []string
	for _, e := range c.entities() {
		out = append(out, c.Qualify(e.table))
	}
	return out
}

// FullIdentityTables are the tables whose events compare old and new
// values: requests (status, assignee), users (active) and SLAs (target).
func (c *Config) FullIdentityTables() []string {
	return []string{c.Qualify(c.Requests.Table), c.Qualify(c.Users.Table), c.Qualify(c.SLAs.Table)}
}

// Check validates the mapping against the live catalog: every mapped
// table exists and has every mapped column, none of them generated (the
// stream never sends those), and the columns shown as times (created_at,
// updated_at, the SLA's started_at and target_at) are timestamp types
// (timestamptz, timestamp or date, or a domain over one, at any depth);
// and the role of q, which must be the one whose pool does the lookups,
// reads every row of the tables dzhook queries (checkReads).
// It reports all problems at once, each at its YAML path:
//
//	mapping.requests.columns.status: column "state2" not found in public.tickets
func (c *Config) Check(ctx context.Context, q Querier) error {
	var errs []error
	for _, e := range c.entities() {
		table := c.Qualify(e.table)
		cols, err := tableColumns(ctx, q, table)
		if err != nil {
			return err
		}
		if cols == nil {
			errs = append(errs, Problem{Path: "mapping." + e.key + ".table", Message: fmt.Sprintf("table %s not found", table)})
			continue
		}
		kind, composite, err := tableShape(ctx, q, table, e.columns[0].name)
		if err != nil {
			return err
		}
		switch kind {
		case "r":
		case "p":
			// Its changes stream under each partition's name, which no
			// entity maps: every event of the table was lost, while the
			// publication and the checks took the parent.
			errs = append(errs, Problem{Path: "mapping." + e.key + ".table", Message: fmt.Sprintf("%s is a partitioned table: its changes stream under each partition's name, which dzhook does not map to it; partitioned tables are not supported", table)})
			continue
		default:
			errs = append(errs, Problem{Path: "mapping." + e.key + ".table", Message: fmt.Sprintf("%s is %s, not a table: logical replication streams the changes of tables only", table, relkinds[kind])})
			continue
		}
		if _, ok := cols[e.columns[0].name]; ok && composite != "" {
			// The entity's id names it in every payload, keys its
			// deliveries' order and its users' emails: a column unique
			// only with another (tenant, ticket_no) sent two tenants'
			// tickets as one, with the other tenant's emails. (A table
			// with no key at all, an insert-only comments table, is left
			// alone: nothing says its ids repeat.)
			errs = append(errs, Problem{Path: "mapping." + e.key + ".columns.id", Message: fmt.Sprintf("column %q of %s is unique only with other columns (its key is %s): an entity's id must name one row; map a column unique on its own", e.columns[0].name, table, composite)})
		}
		for _, col := range e.columns {
			if col.name == "" {
				continue
			}
			info, ok := cols[col.name]
			switch {
			case !ok:
				errs = append(errs, Problem{Path: "mapping." + e.key + ".columns." + col.path, Message: fmt.Sprintf("column %q not found in %s", col.name, table)})
			case info.generated:
				// pgoutput leaves generated columns out of relation
				// messages and tuples: the first change of the table
				// would stall the stream (Fit finds the column missing).
				errs = append(errs, Problem{Path: "mapping." + e.key + ".columns." + col.path, Message: fmt.Sprintf("column %q of %s is GENERATED: PostgreSQL 15 does not replicate generated columns; map a stored column", col.name, table)})
			case col.time && !timeTypeNames[info.base]:
				errs = append(errs, Problem{Path: "mapping." + e.key + ".columns." + col.path, Message: fmt.Sprintf("column %q of %s is %s, not a timestamp type", col.name, table, info.typ)})
			}
		}
		if lost, ok := reads[e.key]; ok {
			p, err := checkReads(ctx, q, e, table, cols, lost)
			if err != nil {
				return err
			}
			if p != nil {
				errs = append(errs, *p)
			}
		}
	}
	return errors.Join(errs...)
}

// reads are the entities whose tables dzhook queries itself, besides
// streaming them (PoolUsers, SLASource), and what is lost where it cannot
// read a row: the query gives no error, the row reads as missing.
var reads = map[string]string{
	"users":        "a user it cannot read is sent with a null email",
	"request_slas": "an SLA it cannot read fires no event and reads as deleted, its timers cancelled",
}

// readColumns are, by YAML path, the columns those queries read, where
// not all the mapped ones: PoolUsers reads a user's id and email, and a
// grant of those columns alone serves it (found by a review: every
// mapped column was required).
var readColumns = map[string][]string{"users": {"id", "email"}}

// checkReads reports, at the entity's table, a role that cannot read
// every row of a table dzhook queries: no SELECT on a mapped column (or
// no USAGE on the schema), or row-level security that applies to it
// without a policy letting it see all rows. pgoutput streams every row
// whatever the privileges and policies; the queries did not, and no
// error said so (found by a review).
//
// row_security_active is false for superusers, BYPASSRLS roles and the
// table's owner (unless FORCE ROW LEVEL SECURITY). Where it is true, a
// permissive policy USING (true) for SELECT (or ALL) that applies to the
// role (PUBLIC, or a role whose privileges it has) lets it read every
// row, unless a restrictive policy that applies to it limits them.
func checkReads(ctx context.Context, q Querier, e entity, table string, cols map[string]columnInfo, lost string) (*Problem, error) {
	var read []string
	for _, col := range e.columns {
		if only := readColumns[e.key]; only != nil && !slices.Contains(only, col.path) {
			continue
		}
		if _, ok := cols[col.name]; ok && col.name != "" {
			read = append(read, col.name)
		}
	}
	schema, name, _ := strings.Cut(table, ".")
	var role, ident, nsp, unreadable, readList string
	var usage, rls, permissive bool
	var restrictive string
	err := q.QueryRow(ctx, `
		WITH rel AS (SELECT c.oid, n.oid AS nsp, format('%I.%I', n.nspname, c.relname) AS ident, quote_ident(n.nspname) AS nspname
		               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2),
		pol AS (SELECT p.polname, p.polpermissive, p.polqual IS NULL AS noqual, pg_get_expr(p.polqual, p.polrelid) AS qual
		          FROM pg_policy p, rel WHERE p.polrelid = rel.oid AND p.polcmd IN ('r', '*')
		           AND EXISTS (SELECT FROM unnest(p.polroles) r
		                        WHERE CASE WHEN r = 0 THEN true ELSE pg_has_role(current_user, r, 'USAGE') END))
		SELECT quote_ident(current_user), rel.ident, rel.nspname, has_schema_privilege(rel.nsp, 'USAGE'),
		       coalesce((SELECT string_agg(quote_ident(col), ', ' ORDER BY ord) FROM unnest($3::text[]) WITH ORDINALITY AS u(col, ord)
		                  WHERE NOT has_column_privilege(rel.oid, col, 'SELECT')), ''),
		       coalesce((SELECT string_agg(quote_ident(col), ', ' ORDER BY ord) FROM unnest($3::text[]) WITH ORDINALITY AS u(col, ord)), ''),
		       row_security_active(rel.oid),
		       EXISTS (SELECT FROM pol WHERE polpermissive AND qual = 'true'),
		       coalesce((SELECT string_agg(quote_ident(polname), ', ' ORDER BY polname) FROM pol
		                  WHERE NOT polpermissive AND NOT noqual AND qual <> 'true'), '')
		  FROM rel`, schema, name, read).Scan(&role, &ident, &nsp, &usage, &unreadable, &readList, &rls, &permissive, &restrictive)
	if err != nil {
		return nil, fmt.Errorf("read the privileges and row-level security of %s: %w", table, err)
	}
	problem := func(format string, args ...any) *Problem {
		return &Problem{Path: "mapping." + e.key + ".table", Message: fmt.Sprintf(format, args...)}
	}
	switch {
	case !usage:
		return problem("role %s has no USAGE on schema %s, so it cannot read %s (%s): GRANT USAGE ON SCHEMA %s TO %s", role, nsp, table, lost, nsp, role), nil
	case unreadable != "":
		return problem("role %s cannot SELECT column %s of %s (%s): GRANT SELECT (%s) ON %s TO %s", role, unreadable, table, lost, readList, ident, role), nil
	case rls && restrictive != "":
		return problem("row-level security on %s limits the rows role %s reads (restrictive policy %s), and dzhook must read every row, as the stream sends them all (%s): exempt the role from the policy (ALTER POLICY … TO the other roles) or give it BYPASSRLS", table, role, restrictive, lost), nil
	case rls && !permissive:
		return problem("row-level security on %s hides rows from role %s, and dzhook must read every row, as the stream sends them all (%s): CREATE POLICY dzhook_read ON %s FOR SELECT TO %s USING (true)", table, role, lost, ident, role), nil
	}
	return nil, nil
}

// relkinds names pg_class.relkind values that are not tables.
var relkinds = map[string]string{"v": "a view", "m": "a materialized view", "f": "a foreign table", "S": "a sequence", "i": "an index", "I": "a partitioned index", "c": "a composite type", "t": "a TOAST table"}

// tableShape returns a table's relkind and, when column id is part of a
// key of several columns (a primary key or a valid unique index without
// a predicate) and of no key of its own, that key's columns as text
// ("(tenant, id)"); "" otherwise. (A slice of indkey starts at 1.)
func tableShape(ctx context.Context, q Querier, table, id string) (kind, composite string, err error) {
	schema, name, _ := strings.Cut(table, ".")
	err = q.QueryRow(ctx, `
		WITH rel AS (SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		              WHERE n.nspname = $1 AND c.relname = $2),
		keys AS (SELECT i.indnkeyatts, (i.indkey::int2[])[0:i.indnkeyatts - 1] AS cols
		           FROM pg_index i, rel WHERE i.indrelid = rel.oid AND i.indisunique AND i.indisvalid
		            AND i.indpred IS NULL AND i.indexprs IS NULL),
		att AS (SELECT a.attnum FROM pg_attribute a, rel WHERE a.attrelid = rel.oid AND a.attname = $3 AND NOT a.attisdropped)
		SELECT rel.relkind::text, CASE
			WHEN EXISTS (SELECT 1 FROM keys, att WHERE keys.indnkeyatts = 1 AND keys.cols[1] = att.attnum) THEN ''
			ELSE coalesce((SELECT '(' || (SELECT string_agg(a.attname, ', ' ORDER BY k.ord)
			                               FROM unnest(keys.cols) WITH ORDINALITY AS k (num, ord)
			                               JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum = k.num) || ')'
			                 FROM keys, att WHERE keys.indnkeyatts > 1 AND att.attnum = ANY (keys.cols) LIMIT 1), '') END
		  FROM rel`, schema, name, id).Scan(&kind, &composite)
	if err != nil {
		return "", "", fmt.Errorf("read the kind and keys of %s: %w", table, err)
	}
	return kind, composite, nil
}

// timeTypeNames are the base types (format_type without modifiers) that
// decode as times.
var timeTypeNames = map[string]bool{"timestamp with time zone": true, "timestamp without time zone": true, "date": true}

// columnInfo is a column's type as format_type shows it, its base type
// (the type under its domains, else the same) without modifiers and that
// type's pg_type.typcategory (S for the string types), and whether it is
// a generated column.
type columnInfo struct {
	typ, base, category string
	generated           bool
}

// tableColumns returns a table's columns and their types, or nil when the
// table does not exist.
//
// The base type is the one under every domain, as the stream resolves it
// to decode values: a domain over a domain over timestamptz reads as a
// time, so the check must take it as one.
func tableColumns(ctx context.Context, q Querier, table string) (map[string]columnInfo, error) {
	schema, name, _ := strings.Cut(table, ".")
	rows, err := q.Query(ctx, `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod), format_type(b.oid, NULL), b.category::text,
		       a.attgenerated <> ''
		  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		 CROSS JOIN LATERAL (WITH RECURSIVE chain (oid, typtype, base, category) AS (
		                       SELECT t.oid, t.typtype, t.typbasetype, t.typcategory FROM pg_type t WHERE t.oid = a.atttypid
		                       UNION ALL
		                       SELECT t.oid, t.typtype, t.typbasetype, t.typcategory FROM pg_type t JOIN chain ON t.oid = chain.base
		                        WHERE chain.typtype = 'd')
		                     SELECT oid, category FROM chain WHERE typtype <> 'd') b
		 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped`, schema, name)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	out := map[string]columnInfo{}
	for rows.Next() {
		var info columnInfo
		var n string
		if err := rows.Scan(&n, &info.typ, &info.base, &info.category, &info.generated); err != nil {
			return nil, err
		}
		out[n] = info
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// TableExists reports whether a schema-qualified table exists.
func TableExists(ctx context.Context, q Querier, table string) (bool, error) {
	cols, err := tableColumns(ctx, q, table)
	return cols != nil, err
}

// CheckOutbox reports, as one Misfit at outbox.table, what outbox rows
// need that the outbox table lacks: a column event of a text type (or an
// enum) and a column payload of json, jsonb or a text type, neither
// generated (never streamed). nil when it has them, or does not exist
// (TableExists says which).
//
// Without them outboxRow rejects every row, and each is acknowledged: a
// table made with other names (event_type, data) lost every event one
// rejection at a time. The names are fixed, so no reload can map the
// rows; what can be done is to say so before the first one (the start,
// setup) and while running (the schema watch).
func CheckOutbox(ctx context.Context, q Querier, table string) (*Misfit, error) {
	cols, err := tableColumns(ctx, q, table)
	if err != nil || cols == nil {
		return nil, err
	}
	var problems, names []string
	for _, need := range []struct {
		column, want string
		ok           func(columnInfo) bool
	}{
		{"event", "a text type", func(c columnInfo) bool { return c.category == "S" || c.category == "E" }},
		{"payload", "json, jsonb or a text type", func(c columnInfo) bool { return c.base == "json" || c.base == "jsonb" || c.category == "S" }},
	} {
		info, ok := cols[need.column]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("no column %q", need.column))
		case info.generated:
			problems = append(problems, fmt.Sprintf("column %q is GENERATED (PostgreSQL 15 does not replicate generated columns)", need.column))
		case !need.ok(info):
			problems = append(problems, fmt.Sprintf("column %q is %s, not %s", need.column, info.typ, need.want))
		default:
			continue
		}
		names = append(names, need.column)
	}
	if problems == nil {
		return nil, nil
	}
	return &Misfit{Path: "outbox.table", Table: table, Column: strings.Join(names, ", "), Message: fmt.Sprintf(
		"outbox table %s: %s; outbox rows need a column event (text) and a column payload (json, jsonb or text), or every row is rejected",
		table, strings.Join(problems, ", "))}, nil
}

// PoolUsers looks users' emails up in the mapped users table, in batches.
type PoolUsers struct {
	pool *pgxpool.Pool
	sql  string
}

// NewPoolUsers prepares the batched lookup; it reads the id column's type
// so the query compares ids in their own type and uses the primary key.
func NewPoolUsers(ctx context.Context, pool *pgxpool.Pool, c *Config) (*PoolUsers, error) {
	table := c.Qualify(c.Users.Table)
	cols, err := tableColumns(ctx, pool, table)
	if err != nil {
		return nil, err
	}
	idCol, ok := cols[c.Users.Columns.ID]
	idType := idCol.typ
	if !ok {
		return nil, fmt.Errorf("mapping.users.columns.id: column %q not found in %s", c.Users.Columns.ID, table)
	}
	schema, name, _ := strings.Cut(table, ".")
	ident := func(s string) string { return pgx.Identifier{s}.Sanitize() }
	sql := fmt.Sprintf(`SELECT %s::text, %s::text FROM %s.%s WHERE %s = ANY($1::text[]::%s[])`,
		ident(c.Users.Columns.ID), ident(c.Users.Columns.Email), ident(schema), ident(name), ident(c.Users.Columns.ID), idType)
	return &PoolUsers{pool: pool, sql: sql}, nil
}

// LookupEmails implements UserLookup.
func (p *PoolUsers) LookupEmails(ctx context.Context, ids []string) (map[string]string, error) {
	rows, err := p.pool.Query(ctx, p.sql, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(ids))
	for rows.Next() {
		var id string
		var email *string
		if err := rows.Scan(&id, &email); err != nil {
			return nil, err
		}
		if email != nil {
			out[id] = *email
		}
	}
	return out, rows.Err()
}

// SLASource reads the SLA table for the clock: the open SLAs at the first
// start, and the state of SLAs whose timers are due.
type SLASource struct {
	pool    *pgxpool.Pool
	scan    string
	recheck string
}

// SLARow is an SLA as the table holds it now.
type SLARow struct {
	ID, RequestID, SLAType string
	StartedAt, TargetAt    time.Time
	Completed              bool
	// CompletedAt is when it was completed (Current only; nil when it is
	// open, or completed at a time RFC 3339 cannot show).
	CompletedAt *time.Time
}

// NewSLASource prepares the SLA queries; it reads the id column's type so
// they compare ids in their own type and use the primary key.
func NewSLASource(ctx context.Context, pool *pgxpool.Pool, c *Config) (*SLASource, error) {
	table := c.Qualify(c.SLAs.Table)
	cols, err := tableColumns(ctx, pool, table)
	if err != nil {
		return nil, err
	}
	sc := c.SLAs.Columns
	// When it was completed, for the recheck (SLARow.CompletedAt), no
	// later than now (a completion is not in the future): a column of any
	// other type than a time says only whether it was (README: only the
	// time columns must be times).
	completedAt := "NULL::timestamptz"
	if info, ok := cols[sc.CompletedAt]; ok && timeTypeNames[info.base] {
		col := pgx.Identifier{sc.CompletedAt}.Sanitize()
		completedAt = fmt.Sprintf("CASE WHEN %s THEN least(%s::timestamptz, now()) END", inRFC3339(col), col)
	}
	idCol, ok := cols[sc.ID]
	idType := idCol.typ
	if !ok {
		return nil, fmt.Errorf("mapping.request_slas.columns.id: column %q not found in %s", sc.ID, table)
	}
	schema, name, _ := strings.Cut(table, ".")
	ident := func(s string) string { return pgx.Identifier{s}.Sanitize() }
	typ := "NULL::text"
	if sc.SLAType != "" {
		typ = "t." + ident(sc.SLAType) + "::text"
	}
	from := fmt.Sprintf("%s.%s", ident(schema), ident(name))
	return &SLASource{
		pool: pool,
		// Times RFC 3339 cannot show (infinity, years outside 1 to 9999)
		// are read as SLAChange reads them: a target that is not one
		// arms nothing (and a timer armed for an earlier target reads as
		// deleted, so it is cancelled), a start that is not one arms the
		// breach alone.
		scan: fmt.Sprintf(`SELECT t.%[1]s::text, t.%[2]s::text, coalesce(%[3]s, ''),
			       CASE WHEN %[5]s THEN t.%[4]s ELSE t.%[6]s END, t.%[6]s FROM %[7]s t
			WHERE t.%[8]s IS NULL AND t.%[4]s IS NOT NULL AND %[9]s AND ($1::text IS NULL OR t.%[1]s > $1::text::%[10]s) ORDER BY t.%[1]s LIMIT $2`,
			ident(sc.ID), ident(sc.Request), typ, ident(sc.StartedAt), inRFC3339("t."+ident(sc.StartedAt)), ident(sc.TargetAt), from,
			ident(sc.CompletedAt), inRFC3339("t."+ident(sc.TargetAt)), idType),
		recheck: fmt.Sprintf(`SELECT %[1]s::text, %[2]s, %[3]s IS NOT NULL, %[7]s FROM %[4]s WHERE %[1]s = ANY($1::text[]::%[5]s[]) AND %[6]s`,
			ident(sc.ID), ident(sc.TargetAt), ident(sc.CompletedAt), from, idType, inRFC3339(ident(sc.TargetAt)), completedAt),
	}, nil
}

// inRFC3339 is the SQL condition that a time column's value is one RFC
// 3339 can show: not infinite, not BC, a year before 10000 (false for
// NULL).
func inRFC3339(col string) string {
	return fmt.Sprintf(`(%[1]s >= '0001-01-01' AND %[1]s < '10000-01-01')`, col)
}

// OpenSLAs returns up to limit open SLAs with an id after the given one
// ("" for the first page), in id order.
func (s *SLASource) OpenSLAs(ctx context.Context, after string, limit int) ([]SLARow, error) {
	var afterArg *string
	if after != "" {
		afterArg = &after
	}
	rows, err := s.pool.Query(ctx, s.scan, afterArg, limit)
	if err != nil {
		return nil, fmt.Errorf("scan open SLAs: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (SLARow, error) {
		var row SLARow
		err := r.Scan(&row.ID, &row.RequestID, &row.SLAType, &row.StartedAt, &row.TargetAt)
		return row, err
	})
}

// Current returns the SLAs with the given ids as the table holds them
// now; a deleted SLA is absent.
func (s *SLASource) Current(ctx context.Context, ids []string) (map[string]SLARow, error) {
	rows, err := s.pool.Query(ctx, s.recheck, ids)
	if err != nil {
		return nil, fmt.Errorf("read SLAs: %w", err)
	}
	out := map[string]SLARow{}
	for rows.Next() {
		var row SLARow
		if err := rows.Scan(&row.ID, &row.TargetAt, &row.Completed, &row.CompletedAt); err != nil {
			rows.Close()
			return nil, err
		}
		out[row.ID] = row
	}
	return out, rows.Err()
}
