package transform

import (
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"
)

const warning = `{"id":"whk_1","event":"sla.warning","timestamp":"2024-01-15T14:30:00Z","data":{"requestId":"req_123","slaType":"resolution","targetTime":"2024-01-15T18:00:00Z","percentElapsed":75,"timeRemaining":"2h 30m","ratio":0.75,"big":12345678901234567890,"tags":["a","b"],"who":{"id":"usr_1"},"none":null}}`

func TestCELTransform(t *testing.T) {
	for _, tc := range []struct {
		expr, want string
	}{
		{`{"text": "⚠️ SLA at risk: " + data.requestId + " (" + data.slaType + ", " + data.timeRemaining + " left)"}`,
			`{"text":"⚠️ SLA at risk: req_123 (resolution, 2h 30m left)"}`},
		// Numbers: integers stay integers, others doubles; arithmetic works.
		{`{"pct": data.percentElapsed, "next": data.percentElapsed + 5, "ratio": data.ratio, "late": data.percentElapsed > 50}`,
			`{"late":true,"next":80,"pct":75,"ratio":0.75}`},
		// Nested values pass through; keys come out sorted; no HTML escaping.
		{`{"who": data.who, "tags": data.tags, "none": data.none, "html": "<b>&</b>", "id": id, "event": event, "at": timestamp}`,
			`{"at":"2024-01-15T14:30:00Z","event":"sla.warning","html":"<b>&</b>","id":"whk_1","none":null,"tags":["a","b"],"who":{"id":"usr_1"}}`},
		{`[event, data.requestId]`, `["sla.warning","req_123"]`},
		{`{"t": data.?missing.orValue("none"), "has": has(data.requestId)}`, `{"has":true,"t":"none"}`},
		{`event == "sla.warning" ? {"text": "x"} : skip`, `{"text":"x"}`},
		{`{"when": timestamp(timestamp) + duration("1h")}`, `{"when":"2024-01-15T15:30:00Z"}`},
	} {
		tr, err := New(tc.expr, "")
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		got, err := tr.Apply([]byte(warning))
		if err != nil || string(got) != tc.want {
			t.Errorf("%s:\n got %s, %v\nwant %s", tc.expr, got, err, tc.want)
		}
	}
}

func TestCELTransformSkips(t *testing.T) {
	for _, expr := range []string{`null`, `event == "request.created" ? {"a": 1} : skip`} {
		tr, err := New(expr, "")
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		if _, err := tr.Apply([]byte(warning)); !errors.Is(err, ErrSkip) {
			t.Errorf("%s: %v, want ErrSkip", expr, err)
		}
	}
}

func TestCELTransformRefused(t *testing.T) {
	for expr, want := range map[string]string{
		`  `:                       "empty transform",
		`{"a": 1`:                  "<input>:1:",
		`"text"`:                   "gives string",
		`42`:                       "gives int",
		`data.x == 1`:              "gives bool",
		`{"a": nosuch}`:            "undeclared reference to 'nosuch'",
		`event == "x" ? {} : null`: "write skip instead of null",
		"{\"a\": 1,\n \"b\": }":    "<input>:2:",
	} {
		_, err := New(expr, "")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(%q) = %v, want an error with %q", expr, err, want)
		}
	}
	if _, err := New("", "irc"); err == nil || !strings.Contains(err.Error(), `unknown format "irc"`) {
		t.Errorf("unknown format: %v", err)
	}
	for _, f := range []string{"", FormatDZDESK} {
		if tr, err := New("", f); tr != nil || err != nil {
			t.Errorf("format %q: %v, %v; want no transform", f, tr, err)
		}
	}
}

