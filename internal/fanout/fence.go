package fanout

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// fence keeps a process whose heartbeat went stale from attempting what it
// holds in memory (self-fencing). Others take over the deliveries of an
// instance whose heartbeat row is three heartbeats old (journal.Store.Claim):
// a process stopped for that long (SIGSTOP, a VM's pause) or cut off from
// the journal (a restart, a failover) finds, when it runs again, queued
// tasks, ordered keys' active deliveries and their waiting lists that
// another process may be sending already. So a worker starts no attempt
// from memory while the last heartbeat write that reached the journal is
// two heartbeats old (it waits, its task with it, and the queue stays as
// it is), and after such a gap the scheduler asks the journal which of
// the deliveries in memory are still this instance's before the workers
// go on (Dispatcher.reown): the others are dropped, and the ordered keys
// they belong to go back to the journal, which orders them again.
//
// The worker's check is an atomic load and a comparison with the time it
// reads before every attempt anyway: no timer, goroutine or journal round
// trip per attempt. Attempts started before the fence closed run to
// their end; with a delivery timeout longer than a heartbeat one may
// still overlap another process's attempt of the same delivery.
type fence struct {
	epoch  time.Time     // the monotonic base of until
	window time.Duration // two heartbeats
	// until is how long after epoch attempts may start from memory (ns):
	// when the last heartbeat write that reached the journal was sent,
	// plus window. Moved on by each write, unless a recheck is due.
	until atomic.Int64
	// wrote is when the last heartbeat write that reached the journal
	// was sent (ns after epoch).
	wrote atomic.Int64

	// generationNow is gen, for the workers' check without the lock: a
	// task a worker took before a recheck it was not asked about (waiting
	// for a rate limit's turn, or just taken from the queue) is not
	// attempted unchecked once the fence has opened again.
	generationNow atomic.Uint64

	mu     sync.Mutex
	opened chan struct{} // closed when until moves on; nil while no worker waits
	gen    uint64        // rechecks done
	// held are the tasks workers hold at the fence (each with the gen it
	// came at); checked and revoked are the last recheck's: the
	// deliveries it asked the journal about, and those no longer to be
	// attempted.
	held             map[*task]uint64
	checked, revoked map[string]bool
}

func newFence(window time.Duration) *fence {
	return &fence{epoch: time.Now(), window: window, held: map[*task]uint64{}}
}

// open reports whether an attempt may start at now from memory.
func (f *fence) open(now time.Time) bool { return int64(now.Sub(f.epoch)) < f.until.Load() }

// started reports whether the instance has registered (the fence opened
// once).
func (f *fence) started() bool { return f.until.Load() != 0 }

// written records a heartbeat write sent at sent and answered at
// answered, and reports whether a recheck is due: the fence had closed
// by the time the answer came (a write sent in time can reach the journal
// long after, held up for a connection during a failover, with others
// taking over meanwhile). Otherwise it moves the fence on.
func (f *fence) written(sent, answered time.Time) (recheck bool) {
	at := int64(sent.Sub(f.epoch))
	f.wrote.Store(at)
	if until := f.until.Load(); until != 0 && int64(answered.Sub(f.epoch)) >= until {
		return true
	}
	f.move(at + int64(f.window))
	return false
}

// generation is the number of rechecks done, for a worker to note when
// it takes a task (wait's came).
func (f *fence) generation() uint64 { return f.generationNow.Load() }

// start opens the fence for the first time: the instance registered at
// sent.
func (f *fence) start(sent time.Time) {
	at := int64(sent.Sub(f.epoch))
	f.wrote.Store(at)
	f.move(at + int64(f.window))
}

// move sets until and wakes the workers waiting at the fence.
func (f *fence) move(until int64) {
	f.until.Store(until)
	f.mu.Lock()
	if f.opened != nil {
		close(f.opened)
		f.opened = nil
	}
	f.mu.Unlock()
}

// reopen ends a recheck that asked the journal about checked and found
// revoked no longer to attempt: the fence opens as of the last write.
func (f *fence) reopen(checked, revoked map[string]bool) {
	f.mu.Lock()
	f.gen++
	f.generationNow.Store(f.gen)
	f.checked, f.revoked = checked, revoked
	f.mu.Unlock()
	f.move(f.wrote.Load() + int64(f.window))
}

// heldIDs lists the deliveries of the tasks workers hold at the fence.
func (f *fence) heldIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.held))
	for t := range f.held {
		ids = append(ids, t.deliveryID)
	}
	return ids
}

// verdict is what a worker does with the task it held at the fence.
type verdict uint8

const (
	attemptIt verdict = iota // still this instance's: attempt it
	dropIt                   // taken over (or its key given back): forget it
	giveItUp                 // not asked about: give it back to the journal
	stopped                  // the subscription was retired, or life ended
)

// wait holds t at the fence until it opens, and says what to do with t
// then. came is the generation when the worker took t. A task the last
// recheck found taken over is dropped; one that came to the worker
// before a recheck that was not asked about it (it was in the worker's
// hands, not in a queue or at the fence) goes back to the journal (its
// owner is checked there).
func (f *fence) wait(life context.Context, stop <-chan struct{}, t *task, came uint64) verdict {
	f.mu.Lock()
	f.held[t] = came
	defer func() {
		f.mu.Lock()
		delete(f.held, t)
		f.mu.Unlock()
	}()
	for {
		if f.open(time.Now()) {
			came := f.held[t]
			v := attemptIt
			switch {
			case came == f.gen: // no recheck since: the fence moved on by a write in time
			case f.revoked[t.deliveryID]:
				v = dropIt
			case !f.checked[t.deliveryID]:
				v = giveItUp
			}
			f.mu.Unlock()
			return v
		}
		if f.opened == nil {
			f.opened = make(chan struct{})
		}
		ch := f.opened
		f.mu.Unlock()
		select {
		case <-ch:
		case <-stop:
			return stopped
		case <-life.Done():
			return stopped
		}
		f.mu.Lock()
	}
}
