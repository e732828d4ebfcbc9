package journal

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dzdesk/dzhook/internal/rawsock"
)

//go:embed migrations/*.sql
var migrations embed.FS

// DefaultSchema holds the journal's tables.
const DefaultSchema = "dzhook"

// Store is the journal.
type Store struct {
	pool   *pgxpool.Pool
	schema string // quoted identifier
	raw    string // schema name as configured
}

// Open connects to the journal database. The pool is the Store's; Close
// releases it.
func Open(ctx context.Context, dsn, schema string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("journal DSN (journal.dsn, or source.dsn when it is empty): invalid connection string (not shown: it may hold a password)")
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "dzhook-journal"
	cfg.ConnConfig.RuntimeParams["TimeZone"] = "UTC"
	// pgx gives a timestamptz in the host's zone (time.Local): read in
	// UTC, the times the API and the dashboard show are RFC 3339 in UTC
	// as internal/api promises, whatever TZ the process runs with.
	cfg.AfterConnect = func(_ context.Context, c *pgx.Conn) error {
		c.TypeMap().RegisterType(&pgtype.Type{Name: "timestamptz", OID: pgtype.TimestamptzOID, Codec: &pgtype.TimestamptzCodec{ScanLocation: time.UTC}})
		return nil
	}
	cfg.MaxConns = 8
	cfg.ConnConfig.DialFunc = rawsock.Dialer(cfg.ConnConfig.DialFunc)
	// A statement whose context ends is cancelled in the server (a
	// cancel request), and its connection kept: pgx's default closes
	// the socket at once (sending the cancel request as it goes), and a
	// listing the API gave up on at its 5 s deadline cost the pool a
	// connection, made again at the next request, while the error said
	// only "deadline exceeded". Cancelled so, the statement fails with
	// PostgreSQL's query_canceled (TookTooLong). The socket's deadline,
	// a second later, ends the wait for a server that does not answer.
	cfg.ConnConfig.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: time.Second}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to journal (journal.dsn, or source.dsn when it is empty): %w", err)
	}
	return New(pool, schema), nil
}

// New returns a Store on an existing pool.
func New(pool *pgxpool.Pool, schema string) *Store {
	if schema == "" {
		schema = DefaultSchema
	}
	return &Store{pool: pool, schema: pgx.Identifier{schema}.Sanitize(), raw: schema}
}

// Pool returns the Store's connection pool.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// q replaces {{schema}} in a statement with the quoted schema.
func (s *Store) q(sql string) string { return strings.ReplaceAll(sql, "{{schema}}", s.schema) }

// replayLock names the advisory lock that keeps retention's steps and
// replay steps on this journal apart (PruneStep).
func (s *Store) replayLock() string { return "dzhook-replay-prune:" + s.raw }

// Ping checks that the journal answers.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	return s.pool.QueryRow(ctx, "SELECT 1").Scan(&one)
}

// ownTable finds the tables the migrations create.
var ownTable = regexp.MustCompile(`CREATE (?:UNLOGGED )?TABLE (?:IF NOT EXISTS )?\{\{schema\}\}\.(\w+)`)

// OwnTables lists the journal's own tables (unqualified): those its
// migrations create, and schema_migrations. A schema the journal shares
// with other tables (journal.schema: public) holds others too.
func OwnTables() []string {
	names := []string{"schema_migrations"}
	files, _ := fs.Glob(migrations, "migrations/*.sql")
	for _, f := range files {
		b, err := migrations.ReadFile(f)
		if err != nil {
			continue
		}
		for _, m := range ownTable.FindAllSubmatch(b, -1) {
			names = append(names, string(m[1]))
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Migrate creates the schema and applies the migrations it lacks, in
// order, each in its own transaction, under an advisory lock so two
// processes starting together do not race.
//
// A journal that has every migration already (every start but the first
// of a version) is found so with one query and no lock: the lock, the
// schema's check and a query per migration were a tenth of a start.
func (s *Store) Migrate(ctx context.Context) ([]string, error) {
	return s.migrate(ctx, migrations, migrationLockWait)
}

// lockWait is how a migration waits for its tables' locks: a try of at
// most timeout (lock_timeout), a pause, and at most tries of them.
type lockWait struct {
	timeout, pause time.Duration
	tries          int
}

// migrationLockWait: a migration altering a journal table waits for an
// exclusive lock, and while it waits every query of that table queues
// behind it: an upgrade beside a long transaction on the journal (an
// older dzhook's retention step, a person's psql session) stopped every
// delivery of the processes still running until that transaction ended.
// Each try waits 2 s at most, then gives the others the table for 1 s;
// two minutes of tries, then the start fails, saying why.
var migrationLockWait = lockWait{timeout: 2 * time.Second, pause: time.Second, tries: 40}

// migrate is Migrate with the migrations of fsys and the lock waits of w.
func (s *Store) migrate(ctx context.Context, fsys fs.FS, w lockWait) ([]string, error) {
	files, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer conn.Release()
	// The table is looked for first: a query of a missing one would put
	// an ERROR in the server's log at every first start.
	var table bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, s.schema+".schema_migrations").Scan(&table); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if table {
		done, err := s.appliedVersions(ctx, conn.Conn())
		if err != nil {
			return nil, fmt.Errorf("journal: read applied migrations: %w", err)
		}
		if err := newerThan(files, done); err != nil {
			return nil, err
		}
		if appliedAll(files, done) {
			return nil, nil
		}
	}
	// No schema or table yet, or a migration missing: the lock, and a
	// second look under it.
	lockKey := "dzhook-migrate:" + s.raw
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(hashtext($1))", lockKey); err != nil {
		return nil, fmt.Errorf("journal migration lock: %w", err)
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(hashtext($1))", lockKey)
	}()

	// Look first: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database
	// even when the schema exists, and a least-privilege role (see
	// deploy/sql/role.sql) only owns its schema.
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, s.raw).Scan(&exists); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, s.q(`CREATE SCHEMA {{schema}}`)); err != nil {
			return nil, fmt.Errorf("create journal schema %s: %w (the role needs CREATE on the database, or a DBA creates the schema for it: CREATE SCHEMA %s AUTHORIZATION <role>; see deploy/sql/role.sql)", s.raw, err, s.schema)
		}
	}
	if _, err := conn.Exec(ctx, s.q(`CREATE TABLE IF NOT EXISTS {{schema}}.schema_migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`)); err != nil {
		return nil, fmt.Errorf("create journal migrations table: %w", err)
	}
	done, err := s.appliedVersions(ctx, conn.Conn())
	if err != nil {
		return nil, fmt.Errorf("journal: read applied migrations: %w", err)
	}
	var applied []string
	for _, f := range files {
		name, version, err := migrationVersion(f)
		if err != nil {
			return nil, err
		}
		if done[version] {
			continue
		}
		body, err := fs.ReadFile(fsys, f)
		if err != nil {
			return nil, err
		}
		if err := s.applyMigration(ctx, conn.Conn(), name, version, string(body), w); err != nil {
			return applied, err
		}
		applied = append(applied, name)
	}
	return applied, nil
}

