package transform

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/internal/transform/transformtest"
)

// presetFormats are the formats with a preset, and the validator of each
// destination.
var presetFormats = []struct {
	format   string
	validate func([]byte) error
}{
	{FormatSlack, transformtest.ValidateSlack},
	{FormatTeams, transformtest.ValidateTeams},
	{FormatDiscord, transformtest.ValidateDiscord},
}

// sampleTime is the fixed time of the sample envelopes.
var sampleTime = time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)

// sampleEvents are the catalog's events and one custom event.
func sampleEvents() []string {
	var names []string
	for _, e := range catalog.Builtin() {
		names = append(names, e.Name)
	}
	return append(names, "order.shipped")
}

func applyPreset(t *testing.T, format string, raw []byte) []byte {
	t.Helper()
	tr, err := New("", format)
	if err != nil {
		t.Fatal(err)
	}
	out, err := tr.Apply(raw)
	if err != nil {
		t.Fatalf("%s: Apply(%s): %v", format, raw, err)
	}
	return out
}

// decode reads a preset's body for the assertions below.
func decode(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	return m
}

// The seed's Slack use case: an sla.warning says "⚠️ SLA at risk:
// req_123" with its figures, in every destination's notification text.
func TestPresetSLAWarningSummary(t *testing.T) {
	raw := mapping.Sample(catalog.SLAWarning, "whk_sample", sampleTime)
	want := "⚠️ SLA at risk: req_123 (resolution, 2h 30m left)"
	for _, tc := range []struct {
		format string
		field  string
	}{{FormatSlack, "text"}, {FormatTeams, "summary"}, {FormatDiscord, "content"}} {
		got := decode(t, applyPreset(t, tc.format, raw))[tc.field]
		if got != want {
			t.Errorf("%s %s: got %q, want %q", tc.format, tc.field, got, want)
		}
	}
	// The figures themselves are shown as facts.
	body := string(applyPreset(t, FormatSlack, raw))
	for _, want := range []string{`*SLA*\nresolution`, `*Target*\n2024-01-15 17:00 UTC`, `*Elapsed*\n75%`, `*Time remaining*\n2h 30m`} {
		if !strings.Contains(body, want) {
			t.Errorf("slack: %s does not show %s", body, want)
		}
	}
}

// Every event gives a body (never a skip) that its destination takes, and
// shows the request's or user's id and people where the event has them.
func TestPresetEveryEvent(t *testing.T) {
	shows := map[string][]string{
		catalog.RequestCreated:       {"req_123", "Cannot access email", "open", "high", "john@company.com", "unassigned"},
		catalog.RequestUpdated:       {"req_123", "in_progress", "jane@company.com"},
		catalog.RequestStatusChanged: {"req_123", "open → in_progress", "jane@company.com"},
		catalog.RequestAssigned:      {"req_123", "to jane@company.com", "Previously"},
		catalog.RequestCommented:     {"req_123", "Looking into it.", "jane@company.com", "public"},
		catalog.RequestDeleted:       {"req_123", "deleted", "closed"},
		catalog.SLAWarning:           {"req_123", "resolution", "75%", "2h 30m"},
		catalog.SLABreach:            {"req_123", "SLA breached", "Breached at"},
		catalog.UserCreated:          {"John Smith", "john@company.com", "requester", "active", "usr_123"},
		catalog.UserUpdated:          {"John Smith", "updated"},
		catalog.UserDeactivated:      {"John Smith", "deactivated"},
		"order.shipped":              {"order.shipped", "sample"},
	}
	for _, name := range sampleEvents() {
		raw := mapping.Sample(name, "whk_sample", sampleTime)
		for _, p := range presetFormats {
			body := applyPreset(t, p.format, raw)
			if err := p.validate(body); err != nil {
				t.Errorf("%s %s: %v\n%s", p.format, name, err, body)
			}
			for _, want := range append(shows[name], "whk_sample") {
				if !strings.Contains(string(body), want) {
					t.Errorf("%s %s: %s does not show %q", p.format, name, body, want)
				}
			}
		}
	}
}

