package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/metrics"
)

// Ready reports why dzhook cannot do its job right now: not streaming
// (connecting, or standby behind another process), or the journal
// unreachable.
func (e *Engine) Ready(ctx context.Context) error {
	if since := e.writerFailingSince(); !since.IsZero() {
		// The stream reconnects between the writer's tries and looks
		// connected for a while each time: the journal's refusal is the
		// reason, until a write goes through.
		return fmt.Errorf("the journal refuses writes since %s (the log has the detail); nothing is journaled or acknowledged until a write goes through",
			since.UTC().Format(time.RFC3339))
	}
	st := e.stream.Stats()
	if !st.Connected && !st.Standby {
		// Not streaming because the journal does not answer, most
		// likely: the session ends for it, and the stream's own reason
		// ("replication connection lost", "PostgreSQL unreachable" when
		// the session's start met the journal's error) blamed the source.
		if err := e.journal.Ping(ctx); err != nil {
			e.readyWarn(err)
			return errors.New("journal unreachable (the log has the detail); not streaming until it answers")
		}
	}
	switch {
	case st.Standby:
		return errors.New("standby: another dzhook holds the replication slot")
	case !st.Connected && st.Problem != "":
		return errors.New("not streaming: " + st.Problem)
	case !st.Connected:
		return errors.New("not streaming: connecting to PostgreSQL")
	case !e.dispatcher.Started():
		// Streaming, and nothing delivered until the instance is
		// registered in the journal (its retries, its claims).
		return errors.New("starting: registering in the journal")
	}
	if err := e.schema.notReady(); err != nil {
		return err
	}
	if err := e.journal.Ping(ctx); err != nil {
		// /readyz answers without a token: the reason names no host,
		// user or database; the log has the detail.
		e.readyWarn(err)
		return errors.New("journal unreachable (the log has the detail)")
	}
	return nil
}

// writerFailingSince is the journal writer's FailingSince (zero before
// the writer exists).
func (e *Engine) writerFailingSince() time.Time {
	if e.writer == nil {
		return time.Time{}
	}
	return e.writer.FailingSince()
}

// readyWarn logs that the journal does not answer a readiness probe: at
// most once a minute, with how many probes it did not answer meanwhile
// (every probe logged it: the kubelet's every 10 s, and any monitor's).
func (e *Engine) readyWarn(err error) {
	now := time.Now().UnixNano()
	n := e.readyFailed.Add(1)
	last := e.readyWarned.Load()
	if now-last < int64(time.Minute) || !e.readyWarned.CompareAndSwap(last, now) {
		return
	}
	e.readyFailed.Store(0)
	e.log.Warn("readiness: the journal does not answer (said at most once a minute)", "err", err, "probes", n)
}

// Reload applies a new configuration without a restart: subscriptions
// are added, removed or changed without losing a delivery, and a mapping
// that fits the live catalog takes effect (resuming a stream stalled on a
// mapping that no longer fit: schema.go). Settings that need a restart
// (every other section) are reported and left as they were.
func (e *Engine) Reload(ctx context.Context, next *config.Config) error {
	if err := e.runnable(next); err != nil {
		return err
	}
	// The mapping is checked first: a file is applied whole or not at all.
	applyMapping, err := e.schema.prepare(ctx, next)
	if err != nil {
		return fmt.Errorf("mapping: %w; nothing in the file was applied", err)
	}
	// config.yaml's subscriptions with the runtime ones (runtime.go): an
	// id in both refuses the file.
	if err := e.syncRuntime(ctx, next); err != nil {
		return err
	}
	if applyMapping != nil {
		applyMapping()
	}
	// e.cfg stays the configuration the process started with (other
	// goroutines read it without a lock): the sections compared are the
	// ones still running, so a change stays reported until a restart.
	// The mapping is not one of them: it is next's now.
	restart := slices.DeleteFunc(config.RestartSections(e.cfg, next), func(s string) bool { return s == "mapping" })
	if len(restart) > 0 {
		e.log.Warn("configuration reloaded: subscriptions applied; these sections changed and take effect at the next restart", "sections", strings.Join(restart, ", "))
	} else {
		e.log.Info("configuration reloaded", "subscriptions", len(next.Subscriptions))
	}
	return nil
}

// runnable refuses a file whose subscriptions are valid only with its own
// delivery or custom_events sections, which take effect at the next
// restart: an http:// URL allowed by the new file's allow_insecure_http,
// an event the new file's custom_events adds. Applied, they would run
// against the sections still in force (an http:// receiver while the
// process runs https-only). The messages name the field, not what the
// running configuration says of its value (a URL may come from a secret
// reference).
func (e *Engine) runnable(next *config.Config) error {
	var msgs []string
	for i, s := range next.Subscriptions {
		already := map[string]bool{}
		for _, p := range next.ValidateSubscription(s) {
			already[p.Path] = true
		}
		for _, p := range e.cfg.ValidateSubscription(s) {
			if !already[p.Path] {
				msgs = append(msgs, fmt.Sprintf("subscriptions[%d].%s (subscription %q): valid only with this file's delivery or custom_events section, which takes effect at the next restart; restart to apply it", i, p.Path, s.ID))
			}
		}
	}
	if len(msgs) > 0 {
		return errors.New(strings.Join(msgs, "; "))
	}
	return nil
}

// AdminAddr is the admin server's address ("" when it is off).
func (e *Engine) AdminAddr() string {
	if e.adminLn == nil {
		return ""
	}
	return e.adminLn.Addr().String()
}

// Metrics returns the engine's metrics.
func (e *Engine) Metrics() *metrics.Metrics { return e.metrics }

// Dispatcher returns the dispatcher.
func (e *Engine) Dispatcher() *fanout.Dispatcher { return e.dispatcher }

// Stream returns the replication stream, for health and metrics.
func (e *Engine) Stream() *cdc.Stream { return e.stream }

// Journal returns the journal.
func (e *Engine) Journal() *journal.Store { return e.journal }
