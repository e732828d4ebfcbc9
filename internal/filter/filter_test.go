package filter

import (
	"strings"
	"testing"
)

func TestFilters(t *testing.T) {
	body := []byte(`{"id":"whk_1","event":"request.created","timestamp":"2024-01-15T14:30:00Z","data":{"priority":"high","requester":{"id":"usr_1","email":"a@x"},"n":3}}`)
	env, err := Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		expr  string
		match bool
		err   string
	}{
		{`data.priority in ["high", "urgent"]`, true, ""},
		{`data.priority == "low"`, false, ""},
		{`event.startsWith("request.") && data.requester.email.endsWith("@x")`, true, ""},
		{`data.n > 2`, true, ""},
		{`has(data.missing) && data.missing == 1`, false, ""},
		{`data.missing == "x"`, false, "no such key"},
	} {
		p, err := Compile(tc.expr)
		if err != nil {
			t.Fatalf("Compile(%q): %v", tc.expr, err)
		}
		got, err := p.Match(env)
		if got != tc.match || (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: match %v, err %v; want %v, err containing %q", tc.expr, got, err, tc.match, tc.err)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{``, "empty filter"},
		{`data.priority ==`, "Syntax error"},
		{`"just a string"`, "must be true or false"},
		{`unknown_var == 1`, "undeclared reference"},
		{`event + 1`, "no matching overload"},
	} {
		if _, err := Compile(tc.expr); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Compile(%q) = %v, want an error containing %q", tc.expr, err, tc.want)
		}
	}
}

// FuzzCompile: any expression compiles or fails with an error, never a
// panic; what compiles evaluates without panicking.
func FuzzCompile(f *testing.F) {
	for _, s := range []string{`data.priority in ["high"]`, `event == "x" || size(data) > 2`, `data.a.b.c[0] == 1.0`, `timestamp.matches("^2024")`} {
		f.Add(s)
	}
	env, _ := Parse([]byte(`{"id":"whk_1","event":"request.created","timestamp":"2024-01-15T14:30:00Z","data":{"a":{"b":{"c":[1]}},"priority":"high"}}`))
	f.Fuzz(func(t *testing.T, expr string) {
		p, err := Compile(expr)
		if err != nil {
			return
		}
		_, _ = p.Match(env)
	})
}
