package config

import (
	"cmp"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// Problem is one mistake in a configuration, at a YAML path.
type Problem struct {
	// Path is where the mistake is, e.g. "subscriptions[1].events[0]".
	// Empty for a problem with the file as a whole.
	Path string
	// Message says what is wrong and, where possible, how to fix it. It
	// never contains a secret's value, nor what a ${NAME} or ${file:…}
	// reference resolved to: it shows the reference.
	Message string

	decode bool // found while decoding, before validation
}

func (p Problem) Error() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// Problems is every mistake found in one configuration. Load returns it as
// its error, so errors.As(err, &problems) gives the list.
type Problems []Problem

func (ps *Problems) add(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (ps *Problems) addDecode(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Message: fmt.Sprintf(format, args...), decode: true})
}

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.Is and errors.As see each problem.
func (ps Problems) Unwrap() []error {
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = p
	}
	return errs
}

// err returns ps as an error, or nil when there is none. It drops a
// validation problem at a path that already failed to decode (an unset
// ${NAME} need not also be "required") and orders the rest like the file:
// by section, then by list index, keeping the order found within each.
func (ps Problems) err() error {
	failed := make(map[string]bool)
	for _, p := range ps {
		if p.decode {
			failed[p.Path] = true
		}
	}
	var out Problems
	for _, p := range ps {
		if p.decode || !failed[p.Path] {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil
	}
	slices.SortStableFunc(out, func(a, b Problem) int {
		if c := cmp.Compare(sectionRank(a.Path), sectionRank(b.Path)); c != 0 {
			return c
		}
		return cmp.Compare(listIndex(a.Path), listIndex(b.Path))
	})
	return out
}

// sectionRank is the position of a path's top-level key in Config.
func sectionRank(path string) int {
	top, _, _ := strings.Cut(path, ".")
	top, _, _ = strings.Cut(top, "[")
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		if t.Field(i).Tag.Get("koanf") == top {
			return i
		}
	}
	return t.NumField() // unknown top-level keys last
}

// listIndex is the first [N] of a path, or -1.
func listIndex(path string) int {
	i := strings.IndexByte(path, '[')
	j := strings.IndexByte(path, ']')
	if i < 0 || j < i {
		return -1
	}
	n, err := strconv.Atoi(path[i+1 : j])
	if err != nil {
		return -1
	}
	return n
}

// AsProblems returns the problems inside err, or nil.
func AsProblems(err error) Problems {
	var ps Problems
	if errors.As(err, &ps) {
		return ps
	}
	return nil
}
