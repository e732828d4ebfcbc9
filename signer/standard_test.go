package signer_test

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/signer"
)

// The test vector of the Standard Webhooks and Svix libraries.
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorBody      = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func mustStandardKey(t testing.TB, secret string) []byte {
	t.Helper()
	key, err := signer.StandardKey(secret)
	if err != nil {
		t.Fatalf("StandardKey(%q): %v", secret, err)
	}
	return key
}

func TestStandardKey(t *testing.T) {
	tests := []struct {
		secret  string
		want    []byte
		wantErr bool
	}{
		{"whsec_c2VjcmV0", []byte("secret"), false},
		{"whsec_AAEC/w==", []byte{0, 1, 2, 255}, false},
		{"plain-secret-0123456789", []byte("plain-secret-0123456789"), false},
		{"c2VjcmV0", []byte("c2VjcmV0"), false}, // no prefix: raw bytes, even if it looks like base64
		{"clé", []byte("clé"), false},
		{"", nil, true},
		{"whsec_", nil, true},
		{"whsec_c2VjcmV0!", nil, true},
		{"whsec_YWI", nil, true}, // padding required, as in the JavaScript library
		{"whsec_c2Vj-mV0", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.secret, func(t *testing.T) {
			got, err := signer.StandardKey(tt.secret)
			if (err != nil) != tt.wantErr {
				t.Fatalf("StandardKey() error = %v, want error %v", err, tt.wantErr)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("StandardKey() = %q, want %q", got, tt.want)
			}
			if rest := strings.TrimPrefix(tt.secret, "whsec_"); err != nil && rest != "" && strings.Contains(err.Error(), rest) {
				t.Errorf("StandardKey() error %q reveals the secret", err)
			}
		})
	}
}

func TestSignStandard(t *testing.T) {
	key := mustStandardKey(t, vectorSecret)
	got := signer.SignStandard(key, vectorID, time.Unix(vectorTimestamp, 999e6), []byte(vectorBody))
	if got != vectorSignature {
		t.Errorf("SignStandard() = %q, want %q", got, vectorSignature)
	}
	long := strings.Repeat("msg_", 100) // longer than the stack buffer
	sig := signer.SignStandard(key, long, time.Unix(vectorTimestamp, 0), testBody)
	h := standardHeaders(long, vectorTimestamp, sig)
	if err := signer.VerifyStandard(h, testBody, time.Unix(vectorTimestamp, 0), key); err != nil {
		t.Errorf("VerifyStandard(long id) = %v, want nil", err)
	}
}

func standardHeaders(id string, ts int64, sig string) http.Header {
	h := http.Header{}
	if id != "" {
		h.Set(signer.HeaderWebhookID, id)
	}
	if ts != 0 {
		h.Set(signer.HeaderWebhookTimestamp, strconv.FormatInt(ts, 10))
	}
	if sig != "" {
		h.Set(signer.HeaderWebhookSignature, sig)
	}
	return h
}

