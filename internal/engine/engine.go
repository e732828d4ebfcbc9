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
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/dzdesk/dzhook/internal/admin"
	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/internal/metrics"
	"github.com/dzdesk/dzhook/internal/slaclock"
)

// Options tune an Engine beyond its configuration.
type Options struct {
	Logger  *slog.Logger
	Version string
	// Dashboard is served by the admin server at /.
	Dashboard fs.FS
	// PollInterval, Heartbeat and StatusInterval shorten the engine's
	// clocks in tests; zero keeps the defaults.
	PollInterval      time.Duration
	Heartbeat         time.Duration
	StatusInterval    time.Duration
	RetentionInterval time.Duration
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
	checkpoint pglogrepl.LSN // read and moved only by the stream's goroutine (and New)
	systemID   string
	scratch    []mapping.Event
	metrics    *metrics.Metrics
	admin      *admin.Server
	adminLn    net.Listener
	catalog    *catalog.Catalog
	dashboard  fs.FS
	clock      *slaclock.Clock
	opts       Options
}

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
		return nil, fmt.Errorf("connect to source (source.dsn): %w", cdc.RedactDSNError(err))
	}
	e := &Engine{cfg: cfg, log: opts.Logger, source: source, opts: opts}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	if e.journal, err = journal.Open(ctx, cfg.JournalDSN().Reveal(), cfg.Journal.Schema); err != nil {
		return nil, err
	}
	// The checkpoint first, the WAL's end after: another instance holding
	// the slot may journal meanwhile, and a checkpoint read after the WAL
	// position could look ahead of it.
	cp, err := e.journal.Checkpoint(ctx, cfg.Source.Slot)
	if err != nil {
		return nil, err
	}
	sys, err := identifySystem(ctx, cfg.Source.DSN.Reveal())
	if err != nil {
		return nil, err
	}
	sysID := sys.SystemID
	e.systemID = sysID
	if err := e.useCheckpoint(ctx, cp, sys.XLogPos); err != nil {
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
	slaSource, err := mapping.NewSLASource(ctx, source, &cfg.Mapping)
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
	e.catalog = cat
	e.dashboard = opts.Dashboard
	e.metrics = metrics.New(metrics.Sources{
		Stream:        e.streamStats,
		Subscriptions: func() []fanout.SubscriptionStatus { return e.dispatcher.Subscriptions() },
		Backlogs:      e.journal.Backlogs,
		Logger:        opts.Logger,
	})
	e.dispatcher, err = fanout.New(fanout.Config{
		Subscriptions: subscriptions(cfg), Journal: e.journal, Slot: cfg.Source.Slot, SystemID: sysID, Instance: e.instance,
		Notify:   fanout.NotifyConfig{URL: cfg.Notify.URL.Reveal(), Secret: []byte(cfg.Notify.Secret.Reveal())},
		Observer: e.metrics,
		Egress:   egressGuard(cfg.Delivery),
		Ack:      func(lsn uint64) { e.stream.Ack(pglogrepl.LSN(lsn)) },
		Timeout:  cfg.Delivery.Timeout, RetrySchedule: cfg.Delivery.RetrySchedule, ResponseBodyLimit: cfg.Delivery.ResponseBodyLimit,
		Concurrency: cfg.Delivery.Concurrency, QueueSize: cfg.Delivery.QueueSize, UserAgent: "dzhook/" + opts.Version,
		PollInterval: opts.PollInterval, Heartbeat: cmp.Or(opts.Heartbeat, cfg.Journal.Heartbeat), Logger: opts.Logger,
	})
	if err != nil {
		return nil, err
	}
	e.clock, err = slaclock.New(slaclock.Config{
		Store: e.journal, Source: slaSource, Events: e.mapper, Dispatcher: e.dispatcher, Slot: cfg.Source.Slot,
		WarningPercent: cfg.SLA.WarningPercent, SLATypes: cfg.Mapping.SLAs.Values.SLAType, CheckInterval: cfg.SLA.CheckInterval, Logger: opts.Logger,
	})
	if err != nil {
		return nil, err
	}
	// Pause and health as journaled, before the admin API can be asked.
	if err := e.dispatcher.LoadState(ctx); err != nil {
		return nil, err
	}
	e.stream, err = cdc.New(cdc.Config{
		DSN: cfg.Source.DSN.Reveal(), Slot: cfg.Source.Slot, Publication: cfg.Source.Publication,
		Handler: e, Logger: opts.Logger, Pool: source, StatusInterval: opts.StatusInterval,
		OnSession: e.sessionStarted,
		// On shutdown the stream keeps the slot while attempts in flight
		// finish (each within the delivery timeout) and the journal takes
		// their outcomes, so PostgreSQL hears of every journaled commit.
		DrainTimeout: cfg.Delivery.Timeout + 5*time.Second,
	})
	if err != nil {
		return nil, err
	}
	if cfg.Admin.Listen != "" {
		// Bound here, so a port in use is an error at start.
		if e.adminLn, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
			return nil, fmt.Errorf("admin.listen %s: %w", cfg.Admin.Listen, err)
		}
		e.admin = admin.New(admin.Config{
			Token: cfg.Admin.Token.Reveal(), MetricsPublic: cfg.Admin.MetricsPublic,
			Deliverer: e.dispatcher, History: e.journal, Catalog: e.catalog, Sample: sample,
			Ready: e.Ready, Registry: e.metrics.Registry, Dashboard: e.dashboard, Logger: e.log,
		})
	}
	ok = true
	return e, nil
}

