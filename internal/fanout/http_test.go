package fanout

import (
	"context"
	"net/http"
	"net/http/httptest"
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
