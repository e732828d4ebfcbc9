package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
)

// replayPollInterval is how often replay --wait asks for the progress.
const replayPollInterval = time.Second

// runReplay re-sends the journaled events of a window to a subscription
// (POST /v1/subscriptions/{id}/replay), shows replays and cancels one.
// "status" and "cancel" as the first argument are subcommands; "start"
// is the default, and spells it out for a subscription whose id is one
// of those words.
func runReplay(ctx context.Context, env *cli, args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help":
			replayUsage(env.stderr)
			return exitOK
		case "status":
			return replayStatus(ctx, env, args[1:])
		case "cancel":
			return replayCancel(ctx, env, args[1:])
		case "start":
			args = args[1:]
		}
	}
	return replayStart(ctx, env, args)
}

func replayUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: dzhook replay <subcommand> [flags]

  [start] SUBSCRIPTION --since 24h|RFC3339   re-send the journaled events of the window to it,
         [--until T] [--events 'request.*,sla.*'] [--wait [--timeout 1h]]   as new deliveries with the original ids
  status SUBSCRIPTION [RID]                  one replay's progress, or the latest replays
  cancel SUBSCRIPTION RID                    stop a replay still going; its waiting deliveries are cancelled

--wait follows the replay until it stops running: exit 0 when it is done
with no failed delivery, 1 when it was cancelled, failed, or a delivery
failed. Every subcommand takes --admin URL, --config F and --json.
`)
}

// replayPath is the path of a subscription's replays, or of one.
func replayPath(sub string, rid ...string) string {
	p := "/v1/subscriptions/" + url.PathEscape(sub)
	if len(rid) == 0 {
		return p + "/replays"
	}
	return p + "/replays/" + url.PathEscape(rid[0])
}

func replayStart(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "replay", "SUBSCRIPTION --since 24h|RFC3339 [--until T] [--events a,b] [--wait [--timeout D]] [--json]")
	admin, cfg, asJSON := adminFlags(env, fs)
	since := fs.String("since", "", "the window's start: an RFC 3339 `time`, or a duration ago (2h, 24h, 7d); required")
	until := fs.String("until", "", "the window's end, excluded (RFC 3339 or a duration ago); now when absent")
	events := fs.String("events", "", "only these event `types` or globs, comma-separated (request.*,sla.*); every event the subscription receives when absent")
	wait := fs.Bool("wait", false, "follow the progress until the replay stops running (exit 1 when cancelled, failed, or a delivery failed)")
	waitFor := fs.Duration("timeout", 0, "with --wait, stop waiting after this `long` (exit 1; the replay goes on): a receiver down, or a subscription paused, keeps its deliveries pending for hours; 0: no limit")
	pos, code, stop := parseArgs(fs, args)
	if stop {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(env.stderr, "dzhook replay: give one subscription id")
		replayUsage(env.stderr)
		return exitUsage
	}
	if f := emptyFlag(fs, "until", "events"); f != "" {
		return refuseEmpty(env, "replay", f)
	}
	if *waitFor < 0 || *waitFor > 0 && !*wait {
		fmt.Fprintln(env.stderr, "dzhook replay: --timeout is a positive duration, given with --wait")
		return exitUsage
	}
	if *since == "" {
		fmt.Fprintln(env.stderr, "dzhook replay: give --since (24h, 7d, or an RFC 3339 time)")
		fs.Usage()
		return exitUsage
	}
	sub := pos[0]
	body := api.ReplayRequest{Since: *since, Until: *until}
	for e := range strings.SplitSeq(*events, ",") {
		if e = strings.TrimSpace(e); e != "" {
			body.Events = append(body.Events, e)
		}
	}
	// "--events ," (a script's unset variables) names no type; sent as
	// none, it replayed every event type (found by a review).
	if *events != "" && len(body.Events) == 0 {
		fmt.Fprintf(env.stderr, "dzhook replay: --events %q names no event type: give types or globs (request.*), or leave the flag out\n", *events)
		return exitUsage
	}
	c := newClient(env, *admin, *cfg)
	var rp api.Replay
	raw, err := c.do(ctx, "POST", "/v1/subscriptions/"+url.PathEscape(sub)+"/replay", body, &rp)
	if err != nil {
		return fail(env, "replay", err)
	}
	if !*wait {
		if *asJSON {
			env.stdout.Write(raw)
			return exitOK
		}
		printStarted(env, rp)
		fmt.Fprintf(env.stdout, "Follow it with: dzhook replay status %s %s\n", sub, rp.ID)
		return exitOK
	}
	if !*asJSON {
		printStarted(env, rp)
	}
	if *waitFor > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *waitFor)
		defer cancel()
	}
	return waitReplay(ctx, env, c, rp, *asJSON)
}

// printStarted says what a replay is about to re-send, and what the
// journal no longer keeps of its window.
func printStarted(env *cli, rp api.Replay) {
	types := "every event the subscription receives"
	if len(rp.Events) > 0 {
		types = strings.Join(rp.Events, ", ")
	}
	fmt.Fprintf(env.stdout, "replay %s of %s started: %d events from %s to %s (%s)\n",
		rp.ID, rp.Subscription, rp.Matched, when(&rp.Since), when(&rp.Until), printable(types, false))
	if rp.Note != "" {
		fmt.Fprintf(env.stdout, "note: %s\n", printable(rp.Note, false))
	}
}

// waitReplay asks for the replay's progress every second until its
// outcome is known: it stopped running, and, done, none of its deliveries
// is pending any more (each delivered or failed, retries included). A
// replay is done once it has made its deliveries, before their attempts:
// stopping there, a receiver that was down gave exit 0. On a terminal the
// progress rewrites one line; elsewhere (a log, a pipe) a line is
// printed when it changes. With asJSON only the last answer is printed.
func waitReplay(ctx context.Context, env *cli, c *client, rp api.Replay, asJSON bool) int {
	tty := isTerminal(env.stdout)
	last := ""
	show := func(rp api.Replay) {
		if asJSON {
			return
		}
		line := progressLine(rp)
		switch {
		case tty:
			fmt.Fprintf(env.stdout, "\r%s\x1b[K", line)
		case line != last:
			fmt.Fprintln(env.stdout, line)
		}
		last = line
	}
	var raw []byte
	tick := time.NewTicker(replayPollInterval)
	defer tick.Stop()
	for rp.State == "running" || rp.State == "done" && rp.Pending > 0 {
		show(rp)
		select {
		case <-ctx.Done():
			if tty && !asJSON {
				fmt.Fprintln(env.stdout)
			}
			fmt.Fprintf(env.stderr, "dzhook replay: stopped waiting; the replay goes on (dzhook replay cancel %s %s stops it)\n", rp.Subscription, rp.ID)
			return exitFailure
		case <-tick.C:
		}
		var next api.Replay
		var err error
		raw, err = c.do(ctx, "GET", replayPath(rp.Subscription, rp.ID), nil, &next)
		if err != nil {
			if ctx.Err() != nil {
				continue // the select above says it
			}
			if tty && !asJSON {
				fmt.Fprintln(env.stdout)
			}
			return fail(env, "replay", err)
		}
		rp = next
	}
	if asJSON {
		if raw == nil { // finished before the first poll: the POST's answer was final
			var err error
			if raw, err = c.do(ctx, "GET", replayPath(rp.Subscription, rp.ID), nil, &rp); err != nil {
				return fail(env, "replay", err)
			}
		}
		env.stdout.Write(raw)
	} else {
		show(rp)
		if tty {
			fmt.Fprintln(env.stdout)
		}
		if rp.Reason != "" {
			fmt.Fprintf(env.stdout, "reason: %s\n", printable(rp.Reason, false))
		}
		if rp.State == "done" && rp.Pending > 0 {
			fmt.Fprintf(env.stdout, "%d deliveries are still pending: dzhook replay status %s %s\n", rp.Pending, rp.Subscription, rp.ID)
		}
	}
	if rp.State != "done" || rp.Failed > 0 {
		return exitFailure
	}
	return exitOK
}

// progressLine is a replay's progress in one line.
func progressLine(rp api.Replay) string {
	return fmt.Sprintf("%s: %s, scanned %d/%d, created %d, delivered %d, pending %d, failed %d",
		rp.ID, rp.State, rp.Scanned, rp.Matched, rp.Created, rp.Delivered, rp.Pending, rp.Failed)
}

// isTerminal reports whether w is a terminal, where a line can be
// rewritten in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func replayStatus(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "replay status", "SUBSCRIPTION [RID] [--json]")
	admin, cfg, asJSON := adminFlags(env, fs)
	pos, code, stop := parseArgs(fs, args)
	if stop {
		return code
	}
	if len(pos) != 1 && len(pos) != 2 {
		fmt.Fprintln(env.stderr, "dzhook replay status: give a subscription id, and a replay id (rpl_…) for one replay")
		fs.Usage()
		return exitUsage
	}
	c := newClient(env, *admin, *cfg)
	if len(pos) == 2 {
		var rp api.Replay
		raw, err := c.do(ctx, "GET", replayPath(pos[0], pos[1]), nil, &rp)
		if err != nil {
			return fail(env, "replay status", err)
		}
		if *asJSON {
			env.stdout.Write(raw)
		} else {
			printReplay(env, rp)
		}
		return exitOK
	}
	var out api.ReplayList
	raw, err := c.do(ctx, "GET", replayPath(pos[0]), nil, &out)
	if err != nil {
		return fail(env, "replay status", err)
	}
	if *asJSON {
		env.stdout.Write(raw)
		return exitOK
	}
	if len(out.Replays) == 0 {
		fmt.Fprintf(env.stdout, "no replays of %s\n", pos[0])
		return exitOK
	}
	tw := newTable(env.stdout)
	fmt.Fprintln(tw, "REPLAY\tSTATE\tSINCE\tUNTIL\tEVENTS\tMATCHED\tSCANNED\tCREATED\tDELIVERED\tPENDING\tFAILED\tREQUESTED")
	for _, rp := range out.Replays {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", rp.ID, rp.State, when(&rp.Since), when(&rp.Until),
			orDash(printable(strings.Join(rp.Events, ","), false)), rp.Matched, rp.Scanned, rp.Created, rp.Delivered, rp.Pending, rp.Failed, when(&rp.CreatedAt))
	}
	_ = tw.Flush()
	return exitOK
}

// printReplay prints one replay and its progress.
func printReplay(env *cli, rp api.Replay) {
	tw := newTable(env.stdout)
	for _, kv := range [][2]string{
		{"replay", rp.ID}, {"subscription", rp.Subscription}, {"state", rp.State}, {"reason", orDash(printable(rp.Reason, false))},
		{"since", when(&rp.Since)}, {"until", when(&rp.Until)},
		{"events", orDash(printable(strings.Join(rp.Events, ", "), false))}, {"types", orDash(strings.Join(rp.Types, ", "))},
		{"matched", fmt.Sprint(rp.Matched)}, {"scanned", fmt.Sprint(rp.Scanned)}, {"created", fmt.Sprint(rp.Created)},
		{"delivered", fmt.Sprint(rp.Delivered)}, {"pending", fmt.Sprint(rp.Pending)}, {"failed", fmt.Sprint(rp.Failed)},
		{"skipped or cancelled", fmt.Sprint(rp.Skipped)},
		{"requested by", orDash(printable(rp.RequestedBy, false))}, {"requested", when(&rp.CreatedAt)}, {"finished", when(rp.FinishedAt)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	_ = tw.Flush()
}

func replayCancel(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "replay cancel", "SUBSCRIPTION RID [--json]")
	admin, cfg, asJSON := adminFlags(env, fs)
	pos, code, stop := parseArgs(fs, args)
	if stop {
		return code
	}
	if len(pos) != 2 {
		fmt.Fprintln(env.stderr, "dzhook replay cancel: give a subscription id and a replay id (rpl_…)")
		fs.Usage()
		return exitUsage
	}
	var rp api.Replay
	raw, err := newClient(env, *admin, *cfg).do(ctx, "POST", replayPath(pos[0], pos[1])+"/cancel", nil, &rp)
	if err != nil {
		return fail(env, "replay cancel", err)
	}
	if *asJSON {
		env.stdout.Write(raw)
		return exitOK
	}
	fmt.Fprintf(env.stdout, "replay %s of %s: %s; %d deliveries made, %d delivered, %d skipped or cancelled before they went out\n",
		rp.ID, rp.Subscription, rp.State, rp.Created, rp.Delivered, rp.Skipped)
	return exitOK
}
