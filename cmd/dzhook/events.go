package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/config"
)

// runEvents lists the event catalog, with the custom events of the
// configuration file, or prints the JSON Schemas of its events. The file
// is found as every command finds it (--config, else $DZHOOK_CONFIG, else
// ./config.yaml); one not named with --config may be absent, and then the
// catalog is DZDESK's events alone, so that the command works anywhere.
func runEvents(_ context.Context, env *cli, args []string) int {
	fs := newFlags(env, "events", "[--config file] [--json] [--schema [EVENT]]")
	path := configFlag(env, fs)
	asJSON := fs.Bool("json", false, "print JSON")
	schema := fs.Bool("schema", false, "print the JSON Schema of EVENT, or of every event with one as an object keyed by event name (custom events with the schema of the configuration's custom_events[].schema)")
	event, code, stop := parseEventsFlags(fs, args, schema)
	if stop {
		return code
	}
	events := catalog.Builtin()
	cfg := &config.Config{}
	named := false
	fs.Visit(func(f *flag.Flag) { named = named || f.Name == "config" })
	if _, err := os.Stat(*path); named || !errors.Is(err, os.ErrNotExist) {
		if cfg, err = config.LoadEnv(*path, env.environ()); err != nil {
			fmt.Fprintf(env.stderr, "%s: %v\n", *path, err)
			return exitFailure
		}
		cat, _ := cfg.Catalog()
		events = cat.Events()
	}
	if *schema {
		return printSchemas(env, cfg, events, event)
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

// parseEventsFlags is parseFlags that takes one EVENT argument after
// --schema, with flags before or after it (events --schema order.shipped
// --config dzhook.yaml).
func parseEventsFlags(fs *flag.FlagSet, args []string, schema *bool) (event string, code int, stop bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", exitOK, true
		}
		return "", exitUsage, true
	}
	if *schema && fs.NArg() > 0 {
		event = fs.Arg(0)
		if code, stop := parseFlags(fs, fs.Args()[1:]); stop {
			return "", code, true
		}
		return event, 0, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "dzhook events: unexpected argument %q (an event's schema: --schema EVENT)\n", fs.Arg(0))
		fs.Usage()
		return "", exitUsage, true
	}
	return "", 0, false
}

// printSchemas prints the schema of event, or of every event of events
// that has one (a custom event declared without a schema has none).
func printSchemas(env *cli, cfg *config.Config, events []catalog.Event, event string) int {
	set, err := cfg.Schemas()
	if err != nil {
		fmt.Fprintf(env.stderr, "dzhook events: %v\n", err)
		return exitFailure
	}
	if event != "" {
		doc, ok := set.Document(event)
		if !ok {
			fmt.Fprintf(env.stderr, "dzhook events: %s\n", noSchema(events, event))
			return exitFailure
		}
		fmt.Fprintf(env.stdout, "%s\n", trimNewline(doc))
		return exitOK
	}
	all := map[string]json.RawMessage{}
	for _, e := range events {
		if doc, ok := set.Document(e.Name); ok {
			all[e.Name] = doc
		}
	}
	b, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		fmt.Fprintf(env.stderr, "dzhook events: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(env.stdout, "%s\n", b)
	return exitOK
}

// noSchema says why event has no schema: it is not an event of the
// catalog, or a custom event declared without one.
func noSchema(events []catalog.Event, event string) string {
	for _, e := range events {
		if e.Name == event {
			return fmt.Sprintf("%s is a custom event declared without a schema (custom_events[].schema)", event)
		}
	}
	return fmt.Sprintf("no event %q (dzhook events lists them; custom events come from the configuration: --config, DZHOOK_CONFIG or ./config.yaml)", event)
}

func trimNewline(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		return b[:n-1]
	}
	return b
}
