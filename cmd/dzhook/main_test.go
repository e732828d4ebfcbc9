package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
	"github.com/dzdesk/dzhook/signer"
)

var update = flag.Bool("update", false, "rewrite golden files")

// runCmd runs the program in-process and returns its exit code and output.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), append([]string{"dzhook"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestValidateSample(t *testing.T) {
	code, out, errOut := runCmd(t, "validate", "--config", "../../config.yaml")
	if code != exitOK {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, errOut)
	}
	if !regexp.MustCompile(`^\.\./\.\./config\.yaml: ok: 3 subscriptions \(3 active\), 12 events \(11 built-in, 1 custom\)\n$`).MatchString(out) {
		t.Errorf("stdout = %q, want the one-line summary", out)
	}
}

// TestValidateNamesEncryptingKey: with secrets.key and secrets.keys both
// set, validate says which one encrypts (secrets.key), since putting the
// new key first in secrets.keys does not rotate.
func TestValidateNamesEncryptingKey(t *testing.T) {
	out := validateOK(t, "source: {dsn: postgres://x@127.0.0.1/db}\nsecrets:\n  key: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n  keys: [BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=]\n")
	if want := "note: secrets.key encrypts; the 1 key(s) of secrets.keys only decrypt"; !strings.Contains(out, want) {
		t.Errorf("stdout = %q, want it to contain %q", out, want)
	}
}

// validateOK runs `dzhook validate` on a configuration file holding yaml,
// expects it valid, and returns what it printed.
func validateOK(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCmd(t, "validate", "--config", path)
	if code != exitOK {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, errOut)
	}
	return out
}

// TestValidateNotesAnEndedOverlap: a rotation's overlap that has ended
// is said, with the keys that can go; one still running is not.
func TestValidateNotesAnEndedOverlap(t *testing.T) {
	sub := func(id, until string) string {
		return "  - {id: " + id + ", url: https://" + id + ".example.com/, events: [request.created], secret: 0123456789abcdef, previous_secret: fedcba9876543210, previous_secret_until: " + until + "}\n"
	}
	out := validateOK(t, "source: {dsn: postgres://x@127.0.0.1/db}\nsubscriptions:\n"+sub("ended", "2024-01-16T14:30:00Z")+sub("running", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)))
	if want := "note: subscriptions[0] (ended): the secret rotation's overlap ended at 2024-01-16T14:30:00Z; previous_secret and previous_secret_until can be removed"; !strings.Contains(out, want) {
		t.Errorf("stdout = %q, want it to contain %q", out, want)
	}
	if strings.Contains(out, "(running)") {
		t.Errorf("stdout = %q notes the overlap still running", out)
	}
}

// TestValidateFiveMistakes is the golden test of `dzhook validate` on a
// file with five distinct mistakes.
func TestValidateFiveMistakes(t *testing.T) {
	code, out, errOut := runCmd(t, "validate", "--config", "../../internal/config/testdata/five-mistakes.yaml")
	if code != exitFailure {
		t.Fatalf("exit %d, want 1", code)
	}
	if out != "" {
		t.Errorf("stdout = %q, want nothing", out)
	}
	golden := filepath.Join("testdata", "validate-five-mistakes.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(errOut), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if errOut != string(want) {
		t.Errorf("stderr:\n%s\nwant (%s; refresh with -update):\n%s", errOut, golden, want)
	}
}

func TestValidateMissingFile(t *testing.T) {
	code, _, errOut := runCmd(t, "validate", "--config", "testdata/nope.yaml")
	if code != exitFailure || !strings.Contains(errOut, "does not exist") {
		t.Fatalf("exit %d, stderr %q; want 1 and a clear message", code, errOut)
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, exitUsage, "Usage: dzhook <command>"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"validate", "--bogus"}, exitUsage, "flag provided but not defined: -bogus"},
		{[]string{"validate", "extra"}, exitUsage, `unexpected argument "extra"`},
		{[]string{"help"}, exitOK, "validate"},
		{[]string{"version"}, exitOK, "dzhook dev"},
		{[]string{"events"}, exitOK, "request.status_changed"},
	} {
		code, out, errOut := runCmd(t, tc.args...)
		if code != tc.code || !strings.Contains(out+errOut, tc.want) {
			t.Errorf("dzhook %v: exit %d, output %q; want exit %d containing %q", tc.args, code, out+errOut, tc.code, tc.want)
		}
	}
}

