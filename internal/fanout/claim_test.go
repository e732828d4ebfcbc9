package fanout

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
	"github.com/dzdesk/dzhook/signer"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func newJournal(t *testing.T) *journal.Store {
	t.Helper()
	s, _ := newJournalDB(t)
	return s
}

// newJournalDB is newJournal with its database, for tests that write or
// read the journal's tables directly.
func newJournalDB(t *testing.T) (*journal.Store, *pgtest.DB) {
	t.Helper()
	db := pgtest.NewDB(t)
	pool, err := pgxpool.New(context.Background(), db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := journal.New(pool, "dzhook")
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, db
}

// TestLostClaimAnswer: a claim whose UPDATE committed but whose answer
// never arrived (the connection broke) leaves deliveries owned by this
// live instance and in no queue. They must still go out while it runs,
// and a manual retry whose answer was lost must not leave its delivery
// busy.
func TestLostClaimAnswer(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	past := time.Now().Add(-time.Minute)
	b := &journal.Batch{}
	for _, id := range []string{"a", "b", "c", "f"} {
		d := journal.DeliveryRow{ID: "dlv_" + id, EventID: "whk_" + id, SubscriptionID: "crm", EventType: "request.created",
			State: journal.Pending, Attempts: 1, NextAttemptAt: past, CreatedAt: past}
		if id == "f" {
			d.State, d.Attempts, d.NextAttemptAt = journal.Failed, 5, time.Time{}
		}
		b.Events = append(b.Events, journal.EventRow{ID: "whk_" + id, Type: "request.created", Body: []byte(`{"id":"whk_` + id + `"}`), OccurredAt: past})
		b.Deliveries = append(b.Deliveries, d)
	}
	if err := store.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	lossy := &lossyStore{Store: store}
	lossy.loseClaim.Store(true)
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		// The default heartbeat: this instance must stay alive for the
		// whole test, so only the release can free what it lost.
		Journal: lossy, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: 5 * time.Second,
	})

	// The first claim takes the three due deliveries and loses its answer.
	rc.Wait(t, 3, 10*time.Second)
	if lossy.loseClaim.Load() {
		t.Fatal("no claim's answer was dropped")
	}
	waitDelivered(t, store, 3)
	if n := len(rc.Requests()); n != 3 {
		t.Errorf("receiver got %d requests for 3 deliveries: the release freed a delivery still queued", n)
	}

	// A manual retry whose answer is lost; the next one goes out.
	lossy.loseRetry.Store(true)
	if _, err := d.RetryNow(ctx, "dlv_f"); !errors.Is(err, errAnswerLost) {
		t.Fatalf("RetryNow with its answer dropped: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "a manual retry after the lost one", func() bool {
		rep, err := d.RetryNow(ctx, "dlv_f")
		if err != nil && !errors.Is(err, journal.ErrBusy) {
			t.Fatalf("RetryNow: %v", err)
		}
		return err == nil && rep.Delivered
	})
	rc.Wait(t, 4, 10*time.Second)
	if n := len(rc.Requests()); n != 4 {
		t.Errorf("receiver got %d requests, want 4", n)
	}
}

