package beat

import (
	"testing"
	"time"
)

func offset(t time.Time, d time.Duration) time.Duration {
	return time.Duration(t.UnixNano() % int64(d))
}

func TestUntilReachesTheNextMultiple(t *testing.T) {
	for _, d := range []time.Duration{time.Millisecond, 50 * time.Millisecond, time.Second, 2 * time.Second, time.Minute} {
		for range 100 {
			u := Until(d)
			if u <= d/8 || u > d+d/8 {
				t.Fatalf("Until(%v) = %v, want in (d/8, d+d/8]", d, u)
			}
			// The instant reached is a multiple of d (give or take the
			// moments between the two clock readings).
			if off := offset(time.Now().Add(u), d); off > time.Millisecond/2 && d-off > time.Millisecond/2 {
				t.Fatalf("Until(%v) = %v reaches %v past a multiple", d, u, off)
			}
		}
	}
	if got := Until(0); got != 0 {
		t.Errorf("Until(0) = %v", got)
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
