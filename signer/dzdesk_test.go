package signer_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/dzdesk/dzhook/signer"
)

var (
	testSecret = []byte("s3cr3t-dzdesk-0123456789")
	testBody   = []byte(`{"id":"whk_abc123","event":"request.created","timestamp":"2024-01-15T14:30:00Z","data":{"title":"Café ☕"}}`)
)

func TestSign(t *testing.T) {
	tests := []struct {
		name         string
		secret, body []byte
		want         string
	}{
		// RFC 4231, test case 2.
		{"rfc4231", []byte("Jefe"), []byte("what do ya want for nothing?"), "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
		// echo -n '' | openssl dgst -sha256 -hmac key
		{"empty body", []byte("key"), nil, "sha256=5d5d139563c95b5967b9bd9a8c9b233a9dedb45072794cd232dc1b74832607d0"},
		// The whsec_ prefix is part of the X-DZDESK-Signature key, as in
		// the documented Node and Python snippets.
		{"whsec prefix kept", []byte("whsec_c2VjcmV0"), []byte("{}"), "sha256=" + hexHMAC("whsec_c2VjcmV0", "{}")},
		{"utf-8 secret", []byte("clé-🔑"), []byte(`{"t":"日本語"}`), "sha256=" + hexHMAC("clé-🔑", `{"t":"日本語"}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := signer.Sign(tt.secret, tt.body); got != tt.want {
				t.Errorf("Sign() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	valid := signer.Sign(testSecret, testBody)
	oldSecret := []byte("old-secret-0123456789")
	tampered := []byte(strings.Replace(string(testBody), "☕", "☔", 1))

	tests := []struct {
		name    string
		header  string
		body    []byte
		secrets [][]byte
		want    error
	}{
		{"valid", valid, testBody, [][]byte{testSecret}, nil},
		{"valid, uppercase hex", "sha256=" + strings.ToUpper(strings.TrimPrefix(valid, "sha256=")), testBody, [][]byte{testSecret}, nil},
		{"tampered body", valid, tampered, [][]byte{testSecret}, signer.ErrInvalidSignature},
		{"body with a trailing newline", valid, append(append([]byte(nil), testBody...), '\n'), [][]byte{testSecret}, signer.ErrInvalidSignature},
		{"wrong secret", valid, testBody, [][]byte{oldSecret}, signer.ErrInvalidSignature},
		{"rotation, new secret second", valid, testBody, [][]byte{oldSecret, testSecret}, nil},
		{"rotation, old secret still signs", signer.Sign(oldSecret, testBody), testBody, [][]byte{testSecret, oldSecret}, nil},
		{"empty secrets ignored", valid, testBody, [][]byte{nil, testSecret}, nil},
		{"empty secret does not verify an empty-key signature", signer.Sign(nil, testBody), testBody, [][]byte{{}, testSecret}, signer.ErrInvalidSignature},
		{"no secret", valid, testBody, nil, signer.ErrNoSecret},
		{"only empty secrets", valid, testBody, [][]byte{{}}, signer.ErrNoSecret},
		{"missing header", "", testBody, [][]byte{testSecret}, signer.ErrMissingSignature},
		{"no prefix", strings.TrimPrefix(valid, "sha256="), testBody, [][]byte{testSecret}, signer.ErrMalformedSignature},
		{"other algorithm", "sha1=" + strings.TrimPrefix(valid, "sha256="), testBody, [][]byte{testSecret}, signer.ErrMalformedSignature},
		{"prefix only", "sha256=", testBody, [][]byte{testSecret}, signer.ErrMalformedSignature},
		{"short", valid[:len(valid)-2], testBody, [][]byte{testSecret}, signer.ErrMalformedSignature},
		{"long", valid + "00", testBody, [][]byte{testSecret}, signer.ErrMalformedSignature},
		{"not hex", valid[:len(valid)-1] + "g", testBody, [][]byte{testSecret}, signer.ErrMalformedSignature},
		{"leading space", " " + valid, testBody, [][]byte{testSecret}, signer.ErrMalformedSignature},
		{"one digit off", valid[:len(valid)-1] + flipHex(valid[len(valid)-1]), testBody, [][]byte{testSecret}, signer.ErrInvalidSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := signer.Verify(tt.header, tt.body, tt.secrets...)
			if !errors.Is(got, tt.want) || (tt.want == nil) != (got == nil) {
				t.Errorf("Verify() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestVerifyErrorsHideSecrets(t *testing.T) {
	// A wrong signature must not learn the right one from the error, nor
	// the secret (e.g. from a 401 body or a log line).
	expected := strings.TrimPrefix(signer.Sign(testSecret, testBody), "sha256=")
	for _, header := range []string{"", "sha256=zz", signer.Sign([]byte("other-secret"), testBody)} {
		err := signer.Verify(header, testBody, testSecret)
		if err == nil {
			t.Fatalf("Verify(%q) = nil, want an error", header)
		}
		if msg := err.Error(); strings.Contains(msg, expected) || strings.Contains(msg, string(testSecret)) {
			t.Errorf("Verify(%q) error %q reveals the secret or the expected MAC", header, msg)
		}
	}
}

func FuzzVerify(f *testing.F) {
	f.Add("sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", []byte("what do ya want for nothing?"), []byte("Jefe"))
	f.Add("", []byte(nil), []byte(nil))
	f.Add("sha256=ZZ", []byte("{}"), []byte("k"))
	f.Fuzz(func(t *testing.T, header string, body, secret []byte) {
		err := signer.Verify(header, body, secret) // must not panic
		if err == nil && len(secret) == 0 {
			t.Fatalf("Verify(%q) with an empty secret = nil", header)
		}
		if len(secret) > 0 {
			if err := signer.Verify(signer.Sign(secret, body), body, secret); err != nil {
				t.Fatalf("Verify(Sign(body)) = %v, want nil", err)
			}
		}
	})
}

func BenchmarkSign(b *testing.B) {
	body := []byte(strings.Repeat("x", 600))
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		signer.Sign(testSecret, body)
	}
}

func BenchmarkVerify(b *testing.B) {
	body := []byte(strings.Repeat("x", 600))
	header := signer.Sign(testSecret, body)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if err := signer.Verify(header, body, testSecret); err != nil {
			b.Fatal(err)
		}
	}
}
