package filter

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
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

// TestFilterIntegersBeyondDoubles: an integer id beyond 2^53 is compared
// exactly (a double rounded 1234567890123456789 to …6800, so a filter for
// customer …6700 matched another customer's event), and smaller numbers
// stay doubles, so arithmetic with a double literal still evaluates.
func TestFilterIntegersBeyondDoubles(t *testing.T) {
	env, err := Parse([]byte(`{"id":"whk_1","event":"order.shipped","timestamp":"2024-01-15T14:30:00Z",
		"data":{"customerId":1234567890123456789,"big":18446744073709551615,"neg":-9007199254740993,"count":3,"amount":19.9,"items":[{"sku":9007199254740993}],"edge":9007199254740992}}`))
	if err != nil {
		t.Fatal(err)
	}
	for expr, want := range map[string]bool{
		`data.customerId == 1234567890123456700`: false,
		`data.customerId == 1234567890123456789`: true,
		`data.big == 18446744073709551615u`:      true,
		`data.neg == -9007199254740993`:          true,
		`data.neg == -9007199254740992`:          false,
		`data.items[0].sku == 9007199254740993`:  true,
		`data.items[0].sku == 9007199254740992`:  false,
		`data.edge == 9007199254740993`:          false,
		`data.edge == 9007199254740992`:          true,
		`data.count + 0.5 == 3.5`:                true,
		`data.count == 3 && data.amount > 19.5`:  true,
	} {
		p, err := Compile(expr)
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		if got, err := p.Match(env); got != want || err != nil {
			t.Errorf("%s: %v (%v), want %v", expr, got, err, want)
		}
	}
}

// A filter whose cost CEL undercounts (a comparison of nested values
// counts by their top level) stops at its deadline: this one ran 41 s
// on a 480 KB event, holding the stream.
//
// It stops within a few of its steps (one comparison of the two lists)
// after the deadline, whatever the machine's speed: the bound is in steps
// timed here, as the machine runs now. The deadline is looked at every
// interruptEvery steps; at 64 the filter ran 3.3 s past a 100 ms
// deadline on a loaded machine (64 steps of 50 ms), and unloaded some 50
// steps past it, which this bound refuses.
func TestFilterStopsAtItsDeadline(t *testing.T) {
	zeros := strings.TrimSuffix(strings.Repeat("0,", 200), ",")
	long := strings.TrimSuffix(strings.Repeat("0,", 20_000), ",")
	body := `{"id":"whk_1","event":"order.shipped","timestamp":"t","data":{"l":[` + zeros + `],"a":[[` + long + `]],"b":[[` + long[:len(long)-1] + `1]]}}`
	env, err := Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	step := stepTime(t, `data.a != data.b`, env)
	p, err := Compile(`data.l.all(i, data.l.all(j, data.a != data.b))`)
	if err != nil {
		t.Fatal(err)
	}
	const deadline = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	ok, err := p.MatchContext(ctx, env)
	if took, bound := time.Since(start), deadline+10*step; err == nil || ok || took > bound {
		t.Errorf("MatchContext = %v, %v after %s; want an error within 10 steps (%s each) of the 100 ms deadline: %s", ok, err, took, step, bound)
	}
}

// stepTime is how long expr takes on env, the mean of five runs.
func stepTime(t *testing.T, expr string, env *Envelope) time.Duration {
	t.Helper()
	p, err := Compile(expr)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 5 {
		if _, err := p.Match(env); err != nil {
			t.Fatal(err)
		}
	}
	return time.Since(start) / 5
}

// A number past a double's range (a message may hold 1e400) is +Inf to
// filters, whatever else the body holds: Parse failed, and the event
// reached no filtered subscription, unless a run of 16 digits elsewhere
// in the body took the other path.
func TestFilterHugeNumbers(t *testing.T) {
	for _, body := range []string{
		`{"id":"whk_1","event":"order.shipped","timestamp":"t","data":{"amount":1e400}}`,
		`{"id":"whk_1","event":"order.shipped","timestamp":"t","data":{"amount":1e400,"ref":"1234567890123456"}}`,
	} {
		env, err := Parse([]byte(body))
		if err != nil {
			t.Fatalf("Parse(%s): %v", body, err)
		}
		for expr, want := range map[string]bool{`event == "order.shipped"`: true, `data.amount > 1.0`: true, `data.amount < 0.0`: false} {
			p, err := Compile(expr)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := p.Match(env); got != want || err != nil {
				t.Errorf("%s on %s: %v, %v; want %v", expr, body, got, err, want)
			}
		}
	}
}

// A keyword filter reads a whole comment, which the outbox takes up to
// 1 MiB of: at a cost limit of 100,000 a body of about 80 KB stopped it
// ("actual cost limit exceeded"), so the event did not match and no
// delivery was made.
func TestFilterRegexOverAMebibyteBody(t *testing.T) {
	text := strings.Repeat("the printer on the third floor jams again ", (1<<20)/42)
	body := `{"id":"whk_1","event":"request.commented","timestamp":"2024-01-15T14:30:00Z","data":{"requestId":"req_1","body":"` + text + `urgent"}}`
	env, err := Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, expr := range []string{
		`data.body.matches("(?i)\\b(outage|down|urgent|critical|sev1|p1)\\b")`,
		`data.body.matches("(?i)urgent")`,
	} {
		p, err := Compile(expr)
		if err != nil {
			t.Fatalf("Compile(%s): %v", expr, err)
		}
		if ok, err := p.Match(env); !ok || err != nil {
			t.Errorf("%s on a %d-byte body: %v, %v; want a match", expr, len(body), ok, err)
		}
	}
}

// A filter whose deadline has passed is not evaluated: an event's filters
// share one deadline, and CEL looks at it only in a comprehension, so
// each regex after it still ran to its end on the stream's path.
func TestFilterAfterItsDeadline(t *testing.T) {
	env, err := Parse([]byte(`{"id":"whk_1","event":"request.commented","timestamp":"t","data":{"body":"urgent"}}`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(`data.body.matches("(?i)urgent")`)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	if ok, err := p.MatchContext(ctx, env); ok || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("MatchContext past its deadline = %v, %v; want no match and context.DeadlineExceeded", ok, err)
	}
	if ok, err := p.MatchContext(context.Background(), env); !ok || err != nil {
		t.Errorf("MatchContext = %v, %v; want a match", ok, err)
	}
}

// data.?x.orValue(…), which README recommends for a field that may be
// missing, compiles in a filter as it does in a transform (it was an
// "undeclared reference" here), and reads a missing field as its default.
func TestFilterOptionalFields(t *testing.T) {
	env, err := Parse([]byte(`{"id":"whk_1","event":"request.created","timestamp":"t","data":{"priority":"high","requester":{"email":"a@x"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	for expr, want := range map[string]bool{
		`data.?priority.orValue("") == "high"`:                  true,
		`data.?team.orValue("support") == "support"`:            true,
		`data.?requester.?email.orValue("").endsWith("@x")`:     true,
		`data.?assignedTo.?email.orValue("nobody") == "nobody"`: true,
		`data.?priority.hasValue() && !data.?team.hasValue()`:   true,
		`data.?priority.orValue("") == "low"`:                   false,
	} {
		p, err := Compile(expr)
		if err != nil {
			t.Errorf("Compile(%s): %v", expr, err)
			continue
		}
		if got, err := p.Match(env); got != want || err != nil {
			t.Errorf("%s: %v, %v; want %v", expr, got, err, want)
		}
	}
}
