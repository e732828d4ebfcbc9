package fanout

import (
	"context"
	"slices"
	"sync"
	"time"
)

// heldReleases releases the held deliveries (queue_while_inactive) of
// subscriptions this process has seen become active again other than by
// its own Resume, which releases them itself:
//   - a resume another process made, adopted by syncFlags: that process
//     released what the journal held then, but this one, streaming, may
//     have recorded deliveries as held until it adopted the resume (up to
//     a heartbeat later), and nothing else would ever release them;
//   - a Reload that made a subscription active (active: false before);
//   - the start: a subscription made active while no process ran, or a
//     Resume cut short between its journal writes.
//
// Each release waits for the dispatches that may have seen the
// subscription inactive and for the journal writer, as Resume does, on a
// goroutine of its own (Run's): the scheduler's claims and the heartbeat
// never wait for it.
type heldReleases struct {
	mu   sync.Mutex
	due  map[string]bool
	wake chan struct{}
}

func newHeldReleases() *heldReleases {
	return &heldReleases{due: map[string]bool{}, wake: make(chan struct{}, 1)}
}

// add asks for a release of each subscription's held deliveries.
func (h *heldReleases) add(ids ...string) {
	if len(ids) == 0 {
		return
	}
	h.again(ids...)
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// again puts back releases that failed, for the retry's timer: without
// waking the loop, which would try them again at once (a journal away
// would have it spin).
func (h *heldReleases) again(ids ...string) {
	h.mu.Lock()
	for _, id := range ids {
		h.due[id] = true
	}
	h.mu.Unlock()
}

func (h *heldReleases) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]string, 0, len(h.due))
	for id := range h.due {
		ids = append(ids, id)
	}
	clear(h.due)
	slices.Sort(ids)
	return ids
}

// heldRetry is how long after a failed release (the journal unreachable)
// it is tried again.
const heldRetry = time.Second

// releaseHeldLoop runs the releases asked for until ctx ends. A release
// that fails is tried again heldRetry later.
func (d *Dispatcher) releaseHeldLoop(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.held.wake:
		case <-retry.C:
		}
		ids := d.held.take()
		if len(ids) == 0 {
			continue
		}
		if err := d.dispatches.wait(ctx); err != nil {
			return
		}
		if err := d.records.Barrier(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log.Warn("releasing held deliveries: the journal writer did not answer; retrying", "err", err)
			d.held.again(ids...)
			retry.Reset(heldRetry)
			continue
		}
		released := false
		for _, id := range ids {
			s := d.reg.Load().byID[id]
			if s == nil || !s.accepting() {
				continue // inactive again (or gone): its next activation asks again
			}
			n, err := d.cfg.Journal.ReleaseHeld(ctx, id)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				d.log.Warn("releasing held deliveries failed; retrying", "subscription", id, "err", err)
				d.held.again(id)
				retry.Reset(heldRetry)
				continue
			}
			if n > 0 {
				released = true
				d.log.Info("held deliveries released", "subscription", id, "held_deliveries", n)
			}
		}
		if released {
			d.nudge()
		}
	}
}

// accepting names the subscriptions of subs that accept deliveries.
func accepting(subs []*sub) []string {
	var ids []string
	for _, s := range subs {
		if s.accepting() {
			ids = append(ids, s.cfg.ID)
		}
	}
	return ids
}
