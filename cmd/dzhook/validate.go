package main

import (
	"context"
	"fmt"
	"time"
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
	if cfg.Secrets.Key.IsSet() && len(cfg.Secrets.Keys) > 0 {
		// A rotation is easy to get backwards: say which key encrypts.
		fmt.Fprintf(env.stdout, "note: secrets.key encrypts; the %d key(s) of secrets.keys only decrypt (to rotate, the new key goes in secrets.key and the old one in secrets.keys)\n", len(cfg.Secrets.Keys))
	}
	for i, s := range cfg.Subscriptions {
		if t, err := time.Parse(time.RFC3339, s.PreviousSecretUntil); err == nil && time.Now().After(t) {
			fmt.Fprintf(env.stdout, "note: subscriptions[%d] (%s): the secret rotation's overlap ended at %s; previous_secret and previous_secret_until can be removed\n", i, s.ID, s.PreviousSecretUntil)
		}
	}
	return exitOK
}