// TestLostClaimCommittedLate: a claim whose network went away while the
// server was at it (waiting for a lock) commits after the scheduler saw
// it fail, and after the scheduler's first release, which finds nothing.
// The scheduler releases it again until the claim's server process is
// done: the deliveries it took go out while this instance runs.
func TestLostClaimCommittedLate(t *testing.T) {
	store, db := newJournalDB(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	// The claim cut off goes through a proxy, on one connection whose
	// cache holds the claim's statement (prepared by a first claim), so
	// it is sent whole (BEGIN to COMMIT) before it waits for the lock.
	proxy := testutil.NewCutProxy(t, db.DSN)
	cfg, err := pgxpool.ParseConfig(proxy.DSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	lpool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lpool.Close)
	ls := &lateStore{Store: store, late: journal.New(lpool, "dzhook")}
	if _, err := ls.late.Claim(ctx, []journal.ClaimWant{{Subscription: "none", Limit: 1, Runs: true}}, "i0", "first", time.Minute); err != nil {
		t.Fatal(err)
	}
	var latePort int32 // of that connection, as the server sees it
	if err := lpool.QueryRow(ctx, `SELECT inet_client_port()`).Scan(&latePort); err != nil {
		t.Fatal(err)
	}
	start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		Journal:       ls, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: 5 * time.Second,
	})
	testutil.Eventually(t, 10*time.Second, "the dispatcher registered", func() bool {
		var n int
		_ = store.Pool().QueryRow(ctx, `SELECT count(*) FROM dzhook.instances WHERE id = 'i1'`).Scan(&n)
		return n == 1
	})

	ls.armed.Store(true)
	tx := db.Hold(t, `LOCK TABLE dzhook.instances IN ACCESS EXCLUSIVE MODE`)
	testutil.Eventually(t, 10*time.Second, "a claim through the proxy waiting for the lock", func() bool {
		// Not on the blocker: its transaction keeps its first look at pg_stat_activity.
		var waiting int
		_ = store.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%WITH live AS%'
			AND client_port = $1`, latePort).Scan(&waiting)
		return waiting == 1
	})
	// Due before the claim's transaction began (its now()); the claim
	// reads them once it has the lock.
	past := time.Now().Add(-time.Minute)
	b := &journal.Batch{}
	for _, id := range []string{"a", "b", "c"} {
		b.Events = append(b.Events, journal.EventRow{ID: "whk_" + id, Type: "request.created", Body: []byte(`{"id":"whk_` + id + `"}`), OccurredAt: past})
		b.Deliveries = append(b.Deliveries, journal.DeliveryRow{ID: "dlv_" + id, EventID: "whk_" + id, SubscriptionID: "crm",
			EventType: "request.created", State: journal.Pending, Attempts: 1, NextAttemptAt: past, CreatedAt: past})
	}
	if err := store.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	// Until a release gives them back, the other claims find nothing: they
	// would otherwise wait for the lock too and, once it is let go, race
	// the cut-off claim for the deliveries.
	ls.held.Store(true)
	ls.armed.Store(false)
	proxy.Cut()
	testutil.Eventually(t, 10*time.Second, "a release before the claim committed", func() bool { return ls.unsettled.Load() > 0 })
	if err := tx.Commit(ctx); err != nil { // the cut-off claim goes on, and commits
		t.Fatal(err)
	}
	rc.Wait(t, 3, 10*time.Second)
	waitDelivered(t, store, 3)
	if n := len(rc.Requests()); n != 3 {
		t.Errorf("receiver got %d requests for 3 deliveries", n)
	}
	if n := ls.released.Load(); n != 3 {
		t.Errorf("the releases gave back %d deliveries, want the 3 the cut-off claim took", n)
	}
}

// lateStore sends the claims made while armed through late's store.
type lateStore struct {
	*journal.Store
	late      *journal.Store
	armed     atomic.Bool
	held      atomic.Bool  // claims find nothing until a release gave something back
	unsettled atomic.Int32 // releases made while a claim's process was busy
	released  atomic.Int32 // deliveries the releases gave back
}

func (s *lateStore) Claim(ctx context.Context, wants []journal.ClaimWant, owner, token string, staleAfter time.Duration) ([]journal.Claimed, error) {
	switch {
	case s.armed.Load():
		return s.late.Claim(ctx, wants, owner, token, staleAfter)
	case s.held.Load():
		return nil, nil
	}
	return s.Store.Claim(ctx, wants, owner, token, staleAfter)
}

func (s *lateStore) ReleaseLost(ctx context.Context, owner string, c journal.LostClaim) (int, bool, error) {
	n, settled, err := s.Store.ReleaseLost(ctx, owner, c)
	if err == nil && !settled {
		s.unsettled.Add(1)
	}
	if s.released.Add(int32(n)) > 0 {
		s.held.Store(false)
	}
	return n, settled, err
}

// waitDelivered waits until the journal holds n deliveries delivered.
func waitDelivered(t *testing.T, store *journal.Store, n int) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("%d journaled as delivered", n), func() bool {
		var got int
		_ = store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`).Scan(&got)
		return got == n
	})
}