// TestListen runs `dzhook listen` and posts to it: a signed delivery gets
// 200 and a printed line, a tampered body 401 and an INVALID line.
func TestListen(t *testing.T) {
	const secret = "listen-test-secret-0123456789"
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut testutil.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"dzhook", "listen", "--port", "0", "--secret", secret}, &out, &errOut)
	}()
	addr := waitFor(t, &errOut, regexp.MustCompile(`receiving on (http://[0-9.:]+/)`))

	body := []byte(`{"id":"whk_listen1","event":"request.created","timestamp":"2024-01-15T14:30:00Z","data":{"id":"req_1","title":"Café ☕"}}`)
	post := func(b []byte, sig string) int {
		req, _ := http.NewRequest(http.MethodPost, addr, bytes.NewReader(b))
		req.Header.Set(signer.HeaderSignature, sig)
		req.Header.Set(signer.HeaderEvent, "request.created")
		req.Header.Set(signer.HeaderAttempt, "2")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	sig := signer.Sign([]byte(secret), body)
	if got := post(body, sig); got != http.StatusOK {
		t.Errorf("signed POST: status %d, want 200", got)
	}
	waitFor(t, &out, regexp.MustCompile(`request\.created whk_listen1 attempt=2 verified -> 200`))

	tampered := bytes.Replace(body, []byte("Café"), []byte("Cafe"), 1)
	if got := post(tampered, sig); got != http.StatusUnauthorized {
		t.Errorf("tampered POST: status %d, want 401", got)
	}
	waitFor(t, &out, regexp.MustCompile(`whk_listen1 attempt=2 INVALID \(invalid signature\) -> 401`))

	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("listen exited %d after interrupt, want 0", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("listen did not stop after its context was cancelled")
	}
}

func TestListenNeedsSecret(t *testing.T) {
	code, _, errOut := runCmd(t, "listen", "--port", "0")
	if code != exitUsage || !strings.Contains(errOut, "--secret") {
		t.Fatalf("exit %d, stderr %q; want 2 and a hint about --secret", code, errOut)
	}
	// A port out of range is a usage mistake too, named (it was exit 1,
	// with net.Listen's "invalid port").
	for _, port := range []string{"70000", "-5"} {
		code, _, errOut := runCmd(t, "listen", "--secret", "s3cr3t-value-0123", "--port", port)
		if code != exitUsage || !strings.Contains(errOut, "--port "+port) {
			t.Errorf("listen --port %s: exit %d %q, want 2 naming --port", port, code, errOut)
		}
	}
}

