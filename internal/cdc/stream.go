package cdc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dzdesk/dzhook/internal/backoff"
	"github.com/dzdesk/dzhook/internal/beat"
)

// Handler consumes the stream. The stream calls it one call at a time (from
// the reader's goroutine or the processor's, never both at once), in
// commit order, and waits for each call: a handler that blocks applies
// backpressure all the way to PostgreSQL. Each transaction's changes come
// with HandleChange as they arrive (a large transaction is never held
// whole), then HandleCommit once. Within one Run the handler sees every
// transaction once, even across reconnects; after a restart of the process
// it sees again every transaction it had not acknowledged.
//
// An error returned by either method stops the stream: Run returns it.
type Handler interface {
	HandleChange(ctx context.Context, c *Change) error
	HandleCommit(ctx context.Context, c Commit) error
}

// Defaults of Config.
const (
	DefaultStatusInterval = 10 * time.Second
	DefaultMinBackoff     = 250 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	DefaultLagInterval    = 10 * time.Second
	DefaultDrainTimeout   = 10 * time.Second
)

// Config is the input of New.
type Config struct {
	// DSN of the source database (URL or key=value). The stream adds
	// replication=database for its replication connection.
	DSN string
	// Slot and Publication name the replication slot and publication,
	// which Setup creates.
	Slot, Publication string
	// Handler receives the changes. Required.
	Handler Handler
	// Logger; defaults to slog.Default().
	Logger *slog.Logger
	// StatusInterval is the longest time between two standby status
	// updates. Defaults to 10 s.
	StatusInterval time.Duration
	// MinBackoff and MaxBackoff bound the reconnection delay. Default to
	// 250 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// LagInterval is how often the slot's lag is polled. Defaults to 10 s.
	LagInterval time.Duration
	// Pool serves catalog queries; when nil the stream opens its own.
	Pool *pgxpool.Pool
	// Conn, when set, is an open replication connection (from
	// ConnectReplication) for the first session, which then does not
	// wait for a connection of its own: the engine's start has one for
	// IDENTIFY_SYSTEM. The stream owns it: Run closes it if no session
	// took it (New only once it succeeds).
	Conn *pgconn.PgConn
	// recheck is the longest a receive waits before the reader looks for
	// acknowledgements to report (1 s; tests lengthen it).
	recheck time.Duration
	// idleEvery is idlePersistEvery (tests shorten it).
	idleEvery time.Duration
	// types, when set, replaces the catalog's type lookup (tests make it
	// fail).
	types TypeLoader
	// DrainTimeout bounds how long a stopped stream keeps the slot while
	// the handler acknowledges what it was handed. Defaults to 10 s.
	DrainTimeout time.Duration
	// Resume, when set, is where a process read to before this stream
	// (the journal's checkpoint, judged at start by CheckResume) and the
	// server it was judged on: the first session is judged against it as
	// later ones are against the session before (server.go), and every
	// session's server must carry on the WAL up to Resume.LSN.
	Resume Resume
	// Journaled, when set, is where the journal says the slot was read to
	// (its checkpoint, by whichever process wrote it), asked at each
	// session's start: the session's server must carry it on as it must
	// Resume (CheckResume). A process that takes the slot over after a
	// failover adopts the checkpoint another process wrote (the
	// pipeline's SessionStarted); read past the fork on the old timeline,
	// it would skip the new server's transactions below it. An error ends
	// the session, which is retried.
	Journaled func(ctx context.Context) (Resume, error)
	// OnRefused, when set, is told of a server refused for the rest of
	// the process (a *ServerChangedError kept), at each try: the engine
	// records a restore in the journal for the start that follows.
	OnRefused func(ctx context.Context, e *ServerChangedError)
	// Forked, when set, is told of a server on a new timeline accepted
	// because it carries on everything read (fork: where it left the one
	// read so far), before the session streams from it: the engine
	// records the fork in the journal, which fences a process still on
	// the old timeline past it. An error ends the session, which is
	// retried (judged again).
	Forked func(ctx context.Context, timeline int32, fork pglogrepl.LSN) error
	// OnSession, when set, is called each time a replication session
	// starts, from the processor's goroutine, one call at a time with the
	// Handler's and before any change of that session.
	OnSession func(ctx context.Context)
	// CheckStart, when set, is called before each session streams, with
	// the slot's confirmed_flush_lsn: an error ends the session before it
	// reads anything, and the stream retries later, reporting the error
	// as its Problem (a gap the operator has not accepted).
	CheckStart func(ctx context.Context, slotConfirmed pglogrepl.LSN) error
	// PersistIdle, when set, is how a position the stream was idle at
	// (a keepalive's WAL end with nothing pending) becomes durable before
	// it is reported to PostgreSQL: the stream calls it (one call at a
	// time, unless one is not acknowledged within 10 s: it is taken as
	// lost, and a later position asked for) and reports the position
	// once Ack reaches the position less one. Every transaction
	// committed before the position was handled; one committed at it
	// was not: a keepalive's WAL end is
	// where the next record starts, and that can be the commit record of
	// a transaction open while the stream was idle. So the owner acks
	// lsn-1 (a checkpoint at lsn would skip that transaction when it is
	// streamed again, and Ack(lsn) would report it flushed).
	// Without it the stream reports such positions at once.
	PersistIdle func(lsn pglogrepl.LSN)
}

