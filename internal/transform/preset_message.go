package transform

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"

	"github.com/dzdesk/dzhook/internal/catalog"
)

// The presets share one reading of an envelope, a message: what a person
// in a chat channel wants to see of the event. Each preset then lays the
// message out in its destination's shape, escaping and cutting its texts
// to that destination's rules. Reading the event once keeps the three
// destinations saying the same thing.
//
// An event's data is whatever the stream sent: a field may be missing,
// null, of another type than documented, or very long. The message shows
// what is there, leaves out what is not, and never fails: a preset always
// has something to send.

// level is how urgent an event is; the presets colour by it.
type level int

const (
	levelInfo    level = iota // changes to a request or a user
	levelNew                  // something was created
	levelGone                 // something was deleted or deactivated
	levelWarning              // sla.warning
	levelAlert                // sla.breach
)

// fact is a label and its value, both single texts; value is never empty.
type fact struct {
	label, value string
}

// message is an event read for people.
type message struct {
	level level
	// title says what happened and to what: "⚠️ SLA at risk: req_123".
	title string
	// summary is the title with the event's key figures, on one line: the
	// notification text ("⚠️ SLA at risk: req_123 (resolution, 2h 30m
	// left)").
	summary string
	// detail is a longer text of the event's own, if any: a request's
	// title, a comment's body. It may hold newlines.
	detail string
	facts  []fact
	// event, id and timestamp are the envelope's, as they came.
	event, id, timestamp string
}

// Bounds on what a message takes from an event's data, whatever the
// destination: a custom event's data can be of any size.
const (
	// maxCustomFacts is how many of a custom event's top-level data
	// fields are shown; the number of the others is said in the detail.
	maxCustomFacts = 10
	// maxValue bounds one fact's value before a destination's own limit.
	maxValue = 500
	// maxNested bounds a nested object or list written as JSON.
	maxNested = 200
	// maxLabel bounds a fact's label (a custom event's field name).
	maxLabel = 100
	// maxTitle bounds a title (it holds an id or a name from the data).
	maxTitle = 150
	// maxDetail bounds a detail.
	maxDetail = 2000
	// maxQuote bounds what a summary quotes of a request's title or a
	// comment.
	maxQuote = 100
	// maxFooter bounds the event id, name and time as shown in a footer.
	maxFooter = 300
)