// applyMigration runs one migration in a transaction, again when it
// waited too long for a lock (w), and records it.
func (s *Store) applyMigration(ctx context.Context, conn *pgx.Conn, name string, version int, body string, w lockWait) error {
	for try := 1; ; try++ {
		err := s.applyOnce(ctx, conn, name, version, body, w.timeout)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55P03" { // lock_not_available
			return err
		}
		if try >= w.tries {
			return fmt.Errorf("journal migration %s: a lock on the journal's tables was not granted in %d tries of %s each: a long transaction on the journal holds it (see pg_stat_activity for the journal's database); end it, or start dzhook again when it has ended", name, w.tries, w.timeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("journal migration %s: %w", name, ctx.Err())
		case <-time.After(w.pause):
		}
	}
}

// applyOnce is one try of applyMigration.
func (s *Store) applyOnce(ctx context.Context, conn *pgx.Conn, name string, version int, body string, lockTimeout time.Duration) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", max(lockTimeout.Milliseconds(), 1))); err != nil {
		return fmt.Errorf("journal migration %s: %w", name, err)
	}
	if _, err := tx.Exec(ctx, s.q(body)); err != nil {
		return fmt.Errorf("journal migration %s: %w", name, err)
	}
	if _, err := tx.Exec(ctx, s.q(`INSERT INTO {{schema}}.schema_migrations (version, name) VALUES ($1, $2)`), version, name); err != nil {
		return fmt.Errorf("journal migration %s: %w", name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("journal migration %s: %w", name, err)
	}
	return nil
}

// appliedVersions reads the versions of the migrations the journal has.
func (s *Store) appliedVersions(ctx context.Context, conn *pgx.Conn) (map[int]bool, error) {
	rows, err := conn.Query(ctx, s.q(`SELECT version FROM {{schema}}.schema_migrations`))
	if err != nil {
		return nil, err
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil, err
	}
	done := make(map[int]bool, len(versions))
	for _, v := range versions {
		done[int(v)] = true
	}
	return done, nil
}

// ErrNewerJournal: the journal was migrated by a newer dzhook than this
// binary, which would run on it without a word: claiming a transformed
// delivery's event rather than its kept body, reading runtime
// subscriptions without their newer settings (a format, a rate limit).
var ErrNewerJournal = errors.New("the journal was migrated by a newer dzhook")

// newerThan refuses a journal with a migration this binary does not have.
func newerThan(files []string, done map[int]bool) error {
	known := 0
	for _, f := range files {
		if _, v, err := migrationVersion(f); err == nil {
			known = max(known, v)
		}
	}
	newest := 0
	for v := range done {
		newest = max(newest, v)
	}
	if newest > known {
		return fmt.Errorf("%w (its version %d; this dzhook knows up to %d): run that version of dzhook or a newer one, not an older one", ErrNewerJournal, newest, known)
	}
	return nil
}

// appliedAll reports whether every migration file's version is in done.
func appliedAll(files []string, done map[int]bool) bool {
	for _, f := range files {
		_, version, err := migrationVersion(f)
		if err != nil || !done[version] {
			return false
		}
	}
	return true
}

// migrationVersion is a migration file's name and the version it starts
// with ("migrations/0007_sources.sql": "0007_sources", 7).
func migrationVersion(file string) (string, int, error) {
	name := strings.TrimSuffix(strings.TrimPrefix(file, "migrations/"), ".sql")
	version, err := strconv.Atoi(strings.SplitN(name, "_", 2)[0])
	if err != nil {
		return "", 0, fmt.Errorf("migration %s: name must start with its version", file)
	}
	return name, version, nil
}

// Checkpoint is where a slot's journaled transactions end.
type Checkpoint struct {
	// LSN: every transaction with a commit LSN up to it is journaled.
	LSN pglogrepl.LSN
	// SystemID is the database cluster's system identifier the LSN
	// belongs to ("" when written before journal version 3).
	SystemID string
	// End is the highest position the stream may have reported to
	// PostgreSQL as flushed with this checkpoint (at least LSN).
	End pglogrepl.LSN
	// Timeline is the timeline the LSN was read on, or one that carries
	// it on (0 when unknown: written before journal version 17).
	Timeline int32
	// RestoredBelow is the WAL end of a server of this cluster and
	// timeline that ended before LSN and was refused (a restore from a
	// snapshot: MarkRestored); 0 when none was seen.
	RestoredBelow pglogrepl.LSN
}

// ReadTo is the position the checkpoint says was read to: the end of its
// last commit when known (End past LSN), else LSN; the stream judges a
// server by it (cdc.Resume's readTo) and RecordFork holds it so. A
// commit that starts at a fork or a WAL's end is past it; a checkpoint
// written at an idle position itself (End equal to LSN) is not.
func (c Checkpoint) ReadTo() pglogrepl.LSN {
	return max(c.LSN, c.End)
}

// Checkpoint returns the slot's checkpoint (zero when none).
func (s *Store) Checkpoint(ctx context.Context, slot string) (Checkpoint, error) {
	var lsn int64
	var end *int64
	var sys *string
	var tli *int32
	var restored *int64
	err := s.pool.QueryRow(ctx, s.q(`SELECT lsn, end_lsn, system_id, timeline, restored_below FROM {{schema}}.checkpoints WHERE slot = $1`), slot).Scan(&lsn, &end, &sys, &tli, &restored)
	if errors.Is(err, pgx.ErrNoRows) {
		return Checkpoint{}, nil
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("read checkpoint: %w", err)
	}
	cp := Checkpoint{LSN: pglogrepl.LSN(lsn), End: pglogrepl.LSN(lsn)}
	if end != nil && pglogrepl.LSN(*end) > cp.End {
		cp.End = pglogrepl.LSN(*end)
	}
	if sys != nil {
		cp.SystemID = *sys
	}
	if tli != nil {
		cp.Timeline = *tli
	}
	if restored != nil {
		cp.RestoredBelow = pglogrepl.LSN(*restored)
	}
	return cp, nil
}

