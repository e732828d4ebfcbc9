package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dzdesk/dzhook/internal/backoff"
	"github.com/dzdesk/dzhook/internal/beat"
	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/dashboard"
	"github.com/dzdesk/dzhook/internal/engine"
	"github.com/dzdesk/dzhook/internal/procs"
)

// loadConfig loads --config and prints every problem on failure.
func loadConfig(env *cli, path string) (*config.Config, bool) {
	for _, w := range config.UnknownEnv(env.environ()) {
		fmt.Fprintf(env.stderr, "warning: %s\n", w)
	}
	cfg, err := config.LoadEnv(path, env.environ())
	if err != nil {
		if ps := config.AsProblems(err); ps != nil {
			fmt.Fprintf(env.stderr, "%s: %d problem(s):\n", path, len(ps))
			for _, p := range ps {
				fmt.Fprintf(env.stderr, "  %s\n", p)
			}
		} else {
			fmt.Fprintf(env.stderr, "%s: %v\n", path, err)
		}
		return nil, false
	}
	return cfg, true
}

// newLogger builds the one logger of the process from log.level and
// log.format.
func newLogger(w io.Writer, cfg config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// runRun is the daemon: stream, map, deliver, until SIGINT or SIGTERM.
func runRun(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "run", "[--config file]")
	path := configFlag(env, fs)
	if code, stop := parseFlags(fs, args); stop {
		return code
	}
	// SIGHUP asks for a reload; not caught, it would end the process. It
	// is caught from here until run returns: while the engine starts
	// (which may wait minutes for the database) one is kept for the
	// watcher to act on, and during the drain after a stop it is ignored.
	// systemctl reload sends one whenever it is asked.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// The watcher compares the file with what was read now: digested
	// before the load, a change made meanwhile is reloaded (harmless);
	// digested when the watcher starts, which may be after the engine
	// started, a change made before that was never seen.
	digest := fileDigest(*path)
	cfg, ok := loadConfig(env, *path)
	if !ok {
		return exitFailure
	}
	log := newLogger(env.stderr, cfg.Log)
	// What net/http writes to the standard log goes through log too,
	// rate-limited (stdlog.go).
	defer routeStdLog(log)()
	if path := env.getenv("DZHOOK_CPUPROFILE"); path != "" {
		// For benchmarks (BENCHMARKS.md): a CPU profile of the whole run.
		f, err := os.Create(path)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	if path := env.getenv("DZHOOK_MEMPROFILE"); path != "" {
		runtime.MemProfileRate = 64 << 10
		defer func() {
			if f, err := os.Create(path); err == nil {
				// The profile is as of the last collection, which may
				// be long ago with the collector's settings (main.go).
				runtime.GC()
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	e, err := startEngine(ctx, cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return exitFailure
	}
	if ctx.Err() != nil {
		if e != nil { // nil: stopped while waiting for the database
			e.Close(ctx) // stopped after New: Run never takes what it opened
		}
		return exitOK
	}
	// The engine and the configuration watcher run together. When the
	// engine returns (at shutdown, or on a fatal error) the watcher stops
	// too, and run returns only once both have: a reload in progress is
	// not left behind.
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer stop()
		return e.Run(gctx)
	})
	g.Go(func() error { return watchConfig(gctx, env, *path, digest, hup, log, e) })
	if !procs.Pinned() {
		// One processor while the load fits in one (internal/procs).
		g.Go(func() error { return procs.Run(gctx, procs.Config{}, log) })
	}
	if err := g.Wait(); err != nil {
		log.Error("stopped", "err", err)
		return exitFailure
	}
	log.Info("stopped cleanly")
	return exitOK
}

// runSetup prepares the database: publication, replica identity, slot and
// journal, idempotently.
func runSetup(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "setup", "[--config file] [--check] [--accept-gap] [--owner-dsn-env NAME]")
	path := configFlag(env, fs)
	ownerEnv := fs.String("owner-dsn-env", "", "the `NAME` of an environment variable holding the tables' owner's DSN: the publication and REPLICA IDENTITY are made with it, the slot with source.dsn's role (an owner need not replicate); a variable, not the DSN itself, which the process list would show")
	check := fs.Bool("check", false, "change nothing in the source database, report what is missing (the journal schema is still migrated)")
	acceptGap := fs.Bool("accept-gap", false, "accept that the replication slot starts past the journal's position (it was dropped and created again): the events of transactions committed in between are not delivered; recorded in the journal")
	if code, stop := parseFlags(fs, args); stop {
		return code
	}
	cfg, ok := loadConfig(env, *path)
	if !ok {
		return exitFailure
	}
	opts := engine.SetupOptions{CheckOnly: *check, AcceptGap: *acceptGap}
	if *ownerEnv != "" {
		if !isEnvName(*ownerEnv) {
			// Not quoted: it is likely the DSN itself, password included.
			fmt.Fprintln(env.stderr, "setup: --owner-dsn-env takes the NAME of an environment variable holding the owner's DSN (letters, digits and _, e.g. DZDESK_OWNER_DSN), not the DSN itself; the value given is not shown")
			return exitUsage
		}
		if opts.OwnerDSN = env.getenv(*ownerEnv); opts.OwnerDSN == "" {
			fmt.Fprintf(env.stderr, "setup: --owner-dsn-env: the variable %s is not set or empty\n", envNameShown(*ownerEnv))
			return exitUsage
		}
	}
	actions, err := engine.Setup(ctx, cfg, opts)
	for _, a := range actions {
		fmt.Fprintf(env.stdout, "  %s\n", a)
	}
	if err != nil {
		fmt.Fprintf(env.stderr, "setup: %v\n", err)
		return exitFailure
	}
	if len(actions) == 0 {
		fmt.Fprintln(env.stdout, "setup: everything is in place")
	} else {
		fmt.Fprintf(env.stdout, "setup: done (%d change(s))\n", len(actions))
	}
	return exitOK
}

// configPoll is how often the configuration file is checked for changes.
const configPoll = 2 * time.Second

// watchConfig reloads the configuration on a SIGHUP (from hup) and when
// the file's content changes from last, the digest of what was loaded. A
// new configuration with problems is rejected, its problems logged, and
// the running one kept. It returns nil when ctx ends, after the reload in
// progress, if any.
func watchConfig(ctx context.Context, env *cli, path, last string, hup <-chan os.Signal, log *slog.Logger, e *engine.Engine) error {
	t := beat.NewTicker(configPoll)
	defer t.Stop()
	for {
		reason := ""
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			reason = "SIGHUP"
		case <-t.C:
			d := fileDigest(path)
			if d == last {
				continue
			}
			last, reason = d, "file changed"
		}
		last = fileDigest(path)
		next, err := config.LoadEnv(path, env.environ())
		if err != nil {
			if ps := config.AsProblems(err); ps != nil {
				for _, p := range ps {
					log.Error("configuration reload rejected; the running configuration stays", "reason", reason, "problem", p.Error())
				}
			} else {
				log.Error("configuration reload rejected; the running configuration stays", "reason", reason, "err", err)
			}
			continue
		}
		if err := e.Reload(ctx, next); err != nil {
			log.Error("configuration reload failed; the running configuration stays", "reason", reason, "err", err)
		}
	}
}

