package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf16"
)

// strictShape refuses what encoding/json takes without a word: a member
// given twice (the last one wins: a proxy reading the first url and
// dzhook the second), a name in another case than the field's
// ({"URL": …} set url), a null inside a map or a list ({"headers":
// {"X-A": null}} sent an empty header), and an escaped lone surrogate
// (\ud800 became U+FFFD: a secret that is not the one sent). It follows
// t, the type raw is decoded into; its message names the field.
func strictShape(raw []byte, t reflect.Type) error {
	if off := loneSurrogate(raw); off >= 0 {
		return fmt.Errorf("an unpaired UTF-16 surrogate escape at offset %d; JSON text is UTF-8", off)
	}
	return shapeOf(raw, t, "")
}

var unmarshaler = reflect.TypeFor[json.Unmarshaler]()

func shapeOf(raw []byte, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || reflect.PointerTo(t).Implements(unmarshaler) {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if raw[0] != '{' {
			return nil // a type error, which decoding reports
		}
		fields := map[string]reflect.Type{}
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "-" && f.IsExported() {
				if name == "" {
					name = f.Name
				}
				fields[name] = f.Type
			}
		}
		return members(raw, path, func(key string, val []byte) error {
			ft, ok := fields[key]
			if !ok {
				for name := range fields {
					if strings.EqualFold(name, key) {
						return fmt.Errorf("%s: unknown field (names are case-sensitive: %q)", join(path, key), name)
					}
				}
				return nil // unknown: decoding reports it
			}
			// A null member would decode as one left out (the
			// default: every event type, until now): found by a review.
			if string(bytes.TrimSpace(val)) == "null" {
				return fmt.Errorf("%s: null; give a value or leave it out", join(path, key))
			}
			return shapeOf(val, ft, join(path, key))
		})
	case reflect.Map:
		if raw[0] != '{' {
			return nil
		}
		return members(raw, path, func(key string, val []byte) error {
			if string(bytes.TrimSpace(val)) == "null" {
				return fmt.Errorf("%s: null; give a value or leave it out", join(path, key))
			}
			return shapeOf(val, t.Elem(), join(path, key))
		})
	case reflect.Slice:
		if raw[0] != '[' {
			return nil
		}
		var items []json.RawMessage
		if json.Unmarshal(raw, &items) != nil {
			return nil
		}
		for i, it := range items {
			p := path + "[" + strconv.Itoa(i) + "]"
			if string(bytes.TrimSpace(it)) == "null" {
				return fmt.Errorf("%s: null; give a value", p)
			}
			if err := shapeOf(it, t.Elem(), p); err != nil {
				return err
			}
		}
	}
	return nil
}

// members calls f for each member of the object raw, in order, and
// refuses a name given twice.
func members(raw []byte, path string, f func(key string, val []byte) error) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return nil // malformed: decoding reports it
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		key, _ := tok.(string)
		if seen[key] {
			return fmt.Errorf("%s: given twice", join(path, key))
		}
		seen[key] = true
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil
		}
		if err := f(key, val); err != nil {
			return err
		}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return clip(key)
	}
	return path + "." + clip(key)
}

// loneSurrogate is the offset of the first \u escape of a UTF-16
// surrogate that is not half of a pair, or -1.
func loneSurrogate(raw []byte) int {
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' || i+1 >= len(raw) {
			continue
		}
		if raw[i+1] != 'u' {
			i++ // the escaped character, a backslash included
			continue
		}
		r, ok := hex4(raw, i+2)
		switch {
		case !ok || !utf16.IsSurrogate(r):
		case r < 0xdc00: // high: a low one must follow
			if lo, ok := hex4(raw, i+8); i+7 < len(raw) && raw[i+6] == '\\' && raw[i+7] == 'u' && ok && lo >= 0xdc00 && lo <= 0xdfff {
				i += 11
				continue
			}
			return i
		default:
			return i
		}
		i += 5
	}
	return -1
}

func hex4(b []byte, at int) (rune, bool) {
	if at+4 > len(b) {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[at:at+4]), 16, 32)
	return rune(n), err == nil
}
