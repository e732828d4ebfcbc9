package transform

// Slack's limits on a message posted to an incoming webhook, in
// characters (we count UTF-16 units, see units): Block Kit's section text
// and fields, and the fallback text (Slack truncates longer ones itself;
// this keeps the notification readable).
const (
	slackSectionText   = 3000
	slackFieldText     = 2000
	slackSectionFields = 10
	slackBlocks        = 50
	slackText          = 3000
	slackContextText   = 2000
)

// slackMessage is an incoming webhook's body: text, the notification and
// fallback text, and blocks, what the channel shows.
type slackMessage struct {
	Text   string       `json:"text"`
	Blocks []slackBlock `json:"blocks"`
}

// slackBlock is a section (text and fields) or a context (elements).
type slackBlock struct {
	Type     string         `json:"type"`
	Text     *slackTextObj  `json:"text,omitempty"`
	Fields   []slackTextObj `json:"fields,omitempty"`
	Elements []slackTextObj `json:"elements,omitempty"`
}

type slackTextObj struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

func mrkdwn(s string) slackTextObj { return slackTextObj{Type: "mrkdwn", Text: s} }

// slack lays an event out for a Slack incoming webhook: the summary as
// the text, a section with the title in bold and the detail, a section of
// fields with the facts, and a context line with the event's name, id and
// time.
func slack(e *Envelope) (any, error) {
	m := describe(e)
	out := slackMessage{Text: slackEsc(m.summary, slackText)}

	head := "*" + slackEsc(m.title, maxTitle*2) + "*"
	if m.detail != "" {
		head += "\n" + slackEsc(m.detail, slackSectionText-units(head)-1)
	}
	out.Blocks = append(out.Blocks, slackBlock{Type: "section", Text: ptr(mrkdwn(head))})

	// A section holds at most ten fields; the facts are fewer in practice,
	// more sections take any more (within the blocks' limit).
	for facts := m.facts; len(facts) > 0 && len(out.Blocks) < slackBlocks-1; {
		n := min(len(facts), slackSectionFields)
		b := slackBlock{Type: "section"}
		for _, f := range facts[:n] {
			label := "*" + slackEsc(f.label, maxLabel*2) + "*\n"
			b.Fields = append(b.Fields, mrkdwn(label+slackEsc(f.value, slackFieldText-units(label))))
		}
		out.Blocks = append(out.Blocks, b)
		facts = facts[n:]
	}

	// Each part is at most maxFooter/3 units before escaping: the line
	// stays within the context's limit.
	parts := m.footer(true)
	for i, p := range parts {
		parts[i] = slackEsc(p, slackContextText/4)
	}
	ctx := mrkdwn(joinFooter(parts))
	out.Blocks = append(out.Blocks, slackBlock{Type: "context", Elements: []slackTextObj{ctx}})
	return out, nil
}

// slackEsc escapes &, < and > as Slack's formatting requires (they are
// its control characters: an event's "<!channel>" must not notify a
// channel) and cuts the result to max units.
func slackEsc(s string, max int) string {
	return clipEscaped(s, max, slackRune)
}

func ptr[T any](v T) *T { return &v }
