package signer_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/signer"
)

// TestSignerSignsAsSign: a Signer's signatures are Sign's and
// SignStandard's, whatever order its keys come in: more keys than it
// keeps, a key coming back after it was replaced, keys that are prefixes
// of each other, an empty one.
func TestSignerSignsAsSign(t *testing.T) {
	keys := [][]byte{
		[]byte("whsec_first-secret"), []byte("second"), []byte("whsec_first-secre"), {},
		[]byte("third-3333"), []byte("second"), make([]byte, 100), []byte("whsec_first-secret"),
	}
	bodies := [][]byte{[]byte(`{"a":1}`), nil, []byte("Café ☕"), make([]byte, 5000)}
	ts := time.Unix(1735689600, 0)
	for _, sg := range []*signer.Signer{new(signer.Signer), nil} {
		for round := range 3 {
			for i, k := range keys {
				for j, b := range bodies {
					name := fmt.Sprintf("nil=%v round %d key %d body %d", sg == nil, round, i, j)
					if got, want := sg.Sign(k, b), signer.Sign(k, b); got != want {
						t.Fatalf("%s: Sign = %s, want %s", name, got, want)
					}
					id := fmt.Sprintf("evt_%d_%d", i, j)
					if got, want := sg.SignStandard(k, id, ts, b), signer.SignStandard(k, id, ts, b); got != want {
						t.Fatalf("%s: SignStandard = %s, want %s", name, got, want)
					}
				}
			}
		}
	}
}

// TestSignerKeysOnce: a warm Signer allocates only the signature string.
func TestSignerKeysOnce(t *testing.T) {
	var sg signer.Signer
	dz, std := []byte("whsec_c2VjcmV0LXNlY3JldA"), []byte("standard-key-0123")
	body := make([]byte, 600)
	ts := time.Unix(1735689600, 0)
	sign := func() {
		_ = sg.Sign(dz, body)
		_ = sg.SignStandard(std, "evt_1", ts, body)
	}
	sign()
	if n := testing.AllocsPerRun(100, sign); n > 2 {
		t.Errorf("a warm Signer allocated %.0f times for two signatures, want 2 (the strings)", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = signer.Sign(dz, body) }); n <= 1 {
		t.Errorf("Sign allocated %.0f times: the comparison above no longer shows what Signer saves", n)
	}
}

func BenchmarkSigner(b *testing.B) {
	body := make([]byte, 600)
	var sg signer.Signer
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		sg.Sign(testSecret, body)
	}
}
