package config

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// decoder copies koanf's raw map onto a typed Config. It is written here
// rather than left to mapstructure because dzhook must report every problem
// at once with its YAML path (subscriptions[1].evnts: unknown key), expand
// ${NAME} references before a value is converted, and keep secrets out of
// every message; mapstructure stops at type errors and formats paths its
// own way.
type decoder struct {
	lookupEnv func(string) (string, bool)
	problems  *Problems
	// refs gets every setting whose value held a reference, for the
	// messages of validation too.
	refs references
	// literals is the text of each number and timestamp as the file
	// wrote it, by path (see literalScalars).
	literals map[string]string
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	// documentType is a document kept as YAML gave it (a custom event's
	// JSON Schema): its keys are the document's, not dzhook's, so they
	// are neither checked nor expanded.
	documentType = reflect.TypeFor[map[string]any]()
)

// defaulter is implemented by list elements that have defaults of their
// own (subscriptions are active unless they say otherwise).
type defaulter interface{ setDefaults() }

func (s *Subscription) setDefaults() { *s = subscriptionDefaults() }

// decode sets dst from raw, which came from YAML or the environment.
func (d *decoder) decode(path string, raw any, dst reflect.Value) {
	if raw == nil {
		return // "key:" with no value keeps the default
	}
	t := dst.Type()
	switch {
	case t == durationType:
		s, ok := d.scalar(path, raw)
		if !ok {
			return
		}
		v, err := parseDuration(s)
		if err != nil {
			d.problems.addDecode(path, "%s is not a duration (use a number with a unit: 500ms, 5s, 1m, 2h)", d.refs.show(path, s))
			return
		}
		dst.SetInt(int64(v))
		return
	case t.Kind() == reflect.Struct:
		d.decodeStruct(path, raw, dst)
		return
	case t == documentType:
		m, ok := raw.(map[string]any)
		if !ok {
			what := "a JSON Schema object"
			if strings.HasSuffix(path, ".example") {
				what = "the event's data, a JSON object"
			}
			d.problems.addDecode(path, "must be a mapping (%s), not %s", what, kindOf(raw))
			return
		}
		dst.Set(reflect.ValueOf(d.document(path, m)))
		return
	}
	switch t.Kind() {
	case reflect.String:
		// A number YAML read for a setting that is text is the text the
		// file has: YAML would give 0012 as 10 and a 23-digit secret as
		// 1.2345678901234568e+22; a date, a time.Time.
		switch raw.(type) {
		case int, int64, uint64, float64, time.Time:
			if lit, ok := d.literals[path]; ok {
				raw = lit
			}
		}
		s, ok := d.scalar(path, raw)
		if ok {
			dst.SetString(s)
		}
	case reflect.Bool:
		s, ok := d.scalar(path, raw)
		if !ok {
			return
		}
		v, err := strconv.ParseBool(s)
		if err != nil {
			d.problems.addDecode(path, "%s is not a boolean (use true or false)", d.refs.show(path, s))
			return
		}
		dst.SetBool(v)
	case reflect.Int:
		s, ok := d.scalar(path, raw)
		if !ok {
			return
		}
		v, err := strconv.Atoi(s)
		if err != nil {
			d.problems.addDecode(path, "%s is not a whole number", d.refs.show(path, s))
			return
		}
		dst.SetInt(int64(v))
	case reflect.Float64:
		s, ok := d.scalar(path, raw)
		if !ok {
			return
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			d.problems.addDecode(path, "%s is not a number", d.refs.show(path, s))
			return
		}
		// ParseFloat takes NaN and Inf (and YAML gives .nan and .inf as
		// floats): no setting means either, and NaN passes every range
		// check, since each comparison with it is false.
		if math.IsNaN(v) || math.IsInf(v, 0) {
			d.problems.addDecode(path, "%s is not a finite number", d.refs.show(path, s))
			return
		}
		dst.SetFloat(v)
	case reflect.Slice:
		d.decodeSlice(path, raw, dst)
	case reflect.Map:
		m, ok := raw.(map[string]any)
		if !ok {
			d.problems.addDecode(path, "must be a mapping of names to values, not %s", kindOf(raw))
			return
		}
		out := reflect.MakeMapWithSize(t, len(m))
		for _, k := range sortedKeys(m) {
			v := reflect.New(t.Elem()).Elem()
			d.decode(keyJoin(path, k), m[k], v)
			out.SetMapIndex(reflect.ValueOf(k).Convert(t.Key()), v)
		}
		dst.Set(out)
	default:
		// A programming error in Config, not a user error.
		panic(fmt.Sprintf("config: field %s has unsupported type %s", path, t))
	}
}

