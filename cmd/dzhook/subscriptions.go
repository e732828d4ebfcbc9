package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"sort"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/dzdesk/dzhook/internal/api"
)

// runSubscriptions lists, shows, creates, changes and deletes
// subscriptions and rotates their secrets. Only runtime subscriptions
// (created through the API) can be changed; those of config.yaml are
// changed in the file (the API answers 409 naming it).
func runSubscriptions(ctx context.Context, env *cli, args []string) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
			subscriptionsUsage(env)
			return exitOK
		}
		if len(args) > 0 {
			fmt.Fprintf(env.stderr, "dzhook subscriptions: give the subcommand first, then its flags (dzhook subscriptions list %s), not %s before it\n", args[0], args[0])
		} else {
			fmt.Fprintln(env.stderr, "dzhook subscriptions: give a subcommand")
		}
		subscriptionsUsage(env)
		return exitUsage
	}
	verb, rest := args[0], args[1:]
	switch verb {
	case "list":
		return listSubscriptions(ctx, env, rest)
	case "show":
		return showSubscription(ctx, env, rest)
	case "create":
		return changeSubscription(ctx, env, "create", rest)
	case "update":
		return changeSubscription(ctx, env, "update", rest)
	case "delete":
		return deleteSubscription(ctx, env, rest)
	case "rotate-secret":
		return rotateSecret(ctx, env, rest)
	}
	fmt.Fprintf(env.stderr, "dzhook subscriptions: unknown subcommand %q\n", verb)
	subscriptionsUsage(env)
	return exitUsage
}

func subscriptionsUsage(env *cli) {
	fmt.Fprint(env.stderr, `Usage: dzhook subscriptions <subcommand> [flags]

  list                       every subscription, from config.yaml and runtime
  show ID                    one subscription
  create --url U --events E  a runtime subscription (its secret is shown once);
                             --url-env VAR instead of --url keeps a webhook URL off the command line
         [--id ID] [--secret S | --secret-env VAR] [--inactive] [--queue-while-inactive] [--filter EXPR]
         [--header K=V]… [--header-env K=VAR]… [--standard-webhooks] [--ordering none|entity|subscription]
         [--format dzdesk|slack|teams|discord] [--transform EXPR] [--method POST|PUT]
         [--rate-limit 50/s] [--traceparent] [--description D]
  update ID [flags]          change the fields given (the same flags; --active, --inactive)
  delete ID                  delete it; its pending and held deliveries are cancelled
  rotate-secret ID           a new secret, shown once; the old one stays valid for --overlap
         [--secret S | --secret-env VAR] [--overlap 24h] [--activate now|end_of_overlap]

Every subcommand takes --admin URL, --config F and --json.
Run 'dzhook subscriptions <subcommand> -h' for its flags.
`)
}

// headerFlag collects --header NAME=VALUE, repeated. A header's value
// may be a credential (Authorization: Bearer …), so nothing here prints
// one: String gives the names, and a malformed --header is not refused
// by Set, since the flag package would quote the whole argument in its
// "invalid value" message, but kept in bad, described by its name at
// most, for the command to report once the flags are parsed.
type headerFlag struct {
	values map[string]string
	bad    []string
}

func (h *headerFlag) String() string {
	keys := make([]string, 0, len(h.values))
	for k := range h.values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",") // names only: a header may carry a credential
}

func (h *headerFlag) Set(v string) error {
	// The name ends at the first = or : (a header name has neither);
	// what follows is the value, which no message may show.
	i := strings.IndexAny(v, "=:")
	name := ""
	if i > 0 && httpguts.ValidHeaderFieldName(v[:i]) {
		name = v[:i]
	}
	switch {
	case name != "" && v[i] == '=':
		if h.values == nil {
			h.values = map[string]string{}
		}
		h.values[name] = v[i+1:]
	case name != "":
		h.bad = append(h.bad, fmt.Sprintf("--header %s: write NAME=VALUE (%s=…), not NAME: VALUE", name, name))
	case i > 0:
		h.bad = append(h.bad, "a --header does not start with a valid header name: write NAME=VALUE")
	default:
		h.bad = append(h.bad, "a --header is not NAME=VALUE")
	}
	return nil
}