// Slack's control characters in the data are escaped: an event cannot
// notify a channel or forge a link.
func TestPresetSlackEscapes(t *testing.T) {
	raw := envelope(catalog.RequestCreated, `{"id":"req_1","title":"<!channel> ping & <https://evil.example|click>","requester":{"email":"a<b>@x"},"status":"open"}`)
	body := applyPreset(t, FormatSlack, raw)
	walkStrings(decode(t, body), func(path, s string) {
		if strings.ContainsAny(s, "<>") {
			t.Errorf("slack %s: %q holds an unescaped < or >", path, s)
		}
		if strings.Contains(strings.NewReplacer("&amp;", "", "&lt;", "", "&gt;", "").Replace(s), "&") {
			t.Errorf("slack %s: %q holds an unescaped &", path, s)
		}
	})
	if want := `&lt;!channel&gt; ping &amp; &lt;https://evil.example|click&gt;`; !strings.Contains(string(body), want) {
		t.Errorf("slack: got %s, want it to hold %s", body, want)
	}
}

// Discord neither notifies nor shows mentions written in the data.
func TestPresetDiscordMentions(t *testing.T) {
	raw := envelope(catalog.RequestCommented, `{"requestId":"@everyone","body":"@here look <@123456> <@&987> <@!42>","author":{"name":"@everyone"}}`)
	body := applyPreset(t, FormatDiscord, raw)
	m := decode(t, body)
	am, _ := m["allowed_mentions"].(map[string]any)
	if parse, ok := am["parse"].([]any); !ok || len(parse) != 0 {
		t.Errorf("discord allowed_mentions: got %v, want {\"parse\": []}", m["allowed_mentions"])
	}
	walkStrings(m, func(path, s string) {
		for _, mention := range []string{"@everyone", "@here", "<@1", "<@&", "<@!"} {
			if strings.Contains(s, mention) {
				t.Errorf("discord %s: %q holds the mention %s", path, s, mention)
			}
		}
	})
	if want := "@\u200beveryone"; !strings.Contains(m["content"].(string), want) {
		t.Errorf("discord content %q: want the mention kept readable as %q", m["content"], want)
	}
}

// Long texts are cut with "…" to each destination's limits, counted in
// UTF-16 units, and never inside a Slack entity.
func TestPresetLimits(t *testing.T) {
	long := func(unit string, n int) string { return strings.Repeat(unit, n) }
	bodies := map[string]string{
		"ascii":    long("a", 10000),
		"emoji":    long("😀", 5000),
		"entities": long("&<>", 3000),
		"mixed":    long("é😀&x", 3000),
	}
	for name, text := range bodies {
		q, _ := json.Marshal(text)
		raw := envelope(catalog.RequestCommented, fmt.Sprintf(`{"requestId":%s,"body":%s,"author":{"name":%s,"email":%s},"id":%s}`, q, q, q, q, q))
		for _, p := range presetFormats {
			body := applyPreset(t, p.format, raw)
			if err := p.validate(body); err != nil {
				t.Errorf("%s %s: %v", p.format, name, err)
			}
			if !strings.Contains(string(body), "…") {
				t.Errorf("%s %s: nothing was cut with …", p.format, name)
			}
			if len(body) > 32*1024 {
				t.Errorf("%s %s: %d bytes, want a bounded body", p.format, name, len(body))
			}
		}
		slack := decode(t, applyPreset(t, FormatSlack, raw))
		if n := units(slack["text"].(string)); n > slackText {
			t.Errorf("slack %s: text of %d units, over %d", name, n, slackText)
		}
	}
	// A custom event's data is shown up to maxCustomFacts fields, the
	// rest counted.
	var b strings.Builder
	b.WriteString("{")
	for i := range 100 {
		fmt.Fprintf(&b, `"f%03d":%q,`, i, long("v", 3000))
	}
	b.WriteString(`"z":1}`)
	raw := envelope("order.shipped", b.String())
	for _, p := range presetFormats {
		body := applyPreset(t, p.format, raw)
		if err := p.validate(body); err != nil {
			t.Errorf("%s custom: %v", p.format, err)
		}
		if !strings.Contains(string(body), "91 more data fields not shown.") {
			t.Errorf("%s custom: does not count the fields not shown", p.format)
		}
		if strings.Contains(string(body), `f010`) {
			t.Errorf("%s custom: shows more than %d fields", p.format, maxCustomFacts)
		}
	}
}

