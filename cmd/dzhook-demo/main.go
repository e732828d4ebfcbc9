// Command dzhook-demo shows dzhook working in one command (make demo): it
// starts a throwaway PostgreSQL with wal_level=logical, applies the
// reference DZDESK schema, runs `dzhook listen` (a local receiver that
// verifies signatures) and `dzhook run`, then plays a helpdesk story in
// SQL — a user, a request, a status change, an assignment, a comment, a
// short SLA — while the listener prints each verified event. It then keeps
// a little activity going until Ctrl-C, which stops everything and removes
// the cluster. With -once it exits 0 as soon as every expected event has
// arrived (CI runs it that way).
package main

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/pgtest"
)

// expected are the event types the story produces.
var expected = []string{
	"user.created", "request.created", "request.updated", "request.status_changed", "request.assigned",
	"request.commented", "user.deactivated", "sla.warning", "sla.breach",
}

func main() {
	once := flag.Bool("once", false, "exit 0 once every expected event arrived (non-interactive)")
	binary := flag.String("binary", "bin/dzhook", "the dzhook binary")
	timeout := flag.Duration("timeout", 2*time.Minute, "with -once: give up after this long")
	flag.Parse()
	if err := run(os.Stdout, *binary, *once, *timeout); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo: %v\n", err)
		os.Exit(1)
	}
}

// demo holds where the demo writes.
type demo struct {
	mu  sync.Mutex
	out io.Writer
}

// say prints a step of the story, in bold.
func (d *demo) say(format string, args ...any) {
	d.println(fmt.Sprintf("\033[1m"+format+"\033[0m", args...))
}

func (d *demo) println(s string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintln(d.out, s)
}

func random(n int) string {
	b := make([]byte, n)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// portOr returns port if it is free, else a free one.
func portOr(port int) int {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return freePort()
	}
	l.Close()
	return port
}

func run(out io.Writer, binary string, once bool, timeout time.Duration) error {
	d := &demo{out: out}
	say := d.say
	binary, _ = filepath.Abs(binary)
	if _, err := os.Stat(binary); err != nil {
		return fmt.Errorf("%s not found: run `make build` (make demo does it)", binary)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	say("▶ starting a throwaway PostgreSQL (wal_level=logical)")
	cluster, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		return err
	}
	defer func() {
		cluster.Close()
		say("■ stopped; the throwaway cluster is removed")
	}()
	if err := cluster.Exec(ctx, "postgres", "CREATE DATABASE dzdesk"); err != nil {
		return err
	}
	if err := cluster.Exec(ctx, "dzdesk", dzsql.Schema); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "dzhook-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	secret, token := "demo-"+random(12), random(16)
	listenPort, adminPort := freePort(), portOr(8080)
	config := filepath.Join(dir, "config.yaml")
	yaml := demoConfig(cluster.DSN("dzdesk"), adminPort, token, listenPort, secret, secretsKey())
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		return err
	}

	setupOut, err := exec.Command(binary, "setup", "--config", config).CombinedOutput()
	if err != nil {
		return fmt.Errorf("dzhook setup: %v\n%s", err, setupOut)
	}
	say("▶ dzhook setup:\n%s", strings.TrimRight(string(setupOut), "\n"))

	seen := &seenEvents{want: expected, got: map[string]bool{}, done: make(chan struct{})}
	listener := exec.Command(binary, "listen", "--port", fmt.Sprint(listenPort), "--secret", secret)
	lp, err := d.startPiped(listener, "listen │ ", seen.line)
	if err != nil {
		return err
	}
	defer lp.stop()
	daemon := exec.Command(binary, "run", "--config", config)
	dp, err := d.startPiped(daemon, "dzhook │ ", nil)
	if err != nil {
		return err
	}
	defer dp.stop()
	if err := waitReady(ctx, fmt.Sprintf("http://127.0.0.1:%d/readyz", adminPort)); err != nil {
		return err
	}
	say("▶ dzhook runs; the listener prints every event it verifies.\n  Dashboard: http://127.0.0.1:%d/  (token: %s)\n  CLI:       DZHOOK_ADMIN_URL=http://127.0.0.1:%d DZHOOK_ADMIN_TOKEN=%s %s status\n  Failures:  kill %d (the listener), then in another terminal\n             %s listen --port %d --secret %s --status 500\n             and watch retries and the failing state; start it without --status to recover",
		adminPort, token, adminPort, token, binary, lp.cmd.Process.Pid, binary, listenPort, secret)

	story := []struct{ what, sql string }{
		{"a requester and an agent sign up", `INSERT INTO users (id, email, name, role) VALUES (1, 'john@company.com', 'John Smith', 'requester'), (2, 'jane@company.com', 'Jane Doe', 'agent')`},
		{"John opens a request", `INSERT INTO requests (id, title, description, priority, requester_id) VALUES (123, 'Cannot access email', 'Outlook says my password expired.', 'high', 1)`},
		{"the request gets a resolution SLA of 12 seconds", `INSERT INTO request_slas (request_id, sla_type, started_at, target_at) VALUES (123, 'resolution', now(), now() + interval '12 seconds')`},
		{"Jane takes it: in progress", `UPDATE requests SET status = 'in_progress', updated_by_id = 2, updated_at = now() WHERE id = 123`},
		{"Jane assigns it to herself", `UPDATE requests SET assigned_to_id = 2, updated_by_id = 2, updated_at = now() WHERE id = 123`},
		{"Jane comments", `INSERT INTO comments (request_id, author_id, body) VALUES (123, 2, 'Resetting your password now.')`},
		{"an old account is deactivated", `INSERT INTO users (id, email, name) VALUES (3, 'old@company.com', 'Old Account'); UPDATE users SET active = false WHERE id = 3`},
	}
	for _, s := range story {
		if ctx.Err() != nil {
			return nil
		}
		say("→ %s", s.what)
		if err := cluster.Exec(ctx, "dzdesk", s.sql); err != nil {
			return err
		}
		time.Sleep(700 * time.Millisecond) // a pace a person can follow
	}
	say("… waiting for the SLA: sla.warning at 75%% (9 s), sla.breach at 12 s")

	if once {
		select {
		case <-seen.done:
			say("✔ every expected event arrived, verified: %s", strings.Join(expected, ", "))
			return nil
		case <-time.After(timeout):
			return fmt.Errorf("timed out; missing events: %s", strings.Join(seen.missing(), ", "))
		case <-ctx.Done():
			return nil
		}
	}
	select {
	case <-seen.done:
		say("✔ every expected event arrived. Now a little activity every few seconds; Ctrl-C stops the demo.")
	case <-ctx.Done():
		return nil
	}
	return activity(ctx, cluster)
}

