package transform

import (
	"math"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"

	"github.com/dzdesk/dzhook/internal/filter"
)

// celStrings is the environment's string functions: the strings
// extension and the presets' own escaping and cutting, so that a custom
// Slack, Teams or Discord message quotes an event's text as safely as the
// presets do without reinventing it in CEL.
//
//	clip(s, n)                          s cut to n characters (UTF-16 units), ending in "…" when cut
//	slackEscape(s), slackEscape(s, n)   &, < and > escaped (no <!channel>, no forged <url|link>), cut to n
//	teamsEscape(s), teamsEscape(s, n)   [text](url) links broken, cut to n
//	discordEscape(s), discordEscape(s, n)  mentions and links broken, cut to n
//
// Cutting after escaping could split "&amp;" or leave a text over the
// limit; the two-argument forms cut between escaped characters.
func celStrings() []cel.EnvOption {
	str, i := cel.StringType, cel.IntType
	// The strings extension as in filters (filter.Strings).
	return append(filter.Strings(),
		cel.Function("clip",
			cel.Overload("clip_string_int", []*cel.Type{str, i}, str, cel.BinaryBinding(clipFn(nil))),
		),
		escapeFunction("slackEscape", "slack_escape", slackRune),
		escapeFunction("teamsEscape", "teams_escape", nil, noLinks.Replace),
		escapeFunction("discordEscape", "discord_escape", nil, discordMention.Replace, noLinks.Replace),
		cel.CostModel(
			escapeCost("clip_string_int"),
			escapeCost("slack_escape_string"), escapeCost("slack_escape_string_int"),
			escapeCost("teams_escape_string"), escapeCost("teams_escape_string_int"),
			escapeCost("discord_escape_string"), escapeCost("discord_escape_string_int"),
		),
	)
}

// escapeFunction declares name(s) and name(s, n): s with each rune
// escaped by esc (nil: as it is) after the replacers, then cut to n
// units (or not cut).
func escapeFunction(name, id string, esc func(rune) string, replace ...func(string) string) cel.EnvOption {
	str, i := cel.StringType, cel.IntType
	prepare := func(s string) string {
		for _, r := range replace {
			s = r(s)
		}
		return s
	}
	cut := clipFn(esc)
	return cel.Function(name,
		cel.Overload(id+"_string", []*cel.Type{str}, str, cel.UnaryBinding(func(s ref.Val) ref.Val {
			v, ok := s.(types.String)
			if !ok {
				return types.MaybeNoSuchOverloadErr(s)
			}
			return types.String(clipEscaped(prepare(string(v)), math.MaxInt, esc))
		})),
		cel.Overload(id+"_string_int", []*cel.Type{str, i}, str, cel.BinaryBinding(func(s, n ref.Val) ref.Val {
			v, ok := s.(types.String)
			if !ok {
				return types.MaybeNoSuchOverloadErr(s)
			}
			return cut(types.String(prepare(string(v))), n)
		})),
	)
}

// clipFn is the binding of a cut to n units after esc.
func clipFn(esc func(rune) string) func(s, n ref.Val) ref.Val {
	return func(s, n ref.Val) ref.Val {
		v, ok := s.(types.String)
		if !ok {
			return types.MaybeNoSuchOverloadErr(s)
		}
		max, ok := n.(types.Int)
		if !ok {
			return types.MaybeNoSuchOverloadErr(n)
		}
		if max < 0 {
			return types.NewErr("cannot cut a text to %d characters", max)
		}
		return types.String(clipEscaped(string(v), int(min(int64(max), math.MaxInt32)), esc))
	}
}

// slackRune is Slack's escape of one rune (slackEsc, slackEscape).
func slackRune(r rune) string {
	switch r {
	case '&':
		return "&amp;"
	case '<':
		return "&lt;"
	case '>':
		return "&gt;"
	}
	return string(r)
}

// escapeCost charges a helper as the strings extension charges replace:
// a scan of the text and the length of what it makes, so a transform
// that escapes a 1 MiB text in a loop runs into the cost limit.
func escapeCost(id string) cost.OverloadModel {
	return cost.Overload(id,
		cost.EvalCost(cost.Sum(cost.Const(cost.CallCost), cost.StringScan(cost.Length(cost.Arg(0))), cost.Length(cost.Result()))),
		// &amp; is five bytes for one: at most five times the text, plus "…".
		cost.ResultSize(cost.AtMost(cost.Sum(cost.Scale(cost.Arg(0), 5), cost.Const(3)))),
	)
}
