package journal

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dzdesk/dzhook/internal/ids"
)

// Errors the admin API turns into status codes.
var (
	// ErrNotFound: no such delivery.
	ErrNotFound = errors.New("not found")
	// ErrBusy: a live instance is attempting the delivery right now.
	ErrBusy = errors.New("an attempt of this delivery is in flight")
	// ErrHeld: a manual retry of a delivery held while its subscription
	// is paused.
	ErrHeld = errors.New("the delivery is held while its subscription is paused: resume the subscription and it is sent in its turn")
	// ErrEarlierSubscription: the delivery belongs to a deleted runtime
	// subscription whose id a new one took; the new one does not retry
	// it (its URL and secret are another receiver's).
	ErrEarlierSubscription = errors.New("the delivery belongs to a deleted subscription whose id was created again; it is not retried to the new one")
	// ErrBadCursor: the cursor was not made by ListDeliveries.
	ErrBadCursor = errors.New("invalid cursor")
)

// TookTooLong reports whether PostgreSQL cancelled a statement of the
// journal (SQLSTATE 57014, query_canceled): a statement_timeout the
// journal's role or database carries, or the caller's context ended
// (Open's pool cancels the statement in the server, and the error is the
// server's, not the context's). The journal answers, slowly.
func TookTooLong(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == queryCanceled
}

// queryCanceled is the SQLSTATE of a statement cancelled by
// statement_timeout or a cancel request.
const queryCanceled = "57014"

// Delivery is a delivery as the history shows it.
type Delivery struct {
	ID            string
	EventID       string
	Event         string
	Subscription  string
	State         State
	Attempts      int
	NextAttemptAt *time.Time
	InFlight      bool
	Test          bool
	LastStatus    *int
	LastError     *string
	LastAttemptAt *time.Time
	CreatedAt     time.Time
	UpdatedAt     time.Time
	// OrderingKey is the key of an ordered delivery (nil: unordered).
	OrderingKey *string
	// Position orders the deliveries of one key.
	Position *int64
	// ReplayID is the replay that made the delivery (nil: the stream or
	// an operator's test did).
	ReplayID *string
	// Sent is the delivery's own body, when it sends one (a transform's
	// result); nil: its event's. Only GetDelivery reads it.
	Sent []byte
	// WaitingBehind is, for a pending ordered delivery that is not its
	// key's head, the delivery it waits for (see GetDelivery); nil
	// otherwise. Only GetDelivery reads it.
	WaitingBehind  *string
	owner          *string
	nextAttemptRaw *time.Time
}

// Attempt is one attempt as the history shows it.
type Attempt struct {
	Attempt      int
	At           time.Time
	Trigger      Trigger
	StatusCode   *int
	DurationMS   int
	ResponseBody []byte
	ErrorClass   *string
	Error        *string
	// Instance is the id of the dzhook instance that made the attempt
	// (nil: unknown, an attempt journaled before version 10).
	Instance *string
}

// DeliveryFilter selects deliveries for the history.
type DeliveryFilter struct {
	// Subscriptions to search besides those with deliveries in the
	// journal, when Subscription is empty.
	Subscriptions []string
	Subscription  string
	// Departed: Subscription does not run (deleted, or removed from
	// config.yaml); its history is listed if the journal has any, else
	// ErrNoHistory.
	Departed bool
	State    State
	Event    string
	// OrderingKey: only the deliveries of this ordering key, as stored
	// (a replay's deliveries carry "replay:<replay id>:" before the
	// entity's key); "" is no filter.
	OrderingKey string
	// Since and Until bound the deliveries' creation to [Since, Until);
	// nil is no bound (the zero time is a bound like any other).
	Since, Until *time.Time
	Limit        int
	Cursor       string
}

const deliveryColumns = `d.id, d.event_id, d.event_type, d.subscription_id, d.state, d.attempts, d.next_attempt_at, d.owner, d.test,
	d.last_status, d.last_error, d.last_attempt_at, d.created_at, d.updated_at, d.ordering_key, d.position, d.replay_id`