// Data of other shapes than documented gives a message all the same: no
// error, no skip, a body the destination takes.
func TestPresetOddData(t *testing.T) {
	odd := []string{
		`{"id":"whk_1","event":"request.created","timestamp":"2024-01-15T14:30:00Z","data":{}}`,
		`{"id":"whk_1","event":"request.created","timestamp":"2024-01-15T14:30:00Z","data":null}`,
		`{"id":"whk_1","event":"request.created"}`,
		`{}`,
		`{"event":"sla.warning","data":{"requestId":42,"slaType":["a"],"targetTime":"soon","percentElapsed":"75","timeRemaining":null}}`,
		`{"event":"sla.breach","data":{"requestId":{"nested":{"deep":[1,2,3]}},"breachedAt":12}}`,
		`{"event":"request.assigned","data":{"id":1e400,"title":{"a":1},"assignedTo":"bob","requester":5,"previousAssignedTo":[1]}}`,
		`{"event":"request.status_changed","data":{"newStatus":true}}`,
		`{"event":"request.commented","data":{"body":"","internal":"yes","author":null}}`,
		`{"event":"user.deactivated","data":{"active":"no","name":"  ","email":"\u0000\n\t"}}`,
		`{"event":"custom.thing","data":{"":"","null":null,"list":[{"a":"b"}],"text":"line\nbreak"}}`,
		`{"event":"","timestamp":"not a time","data":{"x":1}}`,
		`{"event":"request.updated","timestamp":"2024-01-15T14:30:00+02:00","data":{"title":"\u202etxet desrever"}}`,
	}
	for _, raw := range odd {
		for _, p := range presetFormats {
			body := applyPreset(t, p.format, []byte(raw))
			if err := p.validate(body); err != nil {
				t.Errorf("%s %s: %v\n%s", p.format, raw, err, body)
			}
		}
	}
	// A number where a string is expected is shown as it came.
	body := applyPreset(t, FormatSlack, []byte(`{"event":"request.created","data":{"id":123,"requester":{"id":7}}}`))
	for _, want := range []string{"New request: 123", `*Requester*\n7`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("slack: %s does not show %s", body, want)
		}
	}
	// A body that is not an envelope is an error, never a panic.
	for _, p := range presetFormats {
		tr, _ := New("", p.format)
		if _, err := tr.Apply([]byte(`{"event":5}`)); err == nil {
			t.Errorf("%s: a non-envelope gave no error", p.format)
		}
	}
}

// The same envelope gives the same bytes, whatever the order of a map's
// keys in memory.
func TestPresetDeterministic(t *testing.T) {
	var b strings.Builder
	b.WriteString("{")
	for i := range 40 {
		fmt.Fprintf(&b, `"k%d":%d,`, i, i)
	}
	b.WriteString(`"last":true}`)
	raws := [][]byte{envelope("order.shipped", b.String()), mapping.Sample(catalog.RequestAssigned, "whk_1", sampleTime)}
	for _, raw := range raws {
		for _, p := range presetFormats {
			first := applyPreset(t, p.format, raw)
			for range 20 {
				if got := applyPreset(t, p.format, raw); string(got) != string(first) {
					t.Fatalf("%s: got\n%s\nthen\n%s", p.format, first, got)
				}
			}
		}
	}
}

func TestClip(t *testing.T) {
	tests := []struct {
		s    string
		max  int
		want string
	}{
		{"abc", 3, "abc"},
		{"abcd", 3, "ab…"},
		{"😀😀", 4, "😀😀"},
		{"😀😀", 3, "😀…"},
		{"😀😀", 2, "…"},
		{"abc", 0, ""},
		{"", 5, ""},
	}
	for _, tc := range tests {
		if got := clip(tc.s, tc.max); got != tc.want {
			t.Errorf("clip(%q, %d): got %q, want %q", tc.s, tc.max, got, tc.want)
		}
	}
	// Slack's escaping counts: an entity is kept whole or dropped whole.
	escTests := []struct {
		s    string
		max  int
		want string
	}{
		{"a&b", 7, "a&amp;b"},
		{"a&b", 6, "a…"},
		{"a&bc", 7, "a&amp;…"},
		{"a&b", 5, "a…"},
		{"<<", 8, "&lt;&lt;"},
		{"<<", 7, "&lt;…"},
	}
	for _, tc := range escTests {
		if got := slackEsc(tc.s, tc.max); got != tc.want {
			t.Errorf("slackEsc(%q, %d): got %q, want %q", tc.s, tc.max, got, tc.want)
		}
	}
}

