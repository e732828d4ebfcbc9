package journal

import (
	"strings"
	"testing"
)

// TestText: what goes to the journal's text columns from outside is
// valid UTF-8 without NUL, cut between characters.
func TestText(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"plain", 9, "plain"},
		{"a\x00b", 9, `a\u0000b`},
		{"bad \xff byte", 20, "bad \uFFFD byte"},
		{strings.Repeat("é", 10), 9, strings.Repeat("é", 4) + "…"}, // four é, not half of a fifth
	} {
		if got := Text(tc.in, tc.max); got != tc.want {
			t.Errorf("Text(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
}