// TestCELTransformFailsOnTheEvent: what fails at run time is an error
// (class transform for the delivery), never a panic: a missing field, a
// wrong type, a result that is not JSON, an envelope that is not JSON,
// and an expression over its cost budget.
func TestCELTransformFailsOnTheEvent(t *testing.T) {
	items := strings.Repeat(`"x",`, 2999) + `"x"`
	for expr, env := range map[string]string{
		`{"a": data.missing}`:       warning,
		`{"a": data.requestId + 1}`: warning,
		`{"a": b"bytes"}`:           warning,
		`{"a": 1.0 / 0.0}`:          warning,
		`dyn(data.requestId)`:       warning,
		`{"a": 1}`:                  `not json`,
		`{"a": data.items.map(x, data.items.map(y, x + y))}`: `{"id":"i","event":"e","timestamp":"t","data":{"items":[` + items + `]}}`,
	} {
		tr, err := New(expr, "")
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		if body, err := tr.Apply([]byte(env)); err == nil || errors.Is(err, ErrSkip) {
			t.Errorf("%s: %s, %v; want an error", expr, body, err)
		}
	}
	// Over the cost budget well within the second's: each step looks for
	// a 2,000-byte string in another (CEL counts 200 × 200 units), and the
	// 25th goes over it, in milliseconds. The pairs of items above take
	// 0.9 s to it under the race detector, and on a loaded machine ran
	// past the second first: a failure all the same, but not the one this
	// checks.
	tr, _ := New(`{"a": data.items.map(x, data.s.contains(data.s + x))}`, "")
	env := `{"id":"i","event":"e","timestamp":"t","data":{"s":"` + strings.Repeat("y", 2_000) + `","items":[` + items + `]}}`
	if _, err := tr.Apply([]byte(env)); err == nil || !strings.Contains(err.Error(), "cost budget") {
		t.Errorf("over budget: %v", err)
	}
}

func FuzzCELTransform(f *testing.F) {
	f.Add(`{"t": data.a}`, `{"id":"x","event":"e","timestamp":"t","data":{"a":"b"}}`)
	f.Add(`[data]`, `{"data":{"a":[1,2,{"b":null}]}}`)
	f.Add(`data.a > 1 ? {"x": data} : skip`, `{"data":{"a":2.5}}`)
	f.Fuzz(func(t *testing.T, expr, env string) {
		tr, err := New(expr, "")
		if err != nil || tr == nil {
			return
		}
		body, err := tr.Apply([]byte(env))
		if err == nil && (len(body) == 0 || (body[0] != '{' && body[0] != '[')) {
			t.Fatalf("%s on %s gave %q", expr, env, body)
		}
	})
}

// TestCELTransformKeepsNumbers: numbers are written back as they came,
// an integer beyond int64 included (a double rounded
// 18446744073709551615 to 18446744073709552000).
func TestCELTransformKeepsNumbers(t *testing.T) {
	tr, err := New(`{"data": data}`, "")
	if err != nil {
		t.Fatal(err)
	}
	out, err := tr.Apply([]byte(`{"id":"whk_1","event":"order.shipped","timestamp":"2024-01-15T14:30:00Z","data":{"orderId":18446744073709551615,"id":-9223372036854775808,"amount":19.9}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"orderId":18446744073709551615`, `"id":-9223372036854775808`, `"amount":19.9`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("%s not written back as it came: %s", want, out)
		}
	}
}

// A result is held to 1 MiB while it is copied, not after: a result of
// many references to a large event cost CEL little and took gigabytes to
// copy (2,000 items: 1.9 GB, 6 s, in every worker at once), and its size
// counts JSON's escapes (a control character is six bytes).
func TestCELTransformResultBoundedWhileCopied(t *testing.T) {
	items := strings.Repeat(`{"sku":"abcdefghij","qty":1,"note":"a line of text"},`, 1999) + `{"sku":"k","qty":2,"note":"n"}`
	env := []byte(`{"id":"i","event":"e","timestamp":"t","data":{"items":[` + items + `]}}`)
	refusedAsTooLarge(t, `{"lines": data.items.map(i, {"item": i, "order": data})}`, env)

	escaped := strings.Repeat(`\u0001`, 150_000) // 900 KB as JSON, 150 KB as text
	tr, err := New(`{"a": data.s, "b": data.s}`, "")
	if err != nil {
		t.Fatal(err)
	}
	if body, err := tr.Apply([]byte(`{"id":"i","event":"e","timestamp":"t","data":{"s":"` + escaped + `"}}`)); err == nil {
		t.Errorf("a result of %d bytes made", len(body))
	}
	if body, err := tr.Apply([]byte(`{"id":"i","event":"e","timestamp":"t","data":{"s":"` + escaped[:len(escaped)/2] + `"}}`)); err != nil || len(body) < 900_000 {
		t.Errorf("a result of %d bytes: %v; want it made (under 1 MiB)", len(body), err)
	}
}

