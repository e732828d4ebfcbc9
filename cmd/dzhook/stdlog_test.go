package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// jsonLines decodes the structured log's lines.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a structured log line: %q", l)
		}
		lines = append(lines, m)
	}
	return lines
}

// TestStdLogRateLimited: per kind of message (its first words), one line
// a minute at most, the next one counting those suppressed; distinct
// kinds beyond a bound share one; what was suppressed last is reported on
// restore.
func TestStdLogRateLimited(t *testing.T) {
	var buf testutil.SyncBuffer
	now := time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)
	w := newStdLog(slog.New(slog.NewJSONHandler(&buf, nil)), func() time.Time { return now })
	for i := range 1000 {
		fmt.Fprintf(w, "Unsolicited response received on idle HTTP channel starting with %q; err=<nil>\n", fmt.Sprint("body", i))
	}
	fmt.Fprintln(w, "http: TLS handshake error from 10.0.0.1:4242: EOF")
	for i := range 1000 {
		fmt.Fprintf(w, "flood%d of distinct kinds\n", i) // a receiver cannot grow the kinds without bound
	}
	if n := len(w.kinds); n > stdLogKinds+1 {
		t.Errorf("%d kinds tracked, want at most %d", n, stdLogKinds+1)
	}
	now = now.Add(stdLogEvery)
	fmt.Fprintln(w, `Unsolicited response received on idle HTTP channel starting with "again"; err=<nil>`)
	w.flush()

	lines := jsonLines(t, buf.String())
	unsolicited, suppressed := 0, 0.0
	for _, l := range lines {
		if l["level"] != "WARN" {
			t.Errorf("line %v: level %v, want WARN", l, l["level"])
		}
		if line, _ := l["line"].(string); strings.HasPrefix(line, "Unsolicited") {
			unsolicited++
			if s, ok := l["suppressed"].(float64); ok {
				suppressed = s
			}
		}
	}
	if unsolicited != 2 || suppressed != 999 {
		t.Errorf("1,001 unsolicited-response lines over a minute: %d logged, the second saying %v suppressed; want 2 and 999", unsolicited, suppressed)
	}
	// 2 unsolicited, 1 TLS, 64 distinct kinds at most plus the shared
	// one, and the suppressed counts reported on restore.
	if max := 2 + 1 + stdLogKinds + 1 + stdLogKinds + 1; len(lines) > max {
		t.Errorf("%d lines logged, want at most %d", len(lines), max)
	}
}

// bodyAfter204 is a receiver that answers every request 204 followed by
// bytes a 204 cannot have: dzhook's client finds them on the idle
// connection and writes "Unsolicited response received on idle HTTP
// channel" to the standard log (as net/http's does).
func bodyAfter204(t *testing.T) (url string, got *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	got = &atomic.Int64{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					got.Add(1)
					if _, err := io.WriteString(c, "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\nunexpected"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return "http://" + l.Addr().String() + "/hook", got
}

// TestRunLogsStdLogThroughSlog: a receiver answering 204 with a body to
// every delivery makes the HTTP client write to the standard log each time;
// `dzhook run` sends those lines through its structured log, a bounded
// number of them, and none around it.
func TestRunLogsStdLogThroughSlog(t *testing.T) {
	const deliveries = 50
	url, got := bodyAfter204(t)
	var raw testutil.SyncBuffer // the standard log's own output, had run left it alone
	log.SetOutput(&raw)
	defer log.SetOutput(os.Stderr)

	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema, `INSERT INTO users (id, email) VALUES (1, 'john@company.com')`)
	cfg := t.TempDir() + "/config.yaml"
	yaml := fmt.Sprintf("source: {dsn: %q}\nadmin: {listen: \"\"}\ndelivery: {allow_insecure_http: true}\nlog: {format: json}\nsubscriptions:\n"+
		"  - {id: crm, url: %q, events: [request.created], secret: run-test-secret-0123456789}\n", db.DSN, url)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errOut testutil.SyncBuffer
	done := make(chan int, 1)
	go func() { done <- runEnv(ctx, []string{"dzhook", "run", "--config", cfg}, io.Discard, &errOut, nil) }()
	waitFor(t, &errOut, regexp.MustCompile(`dzhook running`))
	for i := 1; i <= deliveries; i++ { // one transaction each: one delivery after the other
		db.Exec(t, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id) VALUES (%d, 'request %d', 1)`, i, i))
	}
	deadline := time.After(30 * time.Second)
	for got.Load() < deliveries {
		select {
		case <-deadline:
			t.Fatalf("receiver got %d of %d deliveries\n%s", got.Load(), deliveries, errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("interrupted: exit %d, want 0", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not stop when interrupted")
	}

	if raw.String() != "" {
		t.Errorf("the standard log wrote around the structured log:\n%s", raw.String())
	}
	unsolicited := 0
	for _, l := range jsonLines(t, errOut.String()) {
		if line, _ := l["line"].(string); strings.Contains(line, "Unsolicited response") {
			unsolicited++
		}
		if kind, _ := l["kind"].(string); strings.HasPrefix(kind, "Unsolicited") {
			unsolicited++
		}
	}
	// One when it first happens, one at the end with the count of the
	// suppressed; the test lasts less than stdLogEvery.
	if unsolicited == 0 || unsolicited > 2 {
		t.Errorf("%d deliveries answered 204 with a body: %d structured lines about it, want 1 or 2", deliveries, unsolicited)
	}
}