// Stats is a snapshot of the stream's positions, for metrics and health.
type Stats struct {
	// ReceivedLSN is the end of the last WAL data received, or the WAL
	// end of a keepalive past it.
	ReceivedLSN pglogrepl.LSN
	// StatusUpdates counts the standby status updates sent.
	StatusUpdates uint64
	// FlushedLSN is the position last reported to PostgreSQL as flushed:
	// the end of the last acknowledged transaction (or, when idle, the
	// server's WAL end).
	FlushedLSN pglogrepl.LSN
	// AckedLSN is the highest commit LSN the handler acknowledged.
	AckedLSN pglogrepl.LSN
	// LagBytes is pg_current_wal_lsn() - confirmed_flush_lsn of the slot,
	// polled; -1 until known.
	LagBytes int64
	// RetainedBytes is pg_current_wal_lsn() - restart_lsn of the slot:
	// the WAL PostgreSQL keeps on disk for it (restart_lsn trails
	// confirmed_flush_lsn while a transaction that began earlier is
	// still open, so this is at least LagBytes). Polled with LagBytes;
	// -1 until known.
	RetainedBytes int64
	// Changes counts the changes handed to the handler.
	Changes uint64
	// Transactions counts the commits the handler took.
	Transactions uint64
	// Connected reports whether the replication connection is streaming.
	Connected bool
	// Standby reports that another process holds the slot and this one
	// waits for it.
	Standby bool
	// Reconnects counts the sessions that streamed and ended, to be
	// followed by another (a standby's tries for the slot are not).
	Reconnects uint64
	// Problem says why the stream is not streaming, as /readyz may show
	// it (no host, user or database named); "" while streaming or
	// before the first attempt.
	Problem string
}

// Stream reads the slot and hands committed changes to a Handler.
type Stream struct {
	cfg     Config
	log     *slog.Logger
	pool    *pgxpool.Pool
	ownPool bool
	first   atomic.Pointer[pgconn.PgConn] // Config.Conn until a session takes it

	acked atomic.Uint64 // highest commit LSN acknowledged by the handler
	wake  chan struct{} // nudges the reader to report a new flush position
	// abandoned: nothing more will be acknowledged (Abandon); a stop
	// does not wait for it.
	abandoned atomic.Bool

	mu      sync.Mutex
	pending []txEnd // transactions handed on and not yet acknowledged
	// partialEnd is just past the commit record of the last transaction
	// with a change handed on, committed or not (checkServer).
	// Only the goroutine processing messages writes it (the processor's,
	// or the reader's when busy is 0: inline.go), before busy counts the
	// message down; an atomic, not mu: it moves once per transaction.
	partialEnd atomic.Uint64
	procDone   chan struct{} // closed when the processor has stopped
	flushed    pglogrepl.LSN // last flush position reported
	handedEnd  pglogrepl.LSN // end of the last transaction handed on
	server     server        // the server the last session streamed from (server.go)
	// baseline is where a process read to before this one's sessions,
	// which every session's server must carry on: Config.Resume's
	// position, then the journal's that a session judged by it was
	// accepted on (checkServer).
	baseline pglogrepl.LSN

	// changed is set once a session found a server that does not carry
	// on the WAL read so far: every later session refuses with it.
	changed atomic.Pointer[ServerChangedError]
	// lastRefusal is the last refusal's reason said at ERROR (checkServer).
	lastRefusal atomic.Pointer[string]

	received     atomic.Uint64
	statusSent   atomic.Uint64
	lagBytes     atomic.Int64
	retained     atomic.Int64
	changes      atomic.Uint64
	transactions atomic.Uint64
	connected    atomic.Bool
	// streamed: the current session streamed (Run counts a reconnect
	// only after one that did).
	streamed   atomic.Bool
	standby    atomic.Bool
	reconnects atomic.Uint64

	// busy counts messages received and not yet fully processed; inTx is
	// set between BEGIN and COMMIT. Both let the reader tell when the
	// stream is idle, so a keepalive's WAL end may be acknowledged.
	busy atomic.Int64
	inTx atomic.Bool

	// problem is Stats.Problem; interrupt ends the current session
	// (Interrupt).
	problem   atomic.Pointer[string]
	interrupt chan error

	// idleAsked is the last idle position handed to PersistIdle (under
	// mu), idleAskedAt when (the session goroutine's only). idleEarlier
	// (under mu) is the one before it, when it was taken as lost
	// unacknowledged: a journal slower than the interval acknowledges
	// each position after the next was asked for, and counting the last
	// alone, the stream never reported one.
	idleAsked   pglogrepl.LSN
	idleAskedAt time.Time
	idleEarlier pglogrepl.LSN
	// queued is, per session, the end of the last transaction whose
	// commit the reader queued for the processor (the session goroutine's
	// only; sessions in order, numbered by sessions): a session's server
	// is judged against it too (checkServer), since the processor hands
	// queued transactions over after the session that read them ended,
	// and maybe after the next one's judgment.
	queued   []queuedSpan
	sessions uint64
	// discarded is the last session whose queued messages the processor
	// dropped (a type lookup failed; 0: none): what that session and the
	// ones before it queued is handed over only as far as handedEnd says,
	// and the rest is sent again.
	discarded atomic.Uint64
	// dropThrough is the last session whose messages still queued the
	// processor drops unprocessed (0: none): set by checkServer when a
	// failover's fork is refused because of them alone. Handed over,
	// they were the lost branch's, and the refusal held for good (every
	// start refusing too, its events journaled past the fork); dropped,
	// the new server sends again what it shares below the fork, from the
	// slot's position (found by a review).
	dropThrough atomic.Uint64

	// inlining is the session's inliner while the reader processes a
	// message itself (inline.go), for Interrupt.
	inlining atomic.Pointer[inliner]
	// inlined counts the messages the reader processed itself.
	inlined atomic.Uint64
}

