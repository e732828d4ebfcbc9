package deploy_test

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/config"
)

// composeVar matches compose's interpolation: $$, ${NAME}, ${NAME:-default},
// ${NAME-default}, ${NAME:?err}, ${NAME?err} and $NAME.
var composeVar = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// interpolate expands a compose string with an empty environment, as a
// fresh `docker compose up` would: every variable must have a default.
func interpolate(s string) (string, error) {
	var err error
	out := composeVar.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sub := composeVar.FindStringSubmatch(m)
		switch {
		case sub[2] == ":-" || sub[2] == "-":
			return sub[3]
		default:
			name := sub[1] + sub[4]
			err = fmt.Errorf("${%s} has no default: a fresh checkout would run with it empty", name)
			return ""
		}
	})
	return out, err
}

// interpolateAll expands every string of a decoded YAML tree.
func interpolateAll(t *testing.T, v any, where string) any {
	t.Helper()
	switch x := v.(type) {
	case string:
		s, err := interpolate(x)
		if err != nil {
			t.Errorf("compose.yaml %s: %v", where, err)
		}
		return s
	case obj:
		for k, e := range x {
			x[k] = interpolateAll(t, e, where+"."+k)
		}
	case []any:
		for i, e := range x {
			x[i] = interpolateAll(t, e, fmt.Sprintf("%s[%d]", where, i))
		}
	}
	return v
}

// commandArgs reads a compose command (a string or a list).
func commandArgs(t *testing.T, where string, v any) []string {
	t.Helper()
	switch x := v.(type) {
	case string:
		words, err := shellWords(x)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		return words
	case []any:
		return strs(v)
	}
	return nil
}

// composeEnv reads a service's environment (a mapping or KEY=value list).
func composeEnv(svc any) map[string]string {
	environ := make(map[string]string)
	switch e := get(svc, "environment").(type) {
	case obj:
		for k, v := range e {
			environ[k] = fmt.Sprint(v)
		}
	case []any:
		for _, kv := range e {
			k, v, _ := strings.Cut(fmt.Sprint(kv), "=")
			environ[k] = v
		}
	}
	return environ
}

// bindMount is one short-syntax volume of a service.
type bindMount struct {
	source, target string
}

func composeMounts(svc any) []bindMount {
	var out []bindMount
	for _, v := range list(svc, "volumes") {
		if s, ok := v.(string); ok {
			parts := strings.Split(s, ":")
			if len(parts) >= 2 {
				out = append(out, bindMount{source: parts[0], target: parts[1]})
			}
			continue
		}
		out = append(out, bindMount{source: str(v, "source"), target: str(v, "target")})
	}
	return out
}

// isBind reports whether a volume source is a host path.
func isBind(source string) bool {
	return strings.HasPrefix(source, ".") || strings.HasPrefix(source, "/")
}

