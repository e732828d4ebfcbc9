package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/dzdesk/dzhook/internal/mapping"
)

// sampleKeyLine is a YAML key line of config.yaml, once a comment's "# " is
// taken off: indentation, a list item's dash, the key.
var (
	sampleComment = regexp.MustCompile(`^(\s*)# ?(.*)$`)
	sampleKeyLine = regexp.MustCompile(`^(\s*)(- )?([a-z_]+):(\s|$)`)
)

// samplePaths returns the key paths config.yaml shows, set or in a
// commented example (subscriptions[].tls.cert_file).
func samplePaths(text string) map[string]bool {
	type level struct {
		indent int
		name   string
	}
	var stack []level
	push := func(indent int, name string) {
		for len(stack) > 0 && stack[len(stack)-1].indent >= indent {
			stack = stack[:len(stack)-1]
		}
		stack = append(stack, level{indent, name})
	}
	paths := map[string]bool{}
	for line := range strings.Lines(text) {
		line = strings.TrimSuffix(line, "\n")
		if m := sampleComment.FindStringSubmatch(line); m != nil {
			line = m[1] + m[2]
		}
		m := sampleKeyLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		indent := len(m[1])
		if m[2] != "" {
			push(indent, "[]")
			indent += 2
		}
		push(indent, m[3])
		var b strings.Builder
		for i, l := range stack {
			if i > 0 && l.name != "[]" {
				b.WriteByte('.')
			}
			b.WriteString(l.name)
		}
		paths[b.String()] = true
	}
	return paths
}

// settingPaths returns the path of every setting of t: records' fields
// under name[], maps as one setting.
func settingPaths(prefix string, t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		tag := f.Tag.Get("koanf")
		if tag == "" {
			continue
		}
		key := join(prefix, tag)
		switch {
		case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[Secret]():
			out = append(out, settingPaths(key, f.Type)...)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct && f.Type.Elem() != reflect.TypeFor[Secret]():
			out = append(out, settingPaths(key+"[]", f.Type.Elem())...)
		default:
			out = append(out, key)
		}
	}
	return out
}

// TestSampleConfigNamesEveryKey: config.yaml, which the README calls the
// commented reference of every key, shows every setting, set or in a
// commented example. It had no mapping section and no subscription's
// active or method.
func TestSampleConfigNamesEveryKey(t *testing.T) {
	raw, err := os.ReadFile("../../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	shown := samplePaths(string(raw))
	for _, p := range settingPaths("", reflect.TypeFor[Config]()) {
		if !shown[p] {
			t.Errorf("config.yaml does not show %s", p)
		}
	}
}

// TestSampleMappingIsTheDefault: config.yaml's commented mapping section,
// uncommented, is mapping.DefaultConfig, and sets every one of its keys.
func TestSampleMappingIsTheDefault(t *testing.T) {
	raw, err := os.ReadFile("../../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var block strings.Builder
	in := false
	for line := range strings.Lines(string(raw)) {
		switch {
		case line == "# mapping:\n":
			in = true
		case in && strings.HasPrefix(line, "#   "):
		default:
			in = false
		}
		if in {
			block.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "#"), " "))
		}
	}
	if block.Len() == 0 {
		t.Fatal(`config.yaml has no commented "# mapping:" section`)
	}
	cfg, err := Parse([]byte(minimal+block.String()), nil)
	if err != nil {
		t.Fatalf("the mapping section, uncommented: %v\n%s", err, block.String())
	}
	// The section shows each translation as {}: none, as the default's nil.
	got, want := cfg.Mapping, mapping.DefaultConfig()
	for _, m := range []*map[string]string{&got.Requests.Values.Status, &got.Requests.Values.Priority,
		&got.Users.Values.Role, &got.Users.Values.Active, &got.Comments.Values.Internal, &got.SLAs.Values.SLAType} {
		if len(*m) == 0 {
			*m = nil
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the mapping section, uncommented:\n%+v\nwant mapping.DefaultConfig():\n%+v", got, want)
	}
	var tree map[string]any
	if err := yaml.Unmarshal([]byte(block.String()), &tree); err != nil {
		t.Fatal(err)
	}
	for _, p := range settingPaths("mapping", reflect.TypeFor[mapping.Config]()) {
		var at any = tree
		for k := range strings.SplitSeq(p, ".") {
			m, _ := at.(map[string]any)
			var ok bool
			if at, ok = m[k]; !ok {
				t.Errorf("config.yaml's mapping section does not set %s", p)
				break
			}
		}
	}
}