// idlePersistEvery is how often, at most, an idle position is made
// durable unless the server asks for a reply: each costs a journal write,
// and that write is itself WAL the server then reports. A position not
// acknowledged within it is taken as lost (sendStatusIdle).
const idlePersistEvery = 10 * time.Second

// txEnd pairs a transaction's commit LSN with the end of its commit
// record, which is what PostgreSQL must be told is flushed.
type txEnd struct{ commit, end pglogrepl.LSN }

// New checks cfg and returns a stream; Run starts it.
func New(cfg Config) (*Stream, error) {
	if cfg.Handler == nil {
		return nil, errors.New("cdc: Config.Handler is required")
	}
	if cfg.Slot == "" || cfg.Publication == "" {
		return nil, errors.New("cdc: Config.Slot and Config.Publication are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.recheck <= 0 {
		cfg.recheck = time.Second
	}
	if cfg.idleEvery <= 0 {
		cfg.idleEvery = idlePersistEvery
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = DefaultStatusInterval
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.LagInterval <= 0 {
		cfg.LagInterval = DefaultLagInterval
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	s := &Stream{cfg: cfg, log: cfg.Logger.With("component", "cdc", "slot", cfg.Slot), wake: make(chan struct{}, 1), interrupt: make(chan error, 1)}
	s.lagBytes.Store(-1)
	s.retained.Store(-1)
	s.first.Store(cfg.Conn)
	s.server = server{systemID: cfg.Resume.SystemID, timeline: cfg.Resume.Timeline}
	s.baseline = cfg.Resume.readTo()
	return s, nil
}

// Ack tells the stream that every transaction with a commit LSN up to and
// including lsn is durable: its deliveries are finished or journaled. Only
// then may the slot move past it. Safe from any goroutine.
func (s *Stream) Ack(lsn pglogrepl.LSN) {
	for {
		cur := s.acked.Load()
		if uint64(lsn) <= cur {
			return
		}
		if s.acked.CompareAndSwap(cur, uint64(lsn)) {
			break
		}
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Stats returns the stream's positions and counters.
func (s *Stream) Stats() Stats {
	s.mu.Lock()
	flushed := s.flushed
	s.mu.Unlock()
	return Stats{
		ReceivedLSN:   pglogrepl.LSN(s.received.Load()),
		StatusUpdates: s.statusSent.Load(),
		FlushedLSN:    flushed,
		AckedLSN:      pglogrepl.LSN(s.acked.Load()),
		LagBytes:      s.lagBytes.Load(),
		RetainedBytes: s.retained.Load(),
		Changes:       s.changes.Load(),
		Transactions:  s.transactions.Load(),
		Connected:     s.connected.Load(),
		Standby:       s.standby.Load(),
		Reconnects:    s.reconnects.Load(),
		Problem:       s.Problem(),
	}
}

// Release closes the replication connection handed to New
// (Config.Conn) if no session has taken it: for a stream whose Run is
// never called. Run releases it too when it returns.
func (s *Stream) Release() {
	if c := s.first.Swap(nil); c != nil {
		_ = c.Close(context.Background())
	}
}

// Run streams until ctx is cancelled or the handler fails. It connects
// once first, so a wrong DSN or a missing slot is an error at start; after
// that a lost connection or a PostgreSQL restart is retried with capped
// exponential backoff and jitter, resuming from the slot. When another
// process holds the slot, Run waits as a standby and retries. On
// cancellation it reports the last durable position to PostgreSQL and
// returns nil; transactions not yet acknowledged come again on the next
// start.
func (s *Stream) Run(ctx context.Context) error {
	defer s.Release()
	if s.cfg.Pool != nil {
		s.pool = s.cfg.Pool
	} else {
		pool, err := newCatalogPool(ctx, s.cfg.DSN)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		s.pool, s.ownPool = pool, true
		defer pool.Close()
	}
	if err := s.checkSlot(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}

	// Run owns the processor and the lag poller: it stops them and waits
	// for them before it returns, so no handler call outlives Run.
	msgs := make(chan wal, 256)
	var types TypeLoader = &catalogTypes{pool: s.pool}
	if s.cfg.types != nil {
		types = s.cfg.types
	}
	proc := newProcessor(s, newRelations(types))
	procErr := make(chan error, 1)
	workers, stopWorkers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopWorkers()
		wg.Wait()
	}()
	wg.Add(2)
	s.procDone = make(chan struct{})
	go func() {
		defer wg.Done()
		err := proc.run(workers, msgs)
		close(s.procDone)
		procErr <- err
	}()
	go func() {
		defer wg.Done()
		s.pollLag(workers)
	}()

	bo := backoff.New(s.cfg.MinBackoff, s.cfg.MaxBackoff)
	for attempt := 0; ; attempt++ {
		err := s.session(ctx, msgs, procErr, proc)
		// A session that streamed, ended: the next one is a reconnect. A
		// standby's tries, and those of a session that never streamed,
		// are not (a healthy pair of processes showed a steady reconnect
		// rate, hiding the real ones).
		streamed := s.streamed.Swap(false)
		s.connected.Store(false)
		var fatal *fatalError
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.As(err, &fatal):
			return fatal.err
		case err == nil:
			bo.Reset()
		}
		s.setProblem(err)
		if errors.Is(err, errSlotInUse) {
			if !s.standby.Swap(true) {
				s.log.Warn("standby: another process holds the replication slot; waiting for it, never stealing it")
			}
		} else if err != nil {
			s.log.Warn("replication connection lost; reconnecting", "err", err, "attempt", attempt+1, "delay", bo.Current().String())
		}
		delay := time.NewTimer(bo.Next())
		select {
		case <-ctx.Done():
			delay.Stop()
			return nil
		case err := <-procErr:
			delay.Stop()
			return err
		case <-delay.C:
		}
		if streamed {
			s.reconnects.Add(1)
		}
	}
}

// fatalError ends Run instead of causing a reconnection.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }

// errSlotInUse means another walsender streams from the slot.
var errSlotInUse = errors.New("replication slot is active for another process")

// wal is one XLogData payload (a copy: pgconn reuses its buffer) or a
// session marker.
type wal struct {
	data  []byte
	start pglogrepl.LSN
	// session is set on the marker that starts a new session.
	session bool
	// seq is the session that received it (Stream.sessions).
	seq uint64
}

// queuedSpan is how far one session's queued messages hand over to.
type queuedSpan struct {
	seq uint64
	end pglogrepl.LSN
}

// noteQueued records that w, of the current session, was queued.
func (s *Stream) noteQueued(w *wal) {
	end := queuedTo(w.data)
	if end == 0 {
		return
	}
	if n := len(s.queued); n > 0 && s.queued[n-1].seq == w.seq {
		s.queued[n-1].end = max(s.queued[n-1].end, end)
		return
	}
	s.queued = append(s.queued, queuedSpan{seq: w.seq, end: end})
}

// queuedEnd is how far what the sessions queued hands over to, but for
// the sessions whose queue the processor dropped (discarded), and
// forgets the spans already handed over.
func (s *Stream) queuedEnd(handed pglogrepl.LSN) pglogrepl.LSN {
	if s.busy.Load() == 0 {
		// Every message queued before has been processed: what it handed
		// over is in handed and partialEnd (recorded before busy went
		// down), and what it did not (a Begin whose changes never came)
		// it never will. Kept, a queued Begin alone refused a server
		// that carries on everything handed over, at every try (found
		// by a review).
		s.queued = s.queued[:0]
		return 0
	}
	dropped := s.discarded.Load()
	var end pglogrepl.LSN
	s.queued = slices.DeleteFunc(s.queued, func(q queuedSpan) bool {
		if q.seq <= dropped || q.end <= handed {
			return true
		}
		end = max(end, q.end)
		return false
	})
	return end
}

// session runs one replication connection until it fails or ctx ends.
func (s *Stream) session(ctx context.Context, msgs chan<- wal, procErr <-chan error, proc *processor) error {
	select {
	case <-s.interrupt: // meant for a session that has ended
	default:
	}
	s.sessions++
	conn := s.first.Swap(nil)
	if conn == nil {
		var err error
		if conn, err = s.connectReplication(ctx); err != nil {
			return err
		}
	}
	defer conn.Close(context.Background())

	// Before anything is reported: a server whose WAL is behind what
	// was read (a failover, a restore) must not be told that position.
	if err := s.checkServer(ctx, conn); err != nil {
		return err
	}
	// Never report a flush position below the slot's: start from it.
	confirmed, err := s.slotConfirmed(ctx, conn)
	if err != nil {
		return err
	}
	if s.cfg.CheckStart != nil {
		if err := s.cfg.CheckStart(ctx, confirmed); err != nil {
			return err
		}
	}
	err = pglogrepl.StartReplication(ctx, conn, quoteIdent(s.cfg.Slot), 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{
			"proto_version '1'",
			// A list of identifiers, which pgoutput folds to lower
			// case unless quoted: a publication named DzHook (which
			// setup makes quoted) was looked up as dzhook.
			"publication_names '" + escapeLiteral(quoteIdent(s.cfg.Publication)) + "'",
			"messages 'true'",
		},
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" { // object_in_use
			return errSlotInUse
		}
		if errors.As(err, &pgErr) && (pgErr.Code == "42704" || pgErr.Code == "42P01") {
			return &fatalError{fmt.Errorf("start replication on slot %q: %w (run `dzhook setup`)", s.cfg.Slot, err)}
		}
		return fmt.Errorf("start replication on slot %q: %w", s.cfg.Slot, err)
	}
	// Only once this session holds the slot: a standby's tries copied
	// the slot's position as another process left it, and after a
	// failover it told the new server the old one's (past the new WAL:
	// its next transactions were skipped). A process that has handed
	// nothing over nor asked for an idle position flushed nothing
	// itself: it takes the slot's as it is, lower or not.
	s.mu.Lock()
	if confirmed > s.flushed || max(s.handedEnd, s.idleAsked) == 0 {
		s.flushed = confirmed
	}
	s.mu.Unlock()
	if s.standby.Swap(false) {
		s.log.Info("slot acquired; leaving standby")
	}
	s.connected.Store(true)
	s.streamed.Store(true)
	s.problem.Store(nil)
	s.log.Info("streaming", "publication", s.cfg.Publication, "from_lsn", confirmed.String())
	defer func() {
		if ctx.Err() != nil {
			s.finish(conn)
		}
	}()

	// The session's start marker waits for room as a message does
	// (enqueue): answering the server's keepalives and an Interrupt. A
	// processor blocked with the queue full (a mapping stall during a
	// catch-up) used to hold the new session silent, and its slot active,
	// until the server's wal_sender_timeout ended it, again and again.
	var keep *time.Timer // enqueue's
	s.busy.Add(1)
	if err := s.enqueue(ctx, conn, msgs, wal{session: true, seq: s.sessions}, procErr, &keep); err != nil {
		s.busy.Add(-1)
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	status := time.Now().Add(s.cfg.StatusInterval)
	lastReport := time.Now()
	// Receives wait on the connection's read deadline, armed again each
	// time one passes: at most recheck ahead, so the reader looks for
	// acknowledgements to report, and no later than the next status. They
	// pass context.Background(): pgconn registers a cancellation hook on
	// any other context for every message (a twentieth of the CPU of a
	// catch-up). Cancelling ctx ends a receive through the same deadline,
	// with one hook for the whole session. The session waits for a hook
	// that has started before it returns: finish, deferred before it and
	// so run after it, sets a deadline of its own that the hook must not
	// overwrite (as pgconn's Unwatch waits for its handler).
	nc := conn.Conn()
	hookDone := make(chan struct{})
	stopRecv := context.AfterFunc(ctx, func() {
		_ = nc.SetReadDeadline(aLongTimeAgo)
		close(hookDone)
	})
	defer func() {
		if !stopRecv() {
			<-hookDone
		}
	}()
	armed := false
	report := false // a new durable position waits to be reported (wake)
	defer func() {
		if report { // not reported in this session: the next one does
			select {
			case s.wake <- struct{}{}:
			default:
			}
		}
	}()
	in := newInliner(ctx, s, proc, conn)
	defer in.timer.Stop()
	for {
		// The three are buffered and never closed, so a length says
		// whether one is ready: a select of three cases for every
		// message (three per event at a helpdesk's rates) cost a
		// hundredth of dzhook's CPU at 500 tx/s.
		if len(procErr)+len(s.interrupt)+len(s.wake) > 0 {
			select {
			case err := <-procErr:
				return &fatalError{err}
			case err := <-s.interrupt:
				return err
			case <-s.wake:
				report = true
			default:
			}
		}
		// Report a new durable position promptly, but at most once a
		// second: it only bounds WAL retention.
		if report && time.Since(lastReport) >= time.Second {
			if err := s.sendStatus(conn, false, 0); err != nil {
				return err
			}
			lastReport, report = time.Now(), false
		}
		if !armed {
			now := time.Now()
			if !now.Before(status) {
				if err := s.sendStatus(conn, false, 0); err != nil {
					return err
				}
				lastReport, report = now, false
				status = now.Add(s.cfg.StatusInterval)
			}
			// The recheck falls on the instants of the process's other
			// pollers (beat): an idle stream adds no wake of its own.
			if err := nc.SetReadDeadline(earliest(status, beat.At(s.cfg.recheck))); err != nil {
				return fmt.Errorf("receive: %w", err)
			}
			armed = true
			// After the deadline is set: a cancellation that came before
			// it is seen here, one after it moves the deadline back.
			if ctx.Err() != nil {
				return nil // finish reports the last acknowledgements
			}
		}
		in.receiving()
		raw, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return nil // finish reports the last acknowledgements
			}
			if err := in.ended(); err != nil {
				return err // Interrupt closed the connection as processing ended
			}
			if pgconn.Timeout(err) {
				armed = false
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch msg := raw.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("parse keepalive: %w", err)
				}
				// The keepalive's WAL end is where the server's sending
				// stands (its sentPtr): everything before it was received.
				// Reporting it as written matters: a walsender whose
				// client reports both write and flush behind sentPtr pings
				// again as soon as it has an answer, and an idle stream
				// whose flush waits for PersistIdle would answer each ping
				// at once, a busy loop of both processes.
				if uint64(ka.ServerWALEnd) > s.received.Load() {
					s.received.Store(uint64(ka.ServerWALEnd))
				}
				if ka.ReplyRequested || s.idle() {
					if err := s.sendStatusIdle(conn, ka.ServerWALEnd, ka.ReplyRequested); err != nil {
						return err
					}
					lastReport = time.Now()
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("parse XLogData: %w", err)
				}
				end := xld.WALStart + pglogrepl.LSN(len(xld.WALData))
				if uint64(end) > s.received.Load() {
					s.received.Store(uint64(end))
				}
				w := wal{data: append([]byte(nil), xld.WALData...), start: xld.WALStart, seq: s.sessions}
				in.received(len(w.data))
				if done, err := in.try(ctx, w); done || err != nil {
					if err != nil {
						return err
					}
					if ctx.Err() != nil {
						return nil // finish reports the last acknowledgements
					}
					continue
				}
				s.busy.Add(1)
				if err := s.enqueue(ctx, conn, msgs, w, procErr, &keep); err != nil {
					s.busy.Add(-1)
					return err
				}
				s.noteQueued(&w)
			}
		case *pgproto3.ErrorResponse:
			return streamError(s.cfg.Slot, s.cfg.Publication, pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("server ended the replication stream")
		}
	}
}

// finish runs when the stream is stopped: it keeps the connection, and
// with it the slot, until the handler has acknowledged every transaction
// handed to it (it drains its queues on the same signal) or DrainTimeout
// passes, reporting each new durable position. PostgreSQL then knows
// exactly where this process ended, so a standby taking the slot, or the
// next start, does not receive again what was journaled.
func (s *Stream) finish(conn *pgconn.PgConn) {
	deadline := time.NewTimer(s.cfg.DrainTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
drain:
	for !s.drained() && !s.abandoned.Load() {
		select {
		case <-s.wake:
		case <-tick.C:
		case <-deadline.C:
			s.log.Warn("stopping with transactions not yet acknowledged; they are sent again on the next start", "waited", s.cfg.DrainTimeout.String())
			break drain
		}
		if err := s.sendStatus(conn, false, 0); err != nil {
			return
		}
	}
	if err := s.sendStatus(conn, false, 0); err != nil {
		return
	}
	// End the stream properly: closing at once, with WAL still unread in
	// the socket, makes the kernel reset the connection, and the
	// walsender can die before it reads the last status. After CopyDone
	// the server answers only once it has read everything before it.
	_ = conn.Conn().SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := pglogrepl.SendStandbyCopyDone(context.Background(), conn); err != nil {
		s.log.Debug("ending the replication stream", "err", err)
	}
}

// drained reports whether the processor has stopped and everything it
// handed on is acknowledged.
func (s *Stream) drained() bool {
	select {
	case <-s.procDone:
	default:
		return false
	}
	s.advance()
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending) == 0
}

// queuedTo is where a queued message, once processed, has the stream
// handed over to (0: nowhere yet). pgoutput's Commit carries the end of
// the transaction's commit record after its flags and commit position; a
// non-transactional logical message (processor.standalone) is handed over
// as a transaction of its own, ending at its LSN, after its flags; a
// Begin's changes are handed over before its commit comes, and count up
// to its commit record (its final LSN, first).
func queuedTo(d []byte) pglogrepl.LSN {
	switch {
	case len(d) >= 9 && d[0] == 'B':
		return pglogrepl.LSN(binary.BigEndian.Uint64(d[1:9])) + 1
	case len(d) >= 26 && d[0] == 'C':
		return pglogrepl.LSN(binary.BigEndian.Uint64(d[10:18]))
	case len(d) >= 10 && d[0] == 'M' && d[1]&1 == 0:
		return pglogrepl.LSN(binary.BigEndian.Uint64(d[2:10]))
	}
	return 0
}

// enqueue hands a message to the processor. While the processor is busy
// (the handler applies backpressure) it keeps telling PostgreSQL where the
// stream stands, so the server never times the connection out.
//
// keep is the session's timer for those reports, made at its first wait
// and reset at each one after (nil until then): a ticker made per wait
// was a fiftieth of dzhook's CPU at catch-up, when most messages wait.
func (s *Stream) enqueue(ctx context.Context, conn *pgconn.PgConn, msgs chan<- wal, w wal, procErr <-chan error, keep **time.Timer) error {
	select {
	case msgs <- w:
		return nil
	default:
	}
	every := s.cfg.StatusInterval / 2
	if *keep == nil {
		*keep = time.NewTimer(every)
	} else {
		(*keep).Reset(every)
	}
	tick := *keep
	defer tick.Stop()
	for {
		select {
		case msgs <- w:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case err := <-procErr:
			return &fatalError{err}
		case err := <-s.interrupt:
			return err
		case <-tick.C:
			if err := s.sendStatus(conn, false, 0); err != nil {
				return err
			}
			tick.Reset(every)
		}
	}
}

// idle reports whether every message received has been processed and every
// transaction handed on has been acknowledged.
func (s *Stream) idle() bool {
	if s.busy.Load() != 0 || s.inTx.Load() {
		return false
	}
	s.advance()
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending) == 0
}

