package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// runHealth asks a running dzhook's /healthz, or /readyz with --ready, and
// exits 0 when it answers 200: a probe for images without a shell or an
// HTTP client (Docker's exec-form HEALTHCHECK). It needs no token.
func runHealth(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "health", "[--ready] [--admin URL] [--timeout 3s]")
	admin := fs.String("admin", env.getenv("DZHOOK_ADMIN_URL"), "admin API `URL` (env DZHOOK_ADMIN_URL; default from the config's admin.listen; without a config file, http://127.0.0.1:8080)")
	cfg := configFlag(env, fs)
	ready := fs.Bool("ready", false, "ask /readyz (streaming and journal reachable) instead of /healthz (alive)")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this `long`")
	if code, stop := parseFlags(fs, args); stop {
		return code
	}
	if *timeout <= 0 {
		fmt.Fprintf(env.stderr, "dzhook health: --timeout %s: give a positive duration, e.g. 3s\n", *timeout)
		return exitUsage
	}
	c := newClient(env, *admin, *cfg)
	if c.err != nil {
		fmt.Fprintf(env.stderr, "dzhook health: %v\n", c.err)
		return exitUsage
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		fmt.Fprintf(env.stderr, "dzhook health: admin URL %s: %v\n", c.shown, withoutURL(err))
		return exitUsage
	}
	resp, err := c.http.Do(req)
	if err != nil {
		fmt.Fprintf(env.stderr, "dzhook health: %s does not answer: %v\n", c.shown, withoutURL(err))
		return exitFailure
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Fprintln(env.stdout, printable(strings.TrimSpace(string(body)), true))
	if resp.StatusCode != http.StatusOK {
		return exitFailure
	}
	return exitOK
}
