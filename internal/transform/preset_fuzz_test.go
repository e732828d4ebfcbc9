package transform

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/internal/mapping"
)

// checkPresets applies every preset to raw: never a panic; an error
// exactly when raw is not an envelope; otherwise a body that is JSON and
// that the destination's validator accepts (never a skip).
func checkPresets(t *testing.T, raw []byte) {
	_, perr := Parse(raw)
	for _, p := range presetFormats {
		tr, err := New("", p.format)
		if err != nil {
			t.Fatal(err)
		}
		out, err := tr.Apply(raw)
		if perr != nil {
			if err == nil {
				t.Fatalf("%s: %q is not an envelope (%v), yet Apply gave %s", p.format, raw, perr, out)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: Apply(%q): %v; a preset never fails on an envelope", p.format, raw, err)
		}
		if !json.Valid(out) {
			t.Fatalf("%s: Apply(%q) gave invalid JSON %q", p.format, raw, out)
		}
		if err := p.validate(out); err != nil {
			t.Fatalf("%s: Apply(%q): %v\n%s", p.format, raw, err, out)
		}
	}
}

// FuzzPresets feeds arbitrary bytes as an envelope to the presets.
func FuzzPresets(f *testing.F) {
	for _, name := range sampleEvents() {
		f.Add(mapping.Sample(name, "whk_sample", sampleTime))
	}
	for _, seed := range []string{
		`{}`,
		`{"event":"request.created","data":null}`,
		`{"event":"sla.warning","data":{"requestId":1,"percentElapsed":"x","timeRemaining":{"a":[1,{"b":null}]}}}`,
		`{"event":"request.assigned","data":{"assignedTo":{"name":"@everyone","email":"<!here>"},"title":"&&&"}}`,
		`{"event":"order.shipped","data":{"":1,"a\u0000":"\ud83d\ude00","n":-1e999}}`,
		`{"id":"` + strings.Repeat("i", 5000) + `","event":"` + strings.Repeat("e", 5000) + `","timestamp":"9999-12-31T23:59:59.999999999+14:00"}`,
		`{"event":"request.commented","data":{"body":"` + strings.Repeat("&<>😀", 2000) + `"}}`,
		`[1,2]`,
		`{"event":5}`,
		`{"data":{}} {}`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(checkPresets)
}

// FuzzPresetText puts one arbitrary text in every field of an event's
// data (and in the envelope's id and time), as a string and inside a
// person object: escaping, mention neutralising and cutting must hold for
// any text.
func FuzzPresetText(f *testing.F) {
	f.Add("request.created", "Cannot access email", 1)
	f.Add("sla.warning", "2h 30m", 1)
	f.Add("request.commented", "<!channel> & @everyone <@123>", 3)
	f.Add("user.deactivated", "é😀\u200b\u202e\x00\n\t", 400)
	f.Add("order.shipped", "&", 3000)
	f.Fuzz(func(t *testing.T, event, text string, repeat int) {
		if repeat < 1 || repeat > 3000 {
			repeat = 1
		}
		s := strings.Repeat(text, repeat)
		if len(s) > 1<<16 {
			s = s[:1<<16]
		}
		fuzzOnce(t, event, s)
	})
}

func fuzzOnce(t *testing.T, event, s string) {
	q, _ := json.Marshal(s)
	ev, _ := json.Marshal(event)
	person := fmt.Sprintf(`{"id":%s,"email":%s,"name":%s}`, q, q, q)
	var data strings.Builder
	data.WriteString("{")
	for _, k := range []string{"id", "requestId", "title", "status", "priority", "previousStatus", "newStatus", "body", "slaType", "targetTime", "percentElapsed", "timeRemaining", "breachedAt", "email", "name", "role"} {
		fmt.Fprintf(&data, "%q:%s,", k, q)
	}
	for _, k := range []string{"requester", "assignedTo", "previousAssignedTo", "changedBy", "author"} {
		fmt.Fprintf(&data, "%q:%s,", k, person)
	}
	fmt.Fprintf(&data, "%s:%s}", q, q)
	raw := fmt.Appendf(nil, `{"id":%s,"event":%s,"timestamp":%s,"data":%s}`, q, ev, q, data.String())
	checkPresets(t, raw)
}