func (d *decoder) decodeStruct(path string, raw any, dst reflect.Value) {
	m, ok := raw.(map[string]any)
	if !ok {
		d.problems.addDecode(path, "must be a mapping of keys to values, not %s", kindOf(raw))
		return
	}
	t := dst.Type()
	known := make(map[string]int, t.NumField())
	var names []string
	for i := range t.NumField() {
		if tag := t.Field(i).Tag.Get("koanf"); tag != "" {
			known[tag] = i
			names = append(names, tag)
		}
	}
	// Fields in declaration order, then unknown keys sorted, so the
	// report reads in the order of the reference documentation.
	for _, name := range names {
		if v, ok := m[name]; ok {
			d.decode(join(path, name), v, dst.Field(known[name]))
		}
	}
	for _, k := range sortedKeys(m) {
		if _, ok := known[k]; !ok {
			msg := "unknown key"
			if nested := nest(k, known); nested != "" {
				msg += fmt.Sprintf(" (keys are not split at dots: write %s)", nested)
			} else if s := suggest(k, names); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			d.problems.addDecode(join(path, k), "%s", msg)
		}
	}
}

func (d *decoder) decodeSlice(path string, raw any, dst reflect.Value) {
	var items []any
	switch v := raw.(type) {
	case []any:
		items = v
	case string:
		// From the environment (DZHOOK_DELIVERY_RETRY_SCHEDULE=0s,10s) or a
		// lone value in YAML (events: request.created).
		for part := range strings.SplitSeq(v, ",") {
			if part = strings.TrimSpace(part); part != "" {
				items = append(items, part)
			}
		}
	case bool, int, int64, uint64, float64:
		items = []any{v} // a lone value is a list of one
	default:
		d.problems.addDecode(path, "must be a list, not %s", kindOf(raw))
		return
	}
	t := dst.Type()
	out := reflect.MakeSlice(t, len(items), len(items))
	for i, item := range items {
		el := out.Index(i)
		if def, ok := el.Addr().Interface().(defaulter); ok {
			def.setDefaults()
		}
		d.decode(fmt.Sprintf("%s[%d]", path, i), item, el)
	}
	dst.Set(out)
}

// scalar returns raw as a string with ${NAME} references expanded. A value
// that held a reference is recorded in d.refs, so that a message shows
// the reference rather than what it resolved to.
func (d *decoder) scalar(path string, raw any) (s string, ok bool) {
	switch v := raw.(type) {
	case string:
		s = v
	case bool, int, int64, uint64, float64:
		s = fmt.Sprint(v)
	default:
		// kindOf names only the kind: never a secret's value, even a
		// misplaced one.
		d.problems.addDecode(path, "must be a single value, not %s", kindOf(raw))
		return "", false
	}
	out, ref, missing := expand(s, d.lookupEnv)
	for _, msg := range missing {
		d.problems.addDecode(path, "%s", msg)
	}
	if len(missing) > 0 {
		return "", false
	}
	if ref {
		d.refs[path] = reference{written: s, value: out}
	}
	return out, true
}

