// Package engine assembles dzhook's data flow from a configuration:
// replication stream → mapping → fanout, with the journal beside them. It
// is what `dzhook run` runs, and what end-to-end tests start in-process.
package engine

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/dzdesk/dzhook/cdc"
	"github.com/dzdesk/dzhook/fanout"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/journal"
	"github.com/dzdesk/dzhook/mapping"
)

// Options tune an Engine beyond its configuration.
type Options struct {
	Logger  *slog.Logger
	Version string
	// PollInterval, Heartbeat and StatusInterval shorten the engine's
	// clocks in tests; zero keeps the defaults.
	PollInterval   time.Duration
	Heartbeat      time.Duration
	StatusInterval time.Duration
}

// Engine is one running dzhook.
type Engine struct {
	cfg        *config.Config
	log        *slog.Logger
	source     *pgxpool.Pool
	journal    *journal.Store
	stream     *cdc.Stream
	mapper     *mapping.Mapper
	dispatcher *fanout.Dispatcher
	instance   string
	checkpoint pglogrepl.LSN
	scratch    []mapping.Event
}

// Setup prepares the source database and the journal, as `dzhook setup`
// does: publication, replica identity, slot, journal migrations. With
// checkOnly it changes nothing and reports what is missing.
func Setup(ctx context.Context, cfg *config.Config, checkOnly bool) ([]string, error) {
	conn, err := pgx.Connect(ctx, cfg.Source.DSN.Reveal())
	if err != nil {
		return nil, fmt.Errorf("connect to source: %w", redact(err))
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

// redact drops the connection string pgconn may quote in an error.
func redact(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return errors.New("invalid connection string")
	}
	return err
}

// New connects, prepares the database (setup, or a check when
// source.auto_setup is false) and assembles the engine. Every error here
// is one the operator must fix; Run handles the transient ones.
func New(ctx context.Context, cfg *config.Config, opts Options) (*Engine, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if _, err := Setup(ctx, cfg, !cfg.Source.AutoSetup); err != nil {
		return nil, err
	}
	source, err := pgxpool.New(ctx, cfg.Source.DSN.Reveal())
	if err != nil {
		return nil, fmt.Errorf("connect to source: %w", redact(err))
	}
	e := &Engine{cfg: cfg, log: opts.Logger, source: source}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	if e.journal, err = journal.Open(ctx, cfg.JournalDSN().Reveal(), cfg.Journal.Schema); err != nil {
		return nil, err
	}
	cp, err := e.journal.Checkpoint(ctx, cfg.Source.Slot)
	if err != nil {
		return nil, err
	}
	e.checkpoint = pglogrepl.LSN(cp)
	sysID, err := systemID(ctx, cfg.Source.DSN.Reveal())
	if err != nil {
		return nil, err
	}
	cat, err := cfg.Catalog()
	if err != nil {
		return nil, err
	}
	users, err := mapping.NewPoolUsers(ctx, source, &cfg.Mapping)
	if err != nil {
		return nil, err
	}
	outbox := ""
	if cfg.Outbox.Table != "" {
		outbox = cfg.Mapping.Qualify(cfg.Outbox.Table)
	}
	e.mapper = mapping.NewMapper(mapping.MapperConfig{
		Mapping: cfg.Mapping, Source: mapping.NewSource(sysID), Catalog: cat, OutboxTable: outbox,
		MessagePrefix: cfg.Outbox.MessagePrefix, Users: users, Logger: opts.Logger,
	})
	e.instance = newInstanceID()
	subs := make([]fanout.Subscription, len(cfg.Subscriptions))
	for i, s := range cfg.Subscriptions {
		subs[i] = Subscription(s)
	}
	e.dispatcher, err = fanout.New(fanout.Config{
		Subscriptions: subs, Journal: e.journal, Slot: cfg.Source.Slot, Instance: e.instance,
		Ack:     func(lsn uint64) { e.stream.Ack(pglogrepl.LSN(lsn)) },
		Timeout: cfg.Delivery.Timeout, RetrySchedule: cfg.Delivery.RetrySchedule, ResponseBodyLimit: cfg.Delivery.ResponseBodyLimit,
		Concurrency: cfg.Delivery.Concurrency, QueueSize: cfg.Delivery.QueueSize, UserAgent: "dzhook/" + opts.Version,
		PollInterval: opts.PollInterval, Heartbeat: cmp.Or(opts.Heartbeat, cfg.Journal.Heartbeat), Logger: opts.Logger,
	})
	if err != nil {
		return nil, err
	}
	e.stream, err = cdc.New(cdc.Config{
		DSN: cfg.Source.DSN.Reveal(), Slot: cfg.Source.Slot, Publication: cfg.Source.Publication,
		Handler: e, Logger: opts.Logger, Pool: source, StatusInterval: opts.StatusInterval,
	})
	if err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

// Subscription converts a configured subscription for fanout.
func Subscription(s config.Subscription) fanout.Subscription {
	headers := make(map[string]string, len(s.Headers))
	for k, v := range s.Headers {
		headers[k] = v.Reveal()
	}
	return fanout.Subscription{
		ID: s.ID, URL: s.URL, Events: s.Events, Secret: []byte(s.Secret.Reveal()), StandardWebhooks: s.StandardWebhooks,
		Active: s.Active, QueueWhileInactive: s.QueueWhileInactive, Filter: s.Filter, Headers: headers,
	}
}

func newInstanceID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// systemID reads the cluster's system identifier, which keeps event ids of
// two databases apart.
func systemID(ctx context.Context, dsn string) (string, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return "", redact(err)
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", fmt.Errorf("connect for IDENTIFY_SYSTEM: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return "", fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	return sys.SystemID, nil
}

// Run streams and delivers until ctx ends or a component fails. On
// cancellation the stream stops reading, attempts in flight finish, the
// journal receives everything queued, and Run returns nil.
func (e *Engine) Run(ctx context.Context) error {
	defer e.close()
	e.log.Info("dzhook running", "instance", e.instance, "slot", e.cfg.Source.Slot, "subscriptions", len(e.cfg.Subscriptions), "checkpoint", e.checkpoint.String())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return e.dispatcher.Run(gctx) })
	g.Go(func() error {
		err := e.stream.Run(gctx)
		if err != nil {
			return fmt.Errorf("replication stream: %w", err)
		}
		return nil
	})
	return g.Wait()
}