// fileDigest identifies a file's content ("" when unreadable).
func fileDigest(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return string(sum[:])
}

func dashboardFiles() fs.FS { return dashboard.Files() }

// startupPatience is how long dzhook waits for a database that is not
// reachable yet (a sidecar starting before its PostgreSQL).
const startupPatience = 2 * time.Minute

// startEngine builds the engine, retrying with backoff while the database
// is not reachable yet; any other error is returned at once.
func startEngine(ctx context.Context, cfg *config.Config, log *slog.Logger) (*engine.Engine, error) {
	start, bo := time.Now(), backoff.New(500*time.Millisecond, 10*time.Second)
	for {
		e, err := engine.New(ctx, cfg, engine.Options{Logger: log, Version: version, Dashboard: dashboardFiles()})
		if err == nil || !engine.Transient(err) || ctx.Err() != nil {
			return e, err
		}
		if time.Since(start) > startupPatience {
			return nil, fmt.Errorf("gave up after %s of waiting: %w", startupPatience, err)
		}
		msg := "database not reachable yet; retrying"
		if _, ok := errors.AsType[*cdc.StandbyError](err); ok {
			msg = "source.dsn leads to a standby; waiting for the primary"
		}
		log.Warn(msg, "err", err, "delay", bo.Current().String(), "giving_up_in", (startupPatience - time.Since(start)).Round(time.Second).String())
		if bo.Wait(ctx) != nil {
			return nil, nil
		}
	}
}
