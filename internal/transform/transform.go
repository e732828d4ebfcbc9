// Package transform shapes the body a subscription's receiver gets from
// an event's envelope: a CEL expression of the subscription's
// (`transform`), or a built-in preset for a destination (`format: slack`,
// `teams`, `discord`). Without either, a delivery sends DZDESK's envelope
// as the stream produced it.
//
// A delivery's body is computed once, at its first attempt, and kept in
// the journal with the delivery: every retry sends the same bytes, and
// the signature covers them.
package transform

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// Formats are the values of subscriptions[].format. "dzdesk" (the
// default) sends the envelope itself.
var Formats = []string{FormatDZDESK, FormatSlack, FormatTeams, FormatDiscord}

// The formats.
const (
	FormatDZDESK  = "dzdesk"
	FormatSlack   = "slack"
	FormatTeams   = "teams"
	FormatDiscord = "discord"
)

// ErrSkip is returned by Apply when the transform decided that the
// delivery is not to be sent (a CEL transform that gives null).
var ErrSkip = errors.New("the transform gave null: not sent")

// Envelope is an event's envelope, parsed once for a transform.
type Envelope struct {
	ID        string         `json:"id"`
	Event     string         `json:"event"`
	Timestamp string         `json:"timestamp"`
	Data      map[string]any `json:"data"`
}

// Parse reads an envelope's JSON. Numbers stay json.Number, so that an
// id or a count is written back exactly as it came.
func Parse(raw []byte) (*Envelope, error) {
	var env Envelope
	if err := decodeJSON(raw, &env); err != nil {
		return nil, fmt.Errorf("the event is not a JSON envelope: %w", err)
	}
	if env.Data == nil {
		env.Data = map[string]any{}
	}
	return &env, nil
}

// Transform computes a delivery's body. It is safe for concurrent use.
type Transform struct {
	name   string // "transform" or the format
	preset func(*Envelope) (any, error)
	cel    *program
}

// New returns the transform of a subscription: its CEL expression if
// any, else the preset of its format; nil when it sends the envelope
// unchanged (no expression, format "" or "dzdesk"). The error names what
// is wrong: the expression's mistake with its position, or the format.
func New(expr, format string) (*Transform, error) {
	if expr != "" {
		p, err := compile(expr)
		if err != nil {
			return nil, err
		}
		return &Transform{name: "transform", cel: p}, nil
	}
	if format == "" || format == FormatDZDESK {
		return nil, nil
	}
	if !slices.Contains(Formats, format) {
		return nil, fmt.Errorf("unknown format %q: one of %v", format, Formats)
	}
	return &Transform{name: format, preset: presets[format]}, nil
}

// Name is "transform" for a CEL expression, else the preset's format.
func (t *Transform) Name() string { return t.name }

// Apply computes the body for an event's envelope. ErrSkip: the delivery
// is not sent. Any other error fails the delivery (error class
// "transform"): the same event would give the same error again.
func (t *Transform) Apply(raw []byte) ([]byte, error) {
	env, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	var out any
	if t.cel != nil {
		out, err = t.cel.eval(env)
	} else {
		out, err = t.preset(env)
	}
	if err != nil {
		return nil, err
	}
	if out == nil {
		return nil, ErrSkip
	}
	b, err := marshal(out)
	if err == nil && len(b) > maxBody { // native's count is close, not exact
		return nil, fmt.Errorf("the transform's result: %w", errTooLarge)
	}
	return b, err
}

// marshal writes a body: compact JSON, map keys sorted, and no HTML
// escaping (a Slack message's "<" and "&" stay themselves).
func marshal(v any) ([]byte, error) {
	var b jsonBuffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("the transform's result is not JSON: %w", err)
	}
	out := b.bytes()
	return out[:len(out)-1], nil // Encode ends with a newline
}
