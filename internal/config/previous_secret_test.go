package config

import (
	"strings"
	"testing"
	"time"
)

// TestPreviousSecretMayBeAShortStandardKey: an operator moving off a
// whsec_ key of 12 bytes (accepted before the 16-byte rule, refused
// since) keeps it as previous_secret for the overlap, the documented way
// to rotate in config.yaml; the rule refused the previous secret too, so
// the only way through was a cut-over with no overlap (found by a
// review). The new secret is held to the rule.
func TestPreviousSecretMayBeAShortStandardKey(t *testing.T) {
	yaml := strings.Replace(minimal, "0123456789abcdef", "whsec_MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1ub3BxcnN0dXY=", 1) +
		"    standard_webhooks: true\n    previous_secret: whsec_AAAAAAAAAAAAAAAA\n    previous_secret_until: \"" + time.Now().Add(24*time.Hour).UTC().Format(time.RFC3339) + "\"\n"
	if _, err := Parse([]byte(yaml), nil); err != nil {
		t.Errorf("a rotation away from a short key is refused: %v", err)
	}
	swapped := strings.Replace(yaml, "whsec_MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1ub3BxcnN0dXY=", "whsec_BBBBBBBBBBBBBBBB", 1)
	if _, err := Parse([]byte(swapped), nil); err == nil || !strings.Contains(err.Error(), "secret: the key after whsec_ is 12 bytes") {
		t.Errorf("a new secret of 12 bytes: %v, want refused", err)
	}
}