// TestMayHaveCommitted: only an error that leaves the claim's fate open
// makes it a lost claim; a refused statement or a connection never made
// committed nothing.
func TestMayHaveCommitted(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	_, refused := store.Pool().Exec(ctx, `UPDATE dzhook.deliveries SET attempts = 'x'`)
	_, unreachable := pgconn.Connect(ctx, "postgres://nobody@127.0.0.1:1/none?connect_timeout=2")
	done, cancel := context.WithCancel(ctx)
	cancel()
	conn, err := store.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	_, notSent := conn.Conn().PgConn().Exec(done, `SELECT 1`).ReadAll()
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"refused by the server", refused, false},
		{"no connection", unreachable, false},
		{"context done before sending", notSent, false},
		{"answer lost", errAnswerLost, true},
		// What pgbouncer sends when its server connection broke, before
		// or after the commit.
		{"FATAL from a pooler", &pgconn.PgError{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08P01", Message: "server conn crashed?"}, true},
		{"cancelled while waiting for the answer", context.Canceled, true},
	} {
		if c.err == nil {
			t.Fatalf("%s: no error to classify", c.name)
		}
		if got := mayHaveCommitted(fmt.Errorf("claim due deliveries: %w", c.err)); got != c.want {
			t.Errorf("%s (%v): mayHaveCommitted = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}

// claimLog is the real journal; it keeps what each claim of due work
// took, so a test can wait for claims made after a moment it chose.
type claimLog struct {
	*journal.Store
	mu     sync.Mutex
	rounds [][]string // the ids each claim took, in order
}

func (s *claimLog) Claim(ctx context.Context, wants []journal.ClaimWant, owner, token string, staleAfter time.Duration) ([]journal.Claimed, error) {
	c, err := s.Store.Claim(ctx, wants, owner, token, staleAfter)
	ids := []string{}
	for _, d := range c {
		ids = append(ids, d.ID)
	}
	s.mu.Lock()
	s.rounds = append(s.rounds, ids)
	s.mu.Unlock()
	return c, err
}

// since returns the claims made after the first n, and how many there were.
func (s *claimLog) since(n int) ([][]string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]string(nil), s.rounds[min(n, len(s.rounds)):]...), len(s.rounds)
}

// TestLateHeartbeatTakesNothingInFlight: an instance whose own heartbeat
// is late in the journal (a stalled database or process: under load, a
// heartbeat write took over a second) does not take over its own
// deliveries as a dead instance's. It has them in memory: queued or in
// flight. The claim used to take them, and every claim while the
// heartbeat was late sent them once more (engine
// TestReloadChangedSubscriptionWithQueue: deliveries sent 2 to 4 times).
func TestLateHeartbeatTakesNothingInFlight(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	past := time.Now().Add(-time.Minute)
	if err := store.Write(ctx, &journal.Batch{
		Events: []journal.EventRow{{ID: "whk_a", Type: "request.created", Body: []byte(`{"id":"whk_a"}`), OccurredAt: past}},
		Deliveries: []journal.DeliveryRow{{ID: "dlv_a", EventID: "whk_a", SubscriptionID: "crm", EventType: "request.created",
			State: journal.Pending, NextAttemptAt: past, CreatedAt: past}},
	}); err != nil {
		t.Fatal(err)
	}
	rc := testutil.NewReceiver(t)
	release := make(chan struct{})
	rc.SetRespond(func(n int, _ *http.Request, _ []byte) (int, http.Header, string) {
		if n == 1 {
			<-release // the first attempt in flight while the heartbeat is late
		}
		return http.StatusOK, nil, "ok"
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	log := &claimLog{Store: store}
	start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		// A second worker is idle, so whatever a claim takes again goes
		// out at once. The heartbeat loop does not tick during the test:
		// the test makes the heartbeat late itself.
		Journal: log, Instance: "i1", Concurrency: 2, PollInterval: 20 * time.Millisecond, Heartbeat: time.Hour,
	})

	rc.Wait(t, 1, 10*time.Second)
	if _, err := store.Pool().Exec(ctx, `UPDATE dzhook.instances SET heartbeat_at = now() - interval '1 day' WHERE id = 'i1'`); err != nil {
		t.Fatal(err)
	}
	_, n := log.since(0)
	// The first claim after n may have begun before the heartbeat aged;
	// the second began after.
	var late [][]string
	testutil.Eventually(t, 10*time.Second, "two claims with the heartbeat late", func() bool {
		late, _ = log.since(n)
		return len(late) >= 2
	})
	retaken := 0
	for _, ids := range late {
		retaken += len(ids)
	}
	// What a claim took is sent by the idle worker: wait for it, to count it.
	rc.Wait(t, 1+retaken, 10*time.Second)
	close(release)
	testutil.Eventually(t, 10*time.Second, "the delivery journaled as delivered", func() bool {
		var state string
		_ = store.Pool().QueryRow(ctx, `SELECT state FROM dzhook.deliveries WHERE id = 'dlv_a'`).Scan(&state)
		return state == string(journal.Delivered)
	})
	if retaken > 0 {
		t.Errorf("claims with this instance's heartbeat late took its delivery in flight %d times", retaken)
	}
	if n := len(rc.Requests()); n != 1 {
		t.Errorf("delivery sent %d times, want once", n)
	}
}

// askLog is lossyStore that also keeps which subscriptions each claim of
// due work asked for.
type askLog struct {
	*lossyStore
	mu    sync.Mutex
	asked [][]string
}

func (s *askLog) Claim(ctx context.Context, wants []journal.ClaimWant, owner, token string, staleAfter time.Duration) ([]journal.Claimed, error) {
	var subs []string
	for _, w := range wants {
		subs = append(subs, w.Subscription)
	}
	s.mu.Lock()
	s.asked = append(s.asked, subs)
	s.mu.Unlock()
	return s.lossyStore.Claim(ctx, wants, owner, token, staleAfter)
}

// TestOneClaimForAllSubscriptions: a scheduling round claims the due work
// of every subscription in one claim (an idle process asks the journal
// once per poll interval, however many subscriptions it has), each
// subscription's deliveries reach its own receiver once, and when that
// claim's answer is lost every subscription's share of it is given back
// and sent.
func TestOneClaimForAllSubscriptions(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	past := time.Now().Add(-time.Minute)
	b := &journal.Batch{}
	var subs []Subscription
	var rcs []*testutil.Receiver
	for i := range 4 {
		id := fmt.Sprintf("s%d", i)
		rc := testutil.NewReceiver(t)
		rcs = append(rcs, rc)
		subs = append(subs, Subscription{ID: id, URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true})
		if i == 3 {
			continue // s3 has nothing due
		}
		for j := range 3 {
			n := fmt.Sprintf("%s_%d", id, j)
			b.Events = append(b.Events, journal.EventRow{ID: "whk_" + n, Type: "request.created", Body: []byte(`{"id":"whk_` + n + `"}`), OccurredAt: past})
			b.Deliveries = append(b.Deliveries, journal.DeliveryRow{ID: "dlv_" + n, EventID: "whk_" + n, SubscriptionID: id, EventType: "request.created",
				State: journal.Pending, NextAttemptAt: past, CreatedAt: past})
		}
	}
	if err := store.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	log := &askLog{lossyStore: &lossyStore{Store: store}}
	log.loseClaim.Store(true)
	start(t, store, Config{Subscriptions: subs, Journal: log, Instance: "i1", PollInterval: 20 * time.Millisecond, Heartbeat: 5 * time.Second})

	for i, rc := range rcs[:3] {
		rc.Wait(t, 3, 10*time.Second)
		if log.loseClaim.Load() {
			t.Fatal("no claim's answer was dropped")
		}
		for _, r := range rc.Requests() {
			if id := r.Header.Get(signer.HeaderDelivery); !strings.HasPrefix(id, fmt.Sprintf("dlv_s%d_", i)) {
				t.Errorf("receiver of s%d got delivery %q", i, id)
			}
		}
	}
	waitDelivered(t, store, 9)
	// Idle rounds after the work is done.
	log.mu.Lock()
	n := len(log.asked)
	log.mu.Unlock()
	testutil.Eventually(t, 10*time.Second, "five more claims", func() bool {
		log.mu.Lock()
		defer log.mu.Unlock()
		return len(log.asked) >= n+5
	})
	log.mu.Lock()
	for k, asked := range log.asked {
		if len(asked) != 4 {
			t.Errorf("claim %d asked for %v, want all four subscriptions in one claim", k+1, asked)
		}
	}
	log.mu.Unlock()
	for i, rc := range rcs {
		want := 3
		if i == 3 {
			want = 0
		}
		if got := len(rc.Requests()); got != want {
			t.Errorf("receiver of s%d got %d requests, want %d (each delivery once)", i, got, want)
		}
	}
}

// journalDue journals a due delivery of crm, unowned, as another
// process would: this one is not told.
func journalDue(t *testing.T, store *journal.Store, id string) {
	t.Helper()
	past := time.Now().Add(-time.Second)
	if err := store.Write(context.Background(), &journal.Batch{
		Events: []journal.EventRow{{ID: "whk_" + id, Type: "request.created", Body: []byte(`{}`), OccurredAt: past}},
		Deliveries: []journal.DeliveryRow{{ID: "dlv_" + id, EventID: "whk_" + id, SubscriptionID: "crm", EventType: "request.created",
			State: journal.Pending, NextAttemptAt: past, CreatedAt: past}},
	}); err != nil {
		t.Fatal(err)
	}
}

// TestStartBesidePeersPollsFast (a poll interval of an hour: only the
// busy pace can find the work): a process that starts while others run
// polls at the busy pace for three heartbeats, not its poll interval: a
// streaming process hands over part of its queue when it learns of the
// newcomer, at its next heartbeat.
func TestStartBesidePeersPollsFast(t *testing.T) {
	store := newJournal(t)
	if err := store.Register(context.Background(), "other"); err != nil {
		t.Fatal(err)
	}
	rc := testutil.NewReceiver(t)
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		Journal:       store, Instance: "i1", PollInterval: time.Hour, Heartbeat: time.Hour,
	})
	testutil.Eventually(t, 10*time.Second, "the peer seen", func() bool { return d.Peers() == 1 })
	journalDue(t, store, "a")
	at := time.Now()
	rc.Wait(t, 1, 15*time.Second)
	if took := time.Since(at); took > 5*time.Second {
		t.Errorf("due work found %v after it was journaled, want the busy pace (%v) after starting beside a peer, not the poll interval", took.Round(time.Millisecond), busyPoll)
	}
}