// scanDelivery reads deliveryColumns, then into more, the columns after
// them.
func scanDelivery(r pgx.Row, more ...any) (Delivery, error) {
	var d Delivery
	var status *int32
	err := r.Scan(append([]any{&d.ID, &d.EventID, &d.Event, &d.Subscription, &d.State, &d.Attempts, &d.nextAttemptRaw, &d.owner, &d.Test,
		&status, &d.LastError, &d.LastAttemptAt, &d.CreatedAt, &d.UpdatedAt, &d.OrderingKey, &d.Position, &d.ReplayID}, more...)...)
	if status != nil {
		v := int(*status)
		d.LastStatus = &v
	}
	if d.State == Pending {
		d.NextAttemptAt = d.nextAttemptRaw
		d.InFlight = d.owner != nil
	}
	return d, err
}

// ErrNoHistory: a subscription that does not run has no deliveries in the
// journal.
var ErrNoHistory = errors.New("no such subscription")

// ListDeliveries returns deliveries newest first, and the cursor of the
// next page ("" on the last one). Without a subscription filter it merges
// the newest rows of each subscription with deliveries in the journal
// (one index scan each): those of f.Subscriptions, and those of
// subscriptions deleted or removed from config.yaml, which stay in the
// history (a delete's cancelled deliveries with their reason), found by
// a skip scan of the history index (one probe per subscription). With an
// ordering key, each subscription's rows of that key are read from the
// key's index (deliveries_key_history), not picked out of its history.
func (s *Store) ListDeliveries(ctx context.Context, f DeliveryFilter) ([]Delivery, string, error) {
	if f.Departed && f.Subscription != "" {
		var known bool
		if err := s.pool.QueryRow(ctx, s.q(`SELECT EXISTS (SELECT 1 FROM {{schema}}.deliveries WHERE subscription_id = $1)`), f.Subscription).Scan(&known); err != nil {
			return nil, "", fmt.Errorf("list deliveries: %w", err)
		}
		if !known {
			return nil, "", ErrNoHistory
		}
	}
	var curAt *time.Time
	var curID *string
	if f.Cursor != "" {
		at, id, err := decodeCursor(f.Cursor)
		if err != nil {
			return nil, "", err
		}
		curAt, curID = &at, &id
	}
	sql, args, err := listDeliveriesQuery(f, curAt, curID)
	if err != nil {
		return nil, "", err
	}
	var list []Delivery
	read := func(q *pgx.QueuedQuery) {
		q.Query(func(rows pgx.Rows) error {
			var err error
			list, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Delivery, error) { return scanDelivery(r) })
			return err
		})
	}
	// Without JIT, as Claim: a listing of a rare filter is costed high
	// enough for JIT compilation, which took 400 ms of a 7 ms read.
	if err := s.noJIT(ctx, read, s.q(sql), args...); err != nil {
		return nil, "", fmt.Errorf("list deliveries: %w", err)
	}
	next := ""
	if len(list) > f.Limit {
		list = list[:f.Limit]
		last := list[len(list)-1]
		next = encodeCursor(last.CreatedAt, last.ID)
	}
	return list, next, nil
}

