package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/dzdesk/dzhook/internal/listen"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
)

// The commands below decode the admin API's answers into the types of
// internal/api, the ones the server encodes, so the two cannot drift
// apart.

// runStatus prints every subscription's state and backlog.
func runStatus(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "status", "[--admin URL] [--json]")
	admin, cfg, asJSON := adminFlags(env, fs)
	if code, stop := parseFlags(fs, args); stop {
		return code
	}
	c := newClient(env, *admin, *cfg)
	var out api.SubscriptionList
	raw, err := c.do(ctx, "GET", "/v1/subscriptions", nil, &out)
	if err != nil {
		return fail(env, "status", err)
	}
	if *asJSON {
		env.stdout.Write(raw)
		return exitOK
	}
	tw := newTable(env.stdout)
	now := time.Now()
	fmt.Fprintln(tw, "SUBSCRIPTION\tSTATE\tACTIVE\tORDERING\tRATE LIMIT\tQUEUE\tPENDING\tFAILED\tHELD\tBLOCKED KEYS\tSUCCESS\tP50\tP99\tLAST SUCCESS\tLAST FAILURE")
	for _, s := range out.Subscriptions {
		state := s.State
		if s.Paused {
			state += " (paused)"
		}
		rate := "-"
		if s.Stats.SuccessRate >= 0 {
			rate = fmt.Sprintf("%.1f%%", s.Stats.SuccessRate*100)
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%.1fms\t%.1fms\t%s\t%s\n", s.ID, state, s.Active, orDash(s.Ordering),
			rateLimitOf(s), s.QueueDepth, s.Pending, s.Failed, s.Held, blocked(s, now),
			rate, s.Stats.P50MS, s.Stats.P99MS, when(s.LastSuccessAt), when(s.LastFailureAt))
	}
	_ = tw.Flush()
	return exitOK
}

// blocked says how many keys of a subscription wait behind a retry, for
// how long the oldest has, and which key it is: "2 (oldest 5m: req_7)"
// (deliveries --ordering-key lists it; status --json names its head). An
// unordered subscription shows "-", unless deliveries made under an
// earlier ordering are still blocked.
func blocked(s api.Subscription, now time.Time) string {
	if s.BlockedKeys == 0 {
		if s.Ordering == "none" {
			return "-"
		}
		return "0"
	}
	if s.OldestBlockedAt == nil {
		return fmt.Sprint(s.BlockedKeys)
	}
	key := ""
	if s.OldestBlockedKey != nil {
		key = ": " + orderingKey(s.OldestBlockedKey)
	}
	return fmt.Sprintf("%d (oldest %s%s)", s.BlockedKeys, age(now.Sub(*s.OldestBlockedAt)), key)
}

// rateLimitOf says a subscription's rate limit; then, when this process keeps a
// lower pace (after 429 answers, or the limit shared with other
// processes), that pace in the limit's unit, and until when a 429's
// Retry-After pauses it: "50/s", "50/s (pace 25/s)", "600/m (pace 150/m,
// paused until 2024-01-15 14:30:00)". "-" without a limit.
func rateLimitOf(s api.Subscription) string {
	if s.RateLimit == "" {
		return "-"
	}
	limit := printable(s.RateLimit, false)
	var notes []string
	count, unit, _ := strings.Cut(s.RateLimit, "/")
	n, err := strconv.Atoi(count)
	per := map[string]float64{"s": 1, "m": 60}[unit]
	if pace := s.PacePerSecond * per; err == nil && per > 0 && pace > 0 && pace < float64(n)*0.999 {
		notes = append(notes, "pace "+strconv.FormatFloat(math.Round(pace*100)/100, 'f', -1, 64)+"/"+unit)
	}
	if s.PausedUntil != nil {
		notes = append(notes, "paused until "+when(s.PausedUntil))
	}
	if len(notes) == 0 {
		return limit
	}
	return limit + " (" + strings.Join(notes, ", ") + ")"
}

