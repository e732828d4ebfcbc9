package signer

import (
	"errors"
	"strings"
	"time"
)

// Headers of a DZDESK delivery.
const (
	// HeaderSignature carries "sha256=<hex>", the HMAC-SHA256 of the body.
	HeaderSignature = "X-DZDESK-Signature"
	// HeaderEvent carries the event name, e.g. "request.created".
	HeaderEvent = "X-DZDESK-Event"
	// HeaderDelivery carries the delivery id ("dlv_…"), the same for every
	// attempt of one delivery.
	HeaderDelivery = "X-DZDESK-Delivery"
	// HeaderAttempt carries the attempt number, starting at 1.
	HeaderAttempt = "X-DZDESK-Attempt"
)

// Headers of the Standard Webhooks v1 specification, sent when a
// subscription asks for them.
const (
	// HeaderWebhookID carries the message id; it is part of the signed
	// content and stays the same across retries.
	HeaderWebhookID = "webhook-id"
	// HeaderWebhookTimestamp carries the time of the attempt, in Unix
	// seconds; it is part of the signed content.
	HeaderWebhookTimestamp = "webhook-timestamp"
	// HeaderWebhookSignature carries one or more space-separated
	// "v1,<base64>" signatures.
	HeaderWebhookSignature = "webhook-signature"
)

// DefaultTolerance is how far a webhook-timestamp may lie from the
// receiver's clock, in either direction, for [VerifyStandard]: the value
// the Standard Webhooks libraries use.
const DefaultTolerance = 5 * time.Minute

// DefaultMaxBodyBytes bounds the body [Verifier.Middleware] reads when
// [Verifier.MaxBodyBytes] is 0: 2 MiB, room for the largest event dzhook
// sends (its data up to 1 MiB, in the envelope: an event from a row, the
// outbox or a message with more data is rejected, not sent). At 1 MiB, a delivery of
// the largest data dzhook takes was answered 413, which dzhook records as
// a final failure.
const DefaultMaxBodyBytes = 2 << 20

// Errors returned by the verifying functions, possibly wrapped with
// detail; test for them with [errors.Is].
var (
	// ErrNoSecret means no (non-empty) secret or key was given, so
	// nothing can be verified. It is a configuration error of the
	// receiver, not a bad request.
	ErrNoSecret = errors.New("signer: no secret configured")
	// ErrMissingSignature means the signature header is absent or empty.
	ErrMissingSignature = errors.New("signer: missing signature")
	// ErrMalformedSignature means the X-DZDESK-Signature header is not
	// "sha256=" followed by 64 hex digits.
	ErrMalformedSignature = errors.New("signer: malformed signature")
	// ErrInvalidSignature means the signature is well formed but matches
	// the body under none of the secrets.
	ErrInvalidSignature = errors.New("signer: invalid signature")
	// ErrMissingHeader means webhook-id or webhook-timestamp is absent.
	ErrMissingHeader = errors.New("signer: missing header")
	// ErrInvalidTimestamp means webhook-timestamp is not an integer.
	ErrInvalidTimestamp = errors.New("signer: invalid timestamp")
	// ErrTimestampTooOld means webhook-timestamp is further in the past
	// than the tolerance: possibly a replayed request.
	ErrTimestampTooOld = errors.New("signer: timestamp too old")
	// ErrTimestampTooNew means webhook-timestamp is further in the future
	// than the tolerance.
	ErrTimestampTooNew = errors.New("signer: timestamp too new")
)

// reason is err's text without the package prefix, short enough for a
// 401 answer or a log column.
func reason(err error) string {
	return strings.TrimPrefix(err.Error(), "signer: ")
}
