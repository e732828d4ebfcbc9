package fanout

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/signer"
)

// TestSignatureOnlyWithSecret: a notification without notify.secret goes
// out unsigned, not with an HMAC under an empty key that anyone can forge.
func TestSignatureOnlyWithSecret(t *testing.T) {
	got := make(chan http.Header, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Clone() }))
	defer srv.Close()
	c := newClient(time.Second, 1, (&EgressGuard{}).Dialer(time.Second), nil)
	for _, secret := range []string{"", "notify-secret-0123456789"} {
		res := post(context.Background(), c, request{url: srv.URL, body: []byte(`{}`), secret: []byte(secret), userAgent: "t"}, time.Second, 100)
		if res.Status != 200 {
			t.Fatalf("post: %+v", res)
		}
		sig := (<-got).Get(signer.HeaderSignature)
		if secret == "" && sig != "" {
			t.Errorf("no secret, but %s = %q", signer.HeaderSignature, sig)
		}
		if secret != "" && signer.Verify(sig, []byte(`{}`), []byte(secret)) != nil {
			t.Errorf("with a secret, %s = %q does not verify", signer.HeaderSignature, sig)
		}
	}
}

// TestRedactURL: what dzhook shows of a URL holds no credential: not
// the user info, the query, or the path of the webhook URLs that carry
// their token there (Slack, Discord, Teams; and any connector's).
func TestRedactURL(t *testing.T) {
	for raw, want := range map[string]string{
		"https://crm.example.com/hooks/dzdesk":                                                         "https://crm.example.com/hooks/dzdesk",
		"https://user:pw@crm.example.com/h?token=abc#frag":                                             "https://crm.example.com/h?REDACTED",
		"https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXX":                            "https://hooks.slack.com/REDACTED",
		"https://discord.com/api/webhooks/123456/abcdefTOKEN":                                          "https://discord.com/REDACTED",
		"https://ptb.discord.com/api/webhooks/123456/abcdefTOKEN?wait=true":                            "https://ptb.discord.com/REDACTED?REDACTED",
		"https://discord.com/developers/docs":                                                          "https://discord.com/developers/docs",
		"https://hooks.slack.com./services/T0000/B0000/XXXXXXXXXXXXXXXXXXXX":                           "https://hooks.slack.com./REDACTED",
		"https://canary.discordapp.com/api/webhooks/123456/abcdefTOKEN":                                "https://canary.discordapp.com/REDACTED",
		"https://Contoso.Webhook.Office.com./webhookb2/abc@def/IncomingWebhook/ghi/jkl":                "https://Contoso.Webhook.Office.com./REDACTED",
		"https://contoso.webhook.office.com/webhookb2/abc@def/IncomingWebhook/ghi/jkl":                 "https://contoso.webhook.office.com/REDACTED",
		"https://prod-12.westus.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=SECRET": "https://prod-12.westus.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?REDACTED",
	} {
		if got := RedactURL(raw); got != want {
			t.Errorf("RedactURL(%s) = %s, want %s", raw, got, want)
		}
	}
	if got := ShownURL("https://relay.example.com/slack/T0/B0/token", "slack", ""); got != "https://relay.example.com/REDACTED" {
		t.Errorf("a connector's URL through a relay: %s", got)
	}
	if got := ShownURL("https://chat.example.com/hooks/token", "dzdesk", `{"text": event}`); got != "https://chat.example.com/REDACTED" {
		t.Errorf("a transform's URL: %s", got)
	}
	if got := ShownURL("https://relay.example.com/slack/T0/B0/token", "dzdesk", ""); got != "https://relay.example.com/slack/T0/B0/token" {
		t.Errorf("a plain subscription's URL: %s", got)
	}
}

func TestUnquoted(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`no quotes`, `no quotes`},
		{`malformed HTTP status code "/hook?token=x"`, `malformed HTTP status code "…"`},
		{`got ["1" "2"]`, `got ["…" "…"]`},
		{`line: "a \"quoted\" b" after`, `line: "…" after`},
		{`cut "short`, `cut "…`},
		{`"é\xff"`, `"…"`},
	} {
		if got := unquoted(tt.in); got != tt.want {
			t.Errorf("unquoted(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestResponseBodyLimit: a zero Config.ResponseBodyLimit is the default
// (4 KiB of each answer kept), NoResponseBody keeps no byte
// (delivery.response_body_limit: 0), and a limit keeps that many.
func TestResponseBodyLimit(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte(strings.Repeat("pii-", 2000)))
	}))
	defer srv.Close()
	c := newClient(time.Second, 1, (&EgressGuard{}).Dialer(time.Second), nil)
	for _, tc := range []struct{ limit, kept int }{
		{0, DefaultBodyLimit},
		{NoResponseBody, 0},
		{10, 10},
	} {
		cfg, err := Config{Journal: struct{ Store }{}, Records: struct{ Recorder }{}, Instance: "i", ResponseBodyLimit: tc.limit}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		res := post(context.Background(), c, request{url: srv.URL, body: []byte(`{}`), userAgent: "t"}, time.Second, cfg.bodyLimit())
		if res.Status != http.StatusInternalServerError || len(res.Body) != tc.kept {
			t.Errorf("ResponseBodyLimit %d: status %d, %d bytes of the answer kept; want 500 and %d", tc.limit, res.Status, len(res.Body), tc.kept)
		}
	}
}
