package journal

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// EventRow is an event to record.
type EventRow struct {
	ID         string
	Type       string
	Body       []byte
	CommitLSN  pglogrepl.LSN // 0: not from the stream
	OccurredAt time.Time
}

// DeliveryRow is a delivery to record, with its state as known when the
// batch is written (its first attempt may already be done).
type DeliveryRow struct {
	ID, EventID, SubscriptionID, EventType string
	State                                  State
	Attempts                               int
	NextAttemptAt                          time.Time // zero: none
	Owner                                  string
	Test                                   bool
	LastStatus                             int // 0: none
	LastError                              string
	LastAttemptAt                          time.Time
	CreatedAt                              time.Time
	// Ordered deliveries (a subscription with ordering) carry their key
	// and their position in the key's order; see Store.Claim.
	Ordered     bool
	OrderingKey string
	Position    int64
	// Body is what the delivery sends when it is not its event's body (a
	// transform's result, fixed at the first attempt); nil: the event's.
	Body []byte
	// NoHold: the writer writes it at once, not holding it for its first
	// attempt's outcome (see Record.NoHold): an attempt that waits for its
	// turn (a rate limit) may come after the hold.
	NoHold bool
}

// DeliveryUpdate changes a recorded delivery after an attempt.
type DeliveryUpdate struct {
	ID            string
	State         State
	Attempts      int
	NextAttemptAt time.Time // zero: none
	Owner         string    // "": none
	LastStatus    int
	LastError     string
	LastAttemptAt time.Time
	// Body, when set, is the delivery's own body, computed at this
	// attempt (see DeliveryRow.Body). A body once recorded is kept.
	Body []byte
	// Unless is set to the instance that made the attempt when its
	// heartbeat went stale during it: another instance may have taken
	// the delivery over and be making the same attempt. The outcome is
	// then applied only while no other instance owns the delivery (a
	// late failure applied first threw the takeover's success away, and
	// the delivery was sent again after its key's later ones: found by a
	// review). "": applied as ever.
	Unless string
}

// AttemptRow is one attempt.
type AttemptRow struct {
	DeliveryID   string
	Attempt      int
	At           time.Time
	Trigger      Trigger
	StatusCode   int // 0: no response
	Duration     time.Duration
	ResponseBody []byte
	ErrorClass   string
	Error        string
	// Instance is the id of the dzhook instance that made the attempt
	// ("": unknown).
	Instance string
	// Unless: as DeliveryUpdate.Unless; the attempt is recorded only
	// while no other instance owns its delivery (the takeover's own
	// attempt of the same number is the one the history shows).
	Unless string
}

// SubscriptionState is a subscription's health after a batch.
type SubscriptionState struct {
	ID      string
	State   Health
	Changed bool // the state changed in this batch
	// ChangedAt is when the process made the change, by its own clock:
	// the journal records the change at its own now() less the time
	// since (a monotonic reading, immune to the clocks of two hosts
	// differing), so a write that was held up (a batch retried while the
	// journal was unreachable, a lock waited for) is placed at the time
	// of its change, not of its write, and does not undo a later change
	// of another process. Zero: the write's own time.
	ChangedAt     time.Time
	LastSuccessAt time.Time
	LastFailureAt time.Time
	LastStatus    int
	LastError     string
}

// NotificationRow is a message for the admin, written with the state
// change that causes it.
type NotificationRow struct {
	SubscriptionID string
	Kind           string // failing, recovered, disabled
	Body           []byte
}

// Release gives back deliveries an instance owns and will not attempt
// (they waited in the queue of a subscription a reload stopped): pending
// ones lose their owner and are claimed again by whoever runs the
// subscription now.
type Release struct {
	Owner string
	IDs   []string
}

// Rejection is an outbox row or message that did not become an event.
type Rejection struct {
	Source string
	Reason string
	// CommitLSN and Ordinal are the change's position (cdc.Change's):
	// a transaction streamed again records its rejections once. A zero
	// CommitLSN records no position.
	CommitLSN pglogrepl.LSN
	Ordinal   int
}

