package signer

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"time"
)

// Verifier checks the signatures of incoming deliveries: X-DZDESK-Signature
// when Secrets are set, and the Standard Webhooks headers when StandardKeys
// are set and the request carries them (or RequireStandard says they must
// be there). Its zero value verifies nothing: every request fails with
// [ErrNoSecret]. A Verifier must not be modified once in use; it is then
// safe for concurrent use.
type Verifier struct {
	// Secrets verify X-DZDESK-Signature, which must then be present; a
	// delivery verifying under any of them is accepted, so the old and
	// the new secret can both be listed during a rotation. Each is the
	// secret's bytes as configured. Defaults to none: X-DZDESK-Signature
	// is not checked.
	Secrets [][]byte

	// StandardKeys verify the Standard Webhooks headers (turn a secret into
	// a key with [StandardKey]); any of them is enough. The headers are
	// checked when the request carries any of them, when RequireStandard is
	// set, or when Secrets is empty. Defaults to none: the headers are
	// ignored.
	StandardKeys [][]byte

	// RequireStandard rejects requests without the Standard Webhooks
	// headers, so that a replay cannot slip past the timestamp check by
	// leaving them out. Defaults to false.
	RequireStandard bool

	// Tolerance is how far webhook-timestamp may lie from NowFunc's time,
	// either way. Defaults to DefaultTolerance (5 minutes).
	Tolerance time.Duration

	// MaxBodyBytes bounds the body Middleware reads; a larger body gets
	// 413 Request Entity Too Large. Defaults to DefaultMaxBodyBytes (2 MiB).
	MaxBodyBytes int64

	// NowFunc is the clock the timestamp is checked against. Defaults to
	// time.Now.
	NowFunc func() time.Time
}

// Verify checks the signature headers in h against body, the raw request
// body, as the Verifier's fields describe. It returns nil or an error
// wrapping one of the package's sentinel errors.
func (v *Verifier) Verify(h http.Header, body []byte) error {
	if len(v.Secrets) > 0 {
		if err := Verify(h.Get(HeaderSignature), body, v.Secrets...); err != nil {
			return err
		}
	}
	// With no DZDESK secret the Standard Webhooks signature is all there
	// is, so it is required; verifyStandard reports ErrNoSecret when there
	// are no keys either.
	if v.RequireStandard || len(v.Secrets) == 0 || (len(v.StandardKeys) > 0 && hasStandardHeaders(h)) {
		return verifyStandard(h, body, v.now(), v.tolerance(), v.StandardKeys)
	}
	return nil
}

// Middleware returns a handler that reads the request body (at most
// MaxBodyBytes), verifies it and, when it verifies, calls next with the
// same request, its body replaced by the bytes read, so next can read them
// again. Otherwise it answers with a short plain-text reason and does not
// call next: 401 Unauthorized for a missing or bad signature, 413 for a
// body over the limit, 400 when the body cannot be read and 500 when the
// Verifier has no secret.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, v.maxBodyBytes()))
		if err != nil {
			if tooBig := (*http.MaxBytesError)(nil); errors.As(err, &tooBig) {
				http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "cannot read request body", http.StatusBadRequest)
			return
		}
		if err := v.Verify(r.Header, body); err != nil {
			if errors.Is(err, ErrNoSecret) {
				// The receiver's fault, not the sender's: a 4xx would make
				// dzhook give up on the delivery for good.
				http.Error(w, "signature verification is not configured", http.StatusInternalServerError)
				return
			}
			http.Error(w, reason(err), http.StatusUnauthorized)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		next.ServeHTTP(w, r)
	})
}

func (v *Verifier) now() time.Time {
	if v.NowFunc != nil {
		return v.NowFunc()
	}
	return time.Now()
}

func (v *Verifier) tolerance() time.Duration {
	if v.Tolerance > 0 {
		return v.Tolerance
	}
	return DefaultTolerance
}

func (v *Verifier) maxBodyBytes() int64 {
	if v.MaxBodyBytes > 0 {
		return v.MaxBodyBytes
	}
	return DefaultMaxBodyBytes
}
