package deploy_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/internal/config"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int    // where it starts
	cmd  string // upper case: FROM, RUN…
	args string
}

// stage is one FROM … of a multi-stage Dockerfile.
type stage struct {
	image string
	name  string
	insts []instruction
}

type dockerfile struct {
	stages []stage
}

// parseDockerfile reads the instructions of a Dockerfile: comments and
// blank lines dropped, backslash continuations joined, grouped by stage.
func parseDockerfile(path string) (*dockerfile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	df := &dockerfile{}
	var cur strings.Builder
	start := 0
	emit := func() error {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			words := strings.Fields(in.args)
			var s stage
			for i := 0; i < len(words); i++ {
				switch {
				case strings.HasPrefix(words[i], "--"):
				case strings.EqualFold(words[i], "AS") && i+1 < len(words):
					s.name = words[i+1]
					i++
				default:
					s.image = words[i]
				}
			}
			df.stages = append(df.stages, s)
		}
		if len(df.stages) == 0 {
			if in.cmd != "ARG" {
				return fmt.Errorf("%s:%d: %s before the first FROM", path, in.line, in.cmd)
			}
			return nil
		}
		s := &df.stages[len(df.stages)-1]
		s.insts = append(s.insts, in)
		return nil
	}
	for i, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue // a comment, also inside a continued instruction
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if body, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), `\`); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(line)
		if err := emit(); err != nil {
			return nil, err
		}
	}
	if err := emit(); err != nil {
		return nil, err
	}
	if len(df.stages) == 0 {
		return nil, fmt.Errorf("%s: no FROM", path)
	}
	return df, nil
}

// find returns a stage's instructions of one kind.
func (s stage) find(cmd string) []instruction {
	var out []instruction
	for _, in := range s.insts {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// final is the stage that becomes the image.
func (df *dockerfile) final() stage { return df.stages[len(df.stages)-1] }

// goBuildCmd is the go build command of the Dockerfile.
type goBuildCmd struct {
	stage    string
	line     int
	env      map[string]string // VAR=value words before "go build"
	trimpath bool
	ldflags  string
	out      string
	pkg      string
}

// goBuild finds the RUN … go build … of the Dockerfile and parses it.
func (df *dockerfile) goBuild() (goBuildCmd, error) {
	for _, s := range df.stages {
		for _, in := range s.find("RUN") {
			words, err := shellWords(in.args)
			if err != nil {
				return goBuildCmd{}, fmt.Errorf("Dockerfile:%d: %v", in.line, err)
			}
			at := -1
			for i := 0; i+1 < len(words); i++ {
				if words[i] == "go" && words[i+1] == "build" {
					at = i
					break
				}
			}
			if at < 0 {
				continue
			}
			b := goBuildCmd{stage: s.name, line: in.line, env: make(map[string]string)}
			// The VAR=value words right before go build (after any
			// --mount options and && of the same RUN).
			for i := at - 1; i >= 0; i-- {
				k, v, ok := strings.Cut(words[i], "=")
				if !ok || strings.HasPrefix(k, "-") {
					break
				}
				b.env[k] = v
			}
			args := words[at+2:]
			for i := 0; i < len(args); i++ {
				a := args[i]
				if a == "&&" || a == ";" || a == "|" {
					break
				}
				switch {
				case a == "-trimpath":
					b.trimpath = true
				case a == "-ldflags" && i+1 < len(args):
					i++
					b.ldflags = args[i]
				case strings.HasPrefix(a, "-ldflags="):
					b.ldflags = strings.TrimPrefix(a, "-ldflags=")
				case a == "-o" && i+1 < len(args):
					i++
					b.out = args[i]
				case !strings.HasPrefix(a, "-"):
					b.pkg = a
				}
			}
			if b.pkg == "" {
				return b, fmt.Errorf("Dockerfile:%d: go build names no package", in.line)
			}
			return b, nil
		}
	}
	return goBuildCmd{}, fmt.Errorf("Dockerfile: no RUN … go build")
}

// execForm parses a JSON-array (exec form) argument.
func execForm(t *testing.T, in instruction) []string {
	t.Helper()
	var argv []string
	if err := json.Unmarshal([]byte(in.args), &argv); err != nil {
		t.Fatalf("Dockerfile:%d: %s %s: not the exec form [\"…\"] (there is no shell in the image): %v", in.line, in.cmd, in.args, err)
	}
	return argv
}

func TestDockerfile(t *testing.T) {
	df, err := parseDockerfile(filepath.Join(env.deploy, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if len(df.stages) < 2 {
		t.Fatalf("Dockerfile has %d stage(s), want a builder and a final stage", len(df.stages))
	}
	if img := df.stages[0].image; !strings.HasPrefix(img, "golang:1.26") {
		t.Errorf("builder stage FROM %s, want golang:1.26 (go.mod's Go)", img)
	}
	final := df.final()
	if !strings.HasPrefix(final.image, "gcr.io/distroless/static") && final.image != "scratch" {
		t.Errorf("final stage FROM %s, want distroless/static or scratch", final.image)
	}

	b, err := df.goBuild()
	if err != nil {
		t.Fatal(err)
	}
	if b.env["CGO_ENABLED"] != "0" {
		t.Errorf("Dockerfile:%d: go build without CGO_ENABLED=0: the final stage has no libc", b.line)
	}
	if !b.trimpath {
		t.Errorf("Dockerfile:%d: go build without -trimpath", b.line)
	}
	for _, want := range []string{"-s", "-w"} {
		if !slices.Contains(strings.Fields(b.ldflags), want) {
			t.Errorf("Dockerfile:%d: -ldflags %q lacks %s", b.line, b.ldflags, want)
		}
	}
	if !strings.Contains(b.ldflags, "-X main.version=$VERSION") && !strings.Contains(b.ldflags, "-X main.version=${VERSION}") {
		t.Errorf("Dockerfile:%d: -ldflags %q does not set main.version from $VERSION", b.line, b.ldflags)
	}
	if b.pkg != "./cmd/dzhook" {
		t.Errorf("Dockerfile:%d: go build %s, want ./cmd/dzhook", b.line, b.pkg)
	}
	if _, err := os.Stat(filepath.Join(env.root, b.pkg, "main.go")); err != nil {
		t.Errorf("Dockerfile:%d: go build %s: %v", b.line, b.pkg, err)
	}
	// The build stage declares VERSION before it builds.
	declared := false
	for _, s := range df.stages {
		if s.name != b.stage {
			continue
		}
		for _, in := range s.find("ARG") {
			if name, _, _ := strings.Cut(in.args, "="); name == "VERSION" && in.line < b.line {
				declared = true
			}
		}
	}
	if !declared {
		t.Errorf("Dockerfile: the build stage uses $VERSION without ARG VERSION before line %d", b.line)
	}
	// TestMain built the binary with these flags: -X must have reached
	// main.version (the linker ignores a -X for a variable that does not
	// exist, so only the output tells).
	if r := dzhook(t, nil, "version"); r.code != 0 || strings.TrimSpace(r.stdout) != "dzhook "+versionSentinel {
		t.Errorf("built with the Dockerfile's -ldflags, `dzhook version` printed %q (exit %d), want %q: does main.version still exist?",
			r.stdout, r.code, "dzhook "+versionSentinel)
	}

	// Everything the build stage copies from the context exists there.
	for _, s := range df.stages {
		for _, in := range s.find("COPY") {
			words := strings.Fields(in.args)
			if len(words) > 0 && strings.HasPrefix(words[0], "--from=") {
				continue
			}
			for _, src := range words[:len(words)-1] {
				if strings.HasPrefix(src, "--") || src == "." {
					continue
				}
				if _, err := os.Stat(filepath.Join(env.root, src)); err != nil {
					t.Errorf("Dockerfile:%d: COPY %s: not in the build context (the repository root): %v", in.line, src, err)
				}
			}
		}
	}
	// The binary lands where ENTRYPOINT runs it.
	var binPath string
	for _, in := range final.find("COPY") {
		words := strings.Fields(in.args)
		if len(words) == 3 && words[0] == "--from="+b.stage && words[1] == b.out {
			binPath = words[2]
		}
	}
	if binPath == "" {
		t.Fatalf("Dockerfile: the final stage does not COPY --from=%s %s", b.stage, b.out)
	}
	entry := final.find("ENTRYPOINT")
	if len(entry) != 1 {
		t.Fatalf("Dockerfile: %d ENTRYPOINT in the final stage, want 1", len(entry))
	}
	if argv := execForm(t, entry[0]); len(argv) != 1 || argv[0] != binPath {
		t.Errorf("Dockerfile:%d: ENTRYPOINT %q, want [%q]", entry[0].line, argv, binPath)
	}
	cmds := final.find("CMD")
	if len(cmds) != 1 {
		t.Fatalf("Dockerfile: %d CMD in the final stage, want 1", len(cmds))
	}
	inv := checkInvocation(t, fmt.Sprintf("Dockerfile:%d CMD", cmds[0].line), execForm(t, cmds[0]))
	if inv.sub != "run" {
		t.Errorf("Dockerfile: CMD runs dzhook %s, want run", inv.sub)
	}
	configPath := inv.flags["config"]
	if configPath == "" {
		t.Errorf("Dockerfile: CMD does not pass --config")
	}

	// ENV: real variables, and DZHOOK_CONFIG agrees with CMD.
	for _, in := range final.find("ENV") {
		name, value, ok := strings.Cut(in.args, "=")
		if !ok {
			name, value, _ = strings.Cut(in.args, " ")
		}
		name, value = strings.TrimSpace(name), strings.Trim(strings.TrimSpace(value), `"`)
		if strings.HasPrefix(name, config.EnvPrefix) {
			checkDzhookVar(t, fmt.Sprintf("Dockerfile:%d ENV", in.line), name)
		}
		if name == "DZHOOK_CONFIG" && value != configPath {
			t.Errorf("Dockerfile:%d: ENV DZHOOK_CONFIG=%s but CMD passes --config %s", in.line, value, configPath)
		}
	}

	// A numeric non-root user, so Kubernetes' runAsNonRoot can check it.
	users := final.find("USER")
	if len(users) == 0 {
		t.Fatal("Dockerfile: no USER in the final stage: the image would run as root")
	}
	uid, err := strconv.Atoi(strings.Split(users[len(users)-1].args, ":")[0])
	if err != nil || uid == 0 {
		t.Errorf("Dockerfile:%d: USER %s, want a numeric non-root uid", users[len(users)-1].line, users[len(users)-1].args)
	}

	// EXPOSE is dzhook's admin port.
	_, defPort, _ := net.SplitHostPort(config.DefaultAdminListen)
	exposed := final.find("EXPOSE")
	if len(exposed) == 0 {
		t.Errorf("Dockerfile: no EXPOSE of the admin port %s", defPort)
	}
	for _, in := range exposed {
		if p, _, _ := strings.Cut(in.args, "/"); p != defPort {
			t.Errorf("Dockerfile:%d: EXPOSE %s, want the admin port %s (admin.listen's default)", in.line, in.args, defPort)
		}
	}
	// No shell in the image: a HEALTHCHECK must be the exec form, or NONE.
	for _, in := range final.find("HEALTHCHECK") {
		rest := strings.TrimSpace(in.args)
		if rest != "NONE" && !strings.Contains(rest, "CMD [") {
			t.Errorf("Dockerfile:%d: HEALTHCHECK %s: shell form, but the image has no shell", in.line, rest)
		}
		// Alive, not ready: a standby is never ready, and restarters that
		// act on "unhealthy" kept restarting it.
		if strings.Contains(rest, "--ready") {
			t.Errorf("Dockerfile:%d: HEALTHCHECK %s asks readiness: a standby dzhook would be unhealthy for good", in.line, rest)
		}
	}
}

// TestDockerignore checks that the Dockerfile's ignore file keeps what the
// build copies.
func TestDockerignore(t *testing.T) {
	path := filepath.Join(env.deploy, "Dockerfile.dockerignore")
	for i, line := range strings.Split(readFile(t, path), "\n") {
		p := strings.TrimSpace(line)
		if p == "" || strings.HasPrefix(p, "#") || strings.HasPrefix(p, "!") {
			continue
		}
		for _, keep := range []string{"go.mod", "go.sum", "cmd/dzhook/main.go", "cmd", "internal", "deploy/sql/dzdesk-schema.sql"} {
			if ok, _ := filepath.Match(strings.TrimPrefix(p, "**/"), keep); ok || p == keep {
				t.Errorf("Dockerfile.dockerignore:%d: %q excludes %s, which the build needs", i+1, p, keep)
			}
		}
	}
}
