// Package engine assembles dzhook's data flow from a configuration and
// runs it: replication stream (cdc) → pipeline (mapping, checkpoints) →
// fanout, with the journal beside them, the SLA clock, retention and the
// admin server. It only wires: each part's logic lives in its own
// package. It is what `dzhook run` runs, and what end-to-end tests start
// in-process.
package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/dzdesk/dzhook/internal/admin"
	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/internal/metrics"
	"github.com/dzdesk/dzhook/internal/pipeline"
	"github.com/dzdesk/dzhook/internal/slaclock"
	"github.com/dzdesk/dzhook/internal/telemetry"
)

// Options tune an Engine beyond its configuration.
type Options struct {
	Logger  *slog.Logger
	Version string
	// Dashboard is served by the admin server at /.
	Dashboard fs.FS
	// ConfigFile is the configuration's path, named when the API refuses
	// to change a subscription defined there.
	ConfigFile string
	// PollInterval, Heartbeat, StatusInterval and RetentionInterval
	// shorten the engine's clocks in tests; zero keeps the defaults.
	PollInterval      time.Duration
	Heartbeat         time.Duration
	StatusInterval    time.Duration
	RetentionInterval time.Duration
	// SchemaInterval is how often the mapped tables are checked for
	// being dropped or out of the publication. Defaults to
	// DefaultSchemaInterval.
	SchemaInterval time.Duration
	// TracerProvider replaces the tracing the configuration asks for
	// (telemetry): tests give the SDK's with an in-memory exporter.
	TracerProvider trace.TracerProvider
}

// Engine is one running dzhook.
type Engine struct {
	cfg      *config.Config
	log      *slog.Logger
	instance string
	source   *pgxpool.Pool
	journal  *journal.Store
	stream   *cdc.Stream
	pipeline *pipeline.Pipeline
	writer   *journal.Writer
	// readyWarned (unix ns) and readyFailed: readyWarn's last line and
	// the probes since.
	readyWarned, readyFailed atomic.Int64
	// fenced receives the writer's OnFenced, once: the run ends with it.
	fenced     chan error
	dispatcher *fanout.Dispatcher
	clock      *slaclock.Clock
	retention  journal.Retention
	metrics    *metrics.Metrics
	admin      *admin.Server
	adminLn    net.Listener
	schema     *schemaWatch // schema.go
	// restoreMarked: refusedServer recorded a restore in the journal.
	restoreMarked atomic.Bool
	// customSamples is each custom event's test data (custom_events
	// changes at a restart only).
	customSamples map[string]config.TestSample
	systemID      string
	runtime       *runtime // runtime.go
	tracing       *telemetry.Tracing
	opts          Options
	// lastGap is the gap last logged, so a retrying stream logs it once.
	lastGap atomic.Pointer[GapError]
}

// newSourcePool opens the source database's pool. Its sessions read
// times in UTC, as the stream's session does (cdc pins TimeZone=UTC): the
// SLA clock's recheck casts a completed_at of type timestamp (without
// time zone) to timestamptz, which in the server's TimeZone (Asia/Tokyo,
// say) read the completion hours off the stream's reading of it, and
// fired or cancelled a breach against the wrong moment.
func newSourcePool(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.RuntimeParams["TimeZone"] = "UTC"
	return pgxpool.NewWithConfig(ctx, cfg)
}

