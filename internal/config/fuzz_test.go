package config

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/knadh/koanf/parsers/yaml"
)

// planted is a secret the fuzzed files carry in secret fields: no problem
// report may repeat it.
const planted = "PLANTED-SECRET-123456789"

// FuzzParse feeds Parse arbitrary YAML and an arbitrary environment value
// (as delivery.timeout's override and as $X). Parse must return a config
// or an error, never both, never neither, never panic; and when the file
// holds the planted secret only as the value of secret-typed fields, no
// error and no printed form of the config may contain it.
func FuzzParse(f *testing.F) {
	good := strings.Replace(minimal, "0123456789abcdef", planted, 1)
	for _, seed := range []struct{ yaml, env string }{
		{minimal, "10s"},
		{good, "10s"},
		{good, "banana"},
		{good, ""},
		{good, "${X}"},
		// The planted secret beside mistakes in its own subscription.
		{strings.Replace(good, "https://crm", "ftp://crm", 1), "5s"},
		{strings.Replace(good, "id: crm", "id: CRM!", 1), "5s"},
		{strings.Replace(good, "events: [request.*]", "events: [request.creatd, \"[\"]", 1), "5s"},
		{strings.Replace(good, "events: [request.*]", "events: [request.*]\n    standard_webhooks: true\n    filter: data.priority ==", 1), "5s"},
		{good + "    headers: {X-Api-Key: " + planted + ", Content-Type: x, \"bad name\": v}\n", "1m"},
		{good + "    evnts: [sla.*]\n    secrett: x\n", "1m"},
		{good + "  - id: crm\n    url: https://x.example\n    events: [\"*\"]\n    secret: short\n", "1m"},
		// Planted in every other secret-typed field, with bad neighbours.
		{"source:\n  dsn: postgres://u:" + planted + "@db/x\n  slot: bad-slot!\njournal:\n  dsn: " + planted + "\n  retention: -1h\n", "0"},
		{"admin:\n  listen: 0.0.0.0:8080\n  token: " + planted + "\n  metrics_public: maybe\n", "-5s"},
		{"notify:\n  url: ftp://hooks.example/" + planted + "\n  secret: " + planted + "\ndelivery:\n  allow_networks: [nope]\n", "5s"},
		{"notify:\n  url: [" + planted + "]\n  secret: {a: " + planted + "}\n", "5s"},
		// Proxies carry passwords; PEM files named in the file are read.
		{"delivery:\n  proxy: socks5://dzhook:" + planted + "@proxy:1080\n  ca_file: /dev/zero\n  ca_replace_system: maybe\n", "5s"},
		{"delivery:\n  proxy: http://dzhook:" + planted + "@proxy\n  ca_file: testdata/five-mistakes.yaml\n", "5s"},
		{good + "    proxy: http://" + planted + ":" + planted + "@proxy:3128/x?y\n    tls: {cert_file: testdata/five-mistakes.yaml}\n", "5s"},
		// Shapes that are wrong as a whole.
		{"source: [1, 2]\nsubscriptions: {secret: " + planted + "}\n", "x"},
		{"subscriptions:\n  - secret: " + planted + "\n  - 7\n  - [a]\n", "x"},
		{"secret: " + planted + "\n", "x"},
		{"source:\n  dsn: [unclosed\nsecret: " + planted + "\n", "x"},
		{"a: &x " + planted + "\nsubscriptions:\n  - id: *x\n", "x"},
		{"subscriptions:\n  - <<: {secret: " + planted + "}\n    id: a\n", "x"},
		{"delivery:\n  timeout: ${X}\n  retry_schedule: [0s, -1m, ${NOPE}]\n", "${NOPE:-1s}"},
		{"subscriptions:\n  - secret: ${file:testdata/five-mistakes.yaml}\n    id: a\n", "x"},
		{"\xff\xfe: \x00\n", "\xff"},
		{"", ""},
	} {
		f.Add([]byte(seed.yaml), seed.env)
	}
	f.Fuzz(func(t *testing.T, yamlBytes []byte, envValue string) {
		if !safeFileRefs(yamlBytes, envValue) {
			return // ${file:…} could read a device or block
		}
		cfg, err := Parse(yamlBytes, []string{"DZHOOK_DELIVERY_TIMEOUT=" + envValue, "X=" + envValue})
		if (cfg == nil) == (err == nil) {
			t.Fatalf("Parse = %v, %v: want exactly one of a config and an error", cfg, err)
		}
		if err != nil && err.Error() == "" {
			t.Fatal("an empty error")
		}
		if !plantedOnlyInSecrets(yamlBytes, envValue) {
			return
		}
		if err != nil {
			// In any case: url.Parse lowercases a scheme.
			if strings.Contains(strings.ToUpper(err.Error()), "PLANTED-SECRET") {
				t.Fatalf("the problem report repeats a secret:\n%v", err)
			}
			return
		}
		b, jerr := json.Marshal(cfg)
		if jerr != nil {
			t.Fatalf("json.Marshal(config): %v", jerr)
		}
		printed := fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, b) + cfg.Summary()
		if strings.Contains(strings.ToUpper(printed), "PLANTED-SECRET") {
			t.Fatalf("a printed config shows a secret:\n%s", printed)
		}
	})
}

