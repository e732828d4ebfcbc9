package transform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"
)

// CostLimit bounds one evaluation of a transform (CEL's cost units,
// roughly one per operation and per byte of a string built): a few
// thousand times what a message of a few fields costs, and small enough
// that an expression looping over a large list is stopped within
// milliseconds. Over it, the delivery fails with class "transform".
const CostLimit = 1_000_000

// maxBody bounds a transform's result, so that an expression cannot
// build a body larger than any receiver takes.
const maxBody = 1 << 20

// program is a compiled CEL transform.
type program struct {
	prg cel.Program
}

// compile parses and type-checks a transform: it must give a map, a list
// or null. The error says where the mistake is (line:column).
func compile(expr string) (*program, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, errors.New("empty transform")
	}
	env, err := cel.NewEnv(append(celStrings(),
		cel.Variable("id", cel.StringType),
		cel.Variable("event", cel.StringType),
		cel.Variable("timestamp", cel.StringType),
		cel.Variable("data", cel.MapType(cel.StringType, cel.DynType)),
		// skip is null typed dyn: CEL's checker refuses `c ? {…} : null`
		// (the branches' types differ), and accepts `c ? {…} : skip`.
		cel.Variable("skip", cel.DynType),
		// data.?field.orValue(default): a field that may be missing.
		cel.OptionalTypes(),
	)...)
	if err != nil {
		return nil, err
	}
	ast, iss := env.Compile(expr)
	if iss != nil && iss.Err() != nil {
		msg := strings.ReplaceAll(strings.TrimSpace(iss.Err().Error()), "\n", " ")
		if strings.Contains(msg, "'_?_:_'") && strings.Contains(msg, "null)") {
			msg += " (to skip the delivery in a branch of ?:, write skip instead of null)"
		}
		return nil, fmt.Errorf("%s", msg)
	}
	switch out := ast.OutputType(); {
	case out.Kind() == types.MapKind, out.Kind() == types.ListKind, out.Kind() == types.DynKind, out.Kind() == types.NullTypeKind:
	default:
		return nil, fmt.Errorf("the transform must give a map (a JSON object), a list or null, but it gives %s", out)
	}
	prg, err := env.Program(ast, cel.CostLimit(CostLimit), cel.EvalOptions(cel.OptOptimize), cel.InterruptCheckFrequency(interruptEvery))
	if err != nil {
		return nil, err
	}
	return &program{prg: prg}, nil
}

// eval runs the transform on an envelope; nil means null (skip).
func (p *program) eval(env *Envelope) (any, error) {
	// CEL's cost counts a comparison of nested values by their top level:
	// one event could hold a worker for minutes. Past evalBudget the
	// evaluation stops (a comprehension's steps look at the deadline).
	ctx, cancel := context.WithTimeout(context.Background(), evalBudget)
	defer cancel()
	out, _, err := p.prg.ContextEval(ctx, map[string]any{
		"id": env.ID, "event": env.Event, "timestamp": env.Timestamp, "data": celValue(env.Data), "skip": types.NullValue,
	})
	if err != nil {
		var cancelled interpreter.EvalCancelledError
		if errors.As(err, &cancelled) && cancelled.Cause == interpreter.CostLimitExceeded {
			return nil, fmt.Errorf("the transform went over its cost budget (%d) and was stopped", CostLimit)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("the transform ran past %s on this event and was stopped", evalBudget)
		}
		return nil, fmt.Errorf("the transform failed on this event: %w", err)
	}
	// The result is copied within maxBody: CEL's cost counts the
	// evaluation, in which {"order": data} only refers to data, so a
	// result of many references to a large event cost little to make and
	// gigabytes to copy (data.items.map(i, {"item": i, "order": data})
	// over 2,000 items: 4 ms to evaluate, 1.9 GB and 6 s to copy).
	budget := maxBody
	v, err := native(out, 0, &budget)
	if err != nil {
		return nil, fmt.Errorf("the transform's result: %w", err)
	}
	switch v.(type) {
	case nil, map[string]any, []any:
	default:
		return nil, fmt.Errorf("the transform gave %T, not a map, a list or null", v)
	}
	return v, nil
}

// errTooLarge: a transform's result over maxBody.
var errTooLarge = fmt.Errorf("larger than %d bytes", maxBody)

