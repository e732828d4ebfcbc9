package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestReloadWhileJournalUnreachable: with the journal unreachable and the
// stream's handler blocked on the journal writer (its queue full, the
// writer retrying), a Reload that changes the subscriptions may wait, but
// /metrics and the admin API keep answering. Once the journal is back the
// reload completes and every committed row is delivered.
func TestReloadWhileJournalUnreachable(t *testing.T) {
	db := newDB(t)
	alpha, beta := testutil.NewReceiver(t), testutil.NewReceiver(t)
	proxy := newTCPProxy(t, fmt.Sprintf("127.0.0.1:%d", db.Cluster.Port))
	// The journal is the source database, reached through the proxy; the
	// source is reached directly, so the stream keeps reading.
	journalDSN := config.Secret(fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", proxy.Addr(), db.Name))
	configure := func(subs ...string) *config.Config {
		cfg := testConfigWith(t, db, adminSection, "", subs...)
		cfg.Journal.DSN = journalDSN
		return cfg
	}
	e := start(t, configure(sub("alpha", alpha.URL, "request.created")))
	// Cleanups run last first: the journal comes back before the engine
	// stops, whatever fails below.
	t.Cleanup(proxy.Restore)

	db.Exec(t, `INSERT INTO requests (title, requester_id) VALUES ('warm-up', 1)`)
	alpha.Wait(t, 1, 20*time.Second)
	testutil.Eventually(t, 20*time.Second, "the warm-up delivery journaled", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`) == 1
	})

	proxy.Cut()
	ins := startInserter(t, db.DSN, func() int { return int(e.Stream().Stats().Changes) })
	t.Cleanup(func() { ins.stop() })
	// Rows stream in until the journal writer's queue is full and the
	// stream's handler waits on it: the stream stops taking changes.
	waitStreamBlocked(t, e, ins, 60*time.Second)
	ins.slow() // still inserting, at a trickle, while the readers are asked

	// alpha changes (its old self stops after attempts whose outcomes
	// the writer cannot take yet) and beta is added.
	next := configure(
		sub("alpha", alpha.URL, "request.created", "headers: {X-Version: '2'}"),
		sub("beta", beta.URL, "request.created"))
	var reloadErr error
	reloaded := make(chan struct{})
	go func() {
		defer close(reloaded)
		reloadErr = e.Reload(context.Background(), next)
	}()
	// Should the test stop early, the reload still ends before the engine
	// stops (the journal back first, so it can).
	t.Cleanup(func() {
		proxy.Restore()
		select {
		case <-reloaded:
		case <-time.After(60 * time.Second):
			t.Error("the reload did not complete within 60s of the journal coming back")
		}
	})

	// 4 s: room for a slow answer on a loaded machine, still below the
	// admin's 5 s journal timeout, so a handler that waits for the
	// unreachable journal (or the reload) times the probe out.
	client := &http.Client{Timeout: 4 * time.Second}
	base := "http://" + e.AdminAddr()
	var metrics string
	for i := range 5 {
		if i > 0 {
			time.Sleep(200 * time.Millisecond) // spread the probes over the outage
		}
		code, body, took, err := get(client, base+"/metrics")
		if err != nil {
			t.Fatalf("probe %d: GET /metrics during a reload with the journal unreachable: %v (after %s)", i, err, took)
		}
		if code != http.StatusOK {
			t.Errorf("probe %d: GET /metrics = %d, want 200: %s", i, code, body)
		}
		metrics = body
		// 503 "the journal could not be reached" is an answer too: the
		// list needs the journal's backlog counts.
		code, body, took, err = get(client, base+"/v1/subscriptions")
		if err != nil {
			t.Fatalf("probe %d: GET /v1/subscriptions during a reload with the journal unreachable: %v (after %s)", i, err, took)
		}
		if code != http.StatusOK && code != http.StatusServiceUnavailable {
			t.Errorf("probe %d: GET /v1/subscriptions = %d, want 200 or 503: %s", i, code, body)
		}
		t.Logf("probe %d: /v1/subscriptions answered %d in %s", i, code, took)
	}
	// The new set is swapped in at once, whether or not the reload waits.
	if !strings.Contains(metrics, `subscription="beta"`) {
		t.Error("/metrics does not show the subscription the reload added")
	}
	select {
	case <-reloaded:
		t.Log("the reload completed with the journal unreachable")
	default:
		t.Log("the reload waits for the journal, as it may")
	}

	inserted := ins.stop()
	proxy.Restore()
	select {
	case <-reloaded:
	case <-time.After(60 * time.Second):
		t.Fatal("the reload did not complete within 60s of the journal coming back")
	}
	if reloadErr != nil {
		t.Fatalf("reload: %v", reloadErr)
	}
	total := 1 + inserted
	t.Logf("%d rows committed; the stream had taken %d changes when it blocked", total, ins.blockedAt)
	testutil.Eventually(t, 90*time.Second, fmt.Sprintf("%d deliveries to alpha journaled as delivered", total), func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE subscription_id = 'alpha' AND state = 'delivered'`) == total
	})
	got := map[string]int{}
	for _, r := range alpha.Requests() {
		got[dataID(t, r.Body)]++
	}
	rows, err := db.Connect(t).Query(context.Background(), `SELECT id FROM requests`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != total {
		t.Errorf("%d rows in requests, want %d", len(ids), total)
	}
	missing, repeated := 0, 0
	for _, id := range ids {
		switch n := got["req_"+strconv.FormatInt(id, 10)]; {
		case n == 0:
			missing++
		case n > 1:
			repeated++ // at least once: allowed, but worth seeing
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d committed rows never reached the receiver", missing, len(ids))
	}
	t.Logf("%d requests received, %d rows delivered more than once", len(alpha.Requests()), repeated)

	// The reloaded set runs: the changed alpha and the added beta. (beta
	// may also have rows of the outage: those dispatched after the swap.)
	var after int64
	if err := db.Connect(t).QueryRow(context.Background(), `INSERT INTO requests (title, requester_id) VALUES ('after', 1) RETURNING id`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	id := "req_" + strconv.FormatInt(after, 10)
	for _, want := range []struct {
		rc      *testutil.Receiver
		name    string
		version string
	}{{beta, "beta", ""}, {alpha, "alpha's new self", "2"}} {
		testutil.Eventually(t, 30*time.Second, want.name+" receiving "+id, func() bool {
			for _, r := range want.rc.Requests() {
				if r.Header.Get("X-Version") == want.version && dataID(t, r.Body) == id {
					return true
				}
			}
			return false
		})
	}
}

// get fetches url and says how long it took.
func get(c *http.Client, url string) (code int, body string, took time.Duration, err error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", 0, err
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", time.Since(start), err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw), time.Since(start), err
}

// dataID returns data.id of a webhook's envelope.
func dataID(t *testing.T, body []byte) string {
	t.Helper()
	var env struct {
		Data struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatalf("webhook body: %v: %s", err, body)
	}
	return env.Data.ID
}

// waitStreamBlocked waits until the stream stops taking changes while the
// inserter has committed more rows than it took: its handler waits on the
// journal writer.
func waitStreamBlocked(t *testing.T, e *Engine, ins *inserter, timeout time.Duration) {
	t.Helper()
	const still = 1500 * time.Millisecond
	deadline := time.Now().Add(timeout)
	last, since := e.Stream().Stats().Changes, time.Now()
	for {
		time.Sleep(50 * time.Millisecond)
		if err := ins.failed(); err != nil {
			t.Fatalf("inserting rows: %v", err)
		}
		n := e.Stream().Stats().Changes
		switch {
		case n != last:
			last, since = n, time.Now()
		case time.Since(since) >= still && ins.count() > int(n):
			ins.blockedAt = n
			t.Logf("the stream blocked after %d changes with %d rows committed", n, ins.count()+1)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream did not block on the journal writer within %s (%d changes taken, %d rows committed)", timeout, n, ins.count())
		}
	}
}

// inserter commits rows into requests from a goroutine: batches of 100,
// keeping at most maxAhead rows beyond what the stream took (so the
// backlog to deliver after the outage stays small), then, after slow, one
// row every 100 ms.
type inserter struct {
	n         atomic.Int64
	trickle   atomic.Bool
	err       atomic.Pointer[error]
	quit      chan struct{}
	done      chan struct{}
	once      sync.Once
	blockedAt uint64
}

const maxAhead = 500

func startInserter(t *testing.T, dsn string, taken func() int) *inserter {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	ins := &inserter{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(ins.done)
		defer conn.Close(context.Background())
		for {
			select {
			case <-ins.quit:
				return
			default:
			}
			batch, pause := 100, time.Duration(0)
			switch {
			case ins.trickle.Load():
				batch, pause = 1, 100*time.Millisecond
			case ins.count()-taken() >= maxAhead:
				batch, pause = 0, 20*time.Millisecond
			}
			if pause > 0 {
				select {
				case <-ins.quit:
					return
				case <-time.After(pause):
				}
			}
			if batch == 0 {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			tag, err := conn.Exec(ctx, `INSERT INTO requests (title, requester_id) SELECT 'during the outage', 1 FROM generate_series(1, $1)`, batch)
			cancel()
			if err != nil {
				ins.err.Store(&err)
				return
			}
			ins.n.Add(tag.RowsAffected())
		}
	}()
	return ins
}

func (ins *inserter) slow()      { ins.trickle.Store(true) }
func (ins *inserter) count() int { return int(ins.n.Load()) }

func (ins *inserter) failed() error {
	if p := ins.err.Load(); p != nil {
		return *p
	}
	return nil
}

// stop ends the inserts and returns how many rows were committed.
func (ins *inserter) stop() int {
	ins.once.Do(func() { close(ins.quit) })
	<-ins.done
	return ins.count()
}

// tcpProxy forwards TCP connections to target until Cut: then it closes
// the connections it forwards and closes new ones at once, as a database
// that went away would, until Restore.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by the cleanup
			}
			go p.forward(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		p.Cut()
	})
	return p
}