// expand replaces ${NAME} and ${NAME:-default} in s with the environment's
// values, and ${file:/path} with the file's content (without a trailing
// newline: Docker and Kubernetes secrets, systemd credentials); $${
// stands for a literal ${. It returns the references it could not resolve,
// and a ${ without its }, as messages naming them (never their values).
func expand(s string, lookup func(string) (string, bool)) (out string, ref bool, missing []string) {
	if !strings.Contains(s, "${") {
		return s, false, nil
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			break
		}
		if i > 0 && s[i-1] == '$' { // $${ → ${
			b.WriteString(s[:i-1])
			b.WriteString("${")
			s = s[i+2:]
			continue
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			// Kept as text, a reference with its } forgotten became the
			// value itself (an admin token of "${DZ_ADMIN_TOKEN"). The
			// message quotes nothing: the rest may be a secret.
			b.WriteString(s[:i])
			ref = true
			missing = append(missing, "unterminated ${ reference (end it with }, or write $${ for a literal ${)")
			break
		}
		b.WriteString(s[:i])
		expr := s[i+2 : i+end]
		s = s[i+end+1:]
		ref = true
		if path, ok := strings.CutPrefix(expr, "file:"); ok {
			content, err := os.ReadFile(path)
			if err != nil {
				missing = append(missing, fmt.Sprintf("${file:%s} cannot be read: %v", path, errors.Unwrap(err)))
				continue
			}
			b.WriteString(strings.TrimRight(string(content), "\r\n"))
			continue
		}
		name, def, hasDef := strings.Cut(expr, ":-")
		if v, ok := lookup(name); ok && (v != "" || !hasDef) {
			b.WriteString(v)
		} else if hasDef {
			b.WriteString(def)
		} else if !envName.MatchString(name) {
			// Not a variable's name: likely part of a secret that holds
			// "${", which the message must not quote.
			missing = append(missing, "a ${…} whose name is not an environment variable's (write $${ for a literal ${)")
		} else {
			missing = append(missing, fmt.Sprintf("${%s} is not set in the environment", name))
		}
	}
	return b.String(), ref, missing
}

// parseDuration accepts Go durations ("1m30s") and a bare 0.
func parseDuration(s string) (time.Duration, error) {
	if s == "0" {
		return 0, nil
	}
	return time.ParseDuration(s)
}

func kindOf(v any) string {
	switch v.(type) {
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int, int64, uint64, float64:
		return "a number"
	}
	return fmt.Sprintf("a %T", v)
}

// nest returns a dotted key whose first part is known (admin.token, as
// the documentation and the DZHOOK_… names spell a setting) in the nested
// form YAML needs, "admin: {token: …}", or "".
func nest(key string, known map[string]int) string {
	parts := strings.Split(key, ".")
	if _, ok := known[parts[0]]; !ok || len(parts) < 2 || slices.Contains(parts, "") {
		return ""
	}
	return strings.Join(parts, ": {") + ": …" + strings.Repeat("}", len(parts)-1)
}

// literalScalars maps the path of every number and timestamp in the YAML
// document (in
// the decoder's form: source.dsn, subscriptions[0].headers.X-Account) to
// its text as written, through aliases and merge keys (<<: *defaults) as
// YAML resolves them: a mapping's own keys over merged ones, the first
// of several merged mappings over the later ones.
//
// It also adds to ps every mapping key YAML reads as other than its text:
// a key is a name (a header's, a database value's in values:), and YAML
// read 010 as 8, 1.50 as 1.5, ~ as null ("<nil>"), so that a translation
// of the stored '010' silently missed, and 1e3 and 1_000 became one key.
func literalScalars(b []byte, ps *Problems) map[string]string {
	var doc yaml.Node
	if yaml.Unmarshal(b, &doc) != nil {
		return nil
	}
	out := map[string]string{}
	said := map[string]bool{}
	depth := 0 // aliases followed: bounds a document that nests them deeply
	var walk func(path string, n *yaml.Node)
	walk = func(path string, n *yaml.Node) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(path, c)
			}
		case yaml.AliasNode:
			if n.Alias != nil && depth < maxAliasDepth {
				depth++
				walk(path, n.Alias)
				depth--
			}
		case yaml.MappingNode:
			// Merged first, the last merged first, so that what comes
			// after overrides it, as in YAML.
			for i := len(n.Content) - 2; i >= 0; i -= 2 {
				if n.Content[i].Tag != "!!merge" {
					continue
				}
				v := n.Content[i+1]
				if v.Kind == yaml.SequenceNode {
					for j := len(v.Content) - 1; j >= 0; j-- {
						walk(path, v.Content[j])
					}
				} else {
					walk(path, v)
				}
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				if key := n.Content[i]; key.Tag != "!!merge" {
					if key.Kind == yaml.AliasNode && key.Alias != nil {
						key = key.Alias // *k as a key is the anchored key
					}
					if read, ok := keyAsRead(key); !ok && !said[join(path, key.Value)] {
						said[join(path, key.Value)] = true
						quoted := strconv.Quote(key.Value)
						if read != "null" && !strings.HasPrefix(read, "a ") {
							quoted += " or " + strconv.Quote(read)
						}
						ps.addDecode(cmp.Or(path, "(top level)"), "key %s is read by YAML as %s: write the key in quotes, as the text it stands for (a translation's key is the stored value as PostgreSQL prints it: %s)", key.Value, read, quoted)
					}
					walk(keyJoin(path, key.Value), n.Content[i+1])
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(fmt.Sprintf("%s[%d]", path, i), c)
			}
		case yaml.ScalarNode:
			if n.Tag == "!!int" || n.Tag == "!!float" || n.Tag == "!!timestamp" {
				out[path] = n.Value
			} else {
				delete(out, path) // a merged number overridden by text
			}
		}
	}
	walk("", &doc)
	return out
}

