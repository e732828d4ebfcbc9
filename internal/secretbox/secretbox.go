// Package secretbox keeps secrets encrypted at rest: AES-256-GCM under a
// ring of keys, the first of which encrypts and every one of which
// decrypts, so keys can be rotated (add the new key first, and drop the
// old one once everything has been written again).
//
// A sealed value is "v1." + the key's id (the first 4 bytes of SHA-256 of
// the key, hex) + "." + base64(nonce ‖ ciphertext). The additional data
// binds it to what it belongs to (a subscription's id), so a value copied
// onto another row does not open.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// ErrNoKey means the ring is empty: nothing can be sealed.
var ErrNoKey = errors.New("no secrets key configured")

// Ring is a list of keys; the zero Ring has none.
type Ring struct {
	keys []key
}

type key struct {
	id   string
	aead cipher.AEAD
}

// New builds a ring from 32-byte keys, the first used to seal.
func New(keys [][]byte) (*Ring, error) {
	r := &Ring{}
	for i, k := range keys {
		if len(k) != 32 {
			return nil, fmt.Errorf("secrets key %d is %d bytes, want 32", i, len(k))
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(k)
		r.keys = append(r.keys, key{id: hex.EncodeToString(sum[:4]), aead: aead})
	}
	return r, nil
}

// CanSeal reports whether the ring has a key.
func (r *Ring) CanSeal() bool { return r != nil && len(r.keys) > 0 }

// Seal encrypts plaintext for aad with the first key.
func (r *Ring) Seal(plaintext, aad []byte) (string, error) {
	if !r.CanSeal() {
		return "", ErrNoKey
	}
	k := r.keys[0]
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := k.aead.Seal(nonce, nonce, plaintext, aad)
	return "v1." + k.id + "." + base64.RawStdEncoding.EncodeToString(out), nil
}

// Open decrypts a sealed value for aad with the key it names.
func (r *Ring) Open(sealed string, aad []byte) ([]byte, error) {
	parts := strings.SplitN(sealed, ".", 3)
	if len(parts) != 3 || parts[0] != "v1" {
		return nil, errors.New("not a sealed secret")
	}
	raw, err := base64.RawStdEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, errors.New("sealed secret: bad encoding")
	}
	if r != nil {
		for _, k := range r.keys {
			if k.id != parts[1] {
				continue
			}
			n := k.aead.NonceSize()
			if len(raw) < n {
				return nil, errors.New("sealed secret: too short")
			}
			plain, err := k.aead.Open(nil, raw[:n], raw[n:], aad)
			if err != nil {
				return nil, errors.New("sealed secret: does not open with key " + k.id + " (altered, or sealed for another subscription)")
			}
			return plain, nil
		}
	}
	return nil, fmt.Errorf("sealed secret: key %s is not among secrets.key/secrets.keys (it was removed before the secret was written again)", parts[1])
}

// SealedWithCurrent reports whether sealed was sealed with the key that
// seals now (the ring's first): a value sealed with a later key of the
// ring is written again before that key can be dropped.
func (r *Ring) SealedWithCurrent(sealed string) bool {
	parts := strings.SplitN(sealed, ".", 3)
	return len(parts) == 3 && parts[0] == "v1" && r.CanSeal() && parts[1] == r.keys[0].id
}

// KeyID is the id of the key that seals.
func (r *Ring) KeyID() string {
	if !r.CanSeal() {
		return ""
	}
	return r.keys[0].id
}