// MarkRestored records that a server of cluster systemID and timeline
// whose WAL ended at walEnd was refused: a restore from a snapshot. The
// next start drops the checkpoint when it is past walEnd (Checkpoint's
// RestoredBelow), even once that server's WAL has passed it: the
// checkpoint now, or one a write still in the refused process's writer
// moves there later (a mark only of a checkpoint already past walEnd
// missed those; found by a review). It reports whether the slot had a
// checkpoint of that cluster and timeline to mark.
func (s *Store) MarkRestored(ctx context.Context, slot, systemID string, timeline int32, walEnd pglogrepl.LSN) (bool, error) {
	tag, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.checkpoints SET restored_below = least(coalesce(restored_below, $3), $3)
		WHERE slot = $1 AND system_id = $2 AND coalesce(timeline, $4) = $4`), slot, systemID, int64(walEnd), timeline)
	if err != nil {
		return false, fmt.Errorf("record the restore in the checkpoint: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// ClearRestored forgets the restore recorded in the slot's checkpoint cp
// (MarkRestored) once a start trusted cp, at or below the restored WAL's
// end: the journal then carries on the restored server (a journal in the
// source database is restored with it), and a later start must not drop
// the checkpoint its streaming moved past the mark (found by a review).
// A checkpoint written since cp was read keeps its mark: a late batch of
// the refused process, read before the restore.
func (s *Store) ClearRestored(ctx context.Context, slot string, cp Checkpoint) error {
	_, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.checkpoints SET restored_below = NULL
		WHERE slot = $1 AND lsn = $2 AND restored_below = $3 AND coalesce(system_id, '') = $4`),
		slot, int64(cp.LSN), int64(cp.RestoredBelow), cp.SystemID)
	if err != nil {
		return fmt.Errorf("clear the restore recorded in the checkpoint: %w", err)
	}
	return nil
}

// ResetCheckpoint forgets the slot's checkpoint cp: it belongs to another
// cluster, or to this one before a restore from backup. A checkpoint
// written since cp was read is kept.
func (s *Store) ResetCheckpoint(ctx context.Context, slot string, cp Checkpoint) error {
	_, err := s.pool.Exec(ctx, s.q(`DELETE FROM {{schema}}.checkpoints WHERE slot = $1 AND lsn = $2 AND coalesce(system_id, '') = $3`),
		slot, int64(cp.LSN), cp.SystemID)
	if err != nil {
		return fmt.Errorf("reset checkpoint: %w", err)
	}
	return nil
}

// Register records a running instance; Heartbeat keeps it alive.
func (s *Store) Register(ctx context.Context, instance string) error {
	host, _ := os.Hostname()
	_, err := s.pool.Exec(ctx, s.q(`INSERT INTO {{schema}}.instances (id, hostname) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()`), instance, host)
	return err
}

// Heartbeat tells other instances this one is alive, and returns how many
// others are: those whose heartbeat is younger than within or than two
// of their own heartbeats, whichever is longer. within is two of this
// instance's heartbeats: the row records half of it (heartbeat_every),
// so that readers with a shorter heartbeat judge this one by its own
// (the claims take over an instance's deliveries after three of its
// heartbeats at the earliest, whatever theirs). An instance
// whose row is gone (retention removes rows whose heartbeat is older than
// its cutoff: a process stopped, SIGSTOP, for that long) registers again:
// without a row it would look dead, and others would take over what it
// holds in memory and is sending. at is the journal's clock when the
// answer came (see clockQuery): due times are compared with it.
func (s *Store) Heartbeat(ctx context.Context, instance string, within time.Duration) (peers int, at time.Time, err error) {
	host, _ := os.Hostname()
	return s.clockQuery(ctx, s.q(`WITH beat AS (INSERT INTO {{schema}}.instances (id, hostname, heartbeat_every) VALUES ($1, $3, $2::interval / 2)
			ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), heartbeat_every = EXCLUDED.heartbeat_every)
		SELECT count(*), now() FROM {{schema}}.instances WHERE id <> $1 AND `+alivePeer("$2::interval")),
		instance, within, host)
}

// clockQuery runs a query that answers a count and the journal's now(),
// and returns the count and the journal's clock at the moment the answer
// came: now() plus half the query's round trip, timed on a connection
// already acquired. Timed from before the acquisition, a wait for one of
// the pool's connections (a busy pool, a journal reconnecting) counted
// as half the journal's lead: due times went that far into the future,
// and a clock skew that was not there was logged.
func (s *Store) clockQuery(ctx context.Context, sql string, args ...any) (n int, at time.Time, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, time.Time{}, err
	}
	defer conn.Release()
	sent := time.Now()
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n, &at); err != nil {
		return 0, time.Time{}, err
	}
	return n, at.Add(time.Since(sent) / 2), nil
}

// alivePeer is the condition on an instances row that counts it as a
// live peer: younger than within (an SQL interval: two of the reader's
// heartbeats) or than two of the writer's own (heartbeat_every, half of
// its heartbeat), whichever is longer.
func alivePeer(within string) string {
	return `heartbeat_at > now() - greatest(` + within + `, 2 * heartbeat_every)`
}

// liveInstances selects the instances whose deliveries no one may take
// over: a row younger than stale (an SQL interval: the reader's
// staleness) or than three of the writer's own heartbeats, whichever is
// longer. Every takeover (claims, retries by hand, parking, a deleted
// subscription's cancellation) asks it, so that processes with different
// journal.heartbeat values never take one another for dead between two
// writes of a row (journal version 14).
func liveInstances(stale string) string {
	return `SELECT id FROM {{schema}}.instances WHERE heartbeat_at > now() - greatest(` + stale + `, 3 * heartbeat_every)`
}

// Peers is Heartbeat without the write: how many other instances are
// alive (as Heartbeat counts them), and the journal's clock when the
// answer came.
// It writes nothing, so it costs no WAL: between two heartbeats, which
// keep a row alive for several of its readers' windows, a process learns
// of newcomers with it (and a journal in the source database does not
// wake the walsender, and through it this process, for each check).
func (s *Store) Peers(ctx context.Context, instance string, within time.Duration) (peers int, at time.Time, err error) {
	return s.clockQuery(ctx, s.q(`SELECT count(*), now() FROM {{schema}}.instances WHERE id <> $1 AND `+alivePeer("$2::interval")),
		instance, within)
}