// advance moves the flush position past every acknowledged transaction.
func (s *Stream) advance() pglogrepl.LSN {
	acked := pglogrepl.LSN(s.acked.Load())
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for n < len(s.pending) && s.pending[n].commit <= acked {
		if s.pending[n].end > s.flushed {
			s.flushed = s.pending[n].end
		}
		n++
	}
	if n > 0 {
		s.pending = append(s.pending[:0], s.pending[n:]...)
	}
	// An idle position, once durable (acknowledged to just before it:
	// Config.PersistIdle), may be reported even if transactions came
	// since: theirs commit at it or past it.
	for _, idle := range [...]pglogrepl.LSN{s.idleEarlier, s.idleAsked} {
		if idle > s.flushed && acked >= idle-1 {
			s.flushed = idle
		}
	}
	return s.flushed
}

// partialRead records that a change of a transaction whose commit record
// starts at end-1 was handed on.
func (s *Stream) partialRead(end pglogrepl.LSN) {
	if uint64(end) > s.partialEnd.Load() {
		s.partialEnd.Store(uint64(end))
	}
}

// handed records a transaction given to the handler, to be acknowledged.
func (s *Stream) handed(t txEnd) {
	s.mu.Lock()
	s.pending = append(s.pending, t)
	s.handedEnd = max(s.handedEnd, t.end)
	s.mu.Unlock()
}