// describe reads an envelope into a message. It never fails.
func describe(e *Envelope) message {
	d := fields(e.Data)
	m := message{event: e.Event, id: e.ID, timestamp: e.Timestamp}
	var (
		extra []string // the summary's figures, in parentheses
		quote string   // what the summary quotes after a dash
	)
	switch e.Event {
	case catalog.RequestCreated:
		m.level = levelNew
		m.title = titled("🆕 New request", d.ref("id"))
		m.detail = d.long("title")
		quote = m.detail
		m.facts = d.requestFacts()
	case catalog.RequestUpdated:
		m.title = titled("✏️ Request updated", d.ref("id"))
		m.detail = d.long("title")
		quote = m.detail
		m.facts = d.requestFacts()
	case catalog.RequestStatusChanged:
		m.title = titled("🔄 Status changed", d.ref("id"))
		from, to := d.text("previousStatus"), d.text("newStatus")
		if change := arrow(from, to); change != "" {
			extra = append(extra, change)
			m.facts = append(m.facts, fact{"Status", change})
		}
		m.facts = d.add(m.facts, "Changed by", "changedBy")
	case catalog.RequestAssigned:
		to, assigned := d.person("assignedTo")
		if assigned {
			m.title = titled("👤 Request assigned", d.ref("id"))
			extra = append(extra, "to "+to)
		} else {
			// request.assigned fires when the assignee is removed too.
			m.title = titled("👤 Request unassigned", d.ref("id"))
		}
		m.detail = d.long("title")
		quote = m.detail
		m.facts = d.requestFacts()
		if _, ok := d["previousAssignedTo"]; ok {
			m.facts = append(m.facts, fact{"Previously", d.assignee("previousAssignedTo")})
		}
	case catalog.RequestCommented:
		m.title = titled("💬 New comment", d.ref("requestId"))
		m.detail = d.long("body")
		quote = m.detail
		m.facts = d.add(m.facts, "Author", "author")
		if internal, ok := d["internal"].(bool); ok {
			v := "public"
			if internal {
				v = "internal note"
				extra = append(extra, "internal")
			}
			m.facts = append(m.facts, fact{"Visibility", v})
		}
		m.facts = d.add(m.facts, "Comment", "id")
	case catalog.RequestDeleted:
		m.level = levelGone
		m.title = titled("🗑️ Request deleted", d.ref("id"))
		m.detail = d.long("title")
		quote = m.detail
		m.facts = d.requestFacts()
	case catalog.SLAWarning, catalog.SLABreach:
		m.level, m.title = levelWarning, titled("⚠️ SLA at risk", d.ref("requestId"))
		if e.Event == catalog.SLABreach {
			m.level, m.title = levelAlert, titled("🚨 SLA breached", d.ref("requestId"))
		}
		extra = d.slaFigures(e.Event)
		m.facts = d.slaFacts()
	case catalog.UserCreated:
		m.level = levelNew
		m.title = titled("👋 User created", d.userName())
		m.facts = d.userFacts()
	case catalog.UserUpdated:
		m.title = titled("✏️ User updated", d.userName())
		m.facts = d.userFacts()
	case catalog.UserDeactivated:
		m.level = levelGone
		m.title = titled("🚫 User deactivated", d.userName())
		m.facts = d.userFacts()
	default:
		name := oneLine(e.Event)
		if name == "" {
			name = "(unnamed event)"
		}
		m.title = titled("📣 Event", name)
		m.facts, m.detail = d.customFacts()
	}
	m.summary = m.title
	if quote = clip(oneLine(quote), maxQuote); quote != "" {
		m.summary += " — " + quote
	}
	if len(extra) > 0 {
		for i, x := range extra {
			extra[i] = clip(oneLine(x), maxTitle) // the summary is one line
		}
		m.summary += " (" + strings.Join(extra, ", ") + ")"
	}
	return m
}

// footer is what identifies the event, for a line in small print:
// "DZDESK", the event's name, its id and (withTime) its time, each
// bounded and on one line (empty ones left out). Destinations escape each
// part.
func (m message) footer(withTime bool) []string {
	parts := []string{"DZDESK"}
	shown := []string{m.event, m.id}
	if withTime {
		shown = append(shown, when(m.timestamp))
	}
	for _, p := range shown {
		if p = clip(oneLine(p), maxFooter/3); p != "" {
			parts = append(parts, p)
		}
	}
	return parts
}

// footerSep joins the parts of a footer.
const footerSep = " · "

// joinFooter is a footer's parts on one line.
func joinFooter(parts []string) string { return strings.Join(parts, footerSep) }

// titled is "label: subject", or the label alone without a subject.
func titled(label, subject string) string {
	if subject == "" {
		return label
	}
	return label + ": " + clip(subject, maxTitle)
}

// arrow is "from → to" with what is known of the two.
func arrow(from, to string) string {
	switch {
	case from != "" && to != "":
		return from + " → " + to
	case to != "":
		return "→ " + to
	case from != "":
		return from + " → ?"
	}
	return ""
}

// fields is an event's data, read leniently.
type fields map[string]any

// text is the field as a text, "" when it is missing, null or empty.
// Scalars of any type are shown as they came; an object or a list is
// shown as bounded JSON.
func (d fields) text(key string) string {
	return show(d[key])
}

// long is like text, for a detail: a string is bounded by maxDetail
// rather than maxValue.
func (d fields) long(key string) string {
	if s, ok := d[key].(string); ok {
		return clip(trim(s), maxDetail)
	}
	return d.text(key)
}

// ref is the field as a one-line reference for a title: an id or a name.
func (d fields) ref(key string) string {
	switch d[key].(type) {
	case string, json.Number:
		return oneLine(d.text(key))
	}
	return ""
}

// person is a person field as a text ("Jane Doe (jane@company.com)"),
// and whether there was one.
func (d fields) person(key string) (string, bool) {
	s := show(d[key])
	return s, s != ""
}

// assignee is like person, but says "unassigned" for a null or missing
// value.
func (d fields) assignee(key string) string {
	if s, ok := d.person(key); ok {
		return s
	}
	return "unassigned"
}

