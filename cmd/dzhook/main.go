// Command dzhook is DZDESK's webhook engine as a sidecar: it streams the
// DZDESK database's changes, turns them into webhook events and delivers
// them, signed, with a persistent retry journal. `dzhook help` lists the
// subcommands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
