package signer

import (
	"crypto/hmac"
	"crypto/sha256"
)

// sum256 returns HMAC-SHA256 keyed with key over the concatenation of a
// and b. It uses crypto/hmac as is: a hand-written HMAC saved ~300 ns and a
// few allocations per signature, which is noise beside an HTTP request and
// not worth owning cryptographic code for.
func sum256(key, a, b []byte) [sha256.Size]byte {
	h := hmac.New(sha256.New, key)
	h.Write(a)
	h.Write(b)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}
