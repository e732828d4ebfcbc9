package signer

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"hash"
	"time"
)

// Signer makes the same signatures as [Sign] and [SignStandard] for a
// sender that signs many messages with the same few keys: it keeps the
// keyed HMAC of each key it was given last (up to four) and resets it for
// the next message instead of keying a new one. hmac.New allocates six
// times (512 bytes) and hashes the key's two padded blocks on every call;
// a reset does neither, which is about a thirtieth of a webhook sender's
// CPU when it catches up (dzhook's BENCHMARKS.md, "Issue 17").
//
// A Signer is not safe for concurrent use: give each sending goroutine its
// own. The zero value is ready to use; a nil *Signer signs as [Sign] and
// [SignStandard] do.
type Signer struct {
	macs [4]keyedMAC
	next int // the entry the next new key replaces
	// Scratch for what goes through hash.Hash's methods: a buffer on the
	// stack would escape to the heap there, once per signature.
	out    [sha256.Size]byte
	prefix []byte
}

// keyedMAC is an HMAC-SHA256 keyed with key (a copy of the caller's).
type keyedMAC struct {
	key []byte
	h   hash.Hash
}

// Sign is [Sign], with secret's HMAC kept for the next call.
func (s *Signer) Sign(secret, body []byte) string {
	if s == nil {
		return Sign(secret, body)
	}
	sum := s.sum(secret, body, nil)
	var buf [len(sigPrefix) + 2*sha256.Size]byte
	copy(buf[:], sigPrefix)
	hex.Encode(buf[len(sigPrefix):], sum[:])
	return string(buf[:])
}

// SignStandard is [SignStandard], with key's HMAC kept for the next call.
func (s *Signer) SignStandard(key []byte, id string, ts time.Time, body []byte) string {
	if s == nil {
		return SignStandard(key, id, ts, body)
	}
	s.prefix = standardPrefixOf(s.prefix[:0], id, ts.Unix())
	sum := s.sum(key, s.prefix, body)
	var buf [len(standardVersion) + 1 + 44]byte // 44 = base64 length of 32 bytes
	n := copy(buf[:], standardVersion+",")
	base64.StdEncoding.Encode(buf[n:], sum[:])
	return string(buf[:])
}

// sum is sum256 through the kept HMAC of key.
func (s *Signer) sum(key, a, b []byte) [sha256.Size]byte {
	h := s.mac(key)
	h.Reset()
	h.Write(a)
	h.Write(b)
	h.Sum(s.out[:0])
	return s.out
}

// mac is the kept HMAC of key, keyed now if it is not kept (replacing the
// oldest of four). Keys are compared in constant time, as any comparison
// of secret bytes here is.
func (s *Signer) mac(key []byte) hash.Hash {
	for i := range s.macs {
		m := &s.macs[i]
		if m.h != nil && len(m.key) == len(key) && subtle.ConstantTimeCompare(m.key, key) == 1 {
			return m.h
		}
	}
	m := &s.macs[s.next]
	s.next = (s.next + 1) % len(s.macs)
	m.key = append(m.key[:0], key...)
	m.h = hmac.New(sha256.New, m.key)
	return m.h
}
