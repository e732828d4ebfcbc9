package main

import (
	"context"
	"fmt"

	"github.com/dzdesk/dzhook/internal/config"
)

// runValidate checks a configuration file: every problem with its path and
// exit 1, or a one-line summary and exit 0 (nats-server -t).
func runValidate(_ context.Context, env *cli, args []string) int {
	fs := newFlags(env, "validate", "[--config file]")
	path := configFlag(env, fs)
	if code, stop := parseFlags(fs, args); stop {
		return code
	}
	cfg, err := config.LoadEnv(*path, env.environ())
	if err != nil {
		if ps := config.AsProblems(err); ps != nil {
			fmt.Fprintf(env.stderr, "%s: %d problem(s):\n", *path, len(ps))
			for _, p := range ps {
				fmt.Fprintf(env.stderr, "  %s\n", p)
			}
		} else {
			fmt.Fprintf(env.stderr, "%s: %v\n", *path, err)
		}
		return exitFailure
	}
	fmt.Fprintf(env.stdout, "%s: ok: %s\n", *path, cfg.Summary())
	return exitOK
}