// age is a duration for a table: its two largest units, "45s", "12m",
// "3h05m", "2d04h".
func age(d time.Duration) string {
	d = max(d, 0).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// orderingKey shows a delivery's ordering key: the entity's id, "(whole
// subscription)" under ordering: subscription, "- (unordered)" without.
func orderingKey(k *string) string {
	switch {
	case k == nil:
		return "- (unordered)"
	case *k == "":
		return "(whole subscription)"
	}
	return printable(*k, false) // an outbox key is the application's text
}

// runDeliveries lists the history, or shows one delivery with its attempts.
func runDeliveries(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "deliveries", "[show ID] [--subscription S] [--status failed] [--event E] [--ordering-key K] [--since 2h] [--until T] [--limit N] [--cursor C] [--json]")
	admin, cfg, asJSON := adminFlags(env, fs)
	sub := fs.String("subscription", "", "only this `subscription`")
	status := fs.String("status", "", "only this `state`: pending, delivered, failed, skipped, held, cancelled")
	event := fs.String("event", "", "only this `event` type")
	key := fs.String("ordering-key", "", "only the deliveries of this ordering `key`, as stored (req_123; a replay's: replay:rpl_…:req_123)")
	since := fs.String("since", "", "created after this `time` (RFC 3339, or a duration ago: 2h)")
	until := fs.String("until", "", "created before this `time`")
	limit := fs.Int("limit", 50, "at most `N` deliveries (1-500)")
	cursor := fs.String("cursor", "", "the next page's `cursor`, as printed")
	pos, code, stop := parseArgs(fs, args)
	if stop {
		return code
	}
	c := newClient(env, *admin, *cfg)
	if len(pos) > 0 && pos[0] == "show" {
		if len(pos) != 2 {
			fmt.Fprintln(env.stderr, "dzhook deliveries show: give one delivery id (dlv_…)")
			return exitUsage
		}
		if f := setFlag(fs, "subscription", "status", "event", "ordering-key", "since", "until", "limit", "cursor"); f != "" {
			fmt.Fprintf(env.stderr, "dzhook deliveries show: --%s filters the list, not one delivery\n", f)
			return exitUsage
		}
		return showDelivery(ctx, env, c, pos[1], *asJSON)
	}
	if len(pos) > 0 {
		fmt.Fprintf(env.stderr, "dzhook deliveries: unexpected argument %q\n", pos[0])
		fs.Usage()
		return exitUsage
	}
	if f := emptyFlag(fs, "subscription", "status", "event", "ordering-key", "since", "until", "cursor"); f != "" {
		return refuseEmpty(env, "deliveries", f)
	}
	var out api.DeliveryList
	q := query("subscription", *sub, "status", *status, "event", *event, "ordering_key", *key, "since", *since, "until", *until,
		"limit", fmt.Sprint(*limit), "cursor", *cursor)
	raw, err := c.do(ctx, "GET", "/v1/deliveries"+q, nil, &out)
	if err != nil {
		return fail(env, "deliveries", err)
	}
	if *asJSON {
		env.stdout.Write(raw)
		return exitOK
	}
	tw := newTable(env.stdout)
	fmt.Fprintln(tw, "DELIVERY\tCREATED\tSUBSCRIPTION\tEVENT\tSTATE\tATTEMPTS\tLAST STATUS\tNEXT ATTEMPT")
	for _, d := range out.Deliveries {
		state := d.State
		if d.InFlight {
			state += " (in flight)"
		}
		if d.Test {
			state += " (test)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.ID, when(&d.CreatedAt), d.Subscription, d.Event, state, d.Attempts, intOrDash(d.LastStatus), when(d.NextAttemptAt))
	}
	_ = tw.Flush()
	if out.NextCursor != "" {
		fmt.Fprintf(env.stdout, "\nmore: --cursor %s\n", out.NextCursor)
	}
	return exitOK
}

func showDelivery(ctx context.Context, env *cli, c *client, id string, asJSON bool) int {
	var out api.DeliveryDetail
	raw, err := c.do(ctx, "GET", "/v1/deliveries/"+url.PathEscape(id), nil, &out)
	if err != nil {
		return fail(env, "deliveries show", err)
	}
	if asJSON {
		env.stdout.Write(raw)
		return exitOK
	}
	d := out.Delivery
	tw := newTable(env.stdout)
	facts := [][2]string{
		{"delivery", d.ID}, {"event", d.Event + " " + d.EventID}, {"subscription", d.Subscription}, {"state", string(d.State)},
		{"attempts", fmt.Sprint(d.Attempts)}, {"next attempt", when(d.NextAttemptAt)}, {"created", when(&d.CreatedAt)},
		{"ordering key", orderingKey(d.OrderingKey)},
	}
	if out.WaitingBehind != "" {
		// Its next attempt is its key's head's: show that one.
		facts = append(facts, [2]string{"waits behind", printable(out.WaitingBehind, false) + " (deliveries show it)"})
	}
	for _, kv := range facts {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	_ = tw.Flush()
	fmt.Fprintln(env.stdout, "\nattempts:")
	tw = newTable(env.stdout)
	fmt.Fprintln(tw, "#\tTIME\tTRIGGER\tINSTANCE\tSTATUS\tTIME (ms)\tERROR\tRESPONSE")
	for _, a := range out.Attempts {
		errText := "-"
		switch {
		case a.ErrorClass != nil && a.Error != nil && strings.HasPrefix(*a.Error, *a.ErrorClass+": "):
			errText = *a.Error // "transform: …" names its class already
		case a.ErrorClass != nil && a.Error != nil:
			errText = *a.ErrorClass + ": " + *a.Error
		case a.ErrorClass != nil:
			errText = *a.ErrorClass
		case a.Error != nil:
			// A delivery its transform skipped: an attempt that sent
			// nothing, without an error class.
			errText = *a.Error
		}
		body := []rune(printable(strings.ReplaceAll(a.ResponseBody, "\n", " "), false))
		if len(body) > 60 {
			body = append(body[:60], '…')
		}
		errText = printable(errText, false)
		// The instance that made the attempt; "-" when the journal does
		// not know (attempts made before it recorded it).
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", a.Attempt, when(&a.At), a.Trigger, orDash(printable(a.Instance, false)),
			intOrDash(a.StatusCode), a.DurationMS, errText, orDash(string(body)))
	}
	_ = tw.Flush()
	if d.OrderingKey != nil {
		// The later deliveries of its key that this one held back.
		switch {
		case len(out.WaitedBehindIt) == 0:
			fmt.Fprintln(env.stdout, "\nwaited behind it: none")
		default:
			fmt.Fprintln(env.stdout, "\nwaited behind it (oldest first):")
			for _, id := range out.WaitedBehindIt {
				fmt.Fprintf(env.stdout, "  %s\n", printable(id, false))
			}
			if out.WaitedBehindMore {
				fmt.Fprintf(env.stdout, "  … and more (the first %d are shown)\n", len(out.WaitedBehindIt))
			}
		}
	}
	fmt.Fprintf(env.stdout, "\npayload:\n%s\n", indentJSON(out.Payload))
	if len(out.Sent) > 0 {
		// What the subscription's transform or format made of the
		// payload: the bytes sent (and signed) at every attempt.
		fmt.Fprintf(env.stdout, "\nsent (transformed):\n%s\n", indentJSON(out.Sent))
	}
	return exitOK
}

// indentJSON pretty-prints JSON from the API; other text is shown as it
// is, made safe for a terminal.
func indentJSON(raw []byte) string {
	var pretty bytes.Buffer
	if json.Indent(&pretty, raw, "", "  ") != nil {
		return printable(string(raw), true)
	}
	// JSON keeps C1 controls and DEL as they are (a title holding U+009B,
	// a CSI to some terminals): shown escaped, as JSON may write them.
	return listen.EscapeC1(pretty.String())
}

// runRetry retries one delivery now, or every failed one of a
// subscription.
func runRetry(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "retry", "ID | --subscription S --failed [--since 2h] [--until T]")
	admin, cfg, asJSON := adminFlags(env, fs)
	sub := fs.String("subscription", "", "the `subscription` whose failed deliveries to retry (with --failed)")
	failed := fs.Bool("failed", false, "retry every failed delivery of --subscription")
	since := fs.String("since", "", "only deliveries created after this `time` (RFC 3339, or a duration ago: 2h)")
	until := fs.String("until", "", "only deliveries created before this `time`")
	pos, code, stop := parseArgs(fs, args)
	if stop {
		return code
	}
	c := newClient(env, *admin, *cfg)
	switch {
	case len(pos) == 1 && *sub == "" && !*failed:
		if f := setFlag(fs, "since", "until"); f != "" {
			fmt.Fprintf(env.stderr, "dzhook retry: --%s applies to --subscription S --failed, not to one delivery\n", f)
			return exitUsage
		}
		var rep api.AttemptReport
		raw, err := c.do(ctx, "POST", "/v1/deliveries/"+url.PathEscape(pos[0])+"/retry", nil, &rep)
		if err != nil {
			return fail(env, "retry", err)
		}
		return printReport(env, raw, rep, *asJSON)
	case len(pos) == 0 && *sub != "" && *failed:
		if f := emptyFlag(fs, "since", "until"); f != "" {
			return refuseEmpty(env, "retry", f)
		}
		var out api.RetryFailedResponse
		raw, err := c.do(ctx, "POST", "/v1/subscriptions/"+url.PathEscape(*sub)+"/retry-failed"+query("since", *since, "until", *until), nil, &out)
		if err != nil {
			return fail(env, "retry", err)
		}
		if *asJSON {
			env.stdout.Write(raw)
		} else {
			fmt.Fprintf(env.stdout, "%d failed deliveries of %s scheduled for one more attempt%s\n", out.Scheduled, *sub, heldText(out.Held))
		}
		return exitOK
	}
	fmt.Fprintln(env.stderr, "dzhook retry: give a delivery id, or --subscription S --failed")
	fs.Usage()
	return exitUsage
}

