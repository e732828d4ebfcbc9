package deploy_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// unit is a systemd unit file: section → key → values (a key may repeat).
type unit map[string]map[string][]string

// parseUnit reads a unit file.
func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	u := make(unit)
	section := ""
	sc := bufio.NewScanner(strings.NewReader(readFile(t, path)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u[section] = make(map[string][]string)
		case section == "":
			t.Fatalf("%s:%d: %q outside a section", path, n, line)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s:%d: %q is not key=value", path, n, line)
			}
			if strings.HasSuffix(v, `\`) {
				t.Fatalf("%s:%d: continuation lines are not supported by this test", path, n)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// one returns a key's last value (systemd: the last assignment wins for
// single-valued settings).
func (u unit) one(section, key string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// parseTimespan reads a systemd time span such as 30s, 1min 30s or 90.
func parseTimespan(s string) (time.Duration, error) {
	if n, err := time.ParseDuration(s + "s"); err == nil && !strings.ContainsAny(s, "hmsu") {
		return n, nil
	}
	s = strings.NewReplacer("min", "m", "sec", "s", " ", "").Replace(s)
	return time.ParseDuration(s)
}

// envFileVars reads a KEY=value environment file.
func envFileVars(t *testing.T, path string) map[string]string {
	t.Helper()
	vars := make(map[string]string)
	for n, line := range strings.Split(readFile(t, path), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`).MatchString(k) {
			t.Errorf("%s:%d: %q is not NAME=value", path, n+1, line)
			continue
		}
		vars[k] = strings.Trim(v, `"'`)
	}
	return vars
}