// Batch is everything one group commit writes.
type Batch struct {
	Events        []EventRow
	Deliveries    []DeliveryRow
	Attempts      []AttemptRow
	Updates       []DeliveryUpdate
	Subs          []SubscriptionState
	Notifications []NotificationRow
	Rejections    []Rejection
	// Release gives back, after the batch's inserts, pending deliveries
	// an instance owns.
	Release []Release
	// Timers arm and cancel SLA timers.
	Timers []TimerChange
	// Slot and Checkpoint, when Slot is set, record that every transaction
	// up to Checkpoint is journaled.
	Slot       string
	Checkpoint pglogrepl.LSN
	// CheckpointEnd bounds what the stream reports as flushed with it:
	// the end of the last commit record (see Record.CommitEnd).
	CheckpointEnd pglogrepl.LSN
	// SystemID is the cluster the checkpoint's LSN belongs to; Timeline
	// the timeline it was read on, or one that carries it on (0: unknown).
	SystemID string
	Timeline int32
	// Fence, when set, is the slot the batch's stream rows (events,
	// rejections and SLA timer changes with a commit position, the
	// checkpoint) were read from,
	// on SystemID's Timeline: the batch first locks that slot's
	// checkpoint row and is refused whole (ErrTimelineMoved) when a
	// failover's rewind moved the checkpoint back to a fork on a newer
	// timeline and the batch reaches the fork (streamEnd).
	Fence string
}