func TestCompose(t *testing.T) {
	docs := decodeYAMLDocs(t, filepath.Join(env.deploy, "compose.yaml"))
	if len(docs) != 1 {
		t.Fatalf("compose.yaml: %d documents", len(docs))
	}
	compose := interpolateAll(t, docs[0], "").(obj)
	services := asMap(get(compose, "services"))
	for _, name := range []string{"postgres", "dzhook", "receiver"} {
		if services[name] == nil {
			t.Fatalf("compose.yaml: no service %s", name)
		}
	}
	pg, dz, recv := services["postgres"], services["dzhook"], services["receiver"]

	// Every host path mounted exists, and every build uses deploy/Dockerfile.
	for _, name := range sortedKeys(services) {
		svc := services[name]
		for _, m := range composeMounts(svc) {
			if !isBind(m.source) {
				if get(compose, "volumes", m.source) == nil && !slices.Contains(sortedKeys(asMap(get(compose, "volumes"))), m.source) {
					t.Errorf("compose.yaml %s: volume %s is not declared under volumes:", name, m.source)
				}
				continue
			}
			if _, err := os.Stat(filepath.Join(env.deploy, m.source)); err != nil {
				t.Errorf("compose.yaml %s: mounts %s, which does not exist: %v", name, m.source, err)
			}
		}
		if b := get(svc, "build"); b != nil {
			ctx := filepath.Join(env.deploy, str(b, "context"))
			df := filepath.Join(ctx, str(b, "dockerfile"))
			if want := filepath.Join(env.deploy, "Dockerfile"); df != want {
				t.Errorf("compose.yaml %s: builds %s, want deploy/Dockerfile", name, df)
			}
			if ctx != env.root {
				t.Errorf("compose.yaml %s: build context %s, want the repository root", name, ctx)
			}
		}
		// A service built from the dzhook image sets its healthcheck or
		// disables it: otherwise it inherits the image's (dzhook health),
		// which fails where no dzhook runs (the receiver).
		if get(svc, "build") != nil && get(svc, "healthcheck") == nil {
			t.Errorf("compose.yaml %s: built from the dzhook image with no healthcheck of its own: it inherits the image's HEALTHCHECK", name)
		}
		// depends_on: existing services, and service_healthy only where a
		// healthcheck exists.
		for dep, cond := range asMap(get(svc, "depends_on")) {
			if services[dep] == nil {
				t.Errorf("compose.yaml %s: depends on %s, which is not a service", name, dep)
				continue
			}
			if str(cond, "condition") == "service_healthy" && get(services[dep], "healthcheck") == nil {
				t.Errorf("compose.yaml %s: waits for %s to be healthy, which has no healthcheck", name, dep)
			}
		}
	}

	// PostgreSQL: logical replication, the reference schema and the role.
	pgArgs := commandArgs(t, "compose.yaml postgres command", get(pg, "command"))
	if len(pgArgs) == 0 || pgArgs[0] != "postgres" {
		t.Errorf("compose.yaml postgres: command %q, want postgres -c …", pgArgs)
	}
	settings := postgresSettings(pgArgs)
	checkLogicalReplication(t, "compose.yaml postgres command", settings)
	for name, want := range map[string]string{"max_replication_slots": "10", "max_wal_senders": "10"} {
		if settings[name] != want {
			t.Errorf("compose.yaml postgres: %s=%q, want %s", name, settings[name], want)
		}
	}
	if img := str(pg, "image"); !strings.HasPrefix(img, "postgres:15") {
		t.Errorf("compose.yaml postgres: image %s, want postgres:15", img)
	}
	if get(pg, "healthcheck") == nil {
		t.Errorf("compose.yaml postgres: no healthcheck")
	}
	mounted := make(map[string]string) // target → source
	for _, m := range composeMounts(pg) {
		mounted[m.target] = filepath.Clean(filepath.Join(env.deploy, m.source))
	}
	initdb := make(map[string]string) // source → target, for /docker-entrypoint-initdb.d
	for target, source := range mounted {
		if filepath.Dir(target) == "/docker-entrypoint-initdb.d" {
			initdb[source] = target
		}
	}
	schema := filepath.Join(env.deploy, "sql", "dzdesk-schema.sql")
	script := filepath.Join(env.deploy, "compose", "initdb.sh")
	if initdb[schema] == "" || initdb[script] == "" {
		t.Fatalf("compose.yaml postgres: sql/dzdesk-schema.sql and compose/initdb.sh must be mounted into /docker-entrypoint-initdb.d (got %v)", initdb)
	}
	if initdb[schema] > initdb[script] {
		t.Errorf("compose.yaml postgres: %s runs after %s: the role needs the tables first", initdb[schema], initdb[script])
	}
	sqlDir := regexp.MustCompile(`SQL_DIR:-([^}]+)\}`).FindStringSubmatch(readFile(t, script))
	if sqlDir == nil {
		t.Fatal("compose/initdb.sh: no ${SQL_DIR:-…} default")
	}
	for _, f := range []string{"role.sql", "publication.sql"} {
		if got := mounted[sqlDir[1]+"/"+f]; got != filepath.Join(env.deploy, "sql", f) {
			t.Errorf("compose.yaml postgres: initdb.sh reads %s/%s, where sql/%s must be mounted (mounted: %v)", sqlDir[1], f, f, mounted)
		}
	}
	pgEnv := composeEnv(pg)
	if pgEnv["DB_DZHOOK_PASSWORD"] == "" || !strings.Contains(readFile(t, script), "$DB_DZHOOK_PASSWORD") {
		t.Errorf("compose.yaml postgres: DB_DZHOOK_PASSWORD must be set for compose/initdb.sh")
	}

	// dzhook: command, configuration, environment.
	inv := checkInvocation(t, "compose.yaml dzhook command", commandArgs(t, "compose.yaml dzhook command", get(dz, "command")))
	if inv.sub != "run" {
		t.Errorf("compose.yaml dzhook runs dzhook %s, want run", inv.sub)
	}
	configPath := inv.flags["config"]
	var configFile string
	for _, m := range composeMounts(dz) {
		if m.target == configPath {
			configFile = filepath.Join(env.deploy, m.source)
		}
	}
	if configFile == "" {
		t.Fatalf("compose.yaml dzhook: nothing is mounted at --config %s", configPath)
	}
	environ := composeEnv(dz)
	if v, ok := environ["DZHOOK_CONFIG"]; ok && v != configPath {
		t.Errorf("compose.yaml dzhook: DZHOOK_CONFIG=%s but --config %s", v, configPath)
	}
	checkContainerEnv(t, "compose.yaml dzhook environment", environ, readFile(t, configFile))
	cfg := validateFile(t, "compose/config.yaml with compose.yaml's environment", configFile, environ)
	if cfg.Source.AutoSetup {
		t.Errorf("compose/config.yaml: source.auto_setup is true, but the role of sql/role.sql cannot create the publication; initdb.sh runs publication.sql")
	}

	// The DSN reaches the postgres service as the role initdb.sh creates.
	dsn, err := url.Parse(cfg.Source.DSN.Reveal())
	if err != nil {
		t.Fatalf("compose.yaml dzhook: DZHOOK_SOURCE_DSN: %v", err)
	}
	if services[dsn.Hostname()] == nil {
		t.Errorf("compose.yaml dzhook: the DSN's host %s is not a service", dsn.Hostname())
	}
	if pw, _ := dsn.User.Password(); dsn.User.Username() != "dzhook" || pw != pgEnv["DB_DZHOOK_PASSWORD"] {
		t.Errorf("compose.yaml dzhook: the DSN's user must be dzhook with postgres's DB_DZHOOK_PASSWORD")
	}
	if dsn.Path != "/"+pgEnv["POSTGRES_DB"] {
		t.Errorf("compose.yaml dzhook: the DSN's database %s is not POSTGRES_DB %s", dsn.Path, pgEnv["POSTGRES_DB"])
	}

	// The published port is the admin port.
	_, port := adminPort(t, "compose/config.yaml", cfg)
	published := false
	for _, p := range strs(dz, "ports") {
		parts := strings.Split(p, ":")
		if parts[len(parts)-1] == strconv.Itoa(port) {
			published = true
		}
	}
	if !published {
		t.Errorf("compose.yaml dzhook: ports %v do not publish the admin port %d", strs(dz, "ports"), port)
	}

	// The healthcheck runs a real subcommand, in exec form (no shell).
	hc := strs(dz, "healthcheck", "test")
	if len(hc) < 3 || hc[0] != "CMD" || filepath.Base(hc[1]) != "dzhook" {
		t.Errorf("compose.yaml dzhook: healthcheck %q, want [CMD, …/dzhook, subcommand…] (the image has no shell)", hc)
	} else {
		checkInvocation(t, "compose.yaml dzhook healthcheck", hc[2:])
	}
	// SIGTERM, then the drain.
	if g := str(dz, "stop_grace_period"); g != "" {
		d, err := time.ParseDuration(g)
		if err != nil || d < drainBudget(cfg) {
			t.Errorf("compose.yaml dzhook: stop_grace_period %s, want at least %s (delivery.timeout + admin shutdown + margin)", g, drainBudget(cfg))
		}
	}
	if cond := str(dz, "depends_on", "postgres", "condition"); cond != "service_healthy" {
		t.Errorf("compose.yaml dzhook: depends_on postgres condition %q, want service_healthy", cond)
	}

	// The receiver: dzhook listen, reachable from the dzhook container,
	// with the secret and port of the subscription that points at it.
	rinv := checkInvocation(t, "compose.yaml receiver command", commandArgs(t, "compose.yaml receiver command", get(recv, "command")))
	if rinv.sub != "listen" {
		t.Fatalf("compose.yaml receiver runs dzhook %s, want listen", rinv.sub)
	}
	if h := rinv.flags["host"]; h == "" || isLoopback(h) {
		t.Errorf("compose.yaml receiver: listen --host %q: the default 127.0.0.1 is unreachable from the dzhook container", h)
	}
	var sub *config.Subscription
	for i, s := range cfg.Subscriptions {
		u, err := url.Parse(s.URL)
		if err == nil && u.Hostname() == "receiver" {
			sub = &cfg.Subscriptions[i]
			if _, p, _ := net.SplitHostPort(u.Host); p != rinv.flags["port"] {
				t.Errorf("compose/config.yaml subscription %s: port %s, but the receiver listens on --port %s", s.ID, p, rinv.flags["port"])
			}
		}
	}
	if sub == nil {
		t.Fatal("compose/config.yaml: no subscription delivers to the receiver service")
	}
	if rinv.flags["secret"] != sub.Secret.Reveal() && composeEnv(recv)["DZHOOK_LISTEN_SECRET"] != sub.Secret.Reveal() {
		t.Errorf("compose.yaml receiver: its --secret is not subscription %s's secret: every delivery would fail verification", sub.ID)
	}
	checkContainerEnv(t, "compose.yaml receiver environment", composeEnv(recv), "")
}

// drainBudget is how long dzhook may take to stop after SIGTERM: attempts
// in flight finish (delivery.timeout), the admin server shuts down (5 s)
// and the journal is flushed; 5 s of margin.
func drainBudget(cfg *config.Config) time.Duration {
	return cfg.Delivery.Timeout + 10*time.Second
}