// add appends a fact for the field when it has a value.
func (d fields) add(facts []fact, label, key string) []fact {
	if v := d.text(key); v != "" {
		facts = append(facts, fact{label, v})
	}
	return facts
}

// addTime appends a fact for a time field, shown in UTC to the minute.
func (d fields) addTime(facts []fact, label, key string) []fact {
	if v := d.text(key); v != "" {
		facts = append(facts, fact{label, when(v)})
	}
	return facts
}

// requestFacts are a request's status, priority and people.
func (d fields) requestFacts() []fact {
	var facts []fact
	facts = d.add(facts, "Status", "status")
	facts = d.add(facts, "Priority", "priority")
	facts = d.add(facts, "Requester", "requester")
	if _, ok := d["assignedTo"]; ok {
		facts = append(facts, fact{"Assignee", d.assignee("assignedTo")})
	}
	facts = d.add(facts, "Changed by", "changedBy")
	return facts
}

// slaFacts are an SLA event's figures.
func (d fields) slaFacts() []fact {
	var facts []fact
	facts = d.add(facts, "Request", "requestId")
	facts = d.add(facts, "SLA", "slaType")
	facts = d.addTime(facts, "Target", "targetTime")
	if v := d.percent("percentElapsed"); v != "" {
		facts = append(facts, fact{"Elapsed", v})
	}
	facts = d.add(facts, "Time remaining", "timeRemaining")
	facts = d.addTime(facts, "Breached at", "breachedAt")
	return facts
}

// slaFigures are the summary's figures of an SLA event: its type and the
// time left (a warning) or the moment it was breached.
func (d fields) slaFigures(event string) []string {
	var out []string
	if v := oneLine(d.text("slaType")); v != "" {
		out = append(out, clip(v, maxTitle))
	}
	if event == catalog.SLAWarning {
		if v := oneLine(d.text("timeRemaining")); v != "" {
			out = append(out, clip(v, maxTitle)+" left")
		} else if v := d.percent("percentElapsed"); v != "" {
			out = append(out, clip(v, maxTitle)+" elapsed")
		}
	} else if v := oneLine(d.text("breachedAt")); v != "" {
		out = append(out, "breached "+clip(when(v), maxTitle))
	}
	return out
}

// percent is a number field (or a text that is a number) with a "%", or
// the field as it came when it is not a number.
func (d fields) percent(key string) string {
	v := d.text(key)
	if _, err := strconv.ParseFloat(v, 64); err == nil {
		return v + "%"
	}
	return v
}

// userName is how a user event names its user: the name, else the
// email, else the id.
func (d fields) userName() string {
	for _, k := range []string{"name", "email", "id"} {
		if v := d.ref(k); v != "" {
			return v
		}
	}
	return ""
}

// userFacts are a user's email, role, state and id.
func (d fields) userFacts() []fact {
	var facts []fact
	facts = d.add(facts, "Name", "name")
	facts = d.add(facts, "Email", "email")
	facts = d.add(facts, "Role", "role")
	if active, ok := d["active"].(bool); ok {
		v := "active"
		if !active {
			v = "deactivated"
		}
		facts = append(facts, fact{"State", v})
	} else {
		facts = d.add(facts, "State", "active")
	}
	facts = d.add(facts, "User", "id")
	return facts
}

// customFacts shows the data of an event of unknown shape: its top-level
// fields in name order, up to maxCustomFacts of them, and a detail that
// says how many more there are.
func (d fields) customFacts() ([]fact, string) {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	slices.Sort(keys) // map order is random; the body must not be
	var facts []fact
	shown := 0
	for _, k := range keys {
		if shown == maxCustomFacts {
			break
		}
		shown++
		label := clip(oneLine(k), maxLabel)
		if label == "" {
			label = `""`
		}
		v := show(d[k])
		if v == "" {
			v = "null"
			if _, ok := d[k].(string); ok { // "", or only spaces
				v = `""`
			}
		}
		facts = append(facts, fact{label, v})
	}
	var detail string
	if more := len(keys) - shown; more > 0 {
		detail = fmt.Sprintf("%d more data fields not shown.", more)
	}
	return facts, detail
}