// demoConfig is the demo's configuration: dzhook against the throwaway
// cluster, its admin API on adminPort, one subscription to the listener.
// key is secrets.key, a throwaway one: without a key the API refuses to
// create subscriptions (409), and the README's curl walkthrough and
// `dzhook subscriptions create` are what a newcomer tries next. It is
// never printed; it goes with the demo's directory.
// The subscription keeps what arrives while it is paused
// (queue_while_inactive): the README's `dzhook pause demo; dzhook resume
// demo` shows the deliveries waiting, then going out, where the default
// would skip them.
func demoConfig(dsn string, adminPort int, token string, listenPort int, secret, key string) string {
	return fmt.Sprintf(`# The demo's configuration (written by cmd/dzhook-demo).
source:
  dsn: %s
delivery:
  allow_insecure_http: true      # the local listener speaks http
  retry_schedule: [0s, 5s, 30s]
admin:
  listen: 127.0.0.1:%d
  token: %s
sla:
  warning_percent: 75
  check_interval: 1s
log:
  level: warn
secrets:
  key: %s   # throwaway: seals the subscriptions the API creates
subscriptions:
  - id: demo
    url: http://127.0.0.1:%d/webhooks
    events: ["*"]
    secret: %s
    queue_while_inactive: true   # a pause holds new events for the resume
`, dsn, adminPort, token, key, listenPort, secret)
}

// secretsKey returns a new secrets.key: 32 random bytes, base64.
func secretsKey() string {
	b := make([]byte, 32)
	_, _ = crand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// activity keeps the helpdesk busy until ctx ends.
func activity(ctx context.Context, cluster *pgtest.Cluster) error {
	id := 1000
	statuses := []string{"in_progress", "pending", "resolved", "closed"}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Duration(3+rand.IntN(3)) * time.Second):
		}
		id++
		sql := fmt.Sprintf(`INSERT INTO requests (id, title, priority, requester_id) VALUES (%d, 'Request %d', '%s', 1)`, id, id, []string{"low", "medium", "high", "urgent"}[rand.IntN(4)])
		if rand.IntN(2) == 0 && id > 1001 {
			sql = fmt.Sprintf(`UPDATE requests SET status = '%s', updated_by_id = 2, updated_at = now() WHERE id = %d`, statuses[rand.IntN(len(statuses))], id-1)
		}
		if err := cluster.Exec(ctx, "dzdesk", sql); err != nil && ctx.Err() == nil {
			return err
		}
	}
}

// seenEvents watches the listener's lines for the expected event types.
type seenEvents struct {
	mu   sync.Mutex
	want []string
	got  map[string]bool
	done chan struct{}
}

func (s *seenEvents) line(l string) {
	if !strings.Contains(l, " verified ") {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.want {
		if strings.Contains(l, " "+w+" ") {
			s.got[w] = true
		}
	}
	if len(s.got) == len(s.want) {
		select {
		case <-s.done:
		default:
			close(s.done)
		}
	}
}

func (s *seenEvents) missing() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, w := range s.want {
		if !s.got[w] {
			out = append(out, w)
		}
	}
	return out
}

// proc is a process the demo started.
type proc struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed once the process is reaped
	printed chan struct{} // closed once all its output is printed
}

// startPiped starts a process whose output lines are printed with a
// prefix (and handed to onLine).
func (d *demo) startPiped(cmd *exec.Cmd, prefix string, onLine func(string)) (*proc, error) {
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, exited: make(chan struct{}), printed: make(chan struct{})}
	go func() {
		defer close(p.printed)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			d.println(prefix + sc.Text())
			if onLine != nil {
				onLine(sc.Text())
			}
		}
	}()
	go func() { _ = cmd.Wait(); pw.Close(); close(p.exited) }()
	return p, nil
}

// stop ends the process (SIGTERM, then SIGKILL after 10 s) and waits for
// its output.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	<-p.printed
}

func waitReady(ctx context.Context, url string) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("dzhook did not become ready within 60 s (%s)", url)
}
