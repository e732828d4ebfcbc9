package transformtest

import (
	"strings"
	"testing"
)

// Bodies as the destinations' documentation shows them pass.
func TestValidateAcceptsDocumentedBodies(t *testing.T) {
	tests := []struct {
		name     string
		validate func([]byte) error
		body     string
	}{
		{"slack text only", ValidateSlack, `{"text":"Hello, world."}`},
		{"slack blocks only", ValidateSlack, `{"blocks":[{"type":"section","text":{"type":"mrkdwn","text":"*Hi*"}}]}`},
		{"slack every checked block", ValidateSlack, `{"text":"t","blocks":[
			{"type":"header","text":{"type":"plain_text","text":"Head","emoji":true}},
			{"type":"section","fields":[{"type":"mrkdwn","text":"*a*\n1"},{"type":"plain_text","text":"b"}],"block_id":"b1"},
			{"type":"divider"},
			{"type":"image","image_url":"https://example.com/a.png","alt_text":"a"},
			{"type":"context","elements":[{"type":"image","image_url":"https://example.com/i.png","alt_text":"i"},{"type":"mrkdwn","text":"ctx"}]},
			{"type":"markdown","text":"**bold**"},
			{"type":"actions","elements":[{"type":"button","text":{"type":"plain_text","text":"Go"}}]}]}`},
		{"slack section at its limits", ValidateSlack, `{"blocks":[{"type":"section","text":{"type":"mrkdwn","text":"` + strings.Repeat("a", 3000) + `"},"fields":[` +
			strings.TrimSuffix(strings.Repeat(`{"type":"mrkdwn","text":"`+strings.Repeat("é", 2000)+`"},`, 10), ",") + `]}]}`},
		{"teams adaptive card", ValidateTeams, `{"type":"message","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive","contentUrl":null,
			"content":{"$schema":"http://adaptivecards.io/schemas/adaptive-card.json","type":"AdaptiveCard","version":"1.2",
			"body":[{"type":"TextBlock","text":"Hi"},{"type":"FactSet","facts":[{"title":"a","value":"b"}]},{"type":"Container","items":[{"type":"TextBlock","text":"in"}]}]}}]}`},
		{"discord content only", ValidateDiscord, `{"content":"Hello"}`},
		{"discord embed only", ValidateDiscord, `{"embeds":[{"description":"d","color":16711680,"timestamp":"2024-01-15T14:30:00.000Z","footer":{"text":"f"},"author":{"name":"a"},"fields":[{"name":"n","value":"v","inline":true}]}],"allowed_mentions":{"parse":["users"]}}`},
		{"discord content at its limit", ValidateDiscord, `{"content":"` + strings.Repeat("a", 2000) + `","allowed_mentions":{"parse":[]}}`},
	}
	for _, tc := range tests {
		if err := tc.validate([]byte(tc.body)); err != nil {
			t.Errorf("%s: got %v, want nil", tc.name, err)
		}
	}
}