// envelope is an envelope of event with data (JSON).
func envelope(event, data string) []byte {
	return fmt.Appendf(nil, `{"id":"whk_test","event":%q,"timestamp":"2024-01-15T14:30:00Z","data":%s}`, event, data)
}

// walkStrings calls f with every string of a decoded JSON value.
func walkStrings(v any, f func(path, s string)) {
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case string:
			f(path, v)
		case map[string]any:
			for k, x := range v {
				walk(path+"."+k, x)
			}
		case []any:
			for i, x := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), x)
			}
		}
	}
	walk("", v)
}

// A comment's body is shown whole up to maxDetail, beyond a fact's bound.
func TestPresetLongComment(t *testing.T) {
	text := strings.Repeat("word ", 300) + "end."
	q, _ := json.Marshal(text)
	raw := envelope("request.commented", fmt.Sprintf(`{"requestId":"req_1","body":%s}`, q))
	for _, p := range presetFormats {
		if body := string(applyPreset(t, p.format, raw)); !strings.Contains(body, "word end.") {
			t.Errorf("%s: the comment's %d characters were cut: %s", p.format, len(text), body)
		}
	}
}

// The notification text is one line, whatever line breaks the data holds.
func TestPresetSummaryOneLine(t *testing.T) {
	raws := [][]byte{
		envelope("request.status_changed", `{"id":"req\n1","previousStatus":"open\nnow","newStatus":"in\r\nprogress"}`),
		envelope("request.assigned", `{"id":"req_1","title":"a\nb","assignedTo":{"name":"Jane\nDoe","email":"j@x"}}`),
		envelope("sla.warning", `{"requestId":"req_1","slaType":"reso\nlution","timeRemaining":"2h\n30m"}`),
	}
	for _, raw := range raws {
		for _, tc := range []struct{ format, field string }{{FormatSlack, "text"}, {FormatTeams, "summary"}, {FormatDiscord, "content"}} {
			got, _ := decode(t, applyPreset(t, tc.format, raw))[tc.field].(string)
			if strings.ContainsAny(got, "\r\n") {
				t.Errorf("%s %s: %q has a line break", tc.format, tc.field, got)
			}
		}
	}
}

// TestPresetsShowNoForgedLinks: a request's title written by a requester
// as a Markdown link shows as the text it is in Teams' card and in
// Discord (both render [text](url): any text could hide any address in
// the support channel). Slack's mrkdwn has no such syntax (its links are
// <url|text>, which the Slack preset escapes).
func TestPresetsShowNoForgedLinks(t *testing.T) {
	title := `Password expired: [Reset your DZDESK password](https://evil.example/phish)`
	q, _ := json.Marshal(title)
	raw := envelope("request.created", `{"id":"req_1","title":`+string(q)+`,"status":"open"}`)
	for _, format := range []string{FormatTeams, FormatDiscord} {
		body := string(applyPreset(t, format, raw))
		if strings.Contains(body, "](https://evil.example/phish)") {
			t.Errorf("%s: the title's Markdown link reaches the destination as a link:\n%s", format, body)
		}
		if !strings.Contains(body, "Reset your DZDESK password") {
			t.Errorf("%s: the title's text is not shown:\n%s", format, body)
		}
	}
}

// TestTeamsBodyUnder28KBWithControlCharacters: a custom event whose texts
// hold control characters (JSON writes each as a six-byte \u00XX) still
// gives a Teams card under Teams' 28 KB: they are shown as spaces.
func TestTeamsBodyUnder28KBWithControlCharacters(t *testing.T) {
	var b strings.Builder
	b.WriteString("{")
	for i := range 10 {
		key, _ := json.Marshal(fmt.Sprintf("k%02d", i) + strings.Repeat("\x01", 97))
		val, _ := json.Marshal("v" + strings.Repeat("\x01", 600) + "\u2028v")
		fmt.Fprintf(&b, "%s:%s,", key, val)
	}
	b.WriteString(`"z":1}`)
	for _, format := range []string{FormatTeams, FormatDiscord, FormatSlack} {
		body := applyPreset(t, format, envelope("order.shipped", b.String()))
		if strings.Contains(string(body), `\u0001`) || strings.Contains(string(body), `\u2028`) {
			t.Errorf("%s: control characters sent: %.300s", format, body)
		}
		if format == FormatTeams {
			if err := transformtest.ValidateTeams(body); err != nil {
				t.Errorf("teams body of %d bytes refused: %v", len(body), err)
			}
		}
	}
}

