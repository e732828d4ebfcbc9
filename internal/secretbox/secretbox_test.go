package secretbox

import (
	"bytes"
	"strings"
	"testing"
)

func keyOf(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func TestSealOpenRotate(t *testing.T) {
	old, err := New([][]byte{keyOf(1)})
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := old.Seal([]byte("whsec_secret"), []byte("crm"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(sealed, "whsec_secret") {
		t.Fatalf("sealed value %q shows the secret", sealed)
	}
	rotated, _ := New([][]byte{keyOf(2), keyOf(1)})
	if got, err := rotated.Open(sealed, []byte("crm")); err != nil || string(got) != "whsec_secret" {
		t.Fatalf("open with the old key second: %q, %v", got, err)
	}
	resealed, _ := rotated.Seal([]byte("whsec_secret"), []byte("crm"))
	if !strings.Contains(resealed, "."+rotated.KeyID()+".") || rotated.KeyID() == old.KeyID() {
		t.Errorf("a rotated ring seals with its first key: %q", resealed)
	}
	if !rotated.SealedWithCurrent(resealed) || rotated.SealedWithCurrent(sealed) || !old.SealedWithCurrent(sealed) {
		t.Errorf("SealedWithCurrent: resealed %v, sealed %v under the rotated ring; sealed %v under the old",
			rotated.SealedWithCurrent(resealed), rotated.SealedWithCurrent(sealed), old.SealedWithCurrent(sealed))
	}
	if none := (*Ring)(nil); none.SealedWithCurrent(sealed) || rotated.SealedWithCurrent("plain") {
		t.Error("SealedWithCurrent: true without a ring, or for a value not sealed")
	}
	if _, err := old.Open(resealed, []byte("crm")); err == nil || !strings.Contains(err.Error(), "not among") {
		t.Errorf("opening with a ring that lacks the key: %v", err)
	}
	if _, err := rotated.Open(sealed, []byte("other")); err == nil {
		t.Error("a secret sealed for crm opened for another subscription")
	}
	// One character of the payload changed, away from its last group
	// (whose padding bits a decoder may ignore): "AA" at the end, as this
	// test had it, left 1 in 4,096 values unchanged.
	i := len(sealed) - 8
	c := byte('A')
	if sealed[i] == c {
		c = 'B'
	}
	tampered := sealed[:i] + string(c) + sealed[i+1:]
	if _, err := rotated.Open(tampered, []byte("crm")); err == nil {
		t.Error("an altered value opened")
	}
	var none *Ring
	if _, err := none.Seal([]byte("x"), nil); err != ErrNoKey {
		t.Errorf("seal without a key: %v, want ErrNoKey", err)
	}
	if _, err := New([][]byte{[]byte("short")}); err == nil {
		t.Error("a 5-byte key was accepted")
	}
}
