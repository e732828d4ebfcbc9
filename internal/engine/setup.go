package engine

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
)

// Setup prepares the source database and the journal, as `dzhook setup`
// does: publication, replica identity, slot, journal migrations. With
// checkOnly it changes nothing and reports what is missing.
func Setup(ctx context.Context, cfg *config.Config, checkOnly bool) ([]string, error) {
	conn, err := pgx.Connect(ctx, cfg.Source.DSN.Reveal())
	if err != nil {
		return nil, fmt.Errorf("connect to source (source.dsn): %w", cdc.RedactDSNError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := cfg.Mapping.Check(ctx, conn); err != nil {
		return nil, err
	}
	tables := cfg.Mapping.Tables()
	if cfg.Outbox.Table != "" {
		outbox := cfg.Mapping.Qualify(cfg.Outbox.Table)
		ok, err := mapping.TableExists(ctx, conn, outbox)
		if err != nil {
			return nil, err
		}
		if ok {
			tables = append(tables, outbox)
		}
	}
	rep, err := cdc.Setup(ctx, conn, cdc.SetupConfig{
		Slot: cfg.Source.Slot, Publication: cfg.Source.Publication, Tables: tables,
		FullIdentity: cfg.Mapping.FullIdentityTables(), CheckOnly: checkOnly,
	})
	if err != nil {
		return rep.Actions, err
	}
	store, err := journal.Open(ctx, cfg.JournalDSN().Reveal(), cfg.Journal.Schema)
	if err != nil {
		return rep.Actions, err
	}
	defer store.Close()
	applied, err := store.Migrate(ctx)
	for _, m := range applied {
		rep.Actions = append(rep.Actions, "applied journal migration "+m)
	}
	return rep.Actions, err
}

// identifySystem reads the cluster's system identifier, which keeps event
// ids of two databases apart, and the WAL's end.
func identifySystem(ctx context.Context, dsn string) (pglogrepl.IdentifySystemResult, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return pglogrepl.IdentifySystemResult{}, cdc.RedactDSNError(err)
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return pglogrepl.IdentifySystemResult{}, fmt.Errorf("connect for IDENTIFY_SYSTEM: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return pglogrepl.IdentifySystemResult{}, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	return sys, nil
}