// safeFileRefs reports whether every ${file:…} that Parse could resolve
// (in a YAML string or the environment value) names a file under
// testdata: a fuzzed reference to /dev/zero or a FIFO would take the
// fuzzer down with it. Undecodable YAML is safe: Parse stops first.
func safeFileRefs(yamlBytes []byte, envValue string) bool {
	safe := func(s string) bool {
		for rest := s; ; {
			i := strings.Index(rest, "${file:")
			if i < 0 {
				return true
			}
			rest = rest[i+len("${file:"):]
			path, _, _ := strings.Cut(rest, "}")
			if !strings.HasPrefix(path, "testdata/") || strings.Contains(path, "..") {
				return false
			}
		}
	}
	if !safe(envValue) {
		return false
	}
	tree, err := yaml.Parser().Unmarshal(yamlBytes)
	if err != nil {
		return true
	}
	ok := true
	walkYAML(nil, tree, func(_ []string, s string) {
		ok = ok && safe(s)
	})
	return ok
}

// plantedOnlyInSecrets reports whether the planted secret appears in the
// input, and only as (part of) the value of a secret-typed field, with no
// ${…} reference beside it: then no message has a reason to show it. An
// input that puts it anywhere else (an id, a key, the environment value,
// a file that does not parse as YAML) makes no promise.
func plantedOnlyInSecrets(yamlBytes []byte, envValue string) bool {
	if strings.Contains(envValue, "PLANTED-SECRET") || !strings.Contains(string(yamlBytes), planted) {
		return false
	}
	tree, err := yaml.Parser().Unmarshal(yamlBytes)
	if err != nil {
		return false
	}
	found, ok := false, true
	walkYAML(nil, tree, func(path []string, s string) {
		if !strings.Contains(s, "PLANTED-SECRET") {
			return
		}
		found = true
		ok = ok && isSecretPath(path) && !strings.Contains(s, "$")
	})
	return found && ok
}

// secretPaths are the YAML paths of the Secret-typed fields ("[]" for
// any list item, "*" for any map key).
var secretPaths = [][]string{
	{"source", "dsn"},
	{"journal", "dsn"},
	{"admin", "token"},
	{"notify", "url"},
	{"notify", "secret"},
	{"subscriptions", "[]", "secret"},
	{"subscriptions", "[]", "headers", "*"},
	{"delivery", "proxy"},
	{"subscriptions", "[]", "proxy"},
}

// isSecretPath reports whether a YAML path (map keys, "[]" for a list
// item) is in a field of type Secret: the field itself, or a list or
// mapping misplaced in it.
func isSecretPath(path []string) bool {
	for _, sp := range secretPaths {
		if len(path) < len(sp) {
			continue
		}
		match := true
		for i, seg := range sp {
			match = match && (seg == path[i] || seg == "*")
		}
		if match {
			return true
		}
	}
	return false
}

// walkYAML calls fn with every string of a decoded YAML document: values
// with their path, and map keys with the path ["<key>"], which is never
// a secret's.
func walkYAML(path []string, v any, fn func(path []string, s string)) {
	child := func(k string) []string { return append(slices.Clone(path), k) }
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			fn([]string{"<key>"}, k)
			walkYAML(child(k), e, fn)
		}
	case map[any]any:
		for k, e := range x {
			ks := fmt.Sprint(k)
			fn([]string{"<key>"}, ks)
			walkYAML(child(ks), e, fn)
		}
	case []any:
		for _, e := range x {
			walkYAML(child("[]"), e, fn)
		}
	case string:
		fn(path, x)
	case nil:
	default:
		fn(path, fmt.Sprint(x))
	}
}