// headerEnvFlag is --header-env NAME=VAR: the header NAME with the value
// of the environment variable VAR, so that a credential need not be on
// the command line, which other users of the machine can read.
type headerEnvFlag struct {
	h      *headerFlag
	getenv func(string) string
}

func (f headerEnvFlag) String() string { return "" }

func (f headerEnvFlag) Set(v string) error {
	name, variable, ok := strings.Cut(v, "=")
	if !ok || name == "" || variable == "" {
		f.h.bad = append(f.h.bad, "a --header-env is not NAME=VARIABLE")
		return nil
	}
	if !isEnvName(variable) {
		// Not quoted: it is likely the header's value, a credential.
		f.h.bad = append(f.h.bad, fmt.Sprintf("--header-env %s: after = comes the NAME of an environment variable holding the value (letters, digits and _), not the value itself; the value given is not shown", name))
		return nil
	}
	value := f.getenv(variable)
	if value == "" {
		f.h.bad = append(f.h.bad, fmt.Sprintf("--header-env %s: the variable %s is not set or empty", name, envNameShown(variable)))
		return nil
	}
	return f.h.Set(name + "=" + value)
}

// fromEnv applies --NAME-env VARIABLE: *v becomes the variable's value,
// and --NAME counts as given. A Slack or Teams webhook URL is the
// credential itself, and so is a secret chosen to keep a receiver's; a
// command line is visible to other users of the machine (found by a
// review). It returns what is wrong, never quoting the value.
func fromEnv(env *cli, given map[string]bool, name, variable string, v *string) string {
	if !given[name+"-env"] {
		return ""
	}
	switch {
	case given[name]:
		return fmt.Sprintf("give --%s or --%s-env, not both", name, name)
	case !isEnvName(variable):
		return fmt.Sprintf("--%s-env takes the NAME of an environment variable holding the value (letters, digits and _), not the value itself; the value given is not shown", name)
	}
	value := env.getenv(variable)
	if value == "" {
		return fmt.Sprintf("--%s-env: the variable %s is not set or empty", name, envNameShown(variable))
	}
	*v = value
	given[name] = true
	return ""
}

// usageProblems prints the problems that are not empty, with the usage,
// and reports whether there were any.
func usageProblems(env *cli, fs *flag.FlagSet, name string, problems []string) bool {
	bad := false
	for _, p := range problems {
		if p != "" {
			fmt.Fprintf(env.stderr, "dzhook %s: %s\n", name, p)
			bad = true
		}
	}
	if bad {
		fs.Usage()
	}
	return bad
}

func listSubscriptions(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "subscriptions list", "[--json]")
	admin, cfg, asJSON := adminFlags(env, fs)
	if code, stop := parseFlags(fs, args); stop {
		return code
	}
	c := newClient(env, *admin, *cfg)
	var out api.SubscriptionList
	raw, err := c.do(ctx, "GET", "/v1/subscriptions", nil, &out)
	if err != nil {
		return fail(env, "subscriptions list", err)
	}
	if *asJSON {
		env.stdout.Write(raw)
		return exitOK
	}
	tw := newTable(env.stdout)
	fmt.Fprintln(tw, "SUBSCRIPTION\tSOURCE\tACTIVE\tSTATE\tFORMAT\tMETHOD\tRATE LIMIT\tEVENTS\tURL\tDESCRIPTION")
	for _, s := range out.Subscriptions {
		state := s.State
		if s.Paused {
			state += " (paused)"
		}
		format := orDash(s.Format)
		if s.Transform != "" {
			format += "+transform"
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, orDash(s.Source), s.Active, state, format, orDash(s.Method),
			rateLimitOf(s), strings.Join(s.Events, ","), printable(s.URL, false), orDash(printable(s.Description, false)))
	}
	_ = tw.Flush()
	return exitOK
}

