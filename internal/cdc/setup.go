package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SetupConfig says what Setup prepares.
type SetupConfig struct {
	Slot, Publication string
	// Tables are the schema-qualified tables to publish.
	Tables []string
	// FullIdentity are the tables (a subset of Tables) whose old values
	// events need (previous status, previous assignee, active flag), so
	// they need REPLICA IDENTITY FULL.
	FullIdentity []string
	// CheckOnly reports what is missing as errors instead of changing the
	// database (source.auto_setup: false).
	CheckOnly bool
	// SlotConn, when set, is the connection the slot is created on: the
	// replicating role's, when conn is the tables' owner's, which may not
	// replicate (`dzhook setup --owner-dsn-env`). The REPLICATION check
	// is its role's.
	SlotConn *pgx.Conn
}

// SetupReport lists what Setup did, for `dzhook setup` to print.
type SetupReport struct {
	Actions []string
}

// Setup prepares the source database for streaming, idempotently: it
// checks the server (wal_level, the role's REPLICATION attribute, a free
// slot), creates the publication when missing or adds the tables it lacks,
// sets REPLICA IDENTITY FULL where events need old values, and finally
// creates the pgoutput slot when missing. The publication comes first
// because pgoutput reads it as of each change's time: a slot that predates
// its publication fails on the changes in between.
//
// Every error names the fix: the setting to change or the statement an
// operator with more privileges must run, and why.
func Setup(ctx context.Context, conn *pgx.Conn, cfg SetupConfig) (SetupReport, error) {
	var rep SetupReport
	slotConn := cfg.SlotConn
	if slotConn == nil {
		slotConn = conn
	}
	if err := preflight(ctx, slotConn, cfg); err != nil {
		return rep, err
	}
	var problems []error
	for _, t := range cfg.Tables {
		if err := tableExists(ctx, conn, t); err != nil {
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		return rep, errors.Join(problems...)
	}
	// Before the publication: PostgreSQL refuses UPDATE and DELETE on a
	// published table with no replica identity (no primary key, or
	// REPLICA IDENTITY NOTHING), so publishing a comments or outbox table
	// without a key broke the application's own statements.
	// Only a table about to be published: one already published has lived
	// with its identity (an insert-only outbox without a key), and refusing
	// it now would stop a start that worked.
	rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, cfg.Publication)
	if err != nil {
		return rep, fmt.Errorf("list tables of publication %q: %w", cfg.Publication, err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return rep, fmt.Errorf("list tables of publication %q: %w", cfg.Publication, err)
	}
	for _, t := range cfg.Tables {
		if slices.Contains(cfg.FullIdentity, t) || slices.Contains(published, t) {
			continue
		}
		if err := setupKeyless(ctx, conn, t, cfg.CheckOnly, &rep); err != nil {
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 && !cfg.CheckOnly {
		return rep, errors.Join(problems...)
	}
	if err := setupPublication(ctx, conn, cfg, &rep); err != nil {
		problems = append(problems, err)
		if !cfg.CheckOnly {
			// The publication first: REPLICA IDENTITY FULL on a table it
			// publishes with a column list would make PostgreSQL refuse
			// the application's UPDATEs and DELETEs on it. (A check
			// changes nothing: it reports every problem at once.)
			return rep, errors.Join(problems...)
		}
	}
	for _, t := range cfg.FullIdentity {
		if err := setupIdentity(ctx, conn, t, cfg.CheckOnly, &rep); err != nil {
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		return rep, errors.Join(problems...)
	}
	if err := setupSlot(ctx, slotConn, cfg, &rep); err != nil {
		return rep, err
	}
	return rep, nil
}

func preflight(ctx context.Context, conn *pgx.Conn, cfg SetupConfig) error {
	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return fmt.Errorf("wal_level is %q, but logical replication needs 'logical': set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL; on RDS set rds.logical_replication = 1, on Cloud SQL cloudsql.logical_decoding = on, on Azure wal_level = logical", walLevel)
	}
	var role string
	var canReplicate bool
	// On RDS and Aurora the REPLICATION attribute is granted as membership
	// of rds_replication.
	if err := conn.QueryRow(ctx, `SELECT current_user, rolreplication OR rolsuper
		OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') AND pg_has_role(current_user, 'rds_replication', 'member'))
		FROM pg_roles WHERE rolname = current_user`).Scan(&role, &canReplicate); err != nil {
		return fmt.Errorf("read role attributes: %w", err)
	}
	if !canReplicate {
		return fmt.Errorf("role %q lacks the REPLICATION attribute that streaming needs: run ALTER ROLE %s REPLICATION as a superuser (on RDS: GRANT rds_replication TO %s; see deploy/sql/role.sql)", role, quoteIdent(role), quoteIdent(role))
	}
	return nil
}

func tableExists(ctx context.Context, conn *pgx.Conn, table string) error {
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", quoteQualified(table)).Scan(&ok); err != nil {
		return fmt.Errorf("look up table %s: %w", table, err)
	}
	if !ok {
		return fmt.Errorf("table %s does not exist (check the mapping configuration, or apply deploy/sql/dzdesk-schema.sql)", table)
	}
	return nil
}

func setupPublication(ctx context.Context, conn *pgx.Conn, cfg SetupConfig, rep *SetupReport) error {
	pub := quoteIdent(cfg.Publication)
	var exists, all, ins, upd, del, trunc bool
	err := conn.QueryRow(ctx, `SELECT true, puballtables, pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1`, cfg.Publication).
		Scan(&exists, &all, &ins, &upd, &del, &trunc)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("look up publication %q: %w", cfg.Publication, err)
	}
	if !exists {
		quoted := make([]string, len(cfg.Tables))
		for i, t := range cfg.Tables {
			quoted[i] = quoteQualified(t)
		}
		stmt := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", pub, strings.Join(quoted, ", "))
		if cfg.CheckOnly {
			return fmt.Errorf("publication %q does not exist: run `dzhook setup`, or %s", cfg.Publication, stmt)
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("create publication %q: %w; a role that owns the tables must run: %s", cfg.Publication, err, stmt)
		}
		rep.Actions = append(rep.Actions, fmt.Sprintf("created publication %s for %s", cfg.Publication, strings.Join(cfg.Tables, ", ")))
		return nil
	}
	if !(ins && upd && del) {
		return fmt.Errorf("publication %q does not publish inserts, updates and deletes: run ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate')", cfg.Publication, pub)
	}
	if all {
		return nil
	}
	rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, cfg.Publication)
	if err != nil {
		return fmt.Errorf("list tables of publication %q: %w", cfg.Publication, err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list tables of publication %q: %w", cfg.Publication, err)
	}
	var problems []error
	if err := publicationLists(ctx, conn, cfg); err != nil {
		problems = append(problems, err)
	}
	for _, t := range cfg.Tables {
		if slices.Contains(published, t) {
			continue
		}
		stmt := fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pub, quoteQualified(t))
		if cfg.CheckOnly {
			problems = append(problems, fmt.Errorf("publication %q lacks mapped table %s: run `dzhook setup`, or %s", cfg.Publication, t, stmt))
			continue
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			problems = append(problems, fmt.Errorf("publication %q lacks mapped table %s and adding it failed: %w; a role that owns the table must run: %s", cfg.Publication, t, err, stmt))
			continue
		}
		rep.Actions = append(rep.Actions, fmt.Sprintf("added %s to publication %s", t, cfg.Publication))
	}
	return errors.Join(problems...)
}