// A list CEL makes lazily (data.l + data.l + …: tens of millions of
// elements for almost no cost) is refused by its length, before a slice
// for it is made (a gigabyte, then 276 MB walking the concatenations).
// And a newline is two bytes of JSON, not six: a 560 KB body of a
// multi-line log was refused as over 1 MiB.
func TestCELTransformLazyListsAndNewlines(t *testing.T) {
	l := "[" + strings.Repeat("0,", 200_000) + "0]"
	env := []byte(`{"id":"i","event":"e","timestamp":"t","data":{"l":` + l + `}}`)
	refusedAsTooLarge(t, `{"x": `+strings.TrimSuffix(strings.Repeat("data.l + ", 250), " + ")+`}`, env)

	log := strings.Repeat("ok\n\t", 112_000) // 448 KB; 672 KB as JSON
	data, _ := json.Marshal(map[string]any{"log": log})
	tr, err := New(`{"text": data.log}`, "")
	if err != nil {
		t.Fatal(err)
	}
	if body, err := tr.Apply([]byte(`{"id":"i","event":"e","timestamp":"t","data":` + string(data) + `}`)); err != nil || len(body) < 600_000 {
		t.Errorf("a multi-line log: %d bytes, %v; want it sent", len(body), err)
	}
}

// A transform whose cost CEL undercounts stops after a second, an
// explained failure (it held a worker for minutes).
//
// It stops within a few of its steps (one comparison of the two lists)
// after the second, whatever the machine's speed: the bound is in steps
// timed here, as the machine runs now. The deadline is looked at every
// interruptEvery steps; at 64 the transform ran 1.7 s past its second,
// and 11.8 s past it on a loaded machine.
func TestCELTransformStopsAtItsDeadline(t *testing.T) {
	zeros := strings.TrimSuffix(strings.Repeat("0,", 200), ",")
	long := strings.TrimSuffix(strings.Repeat("0,", 120_000), ",")
	e, err := Parse([]byte(`{"id":"i","event":"e","timestamp":"t","data":{"l":[` + zeros + `],"a":[[` + long + `]],"b":[[` + long[:len(long)-1] + `1]]}}`))
	if err != nil {
		t.Fatal(err)
	}
	step := evalTime(t, `{"x": data.a != data.b}`, e)
	tr, err := New(`{"x": data.l.all(i, data.l.all(j, data.a != data.b))}`, "")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = tr.cel.eval(e)
	if took, bound := time.Since(start), evalBudget+10*step; err == nil || !strings.Contains(err.Error(), "ran past") || took > bound {
		t.Errorf("eval = %v after %s; want it stopped within 10 steps (%s each) of a second: %s", err, took, step, bound)
	}
}

// evalTime is how long expr takes on e, the mean of three runs (each
// with what eval does before it evaluates).
func evalTime(t *testing.T, expr string, e *Envelope) time.Duration {
	t.Helper()
	p, err := compile(expr)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 3 {
		if _, err := p.eval(e); err != nil {
			t.Fatal(err)
		}
	}
	return time.Since(start) / 3
}

// refusedAsTooLarge applies expr to env and wants its result refused as
// over 1 MiB, with at most 64 MB allocated on the way.
func refusedAsTooLarge(t *testing.T, expr string, env []byte) {
	t.Helper()
	tr, err := New(expr, "")
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = tr.Apply(env)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "larger than 1048576 bytes") {
		t.Errorf("Apply = %v, want the result refused as larger than 1 MiB", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
		t.Errorf("Apply allocated %d MB on the way to refusing it", alloc>>20)
	}
}

// TestCELTransformNumbers: what README says of a transform's numbers. A
// whole number is an int, any other a double, as the JSON wrote it:
// string() of an id-like number gives its digits (made doubles, as a
// filter has them, "Request #" + string(data.number) became
// "Request #1.234567e+06", and data.n + 5 failed), and double() makes
// arithmetic over a field that may be either work on both
// (sla.warning's percentElapsed is 75 on time, 80.3 late).
func TestCELTransformNumbers(t *testing.T) {
	for _, c := range []struct{ data, expr, want string }{
		{`{"number":1234567}`, `{"text": "Request #" + string(data.number)}`, `{"text":"Request #1234567"}`},
		{`{"n":75}`, `{"next": data.n + 5}`, `{"next":80}`},
		{`{"percentElapsed":75}`, `{"left": 100.0 - double(data.percentElapsed)}`, `{"left":25}`},
		{`{"percentElapsed":80.5}`, `{"left": 100.0 - double(data.percentElapsed)}`, `{"left":19.5}`},
	} {
		tr, err := New(c.expr, "")
		if err != nil {
			t.Fatalf("%s: %v", c.expr, err)
		}
		body, err := tr.Apply([]byte(`{"id":"whk_1","event":"sla.warning","timestamp":"2024-01-15T14:30:00Z","data":` + c.data + `}`))
		if err != nil || string(body) != c.want {
			t.Errorf("%s on %s = %s, %v; want %s", c.expr, c.data, body, err, c.want)
		}
	}
}
