package main

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/config"
)

// runEvents lists the event catalog, with the custom events of a config
// file when one is given.
func runEvents(_ context.Context, env *cli, args []string) int {
	fs := newFlags(env, "events", "[--config file] [--json]")
	path := fs.String("config", "", "also list the custom events of this configuration `file`")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, stop := parseFlags(fs, args); stop {
		return code
	}
	events := catalog.Builtin()
	if *path != "" {
		cfg, err := config.LoadEnv(*path, env.environ())
		if err != nil {
			fmt.Fprintf(env.stderr, "%s: %v\n", *path, err)
			return exitFailure
		}
		cat, _ := cfg.Catalog()
		events = cat.Events()
	}
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(events)
		return exitOK
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "EVENT\tDESCRIPTION")
	for _, e := range events {
		fmt.Fprintf(tw, "%s\t%s\n", e.Name, e.Description)
	}
	_ = tw.Flush()
	return exitOK
}
