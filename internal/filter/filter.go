// Package filter compiles and evaluates a subscription's CEL filter
// (https://cel.dev) over an event's envelope. The expression sees the
// envelope's fields as variables: id, event and timestamp (strings) and
// data (the event's data object), e.g.
//
//	data.priority in ["high", "urgent"]
//	event.startsWith("sla.") || data.status == "open"
//	data.title.lowerAscii().contains("outage")
//
// It must be boolean. It is compiled and type-checked when the
// configuration loads, so a mistake is a configuration error naming the
// subscription rather than a surprise at delivery time.
package filter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/overloads"
	"cel.dev/cel-go/ext"
)

// Program is a compiled filter, safe for concurrent use.
type Program struct {
	expr string
	prg  cel.Program
}

// costLimit bounds one evaluation, so a pathological expression cannot
// stall the delivery path. It leaves room for a few string functions over
// a whole event (the outbox takes up to 1 MiB of data): a keyword regex,
// matches("(?i)\\b(outage|down|urgent|critical|sev1|p1)\\b"), costs about
// 1,200,000 over a 1 MiB comment, and at 100,000 a body of 80 KB was
// stopped and so did not match. Comprehensions also stop at
// MatchContext's deadline; a single call (one regex) runs to its end.
const costLimit = 10_000_000

// interruptEvery is how many comprehension steps go between two looks at
// MatchContext's deadline. The cost limit counts a comparison of nested
// values by their top level: data.l.all(i, data.l.all(j, data.a !=
// data.b)) over two lists of 120,000 numbers cost little and ran 41 s,
// holding the stream. Every step: such a step can take milliseconds (a
// regex over a long string, a comparison of long lists), and at 64 the
// filter ran on 64 of them past its deadline (3.3 s past a 100 ms one
// under load, TestFilterStopsAtItsDeadline), while a look costs a
// non-blocking receive, nothing beside a step (no difference measured on
// a comprehension over 20,000 values).
const interruptEvery = 1

// StringsVersion pins cel-go's strings extension (replace, substring,
// trim, lowerAscii, split, join, indexOf, format, …) in filters and
// transforms: version 5 is the first whose functions carry cost models,
// so the cost limit counts a replace over a long text by its length
// rather than as one call (TestFilterStringFunctionsWithinCostLimit); a
// later cel-go adds functions only under a version set here.
const StringsVersion = 5

// Strings is the strings extension as filters and transforms have it:
// at StringsVersion, and with format charged by what it makes. cel-go's
// own model charges format by its format string alone, so
// "%s".format([data.s]) over a 1 MiB text cost one unit, and a transform
// mapping it a thousand times allocated a gigabyte within its budget
// (found by a review).
func Strings() []cel.EnvOption {
	return []cel.EnvOption{
		ext.Strings(ext.StringsVersion(StringsVersion)),
		cel.CostModel(cost.MemberOverload(overloads.ExtFormatString,
			cost.EvalCost(cost.Sum(cost.Const(cost.CallCost), cost.StringScan(cost.Length(cost.Target())), cost.Length(cost.Result()))),
		)),
	}
}

func env() (*cel.Env, error) {
	return cel.NewEnv(append(Strings(),
		cel.Variable("id", cel.StringType),
		cel.Variable("event", cel.StringType),
		cel.Variable("timestamp", cel.StringType),
		cel.Variable("data", cel.MapType(cel.StringType, cel.DynType)),
		// data.?field.orValue(default): a field that may be missing, as
		// in a transform (README recommends it for both).
		cel.OptionalTypes(),
	)...)
}

// Compile parses and type-checks expr. The error says where the mistake is.
func Compile(expr string) (*Program, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, errors.New("empty filter")
	}
	e, err := env()
	if err != nil {
		return nil, err
	}
	ast, iss := e.Compile(expr)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("%s", strings.ReplaceAll(iss.Err().Error(), "\n", " "))
	}
	if !ast.OutputType().IsExactType(cel.BoolType) && !ast.OutputType().IsExactType(cel.DynType) {
		return nil, fmt.Errorf("the filter must be true or false, but it gives %s", ast.OutputType())
	}
	prg, err := e.Program(ast, cel.CostLimit(costLimit), cel.EvalOptions(cel.OptOptimize), cel.InterruptCheckFrequency(interruptEvery))
	if err != nil {
		return nil, err
	}
	return &Program{expr: expr, prg: prg}, nil
}