func (e *Engine) close() {
	if e.journal != nil {
		e.journal.Close()
	}
	if e.source != nil {
		e.source.Close()
	}
}

// Stream returns the replication stream, for health and metrics.
func (e *Engine) Stream() *cdc.Stream { return e.stream }

// Journal returns the journal.
func (e *Engine) Journal() *journal.Store { return e.journal }

// HandleChange implements cdc.Handler: map the change and dispatch its
// events. A change of a transaction already journaled (the stream resends
// what it had not acknowledged before a restart) is skipped.
func (e *Engine) HandleChange(ctx context.Context, c *cdc.Change) error {
	if c.CommitLSN <= e.checkpoint {
		return nil
	}
	events, rej := e.mapper.Map(ctx, c, e.scratch[:0])
	e.scratch = events[:0]
	if rej != nil {
		e.log.Warn("outbox event rejected", "source", rej.What, "reason", rej.Reason, "lsn", c.CommitLSN.String())
		if err := e.dispatcher.Reject(ctx, journal.Rejection{Source: rej.What, Reason: rej.Reason, CommitLSN: uint64(c.CommitLSN)}); err != nil {
			return err
		}
	}
	for _, ev := range events {
		err := e.dispatcher.Dispatch(ctx, fanout.Event{ID: ev.ID, Type: ev.Type, Timestamp: ev.Timestamp, Body: ev.Body, CommitLSN: uint64(ev.CommitLSN)})
		if err != nil {
			return err
		}
	}
	return nil
}

// HandleCommit implements cdc.Handler.
func (e *Engine) HandleCommit(ctx context.Context, c cdc.Commit) error {
	if c.CommitLSN <= e.checkpoint {
		e.stream.Ack(c.CommitLSN)
		return nil
	}
	return e.dispatcher.Commit(ctx, uint64(c.CommitLSN))
}
