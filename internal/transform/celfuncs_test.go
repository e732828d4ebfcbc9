package transform

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/dzdesk/dzhook/internal/transform/transformtest"
)

// hostile is a title a requester could write: it pings the channel and
// forges a link in Slack, and does both in Discord and Teams' Markdown.
const hostile = `<!channel> <https://evil.example/login|Reset your password> @everyone [Reset](https://evil.example)`

// unsafe is what a destination reads as a mention or a link in hostile.
var unsafe = map[string][]string{
	"slack":   {"<!channel>", "<https://"},
	"teams":   {"](https"},
	"discord": {"@everyone", "](https"},
}

// TestCELTransformEscapesAndClips: a custom Slack, Teams or Discord
// message can escape the event's text and cut it under the service's
// limits, with the strings extension or the presets' own helpers. Before,
// replace, substring and the like were undeclared: a custom message
// quoted a title's "<!channel>" as it was, and a title of 3,100
// characters made a section Slack refuses (400).
func TestCELTransformEscapesAndClips(t *testing.T) {
	// README's example (Connectors, Your own message).
	slackMsg := `{"text": "🆕 " + slackEscape(data.id) + " — " + slackEscape(data.title, 150),
       "blocks": [{"type": "section", "text": {"type": "mrkdwn",
         "text": "*" + slackEscape(data.id) + "*\n" + slackEscape(data.title, 2900)}}]}`
	cases := []struct {
		format, expr string
		validate     func([]byte) error
	}{
		{"slack", slackMsg, transformtest.ValidateSlack},
		{"slack", `{"text": (data.title.size() > 900 ? data.title.substring(0, 900) + "…" : data.title).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}`, transformtest.ValidateSlack},
		{"teams", `{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "wrap": true, "text": teamsEscape(data.title, 2000)}]}}]}`, transformtest.ValidateTeams},
		{"discord", `{"content": discordEscape(data.title, 2000), "allowed_mentions": {"parse": []}}`, transformtest.ValidateDiscord},
	}
	for _, tc := range cases {
		tr, err := New(tc.expr, tc.format)
		if err != nil {
			t.Fatalf("%s: %v", tc.expr, err)
		}
		for _, title := range []string{hostile, strings.Repeat("x", 3100), strings.Repeat("😀<", 2000)} {
			data, _ := json.Marshal(map[string]string{"id": "req_1", "title": title})
			out, err := tr.Apply(envelope("request.created", string(data)))
			if err != nil {
				t.Fatalf("%s on %.20q: %v", tc.expr, title, err)
			}
			if err := tc.validate(out); err != nil {
				t.Errorf("%s on %.20q: the service refuses %s: %v", tc.format, title, out, err)
			}
			for _, bad := range unsafe[tc.format] {
				if strings.Contains(string(out), bad) {
					t.Errorf("%s on %.20q: %q left as it was: %s", tc.expr, title, bad, out)
				}
			}
		}
	}
}

// TestCELClipHelpers: the helpers cut at characters as the services count
// them (UTF-16 units), never inside an escape, and end a cut text in "…".
func TestCELClipHelpers(t *testing.T) {
	for expr, want := range map[string]string{
		`clip("héllo", 5)`:             "héllo",
		`clip("héllo", 4)`:             "hél…",
		`clip("😀😀😀", 4)`:               "😀…", // 😀 is two units
		`clip("abc", 0)`:               "",
		`slackEscape("a<b>&c")`:        "a&lt;b&gt;&amp;c",
		`slackEscape("a<bc", 6)`:       "a&lt;…",
		`slackEscape("a<bc", 5)`:       "a…",
		`teamsEscape("[x](http://e)")`: "[x]\u200b(http://e)",
		`discordEscape("@here <@12>")`: "@\u200bhere <@\u200b12>",
		`" a ".trim() + "B".lowerAscii() + ["x", "y"].join("-") + "a,b".split(",")[1]`: "ab" + "x-y" + "b",
	} {
		tr, err := New(`{"t": `+expr+`}`, "")
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		out, err := tr.Apply(envelope("e", `{}`))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		var got struct{ T string }
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		if got.T != want {
			t.Errorf("%s: got %q, want %q", expr, got.T, want)
		}
		if n := len(utf16.Encode([]rune(got.T))); strings.HasPrefix(expr, "clip") && n > int(expr[len(expr)-2]-'0') {
			t.Errorf("%s: %d units", expr, n)
		}
	}
	tr, _ := New(`{"t": clip(data.s, -1)}`, "")
	if _, err := tr.Apply(envelope("e", `{"s": "x"}`)); err == nil || !strings.Contains(err.Error(), "-1") {
		t.Errorf("clip to -1: %v", err)
	}
}

// TestCELStringFunctionsWithinCostLimit: the string functions are charged
// by the length of the text, so a transform that works a 1 MiB text over
// and over stops at the cost limit, quickly, rather than holding a worker
// for the evaluation's second (one call cost 1 unit before cel-go's
// strings cost models, version 5).
func TestCELStringFunctionsWithinCostLimit(t *testing.T) {
	big := `{"s": "` + strings.Repeat("a<", 1<<19) + `"}`
	for _, expr := range []string{
		`{"n": [1,2,3,4,5,6,7,8,9,10].map(i, data.s.replace("<", "&lt;").size())}`,
		`{"n": [1,2,3,4,5,6,7,8,9,10].map(i, slackEscape(data.s).size())}`,
		`{"n": [1,2,3,4,5,6,7,8,9,10].map(i, data.s.lowerAscii().size())}`,
		`{"n": [1,2,3,4,5,6,7,8,9,10].map(i, discordEscape(data.s, 100000).size())}`,
		// cel-go charges format by its format string alone; filter.Strings
		// charges what it makes (found by a review).
		`{"n": [1,2,3,4,5,6,7,8,9,10].map(i, "%s".format([data.s]).size())}`,
	} {
		tr, err := New(expr, "")
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		start := time.Now()
		_, err = tr.Apply(envelope("e", big))
		if err == nil || !strings.Contains(err.Error(), "cost budget") {
			t.Errorf("%s: %v; want over the cost budget", expr, err)
		}
		t.Logf("%s: %v in %v", expr, err, time.Since(start))
	}
	// A message's worth of them stays well within it.
	tr, _ := New(`{"t": slackEscape(data.s, 2900) + clip(data.s, 100) + data.s.substring(0, 10).replace("<", "&lt;")}`, "")
	if _, err := tr.Apply(envelope("e", `{"s": "`+strings.Repeat("a<", 2000)+`"}`)); err != nil {
		t.Errorf("a message: %v", err)
	}
}
