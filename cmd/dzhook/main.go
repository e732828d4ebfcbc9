// Command dzhook is DZDESK's webhook engine as a sidecar: it streams the
// DZDESK database's changes, turns them into webhook events and delivers
// them, signed, with a persistent retry journal. `dzhook help` lists the
// subcommands.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// The garbage collector's defaults, unless GOGC or GOMEMLIMIT say
// otherwise: collect when the heap has grown by 400% rather than 100%
// (dzhook's live heap is small and its allocation rate high: this cut the
// CPU per event by a quarter in the catch-up benchmark), with a soft limit
// of 128 MiB that makes the collector work harder before memory grows
// past it.
const (
	gcPercent   = 400
	memoryLimit = 128 << 20
)

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