// String returns the expression.
func (p *Program) String() string { return p.expr }

// Envelope is an event parsed for filters: parse it once per event, then
// evaluate every subscription's filter on it.
type Envelope struct {
	vars map[string]any
}

// Parse reads an envelope's JSON.
func Parse(body []byte) (*Envelope, error) {
	var env struct {
		ID        string         `json:"id"`
		Event     string         `json:"event"`
		Timestamp string         `json:"timestamp"`
		Data      map[string]any `json:"data"`
	}
	// Only a body with a run of 16 digits or more can hold an integer a
	// double does not (2^53 has 16): read through json.Number then, the
	// common body at Unmarshal's cost (the Decoder's costs a sixth more).
	//
	// A number past a double's range (1e400, which a message may hold)
	// fails Unmarshal: read through json.Number too (it becomes ±Inf),
	// rather than the event reaching no filtered subscription at all,
	// or reaching them or not as a digit run elsewhere in the body chose.
	err := errNotTried
	if !longDigitRun(body) {
		err = json.Unmarshal(body, &env)
	}
	if err != nil {
		env.Data = nil
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&env); err != nil {
			return nil, fmt.Errorf("parse envelope for filters: %w", err)
		}
		numbers(env.Data)
	}
	if env.Data == nil {
		env.Data = map[string]any{}
	}
	return &Envelope{vars: map[string]any{"id": env.ID, "event": env.Event, "timestamp": env.Timestamp, "data": env.Data}}, nil
}

// errNotTried: Parse went to json.Number at once.
var errNotTried = errors.New("not tried")

// longDigitRun reports whether b holds 16 or more digits in a row.
func longDigitRun(b []byte) bool {
	n := 0
	for _, c := range b {
		if c >= '0' && c <= '9' {
			if n++; n >= 16 {
				return true
			}
		} else {
			n = 0
		}
	}
	return false
}

// exact is 2^53: a double holds every integer below it in magnitude, and
// 2^53 itself, but 2^53 + 1 compared with a double becomes 2^53.
const exact = 1 << 53

// numbers replaces the json.Numbers in v (decoded with UseNumber) by what
// the filter compares. A number is a double, as filters have always seen
// it (arithmetic with a double literal, data.n + 0.5, stays valid), except
// an integer beyond 2^53, which a double would round: an id such as
// 1234567890123456789 is an int (or a uint beyond int64), so that
// data.customerId == 1234567890123456700 does not match it. CEL compares
// ints, uints and doubles with one another.
func numbers(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = numbers(x)
		}
	case []any:
		for i, x := range v {
			v[i] = numbers(x)
		}
	case json.Number:
		if n, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			if n >= exact || n <= -exact {
				return n
			}
			return float64(n)
		}
		if n, err := strconv.ParseUint(string(v), 10, 64); err == nil {
			return n
		}
		f, _ := v.Float64()
		return f
	}
	return v
}

// Match evaluates the filter. An expression that fails on this event (a
// missing field, a type mismatch) does not match; the error says why.
func (p *Program) Match(e *Envelope) (bool, error) {
	return p.MatchContext(context.Background(), e)
}

// MatchContext is Match, stopped with an error once ctx ends (looked at
// every interruptEvery comprehension steps). A filter whose ctx has ended
// already is not evaluated: CEL looks at ctx only in a comprehension, and
// an event's filters share one deadline, so each filter after it (a regex
// over a 1 MiB comment takes some 0.3 s) would still have run to its end.
func (p *Program) MatchContext(ctx context.Context, e *Envelope) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("filter not evaluated: %w", context.Cause(ctx))
	}
	out, _, err := p.prg.ContextEval(ctx, e.vars)
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("filter gave %v, not true or false", out.Value())
	}
	return b, nil
}
