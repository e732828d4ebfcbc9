package dashboard_test

import (
	"fmt"
	"io/fs"
	"regexp"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/dashboard"
)

// TestStandardWebhooksLabel: the form's Standard Webhooks choice says the
// deliveries are signed that way too, X-DZDESK-Signature still sent (as
// internal/fanout does); it said "instead of X-DZDESK-Signature" (found by
// a review). Read from the page, so it runs without a browser.
func TestStandardWebhooksLabel(t *testing.T) {
	page, err := fs.ReadFile(dashboard.Files(), "index.html")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)<label[^>]*id="sf-standard-choice"[^>]*>(.*?)</label>`).FindSubmatch(page)
	if m == nil {
		t.Fatal("index.html has no label #sf-standard-choice")
	}
	label := regexp.MustCompile(`<[^>]+>`).ReplaceAllString(string(m[1]), "")
	for _, want := range []string{"Also sign as Standard Webhooks", "webhook-signature", "X-DZDESK-Signature is still sent, keyed with the whole whsec_"} {
		if !strings.Contains(label, want) {
			t.Errorf("the Standard Webhooks choice says %q, want it to say %q", label, want)
		}
	}
	if strings.Contains(label, "instead of") {
		t.Errorf("the Standard Webhooks choice says it replaces X-DZDESK-Signature: %q", label)
	}
}

// TestSecretLengthHint: the secret fields of Add webhook and Rotate
// secret ask for as many characters as the API takes
// (config.MinSecretLength); they asked for 32, the API took 16 (found by a
// review).
func TestSecretLengthHint(t *testing.T) {
	page, err := fs.ReadFile(dashboard.Files(), "index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"sf-secret", "rotate-secret"} {
		m := regexp.MustCompile(`<label for="` + id + `">([^<]*)</label>`).FindSubmatch(page)
		if m == nil {
			t.Fatalf("index.html has no label for #%s", id)
		}
		if want := fmt.Sprintf("at least %d characters", config.MinSecretLength); !strings.Contains(string(m[1]), want) {
			t.Errorf("the label of #%s says %q, want %q", id, m[1], want)
		}
	}
}