// printReport prints an attempt's outcome; the exit code says whether it
// was delivered.
func printReport(env *cli, raw []byte, rep api.AttemptReport, asJSON bool) int {
	if asJSON {
		env.stdout.Write(raw)
	} else {
		outcome := fmt.Sprintf("HTTP %d", rep.StatusCode)
		if rep.StatusCode == 0 {
			outcome = rep.ErrorClass + " error: " + printable(rep.Error, false)
		}
		verdict := "delivered"
		if !rep.Delivered {
			verdict = "NOT delivered"
		}
		fmt.Fprintf(env.stdout, "%s attempt %d: %s in %.1f ms: %s\n", rep.DeliveryID, rep.Attempt, outcome, rep.DurationMS, verdict)
		if rep.ResponseBody != "" {
			fmt.Fprintf(env.stdout, "response: %s\n", printable(rep.ResponseBody, true))
		}
	}
	if !rep.Delivered {
		return exitFailure
	}
	return exitOK
}

// runTest sends a sample event to a subscription.
func runTest(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "test", "SUBSCRIPTION [--event request.created]")
	admin, cfg, asJSON := adminFlags(env, fs)
	event := fs.String("event", "request.created", "the `event` type of the sample")
	pos, code, stop := parseArgs(fs, args)
	if stop {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(env.stderr, "dzhook test: give one subscription id")
		fs.Usage()
		return exitUsage
	}
	c := newClient(env, *admin, *cfg)
	var rep api.AttemptReport
	raw, err := c.do(ctx, "POST", "/v1/subscriptions/"+url.PathEscape(pos[0])+"/test", api.TestRequest{Event: *event}, &rep)
	if err != nil {
		return fail(env, "test", err)
	}
	return printReport(env, raw, rep, *asJSON)
}

