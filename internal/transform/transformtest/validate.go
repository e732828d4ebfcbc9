// Package transformtest checks bodies against what their destinations
// document: the fields a Slack, Microsoft Teams or Discord incoming
// webhook requires, the types it takes and its limits. Tests of any
// package import it to check what a preset (or a transform written for a
// destination) produces, or to play the destination in an httptest
// receiver.
//
// The checks follow the destinations' reference pages: Slack's Block Kit
// block and composition-object references, the Teams incoming-webhook
// and Adaptive Card schema pages, and Discord's Execute Webhook and Embed
// Object (with its limits). They check what those pages state, and one
// thing Discord is known to refuse that its pages do not say: a blank
// field name or value. What a destination accepts beyond them (or refuses
// for other reasons the pages do not give) is out of their reach. Lengths are counted in UTF-16 code units
// (JavaScript's string length), which is never less than the number of
// code points: a body that passes is within the limits however the
// destination counts characters.
package transformtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf16"
)

// Slack's documented limits.
const (
	SlackMaxBlocks        = 50
	SlackMaxSectionText   = 3000
	SlackMaxSectionFields = 10
	SlackMaxFieldText     = 2000
	SlackMaxHeaderText    = 150
	SlackMaxContextItems  = 10
	SlackMaxBlockID       = 255
	SlackMaxImageAltText  = 2000
	SlackMaxMarkdownText  = 12000
	// SlackMaxText is the message text's limit: Slack truncates longer
	// texts.
	SlackMaxText = 40000
)

// slackBlockTypes are the layout blocks a message may hold.
var slackBlockTypes = []string{"actions", "context", "divider", "file", "header", "image", "markdown", "rich_text", "section", "video"}

// ValidateSlack checks a body for a Slack incoming webhook: a JSON object
// with a non-empty text, or blocks (or legacy attachments); at most 50
// blocks, each of a message's block types with the fields that type
// requires; text objects of type plain_text or mrkdwn with a non-empty
// text; a section's text and fields, a header's text and a context's
// elements within their limits. The error lists every problem found.
func ValidateSlack(body []byte) error {
	msg, err := object(body)
	if err != nil {
		return fmt.Errorf("slack: %w", err)
	}
	c := &checker{}
	text, hasText := msg["text"]
	if hasText {
		s, ok := text.(string)
		switch {
		case !ok:
			c.fail("text", "is %s, not a string", kind(text))
		default:
			c.max("text", s, SlackMaxText)
		}
	}
	blocks, hasBlocks := msg["blocks"]
	_, hasAttachments := msg["attachments"]
	if str, _ := text.(string); str == "" && !hasBlocks && !hasAttachments {
		c.fail("", "needs a non-empty text, or blocks")
	}
	if hasBlocks {
		list, ok := blocks.([]any)
		switch {
		case !ok:
			c.fail("blocks", "is %s, not a list", kind(blocks))
		case len(list) == 0 && !hasText:
			c.fail("blocks", "is empty, and there is no text")
		case len(list) > SlackMaxBlocks:
			c.fail("blocks", "has %d blocks, over Slack's %d", len(list), SlackMaxBlocks)
		}
		for i, b := range list {
			c.slackBlock(fmt.Sprintf("blocks[%d]", i), b)
		}
	}
	return c.err("slack")
}

