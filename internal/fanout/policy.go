package fanout

import (
	"net/http"
	"strconv"
	"time"
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
	}
	return "unknown"
}

// Decision is what happens after an attempt.
type Decision struct {
	Outcome Outcome
	// NextAttemptAt is when the next attempt is due (Retry only).
	NextAttemptAt time.Time
	// Exhausted is set when the last attempt of the schedule failed: the
	// subscription becomes failing.
	Exhausted bool
}

// retryable reports whether a status code is worth another attempt:
// DZDESK's documentation retries 5xx and timeouts and not 4xx, except 408
// Request Timeout, 425 Too Early and 429 Too Many Requests, which say
// "later". A redirect is not followed and counts as a failure to retry.
func retryable(status int) bool {
	switch {
	case status >= 500, status == http.StatusRequestTimeout, status == http.StatusTooEarly, status == http.StatusTooManyRequests:
		return true
	case status >= 300 && status < 400:
		return true
	}
	return false
}

// Decide is the retry policy, a pure function: given the attempt number
// just made (1-based), its status (0 when no response came) and
// Retry-After, the schedule and the time, it says what happens next.
// schedule[i] is the delay before attempt i+1, so its length is the number
// of attempts. A Retry-After longer than the schedule's next delay is
// honoured, clamped to the schedule's longest delay.
func Decide(attempt, status int, retryAfter time.Duration, schedule []time.Duration, now time.Time) Decision {
	switch {
	case status >= 200 && status < 300:
		return Decision{Outcome: Delivered}
	case status == http.StatusGone:
		return Decision{Outcome: Gone}
	case status != 0 && !retryable(status):
		return Decision{Outcome: Failed}
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
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), 7*24*time.Hour)
	}
	return 0
}