// Addr is where to connect instead of target.
func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) forward(c net.Conn) {
	p.mu.Lock()
	cut := p.cut
	p.mu.Unlock()
	if cut {
		c.Close() // the client sees its connection dropped at once
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(c, up) {
		c.Close()
		up.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		// One direction ended: end both, as a dropped connection does.
		dst.Close()
		src.Close()
	}
	go pipe(up, c)
	go pipe(c, up)
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// track registers a forwarded pair, unless the proxy is cut.
func (p *tcpProxy) track(c, up net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return false
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	return true
}

// Cut closes every forwarded connection and refuses new ones.
func (p *tcpProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Restore forwards new connections again.
func (p *tcpProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// TestReloadNeedsTheRunningDeliverySection: a file whose new subscription
// is valid only with the file's own delivery section (an http:// URL its
// allow_insecure_http allows), which takes effect at the next restart,
// is refused: the process runs https-only until then. It used to be
// applied, and events went to the http:// receiver at once.
func TestReloadNeedsTheRunningDeliverySection(t *testing.T) {
	db := newDB(t)
	plain := testutil.NewReceiver(t) // http://
	parse := func(insecure bool, subs string) *config.Config {
		cfg, err := config.Parse([]byte(fmt.Sprintf("source:\n  dsn: %s\njournal:\n  heartbeat: 200ms\nadmin:\n  listen: \"\"\ndelivery:\n  allow_insecure_http: %v\nsubscriptions:\n%s", db.DSN, insecure, subs)), nil)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	e := start(t, parse(false, sub("tls", "https://127.0.0.1:1/hook", "request.created")))
	err := e.Reload(context.Background(), parse(true, sub("tls", "https://127.0.0.1:1/hook", "request.created")+sub("plain", plain.URL, "request.created")))
	if err == nil || !strings.Contains(err.Error(), `subscriptions[1].url (subscription "plain")`) || !strings.Contains(err.Error(), "next restart") {
		t.Fatalf("reload adding an http:// subscription while running https-only: %v, want refused naming subscriptions[1].url", err)
	}
	if e.Dispatcher().HasSubscription("plain") {
		t.Error("the refused file's subscription runs")
	}
	// The same file with its http:// subscription left out applies.
	if err := e.Reload(context.Background(), parse(true, sub("tls", "https://127.0.0.1:1/hook", "request.created")+sub("other", "https://127.0.0.1:1/other", "request.created"))); err != nil {
		t.Fatalf("reload without the http:// subscription: %v", err)
	}
	if !e.Dispatcher().HasSubscription("other") {
		t.Error("the accepted file's new subscription does not run")
	}
}

// TestReadyWhileTheJournalRefusesWrites: the journal answers but refuses
// every write (here a trigger; a full disk, a read-only standby). The
// stream's session ends at each failed batch and starts again at once,
// its start only reading the journal, so /readyz, judged by "connected",
// went up and down, and so did the metric the not-streaming alert
// watches (found by a review, reproduced). It stays not ready, saying
// the journal refuses writes, until a write goes through.
func TestReadyWhileTheJournalRefusesWrites(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	e := start(t, testConfigWith(t, db, adminSection, "", sub("crm", rc.URL, "request.created")))
	testutil.Eventually(t, 20*time.Second, "ready", func() bool { return e.Ready(context.Background()) == nil })
	db.Exec(t, `CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'the journal refuses writes'; END $$`,
		`CREATE TRIGGER refuse BEFORE INSERT ON dzhook.events FOR EACH ROW EXECUTE FUNCTION refuse()`,
		`INSERT INTO requests (title, requester_id) VALUES ('refused', 1)`)
	testutil.Eventually(t, 20*time.Second, "not ready", func() bool { return e.Ready(context.Background()) != nil })
	// Through several of the writer's tries and the stream's sessions.
	sessions := e.Stream().Stats().Reconnects
	for deadline := time.Now().Add(6 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err := e.Ready(context.Background()); err == nil {
			t.Fatal("ready while the journal refuses every write")
		} else if !strings.Contains(err.Error(), "the journal refuses writes since") {
			t.Fatalf("/readyz while the journal refuses writes: %q, want that said", err)
		}
	}
	if e.Stream().Stats().Reconnects == sessions {
		t.Log("no new session was tried while the journal refused writes")
	}
	if v := metricValue(scrape(t, e), "dzhook_journal_write_failing_seconds"); !(v >= 6) {
		t.Errorf("dzhook_journal_write_failing_seconds = %v while the journal has refused writes for 6 s and more", v)
	}
	db.Exec(t, `DROP TRIGGER refuse ON dzhook.events`)
	testutil.Eventually(t, 30*time.Second, "ready again", func() bool { return e.Ready(context.Background()) == nil })
	if v := metricValue(scrape(t, e), "dzhook_journal_write_failing_seconds"); v != 0 {
		t.Errorf("dzhook_journal_write_failing_seconds = %v once writes go through, want 0", v)
	}
	rc.Wait(t, 1, 30*time.Second)
}

// TestReadyBlamesTheJournal: with the journal cut (the source reachable
// the whole time), /readyz says the journal, not "PostgreSQL unreachable"
// (the session's start met the journal's error, which the stream took for
// the source's), and is ready again once it answers.
func TestReadyBlamesTheJournal(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	proxy := newTCPProxy(t, fmt.Sprintf("127.0.0.1:%d", db.Cluster.Port))
	cfg := testConfigWith(t, db, adminSection, "", sub("crm", rc.URL, "request.created"))
	cfg.Journal.DSN = config.Secret(fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", proxy.Addr(), db.Name))
	e := start(t, cfg)
	t.Cleanup(proxy.Restore)
	testutil.Eventually(t, 20*time.Second, "ready", func() bool { return e.Ready(context.Background()) == nil })
	proxy.Cut()
	db.Exec(t, `INSERT INTO requests (title, requester_id) VALUES ('during the outage', 1)`)
	var reasons []string
	testutil.Eventually(t, 30*time.Second, "not streaming", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		err := e.Ready(ctx)
		if err != nil {
			reasons = append(reasons, err.Error())
		}
		return !e.Stream().Stats().Connected
	})
	// Until the stream has tried a new session (its start reads the
	// journal's checkpoint, which fails), and a while after.
	sessions := e.Stream().Stats().Reconnects
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := e.Ready(ctx); err != nil {
			reasons = append(reasons, err.Error())
		}
		cancel()
		time.Sleep(100 * time.Millisecond)
	}
	if e.Stream().Stats().Reconnects == sessions {
		t.Log("no new session was tried during the outage")
	}
	t.Logf("reasons: %q", slices.Compact(reasons))
	for _, r := range reasons {
		if strings.Contains(r, "PostgreSQL unreachable") || strings.Contains(r, "replication connection lost") {
			t.Errorf("/readyz during a journal outage: %q, want the journal named", r)
		}
	}
	proxy.Restore()
	testutil.Eventually(t, 30*time.Second, "ready again", func() bool { return e.Ready(context.Background()) == nil })
	rc.Wait(t, 1, 30*time.Second)
}

// metricValue is the value of an unlabelled series in a /metrics text
// (NaN when it is not there).
func metricValue(text, name string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return f
			}
		}
	}
	return math.NaN()
}