// sendStatus reports write = received, flush = apply = durable, all three
// explicitly (left at 0, pglogrepl would copy write into flush, reporting
// undelivered work as flushed). idleEnd, when non-zero, is a keepalive's WAL
// end that may be acknowledged because nothing is pending.
// sendStatusIdle answers a keepalive whose WAL end is idleEnd: that
// position too is flushed if nothing is pending, at once or, with
// PersistIdle, once it is durable.
func (s *Stream) sendStatusIdle(conn *pgconn.PgConn, idleEnd pglogrepl.LSN, replyRequested bool) error {
	if s.cfg.PersistIdle == nil {
		return s.sendStatus(conn, false, idleEnd)
	}
	s.mu.Lock()
	asked := s.idleAsked
	s.mu.Unlock()
	// A position asked for and not acknowledged within an interval is
	// taken as lost, and asked for again (or a later one): the owner may
	// drop one it could not make durable (the engine's write timed out),
	// and waiting for it stopped the slot for as long as the stream stayed
	// idle, the cluster's WAL piling up behind it (found by a review). A
	// late acknowledgement of the lost one is harmless: the journal keeps
	// the highest idle position.
	waited := time.Since(s.idleAskedAt) >= s.cfg.idleEvery
	unacked := asked > 0 && uint64(asked-1) > s.acked.Load()
	lost := unacked && waited
	inFlight := unacked && !waited
	due := replyRequested || waited
	if (idleEnd > asked || lost && idleEnd == asked) && !inFlight && due && s.idle() && idleEnd > s.advance() {
		s.mu.Lock()
		if lost {
			// Slow, not lost, it still counts when it comes (advance).
			s.idleEarlier = asked
		}
		s.idleAsked = idleEnd
		s.mu.Unlock()
		s.idleAskedAt = time.Now()
		s.cfg.PersistIdle(idleEnd)
	}
	return s.sendStatus(conn, false, 0)
}