// TestPresetsSayUnassigned: request.assigned fires when the assignee is
// removed too; the presets said "Request assigned" with no one.
func TestPresetsSayUnassigned(t *testing.T) {
	raw := envelope("request.assigned", `{"id":"req_1","title":"Printer","status":"open","assignedTo":null,"previousAssignedTo":{"id":"usr_2","email":"jane@company.com"}}`)
	for _, format := range []string{FormatTeams, FormatDiscord, FormatSlack} {
		body := string(applyPreset(t, format, raw))
		if !strings.Contains(body, "Request unassigned") || strings.Contains(body, "Request assigned") {
			t.Errorf("%s: %s, want it said unassigned", format, body)
		}
	}
}

// TestPresetsSendNoBlankText: a text of control characters is empty, as
// an empty one is (left out, or shown as ""), in every preset. It was
// trimmed before its control characters became spaces, so a custom
// event's {"note":"\u0001","\u0002":"x"} gave Discord the fields
// {"name":"note","value":" "} and {"name":" ","value":"x"}, and a request
// titled "\u0007" the description " ": Discord refuses a blank field
// (400), a delivery failed for good.
func TestPresetsSendNoBlankText(t *testing.T) {
	raws := [][]byte{
		envelope("order.shipped", `{"note":"\u0001","\u0002":"x"}`),
		envelope("request.created", `{"id":"req_1","title":"\u0007","status":"\u0003\r\n","requester":{"name":"\u0001","email":"jane@company.com"}}`),
		envelope("request.commented", `{"requestId":"\u0085","body":"\u0001\n\u0002","author":{"name":"\u0000"}}`),
		[]byte(`{"id":"whk_test","event":"\u0005","timestamp":"2024-01-15T14:30:00Z","data":{"x":"\u2028"}}`),
		[]byte(`{"id":"\u0001","event":"sla.warning","timestamp":"\u0002","data":{"requestId":"req_1","slaType":"\u0003","percentElapsed":"\u0004","timeRemaining":"\u0006"}}`),
	}
	for _, raw := range raws {
		for _, p := range presetFormats {
			body := applyPreset(t, p.format, raw)
			if err := p.validate(body); err != nil {
				t.Errorf("%s %s: %v\n%s", p.format, raw, err, body)
			}
			walkStrings(decode(t, body), func(path, s string) {
				if s != "" && strings.TrimSpace(s) == "" {
					t.Errorf("%s %s: %s is %q, blank\n%s", p.format, raw, path, s, body)
				}
			})
		}
	}

	// What each destination shows of them.
	for _, tc := range []struct {
		format string
		raw    []byte
		want   []string
		not    []string
	}{
		{FormatDiscord, raws[0], []string{`{"name":"\"\"","value":"x","inline":true}`, `{"name":"note","value":"\"\"","inline":true}`}, nil},
		{FormatTeams, raws[0], []string{`{"title":"\"\"","value":"x"}`, `{"title":"note","value":"\"\""}`}, nil},
		{FormatSlack, raws[0], []string{`"*\"\"*\nx"`, `"*note*\n\"\""`}, nil},
		{FormatDiscord, raws[1], []string{`{"name":"Requester","value":"jane@company.com","inline":true}`}, []string{`"description"`, `"Status"`}},
		{FormatTeams, raws[1], []string{`{"title":"Requester","value":"jane@company.com"}`}, []string{`"Status"`}},
		{FormatSlack, raws[1], []string{`"*🆕 New request: req_1*"`}, []string{`Status`}},
		{FormatDiscord, raws[3], []string{`📣 Event: (unnamed event)`, `{"name":"x","value":"\"\"","inline":true}`}, nil},
	} {
		body := string(applyPreset(t, tc.format, tc.raw))
		for _, w := range tc.want {
			if !strings.Contains(body, w) {
				t.Errorf("%s %s: %s does not hold %s", tc.format, tc.raw, body, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(body, n) {
				t.Errorf("%s %s: %s holds %s", tc.format, tc.raw, body, n)
			}
		}
	}
}