func TestSystemdUnit(t *testing.T) {
	path := filepath.Join(env.deploy, "systemd", "dzhook.service")
	u := parseUnit(t, path)
	svc := u["Service"]
	if svc == nil {
		t.Fatal("dzhook.service: no [Service] section")
	}

	// Every dzhook command line: subcommand and flags exist.
	var start invocation
	for _, key := range []string{"ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost"} {
		for _, line := range svc[key] {
			words, err := shellWords(strings.TrimLeft(line, "-@+!:"))
			if err != nil {
				t.Fatalf("dzhook.service %s=%s: %v", key, line, err)
			}
			if len(words) == 0 || filepath.Base(words[0]) != "dzhook" {
				continue
			}
			inv := checkInvocation(t, "dzhook.service "+key, words[1:])
			if key == "ExecStart" {
				start = inv
			}
		}
	}
	if start.sub != "run" {
		t.Fatalf("dzhook.service: ExecStart runs dzhook %q, want run", start.sub)
	}
	if start.flags["config"] != "/etc/dzhook/config.yaml" {
		t.Errorf("dzhook.service: ExecStart --config %q, want /etc/dzhook/config.yaml", start.flags["config"])
	}

	// Reload is SIGHUP, and dzhook handles it (behaviour: sql_test.go).
	reload := strings.Join(svc["ExecReload"], "\n")
	if !strings.Contains(reload, "kill -HUP $MAINPID") {
		t.Errorf("dzhook.service: ExecReload %q does not send SIGHUP to $MAINPID", reload)
	}
	if !sourceContains(t, "cmd/dzhook", "syscall.SIGHUP") {
		t.Errorf("dzhook.service reloads with SIGHUP, but cmd/dzhook no longer handles syscall.SIGHUP")
	}
	if u.one("Service", "KillSignal") != "SIGTERM" || !sourceContains(t, "cmd/dzhook", "syscall.SIGTERM") {
		t.Errorf("dzhook.service: KillSignal=%s; dzhook drains on SIGTERM", u.one("Service", "KillSignal"))
	}

	// Long enough to drain, with the sample configuration's timeout.
	sample := filepath.Join(env.root, "config.yaml")
	vars := envFileVars(t, filepath.Join(env.deploy, "systemd", "dzhook.env.example"))
	cfg := validateFile(t, "config.yaml with systemd/dzhook.env.example", sample, vars)
	stop, err := parseTimespan(u.one("Service", "TimeoutStopSec"))
	if err != nil || stop < drainBudget(cfg) {
		t.Errorf("dzhook.service: TimeoutStopSec=%s, want at least %s (delivery.timeout %s + admin shutdown + margin)",
			u.one("Service", "TimeoutStopSec"), drainBudget(cfg), cfg.Delivery.Timeout)
	}
	if r, err := parseTimespan(u.one("Service", "RestartSec")); err != nil || r <= 0 {
		t.Errorf("dzhook.service: RestartSec=%q, want a delay", u.one("Service", "RestartSec"))
	}

	// The environment: the file, and every variable it or the unit sets.
	if ef := u.one("Service", "EnvironmentFile"); ef != "-/etc/dzhook/dzhook.env" {
		t.Errorf("dzhook.service: EnvironmentFile=%q, want -/etc/dzhook/dzhook.env", ef)
	}
	for _, line := range svc["Environment"] {
		words, err := shellWords(line)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range words {
			name, value, _ := strings.Cut(w, "=")
			vars[name] = value
		}
	}
	checkContainerEnv(t, "dzhook.service environment (dzhook.env.example, Environment=)", vars, readFile(t, sample))
	for name, v := range vars {
		if strings.Contains(name, "SECRET") || strings.Contains(name, "TOKEN") {
			if !strings.Contains(v, "CHANGE-ME") {
				t.Errorf("dzhook.env.example: %s=%q is not marked as a placeholder (CHANGE-ME)", name, v)
			}
		}
	}

	// The sandbox: these settings with these values ("" only present).
	want := []struct{ key, value string }{
		{"Type", "exec"},
		{"Restart", "on-failure"},
		{"RestartSec", ""},
		{"KillSignal", "SIGTERM"},
		{"TimeoutStopSec", ""},
		{"DynamicUser", "yes"},
		{"ProtectSystem", "strict"},
		{"ProtectHome", "yes"},
		{"PrivateTmp", "yes"},
		{"PrivateDevices", "yes"},
		{"NoNewPrivileges", "yes"},
		{"ProtectKernelTunables", "yes"},
		{"ProtectKernelModules", "yes"},
		{"ProtectKernelLogs", "yes"},
		{"ProtectControlGroups", "yes"},
		{"ProtectClock", "yes"},
		{"ProtectHostname", "yes"},
		{"RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"},
		{"RestrictNamespaces", "yes"},
		{"RestrictRealtime", "yes"},
		{"RestrictSUIDSGID", "yes"},
		{"LockPersonality", "yes"},
		{"MemoryDenyWriteExecute", "yes"},
		{"CapabilityBoundingSet", ""},
		{"AmbientCapabilities", ""},
		{"SystemCallFilter", ""},
		{"SystemCallArchitectures", "native"},
		{"UMask", "0077"},
	}
	for _, w := range want {
		vs, ok := svc[w.key]
		if !ok {
			t.Errorf("dzhook.service: [Service] lacks %s", w.key)
			continue
		}
		if w.value != "" && vs[len(vs)-1] != w.value {
			t.Errorf("dzhook.service: %s=%s, want %s", w.key, vs[len(vs)-1], w.value)
		}
	}
	if cb := u.one("Service", "CapabilityBoundingSet"); cb != "" {
		t.Errorf("dzhook.service: CapabilityBoundingSet=%s, want empty (no capabilities)", cb)
	}
	if !containsValue(svc["SystemCallFilter"], "@system-service") {
		t.Errorf("dzhook.service: SystemCallFilter lacks @system-service")
	}

	// systemd's own assessment, when systemd-analyze can do it offline.
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		out, err := exec.Command(sa, "security", "--offline=yes", "--threshold=20", path).CombinedOutput()
		switch {
		case err == nil:
		case strings.Contains(string(out), "Overall exposure level"):
			t.Errorf("systemd-analyze security: exposure above 2.0:\n%s", lastLines(string(out), 3))
		default:
			t.Logf("systemd-analyze security --offline unavailable here: %v", err)
		}
	}
}

func containsValue(vs []string, v string) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// sourceContains reports whether a non-test Go file of dir (relative to
// the module root) contains s.
func sourceContains(t *testing.T, dir, s string) bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(env.root, dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), s) {
			return true
		}
	}
	return false
}