// TestPeersPollFastWhileWorkComes: while other processes share the
// journal, a process that found due work keeps claiming at the busy pace
// for a poll interval, not only until one round finds nothing: the
// streaming process journals work for the others in bursts, and a
// process that slept a whole poll interval after each gap left its
// workers idle.
func TestPeersPollFastWhileWorkComes(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	// A live peer (heartbeats are judged within 2 x Heartbeat: hours).
	if err := store.Register(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	rc := testutil.NewReceiver(t)
	log := &claimLog{Store: store}
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		Journal:       log, Instance: "i1", PollInterval: time.Hour, Heartbeat: time.Hour,
	})
	testutil.Eventually(t, 10*time.Second, "the peer seen", func() bool { return d.Peers() == 1 })
	// A process starting beside others polls fast for three heartbeats
	// anyway (busyUntil): past that window, only found work may keep it
	// at the busy pace.
	testutil.Eventually(t, 10*time.Second, "the start's busy window over", func() bool {
		until := d.sched.busyUntil.Load()
		return until != 0 && time.Now().UnixNano() > until
	})
	journalDue(t, store, "a")
	d.sched.nudge() // found by a round, as a poll would (not told by a writer: Spilled)
	rc.Wait(t, 1, 10*time.Second)
	// Rounds that find nothing follow; then more work, nobody told.
	testutil.Eventually(t, 5*time.Second, "an empty round after the one that found work", func() bool {
		rounds, _ := log.since(0)
		return len(rounds) >= 2 && len(rounds[len(rounds)-1]) == 0
	})
	journalDue(t, store, "b")
	at := time.Now()
	rc.Wait(t, 2, 10*time.Second)
	if took := time.Since(at); took > 3*time.Second {
		t.Errorf("due work found %v after it was journaled, want the busy pace (%v), not the poll interval", took.Round(time.Millisecond), busyPoll)
	}
}