// listDeliveriesQuery writes ListDeliveries' statement and its
// arguments, with a condition for each filter given and none for the
// others, each its own parameter. pgx prepares a statement once per
// connection, and after five runs PostgreSQL may plan it generically,
// for any value: in a statement written for every filter ("$2 IS NULL OR
// x.state = $2"), a plan made so bounds its index scans by none of them,
// and after a rare filter's expensive runs the dashboard's default view
// (the last 24 hours) read every subscription's whole history on that
// connection, 0.2–0.9 s instead of 5 ms (found by a review). Written so,
// each combination of filters is a statement of its own, with a plan of
// its own (TestListingPlansAreBoundedByTheirFilters,
// TestListingPlanSurvivesARareFilter).
//
// The state is written as a literal, not a parameter: PostgreSQL uses a
// partial index on states (deliveries_state_history, deliveries_held,
// deliveries_due) only when it can prove the index's predicate from the
// statement, which a generic plan's "x.state = $2" does not give.
//
// One subscription is read from itself, not through the skip scan of
// every subscription's: that one's estimate (a hundred subscriptions,
// each read in full for a rare filter) costed the statement high enough
// for JIT compilation, 415 ms of a 7 ms read.
func listDeliveriesQuery(f DeliveryFilter, curAt *time.Time, curID *string) (string, []any, error) {
	args := []any{f.Limit + 1}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	var with, from string
	if f.Subscription != "" {
		from = `(SELECT ` + arg(f.Subscription) + `::text) AS sub(id)`
	} else {
		// Every subscription with deliveries in the journal (a skip scan of
		// deliveries_sub_history, one probe each), and those asked for.
		with = `WITH RECURSIVE known AS (
			(SELECT subscription_id AS id FROM {{schema}}.deliveries ORDER BY subscription_id LIMIT 1)
			UNION ALL
			SELECT (SELECT x.subscription_id FROM {{schema}}.deliveries x WHERE x.subscription_id > known.id ORDER BY x.subscription_id LIMIT 1)
			  FROM known WHERE known.id IS NOT NULL
		), subs AS (SELECT id FROM known WHERE id IS NOT NULL UNION SELECT unnest(` + arg(f.Subscriptions) + `::text[]))`
		from = `subs AS sub(id)`
	}
	var cond strings.Builder
	if f.OrderingKey != "" {
		cond.WriteString(" AND x.ordering_key = " + arg(f.OrderingKey))
	}
	if f.State != "" {
		if !f.State.Valid() {
			return "", nil, fmt.Errorf("list deliveries: unknown state %q", f.State)
		}
		cond.WriteString(" AND x.state = '" + string(f.State) + "'") // one of States: see above
	}
	if f.Event != "" {
		cond.WriteString(" AND x.event_type = " + arg(f.Event))
	}
	if f.Since != nil {
		cond.WriteString(" AND x.created_at >= " + arg(*f.Since))
	}
	if f.Until != nil {
		cond.WriteString(" AND x.created_at < " + arg(*f.Until))
	}
	if curAt != nil {
		cond.WriteString(" AND (x.created_at, x.id) < (" + arg(*curAt) + "::timestamptz, " + arg(*curID) + "::text)")
	}
	return with + `
		SELECT ` + deliveryColumns + ` FROM ` + from + ` CROSS JOIN LATERAL (
			SELECT * FROM {{schema}}.deliveries x
			 WHERE x.subscription_id = sub.id` + cond.String() + `
			 ORDER BY x.created_at DESC, x.id DESC LIMIT $1) d
		ORDER BY d.created_at DESC, d.id DESC LIMIT $1`, args, nil
}

func encodeCursor(at time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(at.UTC().Format(time.RFC3339Nano) + "|" + id))
}

func decodeCursor(c string) (time.Time, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return time.Time{}, "", ErrBadCursor
	}
	at, id, ok := strings.Cut(string(b), "|")
	if !ok || !ids.IsDeliveryID(id) { // a cursor no page made
		return time.Time{}, "", ErrBadCursor
	}
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return time.Time{}, "", ErrBadCursor
	}
	return t, id, nil
}

