// Package filter compiles and evaluates a subscription's CEL filter
// (https://cel.dev) over an event's envelope. The expression sees the
// envelope's fields as variables: id, event and timestamp (strings) and
// data (the event's data object), e.g.
//
//	data.priority in ["high", "urgent"]
//	event.startsWith("sla.") || data.status == "open"
//
// It must be boolean. It is compiled and type-checked when the
// configuration loads, so a mistake is a configuration error naming the
// subscription rather than a surprise at delivery time.
package filter

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"cel.dev/cel-go/cel"
)

// Program is a compiled filter, safe for concurrent use.
type Program struct {
	expr string
	prg  cel.Program
}

// costLimit bounds one evaluation, so a pathological expression cannot
// stall the delivery path.
const costLimit = 100_000

func env() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("id", cel.StringType),
		cel.Variable("event", cel.StringType),
		cel.Variable("timestamp", cel.StringType),
		cel.Variable("data", cel.MapType(cel.StringType, cel.DynType)),
	)
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
	prg, err := e.Program(ast, cel.CostLimit(costLimit), cel.EvalOptions(cel.OptOptimize))
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
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, fmt.Errorf("parse envelope for filters: %w", err)
	}
	if env.Data == nil {
		env.Data = map[string]any{}
	}
	return &Envelope{vars: map[string]any{"id": env.ID, "event": env.Event, "timestamp": env.Timestamp, "data": env.Data}}, nil
}

// Match evaluates the filter. An expression that fails on this event (a
// missing field, a type mismatch) does not match; the error says why.
func (p *Program) Match(e *Envelope) (bool, error) {
	out, _, err := p.prg.Eval(e.vars)
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("filter gave %v, not true or false", out.Value())
	}
	return b, nil
}