func showSubscription(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "subscriptions show", "ID [--json]")
	admin, cfg, asJSON := adminFlags(env, fs)
	pos, code, stop := parseArgs(fs, args)
	if stop {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(env.stderr, "dzhook subscriptions show: give one subscription id")
		fs.Usage()
		return exitUsage
	}
	c := newClient(env, *admin, *cfg)
	var out api.Subscription
	raw, err := c.do(ctx, "GET", "/v1/subscriptions/"+url.PathEscape(pos[0]), nil, &out)
	if err != nil {
		return fail(env, "subscriptions show", err)
	}
	if *asJSON {
		env.stdout.Write(raw)
		return exitOK
	}
	printSubscription(env, out)
	return exitOK
}

// printSubscription prints a subscription's settings and state; its
// transform, which may span lines, comes last.
func printSubscription(env *cli, s api.Subscription) {
	state := s.State
	if s.Paused {
		state += " (paused)"
	}
	format := orDash(s.Format)
	if s.Transform != "" {
		format += " (the transform below makes the body)"
	}
	tw := newTable(env.stdout)
	rows := [][2]string{
		{"subscription", s.ID}, {"source", orDash(s.Source)}, {"description", orDash(printable(s.Description, false))},
		{"url", printable(s.URL, false)}, {"events", strings.Join(s.Events, ", ")}, {"filter", orDash(printable(s.Filter, false))},
		{"active", fmt.Sprint(s.Active)}, {"queue while inactive", fmt.Sprint(s.QueueWhileInactive)}, {"ordering", orDash(s.Ordering)},
		{"format", format}, {"method", orDash(s.Method)}, {"rate limit", rateLimitOf(s)}, {"standard webhooks", fmt.Sprint(s.StandardWebhooks)},
	}
	if s.PreviousSecretValidUntil != nil {
		// A rotation's overlap: what receivers need to know to switch.
		rows = append(rows, [2]string{"previous secret valid until", when(s.PreviousSecretValidUntil)},
			[2]string{"X-DZDESK-Signature switches at", when(s.SignatureSwitchAt)})
	}
	rows = append(rows, [][2]string{
		{"state", state}, {"pending", fmt.Sprint(s.Pending)}, {"failed", fmt.Sprint(s.Failed)}, {"held", fmt.Sprint(s.Held)},
		{"last success", when(s.LastSuccessAt)}, {"last failure", when(s.LastFailureAt)},
	}...)
	for _, kv := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	_ = tw.Flush()
	if s.Transform != "" {
		fmt.Fprintln(env.stdout, "transform:")
		for line := range strings.Lines(printable(strings.TrimRight(s.Transform, "\n"), true)) {
			fmt.Fprintf(env.stdout, "  %s", line)
		}
		fmt.Fprintln(env.stdout)
	}
}