// TestPauseAcrossInstances: a pause made on one process stops the claims
// of the others sharing the journal (within a heartbeat), a resume on
// another resumes it everywhere, and a subscription another process
// disabled (a 410) or re-enabled is disabled or re-enabled here too.
func TestPauseAcrossInstances(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	cfg := func(instance string) Config {
		return Config{
			Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
			Journal:       store, Instance: instance, PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond,
		}
	}
	d1, d2 := start(t, store, cfg("i1")), start(t, store, cfg("i2"))
	testutil.Eventually(t, 10*time.Second, "each sees the other", func() bool { return d1.Peers() == 1 && d2.Peers() == 1 })
	status := func(d *Dispatcher) SubscriptionStatus {
		for _, st := range d.Subscriptions() {
			if st.ID == "crm" {
				return st
			}
		}
		t.Fatal("no subscription crm")
		return SubscriptionStatus{}
	}

	if err := d1.Pause(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the pause seen by the other process", func() bool { return status(d2).Paused })
	journalDue(t, store, "a")
	// The measured stretch: twenty poll intervals of both processes, in
	// which neither may claim the paused subscription's due delivery.
	time.Sleep(time.Second)
	if n := len(rc.Requests()); n != 0 {
		t.Fatalf("%d deliveries sent while the subscription was paused on another process", n)
	}
	if _, err := d2.Resume(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the resume seen by the other process", func() bool { return !status(d1).Paused })
	rc.Wait(t, 1, 10*time.Second)

	// Another process received a 410 and disabled it; later one resumed it.
	if err := store.SetState(ctx, "crm", journal.Disabled); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the disabled state seen", func() bool {
		return status(d1).State == journal.Disabled && status(d2).State == journal.Disabled
	})
	if err := store.SetState(ctx, "crm", journal.Healthy); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the re-enabled state seen", func() bool {
		return status(d1).State == journal.Healthy && status(d2).State == journal.Healthy
	})
}

