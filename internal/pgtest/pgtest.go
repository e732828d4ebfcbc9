// Package pgtest starts a throwaway PostgreSQL cluster for tests: initdb into
// a temporary directory (as an unprivileged user when the tests run as
// root, since initdb refuses root), wal_level=logical, plenty of
// replication slots, a random port on 127.0.0.1, and a fresh database per
// test. Everything is removed at the end, also after a failure.
//
// A test package uses it through TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
//	func TestX(t *testing.T) {
//		db := pgtest.NewDB(t) // skips, or fails under CI=true, without PostgreSQL
//		...
//	}
//
// The cluster starts on the first NewDB call, so packages whose tests do
// not all need a database pay nothing for it.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// InstallHint is printed when no PostgreSQL binaries are found.
const InstallHint = "PostgreSQL 15 server binaries not found: install them (apt-get install -y postgresql-15) or set PG_BIN to the directory holding initdb and postgres"

// Cluster is one running throwaway PostgreSQL server.
type Cluster struct {
	// Port is the TCP port on 127.0.0.1.
	Port int
	// Dir holds the data directory and the server log.
	Dir string
	// Version is the server's server_version_num (150007: 15.7).
	Version int

	bin  string
	cred *syscall.Credential // nil when not running as root

	mu  sync.Mutex
	cmd *exec.Cmd
	// exited is closed when the current postgres process has exited.
	exited chan struct{}
}

// Options tune Start.
type Options struct {
	// Settings are extra postgresql.conf settings (name → value), laid over
	// the defaults below.
	Settings map[string]string
}

// defaultSettings make a cluster fit for logical replication tests: slots
// and senders for many tests at once, and no fsync (a throwaway cluster).
var defaultSettings = map[string]string{
	"wal_level":               "logical",
	"max_replication_slots":   "64",
	"max_wal_senders":         "64",
	"max_connections":         "300",
	"fsync":                   "off",
	"full_page_writes":        "off",
	"shared_buffers":          "128MB",
	"listen_addresses":        "127.0.0.1",
	"unix_socket_directories": "",
	"log_min_messages":        "warning",
	"log_timezone":            "UTC",
	"timezone":                "UTC",
	"max_wal_size":            "1GB",
}

