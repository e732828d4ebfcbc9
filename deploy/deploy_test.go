// Package deploy_test checks the deployment files under deploy/ against the
// dzhook they deploy: every subcommand, flag, environment variable and port
// that the Dockerfile, the Kubernetes manifests, compose.yaml, the systemd
// unit and the README use must exist in dzhook, and every configuration
// shipped here must pass `dzhook validate` with the environment its
// manifest gives it. Renaming a flag or an environment variable without
// updating deploy/ fails these tests. monitoring_test.go holds the
// Prometheus rules and the Grafana dashboard to the metrics a running
// dzhook exports.
//
// TestMain builds cmd/dzhook once, with the build flags of the
// Dockerfile, and the tests run that binary. sql_test.go also applies the
// SQL files to a throwaway PostgreSQL (internal/pgtest) and runs dzhook as
// the least-privileged role they create.
package deploy_test

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/pgtest"
)

// versionSentinel replaces $VERSION in the Dockerfile's -ldflags when the
// tests build dzhook; `dzhook version` must print it back.
const versionSentinel = "deploy-test-0.0.0"

// env is what TestMain prepares for every test.
var env struct {
	root   string // the module root
	deploy string // root/deploy
	bin    string // the dzhook binary built with the Dockerfile's flags
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env.deploy = wd
	env.root = filepath.Dir(wd)
	if _, err := os.Stat(filepath.Join(env.root, "go.mod")); err != nil {
		fmt.Fprintf(os.Stderr, "deploy tests: %s is not the module root: %v\n", env.root, err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "dzhook-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil { // pgtest may run the server as nobody; the binary stays ours
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env.bin = filepath.Join(tmp, "dzhook")
	if err := buildLikeDockerfile(env.bin); err != nil {
		fmt.Fprintf(os.Stderr, "deploy tests: %v\n", err)
		return 1
	}
	return pgtest.Main(m)
}

// buildLikeDockerfile builds dzhook with the go build command of
// deploy/Dockerfile: the same package, -trimpath, -ldflags (with
// $VERSION set to versionSentinel) and CGO_ENABLED.
func buildLikeDockerfile(out string) error {
	df, err := parseDockerfile(filepath.Join(env.deploy, "Dockerfile"))
	if err != nil {
		return err
	}
	b, err := df.goBuild()
	if err != nil {
		return err
	}
	args := []string{"build"}
	if b.trimpath {
		args = append(args, "-trimpath")
	}
	if b.ldflags != "" {
		args = append(args, "-ldflags", expandVersion(b.ldflags, versionSentinel))
	}
	args = append(args, "-o", out, b.pkg)
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	cmd := exec.Command(goBin, args...)
	cmd.Dir = env.root
	cmd.Env = os.Environ()
	for k, v := range b.env {
		if k == "CGO_ENABLED" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	if outb, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, outb)
	}
	return nil
}

// expandVersion replaces $VERSION and ${VERSION} in s.
func expandVersion(s, v string) string {
	return strings.NewReplacer("${VERSION}", v, "$VERSION", v).Replace(s)
}

// ---- running dzhook ----------------------------------------------------------

// result is one finished dzhook command.
type result struct {
	code   int
	stdout string
	stderr string
}

// dzhook runs the built binary with exactly the environment given
// (KEY=value), nothing inherited, and a timeout.
func dzhook(t *testing.T, environ []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.bin, args...)
	cmd.Env = environ
	if cmd.Env == nil {
		cmd.Env = []string{}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("dzhook %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// flagSpec is one flag of a subcommand, read from its -h output.
type flagSpec struct {
	takesValue bool
}

var helpCache struct {
	sync.Mutex
	flags map[string]map[string]flagSpec
}

// flagPattern matches a line of flag.PrintDefaults: "  -name" or
// "  -name valuename".
var flagPattern = regexp.MustCompile(`(?m)^  -([A-Za-z0-9][A-Za-z0-9_.-]*)(?: (\S+))?$`)

// subcommandFlags runs `dzhook <sub> -h`, fails the test unless it exits 0
// (an unknown subcommand exits 2), and returns the flags it lists.
func subcommandFlags(t *testing.T, sub string) map[string]flagSpec {
	t.Helper()
	helpCache.Lock()
	defer helpCache.Unlock()
	if f, ok := helpCache.flags[sub]; ok {
		return f
	}
	r := dzhook(t, nil, sub, "-h")
	if r.code != 0 {
		t.Fatalf("`dzhook %s -h` exited %d: %q is not a dzhook subcommand?\n%s%s", sub, r.code, sub, r.stdout, r.stderr)
	}
	flags := make(map[string]flagSpec)
	for _, m := range flagPattern.FindAllStringSubmatch(r.stdout+r.stderr, -1) {
		flags[m[1]] = flagSpec{takesValue: m[2] != ""}
	}
	if helpCache.flags == nil {
		helpCache.flags = make(map[string]map[string]flagSpec)
	}
	helpCache.flags[sub] = flags
	return flags
}

// invocation is a parsed dzhook command line.
type invocation struct {
	sub   string
	flags map[string]string // name without dashes → value ("true" for a bare boolean)
}

// checkInvocation checks a dzhook command line (the arguments after the
// binary) against the binary: the subcommand exists and every flag is one
// of its flags. where names the manifest for the messages.
func checkInvocation(t *testing.T, where string, args []string) invocation {
	t.Helper()
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		t.Fatalf("%s: dzhook %q: the first argument must be a subcommand", where, args)
	}
	inv := invocation{sub: args[0], flags: make(map[string]string)}
	known := subcommandFlags(t, inv.sub)
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			t.Errorf("%s: dzhook %s: unexpected argument %q (flags only)", where, inv.sub, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		spec, ok := known[name]
		if !ok {
			t.Errorf("%s: dzhook %s has no flag -%s (it has: %s)", where, inv.sub, name, strings.Join(sortedKeys(known), ", "))
			continue
		}
		switch {
		case hasValue:
		case spec.takesValue && i+1 < len(args):
			i++
			value = args[i]
		case spec.takesValue:
			t.Errorf("%s: dzhook %s -%s needs a value", where, inv.sub, name)
		default:
			value = "true"
		}
		inv.flags[name] = value
	}
	return inv
}

// ---- environment variables ---------------------------------------------------

var cliEnvOnce struct {
	sync.Once
	names []string
	err   error
}

// cliEnvPattern finds the environment variables the CLI itself reads.
var cliEnvPattern = regexp.MustCompile(`(?i:getenv|lookupenv)\("(DZHOOK_[A-Z0-9_]+)"\)`)

// cliEnvVars returns the DZHOOK_… variables cmd/dzhook reads itself
// (DZHOOK_CONFIG, DZHOOK_ADMIN_URL…), found in its source.
func cliEnvVars(t *testing.T) []string {
	t.Helper()
	cliEnvOnce.Do(func() {
		files, err := filepath.Glob(filepath.Join(env.root, "cmd", "dzhook", "*.go"))
		if err != nil || len(files) == 0 {
			cliEnvOnce.err = fmt.Errorf("no Go files in cmd/dzhook: %v", err)
			return
		}
		seen := make(map[string]bool)
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				cliEnvOnce.err = err
				return
			}
			for _, m := range cliEnvPattern.FindAllStringSubmatch(string(b), -1) {
				seen[m[1]] = true
			}
		}
		cliEnvOnce.names = sortedKeys(seen)
	})
	if cliEnvOnce.err != nil {
		t.Fatal(cliEnvOnce.err)
	}
	return cliEnvOnce.names
}

