package fanout

import (
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
)

func TestNext(t *testing.T) {
	now := time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)
	schedule := []time.Duration{0, time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour}
	for _, tc := range []struct {
		name       string
		attempt    int
		status     int
		retryAfter time.Duration
		want       Decision
	}{
		{"2xx", 1, 200, 0, Decision{State: journal.Delivered, Outcome: Delivered}},
		{"204 on the last attempt", 5, 204, 0, Decision{State: journal.Delivered, Outcome: Delivered}},
		{"500 after the first attempt waits 1 min", 1, 500, 0, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(time.Minute)}},
		{"503 after the second waits 5 min", 2, 503, 0, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(5 * time.Minute)}},
		{"timeout after the fourth waits 2 h", 4, 0, 0, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(2 * time.Hour)}},
		{"fifth failure exhausts", 5, 500, 0, Decision{State: journal.Failed, Outcome: Failed, Exhausted: true}},
		{"400 is final", 1, 400, 0, Decision{State: journal.Failed, Outcome: Failed}},
		{"404 is final", 3, 404, 0, Decision{State: journal.Failed, Outcome: Failed}},
		{"a 404 as the fifth failure exhausts the schedule too", 5, 404, 0, Decision{State: journal.Failed, Outcome: Failed, Exhausted: true}},
		{"410 disables", 1, 410, 0, Decision{State: journal.Failed, Outcome: Gone}},
		{"408 is retried", 1, 408, 0, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(time.Minute)}},
		{"425 is retried", 1, 425, 0, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(time.Minute)}},
		{"429 honours a longer Retry-After", 1, 429, 3 * time.Minute, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(3 * time.Minute)}},
		{"429 keeps the schedule when Retry-After is shorter", 2, 429, 10 * time.Second, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(5 * time.Minute)}},
		{"Retry-After is clamped to the longest delay", 1, 429, 24 * time.Hour, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(2 * time.Hour)}},
		{"429 on the last attempt fails", 5, 429, time.Minute, Decision{State: journal.Failed, Outcome: Failed, Exhausted: true}},
		{"redirect is retried", 1, 301, 0, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(time.Minute)}},
		// Only a 4xx says "won't retry" (a review, 2026-12-06: these were final).
		{"101 is retried", 1, 101, 0, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(time.Minute)}},
		{"a status under 100 is retried", 1, 99, 0, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(time.Minute)}},
		{"a status over 599 is retried", 1, 600, 0, Decision{State: journal.Pending, Outcome: Retry, NextAttemptAt: now.Add(time.Minute)}},
	} {
		got := Next(Attempted{Attempt: tc.attempt, Trigger: journal.TriggerAuto, Status: tc.status, RetryAfter: tc.retryAfter}, schedule, now)
		if got != tc.want {
			t.Errorf("%s: Next = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0}, {"120", 2 * time.Minute}, {"-5", 0}, {"soon", 0},
		{"Mon, 15 Jan 2024 14:31:00 GMT", time.Minute},
		{"Mon, 15 Jan 2024 14:00:00 GMT", 0},
		{"99999999", 7 * 24 * time.Hour},
		// More seconds than an int holds, and decimals (not RFC 9110s
		// form, but sent): the longest, and rounded up; both read as none.
		{"99999999999999999999", 7 * 24 * time.Hour}, {"1.5", 2 * time.Second}, {"0.2", time.Second},
		{"1e3", 0}, {"NaN", 0}, {"Inf", 0}, {"+30", 30 * time.Second},
	} {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestNextForOperators: a manual or test attempt is one attempt. It never
// starts a schedule; a manual retry of a delivery still on its schedule
// leaves it there when it does not deliver.
func TestNextForOperators(t *testing.T) {
	now := time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)
	scheduled := now.Add(4 * time.Minute)
	schedule := []time.Duration{0, time.Minute, 5 * time.Minute}
	for _, tc := range []struct {
		name string
		a    Attempted
		want Decision
	}{
		{"manual 2xx", Attempted{Attempt: 6, Trigger: journal.TriggerManual, Status: 200},
			Decision{Outcome: Delivered, State: journal.Delivered}},
		{"manual 500 past the schedule stays failed (and counts as exhausted)", Attempted{Attempt: 6, Trigger: journal.TriggerManual, Status: 500},
			Decision{Outcome: Failed, State: journal.Failed, Exhausted: true}},
		{"manual 500 early in the schedule does not start one", Attempted{Attempt: 1, Trigger: journal.TriggerManual, Status: 500},
			Decision{Outcome: Failed, State: journal.Failed}},
		{"manual 500 of a pending delivery keeps its schedule", Attempted{Attempt: 2, Trigger: journal.TriggerManual, Status: 500, KeepNext: scheduled},
			Decision{Outcome: Failed, State: journal.Pending, NextAttemptAt: scheduled}},
		{"manual 404 of a pending delivery keeps its schedule", Attempted{Attempt: 2, Trigger: journal.TriggerManual, Status: 404, KeepNext: scheduled},
			Decision{Outcome: Failed, State: journal.Pending, NextAttemptAt: scheduled}},
		// Two automatic attempts made, the third due: the manual one does
		// not use the schedule up (it marked the subscription failing).
		{"manual 500 before the last scheduled attempt exhausts nothing", Attempted{Attempt: 3, Trigger: journal.TriggerManual, Status: 500, KeepNext: scheduled},
			Decision{Outcome: Failed, State: journal.Pending, NextAttemptAt: scheduled}},
		{"manual 2xx of a pending delivery delivers it", Attempted{Attempt: 2, Trigger: journal.TriggerManual, Status: 204, KeepNext: scheduled},
			Decision{Outcome: Delivered, State: journal.Delivered}},
		{"test 503 is final", Attempted{Attempt: 1, Trigger: journal.TriggerTest, Status: 503},
			Decision{Outcome: Failed, State: journal.Failed}},
		{"test 410 says gone", Attempted{Attempt: 1, Trigger: journal.TriggerTest, Status: 410},
			Decision{Outcome: Gone, State: journal.Failed}},
		{"auto exhausted", Attempted{Attempt: 3, Trigger: journal.TriggerAuto},
			Decision{Outcome: Failed, State: journal.Failed, Exhausted: true}},
		// A manual retry took no step of the schedule: the third attempt,
		// after one by hand, is the second automatic one.
		{"auto after a manual retry takes the next step", Attempted{Attempt: 3, ByHand: 1, Trigger: journal.TriggerAuto, Status: 500},
			Decision{Outcome: Retry, State: journal.Pending, NextAttemptAt: now.Add(5 * time.Minute)}},
		{"auto exhausted counts automatic attempts", Attempted{Attempt: 4, ByHand: 1, Trigger: journal.TriggerAuto, Status: 500},
			Decision{Outcome: Failed, State: journal.Failed, Exhausted: true}},
	} {
		if got := Next(tc.a, schedule, now); got != tc.want {
			t.Errorf("%s: Next = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestUnsentOutcomesLeaveTheResponseTimes: a failure with no request sent
// (a transform's) counts as failed and in the success rate, and not as a
// response of 0 s (which pulled p50 and p99 down: found by a review).
func TestUnsentOutcomesLeaveTheResponseTimes(t *testing.T) {
	var s stats
	now := time.Now()
	s.record(now, 100*time.Millisecond, Delivered)
	s.record(now, unsentDuration, Failed)
	s.record(now, unsentDuration, Failed)
	got := s.snapshot(now)
	if got.P50MS != 100 || got.P99MS != 100 || got.Failed != 2 || got.Delivered != 1 || got.SuccessRate != 1.0/3 {
		t.Errorf("stats = %+v; want p50 and p99 100 ms, 1 delivered, 2 failed, success 1/3", got)
	}
}
