package config

import (
	"reflect"
	"strings"
	"testing"
)

// TestProblemNamesItsVariable: a problem with a value set by a DZHOOK_…
// variable names it (delivery.timeout: "abc" is not a duration, while
// the file said 5s), a list's items too; a problem with the file's value
// does not.
func TestProblemNamesItsVariable(t *testing.T) {
	_, err := Parse([]byte(minimal+"delivery:\n  timeout: 5s\n  concurrency: 0\n"), []string{
		"DZHOOK_DELIVERY_TIMEOUT=abc",
		"DZHOOK_DELIVERY_RETRY_SCHEDULE=0s,soon",
		"DZHOOK_LOG_LEVEL=loud",
	})
	for _, want := range []string{
		`delivery.timeout: "abc" is not a duration (use a number with a unit: 500ms, 5s, 1m, 2h) (from DZHOOK_DELIVERY_TIMEOUT)`,
		`delivery.retry_schedule[1]: "soon" is not a duration (use a number with a unit: 500ms, 5s, 1m, 2h) (from DZHOOK_DELIVERY_RETRY_SCHEDULE)`,
		`log.level: "loud" is not one of debug, info, warn, error (from DZHOOK_LOG_LEVEL)`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("report lacks %q:\n%v", want, err)
		}
	}
	for _, p := range AsProblems(err) {
		if p.Path == "delivery.concurrency" && strings.Contains(p.Message, "(from") {
			t.Errorf("a problem with the file's value names a variable: %v", p)
		}
	}
}

// TestSecretVariableNotQuoted: every setting that holds a secret, set
// through its DZHOOK_… variable to a value it refuses, is reported with
// the variable's name and never its value.
func TestSecretVariableNotQuoted(t *testing.T) {
	const bad = "PLANTED x:y" // refused by each: not a DSN, URL, key; too short
	keys := envKeys()
	var env []string
	for name, key := range keys {
		if secretSetting(key) {
			env = append(env, name+"="+bad)
		}
	}
	if len(env) < 8 {
		t.Fatalf("found %d secret settings, want at least 8 (source.dsn … secrets.keys)", len(env))
	}
	_, err := Parse([]byte(minimal), env)
	if err == nil {
		t.Fatal("Parse succeeded, want problems")
	}
	if strings.Contains(err.Error(), "PLANTED") {
		t.Errorf("the report quotes a secret's value:\n%v", err)
	}
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.Contains(err.Error(), "(from "+name+")") {
			t.Errorf("report does not name %s:\n%v", name, err)
		}
	}
}

// secretSetting reports whether the setting at key (dotted) is a Secret
// or a list of them.
func secretSetting(key string) bool {
	secret := reflect.TypeFor[Secret]()
	t := reflect.TypeFor[Config]()
	for part := range strings.SplitSeq(key, ".") {
		found := false
		for i := range t.NumField() {
			if t.Field(i).Tag.Get("koanf") == part {
				t, found = t.Field(i).Type, true
				break
			}
		}
		if !found {
			return false
		}
	}
	return t == secret || (t.Kind() == reflect.Slice && t.Elem() == secret)
}
