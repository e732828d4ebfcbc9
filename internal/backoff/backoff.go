// Package backoff is dzhook's one retry delay: capped exponential, with
// jitter on the upper half ("equal jitter"), so that processes that lost
// the same database at the same moment do not all come back at once.
//
// Every loop that retries a database or network operation (the
// replication connection, the journal writer, start-up) uses it; the
// delivery schedule is not a backoff (it is the subscription's retry
// schedule, in the journal).
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is one retry loop's delay. The zero value is not usable: use
// New. Not safe for concurrent use.
type Backoff struct {
	min, max, cur time.Duration
}

// New returns a Backoff starting at minDelay and doubling up to maxDelay.
func New(minDelay, maxDelay time.Duration) *Backoff {
	minDelay = max(minDelay, time.Millisecond)
	return &Backoff{min: minDelay, max: max(maxDelay, minDelay), cur: minDelay}
}

// Current is the nominal delay of the next wait (the jittered wait lies
// in [Current/2, Current]).
func (b *Backoff) Current() time.Duration { return b.cur }

// Next returns the next delay, jittered, and doubles the nominal one up
// to the cap.
func (b *Backoff) Next() time.Duration {
	d := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(b.cur*2, b.max)
	return d
}

// Reset starts again from the smallest delay (after a success).
func (b *Backoff) Reset() { b.cur = b.min }

// Wait sleeps for Next, or until ctx ends (then it returns ctx's error).
func (b *Backoff) Wait(ctx context.Context) error {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