// TestHealthAcrossInstances: a subscription one process saw fail (a
// delivery that exhausted its schedule) is failing in the others too
// (within a heartbeat), and the first success of any of them, even one
// that never saw a failure, makes it healthy again everywhere: the
// journal says so, and the admin is told once of each change.
func TestHealthAcrossInstances(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	rc := testutil.NewReceiver(t)
	var failing atomic.Bool
	failing.Store(true)
	rc.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) {
		if failing.Load() {
			return http.StatusInternalServerError, nil, "down"
		}
		return http.StatusOK, nil, ""
	})
	admin := testutil.NewReceiver(t)
	cfg := func(instance string) Config {
		return Config{
			Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
			Journal:       store, Instance: instance, PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond,
			RetrySchedule: []time.Duration{0}, // one attempt: a failure exhausts the schedule
			Notify:        NotifyConfig{URL: admin.URL},
		}
	}
	d1, d2 := start(t, store, cfg("i1")), start(t, store, cfg("i2"))
	testutil.Eventually(t, 10*time.Second, "each sees the other", func() bool { return d1.Peers() == 1 && d2.Peers() == 1 })
	state := func(d *Dispatcher) journal.Health {
		for _, st := range d.Subscriptions() {
			if st.ID == "crm" {
				return st.State
			}
		}
		t.Fatal("no subscription crm")
		return ""
	}
	journaled := func() journal.Health {
		rows, err := store.SubscriptionStates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.ID == "crm" {
				return r.State
			}
		}
		return ""
	}
	events := orderEvents([]string{"a", "b"})

	if err := d1.Dispatch(ctx, events[0]); err != nil { // fails, its one attempt
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "failing in both processes and the journal", func() bool {
		return state(d1) == journal.Failing && state(d2) == journal.Failing && journaled() == journal.Failing
	})
	failing.Store(false)
	if err := d2.Dispatch(ctx, events[1]); err != nil { // delivered by the process that saw no failure
		t.Fatal(err)
	}
	rc.Wait(t, 2, 10*time.Second)
	testutil.Eventually(t, 10*time.Second, "healthy in both processes and the journal", func() bool {
		return state(d1) == journal.Healthy && state(d2) == journal.Healthy && journaled() == journal.Healthy
	})
	testutil.Eventually(t, 10*time.Second, "the admin told of both changes", func() bool {
		return len(notificationKinds(t, store)) >= 2
	})
	// Nothing more comes: both processes' writers flushed within three
	// heartbeats (a notification is journaled with its state's batch).
	time.Sleep(3 * 200 * time.Millisecond)
	kinds := notificationKinds(t, store)
	slices.Sort(kinds)
	if !slices.Equal(kinds, []string{"failing", "recovered"}) {
		t.Errorf("notifications %v, want one failing and one recovered", kinds)
	}
}

// notificationKinds lists the kinds of the admin's notifications.
func notificationKinds(t *testing.T, store *journal.Store) []string {
	t.Helper()
	ns, err := store.Notifications(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	kinds := make([]string, len(ns))
	for i, n := range ns {
		kinds[i] = n.Kind
	}
	return kinds
}

// TestDueInTheJournalsClock: a process whose clock is an hour ahead of
// the journal's writes due times in the journal's clock: a delivery
// journaled to go now goes now, not in an hour (claims compare due times
// with the journal's now()).
func TestDueInTheJournalsClock(t *testing.T) {
	store := newJournal(t)
	rc := testutil.NewReceiver(t)
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		Journal:       store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: 200 * time.Millisecond,
		ShareFirstAttempts: true, // every new delivery journaled, due now, and claimed
		NowFunc:            func() time.Time { return time.Now().Add(time.Hour) },
	})
	testutil.Eventually(t, 10*time.Second, "the clocks' difference measured", func() bool {
		return time.Duration(d.sched.skew.Load()) < -59*time.Minute
	})
	if err := d.Dispatch(context.Background(), orderEvents([]string{"a"})[0]); err != nil {
		t.Fatal(err)
	}
	rc.Wait(t, 1, 10*time.Second)
}

