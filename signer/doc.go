// Package signer signs DZDESK webhook deliveries and verifies them on the
// receiving side. It uses the standard library only, so a Go receiver can
// import it without pulling in the rest of dzhook.
//
// # X-DZDESK-Signature
//
// Every delivery carries
//
//	X-DZDESK-Signature: sha256=<lowercase hex HMAC-SHA256 of the raw body>
//
// keyed with the subscription's secret exactly as configured: the bytes of
// the string, with no decoding (a secret that starts with "whsec_" is used
// whole, prefix included). This is what the Node and Python snippets of the
// public DZDESK documentation compute, so receivers written from those
// snippets and receivers using [Verify] accept the same deliveries.
//
// The signature covers the body bytes as sent. A receiver must verify the
// raw body before any JSON decoding: re-encoding a parsed body changes key
// order, spacing and escapes, and the signature no longer matches.
//
// # Standard Webhooks
//
// A subscription may also carry the Standard Webhooks v1 headers
// (https://www.standardwebhooks.com): webhook-id, webhook-timestamp (Unix
// seconds) and webhook-signature, which holds one or more space-separated
// "v1,<base64 HMAC-SHA256 of id.timestamp.body>" entries. Those libraries
// key the HMAC with a "whsec_<base64>" secret, decoded; see [StandardKey]
// for how a secret becomes a key. Because the signed content includes the
// timestamp, [VerifyStandard] also rejects deliveries older or newer than
// [DefaultTolerance], which stops replays of captured requests.
//
// # Sending
//
// [Sign] and [SignStandard] are safe for concurrent use and key a new
// HMAC per call. A sender that signs many messages with the same few
// keys gives each sending goroutine a [Signer], which keeps the keyed
// HMACs between messages (dzhook's delivery workers do).
//
// # Receiving
//
// A Go receiver wraps its handler in [Verifier.Middleware], which reads the
// body (bounded), answers 401 when the signature does not verify and hands
// the next handler a request whose body can be read again. Lower-level
// receivers call [Verify] or [VerifyStandard] themselves.
//
// Several secrets may be given to every verifying function: a delivery that
// verifies under any of them is accepted, so an endpoint can accept the old
// and the new secret while a rotation is rolled out.
//
// Errors never contain a secret or an expected signature; they wrap the
// sentinel errors of this package, for use with [errors.Is].
package signer