// runPause and runResume toggle a subscription.
func runPause(ctx context.Context, env *cli, args []string) int {
	return toggle(ctx, env, "pause", args)
}
func runResume(ctx context.Context, env *cli, args []string) int {
	return toggle(ctx, env, "resume", args)
}

func toggle(ctx context.Context, env *cli, verb string, args []string) int {
	fs := newFlags(env, verb, "SUBSCRIPTION")
	admin, cfg, asJSON := adminFlags(env, fs)
	pos, code, stop := parseArgs(fs, args)
	if stop {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintf(env.stderr, "dzhook %s: give one subscription id\n", verb)
		fs.Usage()
		return exitUsage
	}
	c := newClient(env, *admin, *cfg)
	// Pause answers an api.PauseResponse, resume an api.ResumeResponse.
	var out struct {
		api.ResumeResponse
		NewDeliveries string `json:"new_deliveries"`
	}
	raw, err := c.do(ctx, "POST", "/v1/subscriptions/"+url.PathEscape(pos[0])+"/"+verb, nil, &out)
	if err != nil {
		return fail(env, verb, err)
	}
	switch {
	case *asJSON:
		env.stdout.Write(raw)
	case verb == "pause":
		fmt.Fprintf(env.stdout, "%s paused: %s\n", pos[0], whilePaused(out.NewDeliveries))
	default:
		fmt.Fprintf(env.stdout, "%s resumed (%d held deliveries released)\n", pos[0], out.Released)
	}
	return exitOK
}