// startAlone starts a dispatcher of subscription crm that syncs its
// state with the journal only when a test calls syncFlags (a heartbeat
// of an hour), once it has loaded that state.
func startAlone(t *testing.T, store *journal.Store) *Dispatcher {
	t.Helper()
	rc := testutil.NewReceiver(t)
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		Journal:       store, Instance: "i1", PollInterval: 50 * time.Millisecond, Heartbeat: time.Hour,
	})
	testutil.Eventually(t, 10*time.Second, "the dispatcher started (its state loaded)", func() bool { return d.loaded.Load() })
	return d
}

// TestDisableKeptUntilAResume: a process that disabled a subscription (a
// 410) keeps it disabled until an operator resumes it, whatever the
// other processes journal meanwhile: a failing change made after the 410
// by one that has not seen it (this one's disable not journaled yet)
// does not re-enable it. And a disable adopted from the journal is
// ended by a resume made after the disable, even one whose transaction
// began before the process read the disable.
func TestDisableKeptUntilAResume(t *testing.T) {
	store, db := newJournalDB(t)
	ctx := context.Background()
	d := startAlone(t, store)
	s := d.reg.Load().byID["crm"]
	passed := func(d time.Duration, since time.Time) { // the clock moves on, so that times stand apart
		for time.Since(since) < d {
			time.Sleep(time.Millisecond)
		}
	}
	local := func() journal.Health {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.state
	}
	// A 410 seen here, its batch not yet written.
	gone := time.Now()
	s.mu.Lock()
	s.state, s.disabledAt = journal.Disabled, gone
	s.mu.Unlock()
	// Another process, which has not seen it, journals failing, made after.
	passed(100*time.Millisecond, gone)
	if err := store.Write(ctx, &journal.Batch{Subs: []journal.SubscriptionState{{ID: "crm", State: journal.Failing, Changed: true, ChangedAt: time.Now(), LastStatus: 503}}}); err != nil {
		t.Fatal(err)
	}
	d.syncFlags(ctx)
	if got := local(); got != journal.Disabled {
		t.Fatalf("state %s after another process's failing change, want disabled until a resume", got)
	}
	// The operator resumes through another process.
	if err := store.SetState(ctx, "crm", journal.Healthy); err != nil {
		t.Fatal(err)
	}
	d.syncFlags(ctx)
	if got := local(); got != journal.Healthy {
		t.Fatalf("state %s after a resume, want healthy", got)
	}

	// Another process's disable is adopted here while an operator's
	// resume is under way: its transaction began after the disable was
	// made, but before this process read the journal, and commits after.
	disabled := time.Now()
	if err := store.Write(ctx, &journal.Batch{Subs: []journal.SubscriptionState{{ID: "crm", State: journal.Disabled, Changed: true, ChangedAt: disabled, LastStatus: 410}}}); err != nil {
		t.Fatal(err)
	}
	passed(100*time.Millisecond, disabled)
	resume := db.Hold(t, `SELECT 1`) // the resume's transaction: its now() is this moment
	begun := time.Now()
	passed(100*time.Millisecond, begun)
	d.syncFlags(ctx)
	if got := local(); got != journal.Disabled {
		t.Fatalf("state %s, want the disable adopted", got)
	}
	if _, err := resume.Exec(ctx, `UPDATE dzhook.subscriptions SET state = 'healthy', state_changed_at = now(), resumed_at = now() WHERE id = 'crm'`); err != nil {
		t.Fatal(err)
	}
	if err := resume.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	d.syncFlags(ctx)
	if got := local(); got != journal.Healthy {
		t.Fatalf("state %s after a resume made after the disable, want healthy", got)
	}
}

