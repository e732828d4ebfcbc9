package signer

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// sigPrefix starts every X-DZDESK-Signature value.
const sigPrefix = "sha256="

// Sign returns the X-DZDESK-Signature value for body:
// "sha256=" followed by the lowercase hex HMAC-SHA256 of body, keyed with
// secret as configured (the string's bytes, not decoded). Sign is safe for
// concurrent use and allocates only the returned string.
func Sign(secret, body []byte) string {
	sum := sum256(secret, body, nil)
	var buf [len(sigPrefix) + 2*sha256.Size]byte
	copy(buf[:], sigPrefix)
	hex.Encode(buf[len(sigPrefix):], sum[:])
	return string(buf[:])
}

// Verify checks header, the value of X-DZDESK-Signature, against body, the
// raw request body. It returns nil when the signature matches under any of
// secrets (several secrets allow a rotation), [ErrNoSecret] when no
// non-empty secret is given, [ErrMissingSignature] when header is empty,
// [ErrMalformedSignature] when it is not "sha256=<64 hex digits>" and
// [ErrInvalidSignature] otherwise. Empty secrets are ignored: an empty key
// would let anyone sign.
//
// The comparison takes the same time wherever the signatures differ.
func Verify(header string, body []byte, secrets ...[]byte) error {
	if !anyKey(secrets) {
		return ErrNoSecret
	}
	if header == "" {
		return ErrMissingSignature
	}
	digits, ok := strings.CutPrefix(header, sigPrefix)
	if !ok || len(digits) != 2*sha256.Size {
		return fmt.Errorf("%w: want %s<%d hex digits>", ErrMalformedSignature, sigPrefix, 2*sha256.Size)
	}
	var got [sha256.Size]byte
	if _, err := hex.Decode(got[:], []byte(digits)); err != nil {
		return fmt.Errorf("%w: want %s<%d hex digits>", ErrMalformedSignature, sigPrefix, 2*sha256.Size)
	}
	for _, secret := range secrets {
		if len(secret) == 0 {
			continue
		}
		want := sum256(secret, body, nil)
		if hmac.Equal(got[:], want[:]) {
			return nil
		}
	}
	return ErrInvalidSignature
}

// anyKey reports whether keys holds at least one non-empty key.
func anyKey(keys [][]byte) bool {
	for _, k := range keys {
		if len(k) > 0 {
			return true
		}
	}
	return false
}
