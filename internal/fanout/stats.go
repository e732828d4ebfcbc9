package fanout

import (
	"slices"
	"sync"
	"time"
)

// stats keeps a subscription's recent history in memory, for the admin
// API and the dashboard: the last attempts' durations, and counts per
// minute over the last hour. It is this process's view since it started.
type stats struct {
	mu        sync.Mutex
	durations [512]time.Duration // ring of the last attempts
	n         int                // durations recorded (ring is full past 512)
	minutes   [60]minute
	delivered uint64
	failed    uint64
	retried   uint64
}

type minute struct {
	start     int64 // unix minute
	delivered int
	failed    int
}

// unsentDuration records an outcome with no request sent (a transform's
// failure): counted, and kept out of the response times (its 0 s pulled
// their p50 and p99 down: found by a review).
const unsentDuration time.Duration = -1

// record notes a finished attempt.
func (s *stats) record(now time.Time, d time.Duration, outcome Outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d != unsentDuration {
		s.durations[s.n%len(s.durations)] = d
		s.n++
	}
	m := now.Unix() / 60
	slot := &s.minutes[m%60]
	if slot.start != m {
		*slot = minute{start: m}
	}
	switch outcome {
	case Delivered:
		s.delivered++
		slot.delivered++
	case Retry:
		s.retried++
		slot.failed++
	default:
		s.failed++
		slot.failed++
	}
}

// Stats is a subscription's recent delivery history.
type Stats struct {
	// Delivered, Failed and Retried count attempts since this process
	// started: 2xx, final failures, failures to retry.
	Delivered uint64
	Failed    uint64
	Retried   uint64
	// SuccessRate is the share of 2xx among the attempts of the last hour
	// (-1 without attempts).
	SuccessRate float64
	// P50MS and P99MS are response times of the last 512 attempts.
	P50MS float64
	P99MS float64
	// PerMinute is the last 60 minutes, oldest first.
	PerMinute []MinuteCount
}

// MinuteCount is one minute of the chart.
type MinuteCount struct {
	Minute    time.Time
	Delivered int
	Failed    int
}

func (s *stats) snapshot(now time.Time) Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Stats{Delivered: s.delivered, Failed: s.failed, Retried: s.retried, SuccessRate: -1}
	n := min(s.n, len(s.durations))
	if n > 0 {
		d := slices.Clone(s.durations[:n])
		slices.Sort(d)
		out.P50MS = float64(d[n/2].Microseconds()) / 1000
		out.P99MS = float64(d[min(n*99/100, n-1)].Microseconds()) / 1000
	}
	cur := now.Unix() / 60
	ok, all := 0, 0
	for i := int64(59); i >= 0; i-- {
		m := cur - i
		slot := s.minutes[m%60]
		mc := MinuteCount{Minute: time.Unix(m*60, 0).UTC()}
		if slot.start == m {
			mc.Delivered, mc.Failed = slot.delivered, slot.failed
			ok += slot.delivered
			all += slot.delivered + slot.failed
		}
		out.PerMinute = append(out.PerMinute, mc)
	}
	if all > 0 {
		out.SuccessRate = float64(ok) / float64(all)
	}
	return out
}