// GetDelivery returns a delivery, its event's body and every attempt.
//
// A pending ordered delivery that is not its key's head names what it
// waits for (WaitingBehind): the head it is parked behind (Park), while
// that one is unfinished, else its key's head, the first unfinished
// delivery of its subscription and key. It shows a pending delivery with
// no attempt and its head's due time as what it is, and with it the head
// an operator looks for, from any of the thousands parked behind it.
// Read in the same statement as the delivery, from the primary key and
// deliveries_order (one probe each), for a pending ordered one only.
func (s *Store) GetDelivery(ctx context.Context, id string) (Delivery, []byte, []Attempt, error) {
	var behind *string
	d, err := scanDelivery(s.pool.QueryRow(ctx, s.q(`SELECT `+deliveryColumns+`,
		CASE WHEN d.state = 'pending' AND d.ordering_key IS NOT NULL THEN coalesce(
			(SELECT p.id FROM {{schema}}.deliveries p WHERE p.id = d.parked_behind AND p.state IN ('pending', 'held')),
			(`+earlierOfKey("x.id")+`)) END
		FROM {{schema}}.deliveries d WHERE d.id = $1`), id), &behind)
	d.WaitingBehind = behind
	if errors.Is(err, pgx.ErrNoRows) {
		return d, nil, nil, ErrNotFound
	}
	if err != nil {
		return d, nil, nil, fmt.Errorf("get delivery: %w", err)
	}
	var body []byte
	if err := s.pool.QueryRow(ctx, s.q(`SELECT e.body, d.body FROM {{schema}}.deliveries d LEFT JOIN {{schema}}.events e ON e.id = d.event_id
		WHERE d.id = $1`), id).Scan(&body, &d.Sent); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return d, nil, nil, fmt.Errorf("get event: %w", err)
	}
	rows, err := s.pool.Query(ctx, s.q(`SELECT attempt, at, trigger, status_code, duration_ms, response_body, error_class, error, instance
		FROM {{schema}}.attempts WHERE delivery_id = $1 ORDER BY attempt`), id)
	if err != nil {
		return d, nil, nil, fmt.Errorf("get attempts: %w", err)
	}
	attempts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Attempt, error) {
		var a Attempt
		var status *int32
		err := r.Scan(&a.Attempt, &a.At, &a.Trigger, &status, &a.DurationMS, &a.ResponseBody, &a.ErrorClass, &a.Error, &a.Instance)
		if status != nil {
			v := int(*status)
			a.StatusCode = &v
		}
		return a, err
	})
	if err != nil {
		return d, nil, nil, fmt.Errorf("get attempts: %w", err)
	}
	return d, body, attempts, nil
}