// publicationLists refuses a mapped table the publication publishes with
// a column list or a row filter (PostgreSQL 15): dzhook needs every
// column of every row. A row filter drops the changes of the rows it
// filters out, before dzhook can see them: their events would be lost
// without a word. A column list leaves columns out, and PostgreSQL
// refuses UPDATE and DELETE on a table whose replica identity (FULL,
// which the mapped tables need) the list does not cover: setting it
// would break the application.
func publicationLists(ctx context.Context, conn *pgx.Conn, cfg SetupConfig) error {
	var version int
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return fmt.Errorf("read the server's version: %w", err)
	}
	if version < 150000 {
		return nil // no column lists or row filters before 15
	}
	rows, err := conn.Query(ctx, `SELECT n.nspname || '.' || c.relname, pr.prattrs IS NOT NULL, pr.prqual IS NOT NULL
		FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
		JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1 AND (pr.prattrs IS NOT NULL OR pr.prqual IS NOT NULL)`, cfg.Publication)
	if err != nil {
		return fmt.Errorf("read the column lists and row filters of publication %q: %w", cfg.Publication, err)
	}
	type listed struct {
		table          string
		columns, where bool
	}
	lists, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (listed, error) {
		var l listed
		err := r.Scan(&l.table, &l.columns, &l.where)
		return l, err
	})
	if err != nil {
		return fmt.Errorf("read the column lists and row filters of publication %q: %w", cfg.Publication, err)
	}
	pub := quoteIdent(cfg.Publication)
	var problems []error
	for _, l := range lists {
		if !slices.Contains(cfg.Tables, l.table) {
			continue
		}
		stmt := fmt.Sprintf("BEGIN; ALTER PUBLICATION %s DROP TABLE %s; ALTER PUBLICATION %s ADD TABLE %s; COMMIT;", pub, quoteQualified(l.table), pub, quoteQualified(l.table))
		if l.where {
			problems = append(problems, fmt.Errorf("publication %q publishes mapped table %s with a row filter (WHERE …): the rows it filters out never reach dzhook, and their events would be lost; publish the table whole: %s", cfg.Publication, l.table, stmt))
		}
		if l.columns {
			problems = append(problems, fmt.Errorf("publication %q publishes mapped table %s with a column list: dzhook needs every column, and REPLICA IDENTITY FULL, which PostgreSQL refuses beside a column list that leaves a column out (UPDATE and DELETE on the table would fail); publish the table whole: %s", cfg.Publication, l.table, stmt))
		}
	}
	return errors.Join(problems...)
}

