package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/dzdesk/dzhook/internal/config"
)

// Exit codes that scripts can trust.
const (
	exitOK      = 0 // done
	exitFailure = 1 // the command ran and failed: bad config, a failed delivery, an unreachable server
	exitUsage   = 2 // the command line itself is wrong
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, env *cli, args []string) int
}

// cli is what every subcommand gets: where to write and how to read the
// environment, so run is testable without a process.
type cli struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	environ        func() []string
}

func commands() map[string]command {
	return map[string]command{
		"run":           {"stream the database's changes and deliver the webhooks", runRun},
		"setup":         {"create the publication, replication slot and journal (idempotent)", runSetup},
		"validate":      {"check a configuration file and report every problem", runValidate},
		"status":        {"subscriptions: state, backlog, response times (admin API)", runStatus},
		"health":        {"probe a running dzhook: /healthz, or /readyz with --ready (exit 0 when it answers 200)", runHealth},
		"deliveries":    {"delivery history, or one delivery's attempts (deliveries show ID)", runDeliveries},
		"retry":         {"retry a delivery now, or a subscription's failed ones", runRetry},
		"replay":        {"re-send a window of journaled events to a subscription; replay status, replay cancel", runReplay},
		"test":          {"send a sample event to a subscription", runTest},
		"pause":         {"pause a subscription", runPause},
		"resume":        {"resume a subscription; held deliveries go out", runResume},
		"subscriptions": {"list, show, create, update, delete subscriptions; rotate-secret", runSubscriptions},
		"audit":         {"the audit trail of changes to subscriptions", runAudit},
		"listen":        {"local receiver that verifies signatures and prints events", runListen},
		"events":        {"list the event catalog", runEvents},
		"version":       {"print the version", runVersion},
	}
}

// run is the whole program: it parses args, dispatches to a subcommand and
// returns its exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runEnv(ctx, args, stdout, stderr, os.Environ())
}

// runEnv is run with an explicit environment (KEY=value), for tests.
func runEnv(ctx context.Context, args []string, stdout, stderr io.Writer, environ []string) int {
	vars := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	env := &cli{stdout: stdout, stderr: stderr, getenv: func(k string) string { return vars[k] }, environ: func() []string { return environ }}
	if len(args) < 2 {
		usage(stderr)
		return exitUsage
	}
	name := args[1]
	switch name {
	case "help", "-h", "--help", "-help":
		usage(stdout)
		return exitOK
	case "-version", "--version":
		name = "version"
	}
	cmd, ok := commands()[name]
	if !ok {
		fmt.Fprintf(stderr, "dzhook: unknown command %q\n\n", name)
		usage(stderr)
		return exitUsage
	}
	return cmd.run(ctx, env, args[2:])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "dzhook — DZDESK webhooks from the database's change stream")
	fmt.Fprintln(w, "\nUsage: dzhook <command> [flags]\n\nCommands:")
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-13s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'dzhook <command> -h' for a command's flags.")
}

// newFlags returns a FlagSet that writes its usage to the cli's stderr.
func newFlags(env *cli, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: dzhook %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and returns the exit code to stop with, if any.
func parseFlags(fs *flag.FlagSet, args []string) (code int, stop bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, true
		}
		return exitUsage, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "dzhook %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		fs.Usage()
		return exitUsage, true
	}
	return 0, false
}

// configFlag registers --config with its default and environment override.
func configFlag(env *cli, fs *flag.FlagSet) *string {
	def := config.DefaultConfigPath
	if v := env.getenv("DZHOOK_CONFIG"); v != "" {
		def = v
	}
	return fs.String("config", def, "configuration `file` (env DZHOOK_CONFIG)")
}

func runVersion(_ context.Context, env *cli, args []string) int {
	fs := newFlags(env, "version", "")
	if code, stop := parseFlags(fs, args); stop {
		return code
	}
	fmt.Fprintf(env.stdout, "dzhook %s\n", version)
	return exitOK
}

// indent prefixes every line of s.
func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// isEnvName reports whether s can be an environment variable's name
// (letters, digits and _, not starting with a digit). A flag that takes
// one (--owner-dsn-env, --header-env) is easily given the value itself,
// a DSN or a credential, which its error must then not repeat.
func isEnvName(s string) bool {
	for i, r := range s {
		if r != '_' && (r < 'A' || r > 'Z') && (r < 'a' || r > 'z') && (i == 0 || r < '0' || r > '9') {
			return false
		}
	}
	return s != ""
}

// envNameShown is name as an error about its variable shows it: itself
// when it reads as a conventional variable name (upper case, words of
// letters and digits joined by _, none longer than 16: DZDESK_OWNER_DSN),
// else a placeholder. A credential can be a valid name too (sk_live_…,
// ghp_…, a hex token), and an unset "variable" is likely just that: the
// value given where its name belonged (found by a review).
func envNameShown(name string) string {
	words := strings.Split(name, "_")
	ok := len(words) > 1 && name[0] >= 'A' && name[0] <= 'Z'
	for _, w := range words {
		ok = ok && w != "" && len(w) <= 16 && strings.Trim(w, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") == ""
	}
	if ok {
		return name
	}
	return "given (its name is not repeated: it may be a value, not a name)"
}
