package signer

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"testing"
)

// cryptoHMAC is the reference sum256 is held to.
func cryptoHMAC(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

func TestSum256MatchesCryptoHMAC(t *testing.T) {
	// Key lengths around the block size (64) exercise the padding and the
	// hash-the-long-key branch.
	for _, keyLen := range []int{0, 1, 16, 32, 63, 64, 65, 100, 200} {
		for _, split := range []struct{ a, b int }{{0, 0}, {1, 0}, {0, 1}, {55, 9}, {64, 0}, {300, 300}, {1000, 17}} {
			t.Run(fmt.Sprintf("key%d/a%d+b%d", keyLen, split.a, split.b), func(t *testing.T) {
				key := bytes.Repeat([]byte{0xa5}, keyLen)
				a := bytes.Repeat([]byte("a"), split.a)
				b := bytes.Repeat([]byte("é"), split.b)
				got := sum256(key, a, b)
				want := cryptoHMAC(key, append(append([]byte(nil), a...), b...))
				if !bytes.Equal(got[:], want) {
					t.Errorf("sum256 = %x, want %x", got, want)
				}
			})
		}
	}
}
