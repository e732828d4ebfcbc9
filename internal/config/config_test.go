package config

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

const minimal = `
source:
  dsn: postgres://dzhook@127.0.0.1/dzdesk
subscriptions:
  - id: crm
    url: https://crm.example.com/hook
    events: [request.*]
    secret: 0123456789abcdef
`

func TestDefaults(t *testing.T) {
	cfg, err := Parse([]byte(minimal), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Delivery.Timeout, 5*time.Second; got != want {
		t.Errorf("delivery.timeout = %v, want %v", got, want)
	}
	if got, want := cfg.Delivery.RetrySchedule, []time.Duration{0, time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour}; !reflect.DeepEqual(got, want) {
		t.Errorf("delivery.retry_schedule = %v, want %v", got, want)
	}
	if got, want := cfg.Admin.Listen, "127.0.0.1:8080"; got != want {
		t.Errorf("admin.listen = %q, want %q", got, want)
	}
	if got, want := cfg.Source.Slot, "dzhook"; got != want {
		t.Errorf("source.slot = %q, want %q", got, want)
	}
	if !cfg.Subscriptions[0].Active {
		t.Error("subscriptions[0].active = false, want the default true")
	}
	if got, want := cfg.JournalDSN().Reveal(), "postgres://dzhook@127.0.0.1/dzdesk"; got != want {
		t.Errorf("journal DSN = %q, want source.dsn %q", got, want)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	env := []string{
		"DZHOOK_SOURCE_DSN=postgres://other@db/x",
		"DZHOOK_DELIVERY_TIMEOUT=10s",
		"DZHOOK_DELIVERY_ALLOW_INSECURE_HTTP=true",
		"DZHOOK_DELIVERY_RETRY_SCHEDULE=0s, 2s,4s",
		"DZHOOK_ADMIN_LISTEN=127.0.0.1:9999",
		"DZHOOK_NOT_A_SETTING=ignored",
		"SECRET=fedcba9876543210fedcba",
	}
	yaml := strings.Replace(minimal, "https://crm", "http://crm", 1) + "    headers:\n      X-Api-Key: key-${SECRET}\n"
	cfg, err := Parse([]byte(yaml), env)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Source.DSN.Reveal(), "postgres://other@db/x"; got != want {
		t.Errorf("source.dsn = %q, want %q", got, want)
	}
	if got, want := cfg.Delivery.Timeout, 10*time.Second; got != want {
		t.Errorf("delivery.timeout = %v, want %v", got, want)
	}
	if !cfg.Delivery.AllowInsecureHTTP {
		t.Error("delivery.allow_insecure_http not set from the environment")
	}
	if got, want := cfg.Delivery.RetrySchedule, []time.Duration{0, 2 * time.Second, 4 * time.Second}; !reflect.DeepEqual(got, want) {
		t.Errorf("delivery.retry_schedule = %v, want %v", got, want)
	}
	if got, want := cfg.Admin.Listen, "127.0.0.1:9999"; got != want {
		t.Errorf("admin.listen = %q, want %q", got, want)
	}
	if got, want := cfg.Subscriptions[0].Headers["X-Api-Key"].Reveal(), "key-fedcba9876543210fedcba"; got != want {
		t.Errorf("header = %q, want %q", got, want)
	}
}

func TestFileReferences(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secret")
	if err := os.WriteFile(path, []byte("file-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]byte(strings.Replace(minimal, "0123456789abcdef", "${file:"+path+"}", 1)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Subscriptions[0].Secret.Reveal(); got != "file-secret-0123456789" {
		t.Errorf("secret from file = %q", got)
	}
	_, err = Parse([]byte(strings.Replace(minimal, "0123456789abcdef", "${file:"+dir+"/missing}", 1)), nil)
	if err == nil || !strings.Contains(err.Error(), "subscriptions[0].secret: ${file:"+dir+"/missing} cannot be read") {
		t.Errorf("missing secret file: %v", err)
	}
}

func TestUnknownEnv(t *testing.T) {
	got := UnknownEnv([]string{"DZHOOK_SOURCE_DNS=x", "DZHOOK_SOURCE_DSN=y", "DZHOOK_CONFIG=z", "PATH=/bin"})
	if len(got) != 1 || !strings.Contains(got[0], "DZHOOK_SOURCE_DNS") || !strings.Contains(got[0], "DZHOOK_SOURCE_DSN") {
		t.Errorf("UnknownEnv = %q, want DZHOOK_SOURCE_DNS with a suggestion", got)
	}
	// A setting's variable set but empty replaces the file's value with
	// nothing (DZHOOK_JOURNAL_DSN= moves the journal to source.dsn): said.
	got = UnknownEnv([]string{"DZHOOK_JOURNAL_DSN=", "DZHOOK_ADMIN_LISTEN=", "DZHOOK_SOURCE_DSN=y", "DZHOOK_CONFIG="})
	if len(got) != 2 || !strings.Contains(got[0]+got[1], "DZHOOK_JOURNAL_DSN is set but empty: it replaces journal.dsn") ||
		!strings.Contains(got[0]+got[1], "DZHOOK_ADMIN_LISTEN is set but empty") {
		t.Errorf("UnknownEnv with empty settings = %q, want a warning for each of the two", got)
	}
}

func TestReferences(t *testing.T) {
	lookup := func(name string) (string, bool) {
		v, ok := map[string]string{"A": "alpha", "EMPTY": ""}[name]
		return v, ok
	}
	for _, tc := range []struct {
		in, want string
		missing  []string
	}{
		{"plain", "plain", nil},
		{"${A}", "alpha", nil},
		{"x-${A}-${A}", "x-alpha-alpha", nil},
		{"${NOPE}", "", []string{"${NOPE} is not set in the environment"}},
		{"${NOPE:-fallback}", "fallback", nil},
		{"${EMPTY:-fallback}", "fallback", nil},
		{"${EMPTY}", "", nil},
		{"$${A}", "${A}", nil},
		{"x-${A}-${unterminated", "x-alpha-", []string{"unterminated ${ reference (end it with }, or write $${ for a literal ${)"}},
		{"$${unterminated", "${unterminated", nil},
	} {
		got, _, missing := expand(tc.in, lookup)
		if got != tc.want || !reflect.DeepEqual(missing, tc.missing) {
			t.Errorf("expand(%q) = %q, missing %v; want %q, missing %v", tc.in, got, missing, tc.want, tc.missing)
		}
	}
}

// TestFiveMistakes is the golden test of `dzhook validate`'s report: five
// distinct mistakes, all reported at once with their paths.
func TestFiveMistakes(t *testing.T) {
	_, err := LoadEnv("testdata/five-mistakes.yaml", nil)
	ps := AsProblems(err)
	if ps == nil {
		t.Fatalf("LoadEnv error = %v, want Problems", err)
	}
	got := ps.Error() + "\n"
	golden := filepath.Join("testdata", "five-mistakes.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("problems:\n%s\nwant (testdata/five-mistakes.golden, refresh with -update):\n%s", got, want)
	}
	for _, path := range []string{"delivery.timeout", "subscriptions[0].url", "subscriptions[0].events[1]", "subscriptions[0].secret", "subscriptions[1].evnts"} {
		if !strings.Contains(got, path+": ") {
			t.Errorf("no problem reported at %s", path)
		}
	}
}

func TestProblems(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		env        []string
		want       []string // each must appear in the report
	}{
		{"missing dsn, url and secret", `
subscriptions:
  - id: a
    events: ['*']`, nil, []string{"source.dsn: required", "subscriptions[0].url: required", "subscriptions[0].secret: required"}},
		{"duplicate ids", minimal + `
  - id: crm
    url: https://b.example.com/
    events: [user.created]
    secret: 0123456789abcdef`, nil, []string{`subscriptions[1].id: "crm" is already the id of subscriptions[0]`}},
		{"glob matching nothing", strings.Replace(minimal, "request.*", "ticket.*", 1), nil, []string{`subscriptions[0].events[0]: pattern "ticket.*" matches no event`}},
		{"typo in event name", strings.Replace(minimal, "request.*", "user.deactivate", 1), nil, []string{`did you mean "user.deactivated"?`}},
		{"bad duration in schedule", minimal + "delivery:\n  retry_schedule: [0s, 1x]\n", nil, []string{`delivery.retry_schedule[1]: "1x" is not a duration`}},
		{"empty schedule", minimal + "delivery:\n  retry_schedule: []\n", nil, []string{"delivery.retry_schedule: must list at least one attempt"}},
		{"delayed first attempt", minimal + "delivery:\n  retry_schedule: [20s, 1m]\n", nil, []string{"delivery.retry_schedule[0]: is 20s: the first attempt is made at once, so it must be 0s"}},
		{"secrets keys not 32 bytes of base64", minimal + "secrets:\n  key: c2hvcnQ=\n  keys: [not-base64!]\n", nil, []string{"secrets.key: not 32 bytes of base64", "secrets.keys[0]: not 32 bytes of base64"}},
		{"dotted keys", minimal + "admin.token: 0123456789abcdef0123\nmapping.requests.table: tickets\ndelivery:\n  retry.schedule: [0s]\n", nil, []string{
			"admin.token: unknown key (keys are not split at dots: write admin: {token: …})",
			"mapping.requests.table: unknown key (keys are not split at dots: write mapping: {requests: {table: …}})",
			`delivery.retry.schedule: unknown key (did you mean "retry_schedule"?)`, // retry is no key of delivery
		}},
		{"unknown top-level and nested keys", minimal + "sourc: {}\ndelivery:\n  timout: 5s\n", nil, []string{`sourc: unknown key (did you mean "source"?)`, `delivery.timout: unknown key (did you mean "timeout"?)`}},
		{"unresolved reference", strings.Replace(minimal, "0123456789abcdef", "${WEBHOOK_SECRET}", 1), nil, []string{"subscriptions[0].secret: ${WEBHOOK_SECRET} is not set in the environment"}},
		{"credentials in url", strings.Replace(minimal, "https://crm", "https://user:pw@crm", 1), nil, []string{"subscriptions[0].url: must not contain credentials"}},
		{"a metadata address as receiver", strings.Replace(minimal, "https://crm.example.com/hook", "https://169.254.169.254/latest", 1), nil, []string{"subscriptions[0].url: its address is refused by the egress guard: link-local or cloud metadata"}},
		{"a loopback receiver with private networks blocked", strings.Replace(minimal, "https://crm.example.com/hook", "https://127.0.0.1/hook", 1) + "delivery: {block_private_networks: true}\n", nil, []string{"subscriptions[0].url: its address is refused by the egress guard: private or loopback"}},
		{"allow_networks inside a metadata network", minimal + "delivery: {block_private_networks: true, allow_networks: [169.254.169.254/32]}\n", nil, []string{`delivery.allow_networks[0]: "169.254.169.254/32" lies within 169.254.0.0/16`}},
		{"allow_networks in IPv4-mapped form", minimal + "delivery: {block_private_networks: true, allow_networks: [\"::ffff:10.0.0.0/104\"]}\n", nil, []string{`delivery.allow_networks[0]: "::ffff:10.0.0.0/104" is an IPv6 form of IPv4 addresses`}},
		{"a url as dzhook shows it, query hidden", strings.Replace(minimal, "https://crm.example.com/hook", "https://crm.example.com/hook?REDACTED", 1), nil, []string{"subscriptions[0].url: is the hidden form dzhook shows"}},
		{"a url as dzhook shows it, path hidden", strings.Replace(minimal, "https://crm.example.com/hook", "https://crm.example.com/REDACTED", 1), nil, []string{"subscriptions[0].url: is the hidden form dzhook shows"}},
		{"odd scheme", strings.Replace(minimal, "https://crm.example.com/hook", "ftp://crm.example.com/hook", 1), nil, []string{`scheme "ftp" is not allowed`}},
		{"unicode host", strings.Replace(minimal, "crm.example.com", "crм.example.com", 1), nil, []string{"non-ASCII"}},
		{"ipv6 zone", strings.Replace(minimal, "crm.example.com", "[fe80::a9fe:a9fe%25eth0]", 1), nil, []string{"subscriptions[0].url: host has an IPv6 zone"}},
		{"wrong types", minimal + "delivery:\n  concurrency: many\n  allow_insecure_http: maybe\nsla:\n  warning_percent: [[1]]\n", nil,
			[]string{`delivery.concurrency: "many" is not a whole number`, `delivery.allow_insecure_http: "maybe" is not a boolean`, "sla.warning_percent[0]: must be a single value, not a list"}},
		{"reserved header", minimal + "    headers: {X-DZDESK-Signature: forged}\n", nil, []string{"subscriptions[0].headers.X-DZDESK-Signature: X-Dzdesk-Signature is set by dzhook"}},
		{"connection headers", minimal + "    headers: {Connection: Upgrade, upgrade: websocket, Transfer-Encoding: chunked, TE: Trailers, Keep-Alive: timeout=5}\n", nil, []string{
			"subscriptions[0].headers.Connection: Connection is a header of the connection",
			"subscriptions[0].headers.upgrade: Upgrade is a header of the connection",
			"subscriptions[0].headers.Transfer-Encoding: Transfer-Encoding is a header of the connection",
			"subscriptions[0].headers.TE: Te is a header of the connection",
			"subscriptions[0].headers.Keep-Alive: Keep-Alive is a header of the connection",
		}},
		{"localhost receivers with private networks blocked", strings.Replace(minimal, "https://crm.example.com/hook", "https://localhost./hook", 1) + "delivery: {block_private_networks: true}\n", nil, []string{"subscriptions[0].url: its address is refused by the egress guard: private or loopback"}},
		{"a localhost subdomain with private networks blocked", strings.Replace(minimal, "https://crm.example.com/hook", "https://crm.LOCALHOST/hook", 1) + "delivery: {block_private_networks: true}\n", nil, []string{"subscriptions[0].url: its address is refused by the egress guard: private or loopback"}},
		{"previous secret without its end", minimal + "    previous_secret: fedcba9876543210\n", nil, []string{"subscriptions[0].previous_secret_until: required with previous_secret"}},
		{"overlap end without a secret", minimal + "    previous_secret_until: 2024-01-16T14:30:00Z\n", nil, []string{"subscriptions[0].previous_secret: required with previous_secret_until"}},
		{"previous secret short, overlap end not a time", minimal + "    previous_secret: short\n    previous_secret_until: tomorrow\n", nil, []string{
			"subscriptions[0].previous_secret: too short", `subscriptions[0].previous_secret_until: "tomorrow" is not an RFC 3339 time`}},
		{"overlap too long", minimal + "    previous_secret: fedcba9876543210\n    previous_secret_until: 2205-01-16T14:30:00Z\n", nil, []string{"subscriptions[0].previous_secret_until: 2205-01-16T14:30:00Z is more than 720h0m0s ahead"}},
		{"previous secret the same", minimal + "    previous_secret: 0123456789abcdef\n    previous_secret_until: 2024-01-16T14:30:00Z\n", nil, []string{"subscriptions[0].previous_secret: is the same as secret"}},
		{"previous secret not whsec_ with standard webhooks", strings.Replace(minimal, "0123456789abcdef", "whsec_MDEyMzQ1Njc4OWFiY2RlZg==", 1) + "    standard_webhooks: true\n    previous_secret: fedcba9876543210\n    previous_secret_until: 2024-01-16T14:30:00Z\n", nil, []string{"subscriptions[0].previous_secret: standard_webhooks needs a whsec_<base64> secret"}},
		{"control character in a header value", minimal + "    headers: {X-Tenant: \"acme\\0\"}\n", nil, []string{"subscriptions[0].headers.X-Tenant: value must not contain control characters"}},
		{"short secret", strings.Replace(minimal, "0123456789abcdef", "short", 1), nil, []string{"subscriptions[0].secret: too short"}},
		{"short admin token and notify secret", minimal + "admin:\n  token: t0ken\nnotify:\n  secret: s3cret\n", nil, []string{"admin.token: too short", "notify.secret: too short"}},
		{"admin token with a space at its end", minimal + "admin:\n  token: \"tok-0123456789abcdef \"\n", nil, []string{"admin.token: has a space at either end"}},
		{"admin token with a line break", minimal + "admin:\n  token: \"tok-0123456789abcdef\\n\"\n", nil, []string{"admin.token: has a space at either end, a line break"}},
		{"public admin without token", minimal + "admin:\n  listen: 0.0.0.0:8080\n", nil, []string{"admin.token: required when admin.listen"}},
		{"bad custom event", minimal + "custom_events:\n  - name: Shipped\n", nil, []string{`custom_events: "Shipped": a custom event name must look like entity.action`}},
		{"custom event schema that does not compile", minimal + "custom_events:\n  - name: order.shipped\n  - name: order.paid\n    schema: {type: objekt}\n", nil, []string{"custom_events[1].schema: not a valid JSON Schema: at /type: value must be one of"}},
		{"custom event schema that is not a mapping", minimal + "custom_events:\n  - name: order.paid\n    schema: object\n", nil, []string{`custom_events[0].schema: must be a mapping (a JSON Schema object), not a string`}},
		{"custom event schema with a remote $ref", minimal + "custom_events:\n  - name: order.paid\n    schema: {$ref: 'https://example.com/order.json'}\n", nil, []string{`custom_events[0].schema: `, "may only refer inside"}},
		{"custom event example that breaks its schema", minimal + "custom_events:\n  - name: order.paid\n    schema: {type: object, required: [amount], properties: {amount: {type: number}}}\n    example: {amount: twelve}\n", nil, []string{`custom_events[0].example: breaks custom_events[0].schema: at /amount: got string, want number`}},
		{"custom event example that is not a mapping", minimal + "custom_events:\n  - name: order.paid\n    example: [1, 2]\n", nil, []string{`custom_events[0].example: must be a mapping (the event's data, a JSON object), not a list`}},
		{"standard webhooks key of 7 bytes", strings.Replace(minimal, "0123456789abcdef", "whsec_AAAAAAAAAA==", 1) + "    standard_webhooks: true\n", nil, []string{"subscriptions[0].secret: the key after whsec_ is 7 bytes: use at least 16 random bytes"}},
		{"standard webhooks without whsec_", minimal + "    standard_webhooks: true\n", nil, []string{"subscriptions[0].secret: standard_webhooks needs a whsec_<base64> secret"}},
		{"bad filter", minimal + "    filter: 'data.priority in'\n", nil, []string{"subscriptions[0].filter: ", "Syntax error"}},
		{"bad transform, with its position", minimal + "    transform: '{\"text\": data.x +}'\n", nil, []string{"subscriptions[0].transform: ", "<input>:1:"}},
		{"transform giving a string", minimal + "    transform: '\"hello\"'\n", nil, []string{"subscriptions[0].transform: the transform must give a map (a JSON object), a list or null, but it gives string"}},
		{"transform with null in a branch", minimal + "    transform: 'event == \"x\" ? {\"a\": 1} : null'\n", nil, []string{"write skip instead of null"}},
		{"unknown format", minimal + "    format: mattermost\n", nil, []string{`subscriptions[0].format: "mattermost" is not a format: use one of dzdesk, slack, teams, discord`}},
		{"bad method", minimal + "    method: PATCH\n", nil, []string{`subscriptions[0].method: "PATCH": use POST or PUT`}},
		{"bad rate limit", minimal + "    rate_limit: 50/h\n", nil, []string{`subscriptions[0].rate_limit: "50/h" is not a rate limit: the unit after / is s (per second) or m (per minute)`}},
		{"preset still needs a secret for dzdesk", strings.Replace(minimal, "    secret: 0123456789abcdef\n", "", 1), nil, []string{"subscriptions[0].secret: required"}},
		{"empty env value", minimal, []string{"DZHOOK_SOURCE_DSN=", "DZHOOK_LOG_LEVEL="}, []string{
			"source.dsn: DZHOOK_SOURCE_DSN is set but empty (an empty variable still replaces the file's value): required",
			`log.level: DZHOOK_LOG_LEVEL is set but empty (an empty variable still replaces the file's value): "" is not one of`,
		}},
		{"bad env value", minimal, []string{"DZHOOK_DELIVERY_TIMEOUT=soon"}, []string{`delivery.timeout: "soon" is not a duration`}},
		{"not a mapping", "subscriptions: {id: a}\n", nil, []string{"subscriptions: must be a list, not a mapping"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), tc.env)
			if err == nil {
				t.Fatal("Parse succeeded, want problems")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("report lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestAllowedNearTheRefused: what sits beside this stop's new refusals
// still loads: TE: trailers (the one TE value HTTP/2 allows), and an
// admin token with a space inside (a request can carry it; it worked
// with curl and the dashboard before).
func TestAllowedNearTheRefused(t *testing.T) {
	for _, yaml := range []string{
		minimal + "    headers: {TE: trailers}\n",
		minimal + "admin:\n  token: \"tok-01234567 89abcdef\"\n",
	} {
		if _, err := Parse([]byte(yaml), nil); err != nil {
			t.Errorf("%q: %v", yaml[len(minimal):], err)
		}
	}
}

// TestSlotName: source.slot follows PostgreSQL's rule for replication
// slot names (lower-case letters, digits, _; at most 63), not an
// identifier's: "Dzhook" and "dz$hook" passed validate and failed at
// setup.
func TestSlotName(t *testing.T) {
	for _, tc := range []struct {
		slot string
		ok   bool
	}{
		{"dzhook", true},
		{"dzhook_2", true},
		{"2nd_slot", true},
		{strings.Repeat("s", 63), true},
		{"Dzhook", false},
		{"dz$hook", false},
		{"dz-hook", false},
		{strings.Repeat("s", 64), false},
	} {
		yaml := strings.Replace(minimal, "dzdesk\n", "dzdesk\n  slot: \""+tc.slot+"\"\n", 1)
		_, err := Parse([]byte(yaml), nil)
		want := fmt.Sprintf("source.slot: %q is not a replication slot name: PostgreSQL allows only lower-case letters, digits and _ (at most 63)", tc.slot)
		switch {
		case tc.ok && err != nil:
			t.Errorf("slot %q: %v, want no problem", tc.slot, err)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("slot %q: %v, want %q", tc.slot, err, want)
		}
	}
}

func TestCustomEventsAreSubscribable(t *testing.T) {
	yaml := strings.Replace(minimal, "request.*", "order.shipped", 1) + "custom_events:\n  - name: order.shipped\n    description: An order left the warehouse\n"
	cfg, err := Parse([]byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	cat, _ := cfg.Catalog()
	if e, ok := cat.Lookup("order.shipped"); !ok || !e.Custom || e.Group != "order" {
		t.Errorf("order.shipped = %+v, %v; want a custom event of group order", e, ok)
	}
}

// A custom event's schema is read as YAML wrote it (keys with dots,
// nulls and all) and serves as the event's schema.
func TestCustomEventSchema(t *testing.T) {
	yaml := minimal + `custom_events:
  - name: order.shipped
    schema:
      type: object
      required: [orderId]
      properties:
        orderId: {type: string, pattern: "^ord_"}
        carrier.code: {enum: [ups, null]}
  - name: order.paid
`
	cfg, err := Parse([]byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	set, err := cfg.Schemas()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := set.Document("order.paid"); ok {
		t.Error("order.paid declares no schema but has one")
	}
	for data, ok := range map[string]bool{
		`{"orderId":"ord_1","carrier.code":null}`:  true,
		`{"orderId":"ord_1","carrier.code":"dhl"}`: false,
		`{"orderId":"1"}`:                          false,
	} {
		if err := set.ValidateData("order.shipped", []byte(data)); (err == nil) != ok {
			t.Errorf("%s: got %v, want valid %v", data, err, ok)
		}
	}
}

// TestCustomEventSchemaAsWritten: a schema's dates and numbers are the
// file's text, not what YAML reads: a const 2024-01-01 refused the data
// "2024-01-01" (YAML gave a time, JSON "2024-01-01T00:00:00Z"), and a
// 23-digit const became a float64 no data equals. A number that is not
// JSON's (0755: 493 in YAML 1.1, 755 in 1.2) is refused, naming its path.
func TestCustomEventSchemaAsWritten(t *testing.T) {
	cfg, err := Parse([]byte(minimal+`custom_events:
  - name: order.shipped
    description: 2024-01-01
    schema:
      type: object
      properties:
        day: {const: 2024-01-01}
        big: {const: 12345678901234567890123}
        seen: {enum: [2001-12-14t21:59:43.10-05:00]}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.CustomEvents[0].Description; d != "2024-01-01" {
		t.Errorf("description: %q, want 2024-01-01 as written", d)
	}
	set, err := cfg.Schemas()
	if err != nil {
		t.Fatal(err)
	}
	for data, ok := range map[string]bool{
		`{"day":"2024-01-01"}`:                    true,
		`{"day":"2024-01-01T00:00:00Z"}`:          false,
		`{"big":12345678901234567890123}`:         true,
		`{"big":12345678901234567000000}`:         false,
		`{"seen":"2001-12-14t21:59:43.10-05:00"}`: true,
	} {
		if err := set.ValidateData("order.shipped", []byte(data)); (err == nil) != ok {
			t.Errorf("%s: got %v, want valid %v", data, err, ok)
		}
	}
	for lit, read := range map[string]string{"0755": "493", "0x10": "16", "1_000": "1000", ".5": "0.5", "+12": "12"} {
		_, err := Parse([]byte(minimal+"custom_events:\n  - name: order.shipped\n    schema: {properties: {mode: {enum: [1, "+lit+"]}}}\n"), nil)
		want := "custom_events[0].schema.properties.mode.enum[1]: " + lit + " is not a JSON number (YAML reads it as " + read + ")"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("enum [1, %s]: %v, want %q", lit, err, want)
		}
	}
}

func TestInvalidYAML(t *testing.T) {
	_, err := Parse([]byte("source:\n  dsn: [unclosed\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "not valid YAML") || !strings.Contains(err.Error(), "line") {
		t.Fatalf("err = %v, want a YAML error with its line", err)
	}
}

// TestSecretsNeverPrinted renders a loaded config every way a program
// might print it and checks that no secret value shows.
func TestSecretsNeverPrinted(t *testing.T) {
	const secret = "s3cr3t-value-0123456789"
	yaml := strings.Replace(minimal, "0123456789abcdef", secret, 1) +
		"    headers: {Authorization: Bearer " + secret + "}\nadmin:\n  token: " + secret + "\nnotify:\n  url: https://hooks.slack.example/" + secret + "\n"
	yaml = strings.Replace(yaml, "dzhook@127", "dzhook:"+secret+"@127", 1)
	cfg, err := Parse([]byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "%v %+v %#v %s", cfg, cfg, cfg, cfg.Subscriptions[0].Secret)
	b, _ := json.Marshal(cfg)
	buf.Write(b)
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("cfg", "secret", cfg.Subscriptions[0].Secret, "dsn", cfg.Source.DSN, "config", cfg)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("cfg", "secret", cfg.Subscriptions[0].Secret, "token", cfg.Admin.Token)
	if strings.Contains(buf.String(), secret) {
		t.Fatalf("secret printed:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "REDACTED") {
		t.Fatalf("expected REDACTED in:\n%s", buf.String())
	}

	// A mistake in a secret-bearing field must not echo the value either.
	bad := strings.Replace(yaml, "https://hooks.slack.example/", "ftp://hooks.slack.example/", 1)
	bad = strings.Replace(bad, "secret: "+secret, "secret: [\""+secret+"\"]", 1)
	_, err = Parse([]byte(bad), nil)
	if err == nil {
		t.Fatal("want problems")
	}
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("problem report shows a secret:\n%v", err)
	}
}

func TestSampleConfigValidates(t *testing.T) {
	cfg, err := LoadEnv("../../config.yaml", nil)
	if err != nil {
		t.Fatalf("config.yaml: %v", err)
	}
	if len(cfg.Subscriptions) == 0 {
		t.Fatal("config.yaml has no subscriptions")
	}
}

func TestEnvVars(t *testing.T) {
	vars := EnvVars()
	for _, want := range []string{"DZHOOK_SOURCE_DSN", "DZHOOK_DELIVERY_ALLOW_INSECURE_HTTP", "DZHOOK_ADMIN_TOKEN", "DZHOOK_DELIVERY_RETRY_SCHEDULE"} {
		found := false
		for _, v := range vars {
			found = found || v == want
		}
		if !found {
			t.Errorf("EnvVars() lacks %s: %v", want, vars)
		}
	}
}

// TestNotifyURLNeverQuoted: notify.url can be a credential (a Slack
// webhook URL); a mistake in it is reported without any part of it.
func TestNotifyURLNeverQuoted(t *testing.T) {
	for _, u := range []string{"xoxb-PLANTED-SECRET-123456789://hooks", "https://hooks.example.com:PLANTED-SECRET-123456789/x", "http://PLANTED-SECRET-123456789.example.com/x"} {
		_, err := Parse([]byte(minimal+"notify:\n  url: "+u+"\n"), nil)
		if err == nil {
			t.Errorf("%s: accepted", u)
			continue
		}
		if strings.Contains(strings.ToLower(err.Error()), "planted-secret") {
			t.Errorf("notify.url problem quotes the URL: %v", err)
		}
	}
}

// TestConnectorNeedsNoSecret: Slack, Teams and Discord do not check a
// signature, so a subscription with their format needs no secret; the
// new keys default to the envelope, POST and no rate limit.
func TestConnectorNeedsNoSecret(t *testing.T) {
	yaml := strings.Replace(minimal, "    secret: 0123456789abcdef\n", "    format: slack\n    rate_limit: 1/s\n    method: PUT\n", 1) + `  - id: plain
    url: https://plain.example.com/hook
    events: [request.*]
    secret: 0123456789abcdef
`
	c, err := Parse([]byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Subscriptions[0]; s.Format != "slack" || s.RateLimit != "1/s" || s.Method != "PUT" || s.Secret.IsSet() {
		t.Errorf("slack subscription: %+v", s)
	}
	if s := c.Subscriptions[1]; s.Format != "dzdesk" || s.Method != "POST" || s.RateLimit != "" || s.Transform != "" {
		t.Errorf("defaults: format %q, method %q, rate_limit %q, transform %q", s.Format, s.Method, s.RateLimit, s.Transform)
	}
}

// TestTelemetry: tracing is off by default; telemetry.otlp_endpoint takes
// an http(s) base URL, and a bad one is named by its path without being
// quoted; subscriptions[].traceparent defaults to false.
func TestTelemetry(t *testing.T) {
	c, err := Parse([]byte(minimal), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Telemetry.OTLPEndpoint != "" || c.Subscriptions[0].Traceparent {
		t.Errorf("defaults: otlp_endpoint %q, traceparent %v; want none, false", c.Telemetry.OTLPEndpoint, c.Subscriptions[0].Traceparent)
	}
	yaml := strings.Replace(minimal, "    secret: 0123456789abcdef\n", "    secret: 0123456789abcdef\n    traceparent: true\n", 1) +
		"telemetry:\n  otlp_endpoint: http://otel-collector:4318\n"
	c, err = Parse([]byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Telemetry.OTLPEndpoint, "http://otel-collector:4318"; got != want {
		t.Errorf("otlp_endpoint: got %q, want %q", got, want)
	}
	if !c.Subscriptions[0].Traceparent {
		t.Error("traceparent: got false, want true")
	}
	c, err = Parse([]byte(minimal), []string{"DZHOOK_TELEMETRY_OTLP_ENDPOINT=https://otel.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Telemetry.OTLPEndpoint, "https://otel.example.com"; got != want {
		t.Errorf("from DZHOOK_TELEMETRY_OTLP_ENDPOINT: got %q, want %q", got, want)
	}
	for _, bad := range []string{"otel-collector:4318", "grpc://collector:4317", "http://user:PLANTED-SECRET@collector:4318", "http://collector:4318?token=PLANTED-SECRET", "http://"} {
		_, err := Parse([]byte(minimal+"telemetry:\n  otlp_endpoint: "+bad+"\n"), nil)
		if err == nil {
			t.Errorf("%s: accepted", bad)
			continue
		}
		if !strings.Contains(err.Error(), "telemetry.otlp_endpoint") {
			t.Errorf("%s: problem does not name telemetry.otlp_endpoint: %v", bad, err)
		}
		if strings.Contains(err.Error(), "PLANTED-SECRET") {
			t.Errorf("%s: problem quotes the URL: %v", bad, err)
		}
	}
}

// TestNonFiniteNumbers: NaN and ±Inf are refused in a float setting, by
// name and value, from YAML, a string or the environment. NaN would pass
// every range check (each comparison with it is false): an
// sla.warning_percent of NaN fired its warning at once, with
// "percentElapsed":NaN in a body that is then not JSON.
func TestNonFiniteNumbers(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		env  []string
		want string
	}{
		{"sla:\n  warning_percent: [.nan]\n", nil, `sla.warning_percent[0]: "NaN" is not a finite number`},
		{"sla:\n  warning_percent: .NaN\n", nil, `sla.warning_percent[0]: "NaN" is not a finite number`},
		{"sla:\n  warning_percent: [50, .inf]\n", nil, `sla.warning_percent[1]: "+Inf" is not a finite number`},
		{"sla:\n  warning_percent: -.inf\n", nil, `sla.warning_percent[0]: "-Inf" is not a finite number`},
		{"sla:\n  warning_percent: [\"nan\"]\n", nil, `sla.warning_percent[0]: "nan" is not a finite number`},
		{"sla:\n  warning_percent: [Infinity]\n", nil, `sla.warning_percent[0]: "Infinity" is not a finite number`},
		{"", []string{"DZHOOK_SLA_WARNING_PERCENT=50,NaN"}, `sla.warning_percent[1]: "NaN" is not a finite number`},
	} {
		_, err := Parse([]byte(minimal+tc.yaml), tc.env)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %q: got %v, want %s", tc.yaml, tc.env, err, tc.want)
		}
	}

	// The range check itself holds for a Config made in code.
	cfg := Default()
	cfg.SLA.WarningPercent = []float64{math.NaN()}
	var ps Problems
	cfg.validate(&ps, nil)
	if !strings.Contains(ps.Error(), "sla.warning_percent[0]: must be between 0 and 100") {
		t.Errorf("validate with a NaN warning_percent: got %v, want it out of range", ps)
	}
}

// TestUnterminatedReference: a ${ without its } is an error at its path,
// not a literal value (the admin token was once the text
// "${DZ_ADMIN_TOKEN_FROM_ENV, ..."), and the message quotes none of the
// value, which may hold a secret after the ${.
func TestUnterminatedReference(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		env  []string
		want string
	}{
		{"admin:\n  token: ${DZ_ADMIN_TOKEN_FROM_ENV, " + planted + "\n", nil, "admin.token: unterminated ${ reference"},
		{"", []string{"DZHOOK_ADMIN_TOKEN=" + planted + "${DZ_ADMIN_TOKEN"}, "admin.token: unterminated ${ reference"},
		{"    headers: {X-Key: \"k-${KEY-" + planted + "\"}\n", []string{"KEY=x"}, "subscriptions[0].headers.X-Key: unterminated ${ reference"},
	} {
		_, err := Parse([]byte(minimal+tc.yaml), tc.env)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %q: got %v, want %s", tc.yaml, tc.env, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), planted) || strings.Contains(err.Error(), "DZ_ADMIN_TOKEN") {
			t.Errorf("%q %q: the message repeats the value: %v", tc.yaml, tc.env, err)
		}
	}
}

// TestReferencesNeverResolvedInMessages: a value that came from a
// ${NAME} or ${file:…} reference is shown in every message as the
// reference, never as what it resolved to, which may be a secret put in
// the wrong field (problems are logged when a reload is refused). Every
// setting the environment can set, and every field of a subscription,
// is given a reference to a value no field accepts.
func TestReferencesNeverResolvedInMessages(t *testing.T) {
	const resolved = "ZZ:ENV SECRET%"
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	write(t, file, []byte(resolved+"\n"))
	certFile, _ := pemPair(t, dir, "a")
	_, otherKey := pemPair(t, dir, "b")

	every := []string{"PW=" + resolved, "DZHOOK_SOURCE_DSN=postgres://db/x"}
	for _, name := range EnvVars() {
		if name != "DZHOOK_SOURCE_DSN" {
			every = append(every, name+"=${PW}")
		}
	}
	for _, tc := range []struct {
		name   string
		yaml   string
		env    []string
		hidden []string // resolved values that must not show
		want   []string
	}{
		{"every setting", `subscriptions:
  - id: ${PW}
    url: ${PW}
    events: ["${PW}", "x${PW}*"]
    secret: 0123456789abcdef
    filter: ${PW}
    transform: ${PW}
    format: ${PW}
    method: ${PW}
    rate_limit: ${PW}
    ordering: ${PW}
    active: ${PW}
    tls: {cert_file: "${PW}", key_file: "${file:` + file + `}"}
  - id: ${PW}
    url: https://crm.example.com/x
    events: [request.created]
    secret: 0123456789abcdef
    tls: {cert_file: "${CERT}", key_file: "${KEY}"}
custom_events:
  - name: ${PW}
`, append(every, "CERT="+certFile, "KEY="+otherKey), []string{"ZZ", "ENV SECRET", "SECRET%", certFile, otherKey}, []string{
			"delivery.timeout: the value of ${PW} is not a duration",
			"delivery.concurrency: the value of ${PW} is not a whole number",
			"delivery.allow_insecure_http: the value of ${PW} is not a boolean",
			"sla.warning_percent[0]: the value of ${PW} is not a number",
			"log.level: the value of ${PW} is not one of debug, info, warn, error",
			"log.format: the value of ${PW} is not one of",
			"source.slot: the value of ${PW} is not a replication slot name",
			"outbox.table: the value of ${PW} is not",
			"delivery.allow_networks[0]: the value of ${PW} is not a network",
			"delivery.ca_file: the value of ${PW} cannot be read",
			"mapping.schema: the value of ${PW} is not",
			"mapping.users.table: the value of ${PW} is not",
			"custom_events: the value of ${PW}: a custom event name must look like",
			"subscriptions[0].id: the value of ${PW} must be lowercase",
			"subscriptions[1].id: the value of ${PW} is already the id of subscriptions[0]",
			"subscriptions[0].url: its scheme is not allowed",
			"subscriptions[0].events[0]: the value of ${PW} is not a DZDESK event",
			`subscriptions[0].events[1]: the value of "x${PW}*", a pattern, matches no event`,
			"subscriptions[0].filter: the value of ${PW} is not",
			"subscriptions[0].transform: the value of ${PW} is not",
			"subscriptions[0].format: the value of ${PW} is not a format",
			"subscriptions[0].method: the value of ${PW}: use POST or PUT",
			"subscriptions[0].rate_limit: the value of ${PW} is not a rate limit",
			"subscriptions[0].ordering: the value of ${PW} is not an ordering",
			"subscriptions[0].active: the value of ${PW} is not a boolean",
			"subscriptions[0].tls.cert_file: the value of ${PW} cannot be read",
			"subscriptions[1].tls.key_file: the value of ${KEY} does not go with cert_file the value of ${CERT}",
		}},
		{"admin.listen in another setting's message", minimal, []string{"DZHOOK_ADMIN_LISTEN=${L}", "L=10.9.8.7:8080"}, []string{"10.9.8.7"},
			[]string{"admin.token: required when admin.listen (the value of ${L}) is not a loopback address"}},
		{"admin.listen", minimal, []string{"DZHOOK_ADMIN_LISTEN=${L}", "L=ZZ-NO-PORT"}, []string{"ZZ"},
			[]string{"admin.listen: the value of ${L} is not host:port"}},
		{"part of a value", minimal + "delivery:\n  timeout: 5${UNIT}\n", []string{"UNIT=" + resolved}, []string{"ZZ"},
			[]string{`delivery.timeout: the value of "5${UNIT}" is not a duration`}},
		{"a default", minimal + "delivery:\n  timeout: ${T:-soon}\n", nil, nil,
			[]string{"delivery.timeout: the value of ${T:-soon} is not a duration"}},
		{"a file", minimal + "delivery:\n  queue_size: ${file:" + file + "}\n", nil, []string{"ZZ"},
			[]string{"delivery.queue_size: the value of ${file:" + file + "} is not a whole number"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), tc.env)
			if err == nil {
				t.Fatal("Parse succeeded, want problems")
			}
			report := err.Error()
			for _, h := range tc.hidden {
				if strings.Contains(report, h) {
					t.Errorf("the report shows the resolved value (%q)", h)
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(report, w) {
					t.Errorf("the report lacks %q", w)
				}
			}
			if t.Failed() {
				t.Logf("report:\n%s", report)
			}
		})
	}
}

// TestHeadersDifferingOnlyInCase: two headers whose names differ only in
// case are one HTTP header; either value could be sent, so the second is
// refused, naming both.
func TestHeadersDifferingOnlyInCase(t *testing.T) {
	_, err := Parse([]byte(`
source:
  dsn: postgres://dzhook@127.0.0.1/dzdesk
subscriptions:
  - id: crm
    url: https://crm.example.com/hook
    events: [request.*]
    secret: 0123456789abcdef
    headers:
      X-Api-Key: first
      x-api-key: second
`), nil)
	if err == nil || !strings.Contains(err.Error(), "subscriptions[0].headers.x-api-key") || !strings.Contains(err.Error(), "same header as X-Api-Key") {
		t.Fatalf("headers X-Api-Key and x-api-key: %v, want refused naming both", err)
	}
}

// TestNumbersForTextSettingsAsWritten: a setting that is text, written as
// an unquoted number, is the text the file has. YAML reads 0012 as 10 and
// a 23-digit number as a float: a secret was signed with
// "1.2345678901234568e+22", which no receiver's copy of the file verifies.
func TestNumbersForTextSettingsAsWritten(t *testing.T) {
	cfg, err := Parse([]byte(`
source:
  dsn: postgres://dzhook@127.0.0.1/dzdesk
admin:
  token: 123456789012345678901234
subscriptions:
  - id: crm
    url: https://crm.example.com/hook
    events: [request.*]
    secret: 12345678901234567890123
    headers:
      X-Account: 0012
      X-Scale: 1e3
      X-Ratio: 1.50
      X-Count: 42
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Subscriptions[0]
	for _, c := range []struct{ what, got, want string }{
		{"subscriptions[0].secret", s.Secret.Reveal(), "12345678901234567890123"},
		{"admin.token", cfg.Admin.Token.Reveal(), "123456789012345678901234"},
		{"X-Account", s.Headers["X-Account"].Reveal(), "0012"},
		{"X-Scale", s.Headers["X-Scale"].Reveal(), "1e3"},
		{"X-Ratio", s.Headers["X-Ratio"].Reveal(), "1.50"},
		{"X-Count", s.Headers["X-Count"].Reveal(), "42"},
	} {
		if c.got != c.want {
			t.Errorf("%s: the file says %s, dzhook uses %q", c.what, c.want, c.got)
		}
	}
	// A number setting still reads as YAML gives it.
	if cfg, err = Parse([]byte(minimal+"delivery:\n  concurrency: 0x10\n"), nil); err != nil || cfg.Delivery.Concurrency != 16 {
		t.Errorf("delivery.concurrency: 0x10: %v, %v; want 16", err, cfg)
	}
}

// TestEmptyValueTranslation: a value translation to nothing (left empty,
// or ~) is refused naming it; it sent "status": "".
func TestEmptyValueTranslation(t *testing.T) {
	for _, v := range []string{"", "~", `""`} {
		_, err := Parse([]byte(minimal+"mapping:\n  requests:\n    values:\n      status:\n        OPEN: open\n        WORKING: "+v+"\n"), nil)
		if err == nil || !strings.Contains(err.Error(), "mapping.requests.values.status.WORKING") {
			t.Errorf("WORKING: %s: %v, want refused naming mapping.requests.values.status.WORKING", v, err)
		}
	}
}

// TestBlankSecretsAndBadPorts: a secret or token of spaces is too short,
// and admin.listen's port must be a port; both passed (16 spaces, port
// 99999), the port failing only when run started.
func TestBlankSecretsAndBadPorts(t *testing.T) {
	blank := strings.Repeat(" ", 20)
	for path, yaml := range map[string]string{
		"subscriptions[0].secret": "source:\n  dsn: postgres://dzhook@127.0.0.1/dzdesk\nsubscriptions:\n  - {id: crm, url: \"https://crm.example.com/hook\", events: [\"*\"], secret: \"" + blank + "\"}\n",
		"admin.token":             minimal + "admin:\n  token: \"" + blank + "\"\n",
		"notify.secret":           minimal + "notify:\n  url: https://hooks.example.com/n\n  secret: \"" + blank + "\"\n",
		"admin.listen":            minimal + "admin:\n  listen: 127.0.0.1:99999\n",
	} {
		_, err := Parse([]byte(yaml), nil)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v, want refused naming it", path, err)
		}
	}
}

// TestNumbersThroughMergeKeys: the file's text of a number reached
// through an alias or a merge key (<<: *defaults) is kept too, and a
// mapping's own value overrides the merged one.
func TestNumbersThroughMergeKeys(t *testing.T) {
	cfg, err := Parse([]byte(`
source:
  dsn: postgres://dzhook@127.0.0.1/dzdesk
subscriptions:
  - &s
    id: a
    url: https://a.example.com/h
    events: [request.*]
    secret: 12345678901234567890123
    headers: &h {X-Account: 0012, X-Other: 0013}
  - <<: *s
    id: b
  - <<: *s
    id: c
    headers:
      <<: *h
      X-Other: "text"
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range cfg.Subscriptions {
		if got := s.Secret.Reveal(); got != "12345678901234567890123" {
			t.Errorf("subscriptions[%d].secret: dzhook uses %q", i, got)
		}
		if got := s.Headers["X-Account"].Reveal(); got != "0012" {
			t.Errorf("subscriptions[%d].headers.X-Account: dzhook sends %q", i, got)
		}
	}
	if got := cfg.Subscriptions[2].Headers["X-Other"].Reveal(); got != "text" {
		t.Errorf("an overriding value: %q, want text", got)
	}
}

// TestSectionOfTheWrongTypeUnderAnOverride: a section the file writes as
// a scalar is refused even when a DZHOOK_ variable sets a key under it
// (which made it a mapping, and the mistake passed unseen).
func TestSectionOfTheWrongTypeUnderAnOverride(t *testing.T) {
	for _, env := range [][]string{nil, {"DZHOOK_DELIVERY_TIMEOUT=5s"}} {
		_, err := Parse([]byte(minimal+"delivery: oops\n"), env)
		if err == nil || !strings.Contains(err.Error(), "delivery: must be a mapping") || strings.Count(err.Error(), "must be a mapping") != 1 {
			t.Errorf("delivery: oops with %v: %v, want refused once naming delivery", env, err)
		}
	}
}

// A configuration's errors quote no secret written in it: an unquoted
// secret starting with * is read as an alias (the parser quoted the rest
// of it as an unknown anchor), and a ${…} inside a secret whose text is
// no variable's name is not quoted (one that is a name is: the message
// must name the variable an operator forgot).
func TestErrorsQuoteNoSecret(t *testing.T) {
	for _, tc := range []struct{ yaml, secret, want string }{
		{strings.Replace(minimal, "secret: 0123456789abcdef", "secret: *Hx9-S3cretValue", 1), "Hx9-S3cretValue", "quote it"},
		{strings.Replace(minimal, "dsn: postgres://dzhook@127.0.0.1/dzdesk", `dsn: "postgres://u:Tr0ub4dor${S3cret-Part!}x@db/x"`, 1), "S3cret-Part", "not an environment variable's"},
	} {
		_, err := Parse([]byte(tc.yaml), nil)
		if err == nil || strings.Contains(err.Error(), tc.secret) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want an error with %q and without the secret", err, tc.want)
		}
	}
}

// TestOutboxIsNotAMappedTable: outbox.table naming a mapped table is
// refused; every comment became a rejected outbox row.
func TestOutboxIsNotAMappedTable(t *testing.T) {
	for _, table := range []string{"comments", "public.requests"} {
		_, err := Parse([]byte(minimal+"outbox:\n  table: "+table+"\n"), nil)
		if err == nil || !strings.Contains(err.Error(), "outbox.table") || !strings.Contains(err.Error(), "is the table of mapping.") {
			t.Errorf("outbox.table: %s: %v, want refused as a mapped table", table, err)
		}
	}
	if _, err := Parse([]byte(minimal+"outbox:\n  table: crm.comments\n"), nil); err != nil {
		t.Errorf("an outbox in another schema, named like a mapped table: %v", err)
	}
}

// TestKeysAsWritten: a mapping key YAML reads as other than its text is
// refused, naming it: values: {010: closed} translated '8', not '010',
// and 1e3 and 1_000 were one key, one translation silently dropped. Keys
// YAML reads as written (42, true, quoted text) are kept.
func TestKeysAsWritten(t *testing.T) {
	for key, read := range map[string]string{"010": "8", "0x1F": "31", "1e3": "1000", "1_000": "1000", "1.50": "1.5", "~": "null", "True": "true", "2024-01-01": "a time"} {
		_, err := Parse([]byte(minimal+"mapping:\n  requests:\n    values:\n      status: {"+key+": closed}\n"), nil)
		want := "mapping.requests.values.status: key " + key + " is read by YAML as " + read
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("key %s: %v, want %q", key, err, want)
		}
	}
	cfg, err := Parse([]byte(minimal+"mapping:\n  requests:\n    values:\n      status: {42: open, true: closed, \"010\": solved, 1.5: pending}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := cfg.Mapping.Requests.Values.Status
	for k, v := range map[string]string{"42": "open", "true": "closed", "010": "solved", "1.5": "pending"} {
		if got[k] != v {
			t.Errorf("values.status[%q] = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
}

// TestCustomEventExampleWithDottedKeys: a key with a dot and the nested
// keys it reads like keep their own values, as the file wrote them (the
// literal of one replaced the other's).
func TestCustomEventExampleWithDottedKeys(t *testing.T) {
	cfg, err := Parse([]byte(minimal+`custom_events:
  - name: order.shipped
    example: {"a.b": 12.50, a: {b: 7}, "c[0]": 0.10}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	set, err := cfg.Schemas()
	if err != nil {
		t.Fatal(err)
	}
	got := string(cfg.TestSamples(set)["order.shipped"].Data)
	if want := `{"a":{"b":7},"a.b":12.50,"c[0]":0.10}`; got != want {
		t.Errorf("example = %s, want %s", got, want)
	}
}

// TestNotifyURLCredentials: user:password@ in notify.url is refused with
// notify's own advice (it was told to use "the subscription's headers",
// which notify does not have): a token in the URL's path or query, which
// notify.url accepts.
func TestNotifyURLCredentials(t *testing.T) {
	_, err := Parse([]byte(minimal+"notify:\n  url: https://ops:PLANTED-SECRET@hooks.example.com/n\n"), nil)
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	if !strings.Contains(msg, "notify.url: must not contain credentials (user:password@): notify has no headers") || !strings.Contains(msg, "path or query") || strings.Contains(msg, "subscription") {
		t.Errorf("notify.url problem: %v", msg)
	}
	if strings.Contains(msg, "PLANTED") {
		t.Errorf("notify.url problem quotes the URL: %v", msg)
	}
	for _, u := range []string{"https://hooks.example.com/n?token=0123456789abcdef", "https://hooks.example.com/n/0123456789abcdef"} {
		if _, err := Parse([]byte(minimal+"notify:\n  url: "+u+"\n"), nil); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
	// A subscription's advice is unchanged.
	_, err = Parse([]byte(strings.Replace(minimal, "https://crm.example.com", "https://u:p@crm.example.com", 1)), nil)
	if err == nil || !strings.Contains(err.Error(), "subscriptions[0].url: must not contain credentials (user:password@): put them in the subscription's headers") {
		t.Errorf("subscription url with credentials: %v", err)
	}
}

// TestDeliveryTimeoutBounds: delivery.timeout is at most 50s, as an
// operator's attempt (a manual retry, a test send) is answered within the
// admin API's 55 s (with 2m every one answered 503 while the attempt went
// on), and at least 100ms (1ns was accepted).
func TestDeliveryTimeoutBounds(t *testing.T) {
	for _, tc := range []struct {
		timeout, want string
	}{
		{"1ns", "delivery.timeout: is 1ns: must be at least 100ms"},
		{"99ms", "delivery.timeout: is 99ms: must be at least 100ms"},
		{"0s", "delivery.timeout: is 0s: must be at least 100ms"},
		{"-5s", "delivery.timeout: is -5s: must be at least 100ms"},
		{"100ms", ""},
		{"5s", ""},
		{"50s", ""},
		{"50001ms", "delivery.timeout: is 50.001s: must be at most 50s: a manual retry"},
		{"2m", "delivery.timeout: is 2m0s: must be at most 50s"},
	} {
		_, err := Parse([]byte(minimal+"delivery:\n  timeout: "+tc.timeout+"\n"), nil)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("timeout %s: %v", tc.timeout, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("timeout %s: %v, want %q", tc.timeout, err, tc.want)
		}
	}
}

// TestRetentionFloor: journal.retention is at least an hour, the prune's
// interval (1ns was accepted: every delivery pruned within the hour).
func TestRetentionFloor(t *testing.T) {
	for _, tc := range []struct {
		retention, want string
	}{
		{"1ns", "journal.retention: is 1ns: must be at least 1h"},
		{"59m59s", "journal.retention: is 59m59s: must be at least 1h"},
		{"0s", "journal.retention: is 0s: must be at least 1h"},
		{"-1h", "journal.retention: is -1h0m0s: must be at least 1h"},
		{"1h", ""},
		{"720h", ""},
	} {
		_, err := Parse([]byte(minimal+"journal:\n  retention: "+tc.retention+"\n"), nil)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("retention %s: %v", tc.retention, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("retention %s: %v, want %q", tc.retention, err, tc.want)
		}
	}
}

// TestCommentValuesInternal: mapping.comments.values.internal takes the
// forms users.values.active takes (booleans as YAML writes them,
// unquoted, for keys and values: an inverted is_public is {true: false,
// false: true}), and bad input is refused naming its path.
func TestCommentValuesInternal(t *testing.T) {
	for yaml, want := range map[string]map[string]string{
		`{internal: true, public: false}`:     {"internal": "true", "public": "false"},
		`{true: false, false: true}`:          {"true": "false", "false": "true"},
		`{"t": "false", "f": "true"}`:         {"t": "false", "f": "true"},
		`{internal: "true", public: "false"}`: {"internal": "true", "public": "false"},
	} {
		cfg, err := Parse([]byte(minimal+"mapping:\n  comments:\n    values:\n      internal: "+yaml+"\n"), nil)
		if err != nil {
			t.Errorf("%s: %v", yaml, err)
			continue
		}
		if got := cfg.Mapping.Comments.Values.Internal; !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %v, want %v", yaml, got, want)
		}
	}
	for yaml, want := range map[string]string{
		"internal: {internal: yes-please}": `mapping.comments.values.internal.internal: "yes-please" is not a boolean: translate to "true" or "false"`,
		"internal: {internal: ~}":          `mapping.comments.values.internal.internal: translates to nothing`,
		"internal: true":                   `mapping.comments.values.internal: must be a mapping`,
		"internal: {public: [false]}":      `mapping.comments.values.internal.public: must be a single value`,
		"internl: {public: false}":         `mapping.comments.values.internl: unknown key (did you mean "internal"?)`,
	} {
		_, err := Parse([]byte(minimal+"mapping:\n  comments:\n    values:\n      "+yaml+"\n"), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", yaml, err, want)
		}
	}
}