// checkDzhookVar fails the test unless name, a DZHOOK_… variable, is a
// configuration override (config.EnvVars) or one the CLI reads.
func checkDzhookVar(t *testing.T, where, name string) {
	t.Helper()
	if slices.Contains(config.EnvVars(), name) || slices.Contains(cliEnvVars(t), name) {
		return
	}
	t.Errorf("%s: %s is not a dzhook environment variable: neither a configuration override (config.EnvVars) nor read by cmd/dzhook (%s)",
		where, name, strings.Join(cliEnvVars(t), ", "))
}

// runtimeVars are variables dzhook's process honours without naming them:
// the Go runtime's and libpq's (pgx reads PG* for what a DSN leaves out).
var runtimeVars = regexp.MustCompile(`^(GOGC|GOMEMLIMIT|GODEBUG|GOMAXPROCS|GOTRACEBACK|TZ|SSL_CERT_FILE|SSL_CERT_DIR|PG[A-Z]+)$`)

// refPattern matches the ${NAME} and ${NAME:-default} references of a
// dzhook configuration ($${ is a literal).
var refPattern = regexp.MustCompile(`(\$?)\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}`)

// configRefs returns the names a configuration's values reference (not
// its comments), and whether each has a default.
func configRefs(configYAML string) map[string]bool {
	refs := make(map[string]bool)
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(configYAML), &root); err != nil {
		return refs
	}
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.ScalarNode {
			for _, m := range refPattern.FindAllStringSubmatch(n.Value, -1) {
				if m[1] == "$" {
					continue
				}
				refs[m[2]] = refs[m[2]] || m[3] != ""
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(&root)
	return refs
}

// checkContainerEnv checks the environment a manifest gives dzhook: every
// DZHOOK_… name exists in dzhook, and every other name is one the
// configuration references or the runtime reads, so a variable left behind
// by a rename shows up.
func checkContainerEnv(t *testing.T, where string, environ map[string]string, configYAML string) {
	t.Helper()
	refs := configRefs(configYAML)
	for _, name := range sortedKeys(environ) {
		switch {
		case strings.HasPrefix(name, config.EnvPrefix):
			checkDzhookVar(t, where, name)
		case runtimeVars.MatchString(name):
		default:
			if _, ok := refs[name]; !ok {
				t.Errorf("%s: %s is set but the configuration does not reference ${%s} (references: %s)", where, name, name, strings.Join(sortedKeys(refs), ", "))
			}
		}
	}
	for name, hasDefault := range refs {
		if _, ok := environ[name]; !ok && !hasDefault {
			t.Errorf("%s: the configuration references ${%s} without a default, and the environment does not set it", where, name)
		}
	}
}

// validate runs `dzhook validate --config` on yaml (written to a temporary
// file) with exactly environ, and returns the loaded configuration.
func validate(t *testing.T, where, yaml string, environ map[string]string) *config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return validateFile(t, where, path, environ)
}

