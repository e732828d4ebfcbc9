package transform

import (
	"strings"
	"time"
)

// Discord's limits on an execute-webhook body and its embeds, in
// characters (we count UTF-16 units, see units).
const (
	discordContent     = 2000
	discordTitle       = 256
	discordDescription = 4096
	discordFields      = 25
	discordFieldName   = 256
	discordFieldValue  = 1024
	discordFooterText  = 2048
	// discordEmbedTotal bounds the title, description, field names and
	// values, footer and author of all of a message's embeds together.
	discordEmbedTotal = 6000
)

// The embed colours (0xRRGGBB): red for a breached SLA, amber for one at
// risk, green for something new, grey for something gone, blurple else.
const (
	discordRed    = 0xED4245
	discordAmber  = 0xFFBF00
	discordGreen  = 0x57F287
	discordGrey   = 0x95A5A6
	discordPurple = 0x5865F2
)

// discordMessage is an execute-webhook body.
type discordMessage struct {
	Content         string                 `json:"content"`
	Embeds          []discordEmbed         `json:"embeds"`
	AllowedMentions discordAllowedMentions `json:"allowed_mentions"`
}

type discordEmbed struct {
	Title       string         `json:"title"`
	Description string         `json:"description,omitempty"`
	Color       int            `json:"color"`
	Fields      []discordField `json:"fields,omitempty"`
	Footer      discordFooter  `json:"footer"`
	Timestamp   string         `json:"timestamp,omitempty"`
}

type discordField struct {
	Name   string `json:"name"`
	Value  string `json:"value"`
	Inline bool   `json:"inline"`
}

type discordFooter struct {
	Text string `json:"text"`
}

// discordAllowedMentions with an empty parse list lets no mention in the
// message notify anyone, whatever its text says.
type discordAllowedMentions struct {
	Parse []string `json:"parse"`
}

// discord lays an event out for a Discord webhook: the summary as the
// content (what a notification shows), and one embed coloured by the
// event's urgency with the title, the facts as inline fields, the detail,
// and a footer with the event's name and id at the event's time.
func discord(e *Envelope) (any, error) {
	m := describe(e)
	embed := discordEmbed{Title: discordText(m.title, discordTitle), Color: discordColor(m.level)}
	// Discord shows the embed's timestamp in the footer, in the reader's
	// time zone; the footer says the time itself only when there is none.
	t, err := time.Parse(time.RFC3339, m.timestamp)
	if err == nil {
		embed.Timestamp = t.UTC().Format(time.RFC3339Nano)
	}
	embed.Footer.Text = discordText(joinFooter(m.footer(err != nil)), discordFooterText)
	// The embed's texts share one budget: the facts come before the
	// detail, which takes what is left.
	budget := discordEmbedTotal - units(embed.Title) - units(embed.Footer.Text)
	for _, f := range m.facts {
		if len(embed.Fields) == discordFields {
			break
		}
		name := discordText(f.label, discordFieldName)
		value := discordText(f.value, min(discordFieldValue, budget-units(name)))
		if value == "" || value == ellipsis {
			break
		}
		embed.Fields = append(embed.Fields, discordField{Name: name, Value: value, Inline: true})
		budget -= units(name) + units(value)
	}
	embed.Description = discordText(m.detail, min(discordDescription, budget))
	return discordMessage{
		Content:         discordText(m.summary, discordContent),
		Embeds:          []discordEmbed{embed},
		AllowedMentions: discordAllowedMentions{Parse: []string{}},
	}, nil
}

func discordColor(l level) int {
	switch l {
	case levelAlert:
		return discordRed
	case levelWarning:
		return discordAmber
	case levelNew:
		return discordGreen
	case levelGone:
		return discordGrey
	}
	return discordPurple
}

// discordMention are the texts Discord reads as a mention: @everyone,
// @here, and <@id>, <@!id>, <@&role>. allowed_mentions already keeps them
// from notifying anyone; a zero-width space after the "@" also keeps them
// from showing as mentions, so the channel reads the event's text as it
// was written.
var discordMention = strings.NewReplacer(
	"@everyone", "@\u200beveryone",
	"@here", "@\u200bhere",
	"<@", "<@\u200b",
)

// discordText neutralises mentions and links in s and cuts it to max
// units.
func discordText(s string, max int) string {
	return clip(noLinks.Replace(discordMention.Replace(s)), max)
}
