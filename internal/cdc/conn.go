package cdc

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dzdesk/dzhook/internal/rawsock"
)

// sessionParams pin how PostgreSQL prints values, so text-format values
// decode the same on every server whatever its defaults.
var sessionParams = map[string]string{
	"TimeZone":           "UTC",
	"DateStyle":          "ISO, YMD",
	"IntervalStyle":      "postgres",
	"extra_float_digits": "3",
	"application_name":   "dzhook",
}

// connectReplication opens a replication=database connection.
func (s *Stream) connectReplication(ctx context.Context) (*pgconn.PgConn, error) {
	return ConnectReplication(ctx, s.cfg.DSN)
}

// ConnectReplication opens a replication=database connection to dsn, as
// the stream's sessions do (Config.Conn).
func ConnectReplication(ctx context.Context, dsn string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, &fatalError{fmt.Errorf("parse source DSN: %w", RedactDSNError(err))}
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.DialFunc = rawsock.Dialer(cfg.DialFunc)
	for k, v := range sessionParams {
		cfg.RuntimeParams[k] = v
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, cfg)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42501" {
			// "must be superuser or replication role to start walsender":
			// the role, and the fix preflight names (it runs later, on an
			// ordinary connection, and was never reached).
			// Not fatal: a running stream whose role lost the attribute
			// retries and says why (/readyz) until it is back.
			return nil, fmt.Errorf("connect for replication: role %q lacks the REPLICATION attribute that streaming needs: run ALTER ROLE %s REPLICATION as a superuser (on RDS: GRANT rds_replication TO %s; see deploy/sql/role.sql): %w",
				cfg.User, quoteIdent(cfg.User), quoteIdent(cfg.User), pgErr)
		}
		return nil, fmt.Errorf("connect for replication: %w", err)
	}
	return conn, nil
}

// newCatalogPool opens the ordinary pool for catalog queries.
func newCatalogPool(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse source DSN: %w", RedactDSNError(err))
	}
	cfg.MaxConns = 2
	cfg.ConnConfig.DialFunc = rawsock.Dialer(cfg.ConnConfig.DialFunc)
	for k, v := range sessionParams {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "dzhook-catalog"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to source (source.dsn): %w", err)
	}
	return pool, nil
}

// checkSlot fails at start when the slot is missing or is not a pgoutput
// slot of this database, with the fix.
func (s *Stream) checkSlot(ctx context.Context) error {
	info, err := lookupSlot(ctx, s.pool, s.cfg.Slot)
	if err != nil {
		return err
	}
	return info.check(s.cfg.Slot)
}

// slotInfo is a row of pg_replication_slots.
type slotInfo struct {
	exists     bool
	plugin     string
	slotType   string
	database   string
	currentDB  string
	confirmed  pglogrepl.LSN
	active     bool
	activePID  int32
	walStatus  string
	hasWALStat bool
}

// slotColumns are the columns of pg_replication_slots slotInfo reads,
// as text (NULL when the slot is not there: the outer join).
const slotColumns = `SELECT s.slot_name IS NOT NULL, s.plugin, s.slot_type, s.database, current_database(), s.confirmed_flush_lsn::text,
		       s.active::text, s.active_pid::text, s.wal_status
		  FROM (SELECT 1) one LEFT JOIN pg_replication_slots s ON s.slot_name = `

func lookupSlot(ctx context.Context, pool *pgxpool.Pool, slot string) (slotInfo, error) {
	var exists bool
	var cols [8]*string
	err := pool.QueryRow(ctx, slotColumns+`$1`, slot).
		Scan(&exists, &cols[0], &cols[1], &cols[2], &cols[3], &cols[4], &cols[5], &cols[6], &cols[7])
	if err != nil {
		return slotInfo{}, fmt.Errorf("look up slot %q: %w", slot, err)
	}
	return slotInfoOf(exists, cols), nil
}

