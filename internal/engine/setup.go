package engine

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
)

// SetupOptions say what Setup may change.
type SetupOptions struct {
	// CheckOnly changes nothing in the source database and reports what
	// is missing (the journal is still migrated).
	CheckOnly bool
	// AcceptGap records that the operator accepts a gap between the
	// journal's position and the slot's start (`dzhook setup
	// --accept-gap`); without it a gap is an error.
	AcceptGap bool
	// OwnerDSN, when set, is the tables' owner's connection string, for
	// the mapping's check, the publication and REPLICA IDENTITY; the slot
	// is then made with source.dsn's role, which replicates (`dzhook setup
	// --owner-dsn-env`). An owner need not replicate: CloudNativePG's app
	// owner, for one, cannot, and setup with its DSN as source.dsn failed.
	OwnerDSN string
}

// Setup prepares the journal and the source database, as `dzhook setup`
// does: journal migrations, the journal's one source slot, publication,
// replica identity, slot, and the gap check. The journal comes first: a
// start that fails on it leaves no slot behind holding WAL.
func Setup(ctx context.Context, cfg *config.Config, opts SetupOptions) ([]string, error) {
	conn, err := pgx.Connect(ctx, cfg.Source.DSN.Reveal())
	if err != nil {
		return nil, fmt.Errorf("connect to source (source.dsn): %w", cdc.RedactDSNError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var slotConn *pgx.Conn
	// The mapping is checked as source.dsn's role, not the owner's: it
	// checks that the role reads every row of the tables dzhook queries,
	// which an owner does whatever the grants and policies.
	source := conn
	if opts.OwnerDSN != "" {
		owner, err := pgx.Connect(ctx, opts.OwnerDSN)
		if err != nil {
			return nil, fmt.Errorf("connect to source (the owner's DSN, --owner-dsn-env): %w", cdc.RedactDSNError(err))
		}
		defer owner.Close(context.WithoutCancel(ctx))
		if err := sameDatabase(ctx, owner, conn); err != nil {
			return nil, err
		}
		conn, slotConn = owner, conn
	}
	if err := cfg.Mapping.Check(ctx, source); err != nil {
		return nil, err
	}
	store, err := journal.Open(ctx, cfg.JournalDSN().Reveal(), cfg.Journal.Schema)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	// The replication connection after the journal's migrations, which
	// `setup --check` applies even for a role that cannot replicate.
	identify := func() (pglogrepl.IdentifySystemResult, error) {
		repl, err := cdc.ConnectReplication(ctx, cfg.Source.DSN.Reveal())
		if err != nil {
			return pglogrepl.IdentifySystemResult{}, fmt.Errorf("source (source.dsn): %w", err)
		}
		defer repl.Close(context.WithoutCancel(ctx))
		return identifySystem(ctx, repl)
	}
	return setupOn(ctx, cfg, opts, conn, slotConn, store, identify)
}

// sameDatabase refuses an owner's DSN that reaches another database than
// source.dsn's: the publication would be made where nothing streams.
func sameDatabase(ctx context.Context, owner, source *pgx.Conn) error {
	// The server's start as an instant (its text is in each session's
	// time zone, which a role may set), and the database's oid.
	const q = `SELECT current_database(), (SELECT oid FROM pg_database WHERE datname = current_database())::int8,
		extract(epoch FROM pg_postmaster_start_time())::text`
	var db1, db2, start1, start2 string
	var oid1, oid2 int64
	if err := owner.QueryRow(ctx, q).Scan(&db1, &oid1, &start1); err != nil {
		return fmt.Errorf("the owner's database: %w", err)
	}
	if err := source.QueryRow(ctx, q).Scan(&db2, &oid2, &start2); err != nil {
		return fmt.Errorf("source.dsn's database: %w", err)
	}
	switch {
	case start1 != start2:
		return fmt.Errorf("the owner's DSN (--owner-dsn-env) reaches another PostgreSQL server than source.dsn: give both the same database")
	case oid1 != oid2:
		return fmt.Errorf("the owner's DSN (--owner-dsn-env) reaches database %q, source.dsn %q: give both the same database", db1, db2)
	}
	return nil
}

// setupOn is Setup's work after the mapping's check, on connections the
// caller holds: the engine's start keeps them (a connection costs a
// PostgreSQL backend's start, a few milliseconds each). identify runs
// IDENTIFY_SYSTEM, once the journal is migrated.
func setupOn(ctx context.Context, cfg *config.Config, opts SetupOptions, conn, slotConn *pgx.Conn, store *journal.Store, identify func() (pglogrepl.IdentifySystemResult, error)) ([]string, error) {
	// One setup at a time per source database: two (the init containers of two
	// replicas starting together) each found the slot missing and made
	// it, the second failing, or made the publication twice; two with
	// different slot names each made a slot, the second refused after.
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended('dzhook setup ' || current_database(), 0))`); err != nil {
		return nil, fmt.Errorf("wait for another dzhook setup: %w", err)
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtextextended('dzhook setup ' || current_database(), 0))`)
	}()
	var actions []string
	applied, err := store.Migrate(ctx)
	for _, m := range applied {
		actions = append(actions, "applied journal migration "+m)
	}
	if err != nil {
		return actions, err
	}
	sys, err := identify()
	if err != nil {
		return actions, err
	}
	sc, err := checkSource(ctx, conn, store, sys.SystemID, cfg.Source.Slot)
	if err != nil {
		return actions, err
	}
	tables := cfg.Mapping.Tables()
	if cfg.Outbox.Table != "" {
		outbox := cfg.Mapping.Qualify(cfg.Outbox.Table)
		ok, err := mapping.TableExists(ctx, conn, outbox)
		if err != nil {
			return nil, err
		}
		if ok {
			// Checked as the mapped tables' columns are: an outbox
			// without event and payload rejected every row.
			misfit, err := mapping.CheckOutbox(ctx, conn, outbox)
			if err != nil {
				return actions, err
			}
			if misfit != nil {
				return actions, misfit
			}
			tables = append(tables, outbox)
		}
	}
	rep, err := cdc.Setup(ctx, conn, cdc.SetupConfig{
		Slot: cfg.Source.Slot, Publication: cfg.Source.Publication, Tables: tables,
		FullIdentity: cfg.Mapping.FullIdentityTables(), CheckOnly: opts.CheckOnly, SlotConn: slotConn,
	})
	actions = append(actions, rep.Actions...)
	if err != nil {
		return actions, err
	}
	if err := journalUnpublished(ctx, conn, store, cfg.Source.Publication); err != nil {
		return actions, err
	}
	more, err := settleSource(ctx, conn, store, sc, sys, cfg.Source.Slot, opts.AcceptGap, cfg.Notify.URL.Reveal() != "")
	return append(actions, more...), err
}

