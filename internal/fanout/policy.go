package fanout

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
)

// Outcome is what an attempt means for its delivery.
type Outcome uint8

// The outcomes of an attempt.
const (
	// Delivered: 2xx.
	Delivered Outcome = iota + 1
	// Retry: 5xx, 408, 425, 429, 3xx, timeout or connection error, with
	// attempts left in the schedule.
	Retry
	// Failed: a final 4xx, or the last attempt of the schedule failed.
	Failed
	// Gone: 410 Gone. The delivery fails and the subscription is disabled.
	Gone
	// Skipped: the subscription's transform gave null; nothing was sent.
	Skipped
)

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Retry:
		return "retry"
	case Failed:
		return "failed"
	case Gone:
		return "gone"
	case Skipped:
		return "skipped"
	}
	return "unknown"
}

// Decision is what follows an attempt.
type Decision struct {
	Outcome Outcome
	// State is the delivery's state after the attempt.
	State journal.State
	// NextAttemptAt is when the next attempt is due (State pending).
	NextAttemptAt time.Time
	// Exhausted is set when the last attempt of the schedule failed: the
	// subscription becomes failing.
	Exhausted bool
}

// Attempted is an attempt just made, as Next sees it.
type Attempted struct {
	// Attempt is the attempt's number, 1-based.
	Attempt int
	// ByHand counts the delivery's earlier attempts made by hand: the
	// schedule counts automatic attempts only (a manual retry is one
	// attempt, no new schedule, and takes no step of it).
	ByHand  int
	Trigger journal.Trigger
	// KeepNext is set for a manual retry of a delivery that is still on
	// its schedule: when its next scheduled attempt is due.
	KeepNext time.Time
	// Status is the HTTP status, 0 when no response came.
	Status int
	// RetryAfter is the receiver's Retry-After, 0 when none.
	RetryAfter time.Duration
}

// retryable reports whether a status code is worth another attempt:
// DZDESK's documentation retries 5xx and timeouts and not 4xx, except 408
// Request Timeout, 425 Too Early and 429 Too Many Requests, which say
// "later". A redirect is not followed and counts as a failure to retry,
// and so does any other answer that is neither a success nor a 4xx (a 101,
// a status under 100): only a 4xx says "won't retry".
func retryable(status int) bool {
	switch {
	case status >= 400 && status < 500:
		return status == http.StatusRequestTimeout || status == http.StatusTooEarly || status == http.StatusTooManyRequests
	}
	return true
}

// Next is the retry policy, a pure function and the only place that
// decides what follows an attempt: given the attempt, the schedule and the
// time, it says the delivery's outcome and state. schedule[i] is the delay
// before attempt i+1, so its length is the number of attempts. A
// Retry-After longer than the schedule's next delay is honoured, clamped
// to the schedule's longest delay. A manual or test attempt is one
// attempt: it never starts a new schedule, and a manual retry of a
// delivery still on its schedule that does not deliver leaves it there
// (due at KeepNext).
func Next(a Attempted, schedule []time.Duration, now time.Time) Decision {
	auto := a.Attempt - a.ByHand // automatic attempts, this one included
	if a.Trigger != journal.TriggerAuto {
		// Not this one: a failed manual retry of a delivery still on its
		// schedule has not used the schedule up (marked the subscription
		// failing with the delivery's retries still to come).
		auto--
	}
	d := decide(auto, a.Status, a.RetryAfter, schedule, now)
	if d.Outcome == Retry && a.Trigger != journal.TriggerAuto {
		d = Decision{Outcome: Failed}
	}
	switch {
	case d.Outcome == Delivered:
		d.State = journal.Delivered
	case d.Outcome == Retry:
		d.State = journal.Pending
	case !a.KeepNext.IsZero():
		d.State, d.NextAttemptAt = journal.Pending, a.KeepNext
	default:
		d.State = journal.Failed
	}
	return d
}

// decide maps an automatic attempt's answer to its outcome.
func decide(attempt, status int, retryAfter time.Duration, schedule []time.Duration, now time.Time) Decision {
	switch {
	case status >= 200 && status < 300:
		return Decision{Outcome: Delivered}
	case status == http.StatusGone:
		return Decision{Outcome: Gone}
	case status != 0 && !retryable(status):
		// Final whatever the schedule; the schedule's last attempt uses
		// it up all the same (four 503s and then a 404 left the
		// subscription healthy: found by a review).
		return Decision{Outcome: Failed, Exhausted: attempt >= len(schedule)}
	}
	if attempt >= len(schedule) {
		return Decision{Outcome: Failed, Exhausted: true}
	}
	delay := schedule[attempt]
	if retryAfter > delay {
		longest := time.Duration(0)
		for _, d := range schedule {
			longest = max(longest, d)
		}
		delay = min(retryAfter, max(longest, delay))
	}
	return Decision{Outcome: Retry, NextAttemptAt: now.Add(delay)}
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP
// date. Anything else is no delay.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(min(n, 7*24*3600)) * time.Second
	} else if allDigits(v) {
		return 7 * 24 * time.Hour // more seconds than an int holds: the longest
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil && f > 0 && !strings.ContainsAny(v, "eEnNiI") {
		// Not RFC 9110's form, but said by some (\"1.5\"): rounded up, as a
		// receiver asking for 1.5 s means no less.
		return time.Duration(math.Ceil(min(f, 7*24*3600))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), 7*24*time.Hour)
	}
	return 0
}

// allDigits reports whether v is a non-empty run of ASCII digits.
func allDigits(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return false
		}
	}
	return v != ""
}