func (s *Stream) sendStatus(conn *pgconn.PgConn, reply bool, idleEnd pglogrepl.LSN) error {
	flush := s.advance()
	if idleEnd > flush && s.idle() {
		s.mu.Lock()
		if idleEnd > s.flushed {
			s.flushed = idleEnd
		}
		flush = s.flushed
		s.mu.Unlock()
	}
	if flush == 0 {
		return nil // nothing known yet; a zero would be read as "write"
	}
	write := max(pglogrepl.LSN(s.received.Load()), flush)
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: write,
		WALFlushPosition: flush,
		WALApplyPosition: flush,
		ClientTime:       time.Now(),
		ReplyRequested:   reply,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.statusSent.Add(1)
	return nil
}

func escapeLiteral(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// aLongTimeAgo is a deadline in the past: it ends a blocked receive.
var aLongTimeAgo = time.Unix(1, 0)

// Interrupt ends the current replication session, if one is streaming,
// with err; the stream connects again after its backoff. The engine calls
// it when the journal cannot be written: nothing more can be
// acknowledged, and a PostgreSQL shutting down waits for its walsenders'
// clients to confirm the end of the WAL, which dzhook then never would.
func (s *Stream) Interrupt(err error) {
	if !s.connected.Load() {
		return
	}
	select {
	case s.interrupt <- err:
	default:
	}
	// The reader may be processing a message itself (inline.go): it
	// looks at the channel only once the handler returns, which, the
	// journal being down, may be long.
	if in := s.inlining.Load(); in != nil {
		in.interrupt(err)
	}
}

// Abandon says that nothing handed on will be acknowledged any more (the
// journal's writer stopped for good): a stop then ends the session at
// once instead of waiting DrainTimeout for acknowledgements.
func (s *Stream) Abandon() {
	s.abandoned.Store(true)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Problem says why the stream is not streaming; "" when it is.
func (s *Stream) Problem() string {
	if p := s.problem.Load(); p != nil && !s.connected.Load() {
		return *p
	}
	return ""
}

func (s *Stream) setProblem(err error) {
	if err == nil {
		return
	}
	p := Reason(err)
	s.problem.Store(&p)
}

// PublicReason is implemented by errors whose text may be shown without
// a token (/readyz): it names no host, user or database.
type PublicReason interface{ PublicReason() string }

// PublicReason implements PublicReason: the slot's name is configuration,
// not a credential.
func (e *SlotMissingError) PublicReason() string { return e.Error() }

// Reason describes err for /readyz, which answers without a token: it
// names no host, user or database (the log has the detail), only what
// kind of failure keeps the stream from streaming.
func Reason(err error) string {
	var pub PublicReason
	if errors.As(err, &pub) {
		return pub.PublicReason()
	}
	if errors.Is(err, errSlotInUse) {
		return "standby: another dzhook holds the replication slot"
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "42501":
			return "PostgreSQL refused replication: permission denied (SQLSTATE 42501); the role needs the REPLICATION attribute (ALTER ROLE … REPLICATION; on RDS GRANT rds_replication)"
		case strings.HasPrefix(pgErr.Code, "28"):
			return "PostgreSQL refused the login (SQLSTATE " + pgErr.Code + "): check source.dsn's user and password, and pg_hba.conf"
		case pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03":
			return "PostgreSQL is shutting down or starting up (SQLSTATE " + pgErr.Code + "); reconnecting"
		case pgErr.Code == "53300":
			return "PostgreSQL has no connection free (SQLSTATE 53300); reconnecting"
		case pgErr.Code == "3D000":
			return "the source database does not exist (SQLSTATE 3D000)"
		}
		return "PostgreSQL error (SQLSTATE " + pgErr.Code + "); reconnecting (the log has the detail)"
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return "PostgreSQL unreachable; reconnecting (the log has the detail)"
	}
	return "replication connection lost; reconnecting (the log has the detail)"
}

// streamError is an error the walsender sent while streaming. pgoutput
// reads the publication as of each change: on changes committed before
// the publication was made (a slot made first: Patroni's permanent slot
// of an operator's cluster, or one made by hand), it fails with
// "publication … does not exist" at every session, for good, while the
// publication exists now. That one is explained, with the way out.
func streamError(slot, publication string, pe *pgconn.PgError) error {
	if pe.Code == "42704" && strings.Contains(pe.Message, "publication") {
		return &SlotBeforePublicationError{Slot: slot, Publication: publication, err: pe}
	}
	return fmt.Errorf("replication stream: %w", pe)
}

// SlotBeforePublicationError: the slot was made before its publication,
// and a change from between cannot be decoded.
type SlotBeforePublicationError struct {
	Slot, Publication string
	err               *pgconn.PgError
}

func (e *SlotBeforePublicationError) Error() string {
	return "replication stream: " + e.err.Error() + ": " + e.PublicReason()
}

// PublicReason implements PublicReason: it names the slot and the
// publication, configuration.
func (e *SlotBeforePublicationError) PublicReason() string {
	return fmt.Sprintf("the publication %[2]q is missing as of a change the slot %[1]q holds: if it was dropped, `dzhook setup` makes it again; "+
		"if it exists, the slot is older than it, and its changes from before the publication cannot be read with it: "+
		"drop the slot (SELECT pg_drop_replication_slot('%[3]s')) and make it again with `dzhook setup --accept-gap` (the changes in between are not delivered); "+
		"an operator's permanent slot (Patroni's patroni.slots) must be added after the publication is made",
		e.Slot, e.Publication, escapeLiteral(e.Slot))
}

func (e *SlotBeforePublicationError) Unwrap() error { return e.err }