func (c *checker) slackBlock(path string, v any) {
	b, ok := v.(map[string]any)
	if !ok {
		c.fail(path, "is %s, not an object", kind(v))
		return
	}
	typ, _ := b["type"].(string)
	if !slices.Contains(slackBlockTypes, typ) {
		c.fail(path+".type", "%s is not a block type of a message (%v)", show(b["type"]), slackBlockTypes)
		return
	}
	if id, ok := b["block_id"]; ok {
		c.maxString(path+".block_id", id, SlackMaxBlockID)
	}
	switch typ {
	case "section":
		text, hasText := b["text"]
		fields, hasFields := b["fields"]
		if !hasText && !hasFields {
			c.fail(path, "a section needs text or fields")
		}
		if hasText {
			c.slackText(path+".text", text, SlackMaxSectionText, false)
		}
		if hasFields {
			list, ok := fields.([]any)
			switch {
			case !ok:
				c.fail(path+".fields", "is %s, not a list", kind(fields))
			case len(list) == 0:
				c.fail(path+".fields", "is empty")
			case len(list) > SlackMaxSectionFields:
				c.fail(path+".fields", "has %d fields, over Slack's %d", len(list), SlackMaxSectionFields)
			}
			for i, f := range list {
				c.slackText(fmt.Sprintf("%s.fields[%d]", path, i), f, SlackMaxFieldText, false)
			}
		}
	case "header":
		text, ok := b["text"]
		if !ok {
			c.fail(path, "a header needs text")
			break
		}
		c.slackText(path+".text", text, SlackMaxHeaderText, true)
	case "context":
		list, ok := b["elements"].([]any)
		switch {
		case !ok:
			c.fail(path+".elements", "a context needs a list of elements")
		case len(list) == 0:
			c.fail(path+".elements", "is empty")
		case len(list) > SlackMaxContextItems:
			c.fail(path+".elements", "has %d elements, over Slack's %d", len(list), SlackMaxContextItems)
		}
		for i, e := range list {
			p := fmt.Sprintf("%s.elements[%d]", path, i)
			if m, ok := e.(map[string]any); ok && m["type"] == "image" {
				c.slackImage(p, m)
				continue
			}
			c.slackText(p, e, SlackMaxSectionText, false)
		}
	case "image":
		c.slackImage(path, b)
	case "markdown":
		c.requiredString(path+".text", b["text"], SlackMaxMarkdownText)
	case "actions", "rich_text":
		if list, ok := b["elements"].([]any); !ok || len(list) == 0 {
			c.fail(path+".elements", "a %s block needs a non-empty list of elements", typ)
		}
	}
}

// slackText checks a composition text object.
func (c *checker) slackText(path string, v any, limit int, plainOnly bool) {
	t, ok := v.(map[string]any)
	if !ok {
		c.fail(path, "is %s, not a text object", kind(v))
		return
	}
	switch typ := t["type"]; {
	case typ == "plain_text":
	case typ == "mrkdwn" && !plainOnly:
	case plainOnly:
		c.fail(path+".type", "is %s, not plain_text", show(typ))
	default:
		c.fail(path+".type", "is %s, not plain_text or mrkdwn", show(typ))
	}
	c.requiredString(path+".text", t["text"], limit)
}

func (c *checker) slackImage(path string, m map[string]any) {
	_, url := m["image_url"].(string)
	_, file := m["slack_file"].(map[string]any)
	if !url && !file {
		c.fail(path, "an image needs image_url or slack_file")
	}
	c.requiredString(path+".alt_text", m["alt_text"], SlackMaxImageAltText)
}

// Teams' documented values and limits.
const (
	TeamsCardContentType = "application/vnd.microsoft.card.adaptive"
	// TeamsMaxMessageBytes is the size limit of a message posted to an
	// incoming webhook.
	TeamsMaxMessageBytes = 28 * 1024
)

var cardVersion = regexp.MustCompile(`^[0-9]+\.[0-9]+$`)