func setupIdentity(ctx context.Context, conn *pgx.Conn, table string, checkOnly bool, rep *SetupReport) error {
	var ident string
	if err := conn.QueryRow(ctx, `SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass`, quoteQualified(table)).Scan(&ident); err != nil {
		return fmt.Errorf("read replica identity of %s: %w", table, err)
	}
	if ident == "f" {
		return nil
	}
	stmt := fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL", quoteQualified(table))
	why := "events on this table compare old and new values (previous status, previous assignee, active flag), which PostgreSQL only streams under REPLICA IDENTITY FULL"
	if checkOnly {
		return fmt.Errorf("table %s needs REPLICA IDENTITY FULL: %s; run `dzhook setup`, or %s", table, why, stmt)
	}
	if _, err := conn.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("set REPLICA IDENTITY FULL on %s: %w; %s, so the table's owner must run: %s", table, err, why, stmt)
	}
	rep.Actions = append(rep.Actions, fmt.Sprintf("set REPLICA IDENTITY FULL on %s", table))
	return nil
}

// setupKeyless sets REPLICA IDENTITY FULL on a table that has no replica
// identity at all: the default identity without a primary key, NOTHING,
// or an index that is gone. Published so, it would have PostgreSQL
// refuse the application's UPDATEs and DELETEs on it.
func setupKeyless(ctx context.Context, conn *pgx.Conn, table string, checkOnly bool, rep *SetupReport) error {
	var usable bool
	err := conn.QueryRow(ctx, `SELECT CASE c.relreplident
			WHEN 'f' THEN true
			WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
			WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
			ELSE false END
		FROM pg_class c WHERE c.oid = $1::regclass`, quoteQualified(table)).Scan(&usable)
	if err != nil {
		return fmt.Errorf("read replica identity of %s: %w", table, err)
	}
	if usable {
		return nil
	}
	stmt := fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL", quoteQualified(table))
	why := "it has no replica identity (no primary key), and PostgreSQL refuses UPDATE and DELETE on a published table without one: publishing it as it is would break the application's own statements"
	if checkOnly {
		return fmt.Errorf("table %s needs a replica identity before it is published: %s; run `dzhook setup`, add a primary key, or %s", table, why, stmt)
	}
	if _, err := conn.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("set REPLICA IDENTITY FULL on %s: %w; %s, so the table's owner must run: %s (or add a primary key)", table, err, why, stmt)
	}
	rep.Actions = append(rep.Actions, fmt.Sprintf("set REPLICA IDENTITY FULL on %s (it has no primary key: published without an identity, the application's UPDATEs and DELETEs on it would fail)", table))
	return nil
}

func setupSlot(ctx context.Context, conn *pgx.Conn, cfg SetupConfig, rep *SetupReport) error {
	var si slotInfo
	var confirmed, plugin, database, walStatus *string
	err := conn.QueryRow(ctx, `SELECT plugin, slot_type, database, current_database(), confirmed_flush_lsn::text, wal_status
		FROM pg_replication_slots WHERE slot_name = $1`, cfg.Slot).Scan(&plugin, &si.slotType, &database, &si.currentDB, &confirmed, &walStatus)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return fmt.Errorf("look up slot %q: %w", cfg.Slot, err)
	default:
		si.exists = true
		if plugin != nil {
			si.plugin = *plugin
		}
		if database != nil {
			si.database = *database
		}
		if walStatus != nil { // a slot whose WAL is lost fails setup and the start, not only the stream later
			si.walStatus, si.hasWALStat = *walStatus, true
		}
		return si.check(cfg.Slot)
	}
	var used, limit int
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots), current_setting('max_replication_slots')::int`).Scan(&used, &limit); err != nil {
		return fmt.Errorf("count replication slots: %w", err)
	}
	if used >= limit {
		return fmt.Errorf("no free replication slot: %d of max_replication_slots = %d are in use; drop an unused slot (SELECT slot_name, active FROM pg_replication_slots) or raise max_replication_slots and restart PostgreSQL", used, limit)
	}
	if cfg.CheckOnly {
		return fmt.Errorf("replication slot %q does not exist: run `dzhook setup`, or SELECT pg_create_logical_replication_slot('%s', 'pgoutput')", cfg.Slot, escapeLiteral(cfg.Slot))
	}
	// Creating a slot waits for the transactions running now to finish;
	// say so if one keeps it waiting.
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var lsn string
	err = conn.QueryRow(cctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, cfg.Slot).Scan(&lsn)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42710" { // created meanwhile by another dzhook
			return nil
		}
		if cctx.Err() != nil {
			return fmt.Errorf("create slot %q: still waiting after 2 minutes for running transactions to finish (see pg_stat_activity for long transactions)", cfg.Slot)
		}
		return fmt.Errorf("create slot %q: %w", cfg.Slot, err)
	}
	rep.Actions = append(rep.Actions, fmt.Sprintf("created replication slot %s (pgoutput) at %s", cfg.Slot, lsn))
	return nil
}