// AdminAddr is the admin server's address ("" when it is off).
func (e *Engine) AdminAddr() string {
	if e.adminLn == nil {
		return ""
	}
	return e.adminLn.Addr().String()
}

func egressGuard(d config.Delivery) *fanout.EgressGuard {
	g := &fanout.EgressGuard{BlockPrivate: d.BlockPrivateNetworks}
	for _, n := range d.AllowNetworks {
		if p, err := netip.ParsePrefix(n); err == nil { // validated with the configuration
			g.Allow = append(g.Allow, p.Masked())
		}
	}
	return g
}

func subscriptions(cfg *config.Config) []fanout.Subscription {
	subs := make([]fanout.Subscription, len(cfg.Subscriptions))
	for i, s := range cfg.Subscriptions {
		subs[i] = Subscription(s)
	}
	return subs
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

// useCheckpoint adopts the slot's checkpoint, below which the stream's
// transactions are known to be journaled. One that cannot be this
// cluster's (another system identifier, or a position its WAL has not
// reached: a restore from backup) is dropped rather than trusted, since it
// would make dzhook skip transactions it never journaled.
func (e *Engine) useCheckpoint(ctx context.Context, cp journal.Checkpoint, walEnd pglogrepl.LSN) error {
	lsn := pglogrepl.LSN(cp.LSN)
	var why string
	switch {
	case cp.LSN == 0:
	case cp.SystemID != "" && cp.SystemID != e.systemID:
		why = "it belongs to database cluster " + cp.SystemID + ", not " + e.systemID
	case lsn > walEnd:
		why = "it is ahead of the database's WAL (" + walEnd.String() + "): the database was restored from a backup or replaced; " +
			"new events may reuse ids of the lost timeline, which the journal drops as known: give dzhook a fresh journal.schema"
	}
	if why == "" {
		e.checkpoint = lsn
		return nil
	}
	e.log.Warn("journal checkpoint dropped; every transaction the slot sends is processed", "slot", e.cfg.Source.Slot, "checkpoint", lsn.String(), "reason", why)
	e.checkpoint = 0
	return e.journal.ResetCheckpoint(ctx, e.cfg.Source.Slot, cp)
}

// sessionStarted runs, in the stream's order, before the first change of
// each replication session: another instance may have journaled
// transactions (and checkpointed them) while this one waited for the slot,
// and PostgreSQL resends what that instance journaled but had not yet
// confirmed. The fresh checkpoint skips them. It only ever moves forward.
func (e *Engine) sessionStarted(ctx context.Context) {
	cp, err := e.journal.Checkpoint(ctx, e.cfg.Source.Slot)
	if err != nil {
		e.log.Warn("could not re-read the journal checkpoint; transactions journaled by another instance may be delivered again", "err", err)
		return
	}
	if cp.SystemID == e.systemID && pglogrepl.LSN(cp.LSN) > e.checkpoint {
		e.checkpoint = pglogrepl.LSN(cp.LSN)
	}
}

// Run streams and delivers until ctx ends or a component fails. On
// cancellation the stream stops reading, attempts in flight finish, the
// journal receives everything queued, and Run returns nil.
func (e *Engine) Run(ctx context.Context) error {
	defer e.close()
	e.log.Info("dzhook running", "instance", e.instance, "slot", e.cfg.Source.Slot, "subscriptions", len(e.cfg.Subscriptions), "checkpoint", e.checkpoint.String())
	g, gctx := errgroup.WithContext(ctx)
	if e.admin != nil {
		g.Go(func() error { return e.admin.Serve(gctx, e.adminLn) })
	}
	g.Go(func() error { return e.dispatcher.Run(gctx) })
	g.Go(func() error { return e.clock.Run(gctx) })
	retention := journal.Retention{Store: e.journal, MaxAge: e.cfg.Journal.Retention, Interval: e.opts.RetentionInterval, Logger: e.log}
	g.Go(func() error { return retention.Run(gctx) })
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
	if e.adminLn != nil {
		e.adminLn.Close()
	}
	if e.journal != nil {
		e.journal.Close()
	}
	if e.source != nil {
		e.source.Close()
	}
}

// sample builds a test event of a type.
func sample(eventType string) fanout.Event {
	id, now := fanout.TestEventID(), time.Now().UTC()
	return fanout.Event{ID: id, Type: eventType, Timestamp: now, Body: mapping.Sample(eventType, id, now)}
}

// Ready reports why dzhook cannot do its job right now: not streaming
// (connecting, or standby behind another process), or the journal
// unreachable.
func (e *Engine) Ready(ctx context.Context) error {
	st := e.stream.Stats()
	switch {
	case st.Standby:
		return errors.New("standby: another dzhook holds the replication slot")
	case !st.Connected:
		return errors.New("not streaming: connecting to PostgreSQL")
	}
	if err := e.journal.Ping(ctx); err != nil {
		// /readyz answers without a token: the reason names no host,
		// user or database; the log has the detail.
		e.log.Warn("readiness: the journal does not answer", "err", err)
		return errors.New("journal unreachable (the log has the detail)")
	}
	return nil
}

func (e *Engine) streamStats() metrics.StreamStats {
	st := e.stream.Stats()
	return metrics.StreamStats{
		ReceivedLSN: uint64(st.ReceivedLSN), FlushedLSN: uint64(st.FlushedLSN), AckedLSN: uint64(st.AckedLSN),
		LagBytes: st.LagBytes, Changes: st.Changes, Transactions: st.Transactions, Reconnects: st.Reconnects,
		Connected: st.Connected, Standby: st.Standby,
	}
}

// Reload applies a new configuration without a restart: subscriptions
// are added, removed or changed without losing a delivery. Settings that
// need a restart (source, journal, delivery, admin, mapping) are reported
// and left as they were.
func (e *Engine) Reload(ctx context.Context, next *config.Config) error {
	if err := e.dispatcher.Reload(ctx, subscriptions(next)); err != nil {
		return err
	}
	var restart []string
	for name, pair := range map[string][2]any{
		"source": {e.cfg.Source, next.Source}, "journal": {e.cfg.Journal, next.Journal}, "delivery": {e.cfg.Delivery, next.Delivery},
		"admin": {e.cfg.Admin, next.Admin}, "notify": {e.cfg.Notify, next.Notify}, "mapping": {e.cfg.Mapping, next.Mapping},
		"outbox": {e.cfg.Outbox, next.Outbox}, "sla": {e.cfg.SLA, next.SLA}, "log": {e.cfg.Log, next.Log},
		"custom_events": {e.cfg.CustomEvents, next.CustomEvents},
	} {
		if !reflect.DeepEqual(pair[0], pair[1]) {
			restart = append(restart, name)
		}
	}
	slices.Sort(restart)
	// e.cfg stays the configuration the process started with (other
	// goroutines read it without a lock): the sections compared above are
	// the ones still running, so a change stays reported until a restart.
	if len(restart) > 0 {
		e.log.Warn("configuration reloaded: subscriptions applied; these sections changed and take effect at the next restart", "sections", strings.Join(restart, ", "))
	} else {
		e.log.Info("configuration reloaded", "subscriptions", len(next.Subscriptions))
	}
	return nil
}

// Metrics returns the engine's metrics.
func (e *Engine) Metrics() *metrics.Metrics { return e.metrics }

// Dispatcher returns the dispatcher.
func (e *Engine) Dispatcher() *fanout.Dispatcher { return e.dispatcher }

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
	if e.mapper.IsSLA(c) {
		return e.armSLA(ctx, c)
	}
	events, rej := e.mapper.Map(ctx, c, e.scratch[:0])
	e.scratch = events[:0]
	if rej != nil {
		e.metrics.Rejected()
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

// Transient reports whether a start-up error may go away by itself: the
// database is not reachable yet or is starting up (a sidecar often starts
// before its PostgreSQL). Bad credentials, a missing table or a wrong
// setting are not.
func Transient(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "57P03" || pgErr.Code == "53300" // cannot_connect_now, too_many_connections
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	var connErr *pgconn.ConnectError
	return errors.As(err, &connErr) && (errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "starting up"))
}