// show is a value of the data as a text for people, bounded: "" for null
// or a string with nothing to show (see trim), a person as "Name (email)", other objects and lists
// as JSON.
func show(v any) string {
	var s string
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		s = trim(v)
	case json.Number:
		s = v.String()
	case bool:
		if v {
			return "yes"
		}
		return "no"
	case map[string]any:
		s = personText(v)
		if s == "" {
			s = clip(compact(v), maxNested)
		}
	case []any:
		s = clip(compact(v), maxNested)
	default:
		s = fmt.Sprint(v)
	}
	return clip(s, maxValue)
}

// personText is a person object ({id, email, name}) as "Name (email)",
// "email", "Name" or "id"; "" when the object has none of those as text.
func personText(p map[string]any) string {
	str := func(k string) string {
		switch v := p[k].(type) {
		case string:
			return oneLine(v)
		case json.Number:
			return v.String()
		}
		return ""
	}
	name, email, id := str("name"), str("email"), str("id")
	switch {
	case name != "" && email != "":
		return clip(name, maxTitle) + " (" + clip(email, maxTitle) + ")"
	case name != "":
		return name
	case email != "":
		return email
	}
	return id
}

// compact is a value as JSON on one line.
func compact(v any) string {
	b, err := marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	return string(b)
}

// when shows an RFC 3339 time in UTC to the minute ("2024-01-15 14:30
// UTC"), and anything else as it came.
func when(s string) string {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return oneLine(s)
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

// oneLine replaces line breaks, tabs and what the destinations do not
// show (see shown) with spaces, and trims.
func oneLine(s string) string {
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' {
			return ' '
		}
		return shown(r)
	}, s))
}

// trim is s with what the destinations do not show made spaces (see
// shown), then trimmed. A text must be cleaned before it is trimmed: a
// "\u0001" trimmed first became " " later, and Discord refuses a field
// whose name or value is blank (400, a delivery failed for good), while
// an empty value is left out or shown as "" like any empty string.
func trim(s string) string { return strings.TrimSpace(strings.Map(shown, s)) }

// shown is r as the destinations get it: a control character other than
// a line break or a tab, and U+2028 and U+2029, become a space. The
// destinations show none of them, and JSON writes each as a six-byte
// \uXXXX, which took a Teams card of bounded characters past Teams'
// 28 KB.
func shown(r rune) rune {
	if r == '\u2028' || r == '\u2029' || unicode.IsControl(r) && r != '\n' && r != '\t' {
		return ' '
	}
	return r
}

// ellipsis ends a text that was cut.
const ellipsis = "…"

// units is a text's length as the destinations count it against their
// limits: UTF-16 code units, JavaScript's string length. It is never less
// than the number of code points, so a text within a limit in units is
// within it whichever of the two a destination counts.
func units(s string) int {
	n := 0
	for _, r := range s {
		n += utf16.RuneLen(r)
	}
	return n
}

// clip cuts s to at most max units, ending it with "…" when it was cut.
func clip(s string, max int) string {
	return clipEscaped(s, max, nil)
}

// noLinks keeps Markdown from making a link of an event's text: Teams'
// cards and Discord render [text](url), so a request's title written by
// a requester could show any text over any address in the support
// channel. A zero-width space between "]" and "(" breaks the syntax and
// shows the text as it was written. (Slack's links are <url|text>, which
// slackEsc escapes.)
var noLinks = strings.NewReplacer("](", "]\u200b(")

// clipEscaped escapes s with esc (nil: none) and cuts the result to at
// most max units, between two escaped characters (never inside "&amp;"),
// ending it with "…" when it was cut. What the destinations do not show
// becomes a space (shown); the texts come trimmed of it (trim, oneLine).
func clipEscaped(s string, max int, esc func(rune) string) string {
	if max <= 0 {
		return ""
	}
	var b strings.Builder
	n, cut := 0, 0 // cut: the longest prefix that leaves room for "…"
	for _, r := range s {
		r = shown(r)
		piece := string(r)
		if esc != nil {
			piece = esc(r)
		}
		w := units(piece)
		if n+w > max {
			return b.String()[:cut] + ellipsis
		}
		b.WriteString(piece)
		n += w
		if n <= max-units(ellipsis) {
			cut = b.Len()
		}
	}
	return b.String()
}