// New connects, prepares the database (setup, or a check when
// source.auto_setup is false) and assembles the engine. Every error here
// is one the operator must fix, unless Transient says it may pass.
func New(ctx context.Context, cfg *config.Config, opts Options) (*Engine, error) {
	log := cmp.Or(opts.Logger, slog.Default())
	source, err := newSourcePool(ctx, cfg.Source.DSN.Reveal())
	if err != nil {
		return nil, fmt.Errorf("connect to source (source.dsn): %w", cdc.RedactDSNError(err))
	}
	e := &Engine{cfg: cfg, log: log, source: source, instance: newInstanceID(), opts: opts, fenced: make(chan error, 1)}
	ok := false
	defer func() {
		if !ok {
			e.close(ctx)
		}
	}()
	if e.journal, err = journal.Open(ctx, cfg.JournalDSN().Reveal(), cfg.Journal.Schema); err != nil {
		return nil, err
	}
	// What `dzhook setup` does (in check-only mode unless auto_setup), on
	// the connections the engine keeps: the source pool's, the journal
	// pool's, and the replication connection IDENTIFY_SYSTEM needs, which
	// the stream's first session then uses. Each is a PostgreSQL
	// backend's start, so they are opened side by side; their errors,
	// and the mapping's, come in `dzhook setup`'s order.
	c := e.connect(ctx)
	repl := c.repl
	defer func() {
		if repl != nil { // New failed: the stream never runs
			_ = repl.Close(context.WithoutCancel(ctx))
		}
	}()
	err = c.srcErr
	var checkedAt pglogrepl.LSN // where the mapping was checked: see useRecordedMappings
	if err == nil {
		// A standby (source.dsn's name or address not yet moved after a
		// failover) is waited for, as a server not yet up is (Transient):
		// it failed the start at once, on the WAL position below.
		err = primaryOnly(ctx, c.pc.Conn(), cfg.Source.Slot)
	}
	if err == nil {
		err = cfg.Mapping.Check(ctx, c.pc.Conn())
	}
	if err == nil {
		checkedAt, err = walPosition(ctx, c.pc.Conn())
	}
	if err == nil {
		err = cmp.Or(c.jrnErr, c.replErr)
	}
	if err == nil {
		identify := func() (pglogrepl.IdentifySystemResult, error) {
			return identifyOn(ctx, cfg.Source.DSN.Reveal(), cfg.Source.Slot, &repl)
		}
		_, err = setupOn(ctx, cfg, SetupOptions{CheckOnly: !cfg.Source.AutoSetup}, c.pc.Conn(), nil, e.journal, identify)
	}
	if c.pc != nil {
		c.pc.Release()
	}
	if err != nil {
		return nil, err
	}
	// The checkpoint first, the WAL's end after (see UseCheckpoint).
	cp, err := e.journal.Checkpoint(ctx, cfg.Source.Slot)
	if err != nil {
		return nil, err
	}
	sys, err := identifyOn(ctx, cfg.Source.DSN.Reveal(), cfg.Source.Slot, &repl)
	if err != nil {
		return nil, err
	}
	e.systemID = sys.SystemID
	// A server on another timeline than the checkpoint's (a failover, a
	// restore) must carry on the WAL up to it: its transactions below
	// the checkpoint would be skipped as journaled.
	fork, err := cdc.CheckResume(ctx, repl, cfg.Source.Slot, sys, resumeOf(cp))
	for try := 1; err != nil; try++ {
		again := false
		if cp, again, err = rewindToFork(ctx, e.journal, cfg.Source.Slot, cp, sys, err, log); !again || try == 3 {
			break
		}
		// Another process moved the checkpoint meanwhile (its own start
		// after the same failover): judge it as it is now.
		if cp, err = e.journal.Checkpoint(ctx, cfg.Source.Slot); err != nil {
			return nil, err
		}
		fork, err = cdc.CheckResume(ctx, repl, cfg.Source.Slot, sys, resumeOf(cp))
	}
	if err != nil {
		return nil, err
	}
	if fork != 0 {
		// The stream's first session records the fork in the journal
		// before it streams (Forked), judging the server by the
		// journal's checkpoint as this start did.
		log.Info("the server is on a new timeline that carries on the one the journal's checkpoint was read on", "slot", cfg.Source.Slot,
			"timeline", sys.Timeline, "was", cp.Timeline, "switched_at", fork.String(), "checkpoint", cp.LSN.String())
	}
	cat, err := cfg.Catalog()
	if err != nil {
		return nil, err
	}
	schemaSet, err := cfg.Schemas()
	if err != nil {
		return nil, err
	}
	e.customSamples = cfg.TestSamples(schemaSet)
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
	mapper := mapping.NewMapper(mapping.MapperConfig{
		Mapping: cfg.Mapping, Source: ids.NewSource(sys.SystemID), Catalog: cat, OutboxTable: outbox,
		MessagePrefix: cfg.Outbox.MessagePrefix, Users: users, Schemas: schemaSet, Logger: log,
	})
	e.metrics = metrics.New(metrics.Sources{
		Stream:        e.streamStats,
		Subscriptions: func() []fanout.SubscriptionStatus { return e.dispatcher.Subscriptions() },
		Backlogs:      e.journal.Backlogs,
		Heartbeat: func() (time.Time, int) {
			return e.dispatcher.LastHeartbeat(), e.dispatcher.Peers()
		},
		JournalFailingSince: e.writerFailingSince,
		Logger:              log,
	})
	e.schema = newSchemaWatch(e, cfg, opts.SchemaInterval, slaSource)
	if outbox != "" {
		ok, err := mapping.TableExists(ctx, source, outbox)
		if err != nil {
			return nil, err
		}
		if ok {
			e.schema.outbox = outbox
		} else {
			log.Info("outbox table does not exist: outbox events are off until it is created and `dzhook setup` runs (or set outbox.table: \"\")", "table", outbox)
		}
	}
	// e.stream is set below, before anything can be acknowledged.
	ack := func(lsn pglogrepl.LSN) { e.stream.Ack(lsn) }
	// The journal writer owns the acknowledgement contract: it moves the
	// slot only past transactions whose deliveries are all durable.
	e.writer, err = journal.NewWriter(journal.WriterConfig{
		Store: e.journal, Slot: cfg.Source.Slot, SystemID: sys.SystemID, Owner: e.instance, Logger: log, Ack: ack,
		Timeline: func() int32 { return e.stream.Timeline() },
		OnFenced: func(err error) {
			e.stream.Abandon() // nothing more is acknowledged: a stop waits for nothing
			e.fenced <- fmt.Errorf("journal writer: %w", err)
		},
		OnSpill:  func() { e.dispatcher.Spilled() },
		OnNotify: func() { e.dispatcher.Notifier().Wake() },
		OnFlush:  e.metrics.JournalFlushed,
		// Nothing can be acknowledged while the journal cannot be
		// written: end the replication session rather than keep the
		// walsender waiting (a PostgreSQL shutting down waits for it).
		OnWriteError: func(err error) {
			// A transaction rolled back by PostgreSQL (deadlock,
			// serialization) is retried at once and says nothing about
			// the journal's reachability: the session goes on.
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "40") {
				return
			}
			e.stream.Interrupt(&journalDownError{err})
		},
	})
	if err != nil {
		return nil, err
	}
	subs, err := e.startRuntime(ctx)
	if err != nil {
		return nil, err
	}
	roots, err := rootCAs(cfg.Delivery)
	if err != nil {
		return nil, err
	}
	tp := opts.TracerProvider
	if tp == nil {
		if e.tracing, err = telemetry.New(ctx, telemetry.Config{Endpoint: cfg.Telemetry.OTLPEndpoint, Version: opts.Version, Logger: log}); err != nil {
			return nil, err
		}
		tp = e.tracing.Provider()
	}
	if tp != nil {
		log.Info("tracing on: spans of events and attempts are exported over OTLP")
	}
	e.dispatcher, err = fanout.New(fanout.Config{
		Subscriptions: subs, Journal: e.journal, Replays: e.journal, Records: e.writer, Instance: e.instance,
		Notify:   fanout.NotifyConfig{URL: cfg.Notify.URL.Reveal(), Secret: []byte(cfg.Notify.Secret.Reveal())},
		Observer: e.metrics,
		Egress:   egressGuard(cfg.Delivery),
		Timeout:  cfg.Delivery.Timeout, RetrySchedule: cfg.Delivery.RetrySchedule, ResponseBodyLimit: bodyLimit(cfg.Delivery.ResponseBodyLimit),
		Concurrency: cfg.Delivery.Concurrency, QueueSize: cfg.Delivery.QueueSize, ShareFirstAttempts: cfg.Delivery.ShareFirstAttempts, UserAgent: "dzhook/" + opts.Version,
		PollInterval: opts.PollInterval, Heartbeat: cmp.Or(opts.Heartbeat, cfg.Journal.Heartbeat), Logger: log,
		RootCAs: roots, Proxy: cfg.Delivery.Proxy.Reveal(), TracerProvider: tp,
	})
	if err != nil {
		return nil, err
	}
	e.pipeline, err = pipeline.New(pipeline.Config{
		Slot: cfg.Source.Slot, SystemID: sys.SystemID, Mapper: mapper, Router: e.dispatcher,
		Journal: e.writer, Checkpoints: e.journal, Ack: ack,
		WarningPercent: cfg.SLA.WarningPercent, ArmHorizon: cfg.Journal.Retention, Observer: e.metrics, Stalls: e.schema, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	if err := e.pipeline.UseCheckpoint(ctx, cp, sys.XLogPos); err != nil {
		return nil, err
	}
	if err := e.useRecordedMappings(ctx, cfg, mapper, users, checkedAt); err != nil {
		return nil, err
	}
	e.clock, err = slaclock.New(slaclock.Config{
		Store: e.journal, Source: e.schema, Events: e.schema, Dispatcher: e.dispatcher, Slot: cfg.Source.Slot, SystemID: e.systemID,
		WarningPercent: cfg.SLA.WarningPercent, SLATypes: cfg.Mapping.SLAs.Values.SLAType, CheckInterval: cfg.SLA.CheckInterval, ArmHorizon: cfg.Journal.Retention, Logger: log,
		Streaming: func() bool { st := e.stream.Stats(); return st.Connected && !st.Standby },
	})
	if err != nil {
		return nil, err
	}
	e.retention = journal.Retention{Store: e.journal, MaxAge: cfg.Journal.Retention, Interval: opts.RetentionInterval, Logger: log}
	// Pause and health as journaled, before the admin API can be asked.
	if err := e.dispatcher.LoadState(ctx); err != nil {
		return nil, err
	}
	e.stream, err = cdc.New(cdc.Config{
		DSN: cfg.Source.DSN.Reveal(), Slot: cfg.Source.Slot, Publication: cfg.Source.Publication,
		Handler: e.pipeline, Logger: log, Pool: source, Conn: repl, StatusInterval: opts.StatusInterval,
		OnSession: e.sessionStarted, CheckStart: e.checkStart, PersistIdle: e.persistIdle,
		// Every session's server must carry on what the journal holds,
		// the first one's included.
		Resume: cdc.Resume{SystemID: sys.SystemID, Timeline: sys.Timeline, LSN: e.pipeline.Checkpoint()},
		// And what another process checkpointed since (a standby taking
		// the slot over adopts it).
		Journaled: e.journaled,
		// A restore from a snapshot seen while running is remembered for
		// the start that follows.
		OnRefused: e.refusedServer,
		Forked:    e.forked,
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
			Deliverer: e.dispatcher, History: e.journal, Catalog: cat, Sample: e.sample, Replays: e.dispatcher, Retention: cfg.Journal.Retention,
			Ready: e.Ready, Registry: e.metrics.Registry, Dashboard: opts.Dashboard, Logger: log, Schemas: schemaSet,
			Manager: e.Manager(),
		})
	}
	ok, repl = true, nil // repl is the stream's now
	return e, nil
}

