package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// chaosReceiver answers at random: 500, too slow (past the delivery
// timeout), a reset connection, or 200. It counts what it accepted, by
// the event's logical key, with the envelope ids seen for each.
type chaosReceiver struct {
	*httptest.Server
	mu       sync.Mutex
	accepted map[string]map[string]bool // "event data.id" -> envelope ids
	requests int
	faults   map[string]int
}

func newChaosReceiver(t *testing.T) *chaosReceiver {
	rc := &chaosReceiver{accepted: map[string]map[string]bool{}, faults: map[string]int{}}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *chaosReceiver) serve(w http.ResponseWriter, r *http.Request) {
	var env struct {
		ID    string `json:"id"`
		Event string `json:"event"`
		Data  struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	body := make([]byte, 0, 1024)
	buf := make([]byte, 1024)
	for {
		n, err := r.Body.Read(buf)
		body = append(body, buf[:n]...)
		if err != nil {
			break
		}
	}
	_ = json.Unmarshal(body, &env)
	fault := ""
	switch x := rand.Float64(); {
	case x < 0.12:
		fault = "500"
	case x < 0.15:
		fault = "timeout"
	case x < 0.18:
		fault = "reset"
	}
	rc.mu.Lock()
	rc.requests++
	if fault != "" {
		rc.faults[fault]++
	} else {
		key := env.Event + " " + env.Data.ID
		if rc.accepted[key] == nil {
			rc.accepted[key] = map[string]bool{}
		}
		rc.accepted[key][env.ID] = true
	}
	rc.mu.Unlock()
	switch fault {
	case "500":
		w.WriteHeader(500)
	case "timeout":
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	case "reset":
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		w.WriteHeader(502)
	default:
		w.WriteHeader(200)
	}
}

func (rc *chaosReceiver) snapshot() (map[string]map[string]bool, int, map[string]int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	acc := make(map[string]map[string]bool, len(rc.accepted))
	for k, v := range rc.accepted {
		acc[k] = v
	}
	f := map[string]int{}
	for k, v := range rc.faults {
		f[k] = v
	}
	return acc, rc.requests, f
}

// chaosLoad runs the mixed load: request creations, status changes,
// comments and user deactivations, one operation per transaction, each
// idempotent so it can be retried when PostgreSQL restarts under it. It
// returns the events the load must produce, by logical key.
func chaosLoad(ctx context.Context, db *pgtest.DB, ops int, rate int) ([]string, error) {
	var expected []string
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	exec := func(sql string) error {
		for ctx.Err() == nil {
			if conn == nil {
				c, err := pgx.Connect(ctx, db.DSN)
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				conn = c
			}
			if _, err := conn.Exec(ctx, sql); err != nil {
				conn.Close(context.Background())
				conn = nil
				continue // idempotent: retrying an ambiguous commit is harmless
			}
			return nil
		}
		return ctx.Err()
	}
	start := time.Now()
	for i := 1; i <= ops; i++ {
		if wait := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); wait > 0 {
			time.Sleep(wait)
		}
		var sql string
		switch n := (i + 3) / 4; i % 4 {
		case 1:
			sql = fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) VALUES (%d, 'chaos', 1) ON CONFLICT (id) DO NOTHING`, n)
			expected = append(expected, fmt.Sprintf("request.created req_%d", n))
		case 2:
			sql = fmt.Sprintf(`UPDATE requests SET status = 'in_progress' WHERE id = %d AND status = 'open'`, n)
			expected = append(expected, fmt.Sprintf("request.updated req_%d", n), fmt.Sprintf("request.status_changed req_%d", n))
		case 3:
			sql = fmt.Sprintf(`INSERT INTO comments (id, request_id, author_id, body) VALUES (%d, %d, 1, 'looking') ON CONFLICT (id) DO NOTHING`, n, n)
			expected = append(expected, fmt.Sprintf("request.commented cmt_%d", n))
		case 0:
			sql = fmt.Sprintf(`UPDATE users SET active = false WHERE id = %d AND active`, 1000+n)
			expected = append(expected, fmt.Sprintf("user.updated usr_%d", 1000+n), fmt.Sprintf("user.deactivated usr_%d", 1000+n))
		}
		if err := exec(sql); err != nil {
			return nil, err
		}
	}
	return expected, nil
}

// TestChaos: a mixed load while dzhook is killed with SIGKILL every few
// seconds and PostgreSQL restarts once, with receivers that answer 500,
// time out or reset the connection at random. Nothing may be lost: every
// event reaches each receiver with one stable id, the journal holds each
// delivery once, none is left in flight, and the slot reaches the end of
// the load. `make chaos` runs 20,000 operations and 10 kills; `make test` a
// smaller version (DZHOOK_CHAOS_OPS, DZHOOK_CHAOS_KILLS).
func TestChaos(t *testing.T) {
	ops := envInt("DZHOOK_CHAOS_OPS", 2000)
	kills := envInt("DZHOOK_CHAOS_KILLS", 3)
	rate := envInt("DZHOOK_CHAOS_RATE", 400) // operations per second
	db := newDB(t)
	db.Exec(t, fmt.Sprintf(`INSERT INTO users (id, email) SELECT g, 'user' || g || '@company.com' FROM generate_series(1001, %d) g`, 1000+ops/4+1))
	a, b := newChaosReceiver(t), newChaosReceiver(t)
	path := writeChaosConfig(t, db, a.URL, b.URL)
	setup(t, path)
	p := startDzhook(t, path)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	type result struct {
		expected []string
		err      error
	}
	loaded := make(chan result, 1)
	loadStart := time.Now()
	go func() {
		e, err := chaosLoad(ctx, db, ops, rate)
		loaded <- result{e, err}
	}()
	loadFor := time.Duration(ops) * time.Second / time.Duration(rate)
	every := loadFor / time.Duration(kills+1)
	killed, restarted := 0, false
	var res result
	timer := time.NewTimer(every)
loop:
	for {
		select {
		case res = <-loaded:
			break loop
		case <-timer.C:
			switch {
			case killed < kills:
				p.kill()
				killed++
				if killed == (kills+1)/2 && !restarted {
					// PostgreSQL restarts once, while dzhook is down.
					if err := db.Cluster.Restart(); err != nil {
						t.Fatal(err)
					}
					restarted = true
				}
				p = startDzhook(t, path)
			}
			timer.Reset(every/2 + time.Duration(rand.Int64N(int64(every))))
		}
	}
	timer.Stop()
	if res.err != nil {
		t.Fatal(res.err)
	}
	for ; killed < kills; killed++ { // load ended early: kill the rest now
		p.kill()
		p = startDzhook(t, path)
	}
	loadTook := time.Since(loadStart)
	end := slotLSN(t, db, `SELECT pg_current_wal_lsn()::text`)

	for _, rc := range []*chaosReceiver{a, b} {
		waitOrDiagnose(t, db, 3*time.Minute, "every event accepted by both receivers", func() bool {
			acc, _, _ := rc.snapshot()
			for _, k := range res.expected {
				if acc[k] == nil {
					return false
				}
			}
			return true
		})
	}
	missing, unstable := 0, 0
	for _, rc := range []*chaosReceiver{a, b} {
		acc, _, _ := rc.snapshot()
		for _, k := range res.expected {
			switch n := len(acc[k]); {
			case n == 0:
				missing++
			case n > 1:
				unstable++
				t.Errorf("%s arrived under %d envelope ids, want one stable id", k, n)
			}
		}
	}
	want := 2 * len(res.expected)
	waitOrDiagnose(t, db, 2*time.Minute, "every delivery journaled as delivered", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state = 'delivered'`) == want
	})
	n, distinct := queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries`), queryInt(t, db, `SELECT count(DISTINCT (event_id, subscription_id)) FROM dzhook.deliveries`)
	if n != want || distinct != want {
		t.Errorf("journal holds %d deliveries (%d distinct), want %d", n, distinct, want)
	}
	if stuck := queryInt(t, db, `SELECT count(*) FROM dzhook.deliveries WHERE state <> 'delivered'`); stuck != 0 {
		t.Errorf("%d deliveries are not delivered (stuck in flight or failed)", stuck)
	}
	testutil.Eventually(t, time.Minute, "confirmed_flush_lsn at the end of the load", func() bool {
		return slotLSN(t, db, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'dzhook'`) >= end
	})
	_, reqA, faultsA := a.snapshot()
	_, reqB, faultsB := b.snapshot()
	report := fmt.Sprintf("chaos: %d operations in %s -> %d events x 2 subscriptions; %d SIGKILLs, PostgreSQL restarted %v; receiver requests %d + %d (faults a %v, b %v); journal deliveries %d (distinct %d); missing %d, unstable ids %d",
		ops, loadTook.Round(time.Millisecond), len(res.expected), killed, restarted, reqA, reqB, faultsA, faultsB, n, distinct, missing, unstable)
	t.Log(report)
	if out := os.Getenv("DZHOOK_CHAOS_REPORT"); out != "" {
		_ = os.WriteFile(out, []byte(report+"\n"), 0o644)
	}
	if err := p.stop(t); err != nil {
		t.Errorf("dzhook exited with %v after SIGTERM", err)
	}
}

func writeChaosConfig(t *testing.T, db *pgtest.DB, urlA, urlB string) string {
	t.Helper()
	path := t.TempDir() + "/config.yaml"
	schedule := "[0s, 200ms, 500ms" + strings.Repeat(", 1s", 15) + "]"
	yaml := fmt.Sprintf(`source:
  dsn: %s
journal:
  heartbeat: 200ms
delivery:
  allow_insecure_http: true
  timeout: 500ms
  retry_schedule: %s
admin:
  listen: ""
log:
  level: info
subscriptions:
  - {id: a, url: "%s", events: ["*"], secret: %s}
  - {id: b, url: "%s", events: ["*"], secret: %s}
`, db.DSN, schedule, urlA, secret, urlB, secret)
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