// spend takes n bytes of the result's budget.
func spend(budget *int, n int) error {
	if *budget -= n; *budget < 0 {
		return errTooLarge
	}
	return nil
}

// jsonLen is the length of s as a JSON string as marshal writes it:
// quotes, and escapes for control characters, quotes, backslashes, and
// U+2028 and U+2029.
func jsonLen(s string) int {
	n := len(s) + 2
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f':
			n++ // \n and the like
		case c < 0x20:
			n += 5 // \u0001
		case c == '"' || c == '\\':
			n++
		case c == 0xe2 && i+2 < len(s) && s[i+1] == 0x80 && (s[i+2] == 0xa8 || s[i+2] == 0xa9):
			n += 3
		}
	}
	return n
}

// celValue turns an envelope's json.Numbers into CEL's numbers: an
// integer is an int, anything else a double.
func celValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[k] = celValue(x)
		}
		return m
	case []any:
		l := make([]any, len(v))
		for i, x := range v {
			l[i] = celValue(x)
		}
		return l
	case json.Number:
		if n, err := v.Int64(); err == nil {
			return n
		}
		if n, err := strconv.ParseUint(string(v), 10, 64); err == nil {
			return n // beyond int64: a double would round it
		}
		f, _ := v.Float64()
		return f
	}
	return v
}

// evalBudget bounds one evaluation's time.
const evalBudget = time.Second

// interruptEvery is how many comprehension steps go between two looks at
// evalBudget's deadline: every one, as in a filter. A step can take tens
// of milliseconds (a comparison of long lists, a regex over a long
// string); at 64 steps between looks a transform ran 1.7 s past its
// budget, and 11.8 s past it on a loaded machine
// (TestCELTransformStopsAtItsDeadline).
const interruptEvery = 1

// maxDepth bounds the nesting of a result.
const maxDepth = 64

// native turns a CEL value into what encoding/json writes, taking its
// size as JSON from budget (a number counts as 8 bytes; about what it
// takes): it stops with errTooLarge once past it.
func native(v ref.Val, depth int, budget *int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nested deeper than %d", maxDepth)
	}
	if s, ok := v.(types.String); ok {
		return string(s), spend(budget, jsonLen(string(s)))
	}
	if err := spend(budget, 8); err != nil {
		return nil, err
	}
	switch x := v.(type) {
	case types.Null:
		return nil, nil
	case types.Bool:
		return bool(x), nil
	case types.Int:
		return int64(x), nil
	case types.Uint:
		return uint64(x), nil
	case types.Double:
		f := float64(x)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%v is not a JSON number", f)
		}
		return f, nil
	case types.Timestamp:
		return x.Time.UTC().Format(time.RFC3339Nano), nil
	case types.Duration:
		return x.Duration.String(), nil
	case types.Bytes:
		return nil, errors.New("bytes are not JSON: use string(...)")
	case *types.Err:
		return nil, x
	}
	if m, ok := v.(traits.Mapper); ok {
		out := map[string]any{}
		it := m.Iterator()
		for it.HasNext() == types.True {
			k := it.Next()
			ks, ok := k.(types.String)
			if !ok {
				return nil, fmt.Errorf("a map key %v is not a string", k)
			}
			if err := spend(budget, jsonLen(string(ks))+2); err != nil {
				return nil, err
			}
			val, err := native(m.Get(k), depth+1, budget)
			if err != nil {
				return nil, err
			}
			out[string(ks)] = val
		}
		return out, nil
	}
	if l, ok := v.(traits.Lister); ok {
		// Every element is 2 bytes of JSON at least (a string's quotes):
		// a list longer than half the budget is refused before anything
		// is made. CEL makes data.l + data.l + … lazily, for almost no
		// cost: 250 of a 400 KB event's list reported tens of millions of
		// elements, and the slice for them took a gigabyte. The elements
		// are read with the list's iterator: Get(i) on such a list walks
		// the chain of concatenations for each.
		n, _ := l.Size().(types.Int)
		if int64(n) > int64(*budget)/2 {
			return nil, errTooLarge
		}
		out := make([]any, 0, int(n))
		for it := l.Iterator(); it.HasNext() == types.True; {
			val, err := native(it.Next(), depth+1, budget)
			if err != nil {
				return nil, err
			}
			out = append(out, val)
		}
		return out, nil
	}
	return nil, fmt.Errorf("a value of type %s is not JSON", v.Type())
}
