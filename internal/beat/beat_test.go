package beat

import (
	"testing"
	"time"
)

func offset(t time.Time, d time.Duration) time.Duration {
	return time.Duration(t.UnixNano() % int64(d))
}

func TestUntilReachesTheNextMultiple(t *testing.T) {
	base := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC) // a multiple of each d below
	for _, d := range []time.Duration{time.Millisecond, 50 * time.Millisecond, time.Second, 2 * time.Second, time.Minute} {
		for _, past := range []time.Duration{0, 1, d / 8, d/8 + 1, d / 2, d - 1, d, 7*d + d/3} {
			now := base.Add(past)
			u := until(now, d)
			if u <= d/8 || u > d+d/8 {
				t.Fatalf("until(%v past a multiple, %v) = %v, want in (d/8, d+d/8]", past, d, u)
			}
			if off := offset(now.Add(u), d); off != 0 {
				t.Fatalf("until(%v past a multiple, %v) = %v reaches %v past a multiple", past, d, u, off)
			}
		}
	}
	if got := Until(0); got != 0 {
		t.Errorf("Until(0) = %v", got)
	}
	if got := Until(time.Second); got <= time.Second/8 || got > time.Second+time.Second/8 {
		t.Errorf("Until(1s) = %v", got)
	}
}

// Two tickers of different periods tick on the multiples of each, so
// the longer one's ticks coincide with the shorter one's; Stop ends them.
func TestTickersShareTheirInstants(t *testing.T) {
	const d = 100 * time.Millisecond
	short, long := NewTicker(d), NewTicker(2*d)
	var onTime, ticks int
	deadline := time.After(5 * time.Second)
	for ticks < 9 {
		select {
		case at := <-short.C:
			ticks++
			if off := offset(at, d); off < 15*time.Millisecond {
				onTime++
			}
		case at := <-long.C:
			ticks++
			if off := offset(at, 2*d); off < 15*time.Millisecond {
				onTime++
			}
		case <-deadline:
			t.Fatalf("%d ticks in 5 s from tickers of 100 and 200 ms", ticks)
		}
	}
	// A loaded machine delays a tick now and then; most are on time.
	if onTime < 6 {
		t.Errorf("%d of %d ticks within 15 ms after a multiple of their period", onTime, ticks)
	}
	short.Stop()
	long.Stop()
	// A tick sent before Stop may wait in C; none comes after.
	select {
	case <-short.C:
	default:
	}
	select {
	case <-short.C:
		t.Error("a tick after Stop")
	case <-time.After(3 * d):
	}
}
