package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/dzdesk/dzhook/internal/listen"
	"github.com/dzdesk/dzhook/signer"
)

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// runListen is the local-development receiver (what `stripe listen` is for
// Stripe): it verifies every POST's signature and prints one line per
// event until interrupted.
func runListen(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "listen", "--secret S [--host 127.0.0.1] [--port 9000] [--status 500 | --fail-rate 0.3] [--delay 6s] [--verbose]")
	port := fs.Int("port", 9000, "TCP `port` to listen on (0 picks a free one)")
	host := fs.String("host", "127.0.0.1", "`address` to listen on")
	var secrets stringList
	fs.Var(&secrets, "secret", "subscription `secret` to verify X-DZDESK-Signature with; repeat for a rotation (env DZHOOK_LISTEN_SECRET)")
	status := fs.Int("status", 0, "answer every verified request with this `code` (e.g. 500 to watch retries, 410 to disable)")
	failRate := fs.Float64("fail-rate", 0, "answer this `share` (0 to 1) of verified requests with 500")
	delay := fs.Duration("delay", 0, "wait this `long` before answering (dzhook times out after 5s)")
	verbose := fs.Bool("verbose", false, "print each event's JSON, indented")
	if code, stop := parseFlags(fs, args); stop {
		return code
	}
	if len(secrets) == 0 {
		if s := env.getenv("DZHOOK_LISTEN_SECRET"); s != "" {
			secrets = append(secrets, s)
		}
	}
	cfg := listen.Config{Status: *status, FailRate: *failRate, Delay: *delay, Verbose: *verbose, Out: env.stdout}
	for _, s := range secrets {
		cfg.Secrets = append(cfg.Secrets, []byte(s))
		// Standard Webhooks headers, when a delivery carries them, are
		// checked with the same secret.
		if key, err := signer.StandardKey(s); err == nil {
			cfg.StandardKeys = append(cfg.StandardKeys, key)
		}
	}
	h, err := listen.NewHandler(cfg)
	if err != nil {
		fmt.Fprintf(env.stderr, "dzhook %v\n", err) // the errors begin with "listen: "
		if len(secrets) == 0 {
			fmt.Fprintln(env.stderr, "  pass --secret with the subscription's secret")
		}
		return exitUsage
	}
	if *port < 0 || *port > 65535 {
		fmt.Fprintf(env.stderr, "dzhook listen: --port %d: want 0 to 65535\n", *port)
		return exitUsage
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(*host, fmt.Sprint(*port)))
	if err != nil {
		fmt.Fprintf(env.stderr, "dzhook %v\n", err) // the errors begin with "listen: "
		return exitFailure
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(env.stderr, "dzhook listen: receiving on http://%s/ (verifying %d secret(s)); Ctrl-C to stop\n", ln.Addr(), len(secrets))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return exitOK
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return exitOK
		}
		fmt.Fprintf(env.stderr, "dzhook %v\n", err) // the errors begin with "listen: "
		return exitFailure
	}
}
