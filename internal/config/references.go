package config

import (
	"slices"
	"strconv"
	"strings"
)

// references are the settings whose value came from a ${NAME} or
// ${file:…} reference, by YAML path. A message about such a value shows
// the reference as written, never what it resolved to: the variable or
// file may hold a secret put in the wrong field (delivery.timeout:
// ${DB_PASSWORD}), and problems are logged when a reload is refused.
type references map[string]reference

type reference struct {
	written string // the text of the file or DZHOOK_… variable
	value   string // what it resolved to
}

// show is how the value v of the setting at path appears in a message:
// quoted, or as the reference it came from.
func (r references) show(path, v string) string {
	ref, ok := r[path]
	if !ok {
		return strconv.Quote(v)
	}
	return ref.shown()
}

func (ref reference) shown() string {
	w := ref.written
	if strings.HasPrefix(w, "${") && strings.Index(w, "}") == len(w)-1 {
		return "the value of " + w // one reference, e.g. ${DB_PASSWORD}
	}
	return "the value of " + strconv.Quote(w)
}

// scrub returns msg, which was written elsewhere (a parser, the catalog,
// the mapping) about the settings at path or below, with every value of
// theirs that came from a reference replaced by the reference. Such a
// message quotes the value, or a part of it, in its own way: when a value
// is still in it once its quoted form is replaced, the message is of no
// use without it and is replaced by one that says only what, with
// instead.
func (r references) scrub(path, msg, instead string) string {
	keys := make([]string, 0, len(r))
	for p := range r {
		if p == path || strings.HasPrefix(p, path+".") || strings.HasPrefix(p, path+"[") {
			keys = append(keys, p)
		}
	}
	slices.Sort(keys)
	for _, p := range keys {
		ref := r[p]
		if ref.value == "" {
			continue
		}
		parts := strings.Split(msg, strconv.Quote(ref.value))
		for _, part := range parts {
			if strings.Contains(part, ref.value) {
				return ref.shown() + " " + instead
			}
		}
		msg = strings.Join(parts, ref.shown())
	}
	return msg
}
