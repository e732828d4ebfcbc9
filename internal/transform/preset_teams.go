package transform

// Teams takes the Bot Framework message with one Adaptive Card attached,
// both from its Workflows webhooks ("Post to a channel when a webhook
// request is received", which loops over attachments) and from the legacy
// Office 365 incoming webhook connector. Teams refuses a message over
// 28 KB; the bounds below keep a card far under it (about 6 KB at most).
const (
	teamsCardType    = "application/vnd.microsoft.card.adaptive"
	teamsCardSchema  = "http://adaptivecards.io/schemas/adaptive-card.json"
	teamsCardVersion = "1.4"
	teamsFactValue   = maxValue
)

// teamsMessage is the body of a Teams webhook post.
//
// Summary is the Bot Framework activity's summary, which Teams shows as
// the notification and activity-feed preview of a card posted through the
// legacy connector (without it the preview reads "Card", as Alertmanager
// and Grafana users found). There is no top-level "text": an activity's
// text is shown as a message of its own above the card, repeating it.
// Workflows read the attachments alone, and ignore both.
type teamsMessage struct {
	Type        string            `json:"type"`
	Summary     string            `json:"summary"`
	Attachments []teamsAttachment `json:"attachments"`
}

type teamsAttachment struct {
	ContentType string    `json:"contentType"`
	ContentURL  *string   `json:"contentUrl"` // null, as Teams' examples send it
	Content     teamsCard `json:"content"`
}

type teamsCard struct {
	Schema  string         `json:"$schema"`
	Type    string         `json:"type"`
	Version string         `json:"version"`
	Body    []teamsElement `json:"body"`
}

// teamsElement is a TextBlock (text) or a FactSet (facts).
type teamsElement struct {
	Type     string      `json:"type"`
	Text     string      `json:"text,omitempty"`
	Weight   string      `json:"weight,omitempty"`
	Size     string      `json:"size,omitempty"`
	Color    string      `json:"color,omitempty"`
	IsSubtle bool        `json:"isSubtle,omitempty"`
	Wrap     bool        `json:"wrap,omitempty"`
	Facts    []teamsFact `json:"facts,omitempty"`
}

type teamsFact struct {
	Title string `json:"title"`
	Value string `json:"value"`
}

// teams lays an event out as an Adaptive Card: the title in bold (in the
// warning or attention colour for SLA events), the detail, the facts as a
// FactSet and a subtle line with the event's name, id and time.
func teams(e *Envelope) (any, error) {
	m := describe(e)
	title := teamsElement{Type: "TextBlock", Text: teamsText(m.title, maxTitle*2), Weight: "Bolder", Size: "Medium", Wrap: true}
	switch m.level {
	case levelWarning:
		title.Color = "Warning"
	case levelAlert:
		title.Color = "Attention"
	}
	body := []teamsElement{title}
	if m.detail != "" {
		body = append(body, teamsElement{Type: "TextBlock", Text: teamsText(m.detail, maxDetail), Wrap: true})
	}
	if len(m.facts) > 0 {
		set := teamsElement{Type: "FactSet"}
		for _, f := range m.facts {
			set.Facts = append(set.Facts, teamsFact{Title: teamsText(f.label, maxLabel), Value: teamsText(f.value, teamsFactValue)})
		}
		body = append(body, set)
	}
	body = append(body, teamsElement{Type: "TextBlock", Text: joinFooter(m.footer(true)), Size: "Small", IsSubtle: true, Wrap: true})
	return teamsMessage{
		Type:    "message",
		Summary: teamsText(m.summary, maxTitle*2),
		Attachments: []teamsAttachment{{
			ContentType: teamsCardType,
			Content:     teamsCard{Schema: teamsCardSchema, Type: "AdaptiveCard", Version: teamsCardVersion, Body: body},
		}},
	}, nil
}

// teamsText neutralises links in s and cuts it to max units.
func teamsText(s string, max int) string { return clip(noLinks.Replace(s), max) }