// changeSubscription creates a subscription, or changes the fields whose
// flags are given.
func changeSubscription(ctx context.Context, env *cli, verb string, args []string) int {
	name := "subscriptions " + verb
	synopsis := "--url URL | --url-env VAR --events a,b [--id ID] [--secret S | --secret-env VAR] [--inactive] [--queue-while-inactive] [--filter EXPR] [--header K=V]… [--header-env K=VAR]… [--standard-webhooks] [--ordering none|entity|subscription] [--format dzdesk|slack|teams|discord] [--transform EXPR] [--method POST|PUT] [--rate-limit 50/s] [--traceparent] [--description D]"
	if verb == "update" {
		synopsis = "ID [--url URL | --url-env VAR] [--events a,b] [--active | --inactive] [--queue-while-inactive] [--filter EXPR] [--header K=V]… [--header-env K=VAR]… [--standard-webhooks] [--ordering …] [--format …] [--transform EXPR] [--method …] [--rate-limit …] [--traceparent[=false]] [--description D]"
	}
	fs := newFlags(env, name, synopsis)
	admin, cfg, asJSON := adminFlags(env, fs)
	u := fs.String("url", "", "the receiver's `URL` (https); a Slack, Teams or Discord webhook URL is a credential: give it with --url-env")
	urlEnv := fs.String("url-env", "", "the receiver's URL from an environment `VARIABLE`, kept off the command line")
	events := fs.String("events", "", "the event `types`, comma-separated; globs allowed (request.*)")
	inactive := fs.Bool("inactive", false, "make it inactive (deliveries skipped, or held with --queue-while-inactive)")
	queue := fs.Bool("queue-while-inactive", false, "hold deliveries while inactive, rather than skip them")
	filter := fs.String("filter", "", "a CEL `expression` the event must match")
	headers := &headerFlag{}
	fs.Var(headers, "header", "an HTTP header sent with each delivery, `NAME=VALUE` (repeat the flag for more); on update, the whole set. A command line is visible to other users of the machine: give a credential with --header-env")
	fs.Var(headerEnvFlag{h: headers, getenv: env.getenv}, "header-env", "a header whose value is an environment variable's, `NAME=VARIABLE` (repeatable, with --header)")
	standardHelp := "also sign as Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature; needs a whsec_<base64> secret); X-DZDESK-Signature is still sent, keyed with the whole whsec_... string"
	if verb == "update" {
		standardHelp += ". Switching on needs the secret to be a whsec_ one already (rotate-secret ID --secret whsec_... first); --standard-webhooks=false switches off"
	}
	standard := fs.Bool("standard-webhooks", false, standardHelp)
	ordering := fs.String("ordering", "", "the order kept: `none`, entity or subscription")
	format := fs.String("format", "", "the body's `shape`: dzdesk (the event envelope), or a message for slack, teams or discord (which check no signature)")
	transform := fs.String("transform", "", "a CEL `expression` over id, event, timestamp and data that makes the body: a map or a list, sent as JSON; skip or null: not sent. It overrides --format; on update, '' removes it")
	method := fs.String("method", "", "the HTTP `method` of its attempts: POST or PUT")
	traceparent := fs.Bool("traceparent", false, "send a W3C traceparent header with each attempt while dzhook's tracing is on")
	rateLimit := fs.String("rate-limit", "", "at most this many attempts started per second or minute, e.g. `50/s` or 600/m; on update, '' removes it")
	description := fs.String("description", "", "a `note` for operators")
	var id, secret, secretEnv *string
	var active *bool
	if verb == "create" {
		id = fs.String("id", "", "the subscription `id` (lowercase letters, digits, - and _); generated when absent")
		secret = fs.String("secret", "", "the signing `secret`; generated when absent (better: a command line is visible to other users of the machine; keep one with --secret-env); with --format slack, teams or discord, --secret '' means none")
		secretEnv = fs.String("secret-env", "", "the signing secret from an environment `VARIABLE`, kept off the command line")
	} else {
		active = fs.Bool("active", false, "make it active")
	}
	pos, code, stop := parseArgs(fs, args)
	if stop {
		return code
	}
	if len(headers.bad) > 0 {
		for _, msg := range headers.bad {
			fmt.Fprintf(env.stderr, "dzhook %s: %s\n", name, msg)
		}
		fs.Usage()
		return exitUsage
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	problems := []string{fromEnv(env, given, "url", *urlEnv, u)}
	if verb == "create" {
		problems = append(problems, fromEnv(env, given, "secret", *secretEnv, secret))
	}
	if usageProblems(env, fs, name, problems) {
		return exitUsage
	}
	path := "/v1/subscriptions"
	switch {
	case verb == "create" && len(pos) != 0:
		fmt.Fprintf(env.stderr, "dzhook %s: unexpected argument %q (the id is --id)\n", name, pos[0])
		fs.Usage()
		return exitUsage
	case verb == "update" && len(pos) != 1:
		fmt.Fprintf(env.stderr, "dzhook %s: give one subscription id\n", name)
		fs.Usage()
		return exitUsage
	case verb == "update":
		path += "/" + url.PathEscape(pos[0])
	}
	if given["active"] && given["inactive"] {
		fmt.Fprintf(env.stderr, "dzhook %s: give --active or --inactive, not both\n", name)
		return exitUsage
	}
	in := api.SubscriptionInput{}
	str := func(flag string, v *string) *string {
		if given[flag] {
			return v
		}
		return nil
	}
	boolean := func(flag string, v *bool) *bool {
		if given[flag] {
			return v
		}
		return nil
	}
	in.URL = str("url", u)
	if given["events"] {
		list := []string{}
		for e := range strings.SplitSeq(*events, ",") {
			if e = strings.TrimSpace(e); e != "" {
				list = append(list, e)
			}
		}
		in.Events = &list
	}
	in.QueueWhileInactive = boolean("queue-while-inactive", queue)
	in.Filter = str("filter", filter)
	if given["header"] || given["header-env"] {
		in.Headers = &headers.values
	}
	in.StandardWebhooks = boolean("standard-webhooks", standard)
	in.Ordering = str("ordering", ordering)
	in.Format = str("format", format)
	in.Transform = str("transform", transform)
	in.Method = str("method", method)
	in.RateLimit = str("rate-limit", rateLimit)
	in.Traceparent = boolean("traceparent", traceparent)
	in.Description = str("description", description)
	if given["inactive"] {
		v := !*inactive
		in.Active = &v
	}
	if verb == "create" {
		in.ID, in.Secret = str("id", id), str("secret", secret)
		if !given["url"] || !given["events"] {
			fmt.Fprintf(env.stderr, "dzhook %s: give --url (or --url-env) and --events\n", name)
			fs.Usage()
			return exitUsage
		}
		var out api.CreatedSubscription
		raw, err := newClient(env, *admin, *cfg).do(ctx, "POST", path, in, &out)
		if err != nil {
			return fail(env, name, err)
		}
		if *asJSON {
			env.stdout.Write(raw)
			return exitOK
		}
		fmt.Fprintf(env.stdout, "created %s\n\n", out.ID)
		printSubscription(env, out.Subscription)
		if out.Secret == "" {
			fmt.Fprintf(env.stdout, "\nno secret: its receiver (format %s) checks no signature; the webhook URL is the credential.\n", orDash(out.Format))
			return exitOK
		}
		fmt.Fprintf(env.stdout, "\nsecret: %s\n", printable(out.Secret, false))
		fmt.Fprintln(env.stdout, "The secret is shown only now: dzhook will not show it again. Give it to the receiver to verify signatures.")
		return exitOK
	}
	if given["active"] {
		in.Active = active
	}
	if len(given) == 0 || onlyAdminFlags(given) {
		fmt.Fprintf(env.stderr, "dzhook %s: give the fields to change (--url, --events, --active, …)\n", name)
		fs.Usage()
		return exitUsage
	}
	var out api.Subscription
	raw, err := newClient(env, *admin, *cfg).do(ctx, "PATCH", path, in, &out)
	if err != nil {
		return fail(env, name, err)
	}
	if *asJSON {
		env.stdout.Write(raw)
		return exitOK
	}
	fmt.Fprintf(env.stdout, "updated %s\n\n", out.ID)
	printSubscription(env, out)
	return exitOK
}

// onlyAdminFlags reports whether the flags given are only those that say
// where the API is and how to print.
func onlyAdminFlags(given map[string]bool) bool {
	for f := range given {
		if f != "admin" && f != "config" && f != "json" {
			return false
		}
	}
	return true
}

func deleteSubscription(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "subscriptions delete", "ID [--json]")
	admin, cfg, asJSON := adminFlags(env, fs)
	pos, code, stop := parseArgs(fs, args)
	if stop {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(env.stderr, "dzhook subscriptions delete: give one subscription id")
		fs.Usage()
		return exitUsage
	}
	var out api.Deleted
	raw, err := newClient(env, *admin, *cfg).do(ctx, "DELETE", "/v1/subscriptions/"+url.PathEscape(pos[0]), nil, &out)
	if err != nil {
		return fail(env, "subscriptions delete", err)
	}
	if *asJSON {
		env.stdout.Write(raw)
	} else {
		fmt.Fprintf(env.stdout, "deleted %s (%d pending and held deliveries cancelled)\n", out.ID, out.Cancelled)
	}
	return exitOK
}