// FindBin returns the directory holding initdb and postgres: $PG_BIN, then
// PATH, then the newest /usr/lib/postgresql/*/bin (15 preferred).
func FindBin() (string, error) {
	has := func(dir string) bool {
		for _, b := range []string{"initdb", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv("PG_BIN"); dir != "" {
		if has(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("PG_BIN=%s does not hold initdb and postgres", dir)
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, want := range []int{15, 0} {
		for _, d := range dirs {
			if (want == 0 || pgVersion(d) == want) && has(d) {
				return d, nil
			}
		}
	}
	return "", errors.New(InstallHint)
}

func pgVersion(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// Start creates and starts a new cluster.
func Start(opts Options) (*Cluster, error) {
	bin, err := FindBin()
	if err != nil {
		return nil, err
	}
	removeStale()
	dir, err := os.MkdirTemp("", "dzhook-pgtest-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, bin: bin}
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		// initdb refuses to run as root: run the server as nobody.
		u, err := user.Lookup("nobody")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("running as root needs the unprivileged user nobody: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	initdb := c.command(filepath.Join(bin, "initdb"), "-D", c.dataDir(), "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	conf := make(map[string]string, len(defaultSettings)+len(opts.Settings))
	for k, v := range defaultSettings {
		conf[k] = v
	}
	for k, v := range opts.Settings {
		conf[k] = v
	}
	var b strings.Builder
	for _, k := range sortedKeys(conf) {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(conf[k], "'", "''"))
	}
	if err := os.WriteFile(filepath.Join(c.dataDir(), "postgresql.auto.conf"), []byte(b.String()), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if c.cred != nil {
		_ = os.Chown(filepath.Join(c.dataDir(), "postgresql.auto.conf"), int(c.cred.Uid), int(c.cred.Gid))
	}
	for attempt := 0; ; attempt++ {
		c.Port, err = freePort()
		if err == nil {
			err = c.start()
		}
		if err == nil {
			return c, nil
		}
		if attempt == 3 {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

func (c *Cluster) dataDir() string { return filepath.Join(c.Dir, "data") }

// command prepares a PostgreSQL binary to run as the cluster's owner.
func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	cmd.SysProcAttr = sysProcAttr(c.cred)
	return cmd
}

// start runs postgres in the foreground as a child (so it dies with the
// test binary) and waits until it accepts connections.
func (c *Cluster) start() error {
	logf, err := os.OpenFile(filepath.Join(c.Dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := c.command(filepath.Join(c.bin, "postgres"), "-D", c.dataDir(), "-p", strconv.Itoa(c.Port))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	c.mu.Lock()
	c.cmd, c.exited = cmd, exited
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, c.DSN("postgres"))
		if err == nil {
			defer conn.Close(ctx)
			var v string
			if err := conn.QueryRow(ctx, "SHOW server_version_num").Scan(&v); err != nil {
				return fmt.Errorf("read the server's version: %w", err)
			}
			c.Version, _ = strconv.Atoi(v)
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("postgres exited during start-up:\n%s", c.LogTail(20))
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("postgres did not accept connections within 60s: %v\n%s", err, c.LogTail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop shuts the server down (fast shutdown, then kill after 30 s).
func (c *Cluster) stop() {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// StopFast stops the server as `pg_ctl stop -m fast` does (SIGINT: cut
// the sessions, write a shutdown checkpoint, wait for the walsenders'
// clients to confirm it) and reports how long that took; a server still
// running after timeout is killed, and ok is false. Start it again with
// StartAgain.
func (c *Cluster) StopFast(timeout time.Duration) (took time.Duration, ok bool) {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return 0, true
	}
	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
		return time.Since(start), true
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-exited
		return time.Since(start), false
	}
}

// Restart stops the server and starts it again on the same port, as
// `pg_ctl restart -m fast` does: every connection is cut.
func (c *Cluster) Restart() error {
	c.stop()
	return c.start()
}

// Kill stops the server at once (SIGKILL on the postmaster, so the next
// start runs crash recovery). Start it again with StartAgain.
func (c *Cluster) Kill() {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.cmd = nil
	c.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Kill()
		<-exited
	}
}

// StartAgain starts a stopped or killed server on the same port.
func (c *Cluster) StartAgain() error { return c.start() }

// Clone stops the server, copies its data directory, and starts the
// server again and the copy, on a port of its own: the copy is the
// cluster as of now, as a restore of a backup taken now or a standby
// promoted now would be (the same system identifier, the same slots).
// Close it as any cluster.
func (c *Cluster) Clone() (*Cluster, error) { return c.clone(false) }

// CloneStandby is Clone with the copy left a standby in recovery (hot,
// with no primary to follow): its WAL ends where the cluster's did, and
// it takes read-only connections, replication ones included.
func (c *Cluster) CloneStandby() (*Cluster, error) { return c.clone(true) }

// ClonePromoted is Clone with the copy started as a standby (no primary
// to follow) and promoted, as a standby that had replayed the WAL up to
// now and is failed over to: the same system identifier and slots, on
// the next timeline, which leaves the cluster's at the copy's WAL end.
func (c *Cluster) ClonePromoted() (*Cluster, error) {
	cl, err := c.clone(true)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, cl.DSN("postgres"))
	if err == nil {
		defer conn.Close(ctx)
		var ok bool
		// Waits (up to 60 s) until the copy accepts writes.
		if err = conn.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&ok); err == nil && !ok {
			err = errors.New("pg_promote: not promoted within 60s")
		}
	}
	if err != nil {
		cl.Close()
		return nil, fmt.Errorf("promote the copy: %w\n%s", err, cl.LogTail(20))
	}
	return cl, nil
}

func (c *Cluster) clone(standby bool) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "dzhook-pgtest-")
	if err != nil {
		return nil, err
	}
	cl := &Cluster{Dir: dir, bin: c.bin, cred: c.cred}
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	if c.cred != nil {
		if err := os.Chown(dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	c.stop()
	out, cpErr := exec.Command("cp", "-a", c.dataDir(), cl.dataDir()).CombinedOutput()
	if err := c.start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if cpErr != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("copy the data directory: %w\n%s", cpErr, out)
	}
	_ = os.Remove(filepath.Join(cl.dataDir(), "postmaster.pid"))
	if standby {
		// Owned by the cluster's owner, as the copy's other files.
		f := filepath.Join(cl.dataDir(), "standby.signal")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		if c.cred != nil {
			if err := os.Chown(f, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
				os.RemoveAll(dir)
				return nil, err
			}
		}
	}
	for attempt := 0; ; attempt++ {
		cl.Port, err = freePort()
		if err == nil {
			err = cl.start()
		}
		if err == nil {
			return cl, nil
		}
		if attempt == 3 {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

// Close stops the server and removes its directory.
func (c *Cluster) Close() {
	c.stop()
	_ = os.RemoveAll(c.Dir)
}

// Addr is the server's host:port.
func (c *Cluster) Addr() string { return fmt.Sprintf("127.0.0.1:%d", c.Port) }

// DSN returns a connection URL for database db as the superuser postgres.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

// LogTail returns the last n lines of the server log.
func (c *Cluster) LogTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "server.log"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// removeStale deletes the directories of clusters whose test binary died
// without cleaning up (killed by a timeout, say). Their servers died with
// it (see sysProcAttr).
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "dzhook-pgtest-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			_ = os.RemoveAll(d)
		}
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