// lookupSlotOn is lookupSlot on a replication connection (it takes SQL
// before START_REPLICATION): the server a session judged. The catalog
// pool's connections may still reach the old one after a failover.
func lookupSlotOn(ctx context.Context, conn *pgconn.PgConn, slot string) (slotInfo, error) {
	res, err := conn.Exec(ctx, slotColumns+"'"+escapeLiteral(slot)+"'").ReadAll()
	if err != nil {
		return slotInfo{}, fmt.Errorf("look up slot %q: %w", slot, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 9 {
		return slotInfo{}, fmt.Errorf("look up slot %q: unexpected answer", slot)
	}
	row := res[0].Rows[0]
	var cols [8]*string
	for i, v := range row[1:] {
		if v != nil {
			t := string(v)
			cols[i] = &t
		}
	}
	return slotInfoOf(string(row[0]) == "t", cols), nil
}

// slotInfoOf reads slotColumns' values after the first (exists).
func slotInfoOf(exists bool, cols [8]*string) slotInfo {
	text := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	si := slotInfo{currentDB: text(cols[3])}
	if !exists {
		return si
	}
	si.exists = true
	si.plugin, si.slotType, si.database = text(cols[0]), text(cols[1]), text(cols[2])
	if cols[4] != nil {
		si.confirmed, _ = pglogrepl.ParseLSN(*cols[4])
	}
	si.active = text(cols[5]) == "true"
	if pid, err := strconv.ParseInt(text(cols[6]), 10, 32); err == nil {
		si.activePID = int32(pid)
	}
	if cols[7] != nil {
		si.walStatus, si.hasWALStat = *cols[7], true
	}
	return si
}

func (si slotInfo) check(slot string) error {
	switch {
	case !si.exists:
		return &SlotMissingError{Slot: slot}
	case si.slotType != "logical" || si.plugin != "pgoutput":
		return fmt.Errorf("replication slot %q uses plugin %q (%s), not pgoutput: drop it (SELECT pg_drop_replication_slot('%s')) or choose another source.slot", slot, si.plugin, si.slotType, slot)
	case si.database != si.currentDB:
		return fmt.Errorf("replication slot %q belongs to database %q, not %q: choose another source.slot", slot, si.database, si.currentDB)
	case si.walStatus == "lost":
		return fmt.Errorf("replication slot %q has lost required WAL (wal_status=lost; max_slot_wal_keep_size was exceeded): events in the gap are gone: drop the slot (SELECT pg_drop_replication_slot('%s')) and run `dzhook setup --accept-gap` to create it afresh and accept the gap", slot, slot)
	}
	return nil
}

// slotConfirmed returns the slot's confirmed_flush_lsn, read on the
// session's replication connection.
func (s *Stream) slotConfirmed(ctx context.Context, conn *pgconn.PgConn) (pglogrepl.LSN, error) {
	info, err := lookupSlotOn(ctx, conn, s.cfg.Slot)
	if err != nil {
		return 0, err
	}
	if err := info.check(s.cfg.Slot); err != nil {
		var missing *SlotMissingError
		if errors.As(err, &missing) || info.walStatus == "lost" {
			// Dropped (or invalidated) while dzhook ran: wait, loudly,
			// for the operator to create it again; the gap check then
			// refuses what it cannot vouch for.
			return 0, err
		}
		return 0, &fatalError{err}
	}
	return info.confirmed, nil
}

// pollLag keeps Stats.LagBytes and Stats.RetainedBytes fresh until ctx
// ends.
func (s *Stream) pollLag(ctx context.Context) {
	t := time.NewTicker(s.cfg.LagInterval)
	defer t.Stop()
	for {
		var lag, retained *int64
		err := s.pool.QueryRow(ctx, `
			SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, (pg_current_wal_lsn() - restart_lsn)::bigint
			  FROM pg_replication_slots WHERE slot_name = $1`, s.cfg.Slot).Scan(&lag, &retained)
		// Unknown (-1) when the query fails or the slot is gone: the
		// last value, kept, read as current.
		if err == nil && lag != nil {
			s.lagBytes.Store(*lag)
		} else if ctx.Err() == nil {
			s.lagBytes.Store(-1)
		}
		if err == nil && retained != nil {
			s.retained.Store(*retained)
		} else if ctx.Err() == nil {
			s.retained.Store(-1)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// catalogTypes loads type information for the relation cache.
type catalogTypes struct{ pool *pgxpool.Pool }

func (c *catalogTypes) LoadType(ctx context.Context, oid uint32) (TypeInfo, error) {
	var ti TypeInfo
	var kind, delim string
	var isArray bool
	err := c.pool.QueryRow(ctx, `
		SELECT t.typname, t.typtype::text, t.typbasetype, t.typelem, t.typdelim::text, t.typcategory = 'A'
		  FROM pg_type t WHERE t.oid = $1`, oid).Scan(&ti.Name, &kind, &ti.BaseOID, &ti.ElemOID, &delim, &isArray)
	if errors.Is(err, pgx.ErrNoRows) {
		return TypeInfo{OID: oid, Kind: 'p'}, nil
	}
	if err != nil {
		return ti, err
	}
	ti.OID = oid
	if !isArray {
		ti.ElemOID = 0 // fixed-length types such as name have a typelem too
	}
	if kind != "" {
		ti.Kind = kind[0]
	}
	ti.Delimiter = ','
	if delim != "" {
		ti.Delimiter = delim[0]
	}
	return ti, nil
}

// SlotMissingError says the replication slot does not exist.
type SlotMissingError struct{ Slot string }

func (e *SlotMissingError) Error() string {
	return fmt.Sprintf("replication slot %q does not exist (never created, or dropped): run `dzhook setup` to create it; "+
		"if dzhook streamed from a slot of that name before, transactions committed since it was dropped were never read, "+
		"and dzhook refuses to go on until the gap is accepted with `dzhook setup --accept-gap`", e.Slot)
}