// waitFor polls a buffer until re matches, and returns the first group (or
// the match).
func waitFor(t *testing.T, buf fmt.Stringer, re *regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(buf.String()); m != nil {
			return m[len(m)-1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %q in:\n%s", re, buf.String())
	return ""
}

// TestRunWaitsForTheDatabase: `dzhook run` started before its database
// keeps retrying (a sidecar), and gives up at once on a mistake that will
// not go away.
func TestRunWaitsForTheDatabase(t *testing.T) {
	dir := t.TempDir()
	cfg := dir + "/config.yaml"
	write := func(dsn string) {
		yaml := "source:\n  dsn: " + dsn + "\nadmin:\n  listen: \"\"\n"
		if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing listens on port 1: it retries until interrupted.
	write("postgres://dzhook@127.0.0.1:1/dzdesk?sslmode=disable&connect_timeout=1")
	ctx, cancel := context.WithCancel(context.Background())
	var errOut testutil.SyncBuffer
	done := make(chan int, 1)
	go func() { done <- runEnv(ctx, []string{"dzhook", "run", "--config", cfg}, io.Discard, &errOut, nil) }()
	waitFor(t, &errOut, regexp.MustCompile(`database not reachable yet; retrying`))
	// A SIGHUP (systemctl reload) while it waits does not end it: it
	// retries again. Not caught, the signal ended this test's process.
	before := strings.Count(errOut.String(), "database not reachable yet; retrying")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "a retry after the SIGHUP", func() bool {
		return strings.Count(errOut.String(), "database not reachable yet; retrying") > before
	})
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("interrupted while waiting: exit %d, want 0", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop when interrupted")
	}
	// A malformed DSN is not transient: exit 1 at once, refused with
	// the file (validation parses it), naming the parameter.
	write("postgres://dzhook@127.0.0.1:notaport/x")
	code, _, stderr := runCmd(t, "run", "--config", cfg)
	if code != exitFailure || !strings.Contains(stderr, "source.dsn: invalid connection string: invalid port") {
		t.Errorf("malformed DSN: exit %d, %q", code, stderr)
	}
}

// TestRunReloadsAndStops: `dzhook run` reloads its configuration when the
// file changes, and when interrupted stops its engine and its
// configuration watcher both, and exits 0.
func TestRunReloadsAndStops(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema)
	cfg := t.TempDir() + "/config.yaml"
	write := func(subs ...string) {
		yaml := fmt.Sprintf("source: {dsn: %q}\nadmin: {listen: \"\"}\ndelivery: {allow_insecure_http: true}\nsubscriptions:\n", db.DSN)
		for _, id := range subs {
			yaml += fmt.Sprintf("  - {id: %s, url: \"http://127.0.0.1:1/%s\", events: [\"*\"], secret: run-test-secret-0123456789}\n", id, id)
		}
		if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("crm")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errOut testutil.SyncBuffer
	done := make(chan int, 1)
	go func() { done <- runEnv(ctx, []string{"dzhook", "run", "--config", cfg}, io.Discard, &errOut, nil) }()
	waitFor(t, &errOut, regexp.MustCompile(`dzhook running`))
	write("crm", "slack")
	waitFor(t, &errOut, regexp.MustCompile(`configuration reloaded.* subscriptions=2`))
	// A broken file is rejected with its problems; the running
	// configuration stays, and the next good file is applied.
	if err := os.WriteFile(cfg, []byte("source: {dsn: [\nsubscriptions: 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, &errOut, regexp.MustCompile(`configuration reload rejected; the running configuration stays`))
	write("crm", "slack", "teams")
	waitFor(t, &errOut, regexp.MustCompile(`configuration reloaded.* subscriptions=3`))
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("interrupted: exit %d, want 0\n%s", code, errOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop when interrupted")
	}
}

// TestEnvFlagsDoNotRepeatAValue: a flag that takes an environment
// variable's name, given the value instead (a DSN with its password, a
// header's credential), says it takes a NAME and does not print what it
// was given. The message quoted it: "--owner-dsn-env:
// postgres://owner:S3cretPass@db/dzdesk is not set or empty" (found by a
// review).
func TestEnvFlagsDoNotRepeatAValue(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("source: {dsn: postgres://dzhook@127.0.0.1:1/dzdesk}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, url := startFakeAPI(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"setup", "--config", cfg, "--owner-dsn-env", "postgres://owner:S3cretPass@db/dzdesk"}, "--owner-dsn-env takes the NAME of an environment variable"},
		{[]string{"subscriptions", "create", "--url", "https://crm.example.com/hook", "--events", "*", "--header-env", "Authorization=Bearer S3cretPass"},
			"--header-env Authorization: after = comes the NAME of an environment variable"},
	} {
		code, out, errOut := cliRun(t, url, cliToken, c.args...)
		if code != exitUsage || !strings.Contains(errOut, c.want) || strings.Contains(out+errOut, "S3cretPass") {
			t.Errorf("%s: exit %d %q %q, want 2 saying %q and not the value", c.args[0], code, out, errOut, c.want)
		}
	}
	// A conventional name, unset, is named; a credential that is a valid
	// name (lower case, or a long word) is not repeated.
	code, _, errOut := cliRun(t, url, cliToken, "setup", "--config", cfg, "--owner-dsn-env", "DZHOOK_TEST_UNSET_OWNER_DSN")
	if code != exitUsage || !strings.Contains(errOut, "DZHOOK_TEST_UNSET_OWNER_DSN is not set") {
		t.Errorf("an unset variable: exit %d %q, want 2 naming it", code, errOut)
	}
	for _, c := range [][]string{
		{"setup", "--config", cfg, "--owner-dsn-env", "sk_live_51HxYzAbCdEf0123456789"},
		{"subscriptions", "create", "--url", "https://crm.example.com/hook", "--events", "*", "--header-env", "X-Api-Key=sk_live_51HxYzAbCdEf0123456789"},
		{"subscriptions", "create", "--url", "https://crm.example.com/hook", "--events", "*", "--header-env", "X-Api-Key=TOKEN_0123456789ABCDEF0123456789ABCDEF"},
	} {
		code, out, errOut := cliRun(t, url, cliToken, c...)
		if code != exitUsage || !strings.Contains(errOut, "is not set or empty") || strings.Contains(out+errOut, "0123456789") {
			t.Errorf("%s with a credential shaped as a name: exit %d %q %q, want 2, the variable unset and the value not repeated", c[0], code, out, errOut)
		}
	}
}