// started is what connect opened, and what it could not.
type started struct {
	pc                      *pgxpool.Conn  // the source pool's, acquired
	repl                    *pgconn.PgConn // a replication connection
	srcErr, jrnErr, replErr error
}

// connect opens, side by side, a connection of the source pool, one of
// the journal pool (left idle in it) and a replication connection to the
// source.
func (e *Engine) connect(ctx context.Context) started {
	var c started
	var wg sync.WaitGroup
	wg.Go(func() {
		if c.pc, c.srcErr = e.source.Acquire(ctx); c.srcErr != nil {
			c.srcErr = fmt.Errorf("connect to source (source.dsn): %w", cdc.RedactDSNError(c.srcErr))
		}
	})
	wg.Go(func() {
		conn, err := e.journal.Pool().Acquire(ctx)
		if err != nil {
			c.jrnErr = fmt.Errorf("connect to journal (journal.dsn, or source.dsn when it is empty): %w", err)
			return
		}
		conn.Release()
	})
	wg.Go(func() {
		if c.repl, c.replErr = cdc.ConnectReplication(ctx, e.cfg.Source.DSN.Reveal()); c.replErr != nil {
			c.replErr = fmt.Errorf("source (source.dsn): %w", c.replErr)
		}
	})
	wg.Wait()
	return c
}