// Each validator rejects a body that breaks one documented rule, and says
// which.
func TestValidateRejects(t *testing.T) {
	card := func(body string) string {
		return `{"type":"message","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive","content":{"type":"AdaptiveCard","version":"1.4","body":` + body + `}}]}`
	}
	fields := func(n int) string {
		return strings.TrimSuffix(strings.Repeat(`{"type":"mrkdwn","text":"x"},`, n), ",")
	}
	discordFields := func(n int, value string) string {
		return strings.TrimSuffix(strings.Repeat(`{"name":"n","value":"`+value+`"},`, n), ",")
	}
	tests := []struct {
		name     string
		validate func([]byte) error
		body     string
		want     string // in the error
	}{
		{"not JSON", ValidateSlack, `{"text":`, "not JSON"},
		{"two values", ValidateDiscord, `{"content":"a"} {}`, "more than one"},
		{"an array", ValidateTeams, `[]`, "not a JSON object"},

		{"slack without text or blocks", ValidateSlack, `{"username":"dzhook"}`, "needs a non-empty text, or blocks"},
		{"slack empty text", ValidateSlack, `{"text":""}`, "needs a non-empty text"},
		{"slack text not a string", ValidateSlack, `{"text":5}`, "text: is a number"},
		{"slack unknown block type", ValidateSlack, `{"text":"t","blocks":[{"type":"banner"}]}`, "blocks[0].type"},
		{"slack block without type", ValidateSlack, `{"text":"t","blocks":[{"text":{"type":"mrkdwn","text":"a"}}]}`, "blocks[0].type"},
		{"slack too many blocks", ValidateSlack, `{"text":"t","blocks":[` + strings.TrimSuffix(strings.Repeat(`{"type":"divider"},`, 51), ",") + `]}`, "51 blocks"},
		{"slack section without text", ValidateSlack, `{"blocks":[{"type":"section"}]}`, "needs text or fields"},
		{"slack section text over 3000", ValidateSlack, `{"blocks":[{"type":"section","text":{"type":"mrkdwn","text":"` + strings.Repeat("a", 3001) + `"}}]}`, "3001 characters"},
		{"slack section text over 3000 in UTF-16", ValidateSlack, `{"blocks":[{"type":"section","text":{"type":"mrkdwn","text":"` + strings.Repeat("😀", 1501) + `"}}]}`, "3002 characters"},
		{"slack eleven fields", ValidateSlack, `{"blocks":[{"type":"section","fields":[` + fields(11) + `]}]}`, "11 fields"},
		{"slack field over 2000", ValidateSlack, `{"blocks":[{"type":"section","fields":[{"type":"mrkdwn","text":"` + strings.Repeat("a", 2001) + `"}]}]}`, "fields[0].text: is 2001"},
		{"slack text object without type", ValidateSlack, `{"blocks":[{"type":"section","text":{"text":"a"}}]}`, "not plain_text or mrkdwn"},
		{"slack text object with empty text", ValidateSlack, `{"blocks":[{"type":"section","text":{"type":"mrkdwn","text":""}}]}`, "text.text: is empty"},
		{"slack mrkdwn header", ValidateSlack, `{"blocks":[{"type":"header","text":{"type":"mrkdwn","text":"a"}}]}`, "not plain_text"},
		{"slack header over 150", ValidateSlack, `{"blocks":[{"type":"header","text":{"type":"plain_text","text":"` + strings.Repeat("a", 151) + `"}}]}`, "151 characters"},
		{"slack empty context", ValidateSlack, `{"blocks":[{"type":"context","elements":[]}]}`, "elements: is empty"},
		{"slack image without alt text", ValidateSlack, `{"blocks":[{"type":"image","image_url":"https://example.com/a.png"}]}`, "alt_text"},

		{"teams not a message", ValidateTeams, `{"type":"AdaptiveCard","body":[]}`, `type: is "AdaptiveCard"`},
		{"teams without attachments", ValidateTeams, `{"type":"message","text":"hi"}`, "attachments"},
		{"teams empty attachments", ValidateTeams, `{"type":"message","attachments":[]}`, "attachments: is empty"},
		{"teams hero card", ValidateTeams, `{"type":"message","attachments":[{"contentType":"application/vnd.microsoft.card.hero","content":{"type":"AdaptiveCard","version":"1.4","body":[{"type":"TextBlock","text":"a"}]}}]}`, "contentType"},
		{"teams not an adaptive card", ValidateTeams, `{"type":"message","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive","content":{"type":"MessageCard","version":"1.4","body":[{"type":"TextBlock","text":"a"}]}}]}`, "content.type"},
		{"teams no version", ValidateTeams, `{"type":"message","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive","content":{"type":"AdaptiveCard","body":[{"type":"TextBlock","text":"a"}]}}]}`, "version"},
		{"teams empty body", ValidateTeams, card(`[]`), "body: is empty"},
		{"teams element without type", ValidateTeams, card(`[{"text":"a"}]`), "body[0].type"},
		{"teams TextBlock without text", ValidateTeams, card(`[{"type":"TextBlock"}]`), "a TextBlock needs a text"},
		{"teams fact without value", ValidateTeams, card(`[{"type":"FactSet","facts":[{"title":"a"}]}]`), "facts[0].value"},
		{"teams over 28 KB", ValidateTeams, card(`[{"type":"TextBlock","text":"` + strings.Repeat("a", 29*1024) + `"}]`), "over Teams'"},

		{"discord without content or embeds", ValidateDiscord, `{"username":"dzhook"}`, "needs a non-empty content, or embeds"},
		{"discord empty content and embeds", ValidateDiscord, `{"content":"","embeds":[]}`, "needs a non-empty content"},
		{"discord content over 2000", ValidateDiscord, `{"content":"` + strings.Repeat("a", 2001) + `"}`, "content: is 2001"},
		{"discord eleven embeds", ValidateDiscord, `{"embeds":[` + strings.TrimSuffix(strings.Repeat(`{"title":"t"},`, 11), ",") + `]}`, "11 embeds"},
		{"discord title over 256", ValidateDiscord, `{"embeds":[{"title":"` + strings.Repeat("a", 257) + `"}]}`, "title: is 257"},
		{"discord description over 4096", ValidateDiscord, `{"embeds":[{"description":"` + strings.Repeat("a", 4097) + `"}]}`, "description: is 4097"},
		{"discord 26 fields", ValidateDiscord, `{"embeds":[{"fields":[` + discordFields(26, "v") + `]}]}`, "26 fields"},
		{"discord field value over 1024", ValidateDiscord, `{"embeds":[{"fields":[` + discordFields(1, strings.Repeat("a", 1025)) + `]}]}`, "value: is 1025"},
		{"discord empty field value", ValidateDiscord, `{"embeds":[{"fields":[{"name":"n","value":""}]}]}`, "value: is empty"},
		// Discord trims them and refuses a blank one (a preset sent
		// {"name":"note","value":" "} for a value of "\u0001").
		{"discord blank field value", ValidateDiscord, `{"embeds":[{"fields":[{"name":"n","value":" "}]}]}`, `fields[0].value: is " ", only spaces`},
		{"discord blank field name", ValidateDiscord, `{"embeds":[{"fields":[{"name":"\u00a0\n","value":"v"}]}]}`, "fields[0].name: is"},
		{"discord blank footer", ValidateDiscord, `{"embeds":[{"title":"t","footer":{"text":"\t"}}]}`, "footer.text: is"},
		{"discord footer without text", ValidateDiscord, `{"embeds":[{"title":"t","footer":{"icon_url":"https://example.com/i.png"}}]}`, "footer.text"},
		{"discord over 6000 in all", ValidateDiscord, `{"embeds":[{"description":"` + strings.Repeat("a", 4000) + `"},{"description":"` + strings.Repeat("a", 2001) + `"}]}`, "6001 characters together"},
		{"discord colour as a string", ValidateDiscord, `{"embeds":[{"title":"t","color":"#ff0000"}]}`, "color"},
		{"discord colour out of range", ValidateDiscord, `{"embeds":[{"title":"t","color":16777216}]}`, "color"},
		{"discord timestamp not ISO 8601", ValidateDiscord, `{"embeds":[{"title":"t","timestamp":"15/01/2024"}]}`, "timestamp"},
		{"discord empty embed", ValidateDiscord, `{"embeds":[{"color":1}]}`, "is empty"},
		{"discord unknown mention type", ValidateDiscord, `{"content":"a","allowed_mentions":{"parse":["channels"]}}`, "allowed_mentions.parse[0]"},
	}
	for _, tc := range tests {
		err := tc.validate([]byte(tc.body))
		if err == nil {
			t.Errorf("%s: got nil, want an error containing %q", tc.name, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %q, want it to contain %q", tc.name, err, tc.want)
		}
	}
}

// A body with several problems gets all of them in one error.
func TestValidateListsEveryProblem(t *testing.T) {
	err := ValidateDiscord([]byte(`{"content":"` + strings.Repeat("a", 2001) + `","embeds":[{"title":"` + strings.Repeat("a", 257) + `","color":"red"}]}`))
	if err == nil {
		t.Fatal("got nil, want three problems")
	}
	for _, want := range []string{"content:", "embeds[0].title:", "embeds[0].color:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("got %q, want it to name %s", err, want)
		}
	}
}
