package fanout

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Rate is a subscription's rate limit: at most Count attempts started
// per Per (subscriptions[].rate_limit, e.g. 50/s or 600/m).
type Rate struct {
	Count int
	Per   time.Duration
}

// IsZero reports whether there is no limit.
func (r Rate) IsZero() bool { return r.Count == 0 }

func (r Rate) String() string {
	if r.IsZero() {
		return ""
	}
	unit := "s"
	if r.Per == time.Minute {
		unit = "m"
	}
	return strconv.Itoa(r.Count) + "/" + unit
}

// perSecond is the limit in attempts per second.
func (r Rate) perSecond() float64 { return float64(r.Count) / r.Per.Seconds() }

// ParseRate reads a rate limit: a positive count, "/", and s (per
// second) or m (per minute).
func ParseRate(v string) (Rate, error) {
	count, unit, ok := strings.Cut(strings.TrimSpace(v), "/")
	n, err := strconv.Atoi(strings.TrimSpace(count))
	if !ok || err != nil || n <= 0 || n > 100_000 {
		return Rate{}, fmt.Errorf("%q is not a rate limit: a count from 1 to 100000, then /s or /m, e.g. 50/s or 600/m", v)
	}
	switch strings.TrimSpace(unit) {
	case "s":
		return Rate{Count: n, Per: time.Second}, nil
	case "m":
		return Rate{Count: n, Per: time.Minute}, nil
	}
	return Rate{}, fmt.Errorf("%q is not a rate limit: the unit after / is s (per second) or m (per minute)", v)
}

// How a 429 slows a rate-limited subscription: its pace is halved (down
// to 1/maxSlowdown of the limit) and nothing starts before the
// Retry-After it gave (at most maxPause); each recoverEvery without
// another 429 doubles the pace back, up to the limit.
const (
	maxSlowdown  = 64
	maxPause     = 10 * time.Minute
	recoverEvery = 30 * time.Second
)

// pacer spaces the attempts of a rate-limited subscription evenly: one
// every interval, with no burst (a receiver that asked for 50/s gets
// one every 20 ms, not 50 at once each second). The limit is shared by
// the processes on the journal: with others alive, each paces at its
// share (the limit divided by the live processes), since any of them
// may claim the subscription's work.
type pacer struct {
	limit Rate
	// share is how many processes share the limit (1 + the peers).
	share func() int64

	mu   sync.Mutex
	next time.Time // when the next attempt may start
	// taken are the starts reserved by workers still waiting for them,
	// last the latest start made: a start given up (a worker of a retired
	// subscription, whose pacer a reload passed on) is given back, or
	// each would hold the pace back one interval (16 workers at 1/m: a
	// quarter of an hour of silence after an edit).
	taken      []time.Time
	last       time.Time
	slowdown   int       // 1: the limit; 2, 4 … after 429s
	slowedAt   time.Time // the last 429, or the last step back up
	pauseUntil time.Time
}

func newPacer(limit Rate, share func() int64) *pacer {
	return &pacer{limit: limit, share: share, slowdown: 1}
}

// interval is the time between two starts, as of now (mu held).
func (p *pacer) interval(now time.Time) time.Duration {
	for p.slowdown > 1 && now.Sub(p.slowedAt) >= recoverEvery {
		p.slowdown /= 2
		p.slowedAt = p.slowedAt.Add(recoverEvery)
	}
	share := max(p.share(), 1)
	return time.Duration(float64(time.Second) * float64(share) * float64(p.slowdown) / p.limit.perSecond())
}

// take reserves the next start and returns when it is (now or later).
func (p *pacer) take(now time.Time) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	at := now
	if p.next.After(at) {
		at = p.next
	}
	if p.pauseUntil.After(at) {
		at = p.pauseUntil
	}
	p.next = at.Add(p.interval(at))
	p.taken = append(p.taken, at)
	return at
}

// untake ends the reservation of at: made (the worker starts) or given
// up. A start given up frees the spacing it took: the next start is due
// an interval after the latest start made or still reserved, or when it
// was due already if that is sooner.
func (p *pacer) untake(at time.Time, made bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i := slices.IndexFunc(p.taken, at.Equal); i >= 0 {
		p.taken = slices.Delete(p.taken, i, i+1)
	}
	if made {
		if at.After(p.last) {
			p.last = at
		}
		return
	}
	latest := p.last
	for _, t := range p.taken {
		if t.After(latest) {
			latest = t
		}
	}
	if due := latest.Add(p.interval(latest)); due.Before(p.next) {
		p.next = due
	}
}

// wait blocks until the next start is due; false if ctx ends or stop
// closes first (the place taken is given back). A start reserved before
// a 429 arrived that paused the subscription takes a new place after the
// pause, spaced like any other.
func (p *pacer) wait(ctx context.Context, stop <-chan struct{}) bool {
	at := p.take(time.Now())
	for {
		if d := time.Until(at); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				p.untake(at, false)
				return false
			case <-stop:
				t.Stop()
				p.untake(at, false)
				return false
			}
		}
		p.mu.Lock()
		paused := p.pauseUntil.After(at)
		p.mu.Unlock()
		if !paused {
			p.untake(at, true)
			return true
		}
		p.untake(at, false)
		at = p.take(time.Now())
	}
}

// throttled slows the pace after a 429 Too Many Requests to an attempt
// that started at started. The 429s of attempts started before the last
// slowdown answer the pace that slowdown already corrected: they halve
// it only once, however many were in flight (each still holds the
// starts until its Retry-After). The starts already taken by waiting
// workers are taken again at the new spacing.
func (p *pacer) throttled(now, started time.Time, retryAfter time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	iv := p.interval(now) // recover first what time allows
	if !started.Before(p.slowedAt) || p.slowdown == 1 {
		p.slowdown = min(p.slowdown*2, maxSlowdown)
		p.slowedAt = now
		iv = p.interval(now)
	}
	until := now.Add(iv) // the waiting workers' starts: taken again
	if retryAfter > 0 {
		until = now.Add(min(retryAfter, maxPause))
	}
	if until.After(p.pauseUntil) {
		p.pauseUntil = until
	}
}

// pace reports the pace now, attempts per second, and the pause.
func (p *pacer) pace(now time.Time) (perSecond float64, pausedUntil time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	iv := p.interval(now)
	if p.pauseUntil.After(now) {
		pausedUntil = p.pauseUntil
	}
	return float64(time.Second) / float64(iv), pausedUntil
}
