package signer

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// standardPrefix marks a Standard Webhooks secret: "whsec_" + base64(key).
const standardPrefix = "whsec_"

// standardVersion is the only signature scheme of the specification so far.
const standardVersion = "v1"

// StandardKey returns the HMAC key for a Standard Webhooks secret.
//
// A secret of the form "whsec_<base64>" is base64-decoded (standard
// alphabet, padded), as the Standard Webhooks libraries do; it is an error
// when the rest is not valid base64 or decodes to nothing.
//
// Any other non-empty secret is used as it is: its bytes are the key. The
// Standard Webhooks libraries would base64-decode such a secret too, so a
// receiver using them must pass it as a raw key (JavaScript:
// new Webhook(Buffer.from(secret), {format: "raw"}); Go:
// standardwebhooks.NewWebhookRaw), or the operator should configure a
// whsec_ secret.
func StandardKey(secret string) ([]byte, error) {
	if secret == "" {
		return nil, errors.New("signer: empty standard webhooks secret")
	}
	enc, ok := strings.CutPrefix(secret, standardPrefix)
	if !ok {
		return []byte(secret), nil
	}
	key, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		// err quotes the offending byte and its offset; leave both out,
		// since they are part of the secret.
		return nil, errors.New("signer: standard webhooks secret: whsec_ is not followed by valid base64")
	}
	if len(key) == 0 {
		return nil, errors.New("signer: standard webhooks secret: empty key after whsec_")
	}
	return key, nil
}

// SignStandard returns the webhook-signature value for a message: "v1,"
// followed by the base64 HMAC-SHA256, keyed with key (see [StandardKey]),
// of id + "." + the Unix seconds of ts + "." + body. The caller sends id
// as webhook-id and ts, in Unix seconds, as webhook-timestamp.
func SignStandard(key []byte, id string, ts time.Time, body []byte) string {
	sum := standardSum(key, id, ts.Unix(), body)
	var buf [len(standardVersion) + 1 + 44]byte // 44 = base64 length of 32 bytes
	n := copy(buf[:], standardVersion+",")
	base64.StdEncoding.Encode(buf[n:], sum[:])
	return string(buf[:])
}

// standardSum is the HMAC of the Standard Webhooks signed content,
// id + "." + unix + "." + body.
func standardSum(key []byte, id string, unix int64, body []byte) [sha256.Size]byte {
	// The prefix is built in a stack buffer; a longer id still works,
	// append just moves to the heap.
	var buf [96]byte
	return sum256(key, standardPrefixOf(buf[:0], id, unix), body)
}

// standardPrefixOf appends what the Standard Webhooks signed content has
// before the body, id + "." + unix + ".", to dst.
func standardPrefixOf(dst []byte, id string, unix int64) []byte {
	dst = append(dst, id...)
	dst = append(dst, '.')
	dst = strconv.AppendInt(dst, unix, 10)
	return append(dst, '.')
}

// VerifyStandard checks the Standard Webhooks headers of a request, as
// net/http hands them over, against body, the raw request body. now is the
// receiver's clock; the timestamp may differ from it by [DefaultTolerance]
// either way. It returns nil when any "v1" entry of webhook-signature
// matches under any of keys (see [StandardKey]); entries of other versions
// are ignored.
//
// Errors: [ErrNoSecret] when no non-empty key is given,
// [ErrMissingHeader] for a missing webhook-id or webhook-timestamp,
// [ErrMissingSignature] for a missing webhook-signature,
// [ErrInvalidTimestamp], [ErrTimestampTooOld], [ErrTimestampTooNew], and
// [ErrInvalidSignature] when no entry matches.
func VerifyStandard(h http.Header, body []byte, now time.Time, keys ...[]byte) error {
	return verifyStandard(h, body, now, DefaultTolerance, keys)
}

func verifyStandard(h http.Header, body []byte, now time.Time, tolerance time.Duration, keys [][]byte) error {
	if !anyKey(keys) {
		return ErrNoSecret
	}
	id := h.Get(HeaderWebhookID)
	if id == "" {
		return fmt.Errorf("%w %s", ErrMissingHeader, HeaderWebhookID)
	}
	tsText := h.Get(HeaderWebhookTimestamp)
	if tsText == "" {
		return fmt.Errorf("%w %s", ErrMissingHeader, HeaderWebhookTimestamp)
	}
	sigs := h.Get(HeaderWebhookSignature)
	if sigs == "" {
		return fmt.Errorf("%w: %s", ErrMissingSignature, HeaderWebhookSignature)
	}
	unix, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %s is not Unix seconds", ErrInvalidTimestamp, HeaderWebhookTimestamp)
	}
	// Check the time before the MAC: a stale request is rejected whatever
	// its signature, so a replay costs the receiver no HMAC.
	skew := now.Sub(time.Unix(unix, 0))
	switch {
	case skew > tolerance:
		return fmt.Errorf("%w: %s behind the receiver's clock", ErrTimestampTooOld, skew.Truncate(time.Second))
	case skew < -tolerance:
		return fmt.Errorf("%w: %s ahead of the receiver's clock", ErrTimestampTooNew, (-skew).Truncate(time.Second))
	}

	var wants [][sha256.Size]byte
	for _, key := range keys {
		if len(key) > 0 {
			wants = append(wants, standardSum(key, id, unix, body))
		}
	}
	for _, entry := range strings.Fields(sigs) {
		version, enc, ok := strings.Cut(entry, ",")
		if !ok || version != standardVersion || len(enc) != 44 {
			continue
		}
		var got [sha256.Size + 1]byte // DecodedLen(44) is 33
		n, err := base64.StdEncoding.Decode(got[:], []byte(enc))
		if err != nil || n != sha256.Size {
			continue
		}
		for _, want := range wants {
			if hmac.Equal(got[:n], want[:]) {
				return nil
			}
		}
	}
	return ErrInvalidSignature
}

// hasStandardHeaders reports whether h carries any Standard Webhooks header.
func hasStandardHeaders(h http.Header) bool {
	return h.Get(HeaderWebhookID) != "" || h.Get(HeaderWebhookTimestamp) != "" || h.Get(HeaderWebhookSignature) != ""
}