// ValidateTeams checks a body for a Microsoft Teams webhook (Workflows, or
// the legacy connector) carrying an Adaptive Card: a JSON object of type
// "message", under 28 KB, with a non-empty list of attachments, each of
// content type application/vnd.microsoft.card.adaptive whose content is
// an AdaptiveCard with a version ("1.4") and a non-empty body whose
// elements have a type (a TextBlock its text, a FactSet its facts with
// title and value). The error lists every problem found.
func ValidateTeams(body []byte) error {
	msg, err := object(body)
	if err != nil {
		return fmt.Errorf("teams: %w", err)
	}
	c := &checker{}
	if len(body) > TeamsMaxMessageBytes {
		c.fail("", "is %d bytes, over Teams' %d", len(body), TeamsMaxMessageBytes)
	}
	if msg["type"] != "message" {
		c.fail("type", "is %s, not \"message\"", show(msg["type"]))
	}
	if s, ok := msg["summary"]; ok {
		if _, ok := s.(string); !ok {
			c.fail("summary", "is %s, not a string", kind(s))
		}
	}
	list, ok := msg["attachments"].([]any)
	switch {
	case !ok:
		c.fail("attachments", "is %s, not a list", kind(msg["attachments"]))
	case len(list) == 0:
		c.fail("attachments", "is empty: Workflows post one card per attachment")
	}
	for i, a := range list {
		path := fmt.Sprintf("attachments[%d]", i)
		att, ok := a.(map[string]any)
		if !ok {
			c.fail(path, "is %s, not an object", kind(a))
			continue
		}
		if att["contentType"] != TeamsCardContentType {
			c.fail(path+".contentType", "is %s, not %q", show(att["contentType"]), TeamsCardContentType)
		}
		if u, ok := att["contentUrl"]; ok && u != nil {
			if _, ok := u.(string); !ok {
				c.fail(path+".contentUrl", "is %s, not null or a string", kind(u))
			}
		}
		card, ok := att["content"].(map[string]any)
		if !ok {
			c.fail(path+".content", "is %s, not an Adaptive Card object", kind(att["content"]))
			continue
		}
		path += ".content"
		if card["type"] != "AdaptiveCard" {
			c.fail(path+".type", "is %s, not \"AdaptiveCard\"", show(card["type"]))
		}
		if v, _ := card["version"].(string); !cardVersion.MatchString(v) {
			c.fail(path+".version", "is %s, not a version like \"1.4\"", show(card["version"]))
		}
		body, ok := card["body"].([]any)
		switch {
		case !ok:
			c.fail(path+".body", "is %s, not a list", kind(card["body"]))
		case len(body) == 0:
			c.fail(path+".body", "is empty")
		}
		for j, e := range body {
			c.cardElement(fmt.Sprintf("%s.body[%d]", path, j), e, 0)
		}
	}
	return c.err("teams")
}

// cardElement checks an Adaptive Card element: a type, and the required
// fields of the elements dzhook's presets use.
func (c *checker) cardElement(path string, v any, depth int) {
	e, ok := v.(map[string]any)
	if !ok {
		c.fail(path, "is %s, not an element object", kind(v))
		return
	}
	typ, _ := e["type"].(string)
	if typ == "" {
		c.fail(path+".type", "is %s: an element needs a type", show(e["type"]))
		return
	}
	if depth > 32 {
		return
	}
	switch typ {
	case "TextBlock":
		if _, ok := e["text"].(string); !ok {
			c.fail(path+".text", "is %s: a TextBlock needs a text", kind(e["text"]))
		}
	case "FactSet":
		facts, ok := e["facts"].([]any)
		if !ok || len(facts) == 0 {
			c.fail(path+".facts", "a FactSet needs a non-empty list of facts")
		}
		for i, f := range facts {
			p := fmt.Sprintf("%s.facts[%d]", path, i)
			fm, ok := f.(map[string]any)
			if !ok {
				c.fail(p, "is %s, not a fact object", kind(f))
				continue
			}
			for _, k := range []string{"title", "value"} {
				if _, ok := fm[k].(string); !ok {
					c.fail(p+"."+k, "is %s, not a string", kind(fm[k]))
				}
			}
		}
	case "Image":
		if _, ok := e["url"].(string); !ok {
			c.fail(path+".url", "an Image needs a url")
		}
	case "Container":
		items, _ := e["items"].([]any)
		for i, it := range items {
			c.cardElement(fmt.Sprintf("%s.items[%d]", path, i), it, depth+1)
		}
	}
}

// Discord's documented limits.
const (
	DiscordMaxContent     = 2000
	DiscordMaxEmbeds      = 10
	DiscordMaxTitle       = 256
	DiscordMaxDescription = 4096
	DiscordMaxFields      = 25
	DiscordMaxFieldName   = 256
	DiscordMaxFieldValue  = 1024
	DiscordMaxFooterText  = 2048
	DiscordMaxAuthorName  = 256
	DiscordMaxEmbedTotal  = 6000
	DiscordMaxUsername    = 80
	DiscordMaxMentionIDs  = 100
	DiscordMaxColor       = 0xFFFFFF
)