// identifyOn runs IDENTIFY_SYSTEM on *repl, after asking whether it
// reaches a standby (a *cdc.StandbyError, as the stream's sessions do:
// the pool's connection, asked first, may reach another server than
// this one, whose WAL end judges the checkpoint). A connection the server
// has closed meanwhile (idle_session_timeout; auto_setup's slot creation
// waits for running transactions) is replaced, once.
func identifyOn(ctx context.Context, dsn, slot string, repl **pgconn.PgConn) (pglogrepl.IdentifySystemResult, error) {
	sys, err := identifyPrimary(ctx, *repl, slot)
	if err == nil || !(*repl).IsClosed() || ctx.Err() != nil {
		return sys, err
	}
	conn, cerr := cdc.ConnectReplication(ctx, dsn)
	if cerr != nil {
		return sys, fmt.Errorf("source (source.dsn): %w", cerr)
	}
	*repl = conn
	return identifyPrimary(ctx, conn, slot)
}

func identifyPrimary(ctx context.Context, conn *pgconn.PgConn, slot string) (pglogrepl.IdentifySystemResult, error) {
	if err := cdc.InRecovery(ctx, conn, slot); err != nil {
		return pglogrepl.IdentifySystemResult{}, err
	}
	return identifySystem(ctx, conn)
}