// keyAsRead is what YAML reads a mapping key as, and whether that is its
// text: a quoted or plain string is, and so is a number or a boolean
// written as Go prints it (42, true); 010, 0x1F, 1.50, True, ~ and a date
// are not.
func keyAsRead(key *yaml.Node) (string, bool) {
	switch key.Tag {
	case "!!str":
		return key.Value, true
	case "!!null":
		return "null", false
	case "!!timestamp":
		return "a time", false
	}
	var v any
	if key.Kind != yaml.ScalarNode || key.Decode(&v) != nil {
		return "a " + strings.TrimPrefix(key.ShortTag(), "!!"), false
	}
	read := fmt.Sprint(v)
	return read, read == key.Value
}

// document is a custom event's JSON Schema as the file wrote it: YAML
// reads 0755 as 493 (YAML 1.1's octal; 1.2 reads 755), 1_000 as 1000, a
// 23-digit number as a float64 that is not it, and 2024-01-01 as a
// time.Time, which JSON gives as "2024-01-01T00:00:00Z": a const or an
// enum of the schema then refused the very value its author wrote. A
// number is kept as its text when that is a JSON number, and refused,
// with the value YAML read, when it is not; a timestamp is its text.
func (d *decoder) document(path string, v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = d.document(keyJoin(path, k), e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = d.document(fmt.Sprintf("%s[%d]", path, i), e)
		}
		return out
	case int, int64, uint64, float64:
		lit, ok := d.literals[path]
		if !ok {
			return v
		}
		if !jsonNumber.MatchString(lit) {
			d.problems.addDecode(path, "%s is not a JSON number (YAML reads it as %v): write it as JSON does, or quote it for text", lit, v)
			return v
		}
		return json.Number(lit)
	case time.Time:
		if lit, ok := d.literals[path]; ok {
			return lit
		}
		return v.Format(time.RFC3339Nano)
	}
	return v
}

// jsonNumber is JSON's grammar of a number (RFC 8259, section 6).
var jsonNumber = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)

// maxAliasDepth bounds the aliases literalScalars follows within one
// another (YAML's own decoder refuses a document that expands too much).
const maxAliasDepth = 32

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// keyJoin is join for a key that is data, not a setting's name (a map's,
// a custom event's schema's or example's): one with a dot or a bracket
// is written ["a.b"]. Joined with a dot, {"a.b": 12.50} and {a: {b: 7}}
// had one path, and the literal of one replaced the other's value (found
// by a review). literalScalars records every key so.
func keyJoin(path, key string) string {
	if strings.ContainsAny(key, ".[]") {
		return path + "[" + strconv.Quote(key) + "]"
	}
	return join(path, key)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// suggest returns the known name closest to an unknown one, when it is
// close enough to be a typo.
func suggest(unknown string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if d := distance(unknown, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// envName is the form of an environment variable's name.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