// ValidateDiscord checks a body for a Discord webhook (Execute Webhook
// with a JSON body): a JSON object with a non-empty content or embeds;
// content up to 2000 characters; up to 10 embeds, each with its title,
// description, fields (up to 25, each with a name and a value), footer
// (with a text) and author (with a name) within their limits, none of
// those four blank, an ISO 8601 timestamp and an integer colour, and all
// embeds' texts together up to 6000; allowed_mentions' parse list of
// roles, users and everyone. The error lists every problem found.
func ValidateDiscord(body []byte) error {
	msg, err := object(body)
	if err != nil {
		return fmt.Errorf("discord: %w", err)
	}
	c := &checker{}
	content, _ := msg["content"].(string)
	if v, ok := msg["content"]; ok {
		c.maxString("content", v, DiscordMaxContent)
	}
	embeds, hasEmbeds := msg["embeds"]
	list, _ := embeds.([]any)
	other := false
	for _, k := range []string{"components", "attachments", "poll", "files"} {
		_, ok := msg[k]
		other = other || ok
	}
	if content == "" && len(list) == 0 && !other {
		c.fail("", "needs a non-empty content, or embeds")
	}
	if v, ok := msg["username"]; ok {
		c.maxString("username", v, DiscordMaxUsername)
	}
	if hasEmbeds {
		if _, ok := embeds.([]any); !ok {
			c.fail("embeds", "is %s, not a list", kind(embeds))
		}
		if len(list) > DiscordMaxEmbeds {
			c.fail("embeds", "has %d embeds, over Discord's %d", len(list), DiscordMaxEmbeds)
		}
		total := 0
		for i, e := range list {
			total += c.discordEmbed(fmt.Sprintf("embeds[%d]", i), e)
		}
		if total > DiscordMaxEmbedTotal {
			c.fail("embeds", "hold %d characters together, over Discord's %d", total, DiscordMaxEmbedTotal)
		}
	}
	if am, ok := msg["allowed_mentions"]; ok {
		c.allowedMentions(am)
	}
	return c.err("discord")
}

// discordEmbed checks an embed and returns its characters counted against
// the 6000 of all embeds.
func (c *checker) discordEmbed(path string, v any) int {
	e, ok := v.(map[string]any)
	if !ok {
		c.fail(path, "is %s, not an embed object", kind(v))
		return 0
	}
	total := 0
	count := func(p string, v any, limit int) {
		c.maxString(p, v, limit)
		if s, ok := v.(string); ok {
			total += units(s)
		}
	}
	if v, ok := e["title"]; ok {
		count(path+".title", v, DiscordMaxTitle)
	}
	if v, ok := e["description"]; ok {
		count(path+".description", v, DiscordMaxDescription)
	}
	if v, ok := e["url"]; ok {
		c.maxString(path+".url", v, 2048)
	}
	if v, ok := e["timestamp"]; ok {
		s, _ := v.(string)
		if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			c.fail(path+".timestamp", "is %s, not an ISO 8601 timestamp", show(v))
		}
	}
	if v, ok := e["color"]; ok {
		n, isNum := v.(json.Number)
		i, err := n.Int64()
		if !isNum || err != nil || i < 0 || i > DiscordMaxColor {
			c.fail(path+".color", "is %s, not an integer colour (0 to 0xFFFFFF)", show(v))
		}
	}
	if v, ok := e["footer"]; ok {
		f, isObj := v.(map[string]any)
		if !isObj {
			c.fail(path+".footer", "is %s, not an object", kind(v))
		} else {
			c.discordString(path+".footer.text", f["text"], DiscordMaxFooterText)
			if s, ok := f["text"].(string); ok {
				total += units(s)
			}
		}
	}
	if v, ok := e["author"]; ok {
		a, isObj := v.(map[string]any)
		if !isObj {
			c.fail(path+".author", "is %s, not an object", kind(v))
		} else {
			c.discordString(path+".author.name", a["name"], DiscordMaxAuthorName)
			if s, ok := a["name"].(string); ok {
				total += units(s)
			}
		}
	}
	if v, ok := e["fields"]; ok {
		fields, isList := v.([]any)
		switch {
		case !isList:
			c.fail(path+".fields", "is %s, not a list", kind(v))
		case len(fields) > DiscordMaxFields:
			c.fail(path+".fields", "has %d fields, over Discord's %d", len(fields), DiscordMaxFields)
		}
		for i, f := range fields {
			p := fmt.Sprintf("%s.fields[%d]", path, i)
			fm, ok := f.(map[string]any)
			if !ok {
				c.fail(p, "is %s, not a field object", kind(f))
				continue
			}
			c.discordString(p+".name", fm["name"], DiscordMaxFieldName)
			c.discordString(p+".value", fm["value"], DiscordMaxFieldValue)
			for _, k := range []string{"name", "value"} {
				if s, ok := fm[k].(string); ok {
					total += units(s)
				}
			}
			if in, ok := fm["inline"]; ok {
				if _, ok := in.(bool); !ok {
					c.fail(p+".inline", "is %s, not a boolean", kind(in))
				}
			}
		}
	}
	if total == 0 && e["image"] == nil && e["thumbnail"] == nil {
		c.fail(path, "is empty: no title, description, fields, footer, author or image")
	}
	return total
}