// Disowned returns those of ids that the journal holds but that are no
// longer owner's pending deliveries: another instance took them over
// (and may have finished them) while owner's heartbeat was stale, or
// gave them back. Ids it does not hold yet (put to owner's journal
// writer, not written) are not returned: no one else can have them. It
// locks the rows (FOR SHARE), so a claim that took one and has not
// committed yet is waited for, and counted.
func (s *Store) Disowned(ctx context.Context, owner string, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, s.q(`SELECT id, owner IS DISTINCT FROM $2 OR state <> 'pending' FROM {{schema}}.deliveries
		WHERE id = ANY($1) ORDER BY id FOR SHARE`), ids, owner)
	if err != nil {
		return nil, fmt.Errorf("read owned deliveries: %w", err)
	}
	var lost []string
	for rows.Next() {
		var id string
		var gone bool
		if err := rows.Scan(&id, &gone); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read owned deliveries: %w", err)
		}
		if gone {
			lost = append(lost, id)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read owned deliveries: %w", err)
	}
	return lost, nil
}

// Unregister ends an instance cleanly: its pending deliveries are
// released at once for others (or the next start) to claim, and its row is
// removed.
func (s *Store) Unregister(ctx context.Context, instance string) error {
	_, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.deliveries SET owner = NULL WHERE owner = $1 AND state = 'pending'`), instance)
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, s.q(`DELETE FROM {{schema}}.instances WHERE id = $1`), instance)
	return err
}

// Claimed is a due delivery taken by Claim, with its body: its own
// (Own) or its event's.
type Claimed struct {
	ID, EventID, EventType, SubscriptionID string
	Attempts                               int
	Body                                   []byte
	// Own is set when Body is the delivery's own (a transform's result,
	// kept since its first attempt), not its event's.
	Own  bool
	Test bool
	// Manual is set when the attempt is a manual retry: one attempt, no
	// new schedule.
	Manual bool
	// ByHand counts the delivery's attempts made by hand (manual), which
	// the retry schedule does not count: Attempts - ByHand automatic
	// attempts were made.
	ByHand int
	// State and NextAttemptAt are the delivery's as ClaimForRetry took it
	// (Claim leaves them zero: what it takes is pending and due).
	State         State
	NextAttemptAt *time.Time
	// Ordered deliveries carry their key and position (see
	// DeliveryRow.Ordered).
	Ordered     bool
	OrderingKey string
	Position    int64
}

// ClaimWant is what a claim asks of one subscription: up to Limit of its
// due deliveries, of which up to Heads (0: Limit) are deliveries that can
// start at once (unordered ones, and the heads of ordered keys). With
// Runs, the rest of Limit may go to the runs behind the heads (see Claim).
type ClaimWant struct {
	Subscription string
	Limit        int
	Heads        int
	Runs         bool
}

// claimRun is the longest run Claim takes behind one ordered head.
const claimRun = 100

// ClaimTimeout bounds a claim's statement: a claim that read another
// instance's row as stale ends (commits, or fails) within it.
const ClaimTimeout = 10 * time.Second

// Claim takes, for each want, up to its limit of the subscription's due
// deliveries, oldest first, in one statement (one round trip however many
// subscriptions: an idle process asks once per poll interval, not once
// per subscription), for owner: pending, due, and owned by nobody or by a
// dead instance (one whose heartbeat is older than staleAfter) other than
// owner. FOR UPDATE SKIP LOCKED lets several processes claim at once
// without taking the same delivery. The rows taken are marked with token,
// new for every claim: when the call fails, its UPDATE may still have
// committed, and ReleaseLost gives back what it took.
//
// owner never takes over its own deliveries, even when its heartbeat
// looks stale (a stalled process or database): it is running, since it
// claims, and what it owns it has in memory, queued or in flight, or is
// giving back (a release, ReleaseLost). Taken over, each would be sent
// again, once per claim while the heartbeat is late.
//
// An ordered delivery is taken only when it is the head of its key: no
// earlier delivery of the same subscription and key (by position, then
// id) is pending or held. An earlier one being attempted (pending, owned
// by a live instance) or waiting for its retry holds back the later ones
// of its key, and only those; a failed one lets its key move on.
//
// For a want with Runs, behind each ordered head it takes (not a manual
// retry), it also takes
// the run that follows it: the key's next deliveries, in order and
// without a gap, that are due and owned by nobody (or by a dead
// instance), up to claimRun of them, while the want's Limit allows. The
// caller attempts a run one delivery after the other, each right after
// the previous one finished, as the process that streams does with the
// deliveries waiting behind a key in its memory: a key that waits in the
// journal (after a retry, a spill, a pause) moves a run per claim, not one
// delivery per claim and journal write (about 20 a second). The rows of a
// run are locked with the heads; one locked by another transaction ends
// the run before it.
//
// A subscription the journal says is paused (SetPaused) gets nothing,
// whatever the caller asked.
//
// What it returns is in no particular order; SubscriptionID says whose
// each delivery is.
func (s *Store) Claim(ctx context.Context, wants []ClaimWant, owner, token string, staleAfter time.Duration) ([]Claimed, error) {
	if len(wants) == 0 {
		return nil, nil
	}
	subs, limits, heads := make([]string, len(wants)), make([]int32, len(wants)), make([]int32, len(wants))
	runs := make([]bool, len(wants))
	for i, w := range wants {
		subs[i], limits[i], runs[i] = w.Subscription, int32(min(max(w.Limit, 0), math.MaxInt32)), w.Runs
		heads[i] = limits[i]
		if w.Heads > 0 {
			heads[i] = min(heads[i], int32(min(w.Heads, math.MaxInt32)))
		}
	}
	// One round trip: BEGIN, the claim, COMMIT in one pipeline. The
	// commit does not wait for the WAL's flush (synchronous_commit off,
	// for this transaction only): a claim that a crash of PostgreSQL
	// takes back leaves the deliveries unowned, to be claimed again,
	// which a lost answer to a claim does already (at least once). With
	// several processes claiming, the flushes were most of a claim's
	// time.
	batch := &pgx.Batch{}
	batch.Queue("BEGIN")
	batch.Queue("SET LOCAL synchronous_commit = off")
	// Bounded, so that an instance back from a stale heartbeat knows when
	// no claim that read its row stale can still take what it holds
	// (fanout's recheck waits ClaimTimeout after its write).
	batch.Queue(fmt.Sprintf("SET LOCAL statement_timeout = %d", ClaimTimeout.Milliseconds()))
	// The statement is large; with estimates inflated (statistics behind
	// a burst of updates) PostgreSQL's JIT compiled it for a second per
	// claim, for a plan that runs in milliseconds.
	batch.Queue("SET LOCAL jit = off")
	// A claimer whose own row is stale (an outage of the journal just
	// ended, this claim held up by it) takes over nothing: every other
	// row may be stale for the same reason, their instances alive and
	// holding their deliveries in memory. Its row is written every half
	// heartbeat (2 s at most): a third of the staleness, 2 s at least, is
	// fresh.
	claim := batch.Queue(s.q(`
		WITH live AS (
			`+liveInstances("$4 * interval '1 second'")+`
			 OR NOT EXISTS (SELECT 1 FROM {{schema}}.instances me
			                 WHERE me.id = $3 AND me.heartbeat_at > now() - greatest($4 * interval '1 second' / 3, interval '2 seconds'))
		), due AS (
			SELECT c.id, w.sub, w.lim, w.runs, c.ordering_key, c.position, c.manual
			  FROM unnest($1::text[], $2::int[], $6::int[], $8::bool[]) AS w(sub, lim, heads, runs) CROSS JOIN LATERAL (
				-- Each due delivery's key's head, as a lateral join, which
				-- PostgreSQL can memoize by key (one probe per key, not per
				-- delivery): behind a key busy in a process, every due
				-- delivery of the key is read and turned away, and a
				-- subquery per row cost 8 µs each (200,000: 1.7 s a
				-- claim; memoized, 0.1 s). Whether it memoizes is the
				-- planner's choice, from its estimate of the distinct keys
				-- among the due rows: with many distinct keys in the
				-- table's statistics it may not, and the join then costs
				-- about what the subquery did (5-10% more, measured). The
				-- comparison is wrapped in a subquery so that the planner
				-- guesses its selectivity (a half) and keeps the due
				-- index's order, stopping at the limit; estimated by the
				-- join it expected few rows to pass, read all due rows and
				-- sorted them (0.1 ms became 500 ms with many keys each
				-- due once). A recheck of a row another transaction
				-- changed reuses the head found for it: a delivery's key
				-- and position never change.
				SELECT d.id, d.ordering_key, d.position, d.manual FROM {{schema}}.deliveries d
				  LEFT JOIN LATERAL (
				        SELECT x.position, x.id FROM {{schema}}.deliveries x
				         WHERE x.subscription_id = d.subscription_id AND x.ordering_key = d.ordering_key
				           AND x.state IN ('pending', 'held')
				         ORDER BY x.position, x.id LIMIT 1) h ON true
				 WHERE d.subscription_id = w.sub AND d.state = 'pending' AND d.next_attempt_at <= now()
				   AND (d.owner IS NULL OR (d.owner <> $3 AND d.owner NOT IN (SELECT id FROM live)))
				   AND (SELECT d.ordering_key IS NULL OR (d.position, d.id) = (h.position, h.id))
				 ORDER BY d.next_attempt_at
				 LIMIT w.heads
				   FOR UPDATE OF d SKIP LOCKED
			) c
			 -- Nothing of a subscription the journal says is paused: the
			 -- caller chose its subscriptions by its memory, which a pause
			 -- made meanwhile (by this process, or another one not yet
			 -- adopted) is behind. Seeing a delivery a retry of failed
			 -- deliveries made pending after the pause, the claim sees the
			 -- pause as well (found under load: such a claim took the
			 -- delivery an operator then retried by hand, which answered
			 -- busy until the worker gave it back unattempted).
			 WHERE NOT EXISTS (SELECT 1 FROM {{schema}}.subscriptions p WHERE p.id = w.sub AND p.paused)
		), run AS (
			-- Behind each ordered head, its key's next deliveries while each
			-- is claimable (the running bool_and): a run without a gap.
			SELECT r.id, r.rn, h.id AS head, h.sub, h.lim
			  FROM due h CROSS JOIN LATERAL (
				SELECT y.id, y.rn FROM (
					SELECT y.id, row_number() OVER k AS rn,
					       bool_and(y.state = 'pending' AND y.next_attempt_at <= now() AND NOT y.manual
					                AND (y.owner IS NULL OR (y.owner <> $3 AND y.owner NOT IN (SELECT id FROM live)))) OVER k AS ok
					  FROM (SELECT z.id, z.state, z.next_attempt_at, z.owner, z.manual, z.position FROM {{schema}}.deliveries z
					         WHERE z.subscription_id = h.sub AND z.ordering_key = h.ordering_key AND z.state IN ('pending', 'held')
					           AND (z.position, z.id) > (h.position, h.id)
					         ORDER BY z.position, z.id LIMIT $7) y
					WINDOW k AS (ORDER BY y.position, y.id)
				) y WHERE y.ok
			  ) r
			 WHERE h.runs AND h.ordering_key IS NOT NULL AND NOT h.manual
		), taken AS (
			-- Within the want's limit, after its heads: whole runs, head by
			-- head, and the first part of the last one.
			SELECT q.id, q.head, q.rn FROM (
				SELECT run.id, run.head, run.rn, run.lim, n.heads,
				       row_number() OVER (PARTITION BY run.sub ORDER BY run.head, run.rn) AS nth
				  FROM run JOIN (SELECT sub, count(*) AS heads FROM due GROUP BY sub) n ON n.sub = run.sub) q
			 WHERE q.heads + q.nth <= q.lim
		), locked AS (
			SELECT d.id FROM {{schema}}.deliveries d
			 WHERE d.id IN (SELECT id FROM taken) AND d.state = 'pending'
			   AND (d.owner IS NULL OR (d.owner <> $3 AND d.owner NOT IN (SELECT id FROM live)))
			   FOR UPDATE SKIP LOCKED
		), gap AS (
			-- Per run, the first delivery another transaction holds.
			SELECT t.head, min(t.rn) AS rn FROM taken t WHERE t.id NOT IN (SELECT id FROM locked) GROUP BY t.head
		), kept AS (
			SELECT t.id FROM taken t JOIN locked l ON l.id = t.id LEFT JOIN gap g ON g.head = t.head
			 WHERE g.rn IS NULL OR t.rn < g.rn
		)
		UPDATE {{schema}}.deliveries d SET owner = $3, claim = $5, parked_behind = NULL, updated_at = now()
		  FROM (SELECT id FROM due UNION ALL SELECT id FROM kept) c, {{schema}}.events e
		 WHERE d.id = c.id AND e.id = d.event_id
		RETURNING d.id, d.event_id, d.event_type, d.subscription_id, d.attempts, coalesce(d.body, e.body), d.body IS NOT NULL,
			d.test, d.manual, d.ordering_key, d.position,
			CASE WHEN d.attempts = 0 THEN 0 ELSE
				(SELECT count(*) FROM {{schema}}.attempts a WHERE a.delivery_id = d.id AND a.trigger = 'manual') END`),
		subs, limits, owner, staleAfter.Seconds(), token, heads, claimRun, runs)
	var claimed []Claimed
	claim.Query(func(rows pgx.Rows) error {
		var err error
		claimed, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Claimed, error) {
			var c Claimed
			var key *string
			var pos *int64
			err := r.Scan(&c.ID, &c.EventID, &c.EventType, &c.SubscriptionID, &c.Attempts, &c.Body, &c.Own, &c.Test, &c.Manual, &key, &pos, &c.ByHand)
			if key != nil {
				c.Ordered, c.OrderingKey = true, *key
			}
			if pos != nil {
				c.Position = *pos
			}
			return c, err
		})
		return err
	})
	batch.Queue("COMMIT")
	if err := s.onConn(ctx, func(conn *pgx.Conn) error { return conn.SendBatch(ctx, batch).Close() }); err != nil {
		return nil, claimFailed("claim due deliveries", err)
	}
	return claimed, nil
}

// ClaimError is the error of a claim (Claim, ClaimForRetry) that failed
// once it was sent: its transaction may commit all the same, and even
// after the caller saw the failure, when the connection broke while the
// server still worked on the claim (waiting for a lock, a slow plan).
// Backend is the server process that ran it (0 when unknown) and Sent
// when it was sent (this process's clock), for ReleaseLost to tell when
// that transaction can commit no more.
type ClaimError struct {
	Backend uint32
	Sent    time.Time
	Err     error
}

func (e *ClaimError) Error() string {
	return fmt.Sprintf("%v (server process %d)", e.Err, e.Backend)
}

func (e *ClaimError) Unwrap() error { return e.Err }

// claimFailed wraps a claim's error with the server process it ran on.
func claimFailed(what string, err error) error {
	var pe *onConnError
	if errors.As(err, &pe) {
		return &ClaimError{Backend: pe.backend, Sent: pe.sent, Err: fmt.Errorf("%s: %w", what, pe.err)}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// onConnError is the error of f in onConn, with the server process that
// ran it and when f began.
type onConnError struct {
	backend uint32
	sent    time.Time
	err     error
}

func (e *onConnError) Error() string { return e.err.Error() }
func (e *onConnError) Unwrap() error { return e.err }

// onConn runs f on a connection of the pool; its error names the server
// process it ran on (onConnError). A failure to get a connection is
// returned as is: nothing was sent.
func (s *Store) onConn(ctx context.Context, f func(*pgx.Conn) error) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	sent := time.Now()
	if err := f(conn.Conn()); err != nil {
		return &onConnError{backend: conn.Conn().PgConn().PID(), sent: sent, err: err}
	}
	return nil
}

// Park takes out of the claim's way, up to limit at a time, the due
// ordered deliveries of subscriptions that wait behind their key's head
// while the head waits for its retry, and returns how many it took, and
// whether it left some that it found because another transaction held
// them or their head (the caller calls again soon, rather than taking
// "none parked" for "nothing to park").
//
// Claim takes an ordered delivery only when it is its key's head, and
// asks that of every due delivery it reads: behind a head waiting for its
// retry the whole key is asked and turned away again on every poll, in
// every process (200,000 deliveries behind one head: 220 ms per claim
// round, for all subscriptions). None of them can go before the head's
// next attempt, so Park makes that their due time, and names the head
// (parked_behind). Once the head is finished (delivered, failed,
// cancelled), Unpark brings them back, due at once;
// so does a replay cancelling the head (CancelReplay). Were none to, a
// parked delivery is due at its head's due time anyway: nothing waits
// longer than its key did when it was parked.
//
// Only heads that wait are parked behind (pending, attempted before, due
// later, owned by no live instance): behind one being attempted, the key
// moves on within an attempt's time. The heads are locked (FOR SHARE):
// an outcome recorded meanwhile waits for this statement, and then
// finds what it parked.
//
// Park waits for no lock: a head or a delivery another transaction holds
// is left for a later call (SKIP LOCKED). Waiting, it deadlocked with a
// replay's cancel, which takes the same rows in another order (the
// replay's deliveries, then those parked behind them), and PostgreSQL
// aborted one of the two: the operator's cancel, as often as not.
func (s *Store) Park(ctx context.Context, subscriptions []string, staleAfter time.Duration, limit int) (parked int, locked bool, err error) {
	if len(subscriptions) == 0 || limit < 1 {
		return 0, false, nil
	}
	var found int
	scan := func(q *pgx.QueuedQuery) { q.QueryRow(func(r pgx.Row) error { return r.Scan(&found, &parked) }) }
	err = s.noJIT(ctx, scan, s.q(`
		WITH live AS (
			`+liveInstances("$2 * interval '1 second'")+`
		), behind AS (
			SELECT d.id, h.id AS head
			  FROM {{schema}}.deliveries d CROSS JOIN LATERAL (
				SELECT x.id, x.state, x.attempts, x.next_attempt_at, x.owner FROM {{schema}}.deliveries x
				 WHERE x.subscription_id = d.subscription_id AND x.ordering_key = d.ordering_key
				   AND x.state IN ('pending', 'held')
				 ORDER BY x.position, x.id LIMIT 1) h
			 WHERE d.subscription_id = ANY($1) AND d.state = 'pending' AND d.next_attempt_at <= now()
			   AND d.ordering_key IS NOT NULL
			   AND (d.owner IS NULL OR d.owner NOT IN (SELECT id FROM live))
			   AND h.id <> d.id AND h.state = 'pending' AND h.attempts > 0 AND h.next_attempt_at > now()
			   AND (h.owner IS NULL OR h.owner NOT IN (SELECT id FROM live))
			 LIMIT $3
			   FOR NO KEY UPDATE OF d SKIP LOCKED
		), heads AS (
			SELECT x.id, x.next_attempt_at FROM {{schema}}.deliveries x
			 WHERE x.id IN (SELECT head FROM behind) AND x.state = 'pending' AND x.next_attempt_at > now()
			   AND (x.owner IS NULL OR x.owner NOT IN (SELECT id FROM live))
			   FOR SHARE OF x SKIP LOCKED
		), parked AS (
			UPDATE {{schema}}.deliveries d SET next_attempt_at = heads.next_attempt_at, parked_behind = heads.id
			  FROM behind JOIN heads ON heads.id = behind.head
			 WHERE d.id = behind.id AND d.state = 'pending' AND d.next_attempt_at <= now()
			   AND (d.owner IS NULL OR d.owner NOT IN (SELECT id FROM live))
			RETURNING 1
		)
		SELECT (SELECT count(*) FROM behind)::int, (SELECT count(*) FROM parked)::int`),
		subscriptions, staleAfter.Seconds(), limit)
	if err != nil {
		return 0, false, fmt.Errorf("park ordered deliveries behind their heads: %w", err)
	}
	// Found behind a waiting head but not parked: the head was locked
	// (SKIP LOCKED), or it moved on meanwhile.
	return parked, found > parked, nil
}

// Unpark makes due again, up to limit at a time, the deliveries parked
// (Park) behind heads that are finished (delivered, failed, cancelled) or
// gone; it returns how many. Behind a head whose retry failed again they
// stay parked: due at the head's earlier due time, they are parked again
// behind its next one (one update each per retry, not two). The heads behind which
// deliveries are parked are read from the deliveries_parked index, one
// probe per head (a skip scan), so a call finds none in microseconds.
// Like Park it waits for no lock: a delivery another transaction holds
// (a replay's cancel making it due itself) is left for the next call.
// It runs apart from the journal writer: a head with 200,000 deliveries
// behind it is 200,000 rows to update, which held the writer's
// transaction, and with it every outcome and the stream's checkpoint,
// for two seconds.
func (s *Store) Unpark(ctx context.Context, limit int) (int, error) {
	if limit < 1 {
		return 0, nil
	}
	tag, err := s.execNoJIT(ctx, s.q(`
		WITH RECURSIVE heads(id) AS (
			(SELECT parked_behind FROM {{schema}}.deliveries WHERE parked_behind IS NOT NULL ORDER BY parked_behind LIMIT 1)
			UNION ALL
			SELECT (SELECT d.parked_behind FROM {{schema}}.deliveries d
			         WHERE d.parked_behind IS NOT NULL AND d.parked_behind > heads.id ORDER BY d.parked_behind LIMIT 1)
			  FROM heads WHERE heads.id IS NOT NULL
		), moved AS (
			SELECT h.id FROM heads h LEFT JOIN {{schema}}.deliveries x ON x.id = h.id
			 WHERE h.id IS NOT NULL
			   AND (x.id IS NULL OR x.state NOT IN ('pending', 'held'))
		)
		UPDATE {{schema}}.deliveries f SET next_attempt_at = now(), parked_behind = NULL
		 WHERE f.id IN (SELECT d.id FROM {{schema}}.deliveries d WHERE d.parked_behind IN (SELECT id FROM moved) LIMIT $1
		                  FOR NO KEY UPDATE SKIP LOCKED)
		   AND f.parked_behind IS NOT NULL`), limit)
	if err != nil {
		return 0, fmt.Errorf("unpark ordered deliveries whose heads moved on: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Parked reports whether any delivery is parked behind a head (one probe
// of the deliveries_parked index).
func (s *Store) Parked(ctx context.Context) (bool, error) {
	var parked bool
	if err := s.pool.QueryRow(ctx, s.q(`SELECT EXISTS (SELECT 1 FROM {{schema}}.deliveries WHERE parked_behind IS NOT NULL)`)).Scan(&parked); err != nil {
		return false, fmt.Errorf("look for parked deliveries: %w", err)
	}
	return parked, nil
}

// noJIT runs one statement in a transaction of its own without JIT
// compilation (see Claim), in one round trip; use says how its result is
// read (QueuedQuery.Exec, QueryRow).
func (s *Store) noJIT(ctx context.Context, use func(*pgx.QueuedQuery), sql string, args ...any) error {
	batch := &pgx.Batch{}
	batch.Queue("BEGIN")
	batch.Queue("SET LOCAL jit = off")
	use(batch.Queue(sql, args...))
	batch.Queue("COMMIT")
	return s.pool.SendBatch(ctx, batch).Close()
}

// execNoJIT runs one statement as noJIT does, and returns its tag.
func (s *Store) execNoJIT(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	var tag pgconn.CommandTag
	err := s.noJIT(ctx, func(q *pgx.QueuedQuery) {
		q.Exec(func(ct pgconn.CommandTag) error {
			tag = ct
			return nil
		})
	}, sql, args...)
	return tag, err
}

// KeyBacklog is what waits in the journal for one ordering key.
type KeyBacklog struct {
	// Count is the key's pending and held deliveries.
	Count int
	// MaxPosition is the latest position among them.
	MaxPosition int64
}

// KeyBacklogs counts, for some ordering keys of a subscription, the
// pending and held deliveries (whoever owns them): keys without any are
// absent.
func (s *Store) KeyBacklogs(ctx context.Context, subscription string, keys []string) (map[string]int, error) {
	rows, err := s.pool.Query(ctx, s.q(`
		SELECT ordering_key, count(*) FROM {{schema}}.deliveries
		 WHERE subscription_id = $1 AND ordering_key = ANY($2) AND state IN ('pending', 'held')
		 GROUP BY 1`), subscription, keys)
	if err != nil {
		return nil, fmt.Errorf("count keys' backlog: %w", err)
	}
	out := map[string]int{}
	for rows.Next() {
		var key string
		var n int
		if err := rows.Scan(&key, &n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("count keys' backlog: %w", err)
		}
		out[key] = n
	}
	return out, rows.Err()
}

// OrderedBacklog returns, per subscription and ordering key, the pending
// and held deliveries not owned by self: what a process that starts
// streaming must let go first before it sends a key's new deliveries
// straight from memory.
func (s *Store) OrderedBacklog(ctx context.Context, subscriptions []string, self string) (map[string]map[string]KeyBacklog, error) {
	rows, err := s.pool.Query(ctx, s.q(`
		SELECT subscription_id, ordering_key, count(*), max(position) FROM {{schema}}.deliveries
		 WHERE subscription_id = ANY($1) AND ordering_key IS NOT NULL AND state IN ('pending', 'held')
		   AND owner IS DISTINCT FROM $2
		 GROUP BY 1, 2`), subscriptions, self)
	if err != nil {
		return nil, fmt.Errorf("read ordered backlog: %w", err)
	}
	out := map[string]map[string]KeyBacklog{}
	for rows.Next() {
		var sub, key string
		var b KeyBacklog
		if err := rows.Scan(&sub, &key, &b.Count, &b.MaxPosition); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read ordered backlog: %w", err)
		}
		if out[sub] == nil {
			out[sub] = map[string]KeyBacklog{}
		}
		out[sub][key] = b
	}
	return out, rows.Err()
}

// LostClaim names claims whose answers never arrived: Claim's of one
// subscription (Subscription set) or ClaimForRetry's of one delivery
// (Delivery set), by the tokens they wrote, and the server processes
// that ran them (none when unknown).
type LostClaim struct {
	Subscription string
	Delivery     string
	Tokens       []string
	Backends     []ClaimBackend
}

// ClaimBackend is a server process that ran a claim, and when the claim
// was sent (ClaimError).
type ClaimBackend struct {
	PID  uint32
	Sent time.Time
}

// ReleaseLost gives back the deliveries a lost claim of owner took, if it
// took any: they lose their owner and are claimed again (by owner too).
// The token limits it to that claim, so nothing owner holds in memory is
// touched. Releasing a claim that committed nothing changes nothing.
//
// settled reports that the claims can take nothing more: before the
// release read the deliveries, none of c.Backends was still at its claim.
// Until then a claim may commit after the release (its connection broke
// while the server was still at it), and the caller releases c again
// later; a release that came too early finds nothing. A claim sent
// through a pooler (pgbouncer) names the pooler's process number, which
// no server process has: settled at the first release, as if the claim
// had ended.
func (s *Store) ReleaseLost(ctx context.Context, owner string, c LostClaim) (released int, settled bool, err error) {
	// Looked at first, in a statement of its own: the release's snapshot,
	// taken after it, sees whatever those transactions committed.
	if settled, err = s.claimsOver(ctx, c.Backends); err != nil {
		return 0, false, fmt.Errorf("release a lost claim: look at the server processes that ran it: %w", err)
	}
	var sql string
	key := c.Subscription
	if c.Delivery != "" {
		// A manual retry claims a delivery in any state.
		sql = `UPDATE {{schema}}.deliveries SET owner = NULL, claim = NULL WHERE id = $1 AND owner = $2 AND claim = ANY($3)`
		key = c.Delivery
	} else {
		// The claim took pending deliveries (of the due index); only this
		// instance has touched them since.
		sql = `UPDATE {{schema}}.deliveries SET owner = NULL, claim = NULL
			WHERE subscription_id = $1 AND state = 'pending' AND owner = $2 AND claim = ANY($3)`
	}
	tag, err := s.pool.Exec(ctx, s.q(sql), key, owner, c.Tokens)
	if err != nil {
		return 0, false, fmt.Errorf("release a lost claim: %w", err)
	}
	return int(tag.RowsAffected()), settled, nil
}

// claimsOver reports whether none of backends can still commit its
// claim. One can while it is a client process of this role that started
// before the claim was sent and is in a transaction (active, or idle in
// one), or has been idle since before the claim was sent (the claim has
// not reached it yet: held up in a proxy, or on the network). A process
// of that number that started later is another one. The times are
// compared in the journal's clock, each as an age (this process's
// monotonic clock) back from its now(). With track_activities off the
// server shows no state: a process counts as at its claim until it ends.
func (s *Store) claimsOver(ctx context.Context, backends []ClaimBackend) (bool, error) {
	pids := make([]int32, 0, len(backends))
	ages := make([]float64, 0, len(backends))
	for _, b := range backends {
		if b.PID != 0 {
			pids = append(pids, int32(b.PID))
			ages = append(ages, time.Since(b.Sent).Seconds())
		}
	}
	if len(pids) == 0 {
		return true, nil
	}
	var busy int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity a
		JOIN unnest($1::int[], $2::float8[]) AS b(pid, age) ON a.pid = b.pid
		WHERE a.pid <> pg_backend_pid() AND a.backend_type = 'client backend' AND a.usename = session_user
		  AND a.backend_start <= now() - b.age * interval '1 second'
		  AND (a.state IS DISTINCT FROM 'idle' OR a.state_change < now() - b.age * interval '1 second')`, pids, ages).Scan(&busy)
	return busy == 0, err
}