// identifySystem reads the cluster's system identifier, which keeps event
// ids of two databases apart, and the WAL's end.
func identifySystem(ctx context.Context, conn *pgconn.PgConn) (pglogrepl.IdentifySystemResult, error) {
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return pglogrepl.IdentifySystemResult{}, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	return sys, nil
}

// journalUnpublished refuses a publication that publishes the journal's
// own tables (FOR ALL TABLES, FOR TABLES IN SCHEMA, or added by hand)
// when the journal is in the source database: every journal write then
// came back through the stream as a transaction, whose checkpoint the
// journal wrote again, about twenty writes a second while nothing
// happened, and every delivery's rows were decoded a second time (found
// by a review, 2026-12-07). A journal in another database is not
// streamed, whatever the publication; and only the journal's own tables
// count: journal.schema may be the mapped tables' (public).
func journalUnpublished(ctx context.Context, conn *pgx.Conn, store *journal.Store, publication string) error {
	journalConn, err := store.Pool().Acquire(ctx)
	if err != nil {
		return fmt.Errorf("journal (journal.dsn): %w", err)
	}
	defer journalConn.Release()
	if sameDatabase(ctx, journalConn.Conn(), conn) != nil {
		return nil
	}
	var all bool
	var tables []string
	err = conn.QueryRow(ctx, `SELECT p.puballtables,
		       coalesce((SELECT array_agg(quote_ident(t.schemaname) || '.' || quote_ident(t.tablename) ORDER BY t.tablename)
		                   FROM pg_publication_tables t WHERE t.pubname = p.pubname AND t.schemaname = $2 AND t.tablename = ANY($3)), '{}')
		  FROM pg_publication p WHERE p.pubname = $1`, publication, store.Schema(), journal.OwnTables()).Scan(&all, &tables)
	if err != nil || len(tables) == 0 {
		return err // none: Setup made sure the publication exists
	}
	fix := fmt.Sprintf("ALTER PUBLICATION %s DROP TABLE %s", pgx.Identifier{publication}.Sanitize(), strings.Join(tables, ", "))
	if all {
		fix = fmt.Sprintf("DROP PUBLICATION %s, then `dzhook setup` makes it again for the mapped tables only", pgx.Identifier{publication}.Sanitize())
	}
	return fmt.Errorf("publication %q (source.publication) publishes the journal's own tables (%s; journal.schema %q is in the source database): "+
		"each journal write would come back through the stream as a transaction to journal, a write loop while nothing happens. "+
		"Publish the mapped tables only: %s; or keep the journal in another database (journal.dsn)",
		publication, strings.Join(tables, ", "), store.Schema(), fix)
}