// TestResumeOfADisableNotYetAdopted: an operator's resume through a
// process that has not yet adopted another's disable (a 410 there) is
// the journal's all the same: the subscription is enabled again.
func TestResumeOfADisableNotYetAdopted(t *testing.T) {
	store := newJournal(t)
	ctx := context.Background()
	d := startAlone(t, store)
	if err := store.Write(ctx, &journal.Batch{Subs: []journal.SubscriptionState{{ID: "crm", State: journal.Disabled, Changed: true, ChangedAt: time.Now(), LastStatus: 410}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Resume(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	rows, err := store.SubscriptionStates(ctx)
	if err != nil || len(rows) != 1 || rows[0].State != journal.Healthy {
		t.Fatalf("journal's state %+v (%v) after the resume, want healthy", rows, err)
	}
}

// gatedClaims holds back the claim that comes after arm, at the journal,
// until open: a claim that was sized, then waited for the database.
type gatedClaims struct {
	*journal.Store
	armed   atomic.Bool
	waiting chan struct{} // the held claim has reached the gate
	gate    chan struct{} // closed: the held claim goes on
	done    chan struct{} // closed once the held claim has returned
}

func (s *gatedClaims) Claim(ctx context.Context, wants []journal.ClaimWant, owner, token string, staleAfter time.Duration) ([]journal.Claimed, error) {
	if !s.armed.CompareAndSwap(true, false) {
		return s.Store.Claim(ctx, wants, owner, token, staleAfter)
	}
	close(s.waiting)
	<-s.gate
	defer close(s.done)
	return s.Store.Claim(ctx, wants, owner, token, staleAfter)
}

// TestClaimSizedAloneTakesBackNothingShared: a claim sized while this
// process was alone (half its queue's free places) that reaches the
// journal late, after a newcomer was seen and part of the queue was given
// back for it, must not take that part back: the newcomer would find
// nothing to claim (seen in CI, engine's TestJoiningPeerGetsAShareOfTheQueue:
// the newcomer made no attempt at all). The share waits for the claim.
func TestClaimSizedAloneTakesBackNothingShared(t *testing.T) {
	store, db := newJournalDB(t)
	ctx := context.Background()
	rc := testutil.NewOrderReceiver(t, nil)
	// The worker stays on its first attempt for the whole test: the queue
	// stays long, so no claim made beside the peer may take anything.
	rc.SetDelay(3 * time.Second)
	gated := &gatedClaims{Store: store, waiting: make(chan struct{}), gate: make(chan struct{}), done: make(chan struct{})}
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		Journal:       gated, Instance: "i1", Concurrency: 1, QueueSize: 64,
		PollInterval: 50 * time.Millisecond, Heartbeat: time.Hour, // the peer stays alive
	})
	var opened sync.Once
	open := func() { opened.Do(func() { close(gated.gate) }) }
	t.Cleanup(open) // before the dispatcher's stop (cleanups run last first)
	for i := range 40 {
		id := fmt.Sprintf("whk_%d", i)
		if err := d.Dispatch(ctx, Event{ID: id, Type: "request.created", Body: []byte(`{"id":"` + id + `"}`)}); err != nil {
			t.Fatal(err)
		}
	}
	unowned := func() int {
		var n int
		if err := db.Connect(t).QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE owner IS NULL AND state = 'pending'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	gated.armed.Store(true)
	select {
	case <-gated.waiting: // sized alone: peers 0
	case <-time.After(10 * time.Second):
		t.Fatal("no claim reached the journal")
	}
	if err := store.Register(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the peer seen", func() bool { return d.Peers() == 1 })
	// With the share made beside the claim (on the heartbeat, as it
	// was), the queue given back is in the journal (the writer's linger,
	// 50 ms) before the claim goes on: look for it a while before opening
	// the gate. Made between two claims, it comes only after the gate.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline) && unowned() == 0; {
		time.Sleep(20 * time.Millisecond)
	}
	open()
	select {
	case <-gated.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the held claim did not return")
	}
	testutil.Eventually(t, 10*time.Second, "part of the queue given back for the peer", func() bool { return unowned() > 0 })
	var claimed int
	if err := db.Connect(t).QueryRow(ctx, `SELECT count(*) FROM dzhook.deliveries WHERE claim IS NOT NULL`).Scan(&claimed); err != nil {
		t.Fatal(err)
	}
	if claimed != 0 {
		t.Errorf("%d of the deliveries given back for the peer were claimed back by the claim sized alone (%d left for the peer)", claimed, unowned())
	}
}