// WaitedBehind lists, for an ordered delivery, the later deliveries of
// its key that were created while it was unfinished: those it held back
// while it waited for its retries (up to limit, in order). An unordered
// delivery held back nothing.
func (s *Store) WaitedBehind(ctx context.Context, id string, limit int) ([]string, error) {
	rows, err := s.pool.Query(ctx, s.q(`
		SELECT x.id FROM {{schema}}.deliveries d JOIN {{schema}}.deliveries x
		    ON x.subscription_id = d.subscription_id AND x.ordering_key = d.ordering_key
		 WHERE d.id = $1 AND d.ordering_key IS NOT NULL
		   AND (x.position, x.id) > (d.position, d.id) AND x.created_at >= d.created_at
		   AND x.created_at <= CASE WHEN d.state IN ('pending', 'held') THEN now() ELSE d.last_attempt_at END
		 ORDER BY x.position, x.id LIMIT $2`), id, limit)
	if err != nil {
		return nil, fmt.Errorf("deliveries that waited: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// sameSubscription is the SQL condition that a delivery (alias d) was
// made for the subscription that now has its id: a runtime subscription
// created again with a deleted one's id (CreateRuntime: RecreateAfter
// after the delete at the soonest) does not take the deleted one's
// deliveries, made before its delete. The margin leaves the creating
// host's clock (created_at) RecreateAfter of skew.
var sameSubscription = `d.created_at >= coalesce((SELECT r.created_at FROM {{schema}}.runtime_subscriptions r
		WHERE r.id = d.subscription_id AND r.deleted_at IS NULL), '-infinity') - make_interval(secs => ` + fmt.Sprint(RecreateAfter.Seconds()) + `)`

// ClaimForRetry takes one delivery for an immediate manual attempt, unless
// a live instance or owner itself is attempting it (ErrBusy; owner's own
// heartbeat, late, says nothing to owner, as in Claim). A pending delivery
// keeps its schedule; a finished one gets one more attempt. token marks
// the claim as in Claim. The state and next attempt it returns are the
// delivery's as claimed: one read before may be stale (another process
// may have finished it since). A delivery pending because a retry of
// failed deliveries (RetryFailed) made it so is no delivery on its
// schedule: its next attempt is returned nil, and this attempt is that
// retry's (kept due, a failed attempt left it pending, and the scheduler
// then took it as an automatic attempt and ran the whole schedule again:
// found by a review).
//
// Two deliveries are not taken. A held one (ErrHeld): its subscription is
// paused, and the resume sends it in its key's order. And an ordered one
// while an earlier delivery of its key is still to be made (*BehindError,
// naming that one): sent by hand, it reached the receiver before the
// events it follows, and, delivered, let its key go on without them.
func (s *Store) ClaimForRetry(ctx context.Context, id, owner, token string, staleAfter time.Duration) (Claimed, error) {
	var c Claimed
	err := s.onConn(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, s.q(`
		UPDATE {{schema}}.deliveries d SET owner = $2, claim = $4, updated_at = now()
		  FROM {{schema}}.events e
		 WHERE d.id = $1 AND e.id = d.event_id AND `+sameSubscription+`
		   AND d.state <> 'held' AND NOT EXISTS (`+earlierOfKey("1")+`)
		   AND (d.owner IS NULL OR (d.owner <> $2
		        AND d.owner NOT IN (`+liveInstances("$3 * interval '1 second'")+`)))
		RETURNING d.id, d.event_id, d.event_type, d.subscription_id, d.attempts, coalesce(d.body, e.body), d.body IS NOT NULL, d.test,
			d.state, CASE WHEN NOT d.manual THEN d.next_attempt_at END,
			CASE WHEN d.attempts = 0 THEN 0 ELSE
				(SELECT count(*) FROM {{schema}}.attempts a WHERE a.delivery_id = d.id AND a.trigger = 'manual') END`),
			id, owner, staleAfter.Seconds(), token).
			Scan(&c.ID, &c.EventID, &c.EventType, &c.SubscriptionID, &c.Attempts, &c.Body, &c.Own, &c.Test, &c.State, &c.NextAttemptAt, &c.ByHand)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		var same bool
		var state State
		var head *string
		err := s.pool.QueryRow(ctx, s.q(`SELECT `+sameSubscription+`, d.state, (`+earlierOfKey("x.id")+`)
			FROM {{schema}}.deliveries d WHERE d.id = $1`), id).Scan(&same, &state, &head)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return c, ErrNotFound
		case err != nil:
			return c, err
		case !same:
			return c, ErrEarlierSubscription
		case state == Held:
			return c, ErrHeld
		case head != nil:
			return c, &BehindError{Head: *head}
		}
		return c, ErrBusy
	}
	if err != nil {
		return c, claimFailed("claim the delivery for a manual retry", err)
	}
	c.Manual = true
	return c, nil
}

// earlierOfKey selects (sel of) the first delivery x of d's ordering key
// still to be made before d, if d has a key.
func earlierOfKey(sel string) string {
	return `SELECT ` + sel + ` FROM {{schema}}.deliveries x
		 WHERE d.ordering_key IS NOT NULL AND x.subscription_id = d.subscription_id AND x.ordering_key = d.ordering_key
		   AND x.state IN ('pending', 'held') AND (x.position, x.id) < (d.position, d.id)
		 ORDER BY x.position, x.id LIMIT 1`
}

// BehindError: a manual retry of an ordered delivery while an earlier
// delivery of its key, Head, is still to be made.
type BehindError struct{ Head string }

func (e *BehindError) Error() string {
	return "the delivery waits behind " + e.Head + ", an earlier delivery of its ordering key that is still to be made: " +
		"sent now, it would arrive before it; retry " + e.Head + " instead, and this one follows"
}

// RetryFailed makes every failed delivery of a subscription created in
// [since, until) due now (a nil bound is none), as manual retries (one
// attempt each). Deliveries
// already pending are left alone, so calling it twice sends nothing twice,
// and so are those a live instance or self (the caller's instance) is
// retrying by hand.
func (s *Store) RetryFailed(ctx context.Context, subscription string, since, until *time.Time, self string, staleAfter time.Duration) (int, error) {
	// A failed delivery a live instance owns is being retried by hand
	// right now: taking it from under that attempt would send it twice.
	// So is one self owns, whatever its heartbeat says (see Claim).
	tag, err := s.pool.Exec(ctx, s.q(retryFailedSQL), subscription, since, until, staleAfter.Seconds(), self)
	if err != nil {
		return 0, fmt.Errorf("retry failed deliveries: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// retryFailedSQL is RetryFailed's statement. Its rows are those of
// deliveries_failed, whose predicate is its condition on state and test
// (TestStateReadsUseTheirIndexes).
var retryFailedSQL = `UPDATE {{schema}}.deliveries d SET state = 'pending', next_attempt_at = now(), owner = NULL, manual = true, updated_at = now()
		WHERE subscription_id = $1 AND state = 'failed' AND NOT test AND ` + sameSubscription + `
		  AND ($2::timestamptz IS NULL OR created_at >= $2) AND ($3::timestamptz IS NULL OR created_at < $3)
		  AND (owner IS NULL OR (owner <> $5
		       AND owner NOT IN (` + liveInstances("$4 * interval '1 second'") + `)))`

// SetPaused records a subscription's pause state.
func (s *Store) SetPaused(ctx context.Context, subscription string, paused bool) error {
	_, err := s.pool.Exec(ctx, s.q(`INSERT INTO {{schema}}.subscriptions (id, paused) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()`), subscription, paused)
	return err
}

// SetState records a subscription's health (resume re-enables a disabled
// subscription).
func (s *Store) SetState(ctx context.Context, subscription string, state Health) error {
	// resumed_at: a disable made before this (its batch held up) must
	// not disable the subscription again (write.go, the state's upsert).
	_, err := s.pool.Exec(ctx, s.q(`INSERT INTO {{schema}}.subscriptions AS s (id, state, state_changed_at, resumed_at)
		VALUES ($1, $2, now(), CASE WHEN $2 <> 'disabled' THEN now() END)
		ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, state_changed_at = now(), updated_at = now(),
			resumed_at = CASE WHEN EXCLUDED.state <> 'disabled' THEN now() ELSE s.resumed_at END`), subscription, string(state))
	return err
}

// ReleaseHeld makes a subscription's held deliveries due, oldest first:
// their next attempt is set to when they were created, moved back by as
// much as the newest of them is in the journal's future. created_at is
// the clock of the process that recorded them; a host ahead of the
// journal's by ten minutes made them wait ten minutes after the resume.
//
// A subscription the journal says is paused or disabled keeps them held:
// a release asked for while it was active (at the start, or by a reload)
// may reach the journal after a pause, by this process or another, and
// released deliveries of a paused subscription would be neither held nor
// sent, and no longer counted as held.
func (s *Store) ReleaseHeld(ctx context.Context, subscription string) (int, error) {
	tag, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.deliveries d SET state = 'pending', next_attempt_at = d.created_at - m.ahead, owner = NULL, updated_at = now()
		  FROM (SELECT greatest(max(created_at) - now(), interval '0') AS ahead FROM {{schema}}.deliveries
		         WHERE subscription_id = $1 AND state = 'held') m
		WHERE d.subscription_id = $1 AND d.state = 'held'
		  AND NOT EXISTS (SELECT 1 FROM {{schema}}.subscriptions s WHERE s.id = $1 AND (s.paused OR s.state = 'disabled'))`), subscription)
	if err != nil {
		return 0, fmt.Errorf("release held deliveries: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Backlog is a subscription's work waiting in the journal.
type Backlog struct {
	Pending, Failed, Held int
	// OldestPending is when the oldest pending delivery became due.
	OldestPending time.Time
	// BlockedKeys counts the ordering keys whose head waits for a retry
	// (its first unfinished delivery is pending, already attempted, and
	// not queued for a manual retry), holding back the later deliveries
	// of its key; OldestBlocked is when the oldest of those heads was
	// created, OldestBlockedKey its key and OldestBlockedHead its id.
	BlockedKeys       int
	OldestBlocked     time.Time
	OldestBlockedKey  string
	OldestBlockedHead string
}

// blockedKeysSQL counts, per subscription, the keys whose head waits for
// a retry, with the oldest such head. A pending delivery attempted before
// that is not its key's head (a delivery made before its subscription's
// ordering changed, a failed one retried by hand after its key moved on)
// holds nothing back, and one queued for a manual retry (a retry of
// failed deliveries made every failed head of a subscription so at
// once) is sent now: counting them reported keys blocked that were not.
// The candidates are the attempted pending deliveries, few (those parked
// behind a head have no attempt), read as before; each is asked whether
// it is its key's head with one probe of deliveries_order, its key's
// first row. A LATERAL with LIMIT 1, not NOT EXISTS: PostgreSQL planned
// that as a hash anti join, which reads every unfinished ordered
// delivery, 200,000 parked behind one head included, at every metrics
// refresh (TestHistoryReadsUseTheirIndexes).
const blockedKeysSQL = `
		SELECT d.subscription_id, count(DISTINCT d.ordering_key), min(d.created_at),
		       (array_agg(d.ordering_key ORDER BY d.created_at, d.id))[1], (array_agg(d.id ORDER BY d.created_at, d.id))[1]
		  FROM {{schema}}.deliveries d CROSS JOIN LATERAL (
			SELECT x.id FROM {{schema}}.deliveries x
			 WHERE x.subscription_id = d.subscription_id AND x.ordering_key = d.ordering_key AND x.state IN ('pending', 'held')
			 ORDER BY x.position, x.id LIMIT 1) h
		 WHERE d.ordering_key IS NOT NULL AND d.state = 'pending' AND d.attempts > 0 AND NOT d.manual AND h.id = d.id
		 GROUP BY 1`

// backlogsSQL counts the pending, failed and held deliveries. The states
// are ORed, not listed with IN: PostgreSQL proves a partial index's
// predicate (state = 'pending') from an equality, not from an IN list,
// and without the indexes this read the whole table, 30 days of history,
// at every metrics refresh (TestStateReadsUseTheirIndexes). An
// operator's test sends are no deliveries of the subscription's: a failed
// one counted as failed, which a retry of failed deliveries never retries
// (found by a review). The failed deliveries, kept for the retention
// period and so the many, are counted apart, from deliveries_failed
// alone (an index-only scan: its predicate is this condition); counted
// with the others, "NOT test" and min(next_attempt_at) visited each one's
// row in the table, at every poll of GET /v1/subscriptions (found by a
// review).
const backlogsSQL = `
		SELECT subscription_id, state, count(*), min(next_attempt_at)
		  FROM {{schema}}.deliveries WHERE (state = 'pending' OR state = 'held') AND NOT test GROUP BY 1, 2
		UNION ALL
		SELECT subscription_id, 'failed', count(*), NULL
		  FROM {{schema}}.deliveries WHERE state = 'failed' AND NOT test GROUP BY 1`

// Backlogs counts, per subscription, the pending, failed and held
// deliveries (partial indexes make this cheap: those states are rare).
func (s *Store) Backlogs(ctx context.Context) (map[string]Backlog, error) {
	rows, err := s.pool.Query(ctx, s.q(backlogsSQL))
	if err != nil {
		return nil, fmt.Errorf("count backlog: %w", err)
	}
	out := map[string]Backlog{}
	for rows.Next() {
		var sub string
		var state State
		var n int
		var oldest *time.Time
		if err := rows.Scan(&sub, &state, &n, &oldest); err != nil {
			rows.Close()
			return nil, err
		}
		b := out[sub]
		switch state {
		case Pending:
			b.Pending = n
			if oldest != nil {
				b.OldestPending = *oldest
			}
		case Failed:
			b.Failed = n
		case Held:
			b.Held = n
		}
		out[sub] = b
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = s.pool.Query(ctx, s.q(blockedKeysSQL))
	if err != nil {
		return nil, fmt.Errorf("count blocked keys: %w", err)
	}
	for rows.Next() {
		var sub string
		var bl Backlog
		if err := rows.Scan(&sub, &bl.BlockedKeys, &bl.OldestBlocked, &bl.OldestBlockedKey, &bl.OldestBlockedHead); err != nil {
			rows.Close()
			return nil, err
		}
		b := out[sub]
		b.BlockedKeys, b.OldestBlocked, b.OldestBlockedKey, b.OldestBlockedHead = bl.BlockedKeys, bl.OldestBlocked, bl.OldestBlockedKey, bl.OldestBlockedHead
		out[sub] = b
	}
	return out, rows.Err()
}

// Notification is an admin notification to send.
type Notification struct {
	ID             int64
	SubscriptionID string
	Kind           string
	Body           []byte
	Attempts       int
}

// ClaimNotifications takes up to limit due notifications, leasing them
// for lease so that no other instance sends them meanwhile. A
// subscription's notifications go in the order they were made: one
// waits while an earlier one of its subscription is unsent (each backs
// off on its own, so after a notify.url outage a stale "failing" reached
// the channel after the "recovered" that followed it, and stood last),
// unless that one was given up (NotificationGivenUp). System
// notifications (no subscription) are not held back by each other.
//
// notificationGivenUp: a notification whose next try is further than
// this is given up (the notifier sets it a century ahead).
func (s *Store) ClaimNotifications(ctx context.Context, limit int, lease time.Duration) ([]Notification, error) {
	rows, err := s.pool.Query(ctx, s.q(`
		WITH due AS (SELECT id FROM {{schema}}.notifications n WHERE sent_at IS NULL AND next_attempt_at <= now()
			AND (coalesce(n.subscription_id, '') = '' OR NOT EXISTS (SELECT 1 FROM {{schema}}.notifications e
				WHERE e.sent_at IS NULL AND e.id < n.id AND e.subscription_id = n.subscription_id
				  AND e.next_attempt_at < now() + interval '`+notificationGivenUp+`'))
			ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
		UPDATE {{schema}}.notifications n SET next_attempt_at = now() + $2 * interval '1 second', attempts = n.attempts + 1
		  FROM due WHERE n.id = due.id
		RETURNING n.id, n.subscription_id, n.kind, n.body, n.attempts`), limit, lease.Seconds())
	if err != nil {
		return nil, fmt.Errorf("claim notifications: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Notification, error) {
		var n Notification
		err := r.Scan(&n.ID, &n.SubscriptionID, &n.Kind, &n.Body, &n.Attempts)
		return n, err
	})
}

const notificationGivenUp = "50 years"

// NotificationSent marks a notification sent, or failed with its next try.
func (s *Store) NotificationSent(ctx context.Context, id int64, sendErr error, next time.Time) error {
	if sendErr == nil {
		_, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.notifications SET sent_at = now(), last_error = NULL WHERE id = $1`), id)
		return err
	}
	_, err := s.pool.Exec(ctx, s.q(`UPDATE {{schema}}.notifications SET next_attempt_at = $2, last_error = $3 WHERE id = $1`), id, next, sendErr.Error())
	return err
}

// Notifications lists the latest notifications (for tests and the API).
func (s *Store) Notifications(ctx context.Context, limit int) ([]Notification, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT id, subscription_id, kind, body, attempts FROM {{schema}}.notifications ORDER BY id DESC LIMIT $1`), limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Notification, error) {
		var n Notification
		err := r.Scan(&n.ID, &n.SubscriptionID, &n.Kind, &n.Body, &n.Attempts)
		return n, err
	})
}
