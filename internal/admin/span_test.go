package admin

import (
	"testing"
	"time"
)

// TestParseSpan: a Go duration or whole days, as since/until and a
// rotation's overlap take them.
func TestParseSpan(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"90m", 90 * time.Minute, true},
		{"24h", 24 * time.Hour, true},
		{"0s", 0, true},
		{"7d", 7 * 24 * time.Hour, true},
		{"0d", 0, true},
		{"36500d", 36500 * 24 * time.Hour, true},
		{"36501d", 0, false},
		{"-1d", 0, false},
		{"1.5d", 0, false},
		{"d", 0, false},
		{"7 days", 0, false},
		{"", 0, false},
	} {
		got, ok := ParseSpan(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("ParseSpan(%q) = %v, %v; want %v, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}