func rotateSecret(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "subscriptions rotate-secret", "ID [--secret S | --secret-env VAR] [--overlap 24h] [--activate now|end_of_overlap] [--json]")
	admin, cfg, asJSON := adminFlags(env, fs)
	secret := fs.String("secret", "", "the new `secret`; generated when absent (better: a command line is visible to other users of the machine; give a chosen one with --secret-env)")
	secretEnv := fs.String("secret-env", "", "the new secret from an environment `VARIABLE`, kept off the command line")
	overlap := fs.String("overlap", "", "how long the old secret stays valid (`duration`: 90m, 24h or 7d, at most 720h; default 24h)")
	activate := fs.String("activate", "", "when X-DZDESK-Signature switches to the new secret: now, or end_of_overlap (the default)")
	pos, code, stop := parseArgs(fs, args)
	if stop {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(env.stderr, "dzhook subscriptions rotate-secret: give one subscription id")
		fs.Usage()
		return exitUsage
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if usageProblems(env, fs, "subscriptions rotate-secret", []string{fromEnv(env, given, "secret", *secretEnv, secret)}) {
		return exitUsage
	}
	var in api.SecretRotation
	if given["secret"] {
		in.Secret = secret
	}
	if given["overlap"] {
		in.Overlap = overlap
	}
	if given["activate"] {
		in.Activate = activate
	}
	var out api.RotatedSecret
	raw, err := newClient(env, *admin, *cfg).do(ctx, "POST", "/v1/subscriptions/"+url.PathEscape(pos[0])+"/secret", in, &out)
	if err != nil {
		return fail(env, "subscriptions rotate-secret", err)
	}
	if *asJSON {
		env.stdout.Write(raw)
		return exitOK
	}
	fmt.Fprintf(env.stdout, "new secret of %s: %s\n", pos[0], printable(out.Secret, false))
	fmt.Fprintln(env.stdout, "The secret is shown only now: dzhook will not show it again.")
	fmt.Fprintf(env.stdout, "The old secret stays valid until %s (Standard Webhooks deliveries carry a signature with each until then).\n", when(&out.PreviousValidUntil))
	fmt.Fprintf(env.stdout, "X-DZDESK-Signature is made with the new secret from %s.\n", when(&out.SignatureSwitchAt))
	return exitOK
}

