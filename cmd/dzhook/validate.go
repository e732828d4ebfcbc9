package main

import (
	"context"
	"fmt"
)

// runValidate checks a configuration file: every problem with its path and
// exit 1, or a one-line summary and exit 0 (nats-server -t).
func runValidate(_ context.Context, env *cli, args []string) int {
	fs := newFlags(env, "validate", "[--config file]")
	path := configFlag(env, fs)
	if code, stop := parseFlags(fs, args); stop {
		return code
	}
	cfg, ok := loadConfig(env, *path)
	if !ok {
		return exitFailure
	}
	fmt.Fprintf(env.stdout, "%s: ok: %s\n", *path, cfg.Summary())
	return exitOK
}
