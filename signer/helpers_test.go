package signer_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
)

// hexHMAC is an independent HMAC-SHA256 over crypto/hmac, for wants.
func hexHMAC(secret, body string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(body))
	return hex.EncodeToString(m.Sum(nil))
}

// flipHex returns a hex digit different from c.
func flipHex(c byte) string {
	if c == '0' {
		return "1"
	}
	return "0"
}