// Run streams and delivers until ctx ends or a component fails, and
// returns the first failure (nil on cancellation). On cancellation the
// stream stops reading, attempts in flight finish, the journal receives
// everything queued, the SLA clock and retention stop between two steps,
// and the connections close.
//
// The journal writer runs outside the errgroup and stops last: the
// stream's handler and the deliverers put records to it until they have
// returned, and the stream keeps the slot until what they journaled is
// acknowledged.
func (e *Engine) Run(ctx context.Context) error {
	defer e.close(ctx)
	e.log.Info("dzhook running", "instance", e.instance, "slot", e.cfg.Source.Slot, "subscriptions", len(e.cfg.Subscriptions), "checkpoint", e.pipeline.Checkpoint().String())
	wctx, stopWriter := context.WithCancel(context.WithoutCancel(ctx))
	writerDone := make(chan error, 1)
	go func() { writerDone <- e.writer.Run(wctx) }()
	defer func() {
		stopWriter()
		<-writerDone
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		// The journal refused what the stream read (a process still on
		// the old primary past a failover's fork another's start moved
		// the checkpoint back to): the run ends; the writer, stopped
		// last, writes what else it was given.
		select {
		case err := <-e.fenced:
			return err
		case <-gctx.Done():
			return nil
		}
	})
	if e.admin != nil {
		g.Go(func() error { return e.admin.Serve(gctx, e.adminLn) })
	}
	g.Go(func() error { return e.dispatcher.Run(gctx) })
	g.Go(func() error { return e.dispatcher.Notifier().Run(gctx) })
	g.Go(func() error { return e.clock.Run(gctx) })
	g.Go(func() error { return e.retention.Run(gctx) })
	g.Go(func() error { return e.pollRuntime(gctx) })
	g.Go(func() error { return e.schema.Run(gctx) })
	g.Go(func() error {
		if err := e.stream.Run(gctx); err != nil {
			return fmt.Errorf("replication stream: %w", err)
		}
		return nil
	})
	return g.Wait()
}

// rewindToFork handles a start refused by cdc.CheckResume (refused): a
// server whose timeline left the checkpoint's below it. The checkpoint
// follows the stream's idle positions too, so after a failover to a
// standby even slightly behind it is above the fork with nothing
// journaled past it; the new timeline's transactions from the fork on
// are then simply the ones to read, and the checkpoint moves back to the
// fork (said at WARN). With events journaled past the fork (delivered
// from the old server, which the new one lacks), the refusal stands: the
// new server's transactions reuse their positions, and so their ids.
// again says that the checkpoint changed while it was judged (another
// process's start after the same failover moved it, or journaled past
// it since): judge it again.
func rewindToFork(ctx context.Context, store *journal.Store, slot string, cp journal.Checkpoint, sys pglogrepl.IdentifySystemResult, refused error, log *slog.Logger) (_ journal.Checkpoint, again bool, _ error) {
	var changed *cdc.ServerChangedError
	if !errors.As(refused, &changed) || changed.Fork == 0 || changed.SystemID != cp.SystemID || changed.PrevSystemID != cp.SystemID {
		return cp, false, refused
	}
	did, err := store.RewindCheckpoint(ctx, slot, cp, ids.NewSource(sys.SystemID), changed.Fork, sys.Timeline)
	switch {
	case err != nil:
		return cp, false, err
	case did == journal.RewindChanged:
		return cp, true, refused
	case did == journal.RewindPast:
		return cp, false, refused
	}
	log.Warn("the server's timeline left the one the journal's checkpoint was read on below it (a failover to a standby that was behind); nothing was journaled past the fork, so the checkpoint moves back to it and the new server's transactions from there on are read",
		"slot", slot, "timeline", sys.Timeline, "was", cp.Timeline, "switched_at", changed.Fork.String(), "checkpoint", cp.LSN.String())
	return journal.Checkpoint{LSN: max(changed.Fork, 1) - 1, SystemID: cp.SystemID, End: changed.Fork, Timeline: sys.Timeline}, false, nil
}