// SubscriptionRow is a subscription's persisted state.
type SubscriptionRow struct {
	ID            string
	State         Health
	Paused        bool
	LastSuccessAt time.Time
	LastFailureAt time.Time
	LastStatus    int
	LastError     string
	// StateAge is how long ago (the journal's clock) State was set; a
	// very long time when it never was.
	StateAge time.Duration
	// ResumeAge is how long ago an operator last set the state (a
	// resume, SetState); a very long time when none did.
	ResumeAge time.Duration
}

// SubscriptionStates returns every subscription's persisted state.
func (s *Store) SubscriptionStates(ctx context.Context) ([]SubscriptionRow, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT id, state, paused, last_success_at, last_failure_at, last_status, last_error,
		coalesce(extract(epoch FROM now() - state_changed_at), 1e9)::float8,
		coalesce(extract(epoch FROM now() - resumed_at), 1e9)::float8 FROM {{schema}}.subscriptions`))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (SubscriptionRow, error) {
		var row SubscriptionRow
		var okAt, failAt *time.Time
		var status *int32
		var lastErr *string
		var age, resumed float64
		err := r.Scan(&row.ID, &row.State, &row.Paused, &okAt, &failAt, &status, &lastErr, &age, &resumed)
		row.StateAge = time.Duration(age * float64(time.Second))
		row.ResumeAge = time.Duration(resumed * float64(time.Second))
		if okAt != nil {
			row.LastSuccessAt = *okAt
		}
		if failAt != nil {
			row.LastFailureAt = *failAt
		}
		if status != nil {
			row.LastStatus = int(*status)
		}
		if lastErr != nil {
			row.LastError = *lastErr
		}
		return row, err
	})
}