// runAudit prints the audit trail of the subscriptions, newest first.
func runAudit(ctx context.Context, env *cli, args []string) int {
	fs := newFlags(env, "audit", "[--limit N] [--cursor C] [--json]")
	admin, cfg, asJSON := adminFlags(env, fs)
	limit := fs.Int("limit", 50, "at most `N` entries (1-500)")
	cursor := fs.String("cursor", "", "the next page's `cursor`, as printed")
	if code, stop := parseFlags(fs, args); stop {
		return code
	}
	var out api.AuditPage
	if f := emptyFlag(fs, "cursor"); f != "" {
		return refuseEmpty(env, "audit", f)
	}
	raw, err := newClient(env, *admin, *cfg).do(ctx, "GET", "/v1/audit"+query("limit", fmt.Sprint(*limit), "cursor", *cursor), nil, &out)
	if err != nil {
		return fail(env, "audit", err)
	}
	if *asJSON {
		env.stdout.Write(raw)
		return exitOK
	}
	tw := newTable(env.stdout)
	fmt.Fprintln(tw, "TIME\tACTION\tSUBSCRIPTION\tFIELDS\tCLIENT")
	for _, e := range out.Entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", when(&e.At), e.Action, e.Subscription, orDash(strings.Join(e.Fields, ",")), printable(e.Client, false))
	}
	_ = tw.Flush()
	if out.NextCursor != "" {
		fmt.Fprintf(env.stdout, "\nmore: --cursor %s\n", out.NextCursor)
	}
	return exitOK
}