// resumeOf is the stream's view of a journal checkpoint.
func resumeOf(cp journal.Checkpoint) cdc.Resume {
	return cdc.Resume{SystemID: cp.SystemID, Timeline: cp.Timeline, LSN: cp.LSN, End: cp.End}
}

// errForkPassed: the journal's checkpoint was past a new timeline's fork
// on the old one when the fork was to be recorded (RecordFork).
var errForkPassed = errors.New("the journal's checkpoint is past that point on the old timeline (another dzhook journaled there, from the old primary), so the server is judged again")

// forked is the stream's Forked: the fork of a new timeline accepted
// without a rewind goes into the journal (RecordFork).
func (e *Engine) forked(ctx context.Context, timeline int32, fork pglogrepl.LSN) error {
	recorded, err := e.journal.RecordFork(ctx, e.cfg.Source.Slot, e.systemID, timeline, fork)
	if err != nil {
		return &journalDownError{err}
	}
	if !recorded {
		return errForkPassed
	}
	return nil
}

// refusedServer is the stream's OnRefused. A server of the journal's
// cluster and timeline whose WAL ends before what was read is a restore
// from a snapshot: its WAL end goes into the checkpoint (MarkRestored),
// and the start that follows drops the checkpoint, as it does a
// checkpoint past the WAL, even once the restored WAL has passed it
// (trusted then, the restored server's transactions below it were
// skipped as journaled; found by a review). Once per process.
func (e *Engine) refusedServer(ctx context.Context, r *cdc.ServerChangedError) {
	if e.restoreMarked.Load() || r.SystemID != r.PrevSystemID || r.Timeline != r.PrevTimeline || r.WALEnd >= r.Read {
		return
	}
	marked, err := e.journal.MarkRestored(ctx, e.cfg.Source.Slot, r.SystemID, r.Timeline, r.WALEnd)
	if err != nil {
		e.log.Warn("could not record the restore in the journal; tried again with the stream", "err", err)
		return
	}
	if !marked {
		return // no checkpoint yet: tried again with the stream, for one a write makes
	}
	e.restoreMarked.Store(true)
	e.log.Warn("recorded in the journal's checkpoint that the server was restored below it: the next start drops the checkpoint and processes every transaction the slot sends",
		"slot", e.cfg.Source.Slot, "wal_end", r.WALEnd.String(), "read_lsn", r.Read.String())
}

// journaled is the stream's Journaled: the journal's checkpoint of the
// slot.
func (e *Engine) journaled(ctx context.Context) (cdc.Resume, error) {
	cp, err := e.journal.Checkpoint(ctx, e.cfg.Source.Slot)
	if err != nil {
		return cdc.Resume{}, &journalDownError{err}
	}
	return resumeOf(cp), nil
}

// sessionStarted runs in the stream's order before the first change of
// each replication session: the pipeline re-reads its checkpoint, and
// fanout what waits in the journal for the ordered keys (another process
// may have streamed meanwhile).
func (e *Engine) sessionStarted(ctx context.Context) {
	e.pipeline.SessionStarted(ctx)
	if err := e.dispatcher.SyncOrder(ctx); err != nil {
		e.log.Warn("could not read the ordered keys' backlog; ordered deliveries go through the journal until it is read", "err", err)
	}
}

// Close releases what New opened (the pools, the replication
// connection the stream's first session would take, the admin
// listener) for an engine whose Run is never called: ctx ended between
// the two. Run releases the same when it returns; Close is not for an
// engine that ran.
func (e *Engine) Close(ctx context.Context) {
	e.stream.Release()
	e.close(ctx)
}

// close releases what the engine holds; the spans not yet exported are
// sent first, within 5 s.
func (e *Engine) close(ctx context.Context) {
	if e.tracing != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if err := e.tracing.Shutdown(sctx); err != nil {
			e.log.Warn("tracing: spans not exported at shutdown", "err", err)
		}
		cancel()
	}
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
