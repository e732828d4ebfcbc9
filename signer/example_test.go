package signer_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"time"

	"github.com/dzdesk/dzhook/signer"
)

func ExampleSign() {
	secret := []byte("my-webhook-secret")
	body := []byte(`{"id":"whk_abc123","event":"request.created"}`)

	// The same as: printf '%s' "$body" | openssl dgst -sha256 -hmac my-webhook-secret
	fmt.Println(signer.HeaderSignature + ": " + signer.Sign(secret, body))
	// Output:
	// X-DZDESK-Signature: sha256=da9c6143f5eec366c50d81d489179faf41b8b3a30d8183ab3c289efa74ca0f34
}

func ExampleVerify() {
	secret := []byte("my-webhook-secret")
	body := []byte(`{"id":"whk_abc123","event":"request.created"}`)
	header := signer.Sign(secret, body) // what arrives in X-DZDESK-Signature

	fmt.Println(signer.Verify(header, body, secret))

	// During a rotation, accept the new and the old secret.
	fmt.Println(signer.Verify(header, body, []byte("new-webhook-secret"), secret))

	// Any change to the body, even re-encoding its JSON, breaks the signature.
	err := signer.Verify(header, []byte(`{"event":"request.created","id":"whk_abc123"}`), secret)
	fmt.Println(errors.Is(err, signer.ErrInvalidSignature))
	// Output:
	// <nil>
	// <nil>
	// true
}

func ExampleVerifier_Middleware() {
	secret := []byte("my-webhook-secret")
	v := &signer.Verifier{Secrets: [][]byte{secret}}

	srv := httptest.NewServer(v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body) // the verified bytes
		fmt.Fprintf(w, "got %s (%d bytes)", r.Header.Get(signer.HeaderEvent), len(body))
	})))
	defer srv.Close()

	send := func(body []byte, signature string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(body))
		req.Header.Set(signer.HeaderEvent, "request.created")
		req.Header.Set(signer.HeaderSignature, signature)
		resp, err := srv.Client().Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer resp.Body.Close()
		answer, _ := io.ReadAll(resp.Body)
		fmt.Printf("%d %s\n", resp.StatusCode, bytes.TrimSpace(answer))
	}

	body := []byte(`{"id":"whk_abc123","event":"request.created"}`)
	send(body, signer.Sign(secret, body))
	send(body, signer.Sign([]byte("guessed-secret"), body))
	send(body, "")
	// Output:
	// 200 got request.created (45 bytes)
	// 401 invalid signature
	// 401 missing signature
}

func ExampleSignStandard() {
	key, err := signer.StandardKey("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		fmt.Println(err)
		return
	}
	id := "msg_p5jXN8AQM9LWM0D4loKWxJek"
	ts := time.Unix(1614265330, 0)
	body := []byte(`{"test": 2432232314}`)

	h := http.Header{}
	h.Set(signer.HeaderWebhookID, id)
	h.Set(signer.HeaderWebhookTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(signer.HeaderWebhookSignature, signer.SignStandard(key, id, ts, body))
	fmt.Println(h.Get(signer.HeaderWebhookSignature))

	// A receiver checks the signature and the age of the message.
	fmt.Println(signer.VerifyStandard(h, body, ts.Add(time.Minute), key))
	err = signer.VerifyStandard(h, body, ts.Add(time.Hour), key)
	fmt.Println(errors.Is(err, signer.ErrTimestampTooOld))
	// Output:
	// v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=
	// <nil>
	// true
}