// validateFile is validate for a file on disk.
func validateFile(t *testing.T, where, path string, environ map[string]string) *config.Config {
	t.Helper()
	r := dzhook(t, environList(environ), "validate", "--config", path)
	if r.code != 0 || !strings.Contains(r.stdout, ": ok: ") {
		t.Fatalf("%s: `dzhook validate` exited %d:\n%s%s", where, r.code, r.stdout, r.stderr)
	}
	cfg, err := config.LoadEnv(path, environList(environ))
	if err != nil {
		t.Fatalf("%s: validate passed but config.LoadEnv failed: %v", where, err)
	}
	return cfg
}

func environList(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, k+"="+m[k])
	}
	return out
}

// adminPort returns the port of admin.listen, failing when it is off.
func adminPort(t *testing.T, where string, cfg *config.Config) (host string, port int) {
	t.Helper()
	if cfg.Admin.Listen == "" {
		t.Fatalf("%s: admin.listen is empty: no /healthz or /readyz to probe", where)
	}
	h, p, err := net.SplitHostPort(cfg.Admin.Listen)
	if err != nil {
		t.Fatalf("%s: admin.listen %q: %v", where, cfg.Admin.Listen, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s: admin.listen %q: port: %v", where, cfg.Admin.Listen, err)
	}
	return h, n
}

// isLoopback reports whether a listen host only accepts local connections.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ---- shell words -------------------------------------------------------------

// shellWords splits a command line as sh would, for the simple lines
// manifests hold: quotes, backslashes, and the operators ; && || | kept as
// words of their own. It expands nothing.
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	flush := func() {
		if inWord {
			words = append(words, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			flush()
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated ' in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+j])
			inWord = true
			i += j + 1
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte(`"\$`+"`", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated \" in %q", s)
			}
			inWord = true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == ';' || c == '|' || c == '&':
			flush()
			op := string(c)
			if i+1 < len(s) && (s[i+1] == '&' || s[i+1] == '|') {
				op += string(s[i+1])
				i++
			}
			words = append(words, op)
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	flush()
	return words, nil
}

// ---- small helpers -----------------------------------------------------------

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// deployFiles lists the files under deploy/, relative to it.
func deployFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(env.deploy, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(env.deploy, path)
		if err != nil {
			return err
		}
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