func (c *checker) allowedMentions(v any) {
	am, ok := v.(map[string]any)
	if !ok {
		c.fail("allowed_mentions", "is %s, not an object", kind(v))
		return
	}
	if p, ok := am["parse"]; ok {
		list, isList := p.([]any)
		if !isList {
			c.fail("allowed_mentions.parse", "is %s, not a list", kind(p))
		}
		for i, t := range list {
			if !slices.Contains([]any{"roles", "users", "everyone"}, t) {
				c.fail(fmt.Sprintf("allowed_mentions.parse[%d]", i), "is %s, not roles, users or everyone", show(t))
			}
		}
	}
	for _, k := range []string{"users", "roles"} {
		if ids, ok := am[k].([]any); ok && len(ids) > DiscordMaxMentionIDs {
			c.fail("allowed_mentions."+k, "has %d ids, over Discord's %d", len(ids), DiscordMaxMentionIDs)
		}
	}
}

// checker gathers the problems of one body.
type checker struct {
	errs []error
}

func (c *checker) fail(path, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	c.errs = append(c.errs, errors.New(msg))
}

// max checks a string's length against a destination's limit.
func (c *checker) max(path, s string, limit int) {
	if n := units(s); n > limit {
		c.fail(path, "is %d characters, over the limit of %d", n, limit)
	}
}

// maxString checks that v is a string within limit.
func (c *checker) maxString(path string, v any, limit int) {
	s, ok := v.(string)
	if !ok {
		c.fail(path, "is %s, not a string", kind(v))
		return
	}
	c.max(path, s, limit)
}

// requiredString checks that v is a non-empty string within limit.
func (c *checker) requiredString(path string, v any, limit int) {
	s, ok := v.(string)
	switch {
	case !ok:
		c.fail(path, "is %s: a non-empty string is required", kind(v))
	case s == "":
		c.fail(path, "is empty: a non-empty string is required")
	default:
		c.max(path, s, limit)
	}
}

// discordString is requiredString, and v not only spaces: Discord trims
// an embed's texts and refuses a blank field name or value, footer text or
// author name (400 Invalid Form Body), a no-break space too; its page
// says only "required".
func (c *checker) discordString(path string, v any, limit int) {
	if s, ok := v.(string); ok && s != "" && strings.TrimSpace(s) == "" {
		c.fail(path, "is %s, only spaces: Discord requires a text that is not blank", show(v))
		return
	}
	c.requiredString(path, v, limit)
}

func (c *checker) err(dest string) error {
	if len(c.errs) == 0 {
		return nil
	}
	return fmt.Errorf("%s: %w", dest, errors.Join(c.errs...))
}

// object decodes a body that must be exactly one JSON object, numbers as
// json.Number.
func object(body []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one JSON value")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("the body is %s, not a JSON object", kind(v))
	}
	return m, nil
}

// units is a text's length in UTF-16 code units.
func units(s string) int {
	n := 0
	for _, r := range s {
		n += utf16.RuneLen(r)
	}
	return n
}

// kind names a decoded JSON value's type.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null or missing"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// show is a decoded value for an error message, bounded.
func show(v any) string {
	if v == nil {
		return "null or missing"
	}
	b, _ := json.Marshal(v)
	if r := []rune(string(b)); len(r) > 60 {
		return string(r[:60]) + "…"
	}
	return string(b)
}
