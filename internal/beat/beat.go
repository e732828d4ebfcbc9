// Package beat puts the periodic work of dzhook's loops on the same
// instants: the next multiple of a period on the wall clock.
//
// Why: an idle dzhook has a handful of loops that look at something every
// second (the runtime subscriptions' revision, the heartbeat, due
// deliveries, replays, the stream's reader, the processor governor; the
// configuration file every two). Each started its own ticker when it
// started, so each tick was a wake of its own: the scheduler's thread
// leaving epoll (twice, as the runtime rounds the wait to milliseconds),
// often the runtime's monitor too. On the same instants, one wake runs
// them all, and their queries go to the journal together.
package beat

import (
	"sync"
	"time"
)

// Until is how long until the next multiple of d on the wall clock, in
// (d/8, d+d/8]: a tick that fired a moment early, or just on the
// multiple, waits for the next one rather than firing twice. d of zero
// or less is returned as it is.
func Until(d time.Duration) time.Duration { return until(time.Now(), d) }

func until(now time.Time, d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	u := d - time.Duration(now.UnixNano()%int64(d))
	if u <= d/8 {
		u += d
	}
	return u
}

// At is the instant Until(d) from now.
func At(d time.Duration) time.Time { return time.Now().Add(Until(d)) }

// Ticker is time.Ticker whose ticks fall on the multiples of its period
// on the wall clock. As time.Ticker, it drops ticks for a slow receiver.
type Ticker struct {
	C <-chan time.Time

	c      chan time.Time
	d      time.Duration
	mu     sync.Mutex
	t      *time.Timer
	closed bool
}

// NewTicker returns a Ticker of period d, which must be positive.
func NewTicker(d time.Duration) *Ticker {
	if d <= 0 {
		panic("beat: non-positive interval for NewTicker")
	}
	c := make(chan time.Time, 1)
	t := &Ticker{C: c, c: c, d: d}
	t.mu.Lock()
	t.t = time.AfterFunc(Until(d), t.fire)
	t.mu.Unlock()
	return t
}

func (t *Ticker) fire() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	select {
	case t.c <- time.Now():
	default:
	}
	t.t.Reset(Until(t.d))
}

// Stop ends the ticks: none is sent once it returns. C is not closed.
func (t *Ticker) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	t.t.Stop()
}