// Empty reports whether the batch writes nothing.
func (b *Batch) Empty() bool {
	return len(b.Events)+len(b.Deliveries)+len(b.Attempts)+len(b.Updates)+len(b.Subs)+len(b.Notifications)+len(b.Rejections)+len(b.Release)+len(b.Timers) == 0 && b.Slot == ""
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nullInt(n int) *int32 {
	if n == 0 {
		return nil
	}
	v := int32(n)
	return &v
}

// nullTimeline is a checkpoint's timeline as the journal keeps it: NULL
// when unknown.
func nullTimeline(tli int32) *int32 {
	if tli == 0 {
		return nil
	}
	return &tli
}

func nullText(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Write records a batch in one transaction and one round trip: each kind
// of row is one statement over arrays (unnest), so the cost grows with
// the bytes, not with the number of rows. Inserts ignore rows already
// there (a replay after a crash), but for a delivery's outcome merged into
// its insert, which applies when it raises the attempt count as an update
// does: Write is idempotent.
func (s *Store) Write(ctx context.Context, b *Batch) error {
	if b.Empty() {
		return nil
	}
	a := encoders.Get().(*arrays)
	defer func() {
		if cap(a.buf) <= maxKeptArrays {
			encoders.Put(a)
		}
	}()
	// Plain inserts first: ON CONFLICT costs every row a speculative
	// insertion, and conflicts only happen when the stream replays what a
	// crashed process had journaled. A conflict aborts the whole batch,
	// which is then written again, idempotently.
	err := s.run(ctx, s.batch(b, "", a))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		err = s.run(ctx, s.batch(b, " ON CONFLICT DO NOTHING", a))
	}
	if errors.As(err, &pgErr) && pgErr.Code == fenceRefused {
		return fmt.Errorf("journal: stream batch refused: %w (%s); this process stops, and its restart judges the server it finds from the checkpoint", ErrTimelineMoved, pgErr.Message)
	}
	if err != nil {
		return fmt.Errorf("journal: write batch: %w", err)
	}
	return nil
}

// ErrTimelineMoved refuses a batch of the stream read past a failover's
// fork on the old timeline (Batch.Fence): another process's start moved
// the checkpoint back to the fork, and what this process read of the old
// timeline past it must not be journaled. It does not pass with a retry:
// the process stops, and its restart judges the server it finds then.
var ErrTimelineMoved = errors.New("another dzhook's start after a failover moved the slot's checkpoint back to where the new timeline forked")

// fenceRefused is the SQLSTATE of the journal's stream_fences refusal.
const fenceRefused = "DZ001"

// streamEnd is the highest commit position among b's rows the stream
// read (0: none; an SLA clock's or a test's event has none).
func (b *Batch) streamEnd() pglogrepl.LSN {
	var end pglogrepl.LSN
	if b.Slot != "" {
		end = b.Checkpoint
	}
	for i := range b.Events {
		end = max(end, b.Events[i].CommitLSN)
	}
	for i := range b.Rejections {
		end = max(end, b.Rejections[i].CommitLSN)
	}
	for i := range b.Timers {
		// A batch of timer changes alone (their commit in a later batch,
		// behind a held delivery) reached them: unfenced, the lost
		// branch's moves and deletions cancelled the new server's timers
		// (found by a review).
		end = max(end, b.Timers[i].CommitLSN)
	}
	return end
}

// fenced reports whether b carries rows the stream read, which a
// recorded rewind of the checkpoint fences.
func (b *Batch) fenced() bool {
	return b.Fence != "" && b.SystemID != "" && b.Timeline != 0 && b.streamEnd() != 0
}

// encoders keeps the batches' array buffers for the next batch; one
// that grew past maxKeptArrays (a batch of large bodies) is left to the
// collector.
var encoders = sync.Pool{New: func() any { return new(arrays) }}

const maxKeptArrays = 8 << 20

// statement is one statement of a batch: its arguments, which pgx
// encodes, or its parameters already encoded in binary (arrays).
type statement struct {
	sql    string
	args   []any
	params [][]byte
	// clock, when set, is called once the connection is ready, just
	// before any argument is encoded: it reads the clock into arguments
	// (changeAge) as late as the batch allows.
	clock func()
}

// statements is what a batch sends, in order.
type statements struct{ list []statement }

// Queue adds a statement whose arguments pgx encodes.
func (st *statements) Queue(sql string, args ...any) {
	st.list = append(st.list, statement{sql: sql, args: args})
}

// add adds a statement whose parameters are the arrays written in a
// since the last add.
func (st *statements) add(sql string, a *arrays) {
	st.list = append(st.list, statement{sql: sql, params: a.take()})
}

var binaryFormat = []int16{pgx.BinaryFormatCode}

// run sends stmts as one pipeline ending in one Sync, which PostgreSQL
// runs as one implicit transaction: all or nothing, in one round trip.
// Each statement is prepared once per connection (pgx keeps it by its
// SQL). Everything is encoded before the first byte is sent, so an
// argument pgx cannot encode fails the batch with nothing of it sent
// (the connection is then closed, as after any error but a conflict).
func (s *Store) run(ctx context.Context, stmts []statement) (err error) {
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	conn := c.Conn()
	defer func() {
		var pgErr *pgconn.PgError
		if err == nil || errors.As(err, &pgErr) && pgErr.Code == "23505" || conn.IsClosed() {
			return
		}
		// What failed may be a statement prepared on this connection: a
		// newer process's migration changed a parameter's type, a pooler
		// dropped it. pgx keeps prepared statements for the connection's
		// life (pgx.Batch's cache dropped a failed batch's), so the
		// connection goes, and the writer's next try prepares on another.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	descs := make([]*pgconn.StatementDescription, len(stmts))
	built := make([]*pgx.ExtendedQueryBuilder, len(stmts))
	for i, st := range stmts {
		sd, err := conn.Prepare(ctx, st.sql, st.sql)
		if err != nil {
			return fmt.Errorf("%s: %w", firstLine(st.sql), err)
		}
		descs[i] = sd
	}
	// After the preparing (a round trip each on a new connection, one
	// after an outage): what reads the clock reads it now.
	for _, st := range stmts {
		if st.clock != nil {
			st.clock()
		}
	}
	for i, st := range stmts {
		if st.params == nil {
			eqb := new(pgx.ExtendedQueryBuilder)
			if err := eqb.Build(conn.TypeMap(), descs[i], st.args); err != nil {
				return fmt.Errorf("%s: %w", firstLine(st.sql), err)
			}
			built[i] = eqb
		}
	}
	reserve(conn.PgConn(), pipelineSize(stmts, built))
	p := conn.PgConn().StartPipeline(ctx)
	for i, st := range stmts {
		if eqb := built[i]; eqb != nil {
			p.SendQueryStatement(descs[i], eqb.ParamValues, eqb.ParamFormats, eqb.ResultFormats)
		} else {
			p.SendQueryStatement(descs[i], st.params, binaryFormat, nil)
		}
	}
	if err := p.Sync(); err != nil {
		p.Close()
		return err
	}
	var first error
	for range stmts {
		res, err := p.GetResults()
		if err != nil {
			first = err
			break
		}
		rr, ok := res.(*pgconn.ResultReader)
		if !ok {
			first = fmt.Errorf("unexpected pipeline result %T", res)
			break
		}
		if _, err := rr.Close(); err != nil {
			first = err
			break
		}
	}
	if err := p.Close(); first == nil {
		first = err
	}
	return first
}

// firstLine is the start of a statement, to name it in an error.
func firstLine(sql string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(sql), "\n")
	return line
}

// batch builds the statements of a Write; onConflict is appended to its
// inserts. The inserts of events, deliveries and attempts, which carry a
// row per event at catch-up, have their arrays encoded in a (arrays.go).
func (s *Store) batch(b *Batch, onConflict string, a *arrays) []statement {
	a.reset()
	var batch statements
	if b.fenced() {
		// First, so that its row lock orders the batch against a start's
		// RewindCheckpoint (which locks the same row): the rewind's check
		// sees a batch that locked first, and one after it is refused
		// whole instead of journaling the old timeline's events past the
		// fork. The function is evaluated again on the row's newest
		// version once a waited-for lock is granted (READ COMMITTED).
		// The version-19 pair too: a rewind a version-19 start made
		// after this version's migration (its own ran just before) is
		// there alone (found by a review).
		batch.Queue(s.q(`SELECT {{schema}}.stream_fences(rewinds_timeline, rewinds_at, $3, $4), {{schema}}.stream_fence(rewound_timeline, rewound_at, $3, $4) FROM {{schema}}.checkpoints
			WHERE slot = $1 AND system_id = $2 FOR NO KEY UPDATE`), b.Fence, b.SystemID, b.Timeline, int64(b.streamEnd()))
	}
	if n := len(b.Events); n > 0 {
		events := b.Events
		a.column(oidText, n, func(i int) { a.text(events[i].ID) })
		a.column(oidText, n, func(i int) { a.text(events[i].Type) })
		a.column(oidBytea, n, func(i int) { a.bytes(events[i].Body) })
		a.column(oidInt8, n, func(i int) {
			if lsn := events[i].CommitLSN; lsn != 0 {
				a.int8(int64(lsn))
			} else {
				a.null()
			}
		})
		a.column(oidTimestamptz, n, func(i int) { a.timestamptz(events[i].OccurredAt) })
		batch.add(s.q(`INSERT INTO {{schema}}.events (id, type, body, commit_lsn, occurred_at)
			SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[], $5::timestamptz[])`)+onConflict, a)
	}
	if n := len(b.Deliveries); n > 0 {
		deliveries, conflict := b.Deliveries, onConflict
		if onConflict != "" {
			// A delivery already journaled (the stream replayed its
			// transaction) may come with the outcome of a later attempt
			// merged in (journal.Writer: a held row takes the next
			// outcome of its delivery, and an update in the batch of its
			// insert goes into it), possibly one that this process
			// claimed and made: the outcome applies as an update would,
			// when it raises the attempt count. Ignored, it left the
			// delivery pending and owned by a live process that no
			// longer has it in memory, claimable by nobody.
			deliveries = latestAttempts(b.Deliveries)
			conflict = ` ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, attempts = EXCLUDED.attempts,
				next_attempt_at = EXCLUDED.next_attempt_at, owner = EXCLUDED.owner, last_status = EXCLUDED.last_status,
				last_error = EXCLUDED.last_error, last_attempt_at = EXCLUDED.last_attempt_at, manual = false,
				body = coalesce(d.body, EXCLUDED.body), updated_at = now()
			WHERE d.attempts < EXCLUDED.attempts`
		}
		n := len(deliveries)
		a.column(oidText, n, func(i int) { a.text(deliveries[i].ID) })
		a.column(oidText, n, func(i int) { a.text(deliveries[i].EventID) })
		a.column(oidText, n, func(i int) { a.text(deliveries[i].SubscriptionID) })
		a.column(oidText, n, func(i int) { a.text(deliveries[i].EventType) })
		a.column(oidText, n, func(i int) { a.text(string(deliveries[i].State)) })
		a.column(oidInt4, n, func(i int) { a.int4(int32(deliveries[i].Attempts)) })
		a.column(oidTimestamptz, n, func(i int) { a.timestamptzOrNull(deliveries[i].NextAttemptAt) })
		a.column(oidText, n, func(i int) { a.textOrNull(deliveries[i].Owner) })
		a.column(oidBool, n, func(i int) { a.bool(deliveries[i].Test) })
		a.column(oidInt4, n, func(i int) { a.int4OrNull(deliveries[i].LastStatus) })
		a.column(oidText, n, func(i int) { a.textOrNull(deliveries[i].LastError) })
		a.column(oidTimestamptz, n, func(i int) { a.timestamptzOrNull(deliveries[i].LastAttemptAt) })
		a.column(oidTimestamptz, n, func(i int) { a.timestamptz(deliveries[i].CreatedAt) })
		a.column(oidText, n, func(i int) {
			if d := &deliveries[i]; d.Ordered {
				a.text(d.OrderingKey)
			} else {
				a.null()
			}
		})
		a.column(oidInt8, n, func(i int) {
			if d := &deliveries[i]; d.Ordered {
				a.int8(d.Position)
			} else {
				a.null()
			}
		})
		a.column(oidBytea, n, func(i int) { a.bytes(deliveries[i].Body) })
		batch.add(s.q(`INSERT INTO {{schema}}.deliveries AS d (id, event_id, subscription_id, event_type, state, attempts,
				next_attempt_at, owner, test, last_status, last_error, last_attempt_at, created_at, ordering_key, position, body, updated_at)
			SELECT u.*, now() FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
				$7::timestamptz[], $8::text[], $9::bool[], $10::int[], $11::text[], $12::timestamptz[], $13::timestamptz[],
				$14::text[], $15::bigint[], $16::bytea[]) AS u`)+conflict, a)
	}
	if n := len(b.Attempts); n > 0 {
		attempts := b.Attempts
		a.column(oidText, n, func(i int) { a.text(attempts[i].DeliveryID) })
		a.column(oidInt4, n, func(i int) { a.int4(int32(attempts[i].Attempt)) })
		a.column(oidTimestamptz, n, func(i int) { a.timestamptz(attempts[i].At) })
		a.column(oidText, n, func(i int) { a.text(string(attempts[i].Trigger)) })
		a.column(oidInt4, n, func(i int) { a.int4OrNull(attempts[i].StatusCode) })
		a.column(oidInt4, n, func(i int) { a.int4(int32(attempts[i].Duration.Milliseconds())) })
		a.column(oidBytea, n, func(i int) { a.bytes(attempts[i].ResponseBody) })
		a.column(oidText, n, func(i int) { a.textOrNull(attempts[i].ErrorClass) })
		a.column(oidText, n, func(i int) { a.textOrNull(attempts[i].Error) })
		a.column(oidText, n, func(i int) { a.textOrNull(attempts[i].Instance) })
		a.column(oidText, n, func(i int) { a.textOrNull(attempts[i].Unless) })
		batch.add(s.q(`INSERT INTO {{schema}}.attempts (delivery_id, attempt, at, trigger, status_code, duration_ms, response_body, error_class, error, instance)
			SELECT u.delivery_id, u.attempt, u.at, u.trigger, u.status_code, u.duration_ms, u.response_body, u.error_class, u.error, u.instance
			  FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::text[], $5::int[], $6::int[], $7::bytea[], $8::text[], $9::text[], $10::text[], $11::text[])
				AS u(delivery_id, attempt, at, trigger, status_code, duration_ms, response_body, error_class, error, instance, unless)
			 WHERE u.unless IS NULL OR NOT EXISTS (SELECT 1 FROM {{schema}}.deliveries d WHERE d.id = u.delivery_id AND d.owner <> u.unless)`)+onConflict, a)
	}
	if n := len(b.Updates); n > 0 {
		ids, states := make([]string, n), make([]string, n)
		attempts := make([]int32, n)
		next, lastAt := make([]*time.Time, n), make([]*time.Time, n)
		owners, lastErr, unless := make([]*string, n), make([]*string, n), make([]*string, n)
		lastStatus := make([]*int32, n)
		bodies := make([][]byte, n)
		for i, u := range b.Updates {
			ids[i], states[i], attempts[i], bodies[i] = u.ID, string(u.State), int32(u.Attempts), u.Body
			next[i], lastAt[i] = nullTime(u.NextAttemptAt), nullTime(u.LastAttemptAt)
			owners[i], lastErr[i], lastStatus[i] = nullText(u.Owner), nullText(u.LastError), nullInt(u.LastStatus)
			unless[i] = nullText(u.Unless)
		}
		// An update only ever raises the attempt count: a late result of
		// an attempt another instance took over (and made with the same
		// number) must not undo the one already recorded. One made while
		// its instance's heartbeat was stale (Unless) is not applied
		// while another instance owns the delivery: that one is making
		// the same attempt, and its outcome is the one that counts.
		batch.Queue(s.q(`UPDATE {{schema}}.deliveries d SET state = u.state, attempts = u.attempts, next_attempt_at = u.next,
				owner = u.owner, last_status = u.status, last_error = u.err, last_attempt_at = u.at, manual = false,
				body = coalesce(d.body, u.body), updated_at = now()
			FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::text[], $6::int[], $7::text[], $8::timestamptz[], $9::bytea[], $10::text[])
				AS u(id, state, attempts, next, owner, status, err, at, body, unless)
			WHERE d.id = u.id AND d.attempts < u.attempts AND (u.unless IS NULL OR d.owner IS NULL OR d.owner = u.unless)`),
			ids, states, attempts, next, owners, lastStatus, lastErr, lastAt, bodies, unless)
	}
	var changeAges map[string]*int64 // by subscription: changeAge of its state row, read by run
	if n := len(b.Subs); n > 0 {
		// One statement for every subscription of the batch, its rows
		// locked in id order: processes sharing the journal update the
		// same subscriptions' health, and two batches taking the rows in
		// opposite orders deadlocked (the batch is retried, but the
		// writer's error ended the replication session).
		subs := slices.SortedFunc(slices.Values(b.Subs), func(x, y SubscriptionState) int { return strings.Compare(x.ID, y.ID) })
		ids, states, changed := make([]string, n), make([]string, n), make([]bool, n)
		success, failure := make([]*time.Time, n), make([]*time.Time, n)
		status, lastErr := make([]*int32, n), make([]*string, n)
		ages := make([]int64, n)
		changeAges = make(map[string]*int64, n)
		for i, st := range subs {
			ids[i], states[i], changed[i] = st.ID, string(st.State), st.Changed
			success[i], failure[i] = nullTime(st.LastSuccessAt), nullTime(st.LastFailureAt)
			status[i], lastErr[i] = nullInt(st.LastStatus), nullText(st.LastError)
			changeAges[st.ID] = &ages[i]
		}
		batch.Queue(s.q(`INSERT INTO {{schema}}.subscriptions AS s (id, state, state_changed_at, last_success_at, last_failure_at, last_status, last_error, updated_at)
			SELECT u.id, u.state, CASE WHEN u.changed THEN now() - u.age * interval '1 microsecond' END, u.success, u.failure, u.status, u.err, now()
			FROM unnest($1::text[], $2::text[], $3::bool[], $4::timestamptz[], $5::timestamptz[], $6::int[], $7::text[], $8::bigint[])
				AS u(id, state, changed, success, failure, status, err, age)
			ORDER BY u.id
			ON CONFLICT (id) DO UPDATE SET
				-- The journal's state is the last transition any process
				-- made (a row that only reports attempts leaves it alone;
				-- the processes adopt it, Dispatcher.syncFlags), by the
				-- time it was made (SubscriptionState.ChangedAt): one made
				-- before the journal's last change (its batch waited for
				-- this row's lock, or was retried) does not undo that
				-- change. A disabled subscription stays disabled until a
				-- resume (SetState): a process that has not yet learned of
				-- the 410 must not re-enable it. A disable beats any
				-- failing/healthy change, made before or after it, and
				-- loses only to a resume made after it (resumed_at).
				state = CASE WHEN `+subscriptionChangeTakes+` THEN EXCLUDED.state ELSE s.state END,
				-- Changed when the journal's state changes: another
				-- process may have recorded the same transition first.
				state_changed_at = CASE WHEN `+subscriptionChangeTakes+` AND EXCLUDED.state <> s.state
					THEN EXCLUDED.state_changed_at ELSE s.state_changed_at END,
				-- The last answer is the latest one by its time, not by
				-- its write: processes sharing the journal write their
				-- answers in batches that may arrive in either order, and
				-- a success written after a later failure of another
				-- process's left the row saying failing with the success's
				-- 200, which every process then adopted (found by
				-- TestAdoptedFailingIsExplained under load). A row without
				-- an answer's time takes its status as before.
				last_success_at = greatest(EXCLUDED.last_success_at, s.last_success_at),
				last_failure_at = greatest(EXCLUDED.last_failure_at, s.last_failure_at),
				last_status = CASE WHEN coalesce(greatest(EXCLUDED.last_success_at, EXCLUDED.last_failure_at) >= greatest(s.last_success_at, s.last_failure_at), true)
					THEN coalesce(EXCLUDED.last_status, s.last_status) ELSE s.last_status END,
				last_error = CASE WHEN coalesce(EXCLUDED.last_failure_at >= s.last_failure_at, true)
					THEN coalesce(EXCLUDED.last_error, s.last_error) ELSE s.last_error END,
				updated_at = now()`),
			ids, states, changed, success, failure, status, lastErr, ages)
		batch.list[len(batch.list)-1].clock = func() {
			for i, st := range subs {
				ages[i] = changeAge(st)
			}
		}
	}
	// Transitions per subscription in this batch: one is told when it
	// changed the journal's state; several (a flap within one batch, the
	// writer keeping one state row per subscription) are all told, as
	// this process saw them.
	var transitions map[string]int
	if len(b.Notifications) > 0 {
		transitions = map[string]int{}
	}
	for _, n := range b.Notifications {
		if _, ok := notifiedState[n.Kind]; ok && n.SubscriptionID != "" {
			transitions[n.SubscriptionID]++
		}
	}
	for _, n := range b.Notifications {
		if state, ok := notifiedState[n.Kind]; ok && n.SubscriptionID != "" && transitions[n.SubscriptionID] == 1 {
			// A subscription's state change is told once, by the process
			// whose batch changed the journal's state (the statement
			// above, in this transaction: the same now() and age give
			// the same change time). Two processes that saw the same
			// receiver fail each reported the transition, and one whose
			// transition came too late (above) reported one the
			// journal did not take.
			batch.Queue(s.q(`INSERT INTO {{schema}}.notifications (subscription_id, kind, body)
				SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM {{schema}}.subscriptions
					WHERE id = $1 AND state = $4 AND state_changed_at = now() - $5 * interval '1 microsecond')`),
				n.SubscriptionID, n.Kind, n.Body, state, notifiedAge(changeAges, n.SubscriptionID))
			continue
		}
		batch.Queue(s.q(`INSERT INTO {{schema}}.notifications (subscription_id, kind, body) VALUES ($1, $2, $3)`), n.SubscriptionID, n.Kind, n.Body)
	}
	for _, r := range b.Rejections {
		var lsn, ordinal *int64
		if r.CommitLSN != 0 {
			l, o := int64(r.CommitLSN), int64(r.Ordinal)
			lsn, ordinal = &l, &o
		}
		// Once per change: its transaction is streamed again after a
		// crash before its commit was checkpointed.
		batch.Queue(s.q(`INSERT INTO {{schema}}.rejections (source, reason, commit_lsn, ordinal) VALUES ($1, $2, $3, $4)
			ON CONFLICT (commit_lsn, ordinal) WHERE ordinal IS NOT NULL DO NOTHING`), r.Source, r.Reason, lsn, ordinal)
	}
	s.queueTimers(&batch, b.Timers, nil)
	for _, r := range b.Release {
		batch.Queue(s.q(`UPDATE {{schema}}.deliveries SET owner = NULL WHERE id = ANY($1) AND owner = $2 AND state = 'pending'`), r.IDs, r.Owner)
	}
	if b.Slot != "" {
		// Within one cluster the checkpoint never moves back, and keeps
		// the timeline of the position it keeps; a checkpoint of another
		// cluster is replaced. A position read on an older timeline than
		// the checkpoint's changes nothing (one past a rewind's fork is
		// refused before, by the fence): a process that read the old
		// primary wrote it after another's start moved the checkpoint
		// back to the fork (RewindCheckpoint), and the new timeline's
		// transactions up to it were skipped as journaled; or after a
		// process on the new timeline moved it on.
		batch.Queue(s.q(`INSERT INTO {{schema}}.checkpoints AS c (slot, lsn, end_lsn, system_id, timeline, updated_at) VALUES ($1, $2, $3, $4, $5, now())
			ON CONFLICT (slot) DO UPDATE SET
				lsn = CASE WHEN c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id OR c.system_id IS NULL
					THEN greatest(c.lsn, EXCLUDED.lsn) ELSE EXCLUDED.lsn END,
				end_lsn = CASE WHEN c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id OR c.system_id IS NULL
					THEN greatest(c.end_lsn, EXCLUDED.end_lsn) ELSE EXCLUDED.end_lsn END,
				timeline = CASE WHEN (c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id OR c.system_id IS NULL) AND c.lsn > EXCLUDED.lsn
					THEN c.timeline ELSE EXCLUDED.timeline END,
				restored_below = CASE WHEN c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id THEN c.restored_below END,
				rewound_timeline = CASE WHEN c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id THEN c.rewound_timeline END,
				rewound_at = CASE WHEN c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id THEN c.rewound_at END,
				rewinds_timeline = CASE WHEN c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id THEN c.rewinds_timeline END,
				rewinds_at = CASE WHEN c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id THEN c.rewinds_at END,
				system_id = EXCLUDED.system_id, updated_at = now()
			WHERE NOT (c.system_id IS NOT DISTINCT FROM EXCLUDED.system_id AND coalesce(EXCLUDED.timeline < c.timeline, false))`),
			b.Slot, int64(b.Checkpoint), int64(max(b.Checkpoint, b.CheckpointEnd)), nullText(b.SystemID), nullTimeline(b.Timeline))
	}
	return batch.list
}

// subscriptionChangeTakes is the condition under which a state row's
// change (EXCLUDED) becomes the journal's (s): nothing undoes a disable
// but a resume (SetState); a disable takes unless an operator resumed
// the subscription after it was made; a failing/healthy change takes
// unless the journal's last change was made after it.
const subscriptionChangeTakes = `(s.state <> 'disabled' AND EXCLUDED.state_changed_at IS NOT NULL AND CASE
					WHEN EXCLUDED.state = 'disabled' THEN EXCLUDED.state_changed_at >= coalesce(s.resumed_at, '-infinity')
					ELSE EXCLUDED.state_changed_at >= coalesce(s.state_changed_at, '-infinity') END)`

// changeAge is how long ago st's change was made, in microseconds, as
// the batch that records it is sent (0 for no change, or no time).
func changeAge(st SubscriptionState) int64 {
	if !st.Changed || st.ChangedAt.IsZero() {
		return 0
	}
	return max(0, time.Since(st.ChangedAt).Microseconds())
}

// notifiedAge is the age its notification's check compares with: the
// one the state's statement records (a pointer, read when run reads the
// clock), or 0 with no state row in the batch.
func notifiedAge(ages map[string]*int64, subscription string) any {
	if a, ok := ages[subscription]; ok {
		return a
	}
	return int64(0)
}

// notifiedState is the subscription state each kind of notification
// tells of.
var notifiedState = map[string]string{"failing": string(Failing), "recovered": string(Healthy), "disabled": string(Disabled)}

// latestAttempts keeps one row per delivery, the one with the most
// attempts (the first of equals), in their order: an INSERT ... ON
// CONFLICT DO UPDATE may not touch a row twice.
func latestAttempts(rows []DeliveryRow) []DeliveryRow {
	at := make(map[string]int, len(rows))
	out := make([]DeliveryRow, 0, len(rows))
	for _, d := range rows {
		i, ok := at[d.ID]
		switch {
		case !ok:
			at[d.ID] = len(out)
			out = append(out, d)
		case d.Attempts > out[i].Attempts:
			out[i] = d
		}
	}
	return out
}

// Text is s as the journal's text columns take it: valid UTF-8, without
// NUL (PostgreSQL refuses it, and the writer would retry the batch that
// holds it for ever, acknowledging nothing after it), and at most max
// bytes, cut between two characters with "…" added. For text that comes
// from outside (an answer's error, a rejected row's reason).
func Text(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", `\u0000`)
	}
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