// whilePaused tells what becomes of the events that arrive while a
// subscription is paused (api.PauseResponse.NewDeliveries): by default
// they are skipped, which an operator who expects them to wait learns
// only at the resume otherwise.
func whilePaused(newDeliveries string) string {
	const waiting = "deliveries already due wait for the resume"
	switch newDeliveries {
	case api.NewHeld:
		return "new events are held and go out on resume, oldest first (queue_while_inactive); " + waiting
	case api.NewSkipped:
		return "new events are skipped, never sent (set queue_while_inactive: true to hold them); " + waiting
	}
	return waiting // an older server does not say
}

// setFlag returns the first of names set on the command line ("" if
// none): a flag that the form of the command used does not read is
// refused rather than ignored.
// emptyFlag returns the first of names given with an empty value, or "".
// Sent as "no filter", `--since "$SINCE"` with SINCE unset retried every
// failed delivery there ever was: the server refuses an empty since=, and
// the CLI dropped it before.
func emptyFlag(fs *flag.FlagSet, names ...string) string {
	var empty string
	fs.Visit(func(f *flag.Flag) {
		if empty == "" && slices.Contains(names, f.Name) && strings.TrimSpace(f.Value.String()) == "" {
			empty = f.Name
		}
	})
	return empty
}

// refuseEmpty prints the usage error for an empty flag.
func refuseEmpty(env *cli, cmd, name string) int {
	fmt.Fprintf(env.stderr, "dzhook %s: --%s is empty: give a value, or leave the flag out\n", cmd, name)
	return exitUsage
}

func setFlag(fs *flag.FlagSet, names ...string) string {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, n := range names {
		if set[n] {
			return n
		}
	}
	return ""
}

// heldText is what a retry-failed answer's held adds to its line.
func heldText(held string) string {
	switch held {
	case "paused":
		return "; the subscription is paused: they go out when it is resumed"
	case "disabled":
		return "; the subscription was disabled by a 410 answer: they go out when it is resumed"
	case "inactive":
		return "; the subscription is inactive: they go out once it is active again"
	}
	return ""
}