func TestVerifyStandard(t *testing.T) {
	key := mustStandardKey(t, vectorSecret)
	oldKey := mustStandardKey(t, "whsec_b2xkLWtleS0wMTIzNDU2Nzg5")
	body := []byte(vectorBody)
	at := time.Unix(vectorTimestamp, 0)
	valid := vectorSignature
	sigOld := signer.SignStandard(oldKey, vectorID, at, body)

	with := func(mutate func(h http.Header)) http.Header {
		h := standardHeaders(vectorID, vectorTimestamp, valid)
		mutate(h)
		return h
	}
	tests := []struct {
		name string
		h    http.Header
		body []byte
		now  time.Time
		keys [][]byte
		want error
	}{
		{"valid", standardHeaders(vectorID, vectorTimestamp, valid), body, at, [][]byte{key}, nil},
		{"tampered body", standardHeaders(vectorID, vectorTimestamp, valid), []byte(`{"test": 2432232315}`), at, [][]byte{key}, signer.ErrInvalidSignature},
		{"wrong key", standardHeaders(vectorID, vectorTimestamp, valid), body, at, [][]byte{oldKey}, signer.ErrInvalidSignature},
		{"other id", standardHeaders("msg_other", vectorTimestamp, valid), body, at, [][]byte{key}, signer.ErrInvalidSignature},
		{"other timestamp", standardHeaders(vectorID, vectorTimestamp+1, valid), body, at, [][]byte{key}, signer.ErrInvalidSignature},
		{"rotation, second key", standardHeaders(vectorID, vectorTimestamp, valid), body, at, [][]byte{oldKey, key}, nil},
		{"several signatures, one matches", standardHeaders(vectorID, vectorTimestamp, sigOld+" "+valid), body, at, [][]byte{key}, nil},
		{"several signatures, none match", standardHeaders(vectorID, vectorTimestamp, sigOld+" "+sigOld), body, at, [][]byte{key}, signer.ErrInvalidSignature},
		{"other versions ignored", standardHeaders(vectorID, vectorTimestamp, "v1a,"+strings.TrimPrefix(valid, "v1,")+" "+valid), body, at, [][]byte{key}, nil},
		{"only other versions", standardHeaders(vectorID, vectorTimestamp, "v1a,"+strings.TrimPrefix(valid, "v1,")), body, at, [][]byte{key}, signer.ErrInvalidSignature},
		{"v2 entry ignored", standardHeaders(vectorID, vectorTimestamp, "v2,abc "+valid), body, at, [][]byte{key}, nil},
		{"garbage entries", standardHeaders(vectorID, vectorTimestamp, "v1 , v1,!!!! v1,"+strings.Repeat("A", 44)), body, at, [][]byte{key}, signer.ErrInvalidSignature},
		{"signature without version", standardHeaders(vectorID, vectorTimestamp, strings.TrimPrefix(valid, "v1,")), body, at, [][]byte{key}, signer.ErrInvalidSignature},
		{"no key", standardHeaders(vectorID, vectorTimestamp, valid), body, at, nil, signer.ErrNoSecret},
		{"missing id", with(func(h http.Header) { h.Del(signer.HeaderWebhookID) }), body, at, [][]byte{key}, signer.ErrMissingHeader},
		{"missing timestamp", with(func(h http.Header) { h.Del(signer.HeaderWebhookTimestamp) }), body, at, [][]byte{key}, signer.ErrMissingHeader},
		{"missing signature", with(func(h http.Header) { h.Del(signer.HeaderWebhookSignature) }), body, at, [][]byte{key}, signer.ErrMissingSignature},
		{"timestamp not a number", with(func(h http.Header) { h.Set(signer.HeaderWebhookTimestamp, "1614265330abc") }), body, at, [][]byte{key}, signer.ErrInvalidTimestamp},
		{"timestamp in milliseconds", with(func(h http.Header) { h.Set(signer.HeaderWebhookTimestamp, "1614265330000") }), body, at, [][]byte{key}, signer.ErrTimestampTooNew},
		{"timestamp RFC 3339", with(func(h http.Header) { h.Set(signer.HeaderWebhookTimestamp, "2021-02-25T15:02:10Z") }), body, at, [][]byte{key}, signer.ErrInvalidTimestamp},
		{"5 min old: edge, accepted", standardHeaders(vectorID, vectorTimestamp, valid), body, at.Add(signer.DefaultTolerance), [][]byte{key}, nil},
		{"5 min 1 s old", standardHeaders(vectorID, vectorTimestamp, valid), body, at.Add(signer.DefaultTolerance + time.Second), [][]byte{key}, signer.ErrTimestampTooOld},
		{"5 min ahead: edge, accepted", standardHeaders(vectorID, vectorTimestamp, valid), body, at.Add(-signer.DefaultTolerance), [][]byte{key}, nil},
		{"5 min 1 s ahead", standardHeaders(vectorID, vectorTimestamp, valid), body, at.Add(-signer.DefaultTolerance - time.Second), [][]byte{key}, signer.ErrTimestampTooNew},
		{"stale wins over bad signature", standardHeaders(vectorID, vectorTimestamp, sigOld), body, at.Add(time.Hour), [][]byte{key}, signer.ErrTimestampTooOld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := signer.VerifyStandard(tt.h, tt.body, tt.now, tt.keys...)
			if !errors.Is(got, tt.want) || (tt.want == nil) != (got == nil) {
				t.Errorf("VerifyStandard() = %v, want %v", got, tt.want)
			}
		})
	}
}

func FuzzVerifyStandard(f *testing.F) {
	f.Add(vectorID, strconv.Itoa(vectorTimestamp), vectorSignature, []byte(vectorBody))
	f.Add("", "", "", []byte(nil))
	f.Add("id", "-9223372036854775808", "v1,", []byte("{}"))
	f.Add("id", "9223372036854775807", "v1,"+strings.Repeat("=", 44), []byte("{}"))
	key := []byte("fuzz-key")
	now := time.Unix(vectorTimestamp, 0)
	f.Fuzz(func(t *testing.T, id, ts, sig string, body []byte) {
		h := http.Header{}
		h.Set(signer.HeaderWebhookID, id)
		h.Set(signer.HeaderWebhookTimestamp, ts)
		h.Set(signer.HeaderWebhookSignature, sig)
		_ = signer.VerifyStandard(h, body, now, key) // must not panic

		if id == "" {
			return
		}
		h.Set(signer.HeaderWebhookTimestamp, strconv.FormatInt(now.Unix(), 10))
		h.Set(signer.HeaderWebhookSignature, signer.SignStandard(key, id, now, body))
		if err := signer.VerifyStandard(h, body, now, key); err != nil {
			t.Fatalf("VerifyStandard(SignStandard()) = %v, want nil", err)
		}
	})
}
